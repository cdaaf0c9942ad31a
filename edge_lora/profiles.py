"""Target profiles and calibration recipes: schema, loader, family aliases.

A *target profile* (``targets/*.yaml``) says what to build for one kind of device (backend, precision and
the precisions to fall back to, input size, quantization and backend settings) and the *gates* the
exported model must pass on that device against the unmerged LoRA model. A *calibration recipe*
(``calib/*.yaml``) says which images calibrate INT8 quantization.

Both schemas are strict on purpose: an unknown key, a typo or a wrong type is an error, never silently
ignored, because a profile that quietly drops ``per_chanel: false`` builds a different model than the
one its author reviewed. Every problem raises :class:`~edge_lora.errors.ProfileError` with one line that
names the file and the dotted field, e.g. ``targets/foo.yaml: field 'gates.max_map_drop': ...``.

Torch-free on purpose: the device side (a Jetson, a line PC) loads profiles to run and validate bundles.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_lora.errors import ProfileError
from edge_lora.schema import model_at, model_in

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "BACKENDS",
    "FAMILIES",
    "FAMILY_DEFAULTS",
    "SCHEMA_VERSION",
    "BenchSettings",
    "CalibRecipe",
    "Gates",
    "HardwareInfo",
    "OnnxRuntimeSettings",
    "OpenVinoSettings",
    "QuantizationSettings",
    "TargetProfile",
    "TensorRTSettings",
    "device_model_path",
    "fields_reference_markdown",
    "list_profiles",
    "list_recipes",
    "load_profile",
    "load_recipe",
    "parse_override",
    "profiles_table_rows",
    "read_device_model",
    "resolve_target",
    "schema_fields",
    "version_satisfies",
]

SCHEMA_VERSION = 1

Family = Literal["cpu", "intel", "jetson", "gpu", "rpi"]
Backend = Literal["onnxruntime", "openvino", "tensorrt"]
Precision = Literal["fp32", "fp16", "bf16", "int8", "auto"]
ConcretePrecision = Literal["fp32", "fp16", "bf16", "int8"]

FAMILIES: tuple[str, ...] = get_args(Family)
BACKENDS: tuple[str, ...] = get_args(Backend)

#: What a bare family name (``--target jetson``) means when the device cannot be detected.
FAMILY_DEFAULTS: dict[str, str] = {
    "cpu": "cpu-onnxruntime",
    "intel": "intel-openvino",
    "jetson": "jetson-orin-nano",
    "gpu": "nvidia-gpu",
    "rpi": "rpi5",
}

# Lower rank = less precise. Fallbacks must climb this ladder: they are taken when a build or the accuracy
# gate fails, and a less precise attempt can only be less accurate.
_PRECISION_RANK: dict[str, int] = {"int8": 0, "fp16": 1, "bf16": 1, "fp32": 2}

# Backends a family's hardware can run. TensorRT needs an NVIDIA GPU; OpenVINO has no NVIDIA GPU plugin.
_FAMILY_BACKENDS: dict[str, tuple[str, ...]] = {
    "cpu": ("onnxruntime", "openvino"),
    "intel": ("onnxruntime", "openvino"),
    "rpi": ("onnxruntime", "openvino"),
    "jetson": ("tensorrt", "onnxruntime"),
    "gpu": ("tensorrt", "onnxruntime"),
}

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
# Why a backend does not offer a precision (see TargetProfile.buildable_precisions).
_WHY_NOT = {
    "fp16": "ONNX Runtime's CPU kernels are fp32/int8, so an fp16 graph runs Cast-wrapped and slower than fp32",
    "bf16": "bf16 is an OpenVINO CPU precision (AVX512-BF16/AMX)",
}  # fp32 and int8 are built for every backend

# TensorRT that each JetPack release ships (NVIDIA release notes); used to catch a profile whose
# ``tensorrt.version`` range can never be met on its ``tensorrt.jetpack``. Unknown releases are not checked.
_JETPACK_TENSORRT: dict[str, str] = {
    "5.1": "8.5.2",
    "6.0": "8.6.2",
    "6.1": "10.3.0",
    "6.2": "10.3.0",
}

_NAME_RE = r"^[a-z0-9][a-z0-9._-]*$"
_OP_TYPE_RE = re.compile(r"^[A-Z][A-Za-z0-9]*$")


def _regex_list(patterns: list[str]) -> list[str]:
    """Validate a list of regular expressions (node-name patterns of quantization settings)."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
    return patterns


_VERSION_CLAUSE_RE = re.compile(r"^\s*(==|!=|>=|<=|>|<)\s*(\d+(?:\.\d+)*)\s*$")
_DEFAULT_NMS_IOU = 0.7
_DEVICE_TREE_MODEL = Path("/proc/device-tree/model")


