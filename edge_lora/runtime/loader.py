"""Pick the runner for an exported artifact by its type."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from edge_lora import backends
from edge_lora.errors import InputError, ModelError
from edge_lora.runtime.base import Runner

ENGINE_SUFFIXES = backends.TENSORRT.suffixes


def runner_class(path: str | Path) -> type[Runner]:
    """The runner class for ``path``, from the backend registry: ``.onnx`` -> ONNX Runtime, ``.xml`` or a
    folder holding an IR -> OpenVINO, ``.engine``/``.plan`` -> TensorRT (and a registered backend's own
    suffixes). Raises ModelError (missing) or InputError (unknown type)."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model {p} does not exist")
    spec = backends.for_artifact(p)
    if spec is not None:
        return spec.runner_class()
    specs = backends.specs()
    if p.is_dir():
        holds = " or ".join(s.folder_holds for s in specs if s.folder_holds) or "a model"
        suffixes = [x for s in specs for x in s.suffixes]
        listed = ", ".join(suffixes[:-1]) + f" or {suffixes[-1]}" if len(suffixes) > 1 else suffixes[0]
        raise InputError(f"{p} is a folder without {holds}; pass a {listed} file")
    expected = ", ".join(s.loads for s in specs)
    raise InputError(f"{p}: unknown model type {p.suffix.lower() or '(no suffix)'!r}; expected {expected}")


def load_runner(path: str | Path, **settings: Any) -> Runner:
    """Build the runner for an artifact, not yet activated: use it as ``with load_runner(p) as r: ...``.

    ``settings`` go to the runner's constructor (e.g. ``providers=`` for ONNX Runtime, ``device=`` and
    ``inference_precision=`` for OpenVINO, ``check_fingerprint=`` for TensorRT); one the runner does not
    take is an InputError. The artifact's framing is checked here without the backend, so a truncated or
    corrupt file fails now with a ModelError naming it.
    """
    cls = runner_class(path)
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in settings if k not in params or k in ("self", "path"))
    if unknown:
        allowed = sorted(k for k in params if k not in ("self", "path"))
        raise InputError(f"{cls.__name__} does not take {unknown}; its settings are {allowed}")
    return cls(path, **settings)
