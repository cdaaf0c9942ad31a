"""ONNX export of a merged checkpoint, wrapping Ultralytics' exporter, then proven against PyTorch.

:func:`export_onnx` validates its arguments, lets ``ultralytics.YOLO(checkpoint).export(format="onnx")``
do the tracing (its metadata_props -- names, imgsz, stride, end2end -- and its onnxslim pass are kept; the
workarounds it needs are in :mod:`edge_lora.export.onnx.ultralytics_export`), then checks the result:
``onnx.checker`` (:func:`~edge_lora.export.onnx.graph.check_graph`), ONNX Runtime runs on real images
letterboxed by the runtime's own preprocessing, compared with the PyTorch model on the same input
(:mod:`edge_lora.export.onnx.check`). Only a file that passed is moved to ``out_path``, with a provenance
sidecar (:mod:`edge_lora.export.artifact`).

Arguments the exporter would silently reinterpret are mapped or refused here:

* ``nms``/``end2end``: in 8.4 the NMS-free head of YOLO26 is exported only with ``nms=False``; the default
  ``nms=None`` silently exports the one-to-many head's raw output. :func:`export_onnx` takes
  ``end2end: bool | None`` and maps it (None = the model's native form), and refuses ``end2end=True`` on a
  head without a one-to-one branch instead of falling back with a warning.
* ``imgsz`` that is not a multiple of the stride is silently rounded up; we refuse it.
* ``half`` is the deprecated spelling of ``quantize=16``; we pass ``quantize``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_lora.errors import InputError, ModelError, ToolError
from edge_lora.export.artifact import sidecar_path
from edge_lora.export.onnx.check import check_against_torch, parity_images
from edge_lora.export.onnx.graph import check_graph
from edge_lora.export.onnx.ultralytics_export import export_with_ultralytics, toposort_file
from edge_lora.fileio import check_output, sha256_file
from edge_lora.validate.parity import ParityResult

if TYPE_CHECKING:
    from edge_lora.profiles import TargetProfile

__all__ = ["FP16_TOLERANCE", "FP32_TOLERANCE", "OnnxExport", "export_onnx"]

#: Largest allowed difference ONNX Runtime vs PyTorch, relative to the output's scale (boxes: the largest
#: box coordinate; scores are already 0..1).
FP32_TOLERANCE = 1e-3


FP16_TOLERANCE = 2e-2


_MIN_OPSET, _MAX_OPSET = 13, 22  # 13: per-channel QuantizeLinear; 22: what onnx 1.17+ and ORT 1.20+ read


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` produced.

    Attributes:
        path: the ``.onnx`` file.
        sidecar: its provenance sidecar (``<path>.json``), None when not written.
        output_form: ``"end2end"`` (YOLO26 NMS-free, ``(N, max_det, 6)`` = x1, y1, x2, y2, score, class) or
            ``"raw"`` (``(N, 4 + nc, anchors)`` xywh + class scores, NMS on the host).
        input_name / input_shape / output_name / output_shape: as ONNX Runtime reports them (None = dynamic).
        metadata: the file's Ultralytics metadata, typed (``edge_lora.runtime.base.normalize_metadata``).
        parity: the ONNX Runtime vs PyTorch check (always passed in a returned result).
        warnings: Ultralytics warnings logged during the export.
    """

    path: Path
    sidecar: Path | None
    source_checkpoint: Path
    source_sha256: str
    sha256: str
    precision: str
    imgsz: tuple[int, int]
    batch: int
    opset: int
    dynamic: bool
    simplify: bool
    end2end: bool
    output_form: str
    input_name: str
    input_shape: tuple[int | None, ...]
    output_name: str
    output_shape: tuple[int | None, ...]
    metadata: dict[str, Any]
    parity: ParityResult
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("path", "sidecar", "source_checkpoint"):
            d[key] = None if d[key] is None else str(d[key])
        d["parity"] = self.parity.to_dict()
        return d


