"""Measure what keeping some quantized nodes float would do, without re-running the quantizer.

The accuracy-aware search (:mod:`edge_lora.export.onnx.mixed_precision`) tries tens of "these convs float"
variants of one INT8 QDQ graph. ``quantize_static`` takes ~3 s per call for YOLO26n even with cached ranges
(it re-plans and re-quantizes the whole graph), so each trial is made here instead by rewiring the QDQ
graph: the chosen nodes read their FP32 inputs again (the activation before its QuantizeLinear, the FP32
weight and bias from the float graph) and the Q/DQ pairs nothing reads any more are dropped. Every other
node keeps its exact scales, so a trial differs from plain INT8 only in the reverted nodes. The artifact
that ships is still made by ONNX Runtime's quantizer, once, with the chosen nodes excluded
(``nodes_to_exclude``); only the measurement uses this rewiring.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

__all__ = ["float_readers", "quantized_nodes", "revert_to_float"]

_FLOAT_SUFFIX = "__float"


def quantized_nodes(qdq: onnx.ModelProto, op_types: Iterable[str] = ("Conv",)) -> list[str]:
    """Names of the ``op_types`` nodes of ``qdq`` that read at least one DequantizeLinear, in graph order."""
    producer = {out: n.op_type for n in qdq.graph.node for out in n.output}
    types = set(op_types)
    return [
        n.name
        for n in qdq.graph.node
        if n.op_type in types and any(producer.get(i) == "DequantizeLinear" for i in n.input)
    ]


def revert_to_float(qdq: onnx.ModelProto, fp32: onnx.ModelProto, nodes: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``qdq`` in which ``nodes`` compute in FP32, as ``nodes_to_exclude`` would have made them.

    ``fp32`` is the graph ``qdq`` was quantized from (same node names). Each input of a reverted node that
    comes from a DequantizeLinear is replaced by the FP32 graph's input at the same position: the float
    activation (the QuantizeLinear's input, still computed for any other reader) or the FP32 initializer,
    added under a new name because ONNX Runtime names a bias's DequantizeLinear output like the float bias.
    """
    import onnx

    wanted = set(nodes)
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    float_nodes = {n.name: n for n in fp32.graph.node if n.name in wanted}
    missing = wanted - set(float_nodes)
    if missing:
        raise KeyError(f"not in the FP32 graph: {sorted(missing)[:3]}")
    float_inits = {t.name: t for t in fp32.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    present = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.name not in wanted:
            continue
        source = float_nodes[node.name]
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or i >= len(source.input):
                continue
            original = source.input[i]
            if original in float_inits:
                renamed = original + _FLOAT_SUFFIX
                if renamed not in present:
                    copy = onnx.TensorProto()
                    copy.CopyFrom(float_inits[original])
                    copy.name = renamed
                    model.graph.initializer.append(copy)
                    present.add(renamed)
                original = renamed
            node.input[i] = original
    _float_outputs(model, wanted)
    _drop_unread(model)
    return model


def float_readers(model: onnx.ModelProto, op_types: Iterable[str] = ("Conv",)) -> int:
    """Let the float readers of a quantized conv input read the float tensor, in place; return how many.

    ONNX Runtime shares a tensor's one DequantizeLinear (or, for TensorRT, a dedicated copy) with every
    reader, so a residual Add or a Concat that reads a conv's input reads it rounded. Quant-aware training
    rounds only what the conv reads (:mod:`edge_lora.train.quant_aware`), so the graph of a quant-aware
    adapter gives the other readers the float tensor back, which is what was trained. A tensor a quantized
    node writes (ONNX Runtime's u8s8 Conv output) keeps its readers: that rounding is ONNX Runtime's fusion.
    """
    producer = {out: n for n in model.graph.node for out in n.output}
    quantized = set(quantized_nodes(model, op_types))
    types = set(op_types)
    bypass: dict[str, str] = {}  # DQ output -> the float tensor its Q read
    for n in model.graph.node:
        q = producer.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue  # not a DQ, or a weight's
        writer = producer.get(q.input[0])
        if writer is not None and writer.name in quantized:
            continue
        bypass[n.output[0]] = q.input[0]
    changed = 0
    for n in model.graph.node:
        if n.op_type in types or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(n.input):
            if name in bypass:
                n.input[i] = bypass[name]
                changed += 1
    if changed:
        _drop_unread(model)
    return changed


def _float_outputs(model: onnx.ModelProto, reverted: set[str]) -> None:
    """Activations that nothing quantized touches any more are read float again, by every reader.

    ONNX Runtime quantizes a tensor when a quantized node reads it or (ONNX Runtime placement) writes it,
    and shares the one DequantizeLinear with every reader, float ops (Add, Concat, SiLU) included. With
    those nodes excluded, the tensor would not be quantized at all: so a Q/DQ pair whose tensor is now
    neither written nor read by a quantized node is bypassed for all its readers.
    """
    producer = {out: n for n in model.graph.node for out in n.output}
    quantized = set(quantized_nodes(model)) - reverted
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    bypass: dict[str, str] = {}  # DQ output -> the float tensor its Q read
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        q = producer.get(n.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue  # a weight or bias: handled per reverted node
        tensor = q.input[0]
        writer = producer.get(tensor)
        if writer is not None and writer.name in quantized:
            continue
        if any(r.name in quantized for r in readers.get(n.output[0], ())):
            continue
        bypass[n.output[0]] = tensor
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            if name in bypass:
                n.input[i] = bypass[name]


def _drop_unread(model: onnx.ModelProto) -> None:
    """Remove nodes whose outputs nothing reads (the orphaned Q/DQ pairs) and initializers nothing reads."""
    outputs = {o.name for o in model.graph.output}
    while True:
        read = outputs | {i for n in model.graph.node for i in n.input}
        dead = [n for n in model.graph.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    read = {i for n in model.graph.node for i in n.input}
    kept = [t for t in model.graph.initializer if t.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
