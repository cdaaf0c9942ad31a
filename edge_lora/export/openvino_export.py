"""OpenVINO IR export: FP32, FP16-compressed weights, or INT8 by NNCF post-training quantization.

Every precision starts from the FP32 ONNX graph (``openvino.convert_model``), so OpenVINO, ONNX Runtime and
TensorRT artifacts share one graph and one set of node names. The output folder holds exactly what
Ultralytics and :class:`edge_lora.runtime.openvino_rt.OpenVinoRunner` read::

    out_dir/model.xml  model.bin  metadata.yaml

It is written into a temp folder and renamed into place only after the IR compiled on the CPU and ran on a
real image next to ONNX Runtime's FP32 output, so a folder that exists is a folder that works.

What INT8 leaves in float. NNCF gets an ignored scope made of

* the YOLO head's post-processing, found *structurally in the OpenVINO graph*: every op reachable backwards
  from the model outputs before the head's last weighted layer (Convolution/MatMul and its bias Add) is hit.
  That is the box decoding (anchor Add/Subtract, stride Multiply, Concat), the score Sigmoid, the end2end
  TopK/GatherElements/ReduceMax and a DFL block if the head has one. Working on the OpenVINO graph rather
  than on ONNX node names matters: OpenVINO fuses and renames while converting (ONNX ``Sigmoid``+``Mul``
  becomes ``Swish``, ``Div`` by a constant becomes ``Multiply``), so a list of ONNX names silently misses ops;
* the profile's ``openvino.ignored_op_types`` (default Sigmoid, TopK) anywhere in the graph. After
  conversion YOLO's SiLU is ``Swish``, so ``Sigmoid`` only names the head's score activation;
* any extra names/patterns the caller passes in :class:`IgnoredOps`.

Accuracy-aware INT8 (``openvino.accuracy_aware``) runs ``nncf.quantize_with_accuracy_control`` with the
caller's validation function (an mAP function in production); NNCF then reverts the most harmful layers to
float until the drop is within ``max_drop``.

Host side only (imports nncf, which imports torch); the device side reads the IR with the runtime package.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import importlib.util
import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import yaml

from edge_lora.errors import InputError, ModelError, ToolError
from edge_lora.fileio import atomic_output_dir, sha256_file
from edge_lora.validate.parity import cosine_similarity, detection_parity, score_cosine

if TYPE_CHECKING:
    from edge_lora.profiles import OpenVinoSettings, TargetProfile

__all__ = [
    "DEFAULT_INT8_MIN_COSINE",
    "DEFAULT_TOLERANCE",
    "AccuracyControl",
    "IgnoredOps",
    "OpenVinoExport",
    "export_openvino",
    "head_postprocess_ops",
    "quantization_stats",
    "ultralytics_metadata",
]

Precision = Literal["fp32", "fp16", "bf16", "int8"]

#: The parity check against ONNX Runtime FP32 on a real image. FP32 and FP16 (f16 weights, f32 compute on
#: the CPU) must reproduce the final output within this difference relative to the output's scale.
DEFAULT_TOLERANCE: dict[str, float] = {"fp32": 1e-3, "fp16": 2e-2}
#: INT8 is only checked for gross breakage here (its accuracy is gated on the device with mAP): the decoded
#: predictions before post-processing (boxes, class scores per anchor) must point the same way as FP32's,
#: cosine similarity at least this. Element-wise limits do not work for INT8: one anchor's box can move by
#: many pixels while the detections hardly change.
DEFAULT_INT8_MIN_COSINE = 0.9
#: Precisions computed in reduced precision at run time, checked by cosine similarity (not element-wise).
_REDUCED = ("int8", "bf16")

XML_NAME, BIN_NAME, METADATA_NAME = "model.xml", "model.bin", "metadata.yaml"

# Weighted ops: the structural walk stops there (the head's last conv is quantized, what follows is not).
_WEIGHTED = frozenset(
    {"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData", "GroupConvolutionBackpropData"}
)
_QUANTIZER_TYPES = ("FakeQuantize", "FakeConvert")
# Ops that only move or reshape data: a quantizer before them quantizes the weighted op after them.
_PASS_THROUGH = frozenset(
    {
        "Concat",
        "Split",
        "VariadicSplit",
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "MaxPool",
        "Interpolate",
        "StridedSlice",
        "Slice",
        "Pad",
        "Broadcast",
    }
)
_DECOMPRESSION = frozenset({"Convert", "Subtract", "Multiply", "Reshape", "Transpose"})
_INT_WEIGHT_TYPES = frozenset({"i8", "u8", "i4", "u4"})
_PRESETS = {"mixed": "MIXED", "performance": "PERFORMANCE"}
_DEFAULT_SUBSET = 300  # nncf's default when the calibration size is unknown
_LITERAL_KEYS = ("imgsz", "names", "kpt_shape", "kpt_names", "args", "end2end", "dynamic")
_INT_KEYS = ("stride", "batch", "channels")

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class IgnoredOps:
    """What NNCF must leave in float, in OpenVINO terms (``nncf.IgnoredScope``).

    Attributes:
        types: OpenVINO op types, e.g. ``("Sigmoid", "TopK")``; None = the profile's
            ``openvino.ignored_op_types`` (or that field's default without a profile).
        names: exact OpenVINO op (friendly) names.
        patterns: regular expressions on OpenVINO op names, e.g. ``r"/model\\.23/one2one_cv3.*"``.
        head_postprocess: add the YOLO head's post-processing found by :func:`head_postprocess_ops`.
    """

    types: tuple[str, ...] | None = None
    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    head_postprocess: bool = True


@dataclass(frozen=True)
class AccuracyControl:
    """Accuracy-aware INT8 quantization (``nncf.quantize_with_accuracy_control``).

    Attributes:
        validation_data: items ``validation_fn`` understands (e.g. ``(batch, labels)`` pairs); iterated many
            times, so a list or a re-iterable object, not a generator.
        validation_fn: ``validation_fn(compiled_model, items) -> float``, higher is better (e.g. mAP50-95 on
            the 0-1 scale). NNCF calls it on the whole set and on single-item lists while ranking layers.
        max_drop: largest allowed drop of that metric, in its own units (a profile's ``gates.max_map_drop``
            of 1.0 mAP *points* is 0.01 for an mAP on the 0-1 scale).
        drop_type: ``"absolute"`` (metric units) or ``"relative"`` (fraction of the FP32 value).
        max_num_iterations: most layers NNCF may revert to float; None = no limit.
        ranking_subset_size: items used to rank layers; None = NNCF's choice.
        tune_hyperparams: let NNCF tune quantization parameters before reverting layers (slower).
    """

    validation_data: Any
    validation_fn: Callable[[Any, Iterable[Any]], float]
    max_drop: float
    drop_type: Literal["absolute", "relative"] = "absolute"
    max_num_iterations: int | None = None
    ranking_subset_size: int | None = None
    tune_hyperparams: bool = False

    def __post_init__(self) -> None:
        if not callable(self.validation_fn):
            raise InputError("AccuracyControl.validation_fn must be callable(compiled_model, items) -> float")
        if not (self.max_drop >= 0 and math.isfinite(self.max_drop)):
            raise InputError(f"AccuracyControl.max_drop must be a finite number >= 0, got {self.max_drop}")
        if self.drop_type not in ("absolute", "relative"):
            raise InputError(
                f"AccuracyControl.drop_type must be 'absolute' or 'relative', got {self.drop_type!r}"
            )
        if self.max_num_iterations is not None and self.max_num_iterations < 1:
            raise InputError("AccuracyControl.max_num_iterations must be >= 1 or None")


# ---------------------------------------------------------------------------------------------- results
@dataclass
class OpenVinoExport:
    """The outcome of :func:`export_openvino`; truthy when the parity check passed.

    Attributes:
        out_dir, xml, bin, metadata_yaml: the written files.
        precision: fp32, fp16 or int8.
        source: the FP32 ONNX (or checkpoint) given; onnx_sha256: hash of the ONNX the IR was converted from.
        xml_sha256, bin_sha256: hashes of the written IR.
        parity: comparison with ONNX Runtime FP32 on the check image: ``final`` (the output, tie-aware for
            end2end), ``decoded`` (the predictions before post-processing: ``max_rel``, ``cosine_boxes``,
            ``cosine_scores``), and the gate: ``criterion`` (``max_rel`` for fp32/fp16, ``min_cosine`` for
            int8), ``value``, ``limit``, ``passed``; ``sample`` names the image.
        quantization: INT8 only: FakeQuantize/FakeConvert counts, quantized and float weighted ops, the ops
            left float by the ignored scope (see :func:`quantization_stats`), calibration facts.
        accuracy: accuracy-aware INT8 only: the metric of the FP32 and INT8 IR and the drop.
        versions: openvino, nncf, onnxruntime versions.
        seconds: wall time of the export.
    """

    out_dir: Path
    xml: Path
    bin: Path
    metadata_yaml: Path
    precision: Precision
    source: Path
    onnx_sha256: str
    xml_sha256: str
    bin_sha256: str
    parity: dict[str, Any]
    quantization: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.parity.get("passed"))

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (paths as strings)."""
        d = asdict(self)
        for key in ("out_dir", "xml", "bin", "metadata_yaml", "source"):
            d[key] = str(d[key])
        return d


# ------------------------------------------------------------------------------------ lazy third parties
def _import_openvino():
    try:
        import openvino as ov
    except ImportError as exc:
        raise ToolError("OpenVINO is not installed here: pip install openvino") from exc
    return ov


def _import_nncf():
    try:
        import nncf
    except ImportError as exc:
        raise ToolError(
            "NNCF is needed for OpenVINO INT8 and is not installed here: pip install nncf"
        ) from exc
    return nncf


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("openvino", "nncf", "onnxruntime", "onnx"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[pkg] = importlib.metadata.version(pkg)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------ ONNX facts
@dataclass(frozen=True)
class _OnnxFacts:
    path: Path
    input_name: str
    input_shape: tuple[int, ...]
    metadata: dict[str, str]
    has_qdq: bool


def _onnx_facts(path: Path) -> _OnnxFacts:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{path} is not a readable ONNX model: {_first_line(exc)}") from exc
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelError(f"{path}: expected one image input, found {[i.name for i in inputs]}")
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        raise InputError(
            f"{path}: input '{inputs[0].name}' is {dtype}; OpenVINO export starts from the FP32 ONNX "
            f"(FP16 is made with compress_to_fp16), export it without half"
        )
    meta = {p.key: p.value for p in model.metadata_props}
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
    if len(dims) != 4:
        raise ModelError(f"{path}: input '{inputs[0].name}' has rank {len(dims)}, expected NCHW")
    if not all(dims):  # dynamic dims: fill from Ultralytics' metadata
        norm = ultralytics_metadata(meta)
        imgsz = norm.get("imgsz") or [0, 0]
        fill = [int(norm.get("batch") or 1), int(norm.get("channels") or 3), *imgsz]
        dims = [d or f for d, f in zip(dims, fill, strict=True)]
        if not all(dims):
            raise ModelError(f"{path}: input shape is dynamic and the metadata has no imgsz to fix it")
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)
    return _OnnxFacts(path, inputs[0].name, tuple(int(d) for d in dims), meta, has_qdq)


def ultralytics_metadata(raw: dict[str, str]) -> dict[str, Any]:
    """ONNX ``metadata_props`` (strings) as the typed dict Ultralytics writes to ``metadata.yaml``.

    Same conversions as Ultralytics' backend: ``stride``/``batch``/``channels`` to int, ``imgsz``, ``names``,
    ``args``, ``end2end`` … parsed as Python literals; everything else stays a string.
    """
    meta: dict[str, Any] = dict(raw)
    for key in _INT_KEYS:
        if key in meta:
            with contextlib.suppress(TypeError, ValueError):
                meta[key] = int(meta[key])
    for key in _LITERAL_KEYS:
        if isinstance(meta.get(key), str):
            with contextlib.suppress(ValueError, SyntaxError):
                meta[key] = ast.literal_eval(meta[key])
    if isinstance(meta.get("names"), dict):
        with contextlib.suppress(TypeError, ValueError):
            meta["names"] = {int(k): str(v) for k, v in meta["names"].items()}
    if isinstance(meta.get("imgsz"), int):
        meta["imgsz"] = [meta["imgsz"], meta["imgsz"]]
    return meta


# ------------------------------------------------------------------------------- ignored scope (NNCF)
def head_postprocess_ops(ov_model: Any) -> list[str]:
    """Names of the ops after the detection head's last weighted layers: YOLO's post-processing.

    Walks backwards from every model output and stops at weighted ops (Convolution, GroupConvolution,
    MatMul, …) and at the bias ``Add`` that follows them; Constants and Parameters are not listed. A DFL
    Convolution (fixed weights, name containing ``dfl``) is post-processing and is walked through.
    """
    found: list[str] = []
    seen: set[str] = set()
    stack = [result.input_value(0).get_node() for result in ov_model.get_results()]
    while stack:
        node = stack.pop()
        if node.get_name() in seen:  # get_name() is unique per node; friendly names need not be
            continue
        seen.add(node.get_name())
        name = node.get_friendly_name()
        kind = node.get_type_name()
        if kind in ("Constant", "Parameter"):
            continue
        is_dfl = "dfl" in name.lower()
        if kind in _WEIGHTED and not is_dfl:
            continue
        sources = [value.get_node() for value in node.input_values()]
        if (
            kind == "Add"
            and any(s.get_type_name() in _WEIGHTED for s in sources)
            and any(s.get_type_name() == "Constant" for s in sources)
        ):
            continue  # the bias of the head's last conv: part of the conv, quantized with it
        found.append(name)
        stack.extend(sources)
    return sorted(found)


def _ignored_scope(
    nncf: Any, ov_model: Any, ignored: IgnoredOps, types: Sequence[str]
) -> tuple[Any, list[str]]:
    names = set(ignored.names)
    if ignored.head_postprocess:
        names.update(head_postprocess_ops(ov_model))
    present = {op.get_friendly_name() for op in ov_model.get_ops()}
    # validate=False: a type such as TopK only exists in end2end graphs; absence is not an error.
    scope = nncf.IgnoredScope(
        names=sorted(names & present), patterns=list(ignored.patterns), types=list(types), validate=False
    )
    return scope, sorted(names & present)


# --------------------------------------------------------------------------------------- calibration
def _calibration_source(calib: Any, shape: tuple[int, ...]) -> tuple[Any, int | None, str | None]:
    """A re-iterable source of calibration batches shaped like the model input.

    Takes a :class:`~edge_lora.export.calibration.CalibrationSet` (its sized, re-iterable ``iterable()``
    view; full batches only when the model's batch is fixed above 1), or a re-iterable of NCHW arrays.
    Returns (source, number of batches if known, calibration sha256 if known).
    """
    batch, hw = shape[0], (shape[2], shape[3])
    sha = getattr(calib, "sha256", None)
    sha = str(sha) if isinstance(sha, str) else None
    if hasattr(calib, "iterable"):
        source = calib.iterable(hw, batch, drop_last=batch > 1)
        return source, len(source), sha
    if isinstance(calib, np.ndarray):
        calib = [calib]
    if isinstance(calib, Iterator):
        raise InputError("calib must be re-iterable (a list or a CalibrationSet), not a one-shot iterator")
    if not isinstance(calib, Iterable):
        raise InputError(
            f"calib must be a CalibrationSet or a list of NCHW batches, not {type(calib).__name__}"
        )
    length = len(calib) if isinstance(calib, Sized) else None
    return calib, length, sha


def _as_batch(item: Any, shape: tuple[int, ...]) -> np.ndarray:
    """One calibration item as the model's float32 NCHW input (tuples: their first element)."""
    if isinstance(item, (tuple, list)) and item:
        item = item[0]
    arr = np.asarray(item)
    if arr.ndim == 3:
        arr = arr[None]
    if tuple(arr.shape) != tuple(shape):
        raise InputError(f"calibration batch has shape {tuple(arr.shape)}, the model input is {tuple(shape)}")
    return np.ascontiguousarray(arr, dtype=np.float32)


# -------------------------------------------------------------------------------------------- parity
def _check_sample(
    sample: Any, calib_source: Iterable[Any] | None, shape: tuple[int, ...]
) -> tuple[np.ndarray, str]:
    """The input batch of the parity check, and where it came from."""
    if isinstance(sample, np.ndarray):
        return _as_batch(sample, shape), "given batch"
    if sample is not None:
        return _image_batch(Path(sample), shape), str(sample)
    if calib_source is not None:
        for item in calib_source:
            return _as_batch(item, shape), "first calibration batch"
    spec = importlib.util.find_spec("ultralytics")
    if spec is not None and spec.submodule_search_locations:
        bus = Path(next(iter(spec.submodule_search_locations))) / "assets" / "bus.jpg"
        if bus.is_file():
            return _image_batch(bus, shape), "ultralytics/assets/bus.jpg"
    raise InputError("the parity check needs a real image: pass sample=IMAGE or calibration images")


def _image_batch(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    import cv2

    from edge_lora.runtime.prepost import preprocess

    img = cv2.imread(str(path))
    if img is None:
        raise InputError(f"{path}: cannot decode the parity-check image")
    batch, _ = preprocess([img] * shape[0], (shape[2], shape[3]))
    return batch


def _run_ir(
    xml: Path, batch: np.ndarray, extra: str | None, work: Path, inference_precision: str = "f32"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the IR once on CPU with the device's own runner; also return tensor ``extra`` when the IR has it.

    The check runs :class:`~edge_lora.runtime.openvino_rt.OpenVinoRunner`, so it measures what the device
    compiles. The runner runs an IR as it is on disk, so to see ``extra`` (the decoded predictions before
    post-processing) a copy with that tensor added as an output is saved in ``work`` and run instead.
    """
    from edge_lora.runtime.openvino_rt import OpenVinoRunner

    ov = _import_openvino()
    try:
        model = ov.Core().read_model(str(xml))
    except Exception as exc:
        raise ToolError(f"the exported IR {xml} cannot be read back: {_first_line(exc)}") from exc
    n_outputs = len(model.outputs)
    if n_outputs != 1:
        raise ToolError(f"{xml}: {n_outputs} outputs; a YOLO detection export has one")
    run_xml = xml
    if extra is not None:
        try:
            model.add_outputs([extra])
        except RuntimeError:  # the tensor was fused away: compare the final output only
            extra = None
        else:
            run_xml = work / "parity_check.xml"
            # compress_to_fp16=False: the copy keeps the weights exactly as the artifact stores them.
            ov.save_model(model, str(run_xml), compress_to_fp16=False)
    # f32 unless the artifact is bf16: the check measures the IR, not the CPU's bf16 default on
    # AMX/AVX512-BF16 machines.
    runner = OpenVinoRunner(run_xml, device="CPU", inference_precision=inference_precision)
    try:
        with runner:
            outputs = list(runner.infer(batch).values())
    except (ToolError, ModelError) as exc:
        raise ToolError(f"the exported IR {xml} does not compile or run on CPU: {exc}") from exc
    return outputs[0], (outputs[1] if extra is not None else None)


def _parity(
    xml: Path, facts: _OnnxFacts, batch: np.ndarray, precision: str, limit: float, work: Path
) -> dict[str, Any]:
    """Compare the IR with ONNX Runtime FP32 on ``batch`` (see :data:`DEFAULT_TOLERANCE`)."""
    import onnx

    from edge_lora.export.onnx_export import decoded_tensor_name, run_onnx

    proto = onnx.load(str(facts.path))
    ref, ref_decoded = run_onnx(proto, batch, decoded=True)
    hint = "bf16" if precision == "bf16" else "f32"
    got, got_decoded = _run_ir(xml, batch, decoded_tensor_name(proto), work, hint)
    meta = ultralytics_metadata(facts.metadata)
    end2end = bool(meta["end2end"]) if "end2end" in meta else (ref.ndim == 3 and ref.shape[-1] == 6)
    final = detection_parity(
        ref, got, end2end=end2end, tolerance=math.inf if precision in _REDUCED else limit
    )
    if got.shape != ref.shape or not np.isfinite(got).all():
        raise ToolError(
            f"{xml}: the output is non-finite or shaped {tuple(got.shape)} instead of ONNX Runtime's "
            f"{tuple(ref.shape)}"
        )
    report: dict[str, Any] = {"final": final.to_dict()}
    # Decoded (N, 4 + nc, anchors) predictions, position by position: no TopK ties to worry about.
    a, b = (ref_decoded, got_decoded) if ref_decoded is not None and got_decoded is not None else (ref, got)
    boxes, scores = (a[:, :4], b[:, :4]), (a[:, 4:], b[:, 4:])
    report["decoded"] = {
        "compared": "decoded" if a is ref_decoded else "final",
        "max_rel": detection_parity(a, b, end2end=False, tolerance=limit).max_rel
        if a is ref_decoded
        else final.max_rel,
        "cosine_boxes": cosine_similarity(*boxes),
        "cosine_scores": score_cosine(*scores),
    }
    if precision in _REDUCED:
        worst = min(report["decoded"]["cosine_boxes"], report["decoded"]["cosine_scores"])
        report.update({"criterion": "min_cosine", "value": worst, "limit": limit, "passed": worst >= limit})
    else:
        report.update(
            {"criterion": "max_rel", "value": final.max_rel, "limit": limit, "passed": final.passed}
        )
    report["reference"] = "onnxruntime CPUExecutionProvider, FP32 ONNX"
    report["inference_precision"] = hint
    return report


# ------------------------------------------------------------------------------------ quantization stats
def _int_weights(value: Any, depth: int = 6) -> bool:
    """True if ``value`` is an int8/int4 constant behind NNCF's weight decompression (Convert, Subtract
    zero point, Multiply scale, Reshape)."""
    node = value.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        return node.get_element_type().get_type_name() in _INT_WEIGHT_TYPES
    if depth == 0 or kind not in _DECOMPRESSION:
        return False
    return any(_int_weights(source, depth - 1) for source in node.input_values())


def _reaches_quantizer(value: Any, depth: int = 12) -> bool:
    """True if ``value`` comes from a FakeQuantize/FakeConvert, looking through ops that only move data
    (Concat, Split, Reshape, MaxPool, …), or is an int8 weight."""
    node = value.get_node()
    kind = node.get_type_name()
    if kind in _QUANTIZER_TYPES or _int_weights(value):
        return True
    if depth == 0 or kind not in _PASS_THROUGH:
        return False
    return any(_reaches_quantizer(source, depth - 1) for source in node.input_values())


def quantization_stats(ov_model: Any, float_ops: Sequence[str] = ()) -> dict[str, Any]:
    """Counts for the benchmark: quantizer nodes, quantized and float weighted ops, ops kept float.

    A weighted op (Convolution, MatMul, …) counts as quantized when an input comes from a
    FakeQuantize/FakeConvert or from int8 weights (NNCF stores quantized weights as int8 constants and a
    decompression Convert/Multiply), looking through data-movement ops such as Concat and Split;
    ``float_weighted_ops`` are the others (reverted by accuracy control, or ignored). ``float_ops`` lists
    the ignored-scope ops still present; ``float_ops_count`` adds both.
    """
    ops = ov_model.get_ordered_ops()
    types = Counter(op.get_type_name() for op in ops)
    present = {op.get_friendly_name() for op in ops}
    quantized, float_weighted = [], []
    for op in ops:
        if op.get_type_name() in _WEIGHTED:
            hit = any(_reaches_quantizer(v) for v in op.input_values())
            (quantized if hit else float_weighted).append(op.get_friendly_name())
    kept = sorted(name for name in float_ops if name in present)
    return {
        "fake_quantize_nodes": types.get("FakeQuantize", 0),
        "fake_convert_nodes": types.get("FakeConvert", 0),
        "quantized_ops": len(quantized),
        "float_weighted_ops": sorted(float_weighted),
        "float_ops_count": len(kept) + len(float_weighted),
        "ignored_ops": kept,
    }


# ------------------------------------------------------------------------------------------ metadata
def _write_metadata(ov_model: Any, meta: dict[str, Any], path: Path) -> None:
    # rt_info as Ultralytics writes it, so OpenVINO's Model API can preprocess without our code.
    names = meta.get("names") if isinstance(meta.get("names"), dict) else {}
    args = meta.get("args") if isinstance(meta.get("args"), dict) else {}
    ov_model.set_rt_info("YOLO", ["model_info", "model_type"])
    ov_model.set_rt_info(True, ["model_info", "reverse_input_channels"])
    ov_model.set_rt_info(114, ["model_info", "pad_value"])
    ov_model.set_rt_info([255.0], ["model_info", "scale_values"])
    ov_model.set_rt_info(float(args.get("iou") or 0.7), ["model_info", "iou_threshold"])
    ov_model.set_rt_info([str(v).replace(" ", "_") for v in names.values()], ["model_info", "labels"])
    ov_model.set_rt_info("fit_to_window_letterbox", ["model_info", "resize_type"])
    path.write_text(yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=120), encoding="utf-8")


# ---------------------------------------------------------------------------------------------- main
def _resolve_settings(
    profile_settings: OpenVinoSettings | TargetProfile | None,
) -> tuple[OpenVinoSettings, TargetProfile | None]:
    from edge_lora.profiles import OpenVinoSettings, TargetProfile

    if profile_settings is None:
        return OpenVinoSettings(), None
    if isinstance(profile_settings, TargetProfile):
        if profile_settings.backend != "openvino" or profile_settings.openvino is None:
            raise InputError(
                f"profile {profile_settings.name} is for backend {profile_settings.backend}, not openvino"
            )
        return profile_settings.openvino, profile_settings
    if isinstance(profile_settings, OpenVinoSettings):
        return profile_settings, None
    raise InputError(
        f"profile_settings must be OpenVinoSettings or a TargetProfile, not {type(profile_settings)}"
    )


def _target_device(nncf: Any, device: str) -> Any:
    if device == "CPU":
        return nncf.TargetDevice.CPU
    if device.startswith("GPU"):
        return nncf.TargetDevice.GPU
    if device == "NPU":
        return nncf.TargetDevice.NPU
    return nncf.TargetDevice.ANY


def _source_onnx(
    source: Path,
    work: Path,
    profile: TargetProfile | None,
    imgsz: int | None,
    opset: int | None,
    sample: Any,
) -> Path:
    """The FP32 ONNX to convert: ``source`` itself, or ``source`` (a ``.pt``) exported into ``work``."""
    if not source.exists():
        raise InputError(f"{source} not found")
    if source.suffix.lower() == ".onnx":
        return source
    if source.suffix.lower() != ".pt":
        raise InputError(f"{source}: give the FP32 .onnx or a merged .pt checkpoint")
    from edge_lora.export.onnx_export import export_onnx

    imgsz = imgsz or (profile.imgsz if profile else None)
    if imgsz is None:
        raise InputError(f"exporting {source} to ONNX first needs imgsz (or a TargetProfile)")
    shape: dict[str, Any] = {}
    if profile is not None:
        shape = {"end2end": profile.output == "end2end", "batch": profile.batch, "max_det": profile.max_det}
    out = work / "source.onnx"
    opset = opset or (profile.opset if profile else 17)
    if isinstance(sample, (str, Path)):
        shape["check_images"] = [sample]  # prove the ONNX on the same real image as the IR
    export_onnx(source, out, imgsz=imgsz, opset=opset, half=False, write_sidecar=False, **shape)
    return out


def export_openvino(
    source: str | Path,
    out_dir: str | Path,
    *,
    precision: Precision,
    calib: Any = None,
    profile_settings: OpenVinoSettings | TargetProfile | None = None,
    ignored: IgnoredOps | None = None,
    accuracy_control: AccuracyControl | None = None,
    subset_size: int | None = None,
    sample: np.ndarray | str | Path | None = None,
    tolerance: float | None = None,
    min_cosine: float = DEFAULT_INT8_MIN_COSINE,
    imgsz: int | None = None,
    opset: int | None = None,
    overwrite: bool = False,
) -> OpenVinoExport:
    """Convert the FP32 ONNX (or a merged ``.pt``, exported to ONNX first) to an OpenVINO IR folder.

    Args:
        source: the FP32 ONNX, or a merged checkpoint (exported to ONNX first, in a temp folder, with
            ``imgsz``/``opset`` or the TargetProfile's imgsz, opset, batch, output form and max_det).
        out_dir: output folder; it will hold ``model.xml``, ``model.bin`` and ``metadata.yaml``.
        precision: ``fp32``; ``fp16`` (weights stored as f16, what ``inference_precision_hint`` computes in
            is the device's business); ``bf16`` (the FP32 IR, recorded in ``metadata.yaml`` as computed in
            bfloat16: CPUs with AVX512-BF16 or AMX run it much faster than f32; others run it as f32);
            ``int8`` (NNCF post-training quantization, needs ``calib``).
        calib: INT8 calibration data: a :class:`~edge_lora.export.calibration.CalibrationSet` (streamed
            through its re-iterable ``iterable()`` view) or a re-iterable of NCHW float32 batches shaped like
            the model input.
        profile_settings: the profile's ``openvino`` section, or the whole TargetProfile: NNCF preset,
            ignored op types, target device, whether accuracy control is required.
        ignored: what INT8 leaves float (see :class:`IgnoredOps`; default: head post-processing + the
            profile's ignored op types and keep_float_nodes patterns).
        accuracy_control: run accuracy-aware quantization with this validation function and data. Required
            when the profile sets ``openvino.accuracy_aware``.
        subset_size: calibration batches NNCF uses; default all of them (300 if their number is unknown).
        sample: the parity-check input: an NCHW batch or an image path; default the first calibration batch,
            else Ultralytics' bus.jpg.
        tolerance: fp32/fp16: largest ``max_rel`` difference of the final output from ONNX Runtime FP32
            (default :data:`DEFAULT_TOLERANCE`).
        min_cosine: int8, bf16: smallest cosine similarity of the decoded boxes and scores with FP32's.
        imgsz, opset: only for a ``.pt`` source.
        overwrite: replace an existing ``out_dir``.

    Raises:
        InputError: bad arguments, missing calibration/validation data.
        ToolError: conversion, quantization, compilation or the parity check failed (nothing is written).
    """
    started = time.perf_counter()
    if precision not in ("fp32", "fp16", "bf16", "int8"):
        raise InputError(f"precision must be fp32, fp16, bf16 or int8, got {precision!r}")
    settings, profile = _resolve_settings(profile_settings)
    if precision != "int8":
        if accuracy_control is not None:
            raise InputError("accuracy_control only applies to int8")
    elif calib is None:
        raise InputError("int8 needs calibration images (calib)")
    elif settings.accuracy_aware and accuracy_control is None:
        raise InputError(
            "the profile sets openvino.accuracy_aware: pass accuracy_control (validation data and function)"
        )
    if subset_size is not None and subset_size < 1:
        raise InputError(f"subset_size must be >= 1, got {subset_size}")
    if precision in _REDUCED:
        limit = float(min_cosine)
    else:
        limit = DEFAULT_TOLERANCE[precision] if tolerance is None else float(tolerance)
    ov = _import_openvino()

    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        work = tmp / ".work"
        work.mkdir()
        onnx_path = _source_onnx(Path(source), work, profile, imgsz, opset, sample)
        facts = _onnx_facts(onnx_path)
        if facts.has_qdq:
            raise InputError(
                f"{onnx_path} already holds QuantizeLinear/DequantizeLinear nodes; OpenVINO starts from the "
                f"FP32 ONNX and quantizes with NNCF"
            )
        onnx_sha = sha256_file(onnx_path)
        try:
            model = ov.convert_model(str(onnx_path))
        except Exception as exc:
            raise ToolError(f"OpenVINO cannot convert {onnx_path}: {_first_line(exc)}") from exc

        calib_source = None
        quant: dict[str, Any] | None = None
        accuracy: dict[str, Any] | None = None
        if precision == "int8":
            calib_source, n_batches, calib_sha = _calibration_source(calib, facts.input_shape)
            first = next(iter(calib_source), None)
            if first is None:
                raise InputError("the calibration data is empty")
            _as_batch(first, facts.input_shape)  # a wrong shape fails here, not deep inside NNCF
            subset = subset_size or n_batches or _DEFAULT_SUBSET
            types = settings.ignored_op_types if ignored is None or ignored.types is None else ignored.types
            ignored = ignored or IgnoredOps(patterns=tuple(settings.keep_float_nodes))
            scope, float_ops = _ignored_scope(_import_nncf(), model, ignored, types)
            model, accuracy = _quantize(
                model, calib_source, facts.input_shape, subset, settings, scope, accuracy_control
            )
            quant = quantization_stats(model, float_ops)
            quant.update(
                {
                    "preset": settings.nncf_preset,
                    "target_device": settings.device,
                    "ignored_types": list(types),
                    "ignored_patterns": list(scope.patterns),
                    "subset_size": subset,
                    "calibration_batches": n_batches,
                    "calibration_sha256": calib_sha,
                    "accuracy_aware": accuracy_control is not None,
                }
            )

        meta = ultralytics_metadata(facts.metadata)
        if precision == "bf16":  # runners compile it with INFERENCE_PRECISION_HINT bf16 (what was validated)
            meta["inference_precision"] = "bf16"
        xml = tmp / XML_NAME
        _write_metadata(model, meta, tmp / METADATA_NAME)
        try:
            ov.save_model(model, str(xml), compress_to_fp16=precision == "fp16")
        except Exception as exc:
            raise ToolError(f"OpenVINO cannot save the IR: {_first_line(exc)}") from exc

        batch, sample_source = _check_sample(sample, calib_source, facts.input_shape)
        parity = _parity(xml, facts, batch, precision, limit, work)
        parity["sample"] = sample_source
        if not parity["passed"]:
            what = (
                f"its decoded predictions have cosine similarity {parity['value']:.3g} with FP32's, below "
                f"{limit:g}"
                if precision in _REDUCED
                else f"it differs by {parity['value']:.3g} relative to the output scale, above {limit:g}"
                f" ({parity['final']['unmatched']} detections without a counterpart)"
            )
            raise ToolError(
                f"the {precision} IR does not reproduce ONNX Runtime FP32 on {sample_source}: {what}"
            )
        result = OpenVinoExport(
            out_dir=Path(out_dir),
            xml=Path(out_dir) / XML_NAME,
            bin=Path(out_dir) / BIN_NAME,
            metadata_yaml=Path(out_dir) / METADATA_NAME,
            precision=precision,
            source=Path(source),
            onnx_sha256=onnx_sha,
            xml_sha256=sha256_file(xml),
            bin_sha256=sha256_file(tmp / BIN_NAME),
            parity=parity,
            quantization=quant,
            accuracy=accuracy,
            versions=_versions(),
        )
        shutil.rmtree(work)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


@contextlib.contextmanager
def _quiet_nncf(nncf: Any) -> Iterator[None]:
    """NNCF logs one INFO line per node it skips; keep warnings only while it runs."""
    logger = logging.getLogger("nncf")
    level = logger.level
    nncf.set_log_level(logging.WARNING)
    try:
        yield
    finally:
        nncf.set_log_level(level or logging.INFO)


def _quantize(
    model: Any,
    calib_source: Iterable[Any],
    shape: tuple[int, ...],
    subset: int,
    settings: OpenVinoSettings,
    scope: Any,
    control: AccuracyControl | None,
) -> tuple[Any, dict[str, Any] | None]:
    nncf = _import_nncf()
    dataset = nncf.Dataset(calib_source, lambda item: _as_batch(item, shape))
    common = {
        "preset": getattr(nncf.QuantizationPreset, _PRESETS[settings.nncf_preset]),
        "target_device": _target_device(nncf, settings.device),
        "subset_size": subset,
        "model_type": None,
        "ignored_scope": scope,
    }
    with _quiet_nncf(nncf):
        try:
            if control is None:
                return nncf.quantize(model, dataset, **common), None
            from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

            restorer = AdvancedAccuracyRestorerParameters(
                tune_hyperparams=control.tune_hyperparams, ranking_subset_size=control.ranking_subset_size
            )
            if control.max_num_iterations is not None:
                restorer.max_num_iterations = control.max_num_iterations
            quantized = nncf.quantize_with_accuracy_control(
                model,
                dataset,
                nncf.Dataset(control.validation_data),
                control.validation_fn,
                max_drop=control.max_drop,
                drop_type=getattr(nncf.DropType, control.drop_type.upper()),
                advanced_accuracy_restorer_parameters=restorer,
                **common,
            )
        except (InputError, ToolError):
            raise
        except Exception as exc:
            raise ToolError(f"NNCF quantization failed: {_first_line(exc)}") from exc
    return quantized, _measure_accuracy(model, quantized, control)


def _measure_accuracy(fp32: Any, int8: Any, control: AccuracyControl) -> dict[str, Any]:
    """The caller's metric on the FP32 and the final INT8 model, for the report."""
    ov = _import_openvino()
    core = ov.Core()
    values = {}
    for label, model in (("fp32", fp32), ("int8", int8)):
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        values[label] = float(control.validation_fn(compiled, control.validation_data))
    drop = values["fp32"] - values["int8"]
    if control.drop_type == "relative":
        drop = drop / abs(values["fp32"]) if values["fp32"] else math.inf
    return {
        "metric_fp32": values["fp32"],
        "metric_int8": values["int8"],
        "drop": drop,
        "drop_type": control.drop_type,
        "max_drop": control.max_drop,
        "within_max_drop": drop <= control.max_drop,
    }
