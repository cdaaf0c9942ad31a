"""The shipped backends' own cross-field checks of a target profile (``BackendSpec.profile_checks``).

Each takes a validated :class:`~edge_lora.profiles.schema.TargetProfile` of its backend and returns its
problems as ``(dotted field, message)``; the schema reports them with its own, each at its field. What every
backend shares (the fallback ladder, what int8 requires, the family fit) stays in the schema.
"""

from __future__ import annotations

from typing import Any

__all__ = ["openvino_checks", "tensorrt_checks"]


def openvino_checks(profile: Any) -> list[tuple[str, str]]:
    """An fp32 attempt computed in reduced precision; accuracy-aware quantization without int8."""
    problems: list[tuple[str, str]] = []
    ov = profile.openvino
    chain = profile.precision_chain()
    if ov is not None and "fp32" in chain and ov.inference_precision_hint != "f32":
        problems.append(
            (
                "openvino.inference_precision_hint",
                f"{ov.inference_precision_hint} would run the fp32 attempt in reduced precision; "
                "use f32 or drop fp32 from precision/fallbacks",
            )
        )
    if ov is not None and ov.accuracy_aware and "int8" not in chain:
        problems.append(("openvino.accuracy_aware", "only applies when int8 can be built"))
    return problems


def tensorrt_checks(profile: Any) -> list[tuple[str, str]]:
    """Symmetric int8 only; DLA only on a Jetson that has that core, and not in fp32; JetPack on Jetson."""
    problems: list[tuple[str, str]] = []

    def add(path: str, msg: str) -> None:
        problems.append((path, msg))

    quant = profile.quantization
    if quant is not None:
        if quant.scheme != "s8s8":
            add(
                "quantization.scheme",
                "tensorrt needs s8s8: TensorRT explicit quantization only accepts symmetric int8",
            )
        if quant.reduce_range:
            add("quantization.reduce_range", "onnxruntime only; TensorRT uses the full int8 range")

    trt = profile.tensorrt
    if trt is None:
        return problems
    family = profile.family
    if trt.dla_core is not None:
        have = profile.hardware.dla_cores
        if family != "jetson":
            add("tensorrt.dla_core", f"DLA exists only on Jetson modules, not family {family}")
        elif trt.dla_core >= have:
            none = " (this module has no DLA)" if have == 0 else ""
            add(
                "tensorrt.dla_core", f"core {trt.dla_core} does not exist: hardware.dla_cores is {have}{none}"
            )
        if "fp32" in profile.precision_chain():
            add("tensorrt.dla_core", "DLA runs fp16/int8 only; drop fp32 from precision/fallbacks")
    if family == "jetson" and trt.jetpack is None:
        add("tensorrt.jetpack", 'required on Jetson profiles, e.g. "6.2"')
    if family != "jetson" and trt.jetpack is not None:
        add("tensorrt.jetpack", f"only for Jetson profiles, not family {family}")
    return problems
