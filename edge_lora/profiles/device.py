"""Which profile a family alias (``--target jetson``) means on this machine: device detection.

:func:`read_device_model` reads the board's device-tree model string; :func:`resolve_target` matches it
against the family's ``hardware.model_match`` strings, or falls back to :data:`FAMILY_DEFAULTS`.

Both look the path up as ``edge_lora.profiles.device_model_path`` on every call: that package-level name
is where callers' tests point detection at a file of their own (``monkeypatch.setattr``), as they did
before the package was split.
"""

from __future__ import annotations

from pathlib import Path

from edge_lora.profiles.loader import list_profiles, load_profile
from edge_lora.profiles.schema import FAMILIES, FAMILY_DEFAULTS, TargetProfile

__all__ = ["device_model_path", "read_device_model", "resolve_target"]

_DEVICE_TREE_MODEL = Path("/proc/device-tree/model")


def _model_path() -> Path:
    import edge_lora.profiles as package  # imported already: this module is part of it

    return package.device_model_path()


def device_model_path() -> Path:
    """Where the board model string is read from (a function so tests can point it elsewhere)."""
    return _DEVICE_TREE_MODEL


def read_device_model() -> str | None:
    """The device-tree model string (e.g. ``"NVIDIA Jetson Orin NX ..."``), or None where there is none."""
    try:
        text = _model_path().read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None
    text = text.replace("\x00", "").strip()  # the kernel NUL-terminates it
    return text or None


def resolve_target(name_or_path: str | Path | TargetProfile) -> tuple[TargetProfile, str | None]:
    """Load ``--target``: a profile name, a YAML path, or a family alias (cpu, intel, jetson, gpu, rpi).

    A :class:`TargetProfile` is already resolved: it comes back as it is (with its overrides and the folder
    its relative calibration recipe resolves against), so the APIs take either and resolve at the edge.

    For a family the profile is picked by matching ``/proc/device-tree/model`` against the family's
    ``hardware.model_match`` strings (longest match wins), else :data:`FAMILY_DEFAULTS`. The second element
    says which profile was picked and why; it is None when no alias was involved.
    """
    if isinstance(name_or_path, TargetProfile):
        return name_or_path, None
    if isinstance(name_or_path, Path) or name_or_path not in FAMILIES:
        return load_profile(name_or_path), None
    family = name_or_path
    default = FAMILY_DEFAULTS[family]
    members = [p for p in (load_profile(n) for n in list_profiles()) if p.family == family]
    where = _model_path()
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
