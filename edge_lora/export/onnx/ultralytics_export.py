"""Ultralytics' ONNX exporter (8.4.x), wrapped: where it needs working around, and how.

* It writes ``<checkpoint stem>.onnx`` *next to the checkpoint*, clobbering a file of that name:
  :func:`export_with_ultralytics` exports a copy of the checkpoint inside a private folder.
* ``check_requirements`` pip-installs missing or too-old packages at run time (when online) and, offline,
  only logs a warning and carries on: a missing onnxslim then silently yields an unsimplified graph.
  :func:`no_runtime_installs` replaces it, for the duration of the export, with a strict check that never
  installs and raises :class:`~edge_lora.errors.ToolError` naming the requirement.
* Errors inside the ONNX step are logged and re-raised, but a failing onnxslim is only a warning; we capture
  Ultralytics' warnings and fail on that one (``_UltralyticsWarnings``).
* ``half`` is the deprecated spelling of ``quantize=16``; the caller passes ``quantize``. Its CPU FP16
  conversion leaves the graph's nodes out of topological order, which ``onnx.checker`` rejects:
  :func:`toposort_file` re-sorts them.

The rest (``nms``/``end2end`` mapping, the stride check on ``imgsz``) is argument checking in
:func:`edge_lora.export.onnx.exporter.export_onnx`. Host side (imports Ultralytics lazily).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from edge_lora.errors import EdgeLoraError, ToolError

__all__ = ["export_with_ultralytics", "no_runtime_installs", "toposort_file"]

_PATCH_LOCK = threading.Lock()


def _strict_check_requirements(original):
    def check_requirements(requirements=(), exclude=(), install=True, cmds="", constrain=()):
        # Check each requirement alone so the message names what is missing. install=False: never pip.
        reqs = [requirements] if isinstance(requirements, (str, Path)) else list(requirements)
        missing = []
        for r in reqs:
            if not original([r] if not isinstance(r, Path) else r, exclude=exclude, install=False):
                missing.append(" or ".join(r) if isinstance(r, (list, tuple)) else str(r))
        if missing:
            raise ToolError(
                f"the Ultralytics exporter needs {', '.join(missing)}, which is not installed here (or too old); "
                "install it with pip and retry. edge-lora never installs packages at run time"
            )
        return True

    check_requirements.__wrapped__ = original  # type: ignore[attr-defined]
    return check_requirements


@contextlib.contextmanager
def no_runtime_installs() -> Iterator[None]:
    """Inside the block, Ultralytics' ``check_requirements`` never installs and raises ``ToolError`` instead.

    Ultralytics imports the function by name into many modules, so every loaded ``ultralytics.*`` module
    that holds it is patched (and restored afterwards); the exporter modules are imported first so they are
    among them. Process-global while active, hence serialised with a lock.
    """
    import ultralytics.engine.exporter  # noqa: F401  (bind its names before patching)
    import ultralytics.utils.checks as checks

    with contextlib.suppress(ImportError):
        import ultralytics.utils.export.engine  # noqa: F401

    with _PATCH_LOCK:
        original = checks.check_requirements
        strict = _strict_check_requirements(original)
        patched = []
        for name, module in list(sys.modules.items()):
            if (name == "ultralytics" or name.startswith("ultralytics.")) and getattr(
                module, "check_requirements", None
            ) is original:
                module.check_requirements = strict
                patched.append(module)
        autoinstall = checks.AUTOINSTALL
        checks.AUTOINSTALL = False
        try:
            yield
        finally:
            checks.AUTOINSTALL = autoinstall
            for module in patched:
                module.check_requirements = original


class _UltralyticsWarnings(logging.Handler):
    """Collects WARNING+ records of the ``ultralytics`` logger and mutes its INFO chatter meanwhile."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().strip())

    @contextlib.contextmanager
    def capture(self) -> Iterator[_UltralyticsWarnings]:
        logger = logging.getLogger("ultralytics")
        level = logger.level
        logger.setLevel(logging.WARNING)
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(level)


def export_with_ultralytics(
    checkpoint: Path, workdir: Path, args: Mapping[str, Any]
) -> tuple[Path, list[str]]:
    """Run ``YOLO(copy).export(**args)`` inside ``workdir``; return the .onnx path and logged warnings."""
    from ultralytics import YOLO

    # Workaround: the exporter writes <stem>.onnx beside the checkpoint it loaded, so give it a private copy.
    local = workdir / "model.pt"
    shutil.copyfile(checkpoint, local)
    sink = _UltralyticsWarnings()
    try:
        with no_runtime_installs(), sink.capture():
            produced = YOLO(str(local), task="detect").export(**args)
    except EdgeLoraError:
        raise
    except Exception as exc:  # Ultralytics raises AssertionError/ValueError/RuntimeError for everything
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ToolError(f"Ultralytics ONNX export of {checkpoint} failed: {first}") from exc
    failures = [m for m in sink.messages if "simplifier failure" in m]
    if args.get("simplify") and failures:
        raise ToolError(
            f"onnxslim failed on {checkpoint}: {failures[0]}; export with simplify=False to skip it"
        )
    path = Path(str(produced))
    if path.suffix != ".onnx" or not path.is_file() or path.parent.resolve() != workdir.resolve():
        raise ToolError(
            f"Ultralytics ONNX export of {checkpoint} produced {produced!r}, not an .onnx in {workdir}"
        )
    return path, sink.messages


def toposort_file(path: Path) -> None:
    """Re-save an ONNX file with its nodes in topological order.

    Workaround: Ultralytics' CPU FP16 path (``onnxruntime.transformers.float16.convert_float_to_float16`` with
    ``keep_io_types=True``) appends the input Casts at the end of the node list, which ``onnx.checker`` (and
    the ONNX spec) reject. Stable: nodes already in order keep their order.
    """
    import onnx

    proto = onnx.load(str(path))
    graph = proto.graph
    ready = {"", *(i.name for i in graph.input), *(i.name for i in graph.initializer)}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            return  # a cycle or a dangling input: leave it for onnx.checker to report
        pending = rest
    if [n.name for n in ordered] != [n.name for n in graph.node]:
        del graph.node[:]
        graph.node.extend(ordered)
        onnx.save(proto, str(path))
