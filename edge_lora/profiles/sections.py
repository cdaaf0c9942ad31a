"""The settings sections a target profile is made of: quantization, one per backend, hardware, gates, bench.

Each section is a strict, frozen pydantic model that checks its own fields (value ranges, provider and op
names, regular expressions, a TensorRT range against the JetPack it names). Checks that need the whole
profile (which backend, which precisions) are in :class:`edge_lora.profiles.schema.TargetProfile`.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge_lora.profiles.versions import parse_range, version_satisfies
from edge_lora.schema_errors import raise_if

__all__ = [
    "BenchSettings",
    "Gates",
    "HardwareInfo",
    "OnnxRuntimeSettings",
    "OpenVinoSettings",
    "QuantizationSettings",
    "TensorRTSettings",
]

# ONNX Runtime's provider names (onnxruntime.get_all_providers() of 1.32, plus ones older releases had).
# Checked here so a typo fails when the profile loads, not when the session is created on the device.
_ORT_PROVIDERS: tuple[str, ...] = (
    "CPUExecutionProvider",
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
    "OpenVINOExecutionProvider",
    "DnnlExecutionProvider",
    "DmlExecutionProvider",
    "MIGraphXExecutionProvider",
    "CoreMLExecutionProvider",
    "XnnpackExecutionProvider",
    "QNNExecutionProvider",
    "NnapiExecutionProvider",
    "VitisAIExecutionProvider",
    "VSINPUExecutionProvider",
    "RknpuExecutionProvider",
    "CANNExecutionProvider",
    "WebGpuExecutionProvider",
    "WebNNExecutionProvider",
    "JsExecutionProvider",
    "AzureExecutionProvider",
    "ROCMExecutionProvider",
    "ACLExecutionProvider",
    "ArmNNExecutionProvider",
)


# TensorRT that each JetPack release ships (NVIDIA release notes); used to catch a profile whose
# ``tensorrt.version`` range can never be met on its ``tensorrt.jetpack``. Unknown releases are not checked.
_JETPACK_TENSORRT: dict[str, str] = {
    "5.1": "8.5.2",
    "6.0": "8.6.2",
    "6.1": "10.3.0",
    "6.2": "10.3.0",
}

_OP_TYPE_RE = re.compile(r"^[A-Z][A-Za-z0-9]*$")


def _regex_list(patterns: list[str]) -> list[str]:
    """Validate a list of regular expressions (node-name patterns of quantization settings)."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
    return patterns


class _Strict(BaseModel):
    # strict: YAML already yields real ints/floats/bools, so a string where a number belongs is a
    # mistake to report, not to coerce. frozen: a loaded profile is a fact its sha256 vouches for.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _quoted_version(value: Any, example: str) -> Any:
    # YAML reads `jetpack: 6.10` as the float 6.1; refuse numbers instead of guessing what was meant.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f"write versions as quoted strings, e.g. {example} (YAML reads 6.10 as 6.1)")
    return value


