"""Staleness of calibration results: a quantized artifact is only valid for the weights and set it was built from.

:func:`calibration_key` names that combination (merged weights x calibration set x target profile),
:func:`calibration_record` is what an artifact's sidecar records, and :func:`assert_fresh` refuses a stale
one with :class:`StaleCalibrationError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edge_lora.errors import InputError
from edge_lora.fileio import sha256_json

__all__ = ["StaleCalibrationError", "assert_fresh", "calibration_key", "calibration_record"]

_KEY_VERSION = 1


class StaleCalibrationError(InputError):
    """A quantized artifact or cache was built from other weights, another calibration set or profile."""


def calibration_key(model_sha256: str, calib_sha256: str, profile_sha256: str) -> str:
    """Identity of a calibration *result* (a quantized artifact, a range cache): hex sha256 over the merged
    weights' sha256, the calibration set's sha256 and the target profile's sha256."""
    for name, value in (("model", model_sha256), ("calibration", calib_sha256), ("profile", profile_sha256)):
        if not isinstance(value, str) or not value:
            raise InputError(f"calibration_key: {name} sha256 must be a non-empty string, got {value!r}")
    return sha256_json(
        {"v": _KEY_VERSION, "model": model_sha256, "calibration": calib_sha256, "profile": profile_sha256}
    )


def calibration_record(model_sha256: str, calib_sha256: str, profile_sha256: str) -> dict[str, str]:
    """What an artifact records about its calibration (the sidecar's ``calibration`` entry)."""
    return {
        "model_sha256": model_sha256,
        "calibration_sha256": calib_sha256,
        "profile_sha256": profile_sha256,
        "key": calibration_key(model_sha256, calib_sha256, profile_sha256),
    }


def assert_fresh(
    recorded: Mapping[str, Any],
    model_sha256: str,
    calib_sha256: str,
    profile_sha256: str | None = None,
    *,
    what: str = "the quantized artifact",
) -> None:
    """Refuse a calibration result built from other weights, another calibration set (or profile).

    Args:
        recorded: a :func:`calibration_record`, or an artifact sidecar dict holding one under
            ``"calibration"``.
        model_sha256: sha256 of the merged checkpoint the caller is about to use.
        calib_sha256: sha256 of the calibration set (``CalibrationSet.sha256``).
        profile_sha256: the target profile's sha256; None skips that check.
        what: how to name the artifact in the message.

    Raises:
        StaleCalibrationError: with a message that says which input changed and to rebuild.
    """
    rec = recorded.get("calibration") if isinstance(recorded.get("calibration"), Mapping) else recorded
    if not isinstance(rec, Mapping) or "model_sha256" not in rec or "calibration_sha256" not in rec:
        raise StaleCalibrationError(
            f"stale calibration: {what} records no calibration (not an INT8 artifact, or written by an older "
            "edge-lora); rebuild it"
        )
    problems = []
    if rec["model_sha256"] != model_sha256:
        problems.append(
            f"it was built from model weights {str(rec['model_sha256'])[:12]}…, not the current "
            f"{model_sha256[:12]}…"
        )
    if rec["calibration_sha256"] != calib_sha256:
        problems.append(
            f"it was calibrated on set {str(rec['calibration_sha256'])[:12]}…, not the current "
            f"{calib_sha256[:12]}…"
        )
    if profile_sha256 is not None and rec.get("profile_sha256") not in (None, profile_sha256):
        problems.append(
            f"it was built for profile {str(rec['profile_sha256'])[:12]}…, not the current {profile_sha256[:12]}…"
        )
    if (
        not problems
        and rec.get("key") is not None
        and profile_sha256 is not None
        and rec["key"] != calibration_key(model_sha256, calib_sha256, profile_sha256)
    ):
        problems.append("its recorded calibration key does not match (edited sidecar?)")
    if problems:
        raise StaleCalibrationError(
            f"stale calibration: {what}: {'; '.join(problems)}; rebuild it (edge-lora export --overwrite)"
        )
