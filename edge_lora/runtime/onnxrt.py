"""ONNX Runtime runner. ``onnxruntime`` is imported only in :meth:`OnnxRuntimeRunner.activate`."""

from __future__ import annotations

import mmap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edge_lora.errors import InputError, ModelError, ToolError
from edge_lora.runtime.base import Runner, TensorMetadata, normalize_metadata, require_file

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32,
    "tensor(uint32)": np.uint32,
    "tensor(int64)": np.int64,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}

_GRAPH_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

# ModelProto field numbers (onnx.proto3).
_FIELD_IR_VERSION, _FIELD_GRAPH, _FIELD_METADATA_PROPS = 1, 7, 14


def _varint(buf, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def _walk_fields(buf, start: int, end: int):
    """Yield ``(field number, wire type, value or (offset, length))`` of one protobuf message."""
    i = start
    while i < end:
        tag, i = _varint(buf, i, end)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, i = _varint(buf, i, end)
            yield field, wire, value
        elif wire == 1 or wire == 5:
            i += 8 if wire == 1 else 4
            if i > end:
                raise ValueError("truncated fixed-width field")
            yield field, wire, None
        elif wire == 2:
            n, i = _varint(buf, i, end)
            if i + n > end:
                raise ValueError(f"field {field} runs {i + n - end} bytes past the end of the file")
            yield field, wire, (i, n)
            i += n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """Read an ONNX file's ``metadata_props`` without onnx or onnxruntime, checking its top-level framing.

    Walks the ModelProto's top-level fields (the graph and its weights are skipped, not parsed), so a
    truncated or non-ONNX file is caught in milliseconds.

    Returns:
        The raw ``{key: value}`` strings (Ultralytics writes ``str(value)``; see ``normalize_metadata``).

    Raises:
        ModelError: the file is missing, empty, truncated or not an ONNX model.
    """
    p = require_file(path, "ONNX model")
    meta: dict[str, str] = {}
    seen: set[int] = set()
    try:
        with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            for field, wire, value in _walk_fields(buf, 0, len(buf)):
                seen.add(field)
                if field == _FIELD_METADATA_PROPS and wire == 2:
                    off, n = value
                    key = val = ""
                    for sub, sub_wire, sub_value in _walk_fields(buf, off, off + n):
                        if sub_wire == 2 and sub in (1, 2):
                            text = bytes(buf[sub_value[0] : sub_value[0] + sub_value[1]]).decode("utf-8")
                            key, val = (text, val) if sub == 1 else (key, text)
                    meta[key] = val
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise ModelError(f"{p} is not a readable ONNX model (truncated or corrupt?): {exc}") from exc
    if _FIELD_IR_VERSION not in seen or _FIELD_GRAPH not in seen:
        raise ModelError(f"{p} is not a readable ONNX model (no ir_version or graph; truncated or corrupt?)")
    return meta


def _dims(shape: Sequence) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)


class OnnxRuntimeRunner(Runner):
    """Run an ``.onnx`` model with ONNX Runtime.

    Args:
        path: the ``.onnx`` file.
        providers: execution providers in priority order, e.g. ``["CUDAExecutionProvider",
            "CPUExecutionProvider"]``; None runs on ``CPUExecutionProvider`` only (deterministic, and what the
            reference uses). Every requested provider must be available.
        intra_op_threads: ``SessionOptions.intra_op_num_threads``; 0 lets ONNX Runtime decide.
        graph_optimization: ``"disable"``, ``"basic"``, ``"extended"`` or ``"all"``.
        name: runner name for messages.

    Metadata is read from the file's ``metadata_props`` at construction (no onnxruntime needed), which also
    rejects a truncated or non-ONNX file early with a :class:`ModelError`.
    """

    prefix = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
        graph_optimization: str = "all",
        name: str | None = None,
    ):
        super().__init__(path, name)
        if graph_optimization not in _GRAPH_OPT_LEVELS:
            raise InputError(
                f"graph_optimization must be one of {sorted(_GRAPH_OPT_LEVELS)}, got {graph_optimization!r}"
            )
        if intra_op_threads < 0:
            raise InputError(f"intra_op_threads must be >= 0, got {intra_op_threads}")
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.intra_op_threads = int(intra_op_threads)
        self.graph_optimization = graph_optimization
        self.metadata = normalize_metadata(read_onnx_metadata(self.path))
        self._session = None
        self._output_names: list[str] = []

    def activate_impl(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ToolError(
                "onnxruntime is not installed here: pip install onnxruntime (or onnxruntime-gpu)"
            ) from exc
        available = ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise ToolError(
                f"{self.name}: ONNX Runtime providers {missing} are not available here ({available})"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, _GRAPH_OPT_LEVELS[self.graph_optimization]
        )
        opts.log_severity_level = 3  # errors only: warnings go to stderr of the device tool otherwise
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=opts, providers=self.providers)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{self.path}: ONNX Runtime cannot load this model: {first}") from exc
        self._output_names = [o.name for o in self._session.get_outputs()]
        if not self.metadata:  # e.g. metadata written by a tool that framed the file unusually
            self.metadata = normalize_metadata(self._session.get_modelmeta().custom_metadata_map)

    def deactivate_impl(self) -> None:
        self._session = None
        self._output_names = []

    def _meta(self, args) -> TensorMetadata:
        meta: TensorMetadata = {}
        for a in args:
            if a.type not in _ORT_DTYPES:
                raise ModelError(f"{self.path}: unsupported tensor type {a.type} for '{a.name}'")
            meta[a.name] = (np.dtype(_ORT_DTYPES[a.type]), _dims(a.shape))
        return meta

    def input_metadata_impl(self) -> TensorMetadata:
        return self._meta(self._session.get_inputs())

    def output_metadata_impl(self) -> TensorMetadata:
        return self._meta(self._session.get_outputs())

    def infer_impl(self, feed: Mapping[str, np.ndarray], copy_outputs: bool) -> dict[str, np.ndarray]:
        # ONNX Runtime returns fresh arrays, so copy_outputs has nothing to do here.
        results = self._session.run(self._output_names, feed)
        return dict(zip(self._output_names, results, strict=True))

    @property
    def session(self):
        """The ``onnxruntime.InferenceSession`` (None when inactive)."""
        return self._session
