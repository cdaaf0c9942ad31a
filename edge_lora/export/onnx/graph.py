"""ONNX graph facts and one ONNX Runtime run: what the export checks and the QDQ/OpenVINO checks read.

:func:`check_graph` runs ``onnx.checker`` and checks the facts the project relies on (one image input, one
output, Ultralytics metadata); :func:`decoded_tensor_name` finds the decoded predictions before TopK;
:func:`run_onnx` runs a graph once on ONNX Runtime's CPU provider, optionally exposing that tensor.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from edge_lora.errors import ToolError

__all__ = ["check_graph", "decoded_tensor_name", "run_onnx"]


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


def _dims(value_info) -> tuple[int | None, ...]:
    return tuple(
        d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim
    )


def check_graph(path: Path, end2end: bool) -> tuple[dict[str, str], dict[str, Any]]:
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
