"""The deploy bundle's ``manifest.json``: schema, build, read.

A bundle is a folder a factory line runs with the torch-free runtime (``edge-lora run``)::

    line_b-cpu-onnxruntime/
      manifest.json     this schema
      model/            the artifact(s): model.onnx | openvino/model.xml,.bin,metadata.yaml | tensorrt/...
      report.md         validation report (+ plots/*.png)
      validation.json   full validation result
      README.md         how to run it on the line

The manifest says everything the line needs to run the model the way it was validated (classes, input size,
letterbox, decoding, per-class deployment thresholds and which classes reject a part), where the model came
from (base, adapter, merged model, calibration, toolchain) and the sha256 of every other file in the folder,
so a bundle that was edited, truncated or mixed with another one is refused before it runs.

The schema is strict on purpose, like the target profiles: an unknown key or a wrong type is an error that
names the file and the dotted field, never silently ignored. It is validated in pydantic's strict JSON mode,
exactly as it is read back, so :func:`build_manifest` cannot produce a manifest :func:`read_manifest` refuses.

Torch-free: the device side reads manifests.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_lora import backends
from edge_lora.errors import EXIT_GATE_FAILED, EdgeLoraError, InputError
from edge_lora.fileio import dumps_json, sha256_json
from edge_lora.schema_errors import field_names_at, flatten, summary, unknown_key
from edge_lora.schema_errors import raise_if as _raise_if

__all__ = [
    "BUNDLE_KIND",
    "DEFAULT_CONF",
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "Artifact",
    "BundleError",
    "BundleFailed",
    "Manifest",
    "Postprocessing",
    "Preprocessing",
    "Provenance",
    "TargetRef",
    "Thresholds",
    "ValidationSummary",
    "build_manifest",
    "check_relative_path",
    "default_thresholds",
    "parse_manifest",
    "read_manifest",
]

SCHEMA_VERSION = 1
BUNDLE_KIND = "edge-lora-bundle"
MANIFEST_NAME = "manifest.json"
#: Deployment confidence used when the target profile gives none (Ultralytics' predict default).
DEFAULT_CONF = 0.25


class BundleError(InputError):
    """A bundle is missing, malformed, tampered with, or cannot run here (exit code 2)."""


class BundleFailed(EdgeLoraError):
    """A bundle is intact but its build marked it ``failed`` (exit code 1, like a failed gate)."""

    exit_code = EXIT_GATE_FAILED


# --------------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------------

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


def check_relative_path(path: str) -> str | None:
    """Why ``path`` is not a clean relative POSIX path inside a bundle, or None when it is."""
    if not path:
        return "empty path"
    if "\\" in path:
        return f"{path!r}: use '/' as the separator"
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        return f"{path!r}: must be relative to the bundle folder"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return f"{path!r}: no empty, '.' or '..' parts allowed"
    if path == MANIFEST_NAME:
        return f"{MANIFEST_NAME} describes the bundle and cannot be one of its files"
    return None


def _rel_path(value: str) -> str:
    problem = check_relative_path(value)
    if problem:
        raise ValueError(problem)
    return value


class _Strict(BaseModel):
    # strict: a manifest is written by edge-lora, so a string where a number belongs is damage, not style.
    # frozen: a manifest read from disk is a fact its hashes vouch for.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TargetRef(_Strict):
    """The target profile the bundle was built and validated for."""

    name: str = Field(min_length=1, description="Profile name, e.g. 'cpu-onnxruntime'.")
    sha256: Sha256 = Field(description="sha256 of the resolved profile (TargetProfile.sha256()).")
    profile: dict[str, Any] = Field(description="The resolved profile: every field, defaults filled in.")

    @model_validator(mode="after")
    def _consistent(self) -> TargetRef:
        problems = []
        if self.profile.get("name") != self.name:
            problems.append(("name", f"{self.name!r} differs from profile.name {self.profile.get('name')!r}"))
        if sha256_json(self.profile) != self.sha256:
            problems.append(("sha256", "does not match the profile it describes (edited after the build?)"))
        _raise_if(problems)
        return self


class Preprocessing(_Strict):
    """How a frame becomes the model input; the values the runtime's ``prepost.preprocess`` implements."""

    letterbox: Literal[True] = Field(True, description="Resize keeping the aspect ratio, then pad.")
    stride: int = Field(32, ge=1, description="Model stride (padding multiple when auto is true).")
    auto: Literal[False] = Field(False, description="Pad to the full imgsz, not to the next stride multiple.")
    pad_value: Literal[114] = Field(114, description="Border value on every channel (Ultralytics' 114).")
    channel_order: Literal["RGB"] = Field("RGB", description="Channel order fed to the model.")
    layout: Literal["NCHW"] = Field("NCHW", description="Tensor layout fed to the model.")
    scale: float = Field(1 / 255, description="Pixel values are multiplied by this (1/255 -> [0, 1]).")

    @field_validator("scale")
    @classmethod
    def _scale(cls, value: float) -> float:
        if not math.isclose(value, 1 / 255, rel_tol=1e-9):
            raise ValueError(f"the runtime scales pixels by 1/255, got {value}")
        return value


