"""ONNX export of a merged checkpoint, wrapping Ultralytics' exporter, then proven against PyTorch.

:func:`export_onnx` validates its arguments, lets ``ultralytics.YOLO(checkpoint).export(format="onnx")``
do the tracing (its metadata_props -- names, imgsz, stride, end2end -- and its onnxslim pass are kept), then
checks the result: ``onnx.checker``, one ONNX Runtime run on a real image letterboxed by the runtime's own
preprocessing, compared with the PyTorch model on the same input. Only a file that passed is moved to
``out_path``, with a provenance sidecar (:mod:`edge_lora.export.artifact`). For end-to-end graphs the check
also compares the decoded predictions *before* TopK (exposed as an extra output on an in-memory copy, see
:func:`run_onnx`): TopK orders near-equal scores arbitrarily, so the final rows alone prove little.

Where the Ultralytics exporter (8.4.x) needs working around, and where that is done:

* It writes ``<checkpoint stem>.onnx`` *next to the checkpoint*, clobbering a file of that name. We export a
  copy of the checkpoint inside a temporary folder beside ``out_path`` and move the result atomically
  (``_export_with_ultralytics``).
* ``check_requirements`` pip-installs missing or too-old packages at run time (when online) and, offline,
  only logs a warning and carries on: a missing onnxslim then silently yields an unsimplified graph.
  :func:`no_runtime_installs` replaces it, for the duration of the export, with a strict check that never
  installs and raises :class:`~edge_lora.errors.ToolError` naming the requirement.
* Errors inside the ONNX step are logged and re-raised, but a failing onnxslim is only a warning; we capture
  Ultralytics' warnings and fail on that one (``_UltralyticsWarnings``).
* ``nms``/``end2end``: in 8.4 the NMS-free head of YOLO26 is exported only with ``nms=False``; the default
  ``nms=None`` silently exports the one-to-many head's raw output. :func:`export_onnx` takes
  ``end2end: bool | None`` and maps it (None = the model's native form), and refuses ``end2end=True`` on a
  head without a one-to-one branch instead of falling back with a warning.
* ``imgsz`` that is not a multiple of the stride is silently rounded up; we refuse it.
* ``half`` is the deprecated spelling of ``quantize=16``; we pass ``quantize``. Its CPU FP16 conversion
  leaves the graph's nodes out of topological order, which ``onnx.checker`` rejects; we re-sort them
  (``_toposort_file``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_lora.errors import DataError, EdgeLoraError, InputError, ModelError, ToolError
from edge_lora.export.artifact import sidecar_path
from edge_lora.fileio import check_output, sha256_file
from edge_lora.validate.parity import ParityResult, detection_parity

if TYPE_CHECKING:
    from edge_lora.profiles import TargetProfile

__all__ = [
    "FP16_TOLERANCE",
    "FP32_TOLERANCE",
    "OnnxExport",
    "decoded_tensor_name",
    "export_onnx",
    "no_runtime_installs",
    "run_onnx",
]

#: Largest allowed difference ONNX Runtime vs PyTorch, relative to the output's scale (boxes: the largest
#: box coordinate; scores are already 0..1).
FP32_TOLERANCE = 1e-3
FP16_TOLERANCE = 2e-2
_MIN_OPSET, _MAX_OPSET = 13, 22  # 13: per-channel QuantizeLinear; 22: what onnx 1.17+ and ORT 1.20+ read
_PATCH_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------
# Ultralytics workarounds
# --------------------------------------------------------------------------------------------------------


def _strict_check_requirements(original):
    def check_requirements(requirements=(), exclude=(), install=True, cmds="", constrain=()):
        # Check each requirement alone so the message names what is missing. install=False: never pip.
        reqs = [requirements] if isinstance(requirements, (str, Path)) else list(requirements)
        missing = []
        for r in reqs:
            if not original([r] if not isinstance(r, Path) else r, exclude=exclude, install=False):
                missing.append(" or ".join(r) if isinstance(r, (list, tuple)) else str(r))
        if missing:
            raise ToolError(
                f"the Ultralytics exporter needs {', '.join(missing)}, which is not installed here (or too old); "
                "install it with pip and retry. edge-lora never installs packages at run time"
            )
        return True

    check_requirements.__wrapped__ = original  # type: ignore[attr-defined]
    return check_requirements


@contextlib.contextmanager
def no_runtime_installs() -> Iterator[None]:
    """Inside the block, Ultralytics' ``check_requirements`` never installs and raises ``ToolError`` instead.

    Ultralytics imports the function by name into many modules, so every loaded ``ultralytics.*`` module
    that holds it is patched (and restored afterwards); the exporter modules are imported first so they are
    among them. Process-global while active, hence serialised with a lock.
    """
    import ultralytics.engine.exporter  # noqa: F401  (bind its names before patching)
    import ultralytics.utils.checks as checks

    with contextlib.suppress(ImportError):
        import ultralytics.utils.export.engine  # noqa: F401

    with _PATCH_LOCK:
        original = checks.check_requirements
        strict = _strict_check_requirements(original)
        patched = []
        for name, module in list(sys.modules.items()):
            if (name == "ultralytics" or name.startswith("ultralytics.")) and getattr(
                module, "check_requirements", None
            ) is original:
                module.check_requirements = strict
                patched.append(module)
        autoinstall = checks.AUTOINSTALL
        checks.AUTOINSTALL = False
        try:
            yield
        finally:
            checks.AUTOINSTALL = autoinstall
            for module in patched:
                module.check_requirements = original


class _UltralyticsWarnings(logging.Handler):
    """Collects WARNING+ records of the ``ultralytics`` logger and mutes its INFO chatter meanwhile."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().strip())

    @contextlib.contextmanager
    def capture(self) -> Iterator[_UltralyticsWarnings]:
        logger = logging.getLogger("ultralytics")
        level = logger.level
        logger.setLevel(logging.WARNING)
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(level)


