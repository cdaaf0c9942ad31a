"""Output parity, the project's one implementation: merge, the export checks and ``validate`` compare here.

* :class:`ParityResult` (:mod:`.result`): the one result type, with its verdict against a tolerance;
* tensors (:mod:`.tensor`): :func:`tensor_parity` (max/mean abs, relative, cosine, PSNR, non-finite count),
  over batches :class:`ParityAccumulator` -> :class:`ParitySummary`, and the cosine measures of the INT8
  checks, :func:`cosine_similarity` and :func:`score_cosine` (anchors scoring >= :data:`SCORE_COSINE_FLOOR`);
* detector outputs (:mod:`.detections`): :func:`detection_parity`, raw position by position or end-to-end
  rows tie-aware, and :func:`paired_detection_rows`, end-to-end rows paired by class and IoU for the
  accumulator (``validate``).

Device side: numpy and the standard library (and scipy for the tie-aware match), no torch; torch callers
(merge, the ONNX export check) convert their tensors to numpy first.
"""

from __future__ import annotations

from edge_lora.validate.parity.detections import detection_parity, paired_detection_rows
from edge_lora.validate.parity.result import ParityResult
from edge_lora.validate.parity.tensor import (
    SCORE_COSINE_FLOOR,
    ParityAccumulator,
    ParitySummary,
    cosine_similarity,
    score_cosine,
    tensor_parity,
)

__all__ = [
    "SCORE_COSINE_FLOOR",
    "ParityAccumulator",
    "ParityResult",
    "ParitySummary",
    "cosine_similarity",
    "detection_parity",
    "paired_detection_rows",
    "score_cosine",
    "tensor_parity",
]
