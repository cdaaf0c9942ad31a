"""The PyTorch reference: the unmerged model (base + adapter), or any checkpoint, as a runner.

Host side only (imports torch and ultralytics); it lives outside ``edge_lora.runtime`` on purpose. It speaks
the same runner interface as the exported artifacts and configures the Detect head the way Ultralytics'
exporter does, so reference and candidate produce the same output form — (N, max_det, 6) end-to-end for
YOLO26, or raw (N, 4 + nc, anchors) — and go through the one post-processing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_lora.runtime.base import Runner, TensorMetadata

if TYPE_CHECKING:
    from edge_lora.profiles import TargetProfile


class TorchReferenceRunner(Runner):
    """Runs ``base`` (+ ``adapter``, unmerged LoRA branches) in PyTorch FP32 on the CPU.

    Args:
        base: base checkpoint (.pt) — or a merged checkpoint with ``adapter=None``.
        adapter: adapter package directory; None runs ``base`` alone.
        imgsz: square input size.
        end2end: head output form; None picks end-to-end when the head has a one-to-one branch (YOLO26).
        max_det: detections kept by an end-to-end head.
        threads: torch intra-op threads (None leaves torch's default).
    """

    prefix = "torch"

    def __init__(
        self,
        base: str | Path,
        adapter: str | Path | None = None,
        *,
        imgsz: int = 640,
        end2end: bool | None = None,
        max_det: int = 300,
        threads: int | None = None,
    ) -> None:
        super().__init__(
            adapter or base, name=f"torch:{Path(base).name}" + (f"+{Path(adapter).name}" if adapter else "")
        )
        self.base, self.adapter = Path(base), Path(adapter) if adapter else None
        self.imgsz, self.end2end, self.max_det, self.threads = imgsz, end2end, max_det, threads
        self.model = None

    @property
    def identity(self) -> tuple[str, ...]:
        """What this reference is, for validate()'s reference-pass cache keys (full paths, not names)."""
        settings = (self.imgsz, self.max_det, self.end2end, self.threads)
        return ("torch", str(self.base), str(self.adapter), *map(str, settings))

    def activate_impl(self) -> None:
        import torch

        from edge_lora.models import load_detection_model

        if self.threads:
            torch.set_num_threads(self.threads)
        base = load_detection_model(self.base)
        if self.adapter is not None:
            from edge_lora.train.adapter_io import build_adapted_model, read_adapter

            model, _ = build_adapted_model(base.model, read_adapter(self.adapter))
        else:
            model = base.model
        configure_export_head(model, self.imgsz, self.end2end, self.max_det)
        self.model = model.eval()
        self.metadata = {
            "names": dict(model.names),
            "imgsz": [self.imgsz, self.imgsz],
            "stride": int(max(model.stride)),
            "end2end": bool(getattr(model, "end2end", False)),
            "task": "detect",
        }

    def deactivate_impl(self) -> None:
        self.model = None

    def input_metadata_impl(self) -> TensorMetadata:
        return {"images": (np.dtype(np.float32), (None, 3, self.imgsz, self.imgsz))}

    def output_metadata_impl(self) -> TensorMetadata:
        nc = len(self.metadata["names"])
        shape = (None, self.max_det, 6) if self.metadata["end2end"] else (None, 4 + nc, None)
        return {"output0": (np.dtype(np.float32), shape)}

    def infer_impl(self, feed: Mapping[str, np.ndarray], copy_outputs: bool) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            y = self.model(torch.from_numpy(np.ascontiguousarray(feed["images"])))
        y = y[0] if isinstance(y, (list, tuple)) else y
        return {"output0": y.float().numpy().copy()}


def torch_reference(
    base: str | Path, adapter: str | Path | None = None, *, target: TargetProfile, threads: int | None = None
) -> TorchReferenceRunner:
    """The unmerged PyTorch reference for ``validate(reference=...)``: ``base`` (+ ``adapter``) at the
    resolved ``target`` profile's imgsz and max_det. Nothing is loaded until validation activates it.

    Host side: ``validate()`` itself is device-side and never imports this module; the CLI's
    ``validate --reference BASE.pt``, ``build()`` and the benchmarks build the runner here and pass it in.
    """
    return TorchReferenceRunner(base, adapter, imgsz=target.imgsz, max_det=target.max_det, threads=threads)


def configure_export_head(model, imgsz: int, end2end: bool | None, max_det: int) -> None:
    """Put the Detect head in Ultralytics' export mode (what ``yolo export format=onnx`` does to it)."""
    from ultralytics.nn.modules.head import Detect

    head = model.model[-1]
    if end2end is None:
        end2end = getattr(head, "one2one_cv2", None) is not None
    if hasattr(model, "end2end"):
        model.end2end = end2end
    anchors = sum(int(imgsz / s) ** 2 for s in model.stride.tolist())
    for m in model.modules():
        if isinstance(m, Detect):
            m.export, m.format, m.dynamic = True, "onnx", False
            m.max_det = min(max_det, anchors)
            m.xyxy = False
            m.shape = None