def _imgsz_hw(imgsz: int | Sequence[int], stride: int) -> tuple[int, int]:
    if isinstance(imgsz, (int, np.integer)) and not isinstance(imgsz, bool):
        hw = (int(imgsz), int(imgsz))
    elif (
        isinstance(imgsz, Sequence)
        and len(imgsz) == 2
        and all(isinstance(v, (int, np.integer)) for v in imgsz)
    ):
        hw = (int(imgsz[0]), int(imgsz[1]))
    else:
        raise InputError(f"imgsz must be an int or (height, width), got {imgsz!r}")
    if min(hw) < stride or any(v % stride for v in hw):
        raise InputError(
            f"imgsz {hw[0]}x{hw[1]} must be positive multiples of the model's stride {stride} "
            f"(Ultralytics would silently round it up), e.g. {max(stride, -(-hw[0] // stride) * stride)}"
        )
    return hw


def export_onnx(
    checkpoint: str | Path,
    out_path: str | Path,
    *,
    imgsz: int | Sequence[int],
    opset: int = 17,
    end2end: bool | None = None,
    half: bool = False,
    dynamic: bool = False,
    simplify: bool = True,
    batch: int = 1,
    max_det: int = 300,
    check_images: Sequence[str | Path] | None = None,
    tolerance: float | None = None,
    overwrite: bool = False,
    profile: TargetProfile | Mapping[str, Any] | None = None,
    write_sidecar: bool = True,
) -> OnnxExport:
    """Export an Ultralytics detection checkpoint to ONNX and prove it against PyTorch.

    Args:
        checkpoint: the merged ``.pt`` (FP32 weights).
        out_path: the ``.onnx`` to write (its folder is created).
        imgsz: input size, int or (height, width), multiples of the model stride.
        opset: ONNX opset, 13..22.
        end2end: True: YOLO26's NMS-free output ``(N, max_det, 6)`` (error if the head has none); False: raw
            ``(N, 4 + nc, anchors)`` for host NMS; None: the model's native form (end2end when it can).
        half: FP16 weights/compute with FP32 inputs/outputs (Ultralytics ``quantize=16``); parity tolerance
            becomes :data:`FP16_TOLERANCE`.
        dynamic: dynamic batch and image size axes.
        simplify: run onnxslim (Ultralytics' simplifier).
        batch: batch size of the exported graph (the maximum with ``dynamic``).
        max_det: detections per image of an end-to-end output (capped by the anchors at this ``imgsz``).
        check_images: images for the parity check (letterboxed by the runtime preprocessing); None uses a
            fixed synthetic image, which is a weaker check -- pass a few real images when you have them.
        tolerance: parity limit relative to output scale (default 1e-3 FP32, 2e-2 FP16).
        overwrite: replace an existing ``out_path``.
        profile: recorded in the sidecar (name and sha256).
        write_sidecar: write ``<out_path>.json``.

    Raises:
        InputError / ModelError: bad arguments, not a detection checkpoint, ``end2end=True`` without a
            one-to-one head. OutputExistsError: ``out_path`` exists. ToolError: the exporter failed, the graph
            fails ``onnx.checker``, ONNX Runtime cannot run it, or it differs from PyTorch beyond tolerance.
    """
    from edge_lora.models import load_detection_model

    t0 = time.perf_counter()
    checkpoint = Path(checkpoint)
    out_path = Path(out_path)
    if checkpoint.suffix.lower() != ".pt":
        raise ModelError(f"checkpoint {checkpoint}: expected a .pt Ultralytics checkpoint")
    if not checkpoint.is_file():
        raise ModelError(f"checkpoint {checkpoint} not found")
    if out_path.suffix.lower() != ".onnx":
        raise InputError(f"--out {out_path}: the ONNX file name must end in .onnx")
    check_output(out_path, overwrite)
    if not isinstance(opset, int) or not _MIN_OPSET <= opset <= _MAX_OPSET:
        raise InputError(f"opset must be an integer in {_MIN_OPSET}..{_MAX_OPSET}, got {opset!r}")
    if not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be a positive integer, got {batch!r}")
    if not isinstance(max_det, int) or max_det < 1:
        raise InputError(f"max_det must be a positive integer, got {max_det!r}")
    if end2end not in (None, True, False):
        raise InputError(f"end2end must be True, False or None, got {end2end!r}")

    loaded = load_detection_model(checkpoint)
    model = loaded.model
    head = model.model[-1]
    stride = int(max(model.stride.tolist()))
    hw = _imgsz_hw(imgsz, stride)
    has_one2one = getattr(head, "one2one_cv2", None) is not None
    has_one2many = getattr(head, "cv2", None) is not None
    if end2end is None:
        end2end = has_one2one
    if end2end and not has_one2one:
        raise ModelError(
            f"{checkpoint} has no NMS-free one-to-one head (YOLO26 has one; YOLO11/YOLOv8 do not); export it "
            "with end2end=False (profile output: raw) and run NMS on the host"
        )
    if not end2end and not has_one2many:
        raise ModelError(f"{checkpoint} only keeps its one-to-one head (fused); export it with end2end=True")
    tol = tolerance if tolerance is not None else (FP16_TOLERANCE if half else FP32_TOLERANCE)

    args = {
        "format": "onnx",
        "imgsz": list(hw),
        "opset": opset,
        "nms": False if end2end else None,  # 8.4: nms=False selects the NMS-free head, None the raw one
        "quantize": 16 if half else None,
        "dynamic": bool(dynamic),
        "simplify": bool(simplify),
        "batch": batch,
        "max_det": max_det,
        "device": "cpu",
        "verbose": False,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".partial", dir=out_path.parent))
    try:
        produced, warnings = export_with_ultralytics(checkpoint, workdir, args)
        if half:
            toposort_file(produced)
        proto_meta, checked = check_graph(produced, end2end)
        inputs = parity_images(check_images, hw)
        from edge_lora.runtime.prepost import preprocess

        x, _ = preprocess(inputs, hw)
        n = x.shape[0] if dynamic else batch  # a fixed batch: repeat images to fill whole batches
        x = x[np.arange(-(-x.shape[0] // n) * n) % x.shape[0]]
        feeds = np.split(x, x.shape[0] // n)
        parity = check_against_torch(produced, model, feeds, end2end, max_det, tol, len(inputs))
        if not parity.passed:
            raise ToolError(
                f"ONNX export of {checkpoint} differs from the PyTorch model: max difference {parity.max_rel:.3g} "
                f"of output scale (limit {tol:g}; decoded predictions {parity.decoded_max_rel}; "
                f"{parity.unmatched} unmatched detections); the exported graph is not trustworthy, not writing it"
            )
        sidecar_path(out_path).unlink(missing_ok=True)  # an old sidecar would describe the replaced file
        os.replace(produced, out_path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    from edge_lora.runtime.base import normalize_metadata

    result = OnnxExport(
        path=out_path,
        sidecar=None,
        source_checkpoint=checkpoint,
        source_sha256=loaded.sha256 or sha256_file(checkpoint),
        sha256=sha256_file(out_path),
        precision="fp16" if half else "fp32",
        imgsz=hw,
        batch=batch,
        opset=opset,
        dynamic=bool(dynamic),
        simplify=bool(simplify),
        end2end=end2end,
        output_form="end2end" if end2end else "raw",
        input_name=checked["input_name"],
        input_shape=checked["input_shape"],
        output_name=checked["output_name"],
        output_shape=checked["output_shape"],
        metadata=normalize_metadata(proto_meta),
        parity=parity,
        seconds=round(time.perf_counter() - t0, 3),
        warnings=warnings,
    )
    if write_sidecar:
        from edge_lora.export.artifact import write_sidecar as _write

        sidecar = _write(
            out_path,
            kind="onnx",
            source_checkpoint=checkpoint,
            source_sha256=result.source_sha256,
            profile=profile,
            precision=result.precision,
            calibration=None,
            extra={
                "output_form": result.output_form,
                "output_shape": list(result.output_shape),
                "input_shape": list(result.input_shape),
                "imgsz": list(hw),
                "batch": batch,
                "opset": opset,
                "dynamic": bool(dynamic),
                "simplify": bool(simplify),
                "max_det": max_det,
                "parity": parity.to_dict(),
            },
        )
        result = dataclasses.replace(result, sidecar=sidecar)
    return result