class Postprocessing(_Strict):
    """How raw outputs become detections."""

    end2end: bool = Field(
        description="True: (N, K, 6) rows (NMS-free head or embedded NMS); False: raw + NMS."
    )
    conf: float = Field(
        ge=0,
        le=1,
        description="Deployment confidence of the validation. The runtime decodes at the lowest of this and "
        "the per-class thresholds, then keeps each detection above its class's threshold.",
    )
    iou: float = Field(ge=0, le=1, description="NMS IoU threshold (raw outputs only).")
    max_det: int = Field(ge=1, le=10_000, description="Maximum detections per image.")


class Thresholds(_Strict):
    """The line's decision: which detections count, and which make a part a reject."""

    conf: dict[int, float] = Field(
        description="Deployment confidence threshold per class id; a detection counts when its score is "
        "strictly above its class's threshold."
    )
    defect_classes: list[int] = Field(
        description="Class ids whose counted detections make the part a reject (the others are reported only)."
    )

    @field_validator("conf")
    @classmethod
    def _conf_range(cls, value: dict[int, float]) -> dict[int, float]:
        bad = {k: v for k, v in value.items() if not 0 <= v <= 1}
        if bad:
            raise ValueError(f"thresholds must lie in [0, 1], got {bad}")
        return value

    @field_validator("defect_classes")
    @classmethod
    def _unique(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("lists a class twice")
        return value


class Artifact(_Strict):
    """One model file in the bundle."""

    path: Annotated[str, Field(description="Relative POSIX path of the file the runner loads.")]
    sha256: Sha256
    bytes: int = Field(ge=1, description="File size.")
    backend: str = Field(description="A registered backend.", json_schema_extra=backends.json_schema_enum)
    precision: Literal["fp32", "fp16", "bf16", "int8"]
    role: Literal["primary", "fallback", "reference"] = Field(
        description="'primary' runs on the line; 'fallback' is a more precise build to switch to; "
        "'reference' is what the primary was validated against."
    )
    runner_settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments for the runtime's runner (load_runner(path, **runner_settings)).",
    )
    device_outputs: list[str] = Field(
        default_factory=list,
        description="Files the on-device steps build from this artifact (a TensorRT engine and its "
        "fingerprint); the first is what runs. Not hashed: they cannot exist at build time.",
    )

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _rel_path(value)

    @field_validator("backend")
    @classmethod
    def _registered(cls, value: str) -> str:
        return backends.check_registered(value)

    @field_validator("device_outputs")
    @classmethod
    def _outputs(cls, value: list[str]) -> list[str]:
        for v in value:
            _rel_path(v)
        if len(set(value)) != len(value):
            raise ValueError("lists a file twice")
        return value

    @model_validator(mode="after")
    def _backend_fits(self) -> Artifact:
        suffix = PurePosixPath(self.path).suffix.lower()
        spec = backends.get(self.backend)
        allowed = spec.shipped_suffixes  # a TensorRT bundle may ship the ONNX its engine is built from
        problems = []
        if suffix not in allowed:
            problems.append(
                ("path", f"a {self.backend} artifact is a {' or '.join(allowed)} file, got {suffix!r}")
            )
        elif suffix not in spec.suffixes and (
            # Shipped as what the device builds its runner's file from (TensorRT: the ONNX of its engine).
            not self.device_outputs
            or PurePosixPath(self.device_outputs[0]).suffix.lower() not in spec.suffixes
        ):
            example = f" (e.g. {spec.device_outputs[0]})" if spec.device_outputs else ""
            problems.append(
                (
                    "device_outputs",
                    f"a {spec.display} artifact shipped as {suffix[1:].upper()} needs the "
                    f"{' or '.join(spec.suffixes)} built from it on the device as its first device output"
                    f"{example}",
                )
            )
        _raise_if(problems)
        return self

    @property
    def run_path(self) -> str:
        """The relative path the runner loads: the first device output if any, else ``path``."""
        return self.device_outputs[0] if self.device_outputs else self.path