# --------------------------------------------------------------------------------------------------------
# Version ranges (a tiny PEP 440 subset: the runtime must not need `packaging` to check TensorRT)
# --------------------------------------------------------------------------------------------------------


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def _parse_spec(spec: str) -> list[tuple[str, tuple[int, ...]]]:
    clauses = []
    for raw in spec.split(","):
        m = _VERSION_CLAUSE_RE.match(raw)
        if not m:
            raise ValueError(
                f"bad version range {spec!r}: each comma-separated clause must be an operator "
                f"(==, !=, >=, <=, >, <) and a numeric version, e.g. '>=10.0,<11'"
            )
        clauses.append((m.group(1), _version_tuple(m.group(2))))
    return clauses


def version_satisfies(version: str, spec: str) -> bool:
    """True if ``version`` (e.g. TensorRT's ``"10.3.0.30"``) lies in ``spec`` (e.g. ``">=10.0,<11"``).

    Versions are compared numerically with missing parts read as zero (``10.3 == 10.3.0``); local or
    pre-release suffixes after the numeric part (``"10.3.0.post1"``) are ignored.
    """
    m = re.match(r"^\s*(\d+(?:\.\d+)*)", version)
    if not m:
        raise ValueError(f"not a numeric version: {version!r}")
    have = _version_tuple(m.group(1))
    for op, want in _parse_spec(spec):
        width = max(len(have), len(want))
        a = have + (0,) * (width - len(have))
        b = want + (0,) * (width - len(want))
        ok = {
            "==": a == b,
            "!=": a != b,
            ">=": a >= b,
            "<=": a <= b,
            ">": a > b,
            "<": a < b,
        }[op]
        if not ok:
            return False
    return True


# --------------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------------


