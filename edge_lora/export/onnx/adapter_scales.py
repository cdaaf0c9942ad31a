"""The activation scales a quant-aware adapter was trained with, put into the QDQ graph unchanged.

``edge-lora train --quant-aware`` fake-quantizes the input of every adapted conv with a fixed scale and zero
point (:mod:`edge_lora.train.quant_aware`), recorded in the adapter package and carried by ``merge`` into the
merged checkpoint's provenance (``adapter.quant_aware``). Re-calibrating at export would give those tensors
other scales than the ones the adapter learned to live with, so the export hands them to ONNX Runtime's
quantizer as ``TensorQuantOverrides`` (scale + zero point per tensor) and checks afterwards that every
QuantizeLinear reading such a tensor holds exactly the adapter's numbers. Tensors no adapted conv reads are
calibrated as usual.

Module names (``model.22.m.0.1.ffn.1.conv``) map to the ONNX nodes of the torch exporter's scope names
(``/model.22/m.0/m.0.1/ffn/ffn.1/conv/Conv``): each scope level is the module's name relative to its
closest non-container ancestor, so a level that extends the previous one (``m.0`` -> ``m.0.1``) adds only
its tail. A recorded conv with no such node is reported, not guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_lora.errors import InputError, ToolError

if TYPE_CHECKING:
    import onnx

__all__ = ["AdapterScales", "adapter_overrides", "check_scales_in_graph", "module_of_node", "scale_overrides"]


@dataclass(frozen=True)
class AdapterScales:
    """The ``quant_aware`` record of a quant-aware adapter, as the export uses it."""

    scheme: str  # "u8s8" | "s8s8"
    target: str | None  # the target profile it was trained for, when one was named
    method: str
    calibration_imgsz: int | None
    scales: dict[str, dict[str, Any]] = field(default_factory=dict)  # conv module -> scale, zero_point, dtype

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> AdapterScales | None:
        """The scales of an adapter package's (or merged checkpoint's) ``quant_aware`` section; None without."""
        if not record or not record.get("scales"):
            return None
        return cls(
            scheme=str(record["scheme"]),
            target=record.get("target"),
            method=str(record.get("method", "")),
            calibration_imgsz=record.get("calibration_imgsz"),
            scales={str(k): dict(v) for k, v in record["scales"].items()},
        )

    def mismatch(self, scheme: str, target: str) -> str | None:
        """Why these scales cannot be used for ``scheme`` on ``target`` (None when they can)."""
        if scheme != self.scheme:
            return (
                f"the adapter was trained quant-aware for {self.scheme}"
                + (f" ({self.target})" if self.target else "")
                + f", but {target} quantizes {scheme}: its scales are not used, INT8 is calibrated as for "
                "any adapter and validated as usual; retrain with --quant-aware "
                f"{target} to train for this target"
            )
        return None

    def imgsz_note(self, imgsz: int | None) -> str | None:
        """A note when the adapter's scales were calibrated at another input size than the export's."""
        if imgsz is not None and self.calibration_imgsz and int(self.calibration_imgsz) != int(imgsz):
            return (
                f"the adapter's quant-aware scales were calibrated at imgsz {self.calibration_imgsz}; "
                f"this export runs at {imgsz} (the scales are used as trained)"
            )
        return None


def module_of_node(node_name: str) -> str | None:
    """``/model.22/m.0/m.0.1/ffn/ffn.1/conv/Conv`` -> ``model.22.m.0.1.ffn.1.conv`` (None if not scoped)."""
    levels = [p for p in node_name.split("/") if p]
    if len(levels) < 2:
        return None
    levels = levels[:-1]  # the op's own name (Conv, Conv_1 ...)
    path, previous = levels[0], levels[0]
    for level in levels[1:]:
        path += level[len(previous) :] if level.startswith(previous + ".") else "." + level
        previous = level
    return path


def _conv_inputs(proto: onnx.ModelProto) -> dict[str, str]:
    """Conv module name -> the activation tensor its Conv node reads."""
    out: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type == "Conv":
            module = module_of_node(node.name)
            if module is not None:
                out.setdefault(module, node.input[0])
    return out


def _typed(entry: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    dtype = np.uint8 if entry["dtype"] == "uint8" else np.int8
    return np.array(entry["scale"], dtype=np.float32), np.array(entry["zero_point"], dtype=dtype)


def scale_overrides(
    proto: onnx.ModelProto, scales: AdapterScales
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str], list[str]]:
    """ONNX Runtime ``TensorQuantOverrides`` fixing each adapted conv's input to the adapter's scale.

    Returns ``(overrides, conv -> tensor, recorded convs with no Conv node in the graph)``. Two adapted convs
    reading one tensor share its quantizer; their recorded scales are then equal (one calibration of the
    same tensor), and a difference is an error rather than a silent choice.
    """
    inputs = _conv_inputs(proto)
    overrides: dict[str, list[dict[str, Any]]] = {}
    tensors: dict[str, str] = {}
    missing: list[str] = []
    owner: dict[str, str] = {}
    for module, entry in sorted(scales.scales.items()):
        tensor = inputs.get(module)
        if tensor is None:
            missing.append(module)
            continue
        scale, zero_point = _typed(entry)
        if tensor in overrides:
            prev = overrides[tensor][0]
            if prev["scale"] != scale or prev["zero_point"] != zero_point:
                raise ToolError(
                    f"quant-aware adapter: convs {owner[tensor]} and {module} read one tensor ({tensor}) "
                    "but record different activation scales"
                )
        else:
            overrides[tensor] = [{"scale": scale, "zero_point": zero_point}]
            owner[tensor] = module
        tensors[module] = tensor
    return overrides, tensors, missing


def adapter_overrides(
    prepared: Path, scales: AdapterScales | None, scheme: str
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any] | None]:
    """:func:`scale_overrides` for the graph at ``prepared`` and the record of what they cover (for the
    artifact's sidecar); ``({}, None)`` without scales."""
    if scales is None:
        return {}, None
    import onnx

    if scales.scheme != scheme:
        raise InputError(
            f"quant-aware scales are {scales.scheme}, the quantization policy is {scheme}; "
            "pass adapter_scales only for the scheme they were trained for"
        )
    overrides, tensors, missing = scale_overrides(onnx.load(str(prepared)), scales)
    if not overrides:
        raise ToolError(
            f"quant-aware adapter: none of its {len(scales.scales)} convs has a Conv node in the ONNX graph "
            f"(e.g. {next(iter(scales.scales), '?')})"
        )
    record = {
        "source": "adapter",
        "scheme": scales.scheme,
        "target": scales.target,
        "method": scales.method,
        "convs": len(tensors),
        "tensors": len(overrides),
        "unmatched": missing,
    }
    return overrides, record


def check_scales_in_graph(
    qproto: onnx.ModelProto, overrides: Mapping[str, list[dict[str, Any]]]
) -> dict[str, int]:
    """Every QuantizeLinear reading an overridden tensor holds exactly its scale and zero point.

    Returns ``{"quantized": tensors with a QuantizeLinear, "float": tensors left float}`` (a conv the policy
    or the accuracy-aware search keeps float has no quantizer to check). Raises ToolError on any difference.
    """
    from onnx import numpy_helper

    # ONNX Runtime writes every scale and zero point as an initializer
    inits = {t.name: t for t in qproto.graph.initializer}

    def value(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(inits[name]) if name in inits else None

    readers: dict[str, list[Any]] = {}
    for node in qproto.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in overrides:
            readers.setdefault(node.input[0], []).append(node)
    for tensor, nodes in readers.items():
        want = overrides[tensor][0]
        for node in nodes:
            scale = value(node.input[1])
            zero_point = value(node.input[2]) if len(node.input) > 2 else None
            if (
                scale is None
                or zero_point is None
                or scale.item() != want["scale"].item()
                or zero_point.item() != want["zero_point"].item()
                or zero_point.dtype != want["zero_point"].dtype
            ):
                raise ToolError(
                    f"the QDQ graph quantizes {tensor} with scale {None if scale is None else scale.item()} / "
                    f"zero point {None if zero_point is None else zero_point.item()}, not the quant-aware "
                    f"adapter's {want['scale'].item()} / {want['zero_point'].item()}"
                )
    return {"quantized": len(readers), "float": len(overrides) - len(readers)}