class FileRef(_Strict):
    path: str = Field(min_length=1, description="Where the file was on the build host.")
    sha256: Sha256


class AdapterRef(_Strict):
    path: str = Field(min_length=1, description="The adapter folder on the build host.")
    files: dict[str, Sha256] = Field(description="sha256 of every file of the adapter package.")


class HashRef(_Strict):
    sha256: Sha256


class CalibrationRef(_Strict):
    sha256: Sha256 = Field(description="sha256 of the calibration record (images and their hashes).")
    recipe: str | None = Field(None, description="Calibration recipe name.")
    images: int | None = Field(None, ge=0, description="Number of calibration images.")


class Provenance(_Strict):
    """Where the model came from."""

    base: FileRef
    adapter: AdapterRef | None = None
    merged: HashRef | None = None
    calibration: CalibrationRef | None = Field(None, description="null for a float build.")
    toolchain: dict[str, str] = Field(default_factory=dict, description="Library versions of the build.")


class GateRecord(_Strict):
    """One gate outcome, as ``edge_lora.validate.gates.GateCheck.to_dict()`` writes it."""

    name: str
    value: float | None
    threshold: float | None
    comparator: Literal["<=", ">="]
    passed: bool | None
    unit: str = ""
    detail: str = ""
    skipped: bool = False
    reason: str = ""


class ValidationSummary(_Strict):
    """The validation verdict; the full result is ``validation.json``."""

    passed: bool
    gates: list[GateRecord] = Field(default_factory=list)
    summary: dict[str, float | str | bool | None] = Field(
        default_factory=dict, description="Headline metrics (mAP, deltas, agreement F1, latency, speedup)."
    )
    latency_is_proxy: bool = False
    proxy_reason: str = ""


