"""Pick the runner for an exported artifact by its type."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from edge_lora.errors import InputError, ModelError
from edge_lora.runtime.base import Runner

ENGINE_SUFFIXES = (".engine", ".plan")


def runner_class(path: str | Path) -> type[Runner]:
    """The runner class for ``path``: ``.onnx`` -> ONNX Runtime, ``.xml`` or a folder holding an IR ->
    OpenVINO, ``.engine``/``.plan`` -> TensorRT. Raises ModelError (missing) or InputError (unknown type)."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model {p} does not exist")
    suffix = p.suffix.lower()
    if p.is_dir():
        if any(p.glob("*.xml")):
            from edge_lora.runtime.openvino_rt import OpenVinoRunner

            return OpenVinoRunner
        raise InputError(f"{p} is a folder without an OpenVINO IR; pass a .onnx, .xml, .engine or .plan file")
    if suffix == ".onnx":
        from edge_lora.runtime.onnxrt import OnnxRuntimeRunner

        return OnnxRuntimeRunner
    if suffix == ".xml":
        from edge_lora.runtime.openvino_rt import OpenVinoRunner

        return OpenVinoRunner
    if suffix in ENGINE_SUFFIXES:
        from edge_lora.runtime.tensorrt_rt import TensorRtRunner

        return TensorRtRunner
    raise InputError(
        f"{p}: unknown model type {suffix or '(no suffix)'!r}; expected .onnx, an OpenVINO .xml "
        f"(or its folder), .engine or .plan"
    )


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
