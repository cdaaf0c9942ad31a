"""The runner contract every on-device backend implements.

Torch-free on purpose: this module and everything under ``edge_lora.runtime`` import only numpy, opencv and,
lazily inside ``activate()``, the backend runtime (onnxruntime, openvino, tensorrt).

The shape follows Polygraphy's runners: a runner is a context manager; subclasses implement small ``*_impl``
hooks and the base class does the bookkeeping (activation state, cold-start timing, feed validation,
per-call timing)::

    with OnnxRuntimeRunner("model.onnx") as runner:
        outputs = runner.infer(batch)          # {"output0": array}
        runner.last_inference_time             # seconds, time.perf_counter around the backend call only
"""

from __future__ import annotations

import ast
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_lora.errors import EdgeLoraError, InputError, ModelError, ToolError

# {name: (numpy dtype, shape)}; a dynamic dimension is None. Insertion order is the model's I/O order.
TensorMetadata = dict[str, tuple[np.dtype, tuple[int | None, ...]]]

# Ultralytics writes each metadata value with str() into ONNX metadata_props; these keys hold Python literals.
_LITERAL_KEYS = ("imgsz", "names", "args", "end2end", "kpt_shape", "kpt_names", "dynamic")
_INT_KEYS = ("stride", "batch", "channels")