class _Problems(ValueError):
    """Cross-field problems found by a model validator, each with the dotted field path it concerns.

    Pydantic keeps the raised exception in the error's context, so the loader can report the real
    field (``tensorrt.dla_core``) instead of the model that ran the check.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))
        self.problems = problems


def _raise_if(problems: list[tuple[str, str]]) -> None:
    if problems:
        raise _Problems(problems)


class _Strict(BaseModel):
    # strict: YAML already yields real ints/floats/bools, so a string where a number belongs is a
    # mistake to report, not to coerce. frozen: a loaded profile is a fact its sha256 vouches for.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Document(_Strict):
    """A top-level file: equal and hashed by content, whatever file it was loaded from."""

    def resolved_dict(self) -> dict[str, Any]:
        """Every field with defaults filled in, as JSON types with keys sorted; validates back unchanged."""
        return _sorted(self.model_dump(mode="json"))

    def sha256(self) -> str:
        """Hex sha256 of :meth:`resolved_dict` in canonical JSON (same form as ``fileio.sha256_json``)."""
        return _sha256_json(self.resolved_dict())

    def __eq__(self, other: object) -> bool:
        # Pydantic's default also compares private attributes (the source path); a copy of a shipped
        # profile in the user's folder is the same profile.
        if not isinstance(other, _Document):
            return NotImplemented
        return type(self) is type(other) and self.resolved_dict() == other.resolved_dict()

    def __hash__(self) -> int:
        return hash(self.sha256())


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
            _raise_if([("keep_float_op_types", msg)])
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
            _raise_if([("inference_precision_hint", f"bf16 is only supported on CPU, not {self.device}")])
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
        _parse_spec(value)
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
                _raise_if(
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


class TargetProfile(_Document):
    """What to build for one kind of device, and the gates it must pass there.

    ``sha256()`` covers the profile only; an INT8 build cache key should add the recipe's ``sha256()``.

    Load with :func:`load_profile` or :func:`resolve_target`; constructing one directly
    (``TargetProfile.model_validate(d)``) runs the same checks except the calibration recipe lookup.
    """

    schema_version: Literal[1] = Field(description="Profile schema version; this edge-lora reads 1.")
    name: str = Field(
        pattern=_NAME_RE,
        max_length=64,
        description="Profile name: lower-case letters, digits, '.', '_', '-'. Shipped profiles are named "
        "after their file. Never inherited through extends.",
    )
    description: str = Field(min_length=1, description="One line saying which devices this profile is for.")
    family: Family = Field(
        description="Device family: cpu (any x86/ARM CPU), intel (Intel CPU/iGPU), jetson (NVIDIA Jetson), "
        "gpu (desktop/server NVIDIA GPU), rpi (Raspberry Pi). Also usable as --target alias."
    )
    backend: Backend = Field(
        description="Runtime the model is exported for: onnxruntime, openvino or tensorrt."
    )
    precision: Precision = Field(
        description="Precision to build first: fp32, fp16, int8, bf16 (OpenVINO CPU only: the FP32 IR computed "
        "in bfloat16, fast on CPUs with AVX512-BF16 or AMX), or auto (int8, then the backend's best float "
        "precisions; see precision_chain)."
    )
    fallbacks: list[ConcretePrecision] = Field(
        default_factory=list,
        description="Precisions tried in order when the build or a gate fails, each more precise than the "
        "one before (int8 -> [fp16, fp32], or int8 -> [bf16, fp32] on OpenVINO CPU); empty with precision "
        "auto.",
    )
    imgsz: int = Field(
        640,
        ge=32,
        le=4096,
        description="Square input size in pixels; a multiple of 32 (YOLO's largest stride).",
    )
    batch: int = Field(1, ge=1, le=256, description="Fixed batch size of the exported model.")
    opset: int = Field(
        17,
        ge=13,
        le=22,
        description="ONNX opset of the exported graph (13+ for per-channel QDQ; TensorRT 10.0 parses up to "
        "20).",
    )
    output: Literal["end2end", "raw"] = Field(
        "end2end",
        description="'end2end': YOLO26's NMS-free output, (N, max_det, 6) = x1, y1, x2, y2, score, class. "
        "'raw': the head's raw predictions, decoded and NMS'd on the host with nms_iou.",
    )
    max_det: int = Field(300, ge=1, le=10_000, description="Maximum detections per image.")
    nms_iou: float | None = Field(
        None,
        gt=0,
        le=1,
        description="NMS IoU threshold; only with output raw (defaults to 0.7 there), null for end2end.",
    )
    calibration: str | None = Field(
        None,
        min_length=1,
        description="Calibration recipe: a shipped name (see calib/) or a .yaml path relative to this "
        "file. Required when int8 can be built (precision, fallbacks or auto), null otherwise.",
    )
    quantization: QuantizationSettings | None = Field(
        None,
        description="INT8 QDQ settings for the onnxruntime and tensorrt backends; required when int8 can be "
        "built there, null otherwise and on openvino (NNCF; see openvino.*).",
    )
    onnxruntime: OnnxRuntimeSettings | None = Field(
        None, description="ONNX Runtime settings; only on backend onnxruntime (filled with defaults there)."
    )
    openvino: OpenVinoSettings | None = Field(
        None, description="OpenVINO settings; only on backend openvino (filled with defaults there)."
    )
    tensorrt: TensorRTSettings | None = Field(
        None, description="TensorRT settings; only on backend tensorrt (filled with defaults there)."
    )
    hardware: HardwareInfo = Field(
        default_factory=HardwareInfo, description="Facts about the device: detection strings, DLA cores."
    )
    gates: Gates = Field(description="Validation gates the exported model must pass on the device.")
    bench: BenchSettings = Field(default_factory=BenchSettings, description="Latency measurement settings.")

    # Where the profile came from, for messages and for resolving a relative calibration path. Private:
    # moving a file must not change its sha256.
    _source: str | None = PrivateAttr(default=None)
    _calib_base: Path | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _not_a_family(cls, value: str) -> str:
        if value in FAMILIES:
            raise ValueError(f"{value!r} is a family alias; give the profile a more specific name")
        return value

    @field_validator("imgsz")
    @classmethod
    def _stride_multiple(cls, value: int) -> int:
        if value % 32:
            raise ValueError(
                f"{value} is not a multiple of 32 (YOLO's largest stride); try {round(value / 32) * 32 or 32}"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            backend = data.get("backend")
            # The active backend's section may be omitted (all defaults); the other sections may not appear.
            if isinstance(backend, str) and backend in BACKENDS and data.get(backend) is None:
                data[backend] = {}
            if data.get("output") == "raw" and data.get("nms_iou") is None:
                data["nms_iou"] = _DEFAULT_NMS_IOU
        return data

    @model_validator(mode="after")
    def _cross_field(self) -> TargetProfile:
        problems: list[tuple[str, str]] = []

        def add(path: str, msg: str) -> None:
            problems.append((path, msg))

        for other in BACKENDS:
            if other != self.backend and getattr(self, other) is not None:
                add(
                    other,
                    f"{other} settings, but backend is {self.backend}; remove them or set backend: {other}",
                )
        if self.backend not in _FAMILY_BACKENDS[self.family]:
            allowed = " or ".join(_FAMILY_BACKENDS[self.family])
            add("backend", f"{self.backend} cannot run on family {self.family}; use {allowed}")

        # Fallback ladder.
        if self.precision == "auto" and self.fallbacks:
            add("fallbacks", "must be empty with precision auto, which already defines the order")
        elif self.precision != "auto":
            previous = self.precision
            for i, fb in enumerate(self.fallbacks):
                if _PRECISION_RANK[fb] <= _PRECISION_RANK[previous]:
                    msg = f"{fb} after {previous}: each fallback must be more precise than the one before"
                    add(f"fallbacks[{i}]", msg + " (int8 < fp16 or bf16 < fp32)")
                    break
                previous = fb

        chain = self.precision_chain()
        int8 = "int8" in chain

        # Precisions this backend/device cannot build (export() refuses the same, from the same method).
        buildable = self.buildable_precisions()
        for precision in dict.fromkeys(chain):
            if precision not in buildable:
                add(
                    "precision" if self.precision == precision else "fallbacks",
                    f"{precision} is not built for {self.backend}"
                    f"{' on ' + self.openvino.device if self.openvino else ''}: {_WHY_NOT[precision]}; "
                    f"use {' or '.join(sorted(buildable))}",
                )
        ov = self.openvino
        if ov is not None and "fp32" in chain and ov.inference_precision_hint != "f32":
            add(
                "openvino.inference_precision_hint",
                f"{ov.inference_precision_hint} would run the fp32 attempt in reduced precision; "
                "use f32 or drop fp32 from precision/fallbacks",
            )

        # INT8 needs images and a quantization recipe; without int8 those settings would be dead weight that
        # a reader mistakes for active configuration.
        unused = "set, but this profile never builds int8; remove it (or null it in a profile that extends)"
        if int8 and self.calibration is None:
            add("calibration", "required because int8 can be built; name a recipe such as 'default'")
        if not int8 and self.calibration is not None:
            add("calibration", unused)
        if self.backend == "openvino":
            if self.quantization is not None:
                add(
                    "quantization",
                    "OpenVINO int8 is done by NNCF; use openvino.nncf_preset and openvino.ignored_op_types",
                )
            if ov is not None and ov.accuracy_aware and not int8:
                add("openvino.accuracy_aware", "only applies when int8 can be built")
        elif int8 and self.quantization is None:
            add("quantization", "required because int8 can be built; give at least quantization.scheme")
        elif not int8 and self.quantization is not None:
            add("quantization", unused)

        if self.quantization is not None and self.backend == "tensorrt":
            if self.quantization.scheme != "s8s8":
                add(
                    "quantization.scheme",
                    "tensorrt needs s8s8: TensorRT explicit quantization only accepts symmetric int8",
                )
            if self.quantization.reduce_range:
                add("quantization.reduce_range", "onnxruntime only; TensorRT uses the full int8 range")

        trt = self.tensorrt
        if trt is not None:
            if trt.dla_core is not None:
                have = self.hardware.dla_cores
                if self.family != "jetson":
                    add("tensorrt.dla_core", f"DLA exists only on Jetson modules, not family {self.family}")
                elif trt.dla_core >= have:
                    none = " (this module has no DLA)" if have == 0 else ""
                    add(
                        "tensorrt.dla_core",
                        f"core {trt.dla_core} does not exist: hardware.dla_cores is {have}{none}",
                    )
                if "fp32" in chain:
                    add("tensorrt.dla_core", "DLA runs fp16/int8 only; drop fp32 from precision/fallbacks")
            if self.family == "jetson" and trt.jetpack is None:
                add("tensorrt.jetpack", 'required on Jetson profiles, e.g. "6.2"')
            if self.family != "jetson" and trt.jetpack is not None:
                add("tensorrt.jetpack", f"only for Jetson profiles, not family {self.family}")

        if self.output == "end2end" and self.nms_iou is not None:
            add("nms_iou", "only used with output raw; end2end models do no NMS")
        if self.gates.max_p99_ms is not None and self.bench.timed_runs < 100:
            add(
                "bench.timed_runs",
                f"{self.bench.timed_runs} runs cannot give a p99; use at least 100 with gates.max_p99_ms set",
            )
        _raise_if(problems)
        return self

    # ---- derived views -------------------------------------------------------------------------------

    def buildable_precisions(self) -> set[str]:
        """Precisions edge-lora builds for this backend and device (the schema checks the chain against it)."""
        if self.backend == "onnxruntime":
            return {"fp32", "int8"}
        if self.backend == "openvino":
            cpu = self.openvino is None or self.openvino.device == "CPU"
            return {"fp32", "fp16", "int8"} | ({"bf16"} if cpu else set())
        return {"fp32", "fp16", "int8"}

    def precision_chain(self) -> list[ConcretePrecision]:
        """Precisions to try, in order: ``precision`` then ``fallbacks``, with ``auto`` expanded.

        ``auto`` means int8, then the backend's best float: fp16 on TensorRT and on OpenVINO GPU/NPU/AUTO;
        bf16 then fp32 on OpenVINO CPU (bf16 is only faster on CPUs with AVX512-BF16 or AMX, which the
        measurement decides); fp32 on ONNX Runtime.
        """
        if self.precision != "auto":
            return [self.precision, *self.fallbacks]
        if self.backend == "tensorrt":
            best: ConcretePrecision = "fp16"
        elif self.backend == "openvino":
            if self.openvino is None or self.openvino.device == "CPU":
                return ["int8", "bf16", "fp32"]
            best = "fp16"
        else:
            best = "fp32"
        return ["int8", best]

    @property
    def backend_settings(self) -> OnnxRuntimeSettings | OpenVinoSettings | TensorRTSettings:
        """The settings section of this profile's backend (always present after validation)."""
        settings = getattr(self, self.backend)
        assert settings is not None  # filled by _fill_defaults
        return settings

    @property
    def source(self) -> str | None:
        """The file this profile was loaded from, as shown in messages; None if built in code."""
        return self._source

    def to_yaml(self) -> str:
        """The resolved profile as YAML in schema order (what ``targets show`` prints; a valid profile)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, width=100, allow_unicode=True)

    def load_calibration(self) -> CalibRecipe | None:
        """The calibration recipe this profile names, or None when it builds no int8."""
        if self.calibration is None:
            return None
        return load_recipe(self.calibration, base_dir=self._calib_base)

    def with_overrides(self, overrides: Mapping[str, Any], origin: str = "override") -> TargetProfile:
        """A re-validated copy with dotted-key overrides applied, e.g. ``{"gates.max_p99_ms": 30}``.

        ``None`` resets a field to its default. Problems raise ``ProfileError`` naming ``origin`` (e.g.
        ``"--set"``) and the field.
        """
        patch: dict[str, Any] = {}
        for key, value in overrides.items():
            parts = key.split(".")
            if not all(parts):
                raise ProfileError(f"{origin}: {key!r} is not a dotted field name like 'gates.max_p99_ms'")
            node = patch
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ProfileError(f"{origin}: {key!r} overlaps another override")
            node[parts[-1]] = value
        merged = _deep_merge(self.resolved_dict(), patch)
        display = f"{origin} on {self._source or self.name}"
        profile = _validate(TargetProfile, merged, lambda _path: display)
        profile._source = self._source
        profile._calib_base = self._calib_base
        _check_calibration(profile, lambda _path: display)
        return profile


class CalibRecipe(_Document):
    """Which images calibrate INT8 quantization (and validate accuracy-aware quantization)."""

    schema_version: Literal[1] = Field(description="Recipe schema version; this edge-lora reads 1.")
    name: str = Field(
        pattern=_NAME_RE,
        max_length=64,
        description="Recipe name; shipped recipes are named after their file.",
    )
    description: str = Field(min_length=1, description="One line saying when to use this recipe.")
    num_images: int = Field(
        ge=1,
        le=100_000,
        description="Images to calibrate on. A few hundred cover YOLO's activation ranges; more costs RAM "
        "and time (ONNX Runtime keeps activations of every image).",
    )
    min_images: int = Field(
        ge=1,
        description="Fewest images accepted: with fewer in the split the export fails instead of "
        "calibrating on an unrepresentative handful; between min_images and num_images all are used.",
    )
    split: Literal["train", "val"] = Field(
        "train",
        description="Dataset split to draw from. 'train' keeps the val split, which the gates measure on, "
        "unseen by calibration.",
    )
    selection: Literal["stratified", "random"] = Field(
        "stratified",
        description="'stratified' draws images class by class so rare classes (rare defects) are present; "
        "'random' draws uniformly.",
    )
    dedupe: bool = Field(
        True,
        description="Drop byte-identical images (by file content hash) before drawing, so copies do not "
        "outweigh the rest.",
    )
    seed: int = Field(
        0, ge=0, description="Random seed for the draw; same seed, same dataset -> same images."
    )
    validation_images: int = Field(
        0,
        ge=0,
        le=100_000,
        description="Labelled images accuracy-aware quantization (openvino.accuracy_aware) evaluates on, from "
        "validation_split; 0 = none, which such profiles refuse.",
    )
    validation_split: Literal["train", "val"] = Field(
        "train",
        description="Split the accuracy-aware images come from. 'train' keeps the val split, on which "
        "validate and build gate the model, out of every quantization decision; 'val' tunes on the very "
        "images the gate then scores (optimistic).",
    )

    _source: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> CalibRecipe:
        if self.min_images > self.num_images:
            _raise_if([("min_images", f"{self.min_images} is more than num_images ({self.num_images})")])
        return self

    @property
    def source(self) -> str | None:
        """The file this recipe was loaded from, as shown in messages; None if built in code."""
        return self._source


def _sorted(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _sorted(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [_sorted(v) for v in obj]
    return obj


def _sha256_json(obj: Any) -> str:
    # Same canonical form as edge_lora.fileio.sha256_json (kept local: this module imports only errors).
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------------
# Error flattening: pydantic's error list -> one line naming file and field
# --------------------------------------------------------------------------------------------------------


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(err: Mapping[str, Any], root: type[BaseModel]) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        if root is TargetProfile and loc == ("extends",):
            return "extends only works in a profile file (it is resolved when the file is loaded)"
        parent = model_at(root, loc[:-1])
        allowed = sorted(parent.model_fields) if parent is not None else []
        if root is TargetProfile and len(loc) == 1:
            allowed.append("extends")
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
        if close:
            return f"unknown key; did you mean {close[0]!r}?"
        return f"unknown key; allowed here: {', '.join(allowed)}"
    if kind == "missing":
        return "required but missing"
    msg = str(err["msg"])
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind == "assertion_error":
        return msg.removeprefix("Assertion failed, ")
    value = err.get("input")
    if isinstance(value, str) and kind in ("int_type", "float_type", "bool_type"):
        return f"{msg}, got the string {value!r} (write it without quotes)"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return f"{msg}, got {value!r}"
    return f"{msg}, got a {type(value).__name__}"


def _flatten(exc: ValidationError, root: type[BaseModel]) -> list[tuple[tuple[str | int, ...], str]]:
    out: list[tuple[tuple[str | int, ...], str]] = []
    errors = exc.errors()
    # An unknown key usually explains a "missing" error next to it (precison vs precision): report it first.
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    for err in errors:
        loc = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _Problems):
            for path, msg in cause.problems:
                out.append((loc + _split_path(path), msg))
        else:
            out.append((loc, _describe(err, root)))
    return out


def _split_path(path: str) -> tuple[str | int, ...]:
    parts: list[str | int] = []
    for token in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        parts.append(int(token[1:-1]) if token.startswith("[") else token)
    return tuple(parts)


def _validate(model: type[Any], data: Any, blame: Any) -> Any:
    """Validate ``data``; on failure raise one ProfileError line naming the file ``blame(loc)`` and field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = _flatten(exc, model)
        loc, msg = problems[0]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ProfileError(f"{blame(loc)}: field '{_dotted(loc)}': {msg}{more}") from None


