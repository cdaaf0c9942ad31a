"""Provenance sidecars: ``<artifact>.json`` next to every exported model.

A sidecar says what a file is and where it came from: the artifact's sha256 and size (and those of the
companion files its backend names: both files of an OpenVINO IR), the source checkpoint and its sha256, the
target profile (name and sha256), the precision, the calibration record of an INT8 build (see
:func:`edge_lora.export.calibration.calibration_record`), library versions and a timestamp.
:func:`verify_sidecar` re-hashes the files, so a model replaced or truncated after export is refused with one
clear line.

Written atomically (temp file and rename), after the artifact itself is in place. Torch-free: the device
side verifies sidecars too.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_lora import backends
from edge_lora.errors import InputError, ModelError
from edge_lora.fileio import atomic_write_json, sha256_file

if TYPE_CHECKING:
    from edge_lora.profiles import TargetProfile

__all__ = [
    "SIDECAR_SCHEMA_VERSION",
    "artifact_files",
    "library_versions",
    "read_sidecar",
    "sidecar_path",
    "verify_sidecar",
    "write_sidecar",
]

SIDECAR_SCHEMA_VERSION = 1
_KIND_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# Distribution names to report; the first installed name of each group wins (GPU builds have other names).
_LIBRARIES: tuple[tuple[str, ...], ...] = (
    ("edge-lora",),
    ("onnx",),
    ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"),
    ("onnxslim",),
    ("openvino",),
    ("nncf",),
    ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11"),
    ("ultralytics",),
    ("torch",),
)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape an artifact, read from package metadata (no imports)."""
    out: dict[str, str] = {}
    for names in _LIBRARIES:
        for name in names:
            try:
                out[name] = md.version(name)
                break
            except md.PackageNotFoundError:
                continue
    return out


def sidecar_path(artifact_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``; a sidecar path is returned unchanged."""
    p = Path(artifact_path)
    return p if p.name.endswith(".json") else p.with_name(p.name + ".json")


def artifact_files(artifact_path: str | Path) -> list[Path]:
    """The files that make up an artifact: it and the companions its backend names (an OpenVINO ``.xml``
    brings its ``.bin``); a file no backend loads (an ONNX a TensorRT folder ships too) is one file."""
    p = Path(artifact_path)
    spec = backends.for_artifact(p) if not p.is_dir() else None
    return [p, *(p.with_suffix(s) for s in spec.companions)] if spec is not None else [p]


def _profile_entry(profile: TargetProfile | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if profile is None:
        return None
    if isinstance(profile, Mapping):
        if not isinstance(profile.get("name"), str) or not isinstance(profile.get("sha256"), str):
            raise InputError("sidecar profile must be a TargetProfile or a mapping with 'name' and 'sha256'")
        return {"name": profile["name"], "sha256": profile["sha256"], "source": profile.get("source")}
    return {"name": profile.name, "sha256": profile.sha256(), "source": profile.source}


def write_sidecar(
    artifact_path: str | Path,
    *,
    kind: str,
    source_checkpoint: str | Path | None,
    source_sha256: str | None,
    profile: TargetProfile | Mapping[str, Any] | None,
    precision: str,
    calibration: Mapping[str, Any] | str | None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Hash the artifact and write ``<artifact>.json`` atomically; return the sidecar path.

    Args:
        artifact_path: the exported file (for OpenVINO the ``.xml``; its ``.bin`` is hashed too).
        kind: what the artifact is, lower-case, e.g. ``"onnx"``, ``"onnx-qdq"``, ``"openvino-ir"``,
            ``"tensorrt-engine"``.
        source_checkpoint: the merged checkpoint it was exported from (recorded as given).
        source_sha256: that checkpoint's sha256.
        profile: the target profile (name and sha256 recorded), a ``{"name", "sha256"}`` mapping, or None.
        precision: ``"fp32"``, ``"fp16"``, ``"bf16"`` or ``"int8"``.
        calibration: for INT8 a :func:`~edge_lora.export.calibration.calibration_record` (or just the
            calibration set's sha256); None for float artifacts.
        extra: more JSON-able facts (output form, opset, quantization counts ...), stored under ``extra``.

    Raises:
        InputError: a bad ``kind``/``precision``. ModelError: an artifact file is missing.
    """
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise InputError(f"sidecar kind must be a lower-case name like 'onnx-qdq', got {kind!r}")
    if precision not in _PRECISIONS:
        raise InputError(f"sidecar precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}")
    files = []
    for f in artifact_files(artifact_path):
        if not f.is_file():
            raise ModelError(f"cannot write a sidecar for {artifact_path}: {f} does not exist")
        files.append({"name": f.name, "sha256": sha256_file(f), "size": f.stat().st_size})
    calib: Any
    if calibration is None or isinstance(calibration, Mapping):
        calib = dict(calibration) if calibration is not None else None
    else:
        calib = {"calibration_sha256": str(calibration)}
    sidecar = {
        "schema_version": SIDECAR_SCHEMA_VERSION,
        "kind": kind,
        "precision": precision,
        "files": files,
        "source": {
            "checkpoint": None if source_checkpoint is None else str(source_checkpoint),
            "sha256": source_sha256,
        },
        "profile": _profile_entry(profile),
        "calibration": calib,
        "versions": library_versions(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "extra": dict(extra or {}),
    }
    return atomic_write_json(sidecar_path(artifact_path), sidecar)


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """Read the sidecar of an artifact (pass the artifact or the ``.json`` itself).

    Raises:
        ModelError: no sidecar, not JSON, or not an edge-lora sidecar of a known schema.
    """
    sc = sidecar_path(path)
    if not sc.is_file():
        raise ModelError(f"{Path(path)} has no provenance sidecar ({sc.name}); re-export it with edge-lora")
    try:
        data = json.loads(sc.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"sidecar {sc} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list) or "kind" not in data:
        raise ModelError(f"{sc} is not an edge-lora artifact sidecar")
    if data.get("schema_version") != SIDECAR_SCHEMA_VERSION:
        raise ModelError(
            f"sidecar {sc} has schema_version {data.get('schema_version')!r}; this edge-lora reads "
            f"{SIDECAR_SCHEMA_VERSION}"
        )
    return data


def verify_sidecar(path: str | Path) -> dict[str, Any]:
    """Check every file the sidecar lists (size, then sha256); return the sidecar.

    Raises:
        ModelError: a file is missing or differs from what was exported, naming it and what to do.
    """
    sc = sidecar_path(path)
    data = read_sidecar(sc)
    artifact = sc.with_name(sc.name[: -len(".json")])
    expected_names = {f.name for f in artifact_files(artifact)}
    listed = {entry.get("name") for entry in data["files"]}
    if not expected_names <= listed:
        raise ModelError(f"sidecar {sc} does not list {sorted(expected_names - listed)}; re-export the model")
    for entry in data["files"]:
        f = sc.parent / str(entry.get("name"))
        if not f.is_file():
            raise ModelError(f"{f} is missing (listed in {sc.name}); re-export the model")
        size = f.stat().st_size
        if size != entry.get("size"):
            raise ModelError(
                f"{f} is {size} bytes but was exported as {entry.get('size')} bytes (truncated or replaced "
                "after export); re-export the model"
            )
        actual = sha256_file(f)
        if actual != entry.get("sha256"):
            raise ModelError(
                f"{f} does not match its sidecar (sha256 {actual[:12]}…, exported {str(entry.get('sha256'))[:12]}…): "
                "it was modified or replaced after export; re-export the model"
            )
    return data
