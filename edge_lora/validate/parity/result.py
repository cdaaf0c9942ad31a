"""The one parity result: :class:`ParityResult`, what every output comparison of the project returns.

Merge (merged vs unmerged PyTorch), the export checks (ONNX Runtime vs PyTorch, QDQ vs FP32, OpenVINO IR vs
ONNX Runtime) and ``validate`` (candidate vs reference runner) all compare through
:mod:`edge_lora.validate.parity`, and all answer with this type. A producer fills the fields it measures and
leaves the others None; :meth:`ParityResult.to_dict` writes only those, so every JSON file keeps the keys it
always had (export sidecars, merge reports, ``validation.json``) and :meth:`ParityResult.from_dict` reads old
files as they are. Device side: standard library only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["ParityResult"]


@dataclass(frozen=True)
class ParityResult:
    """How closely a candidate's outputs reproduce a reference's, and the verdict against ``tolerance``.

    Always set:
        max_abs: largest absolute difference over the compared values.
        max_rel: largest difference relative to the output's scale; what ``tolerance`` limits. For a plain
            tensor (:func:`~edge_lora.validate.parity.tensor_parity`) that is ``max_abs / max|ref|``; for a
            detector output (:func:`~edge_lora.validate.parity.detection_parity`) boxes are relative to the
            largest reference box coordinate (at least 1) and scores (0..1) absolute.

    Element-wise statistics (:func:`~edge_lora.validate.parity.tensor_parity`):
        shape: the common shape.
        mean_abs: mean |cand - ref|.
        cosine: cosine similarity of the flattened tensors (1.0 when both are all-zero, 0.0 when only one is).
        psnr_db: ``10 log10(peak^2 / mse)`` with ``peak = max|ref|``; ``inf`` when identical.
        n_nonfinite: NaN/inf elements in the candidate (a broken engine); any NaN makes the statistics NaN,
            which fails every threshold comparison.

    Detector outputs (:func:`~edge_lora.validate.parity.detection_parity`, the export checks):
        end2end: the output is ``(N, K, 6)`` detections (True) or raw ``(N, 4 + nc, anchors)`` (False).
        decoded_max_rel: for end-to-end graphs, ``max_rel`` of the decoded ``(N, 4 + nc, anchors)``
            predictions *before* TopK (compared position by position, so it is exact where scores tie).
        matching: how end-to-end rows were compared: ``"position"`` (row by row), ``"tie-aware"`` (rows
            re-matched by class, score and box, because TopK orders tied scores arbitrarily; rows at the top-K
            cut-off score may differ and are skipped) or ``"shape"`` (the shapes differ: nothing compared).
        unmatched: end-to-end rows above the cut-off without a counterpart (0 when passed).
        images: how many images were compared.

    Merge (several named output tensors, then the detections after NMS):
        per_output: ``{output name: {"max_abs", "max_rel"}}``, worst over batches.
        detections_identical / detections_compared: the NMS detections of both models agree (class, box
            within 1e-2 px, score within 1e-4), and how many reference detections were compared.

    Verdict:
        tolerance: the limit on ``max_rel``; None when the caller set none (no verdict, ``passed`` is None).
    """

    max_abs: float
    max_rel: float
    tolerance: float | None = None
    shape: tuple[int, ...] | None = None
    mean_abs: float | None = None
    cosine: float | None = None
    psnr_db: float | None = None
    n_nonfinite: int | None = None
    end2end: bool | None = None
    decoded_max_rel: float | None = None
    matching: str | None = None
    unmatched: int | None = None
    images: int | None = None
    per_output: dict[str, dict[str, float]] | None = None
    detections_identical: bool | None = None
    detections_compared: int | None = None

    @property
    def passed(self) -> bool | None:
        """``max_rel`` within ``tolerance``, every row matched, no non-finite value; None without tolerance."""
        if self.tolerance is None:
            return None
        # "<=" is False for NaN, so a NaN statistic fails.
        return not self.unmatched and not self.n_nonfinite and self.max_rel <= self.tolerance

    def __bool__(self) -> bool:
        return bool(self.passed)

    def with_tolerance(self, tolerance: float | None) -> ParityResult:
        """The same measurement judged against another limit."""
        return dataclasses.replace(self, tolerance=tolerance)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: the fields that were measured (``inf`` stays a float), plus ``passed`` when there
        is a verdict. A detector result always writes ``decoded_max_rel`` (None for raw outputs), as export
        sidecars always have."""
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and not (f.name == "decoded_max_rel" and self.end2end is not None):
                continue
            d[f.name] = list(value) if f.name == "shape" else value
        if self.per_output is not None:
            d["per_output"] = {k: dict(v) for k, v in self.per_output.items()}
        if self.tolerance is not None:
            d["passed"] = self.passed
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParityResult:
        """Inverse of :meth:`to_dict`; also reads the files older versions wrote (``passed`` is derived, so
        it is not read back; unknown keys are refused)."""
        data = {k: v for k, v in data.items() if k != "passed"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"not a parity result: unknown keys {unknown}")
        if data.get("shape") is not None:
            data["shape"] = tuple(int(s) for s in data["shape"])
        for key in ("max_abs", "max_rel"):
            data[key] = float(data.get(key, math.nan))
        return cls(**data)