class QuantizationSettings(_Strict):
    """How the ONNX graph is quantized to INT8 QDQ (onnxruntime and tensorrt backends)."""

    scheme: Literal["u8s8", "s8s8"] = Field(
        description=(
            "Activation/weight integer types. 'u8s8': uint8 activations (asymmetric) and int8 weights, "
            "ONNX Runtime's fastest path on x86 CPUs with VNNI. 's8s8': int8 activations and weights, both "
            "symmetric; required for TensorRT (explicit quantization only accepts symmetric int8) and "
            "ONNX Runtime's recommended default on ARM64."
        )
    )
    per_channel: bool = Field(
        True,
        description="Quantize Conv weights with one scale per output channel (more accurate) instead of "
        "one per tensor.",
    )
    reduce_range: bool = Field(
        False,
        description="Quantize weights to 7 bits. Avoids int16 overflow in u8s8 kernels on x86 CPUs with "
        "AVX2/AVX-512 but without VNNI, at a small accuracy cost; onnxruntime only.",
    )
    op_types: list[str] = Field(
        default_factory=lambda: ["Conv"],
        min_length=1,
        description="ONNX op types that get QuantizeLinear/DequantizeLinear pairs. Conv alone keeps the "
        "detection head's arithmetic float and carries almost all of YOLO's compute.",
    )
    keep_float_op_types: list[str] = Field(
        default_factory=lambda: ["Sigmoid", "TopK", "GatherElements", "ReduceMax"],
        description="ONNX op types that always stay float (scores, top-k selection, box gathering of the "
        "end2end post-processing), even if a broader op_types list would cover them.",
    )
    keep_float_nodes: list[str] = Field(
        default_factory=list,
        description="Regular expressions on ONNX node names (e.g. '^/model\\.23/.*') whose nodes stay "
        "float; use to protect a sensitive layer found by a per-layer accuracy check.",
    )
    float_stem: bool = Field(
        True,
        description="Keep the conv that reads the image float. On the DeepPCB YOLO26n a u8s8 QDQ lost 0.75 "
        "mAP50-95 points (vs FP32) with the stem quantized, 0.04 with it float; latency within the host's noise.",
    )
    calibrate_method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax",
        description="How activation ranges are computed from the calibration images: 'minmax' (plain "
        "range), 'entropy' (KL-divergence threshold) or 'percentile' (clips outliers).",
    )
    accuracy_aware: bool = Field(
        False,
        description="Accuracy-aware mixed precision: after plain INT8, rank the quantized convs by measured "
        "sensitivity on the calibration recipe's labelled validation images (validation_split, train by "
        "default: the val images that gate the build stay unseen) and keep the fewest float until the INT8 "
        "drop on those images is within target_map_drop (at most max_float_layers). Needs --data and a "
        "recipe with validation_images > 0; adds a few minutes to the export.",
    )
    target_map_drop: float = Field(
        0.2,
        ge=0.0,
        le=100.0,
        description="accuracy_aware: the INT8 drop (mAP50-95 points, 0-100 scale, vs the FP32 export on the "
        "validation images) the search aims for. gates.max_map_drop stays the hard gate on the val split.",
    )
    max_float_layers: int = Field(
        8,
        ge=0,
        le=64,
        description="accuracy_aware: at most this many convs kept float (each costs INT8 speed).",
    )

    @field_validator("op_types", "keep_float_op_types")
    @classmethod
    def _op_type_names(cls, value: list[str]) -> list[str]:
        for op in value:
            if not _OP_TYPE_RE.match(op):
                raise ValueError(f"{op!r} is not an ONNX op type name (CamelCase, e.g. 'Conv', 'MatMul')")
        if len(set(value)) != len(value):
            raise ValueError("lists an op type twice")
        return value

    @field_validator("keep_float_nodes")
    @classmethod
    def _node_patterns(cls, value: list[str]) -> list[str]:
        return _regex_list(value)

    @model_validator(mode="after")
    def _disjoint(self) -> QuantizationSettings:
        both = sorted(set(self.op_types) & set(self.keep_float_op_types))
        if both:
            msg = f"{', '.join(both)} also listed in op_types; an op is either quantized or kept float"
            raise_if([("keep_float_op_types", msg)])
        return self