def normalize_metadata(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """Turn Ultralytics export metadata into typed values, the way Ultralytics' AutoBackend reads it.

    ONNX metadata_props and TensorRT headers hold strings (``"{0: 'person'}"``, ``"[640, 640]"``, ``"True"``);
    OpenVINO's ``metadata.yaml`` is already typed. After this, ``names`` is ``{int: str}``, ``imgsz`` a
    ``[h, w]`` list of ints, ``stride``/``batch``/``channels`` ints, ``args`` a dict and ``end2end`` a bool
    that is also true for exports with embedded NMS (``args.nms``), whose output is ``(N, max_det, 6)`` too.
    Unparseable values are kept as given; an empty or missing mapping gives ``{}``.
    """
    if not raw:
        return {}
    meta: dict[str, Any] = dict(raw)
    for key in _LITERAL_KEYS:
        value = meta.get(key)
        if isinstance(value, str):
            with contextlib.suppress(ValueError, SyntaxError):
                meta[key] = ast.literal_eval(value)
    for key in _INT_KEYS:
        if key in meta:
            with contextlib.suppress(TypeError, ValueError):
                meta[key] = int(meta[key])
    names = meta.get("names")
    if isinstance(names, Mapping):
        with contextlib.suppress(TypeError, ValueError):
            meta["names"] = {int(k): str(v) for k, v in names.items()}
    elif isinstance(names, (list, tuple)):
        meta["names"] = {i: str(v) for i, v in enumerate(names)}
    imgsz = meta.get("imgsz")
    if isinstance(imgsz, int):
        meta["imgsz"] = [imgsz, imgsz]
    elif isinstance(imgsz, (list, tuple)):
        meta["imgsz"] = [int(v) for v in imgsz]
    args = meta.get("args") if isinstance(meta.get("args"), Mapping) else {}
    meta["end2end"] = bool(meta.get("end2end") is True or args.get("nms") is True)
    return meta


def _fmt_shape(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


class Runner(ABC):
    """Base class of the backend runners.

    Subclasses implement :meth:`activate_impl`, :meth:`deactivate_impl`, :meth:`input_metadata_impl`,
    :meth:`output_metadata_impl` and :meth:`infer_impl`, and may fill ``self.metadata`` in ``__init__``
    (cheap, without the backend) or in ``activate_impl``.

    Attributes:
        name: human-readable runner name used in messages.
        path: the artifact this runner loads.
        metadata: typed Ultralytics metadata read from the artifact (see :func:`normalize_metadata`);
            ``{}`` for a third-party export.
        load_time_s: seconds ``activate()`` took (backend load, compile, memory allocation); None before.
        last_inference_time: seconds the last ``infer()`` spent in the backend; None before the first call.
        is_active: whether the runner is activated.
    """

    prefix = "runner"

    def __init__(self, path: str | Path, name: str | None = None):
        self.path = Path(path)
        self.name = name or f"{self.prefix}:{self.path.name}"
        self.metadata: dict[str, Any] = {}
        self.load_time_s: float | None = None
        self.last_inference_time: float | None = None
        self.is_active = False
        self._inputs: TensorMetadata = {}
        self._outputs: TensorMetadata = {}
        self._single_input: str | None = None

    # ----------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.deactivate()

    def activate(self) -> None:
        """Load the artifact into the backend (sessions, compiled models, device buffers). Idempotent."""
        if self.is_active:
            return
        start = time.perf_counter()
        try:
            self.activate_impl()
            self._inputs = dict(self.input_metadata_impl())
            self._outputs = dict(self.output_metadata_impl())
        except BaseException:
            self._safe_deactivate_impl()
            raise
        self.load_time_s = time.perf_counter() - start
        self._single_input = next(iter(self._inputs)) if len(self._inputs) == 1 else None
        self.is_active = True

    def deactivate(self) -> None:
        """Release what :meth:`activate` acquired. Idempotent."""
        if not self.is_active:
            return
        self.is_active = False
        self._inputs, self._outputs, self._single_input = {}, {}, None
        self.deactivate_impl()

    def _safe_deactivate_impl(self) -> None:
        with contextlib.suppress(
            Exception
        ):  # best-effort cleanup after a failed activation: first error wins
            self.deactivate_impl()

    # ------------------------------------------------------------------------------------------- metadata
    def input_metadata(self) -> TensorMetadata:
        """Ordered ``{name: (dtype, shape)}`` of the model inputs; dynamic dims are None."""
        self._require_active("input_metadata")
        return dict(self._inputs)

    def output_metadata(self) -> TensorMetadata:
        """Ordered ``{name: (dtype, shape)}`` of the model outputs; dynamic dims are None."""
        self._require_active("output_metadata")
        return dict(self._outputs)

    # ------------------------------------------------------------------------------------------ inference
    def infer(
        self,
        feed: Mapping[str, np.ndarray] | np.ndarray,
        *,
        check_inputs: bool = True,
        copy_outputs: bool = True,
    ) -> dict[str, np.ndarray]:
        """Run one inference and return ``{output name: array}`` in the model's output order.

        Args:
            feed: ``{input name: array}``, or one array for a single-input model.
            check_inputs: validate names, dtypes and shapes against :meth:`input_metadata` (cheap; turn off
                only in tight benchmark loops with a feed already known to be right).
            copy_outputs: when False a backend may return views of buffers it reuses on the next call
                (zero-copy, for benchmarking); the default returns arrays the caller owns.

        Raises:
            InputError: the feed does not fit the model.
            ToolError: the backend failed on a valid feed.
        """
        self._require_active("infer")
        if isinstance(feed, np.ndarray):
            if self._single_input is None:
                raise InputError(
                    f"{self.name}: the model has inputs {list(self._inputs)}; pass a dict, not one array"
                )
            feed = {self._single_input: feed}
        if check_inputs:
            self._check_feed(feed)
        start = time.perf_counter()
        try:
            outputs = self.infer_impl(feed, copy_outputs)
        except EdgeLoraError:
            raise
        except Exception as exc:
            raise ToolError(f"{self.name}: inference failed: {exc}".splitlines()[0]) from exc
        self.last_inference_time = time.perf_counter() - start
        return outputs

    def _check_feed(self, feed: Mapping[str, np.ndarray]) -> None:
        expected = self._inputs
        if feed.keys() != expected.keys():
            missing = [n for n in expected if n not in feed]
            extra = [n for n in feed if n not in expected]
            parts = [f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else ""]
            raise InputError(
                f"{self.name}: feed inputs do not match the model: {', '.join(p for p in parts if p)}"
            )
        for name, (dtype, shape) in expected.items():
            arr = feed[name]
            if not isinstance(arr, np.ndarray):
                raise InputError(
                    f"{self.name}: input '{name}' must be a numpy array, got {type(arr).__name__}"
                )
            if arr.dtype != dtype:
                raise InputError(f"{self.name}: input '{name}' expects dtype {dtype}, got {arr.dtype}")
            if arr.ndim != len(shape) or any(
                d is not None and d != a for d, a in zip(shape, arr.shape, strict=True)
            ):
                raise InputError(
                    f"{self.name}: input '{name}' expects shape {_fmt_shape(shape)}, got {tuple(arr.shape)}"
                )

    def thread_context(self) -> contextlib.AbstractContextManager[None]:
        """Enter in a thread other than the one that activated the runner before calling :meth:`infer` there
        (the pipelined ``edge-lora run`` infers in its own thread). Default: nothing to do (ONNX Runtime and
        OpenVINO may be called from any thread); TensorRT makes its CUDA device and context current."""
        return contextlib.nullcontext()

    def _require_active(self, what: str) -> None:
        if not self.is_active:
            raise RuntimeError(f"{self.name}: activate the runner (use `with runner:`) before {what}()")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, active={self.is_active})"

    # ------------------------------------------------------------------------------------- backend hooks
    @abstractmethod
    def activate_impl(self) -> None:
        """Import the backend lazily and load the artifact. Raise ToolError (backend missing or failing),
        ModelError (artifact unreadable)."""

    @abstractmethod
    def deactivate_impl(self) -> None:
        """Free backend objects; must tolerate a partially completed ``activate_impl``."""

    @abstractmethod
    def input_metadata_impl(self) -> TensorMetadata:
        """Inputs of the loaded model (called once, right after ``activate_impl``)."""

    @abstractmethod
    def output_metadata_impl(self) -> TensorMetadata:
        """Outputs of the loaded model (called once, right after ``activate_impl``)."""

    @abstractmethod
    def infer_impl(self, feed: Mapping[str, np.ndarray], copy_outputs: bool) -> dict[str, np.ndarray]:
        """Run the backend on a validated feed."""


def require_file(path: str | Path, what: str) -> Path:
    """Return ``path`` as a Path if it is an existing non-empty file, else raise ModelError naming it."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{what} {p} does not exist")
    if not p.is_file():
        raise ModelError(f"{what} {p} is not a file")
    if p.stat().st_size == 0:
        raise ModelError(f"{what} {p} is empty")
    return p