# --------------------------------------------------------------------------------------------------------
# Files: shipped resources, user paths, YAML
# --------------------------------------------------------------------------------------------------------

_KIND_LABEL = {"targets": "target profile", "calib": "calibration recipe"}


@dataclass(frozen=True)
class _Doc:
    display: str  # how messages name the file
    text: str
    base_dir: Path | None  # folder that relative references resolve against; None inside a zip
    key: str  # identity, for extends cycles


def _repo_dir(kind: str) -> Path:
    return Path(__file__).resolve().parent.parent / kind


def _shipped_dir(kind: str) -> Traversable | None:
    """Where shipped ``kind`` files live: the installed package, else the source checkout's folder."""
    try:
        root: Traversable | None = resources.files(f"edge_lora.{kind}")
    except ModuleNotFoundError:
        # Running from a source tree (PYTHONPATH=.): targets/ and calib/ sit beside edge_lora/, and the
        # package-dir mapping that makes them edge_lora.targets exists only once installed.
        root = None
    if root is not None and any(_yaml_names(root)):
        return root
    repo = _repo_dir(kind)
    return repo if repo.is_dir() else root


def _yaml_names(root: Traversable) -> Iterator[str]:
    try:
        entries = list(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.name.endswith(".yaml") and not entry.name.startswith((".", "_")) and entry.is_file():
            yield entry.name[: -len(".yaml")]


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _is_path_like(ref: str | Path) -> bool:
    if isinstance(ref, Path):
        return True
    return "/" in ref or os.sep in ref or ref.endswith((".yaml", ".yml"))


def _list(kind: str) -> list[str]:
    root = _shipped_dir(kind)
    return sorted(_yaml_names(root)) if root is not None else []


def list_profiles() -> list[str]:
    """Names of the shipped target profiles, sorted."""
    return _list("targets")


def list_recipes() -> list[str]:
    """Names of the shipped calibration recipes, sorted."""
    return _list("calib")


def _unknown(kind: str, name: str) -> ProfileError:
    names = _list(kind)
    choices = names + (list(FAMILIES) if kind == "targets" else [])
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    label = _KIND_LABEL[kind]
    if kind == "targets":
        return ProfileError(
            f"unknown {label} {name!r}{hint}; shipped: {', '.join(names)}; families: {', '.join(FAMILIES)}; "
            "or give a path to a .yaml file"
        )
    return ProfileError(
        f"unknown {label} {name!r}{hint}; shipped: {', '.join(names)}; or give a path to a .yaml file"
    )


def _find(kind: str, ref: str | Path, base_dir: Path | None = None) -> _Doc:
    label = _KIND_LABEL[kind]
    if _is_path_like(ref):
        path = Path(ref).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            hint = ""
            if isinstance(ref, str) and ref.removesuffix(".yaml") in _list(kind) and "/" not in ref:
                hint = f"; shipped {label}s are named without .yaml: {ref.removesuffix('.yaml')!r}"
            raise ProfileError(f"{_display(path)}: no such {label} file{hint}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(f"{_display(path)}: cannot read {label}: {exc}") from None
        return _Doc(_display(path), text, path.parent, str(path.resolve()))
    name = str(ref)
    root = _shipped_dir(kind)
    if kind == "targets" and name in FAMILIES:
        raise ProfileError(
            f"{name!r} is a family, not a profile: resolve it with resolve_target() (as --target does) "
            f"or name a profile, e.g. {FAMILY_DEFAULTS[name]!r}; shipped: {', '.join(_list(kind))}"
        )
    if root is None or not re.match(_NAME_RE, name):
        raise _unknown(kind, name)
    entry = root / f"{name}.yaml"
    if not entry.is_file():
        raise _unknown(kind, name)
    shown = _display(entry) if isinstance(entry, Path) else str(entry)
    return _Doc(
        shown,
        entry.read_text(encoding="utf-8"),
        entry.parent if isinstance(entry, Path) else None,
        f"shipped:{kind}:{name}",
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which plain YAML loading silently resolves to the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse(doc: _Doc, kind: str) -> dict[str, Any]:
    try:
        data = yaml.load(doc.text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no object construction
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = exc.problem or exc.context or "invalid YAML"
        raise ProfileError(f"{doc.display}: {where}YAML syntax error: {what}") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{doc.display}: YAML syntax error: {exc}") from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ProfileError(f"{doc.display}: expected a mapping of {_KIND_LABEL[kind]} fields, got {got}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ProfileError(f"{doc.display}: field {bad[0]!r}: keys must be strings")
    return data


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, anything else replaces, null removes.

    Removing (not storing None) means a child's ``max_p99_ms: null`` or ``calibration: null`` resets the
    field to its schema default, whatever the base said. Lists replace whole, never concatenate.
    """
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _has_path(data: Mapping[str, Any], loc: Sequence[str | int]) -> bool:
    node: Any = data
    for part in loc:
        if isinstance(part, int):
            continue
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _load_chain(ref: str | Path, base_dir: Path | None, seen: list[str]) -> list[tuple[_Doc, dict[str, Any]]]:
    """The profile ``ref`` and its ``extends`` ancestors, leaf first."""
    doc = _find("targets", ref, base_dir)
    if doc.key in seen:
        raise ProfileError(f"{doc.display}: field 'extends': cycle ({' -> '.join([*seen, doc.key])})")
    raw = _parse(doc, "targets")
    parent = raw.pop("extends", None)
    chain = [(doc, raw)]
    if parent is None:
        return chain
    if not isinstance(parent, str) or not parent:
        raise ProfileError(
            f"{doc.display}: field 'extends': must be a profile name or a .yaml path, got {parent!r}"
        )
    if "name" not in raw:
        raise ProfileError(
            f"{doc.display}: field 'name': required (a profile that extends another sets its own name)"
        )
    try:
        chain += _load_chain(parent, doc.base_dir, [*seen, doc.key])
    except ProfileError as exc:
        if str(exc).startswith(doc.display):
            raise
        raise ProfileError(f"{doc.display}: field 'extends': {exc}") from None
    return chain


def _check_calibration(profile: TargetProfile, blame: Any) -> None:
    """Cross-file checks: the named calibration recipe loads and suits the profile."""
    if profile.calibration is None:
        return
    try:
        recipe = profile.load_calibration()
    except ProfileError as exc:
        raise ProfileError(f"{blame(('calibration',))}: field 'calibration': {exc}") from None
    assert recipe is not None
    ov = profile.openvino
    if ov is not None and ov.accuracy_aware and recipe.validation_images == 0:
        raise ProfileError(
            f"{blame(('openvino', 'accuracy_aware'))}: field 'openvino.accuracy_aware': needs a calibration "
            f"recipe with validation_images > 0; {recipe.name!r} has 0"
        )


def load_profile(name_or_path: str | Path) -> TargetProfile:
    """Load and validate a target profile: a shipped name (``"rpi5"``) or a path to a YAML file.

    A string counts as a path when it contains a path separator or ends in ``.yaml``/``.yml``. ``extends``
    chains are resolved by deep merge (see :func:`_deep_merge`) before validation; relative ``extends`` and
    ``calibration`` paths resolve against the file that contains them. Every problem raises ProfileError
    with one line: ``FILE: field 'DOTTED.PATH': what is wrong (+N more)``.
    """
    chain = _load_chain(name_or_path, None, [])
    merged: dict[str, Any] = {}
    for _doc, raw in reversed(chain):
        merged = _deep_merge(merged, raw)

    def blame(loc: Sequence[str | int]) -> str:
        # The file that actually writes the offending field, so a bad base is not blamed on its child.
        for doc, raw in chain:
            if loc and _has_path(raw, loc):
                return doc.display
        return chain[0][0].display

    profile: TargetProfile = _validate(TargetProfile, merged, blame)
    profile._source = chain[0][0].display
    if profile.calibration is not None:
        owner = next((doc for doc, raw in chain if "calibration" in raw), chain[0][0])
        profile._calib_base = owner.base_dir
    _check_calibration(profile, blame)
    return profile


def load_recipe(name_or_path: str | Path, *, base_dir: Path | None = None) -> CalibRecipe:
    """Load and validate a calibration recipe: a shipped name (``"default"``) or a path to a YAML file.

    ``base_dir`` anchors a relative path (the folder of the profile that names the recipe).
    """
    doc = _find("calib", name_or_path, base_dir)
    raw = _parse(doc, "calib")
    recipe: CalibRecipe = _validate(CalibRecipe, raw, lambda _loc: doc.display)
    recipe._source = doc.display
    return recipe


# --------------------------------------------------------------------------------------------------------
# Family aliases and device detection
# --------------------------------------------------------------------------------------------------------


def device_model_path() -> Path:
    """Where the board model string is read from (a function so tests can point it elsewhere)."""
    return _DEVICE_TREE_MODEL


def read_device_model() -> str | None:
    """The device-tree model string (e.g. ``"NVIDIA Jetson Orin NX ..."``), or None where there is none."""
    try:
        text = device_model_path().read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None
    text = text.replace("\x00", "").strip()  # the kernel NUL-terminates it
    return text or None


def resolve_target(name_or_path: str | Path) -> tuple[TargetProfile, str | None]:
    """Load ``--target``: a profile name, a YAML path, or a family alias (cpu, intel, jetson, gpu, rpi).

    For a family the profile is picked by matching ``/proc/device-tree/model`` against the family's
    ``hardware.model_match`` strings (longest match wins), else :data:`FAMILY_DEFAULTS`. The second element
    says which profile was picked and why; it is None when no alias was involved.
    """
    if isinstance(name_or_path, Path) or name_or_path not in FAMILIES:
        return load_profile(name_or_path), None
    family = name_or_path
    default = FAMILY_DEFAULTS[family]
    members = [p for p in (load_profile(n) for n in list_profiles()) if p.family == family]
    where = device_model_path()
    model = read_device_model()
    if model is not None:
        best: tuple[int, TargetProfile] | None = None
        for profile in members:
            for pattern in profile.hardware.model_match:
                if pattern.lower() in model.lower() and (best is None or len(pattern) > best[0]):
                    best = (len(pattern), profile)
        if best is not None:
            return best[1], f"--target {family}: using {best[1].name!r}, matched {model!r} from {where}"
        reason = f"this machine reports {model!r}, which no shipped {family} profile matches"
    else:
        reason = f"no device model at {where}"
    others = ", ".join(p.name for p in members)
    msg = f"--target {family}: using the family default {default!r} ({reason}); choose one of: {others}"
    return load_profile(default), msg


# --------------------------------------------------------------------------------------------------------
# CLI helpers
# --------------------------------------------------------------------------------------------------------


def profiles_table_rows() -> list[dict[str, Any]]:
    """One row per shipped profile for ``edge-lora targets``: all values are display strings but imgsz.

    Keys: name, family, backend, precision, fallbacks, imgsz, gates, description.
    """
    rows = []
    for name in list_profiles():
        p = load_profile(name)
        rows.append(
            {
                "name": p.name,
                "family": p.family,
                "backend": p.backend,
                "precision": p.precision,
                "fallbacks": ", ".join(p.fallbacks) if p.fallbacks else "-",
                "imgsz": p.imgsz,
                "gates": p.gates.summary(),
                "description": p.description,
            }
        )
    return rows


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a ``--set KEY=VALUE`` option; VALUE is read as YAML (``30``, ``null``, ``[fp16, fp32]``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ProfileError(f"--set {text!r}: expected KEY=VALUE, e.g. gates.max_p99_ms=30")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ProfileError(f"--set {text!r}: value is not valid YAML: {exc}") from None
    return key.strip(), parsed


def _type_str(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        return " | ".join(repr(a) if isinstance(a, str) else str(a) for a in args)
    if origin is list:
        return f"list of {_type_str(args[0])}"
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return " | ".join(_type_str(a) for a in rest) + " | null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def schema_fields(
    model: type[BaseModel] = TargetProfile, prefix: str = ""
) -> list[tuple[str, str, str, str]]:
    """Every field of ``model`` and its sections as ``(dotted path, type, default, description)``."""
    rows = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        if field.is_required():
            default = "required"
        else:
            value = field.get_default(call_default_factory=True)
            default = "defaults" if isinstance(value, BaseModel) else json.dumps(value)
        rows.append((path, _type_str(field.annotation), default, field.description or ""))
        sub = model_in(field.annotation)
        if sub is not None:
            rows.extend(schema_fields(sub, prefix=f"{path}."))
    return rows


def fields_reference_markdown() -> str:
    """The field reference tables of ``targets/README.md``, generated from the schema descriptions."""
    out = []
    for title, model in (
        ("Target profile (`targets/*.yaml`)", TargetProfile),
        ("Calibration recipe (`calib/*.yaml`)", CalibRecipe),
    ):
        out += [f"### {title}", "", "| Field | Type | Default | Meaning |", "|---|---|---|---|"]
        for path, type_, default, desc in schema_fields(model):
            cells = [f"`{path}`", type_, f"`{default}`", desc]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out)