class Manifest(_Strict):
    """``manifest.json`` of a deploy bundle (schema version 1)."""

    schema_version: Literal[1] = Field(description="Manifest schema version; this edge-lora reads 1.")
    kind: Literal["edge-lora-bundle"]
    status: Literal["complete", "failed"] = Field(
        description="'failed': the build or a gate failed; the runtime refuses it without --allow-failed."
    )
    failure_reason: str | None = Field(None, description="Why the build failed (status 'failed' only).")
    created: str = Field(description="ISO 8601 time with timezone.")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Bundle name (its folder name).")
    target: TargetRef
    classes: dict[int, str] = Field(min_length=1, description="Class id -> name.")
    imgsz: list[int] = Field(min_length=2, max_length=2, description="Model input [height, width].")
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    postprocessing: Postprocessing
    thresholds: Thresholds
    artifacts: list[Artifact] = Field(default_factory=list)
    provenance: Provenance
    validation: ValidationSummary | None = Field(None, description="null when the build stopped before it.")
    on_device_steps: list[str] = Field(
        default_factory=list, description="Commands to run on the device first."
    )
    files: dict[str, Sha256] = Field(description="sha256 of every file in the bundle except manifest.json.")

    @field_validator("imgsz", mode="before")
    @classmethod
    def _square(cls, value: Any) -> Any:
        return [value, value] if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("imgsz")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError(f"sizes must be positive, got {value}")
        return value

    @field_validator("created")
    @classmethod
    def _iso(cls, value: str) -> str:
        try:
            stamp = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an ISO 8601 time: {value!r}") from None
        if stamp.tzinfo is None:
            raise ValueError(f"{value!r} has no timezone")
        return value

    @field_validator("files")
    @classmethod
    def _paths(cls, value: dict[str, str]) -> dict[str, str]:
        for path in value:
            _rel_path(path)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        problems: list[tuple[str, str]] = []
        add = lambda path, msg: problems.append((path, msg))  # noqa: E731
        if self.status == "failed" and not (self.failure_reason or "").strip():
            add("failure_reason", "a failed bundle must say why it failed")
        if self.status == "complete" and self.failure_reason is not None:
            add("failure_reason", "only a failed bundle has a failure reason")
        if self.status == "complete" and self.validation is not None and not self.validation.passed:
            add("status", "validation did not pass, so the bundle must be 'failed'")
        if any(k < 0 for k in self.classes):
            add("classes", "class ids must be >= 0")
        missing = sorted(set(self.classes) - set(self.thresholds.conf))
        extra = sorted(set(self.thresholds.conf) - set(self.classes))
        if missing:
            add("thresholds.conf", f"no threshold for class ids {missing}")
        if extra:
            add("thresholds.conf", f"class ids {extra} are not in classes")
        unknown = sorted(set(self.thresholds.defect_classes) - set(self.classes))
        if unknown:
            add("thresholds.defect_classes", f"class ids {unknown} are not in classes")
        primaries = [i for i, a in enumerate(self.artifacts) if a.role == "primary"]
        if len(primaries) > 1:
            add("artifacts", f"{len(primaries)} artifacts have role 'primary'; one runs on the line")
        if self.status == "complete" and not primaries:
            add("artifacts", "a complete bundle needs one artifact with role 'primary'")
        seen: set[str] = set()
        for i, art in enumerate(self.artifacts):
            if art.path in seen:
                add(f"artifacts[{i}].path", f"{art.path} is listed twice")
            seen.add(art.path)
            if art.path not in self.files:
                add(f"artifacts[{i}].path", f"{art.path} is not in files")
            elif self.files[art.path] != art.sha256:
                add(f"artifacts[{i}].sha256", f"differs from files[{art.path!r}]")
            for out in art.device_outputs:
                if out in self.files:
                    add(
                        f"artifacts[{i}].device_outputs",
                        f"{out} is built on the device; it cannot be in files",
                    )
        _raise_if(problems)
        return self

    # ------------------------------------------------------------------------------------------- helpers
    @property
    def primary(self) -> Artifact | None:
        """The artifact that runs on the line (None only in a failed bundle)."""
        return next((a for a in self.artifacts if a.role == "primary"), None)

    @property
    def device_outputs(self) -> list[str]:
        """Every file the on-device steps may add to the bundle."""
        return [out for a in self.artifacts for out in a.device_outputs]

    @property
    def defect_names(self) -> list[str]:
        """Names of the classes that make a part a reject."""
        return [self.classes[c] for c in self.thresholds.defect_classes]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (class ids become string keys in JSON, as always)."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        """The text of ``manifest.json``: sorted keys, 2-space indent, trailing newline."""
        return dumps_json(self.to_dict())


# --------------------------------------------------------------------------------------------------------
# Schema errors -> one line naming the file and the field
# --------------------------------------------------------------------------------------------------------


def _describe(err: Mapping[str, Any]) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        return unknown_key(loc[-1], field_names_at(Manifest, loc))
    if kind == "missing":
        return "required but missing"
    msg = str(err["msg"]).removeprefix("Value error, ")
    value = err.get("input")
    if kind in ("literal_error", "string_pattern_mismatch") or kind.endswith("_type"):
        shown = (
            repr(value)
            if isinstance(value, (str, int, float, bool)) or value is None
            else type(value).__name__
        )
        return f"{msg}, got {shown}"
    return msg


def _schema_error(exc: ValidationError, where: str) -> BundleError:
    return BundleError(f"{where}: {summary(flatten(exc, _describe))}")


# --------------------------------------------------------------------------------------------------------
# Build / read
# --------------------------------------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def parse_manifest(text: str | bytes, where: str = MANIFEST_NAME) -> Manifest:
    """Validate manifest JSON text; every problem raises :class:`BundleError` naming ``where`` and the field."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{where} is not valid JSON (truncated or edited?): {exc}") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{where} is not an edge-lora bundle manifest (top level is not an object)")
    kind = raw.get("kind")
    if kind != BUNDLE_KIND:
        raise BundleError(
            f"{where} is not an edge-lora bundle manifest (kind {kind!r}, expected {BUNDLE_KIND!r})"
        )
    version = raw.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise BundleError(
            f"{where}: schema_version {version} was written by a newer edge-lora (this one reads "
            f"{SCHEMA_VERSION}); upgrade edge-lora on this device"
        )
    try:
        return Manifest.model_validate_json(text)
    except ValidationError as exc:
        raise _schema_error(exc, where) from None


