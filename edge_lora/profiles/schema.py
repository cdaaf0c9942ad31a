"""The two documents: :class:`TargetProfile` (``targets/*.yaml``) and :class:`CalibRecipe` (``calib/*.yaml``).

The vocabulary (families, backends, precisions and which go together), the checks that need a whole
profile (the fallback ladder, what int8 requires, backend/family fit), the derived views (precision chain,
resolved dict, sha256, YAML) and how their pydantic errors are worded (:func:`_validate`). The sections
they contain are in :mod:`edge_lora.profiles.sections`; reading files is :mod:`edge_lora.profiles.loader`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from edge_lora import backends
from edge_lora.errors import ProfileError
from edge_lora.fileio import sha256_json
from edge_lora.profiles.sections import (
    BenchSettings,
    Gates,
    HardwareInfo,
    OnnxRuntimeSettings,
    OpenVinoSettings,
    QuantizationSettings,
    TensorRTSettings,
    _Strict,
)
from edge_lora.schema_errors import dotted, field_names_at, flatten, raise_if, summary, unknown_key

__all__ = ["BACKENDS", "FAMILIES", "FAMILY_DEFAULTS", "SCHEMA_VERSION", "CalibRecipe", "TargetProfile"]

SCHEMA_VERSION = 1

Family = Literal["cpu", "intel", "jetson", "gpu", "rpi"]
Precision = Literal["fp32", "fp16", "bf16", "int8", "auto"]
ConcretePrecision = Literal["fp32", "fp16", "bf16", "int8"]

FAMILIES: tuple[str, ...] = get_args(Family)
#: The shipped backends. A profile's ``backend`` may name any registered one (:func:`edge_lora.backends.names`).
BACKENDS: tuple[str, ...] = ("onnxruntime", "openvino", "tensorrt")

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

# Why a backend does not offer a precision (see TargetProfile.buildable_precisions), unless its spec's
# why_not says; the backends a family runs are the registry's (BackendSpec.families).
_WHY_NOT = {"bf16": "bf16 is an OpenVINO CPU precision (AVX512-BF16/AMX)"}

_NAME_RE = r"^[a-z0-9][a-z0-9._-]*$"
_DEFAULT_NMS_IOU = 0.7


def _declared_sections() -> list[str]:
    """Registered backends whose settings section is a field of :class:`TargetProfile` (the shipped three)."""
    return [s.name for s in backends.specs() if s.settings and s.name in TargetProfile.model_fields]


def _extra_sections() -> list[str]:
    """Registered backends whose settings section is not a field (kept beside the fields once validated)."""
    return [s.name for s in backends.specs() if s.settings and s.name not in TargetProfile.model_fields]


class _Document(_Strict):
    """A top-level file: equal and hashed by content, whatever file it was loaded from."""

    def resolved_dict(self) -> dict[str, Any]:
        """Every field with defaults filled in, as JSON types with keys sorted; validates back unchanged."""
        return _sorted(self.model_dump(mode="json"))

    def sha256(self) -> str:
        """Hex sha256 of :meth:`resolved_dict` in canonical JSON (same form as ``fileio.sha256_json``)."""
        return sha256_json(self.resolved_dict())

    def __eq__(self, other: object) -> bool:
        # Pydantic's default also compares private attributes (the source path); a copy of a shipped
        # profile in the user's folder is the same profile.
        if not isinstance(other, _Document):
            return NotImplemented
        return type(self) is type(other) and self.resolved_dict() == other.resolved_dict()

    def __hash__(self) -> int:
        return hash(self.sha256())


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
    backend: str = Field(
        description="Runtime the model is exported for: onnxruntime, openvino or tensorrt.",
        json_schema_extra=backends.json_schema_enum,
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
    # Sections of registered backends that are not fields above (see _registered_sections).
    _sections: dict[str, BaseModel] = PrivateAttr(default_factory=dict)

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

    @field_validator("backend")
    @classmethod
    def _registered(cls, value: str) -> str:
        return backends.check_registered(value)

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            backend = data.get("backend")
            # The active backend's section may be omitted (all defaults); the other sections may not appear.
            if isinstance(backend, str) and backend in _declared_sections() and data.get(backend) is None:
                data[backend] = {}
            if data.get("output") == "raw" and data.get("nms_iou") is None:
                data["nms_iou"] = _DEFAULT_NMS_IOU
        return data

    def _cross_field(self) -> None:
        # Called by _registered_sections once every section is in place (a backend's precisions and checks
        # may read its section, which for a registered backend's own is not a field).
        problems: list[tuple[str, str]] = []

        def add(path: str, msg: str) -> None:
            problems.append((path, msg))

        spec = backends.get(self.backend)
        for other in _declared_sections():
            if other != self.backend and getattr(self, other) is not None:
                add(
                    other,
                    f"{other} settings, but backend is {self.backend}; remove them or set backend: {other}",
                )
        if not spec.runs_on(self.family):
            allowed = " or ".join(s.name for s in backends.specs() if s.runs_on(self.family))
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
        device = getattr(self.backend_settings, "device", None)  # OpenVINO's CPU/GPU/NPU
        for precision in dict.fromkeys(chain):
            if precision not in buildable:
                why = spec.why_not.get(precision) or _WHY_NOT.get(
                    precision, f"{self.backend} does not build it"
                )
                add(
                    "precision" if self.precision == precision else "fallbacks",
                    f"{precision} is not built for {self.backend}{' on ' + device if device else ''}: {why}; "
                    f"use {' or '.join(sorted(buildable))}",
                )

        # INT8 needs images and a quantization recipe; without int8 those settings would be dead weight that
        # a reader mistakes for active configuration.
        unused = "set, but this profile never builds int8; remove it (or null it in a profile that extends)"
        if int8 and self.calibration is None:
            add("calibration", "required because int8 can be built; name a recipe such as 'default'")
        if not int8 and self.calibration is not None:
            add("calibration", unused)
        if not spec.qdq_int8:  # the backend quantizes itself (OpenVINO: NNCF)
            if self.quantization is not None:
                why = spec.why_not.get("quantization", f"{self.backend} int8 does not use it; remove it")
                add("quantization", why)
        elif int8 and self.quantization is None:
            add("quantization", "required because int8 can be built; give at least quantization.scheme")
        elif not int8 and self.quantization is not None:
            add("quantization", unused)
        problems += spec.check_profile(self)

        if self.output == "end2end" and self.nms_iou is not None:
            add("nms_iou", "only used with output raw; end2end models do no NMS")
        if self.gates.max_p99_ms is not None and self.bench.timed_runs < 100:
            add(
                "bench.timed_runs",
                f"{self.bench.timed_runs} runs cannot give a p99; use at least 100 with gates.max_p99_ms set",
            )
        raise_if(problems)

    @model_validator(mode="wrap")
    @classmethod
    def _registered_sections(
        cls, data: Any, handler: ModelWrapValidatorHandler[TargetProfile]
    ) -> TargetProfile:
        """The settings section of a registered backend that is not a field here (``toy:``), validated with
        the model its spec names and kept beside the fields (dumped with them, see :meth:`_dump`); then the
        checks that need the whole profile (:meth:`_cross_field`)."""
        if not isinstance(data, dict):
            return handler(data)  # an instance is validated already; anything else fails in the handler
        data = dict(data)
        extra = {name: data.pop(name) for name in _extra_sections() if name in data}
        backend = data.get("backend")
        if isinstance(backend, str) and backend in _extra_sections() and extra.get(backend) is None:
            extra[backend] = {}
        profile = handler(data)
        problems: list[tuple[str, str]] = []
        sections: dict[str, BaseModel] = {}
        for name, value in extra.items():
            if value is None:
                continue
            if name != profile.backend:
                msg = f"{name} settings, but backend is {profile.backend}; remove them or set backend: {name}"
                problems.append((name, msg))
                continue
            model = backends.get(name).settings_model()
            try:
                sections[name] = model.model_validate(value)
            except ValidationError as exc:
                problems += [
                    (dotted((name, *loc)), msg)
                    for loc, msg in flatten(exc, lambda e, m=model: _describe(e, m))
                ]
        raise_if(problems)
        profile._sections = sections
        profile._cross_field()
        return profile

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        data = handler(self)
        for name, section in self._sections.items():
            data[name] = section.model_dump(mode=info.mode)
        return data

    # ---- derived views -------------------------------------------------------------------------------

    def buildable_precisions(self) -> set[str]:
        """Precisions edge-lora builds for this backend and device (the schema checks the chain against it);
        the backend registry's ``precisions`` of this profile's backend."""
        return set(backends.get(self.backend).precisions(self))

    def precision_chain(self) -> list[ConcretePrecision]:
        """Precisions to try, in order: ``precision`` then ``fallbacks``, with ``auto`` expanded.

        ``auto`` is the backend registry's ``auto_precisions``: int8, then the backend's best float: fp16 on
        TensorRT and on OpenVINO GPU/NPU/AUTO; bf16 then fp32 on OpenVINO CPU (bf16 is only faster on CPUs
        with AVX512-BF16 or AMX, which the measurement decides); fp32 on ONNX Runtime.
        """
        if self.precision != "auto":
            return [self.precision, *self.fallbacks]
        return list(backends.get(self.backend).auto_precisions(self))  # type: ignore[arg-type]

    @property
    def backend_settings(self) -> Any:
        """The settings section of this profile's backend (an :class:`OnnxRuntimeSettings`,
        :class:`OpenVinoSettings`, :class:`TensorRTSettings` or the model a registered backend names); None
        only for a backend without a section."""
        return self.settings_for(self.backend)

    def settings_for(self, backend: str) -> Any:
        """The settings section of ``backend`` in this profile, or None (only the active one is set)."""
        if backend in _declared_sections():
            return getattr(self, backend)
        return self._sections.get(backend)

    @property
    def source(self) -> str | None:
        """The file this profile was loaded from, as shown in messages; None if built in code."""
        return self._source

    def to_yaml(self) -> str:
        """The resolved profile as YAML in schema order (what ``targets show`` prints; a valid profile)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, width=100, allow_unicode=True)

    def load_calibration(self) -> CalibRecipe | None:
        """The calibration recipe this profile names, or None when it builds no int8."""
        from edge_lora.profiles.loader import load_recipe  # imported here: the loader imports this module

        if self.calibration is None:
            return None
        return load_recipe(self.calibration, base_dir=self._calib_base)

    def with_overrides(self, overrides: Mapping[str, Any], origin: str = "override") -> TargetProfile:
        """A re-validated copy with dotted-key overrides applied, e.g. ``{"gates.max_p99_ms": 30}``.

        ``None`` resets a field to its default. Problems raise ``ProfileError`` naming ``origin`` (e.g.
        ``"--set"``) and the field.
        """
        # Imported here: the loader imports this module.
        from edge_lora.profiles.loader import _check_calibration, _deep_merge

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
            raise_if([("min_images", f"{self.min_images} is more than num_images ({self.num_images})")])
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


# --------------------------------------------------------------------------------------------------------
# Pydantic's errors, worded for a hand-written YAML file
# --------------------------------------------------------------------------------------------------------


def _describe(err: Mapping[str, Any], root: type[BaseModel]) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        if root is TargetProfile and loc == ("extends",):
            return "extends only works in a profile file (it is resolved when the file is loaded)"
        allowed = field_names_at(root, loc)
        if root is TargetProfile and len(loc) == 1:
            allowed = [*sorted([*allowed, *_extra_sections()]), "extends"]
        return unknown_key(loc[-1], allowed)
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


def _validate(model: type[Any], data: Any, blame: Any) -> Any:
    """Validate ``data``; on failure raise one ProfileError line naming the file ``blame(loc)`` and field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = flatten(exc, lambda err: _describe(err, model))
        raise ProfileError(f"{blame(problems[0][0])}: {summary(problems)}") from None