class OnnxRuntimeSettings(_Strict):
    """ONNX Runtime session settings used on the device."""

    execution_providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        min_length=1,
        description="Execution providers in priority order, as ONNX Runtime names them. Nodes no provider "
        "claims run on the CPU provider.",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        le=1024,
        description="Threads for one operator. 0 = ONNX Runtime's default, one per physical core; set it "
        "lower when the line PC also runs the camera/PLC software.",
    )
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = Field(
        "all",
        description="ONNX Runtime graph optimizations (ORT_DISABLE_ALL .. ORT_ENABLE_ALL). 'all' includes "
        "layout and QDQ fusions that INT8 speed depends on.",
    )

    @field_validator("execution_providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        for ep in value:
            if ep not in _ORT_PROVIDERS:
                close = difflib.get_close_matches(ep, _ORT_PROVIDERS, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(_ORT_PROVIDERS)}"
                raise ValueError(f"unknown execution provider {ep!r}; {hint}")
        if len(set(value)) != len(value):
            raise ValueError("lists an execution provider twice")
        return value


class OpenVinoSettings(_Strict):
    """OpenVINO compile settings; INT8 is produced by NNCF post-training quantization."""

    device: str = Field(
        "CPU",
        pattern=r"^(CPU|GPU(\.\d+)?|NPU|AUTO)$",
        description="OpenVINO device: CPU, GPU (integrated or first GPU), GPU.N, NPU or AUTO. Prefer an "
        "explicit device for validation: AUTO starts on CPU while the GPU compiles, which skews latency.",
    )
    performance_hint: Literal["LATENCY", "THROUGHPUT"] = Field(
        "LATENCY",
        description="OpenVINO performance hint: LATENCY (one request at a time, what an inspection line "
        "does) or THROUGHPUT (many parallel requests).",
    )
    inference_precision_hint: Literal["f32", "bf16", "f16"] = Field(
        "f32",
        description="Precision OpenVINO computes float layers in. Pinned to f32 by default because the CPU "
        "plugin otherwise picks bf16 on Xeons with AMX/AVX512-BF16, which changes accuracy; f16 suits "
        "GPU/NPU. bf16 is CPU-only.",
    )
    num_streams: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Parallel inference streams; null lets the performance hint choose.",
    )
    nncf_preset: Literal["performance", "mixed"] = Field(
        "mixed",
        description="NNCF quantization preset: 'mixed' = asymmetric activations / symmetric weights (keeps "
        "SiLU's negative range, what Ultralytics uses), 'performance' = symmetric everywhere.",
    )
    ignored_op_types: list[str] = Field(
        default_factory=lambda: ["Sigmoid", "TopK"],
        description="OpenVINO op types NNCF must leave in float (its ignored_scope types); OpenVINO names, "
        "e.g. Multiply, not ONNX's Mul.",
    )
    keep_float_nodes: list[str] = Field(
        default_factory=list,
        description="Regular expressions on OpenVINO op names (matched from the start, as NNCF does) that "
        "INT8 leaves float, e.g. '/model\\.1/conv/'. Pin here the layers an accuracy-aware export reverted "
        "(its quantization.float_weighted_ops) to rebuild in seconds without accuracy control.",
    )
    accuracy_aware: bool = Field(
        False,
        description="Use NNCF accuracy-aware quantization: layers are reverted to float until the mAP drop "
        "is within gates.max_map_drop. Needs a calibration recipe with validation_images > 0.",
    )

    @field_validator("keep_float_nodes")
    @classmethod
    def _node_patterns(cls, value: list[str]) -> list[str]:
        return _regex_list(value)

    @field_validator("ignored_op_types")
    @classmethod
    def _op_type_names(cls, value: list[str]) -> list[str]:
        for op in value:
            if not _OP_TYPE_RE.match(op):
                raise ValueError(f"{op!r} is not an OpenVINO op type name (CamelCase, e.g. 'Sigmoid')")
        return value

    @model_validator(mode="after")
    def _check(self) -> OpenVinoSettings:
        if self.inference_precision_hint == "bf16" and self.device != "CPU":
            raise_if([("inference_precision_hint", f"bf16 is only supported on CPU, not {self.device}")])
        return self


class TensorRTSettings(_Strict):
    """TensorRT engine build settings (engines are built on the device they run on)."""

    version: str = Field(
        ">=10.0,<11",
        description="TensorRT versions the profile is written for, as a range like '>=10.0,<11'. The "
        "runtime refuses other versions because engines and builder flags are version specific.",
    )
    workspace_mib: int = Field(
        2048,
        ge=16,
        le=1 << 20,
        description="Builder workspace limit in MiB. Jetsons share RAM between CPU and GPU, so keep it well "
        "below the module's memory.",
    )
    builder_optimization_level: int = Field(
        3,
        ge=0,
        le=5,
        description="TensorRT builder optimization level 0-5 (TensorRT's default is 3). Higher tries more "
        "tactics: slower builds, sometimes faster engines.",
    )
    dla_core: int | None = Field(
        None,
        ge=0,
        description="Run on this Deep Learning Accelerator core instead of the GPU; null = GPU. Only on "
        "Jetsons whose hardware.dla_cores is larger than this index. DLA runs fp16/int8 only.",
    )
    allow_gpu_fallback: bool = Field(
        True,
        description="With dla_core set: run layers the DLA cannot run on the GPU. Without it the build "
        "fails on the first unsupported layer. Ignored when dla_core is null.",
    )
    jetpack: str | None = Field(
        None,
        pattern=r"^\d+\.\d+(\.\d+)?$",
        description='JetPack release the profile is written for, as a quoted string like "6.2". '
        "Required on Jetson profiles, null elsewhere; checked against version for known releases.",
    )

    @field_validator("version", mode="before")
    @classmethod
    def _version_quoted(cls, value: Any) -> Any:
        return _quoted_version(value, 'version: ">=10.0,<11"')

    @field_validator("version")
    @classmethod
    def _version_range(cls, value: str) -> str:
        parse_range(value)
        return value

    @field_validator("jetpack", mode="before")
    @classmethod
    def _jetpack_quoted(cls, value: Any) -> Any:
        return _quoted_version(value, 'jetpack: "6.2"')

    @model_validator(mode="after")
    def _check(self) -> TensorRTSettings:
        if self.jetpack is not None:
            key = ".".join(self.jetpack.split(".")[:2])
            shipped = _JETPACK_TENSORRT.get(key)
            if shipped is not None and not version_satisfies(shipped, self.version):
                raise_if(
                    [
                        (
                            "version",
                            f"JetPack {self.jetpack} ships TensorRT {shipped}, outside {self.version!r}",
                        )
                    ]
                )
        return self


