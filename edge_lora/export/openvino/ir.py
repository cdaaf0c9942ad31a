"""The OpenVINO IR's files and facts: the FP32 ONNX it starts from, Ultralytics' metadata, quantizer counts.

* :func:`onnx_facts`: what the conversion needs to know about the source ONNX (input, metadata, QDQ nodes);
* :func:`ultralytics_metadata` / :func:`write_metadata`: ``metadata.yaml`` and the IR's ``rt_info`` as
  Ultralytics writes them, so Ultralytics and OpenVINO's Model API read the folder without our code;
* :func:`quantization_stats`: FakeQuantize/FakeConvert counts, quantized and float weighted ops.

Host side (the conversion); the device reads the folder with :mod:`edge_lora.runtime.openvino_rt`.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import importlib.util
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edge_lora.errors import InputError, ModelError, ToolError

__all__ = [
    "BIN_NAME",
    "METADATA_NAME",
    "WEIGHTED_OPS",
    "XML_NAME",
    "OnnxFacts",
    "first_line",
    "import_openvino",
    "onnx_facts",
    "quantization_stats",
    "ultralytics_metadata",
    "versions",
    "write_metadata",
]

XML_NAME, BIN_NAME, METADATA_NAME = "model.xml", "model.bin", "metadata.yaml"


# Weighted ops: the structural walk stops there (the head's last conv is quantized, what follows is not).
WEIGHTED_OPS = frozenset(
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


_LITERAL_KEYS = ("imgsz", "names", "kpt_shape", "kpt_names", "args", "end2end", "dynamic")


_INT_KEYS = ("stride", "batch", "channels")


def import_openvino():
    """The ``openvino`` module; ToolError when it is not installed."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise ToolError("OpenVINO is not installed here: pip install openvino") from exc
    return ov


def versions() -> dict[str, str]:
    """Versions of the packages an IR export depends on (those installed)."""
    out = {}
    for pkg in ("openvino", "nncf", "onnxruntime", "onnx"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[pkg] = importlib.metadata.version(pkg)
    return out


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for error messages."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class OnnxFacts:
    """What :func:`onnx_facts` read: the file, its image input (name, static NCHW shape), its metadata and
    whether it already holds QDQ nodes."""

    path: Path
    input_name: str
    input_shape: tuple[int, ...]
    metadata: dict[str, str]
    has_qdq: bool


def onnx_facts(path: Path) -> OnnxFacts:
    """Read what the conversion needs from the ONNX at ``path``; ModelError/InputError for an unusable graph."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{path} is not a readable ONNX model: {first_line(exc)}") from exc
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
    return OnnxFacts(path, inputs[0].name, tuple(int(d) for d in dims), meta, has_qdq)


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


def write_metadata(ov_model: Any, meta: dict[str, Any], path: Path) -> None:
    """Write ``metadata.yaml`` at ``path`` and Ultralytics' ``rt_info`` into ``ov_model``."""
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
        if op.get_type_name() in WEIGHTED_OPS:
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