def default_thresholds(classes: Mapping[int, str], conf: float = DEFAULT_CONF) -> dict[str, Any]:
    """The default line decision: every class counts at ``conf`` and every class is a defect."""
    ids = sorted(int(k) for k in classes)
    return {"conf": dict.fromkeys(ids, float(conf)), "defect_classes": ids}


def _target_fields(target: Any) -> Any:
    # A TargetProfile (duck-typed: edge_lora.profiles is not imported here) becomes {name, sha256, profile}.
    if hasattr(target, "resolved_dict") and hasattr(target, "sha256"):
        return {"name": target.name, "sha256": target.sha256(), "profile": target.resolved_dict()}
    return target


def build_manifest(**fields: Any) -> Manifest:
    """Validate ``fields`` into a :class:`Manifest`, filling what edge-lora always knows.

    Filled when absent: ``schema_version`` (1), ``kind``, ``status`` ("complete"), ``created`` (now, UTC),
    ``thresholds`` (every class a defect at the target profile's ``gates.agreement_conf``, else 0.25) and
    ``postprocessing.conf`` (the same). ``target`` may be a ``TargetProfile``; ``imgsz`` may be an int.
    Paths, numpy scalars, dataclasses and objects with ``to_dict()`` are converted to JSON first, and the
    result is validated exactly as :func:`read_manifest` will read it back.

    Raises:
        BundleError: a field is missing or wrong; the message names the field.
    """
    data = dict(fields)
    data.setdefault("schema_version", SCHEMA_VERSION)
    data.setdefault("kind", BUNDLE_KIND)
    data.setdefault("status", "complete")
    data.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if "target" in data:
        data["target"] = _target_fields(data["target"])
    profile = data.get("target", {}).get("profile", {}) if isinstance(data.get("target"), dict) else {}
    gates = profile.get("gates") if isinstance(profile, dict) else None
    conf = gates.get("agreement_conf", DEFAULT_CONF) if isinstance(gates, dict) else DEFAULT_CONF
    if "thresholds" not in data and isinstance(data.get("classes"), Mapping):
        data["thresholds"] = default_thresholds(data["classes"], conf)
    if isinstance(data.get("postprocessing"), Mapping) and "conf" not in data["postprocessing"]:
        data["postprocessing"] = {**data["postprocessing"], "conf": conf}
    try:
        text = json.dumps(data, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"manifest fields are not JSON-serialisable: {exc}") from None
    return parse_manifest(text, "manifest")


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """Read and validate ``BUNDLE/manifest.json`` (``bundle_dir`` may also be the manifest file itself).

    Raises:
        BundleError: no manifest, not JSON, not a bundle manifest, or a schema problem (one line naming the
            file and the dotted field, e.g. ``dist/b/manifest.json: field 'thresholds.conf': ...``).
    """
    p = Path(bundle_dir)
    path = p if p.name == MANIFEST_NAME and p.is_file() else p / MANIFEST_NAME
    if not p.exists():
        raise BundleError(f"bundle {p} does not exist")
    if not path.is_file():
        raise BundleError(f"{p} is not a bundle: it has no {MANIFEST_NAME}")
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from None
    return parse_manifest(text, str(path))