class HardwareInfo(_Strict):
    """Facts about the device family member a profile is for."""

    model_match: list[str] = Field(
        default_factory=list,
        description="Substrings of /proc/device-tree/model (case-insensitive) that identify this device, "
        "e.g. 'Orin NX'; a family alias like --target jetson picks the profile that matches.",
    )
    dla_cores: int = Field(
        0,
        ge=0,
        le=8,
        description="Number of DLA cores the device has (Orin Nano 0, Orin NX 8GB 1 / 16GB 2, AGX Orin 2); "
        "bounds tensorrt.dla_core.",
    )

    @field_validator("model_match")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        # An empty pattern would match every board.
        if any(not pattern.strip() for pattern in value):
            raise ValueError("patterns must not be empty")
        return value


class Gates(_Strict):
    """Pass/fail limits checked on the device, comparing the exported model with the unmerged model."""

    max_map_drop: float = Field(
        ge=0,
        le=100,
        description="Largest allowed drop in mAP50-95, in mAP points on the 0-100 scale: 0.5 means the "
        "exported model may score half a point lower (e.g. 61.3 -> 60.8). 0 demands no drop. Values "
        "between 0 and 0.05 are refused as likely fractions.",
    )
    min_agreement_f1: float = Field(
        ge=0,
        le=1,
        description="Smallest allowed F1 (0..1) between the exported and the unmerged model's detections "
        "on the same images, matched per class at agreement_iou; catches changes mAP averages away.",
    )
    agreement_iou: float = Field(
        0.5,
        gt=0,
        le=1,
        description="IoU at which an exported detection matches an unmerged one for min_agreement_f1.",
    )
    agreement_conf: float = Field(
        0.25,
        ge=0,
        lt=1,
        description="Confidence threshold applied to both models' detections before agreement is computed.",
    )
    max_p99_ms: float | None = Field(
        None,
        gt=0,
        le=60_000,
        description="Latency budget: 99th-percentile time per batch in milliseconds on the device, from "
        "preprocessed input tensor to decoded detections (engine call and host/device copies, not image "
        "decoding). null = not gated.",
    )
    min_speedup: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="Smallest allowed ratio of the unmerged model's median latency to the exported model's, "
        "measured on the same machine. null = not gated.",
    )

    @field_validator("max_map_drop")
    @classmethod
    def _points_not_fraction(cls, value: float) -> float:
        # The unit is the most likely misunderstanding: 0.005 "meaning half a point" would gate at 1/200 of
        # a point, far below evaluation noise, and fail every export.
        if 0 < value < 0.05:
            raise ValueError(
                f"{value} is read in mAP points on the 0-100 scale (0.5 = half a point); "
                f"did you mean {value * 100:g}?"
            )
        return value

    def summary(self) -> str:
        """One short line, e.g. ``mAP drop<=1pt, F1>=0.9, p99<=25ms``."""
        parts = [f"mAP drop<={self.max_map_drop:g}pt", f"F1>={self.min_agreement_f1:g}"]
        if self.max_p99_ms is not None:
            parts.append(f"p99<={self.max_p99_ms:g}ms")
        if self.min_speedup is not None:
            parts.append(f"speedup>={self.min_speedup:g}x")
        return ", ".join(parts)


class BenchSettings(_Strict):
    """How latency is measured on the device."""

    warmup_runs: int = Field(
        50,
        ge=0,
        le=100_000,
        description="Untimed runs first, so engine autotuning, caches and clocks settle.",
    )
    timed_runs: int = Field(
        300,
        ge=10,
        le=1_000_000,
        description="Timed runs the latency statistics are computed from; at least 100 when "
        "gates.max_p99_ms is set, since a p99 of fewer samples is just the maximum.",
    )