# --------------------------------------------------------------------------------------------------------
# Graph facts
# --------------------------------------------------------------------------------------------------------


def decoded_tensor_name(model) -> str | None:
    """Name of the decoded ``(N, 4 + nc, anchors)`` predictions tensor in an Ultralytics detection graph.

    For a raw export that is the graph output; for an end-to-end one it is the input of the TopK stage
    (Ultralytics' ``y.permute(0, 2, 1)`` before ``Detect.postprocess``: ``Concat -> Transpose -> Split``).
    None when the pattern is not found.
    """
    graph = model.graph
    outputs = [o.name for o in graph.output]
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for inp in n.input:
            consumers.setdefault(inp, []).append(n)
    for n in graph.node:
        if n.op_type != "Transpose":
            continue
        src = producer.get(n.input[0])
        nxt = consumers.get(n.output[0], [])
        if src is not None and src.op_type == "Concat" and any(c.op_type == "Split" for c in nxt):
            return n.input[0]
    out = producer.get(outputs[0]) if len(outputs) == 1 else None
    if out is not None and out.op_type == "Concat":
        return outputs[0]  # raw export: the final Concat(boxes, scores) is the output
    return None


def run_onnx(
    model: str | Path | Any, feed: np.ndarray, *, decoded: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run an ONNX detector once on ONNX Runtime's CPU provider.

    Args:
        model: path or ``onnx.ModelProto``.
        feed: the preprocessed ``(N, 3, H, W)`` batch.
        decoded: also return the decoded predictions (see :func:`decoded_tensor_name`; exposed as an extra
            graph output on an in-memory copy).

    Returns:
        ``(output0, decoded_or_None)``.

    Raises:
        ToolError: ONNX Runtime cannot load or run the graph.
    """
    import onnx
    import onnxruntime as ort

    proto = model if hasattr(model, "graph") else onnx.load(str(model))
    extra = decoded_tensor_name(proto) if decoded else None
    if extra is not None and extra not in {o.name for o in proto.graph.output}:
        proto = copy.deepcopy(proto)
        proto.graph.output.append(onnx.ValueInfoProto(name=extra))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        inits = {i.name for i in proto.graph.initializer}
        name = next(i.name for i in proto.graph.input if i.name not in inits)
        results = session.run(None, {name: feed})
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ToolError(f"ONNX Runtime cannot run the ONNX graph: {first}") from exc
    names = [o.name for o in session.get_outputs()]
    final = np.asarray(results[0])
    dec = np.asarray(results[names.index(extra)]) if extra is not None else None
    return final, dec


# --------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------


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


def _parity_images(check_images: Sequence[str | Path] | None, hw: tuple[int, int]) -> list[np.ndarray]:
    import cv2

    if not check_images:
        # No real image given: a fixed, smooth pseudo-image (noise alone under-exercises the conv stack).
        rng = np.random.default_rng(0)
        img = cv2.resize(rng.integers(0, 256, (hw[0] // 8 + 1, hw[1] // 8 + 1, 3), dtype=np.uint8), hw[::-1])
        return [img]
    images = []
    for p in check_images:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(f"parity check image {p} is missing or not an image OpenCV can read")
        images.append(img)
    return images


def _reference_outputs(
    model, batch: np.ndarray, end2end: bool, max_det: int
) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch (unfused, FP32) output and decoded pre-TopK predictions for ``batch``."""
    import torch

    head = model.model[-1]
    head.end2end = end2end
    head.max_det = max_det
    with torch.inference_mode():
        y, preds = model(torch.from_numpy(batch))
        # End-to-end: the decoded one-to-one predictions Detect.forward hands to postprocess (TopK).
        decoded = head._inference(preds["one2one"]) if end2end else y
    return y.float().cpu().numpy(), decoded.float().cpu().numpy()


def _export_with_ultralytics(
    checkpoint: Path, workdir: Path, args: Mapping[str, Any]
) -> tuple[Path, list[str]]:
    """Run ``YOLO(copy).export(**args)`` inside ``workdir``; return the .onnx path and logged warnings."""
    from ultralytics import YOLO

    # Workaround: the exporter writes <stem>.onnx beside the checkpoint it loaded, so give it a private copy.
    local = workdir / "model.pt"
    shutil.copyfile(checkpoint, local)
    sink = _UltralyticsWarnings()
    try:
        with no_runtime_installs(), sink.capture():
            produced = YOLO(str(local), task="detect").export(**args)
    except EdgeLoraError:
        raise
    except Exception as exc:  # Ultralytics raises AssertionError/ValueError/RuntimeError for everything
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ToolError(f"Ultralytics ONNX export of {checkpoint} failed: {first}") from exc
    failures = [m for m in sink.messages if "simplifier failure" in m]
    if args.get("simplify") and failures:
        raise ToolError(
            f"onnxslim failed on {checkpoint}: {failures[0]}; export with simplify=False to skip it"
        )
    path = Path(str(produced))
    if path.suffix != ".onnx" or not path.is_file() or path.parent.resolve() != workdir.resolve():
        raise ToolError(
            f"Ultralytics ONNX export of {checkpoint} produced {produced!r}, not an .onnx in {workdir}"
        )
    return path, sink.messages


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
        produced, warnings = _export_with_ultralytics(checkpoint, workdir, args)
        if half:
            _toposort_file(produced)
        proto_meta, checked = _check_graph(produced, end2end)
        inputs = _parity_images(check_images, hw)
        from edge_lora.runtime.prepost import preprocess

        x, _ = preprocess(inputs, hw)
        n = x.shape[0] if dynamic else batch  # a fixed batch: repeat images to fill whole batches
        x = x[np.arange(-(-x.shape[0] // n) * n) % x.shape[0]]
        feeds = np.split(x, x.shape[0] // n)
        parity = _parity(produced, model, feeds, end2end, max_det, tol, len(inputs))
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


def _toposort_file(path: Path) -> None:
    """Re-save an ONNX file with its nodes in topological order.

    Workaround: Ultralytics' CPU FP16 path (``onnxruntime.transformers.float16.convert_float_to_float16`` with
    ``keep_io_types=True``) appends the input Casts at the end of the node list, which ``onnx.checker`` (and
    the ONNX spec) reject. Stable: nodes already in order keep their order.
    """
    import onnx

    proto = onnx.load(str(path))
    graph = proto.graph
    ready = {"", *(i.name for i in graph.input), *(i.name for i in graph.initializer)}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            return  # a cycle or a dangling input: leave it for onnx.checker to report
        pending = rest
    if [n.name for n in ordered] != [n.name for n in graph.node]:
        del graph.node[:]
        graph.node.extend(ordered)
        onnx.save(proto, str(path))


def _dims(value_info) -> tuple[int | None, ...]:
    return tuple(
        d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim
    )


def _check_graph(path: Path, end2end: bool) -> tuple[dict[str, str], dict[str, Any]]:
    """onnx.checker plus the facts we rely on: one image input, one output, Ultralytics metadata."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ToolError(f"the exported ONNX graph fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    missing = [k for k in ("names", "imgsz", "stride", "end2end") if k not in meta]
    if missing:
        raise ToolError(f"the exported ONNX graph lacks Ultralytics metadata {missing}")
    if (meta["end2end"] == "True") != end2end:
        raise ToolError(
            f"Ultralytics exported end2end={meta['end2end']} although end2end={end2end} was requested"
        )
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        raise ToolError(
            f"expected one input and one output, got {[i.name for i in inputs]} -> "
            f"{[o.name for o in proto.graph.output]}"
        )
    out_shape = _dims(proto.graph.output[0])
    if len(out_shape) != 3 or (end2end and out_shape[-1] not in (None, 6)):
        raise ToolError(f"unexpected output shape {out_shape} for end2end={end2end}")
    return meta, {
        "input_name": inputs[0].name,
        "input_shape": _dims(inputs[0]),
        "output_name": proto.graph.output[0].name,
        "output_shape": out_shape,
    }


def _parity(
    path: Path, model, feeds: Sequence[np.ndarray], end2end: bool, max_det: int, tol: float, images: int
) -> ParityResult:
    """Worst ONNX Runtime vs PyTorch result over ``feeds``; end-to-end graphs are also compared before TopK."""
    import onnx

    proto = onnx.load(str(path))
    worst: ParityResult | None = None
    for feed in feeds:
        got, got_decoded = run_onnx(proto, feed, decoded=end2end)
        ref, ref_decoded = _reference_outputs(model, feed, end2end, max_det)
        result = detection_parity(ref, got, end2end=end2end, tolerance=tol)
        if end2end and got_decoded is not None:
            dec = detection_parity(ref_decoded, got_decoded, end2end=False, tolerance=tol)
            result = dataclasses.replace(
                result,
                max_abs=max(result.max_abs, dec.max_abs),
                max_rel=max(result.max_rel, dec.max_rel),
                decoded_max_rel=dec.max_rel,
            )
        if worst is None or (not result.passed, result.max_rel) > (not worst.passed, worst.max_rel):
            worst = result
    assert worst is not None
    return dataclasses.replace(worst, images=images)
