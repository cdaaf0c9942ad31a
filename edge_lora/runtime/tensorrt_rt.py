"""TensorRT runner (TensorRT >= 10 name-based I/O) with CUDA memory from cuda-python, or PyCUDA.

``tensorrt`` and the CUDA bindings are imported only inside :meth:`TensorRtRunner.activate` and
:func:`current_device_fingerprint`; importing this module needs neither, so the fingerprint logic and the
clear "not installed" error work on any machine.

An engine runs only on the GPU model and TensorRT release it was built with. Next to ``model.engine`` the
exporter writes ``model.engine.json`` holding at least (see :func:`current_device_fingerprint`)::

    {"gpu_name": "Orin", "compute_capability": "8.7", "tensorrt_version": "10.3.0"}

(top level, or under a ``"fingerprint"`` key). The runner compares it with the current device before
deserializing and refuses a mismatch with a :class:`ModelError` that says what differs.

Engines exported by Ultralytics start with a 4-byte little-endian length and that many bytes of JSON
metadata before the serialized engine; the runner reads that header into ``metadata`` and skips it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_lora.errors import InputError, ModelError, ToolError
from edge_lora.runtime.base import Runner, TensorMetadata, normalize_metadata, require_file

FINGERPRINT_KEYS = ("gpu_name", "compute_capability", "tensorrt_version")

_NO_TENSORRT = (
    "TensorRT is not installed here: engines run on the device they were built on (JetPack ships TensorRT; "
    "elsewhere pip install tensorrt). Validate the .onnx or OpenVINO artifact on this machine instead"
)
_NO_CUDA = (
    "no CUDA Python binding is installed here: the TensorRT runner needs cuda-python "
    "(pip install cuda-python) or PyCUDA for device memory"
)


# ------------------------------------------------------------------------------------------ engine file
def fingerprint_path(engine_path: str | Path) -> Path:
    """The fingerprint sidecar of an engine: ``<engine>.json`` (``model.engine`` -> ``model.engine.json``)."""
    return Path(f"{engine_path}.json")


def read_engine_header(path: str | Path) -> tuple[int, dict[str, Any]]:
    """Read the metadata header Ultralytics puts before a serialized engine.

    Returns:
        ``(offset of the engine bytes, raw metadata)``; ``(0, {})`` for a plain TensorRT engine.
    """
    p = Path(path)
    with open(p, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        n = int.from_bytes(f.read(4), byteorder="little")
        # A length that overruns the file, or bytes that do not open a JSON object, are engine bytes.
        if 0 < n <= size - 4 and f.read(1) == b"{":
            f.seek(4)
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                meta = json.loads(f.read(n).decode("utf-8"))
                if isinstance(meta, dict):
                    return 4 + n, meta
    return 0, {}


# ----------------------------------------------------------------------------------------- fingerprint
def _compute_capability(value: Any) -> str | None:
    """Normalize ``"8.7"``, ``"sm_87"``, ``8.7``, ``(8, 7)`` to ``"8.7"``; None if unreadable."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{int(value[0])}.{int(value[1])}"
    text = str(value).strip().lower()
    m = re.fullmatch(r"(?:sm_?|compute_)?(\d+)\.(\d+)", text) or re.fullmatch(
        r"(?:sm_?|compute_)(\d)(\d+)", text
    )
    return f"{int(m.group(1))}.{int(m.group(2))}" if m else None


def _trt_release(value: Any) -> tuple[int, ...] | None:
    """``"10.3.0.26"`` -> ``(10, 3, 0)``: engines are tied to a major.minor.patch release."""
    m = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", str(value))
    return tuple(int(g or 0) for g in m.groups()) if m else None


def compare_fingerprints(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """What differs between the device an engine was built for and this one (empty list: compatible).

    GPU names must match exactly (ignoring surrounding spaces), compute capabilities as major.minor and
    TensorRT versions as major.minor.patch (build numbers and ``.postN`` suffixes are ignored).
    """
    problems = []
    labels = {"gpu_name": "GPU", "compute_capability": "compute capability", "tensorrt_version": "TensorRT"}
    for key in FINGERPRINT_KEYS:
        want, have = expected.get(key), actual.get(key)
        if want in (None, ""):
            problems.append(f"the engine fingerprint has no {key}")
            continue
        if key == "gpu_name":
            same = str(want).strip() == str(have).strip()
        elif key == "compute_capability":
            same = _compute_capability(want) is not None and _compute_capability(want) == _compute_capability(
                have
            )
        else:
            same = _trt_release(want) is not None and _trt_release(want) == _trt_release(have)
        if not same:
            problems.append(f"{labels[key]} {want} (this device: {have})")
    return problems


def read_engine_fingerprint(engine_path: str | Path) -> dict[str, Any]:
    """Load the fingerprint sidecar of an engine; ModelError if it is missing or malformed."""
    fp = fingerprint_path(engine_path)
    if not fp.is_file():
        raise ModelError(
            f"{engine_path} has no fingerprint {fp.name} beside it, so the GPU and TensorRT it was built for "
            f"are unknown; rebuild it with edge-lora export, or pass check_fingerprint=False to run it anyway"
        )
    try:
        data = json.loads(fp.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{fp} is not valid JSON: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("fingerprint"), dict):
        data = data["fingerprint"]
    if not isinstance(data, dict):
        raise ModelError(f"{fp} must hold a JSON object with {list(FINGERPRINT_KEYS)}")
    return data


def check_engine_fingerprint(
    engine_path: str | Path, current: Mapping[str, Any] | None = None, device: int = 0
) -> dict[str, Any]:
    """Refuse an engine built for another GPU or TensorRT release.

    Args:
        engine_path: the engine; its fingerprint is ``<engine_path>.json``.
        current: this device's fingerprint; None reads it with :func:`current_device_fingerprint`.
        device: CUDA device index used when ``current`` is None.

    Returns:
        The engine's fingerprint.

    Raises:
        ModelError: no or malformed sidecar, or a mismatch (the message lists every difference).
        ToolError: ``current`` is None and TensorRT/CUDA is unavailable.
    """
    expected = read_engine_fingerprint(engine_path)
    current = current_device_fingerprint(device) if current is None else current
    problems = compare_fingerprints(expected, current)
    if problems:
        raise ModelError(
            f"{engine_path} was built for another device: {'; '.join(problems)}. "
            f"TensorRT engines do not move between GPUs or TensorRT releases: rebuild it on this device"
        )
    return expected


# ------------------------------------------------------------------------------------------------ CUDA
class _CudaPython:
    """CUDA runtime calls through cuda-python (``cuda.bindings.runtime``, or the older ``cuda.cudart``)."""

    def __init__(self, device: int):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6; ImportError propagates to _open_cuda
        self.rt = cudart
        self._call("cudaSetDevice", device)

    def _call(self, fn: str, *args):
        result = getattr(self.rt, fn)(*args)
        err, rest = result[0], result[1:]
        if err != self.rt.cudaError_t.cudaSuccess:
            msg = self.rt.cudaGetErrorString(err)[1]
            msg = msg.decode(errors="replace") if isinstance(msg, bytes) else str(msg)
            raise ToolError(f"CUDA {fn} failed: {msg}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def properties(self, device: int) -> tuple[str, int, int]:
        prop = self._call("cudaGetDeviceProperties", device)
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return name.split("\x00", 1)[0].strip(), int(prop.major), int(prop.minor)

    def stream_create(self):
        stream = self._call("cudaStreamCreateWithFlags", self.rt.cudaStreamNonBlocking)
        return stream, int(stream)

    def stream_sync(self, stream) -> None:
        self._call("cudaStreamSynchronize", stream)

    def stream_destroy(self, stream) -> None:
        self._call("cudaStreamDestroy", stream)

    def malloc(self, nbytes: int) -> tuple[Any, int]:
        ptr = int(self._call("cudaMalloc", nbytes))
        return ptr, ptr

    def free(self, handle) -> None:
        self._call("cudaFree", handle)

    def host_alloc(self, nbytes: int) -> tuple[Any, np.ndarray]:
        """Pinned host memory as a uint8 array of ``nbytes`` (the array does not own it)."""
        ptr = int(self._call("cudaMallocHost", nbytes))
        return ptr, np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))

    def host_free(self, handle) -> None:
        self._call("cudaFreeHost", handle)

    def h2d(self, dst: int, src: np.ndarray, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpyAsync", dst, src.ctypes.data, src.nbytes, kind, stream)

    def d2h(self, dst: np.ndarray, src: int, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpyAsync", dst.ctypes.data, src, dst.nbytes, kind, stream)

    def close(self) -> None:
        pass

    @contextlib.contextmanager
    def bind_thread(self, device: int) -> Iterator[None]:
        """The runtime API's current device is per thread: set it in a thread that did not activate."""
        self._call("cudaSetDevice", device)
        yield


class _PyCuda:
    """The same calls through PyCUDA, on the device's primary context."""

    def __init__(self, device: int):
        import pycuda.driver as cuda

        self.cuda = cuda
        try:
            cuda.init()
            self.dev = cuda.Device(device)
            self.ctx = self.dev.retain_primary_context()
            self.ctx.push()
        except cuda.Error as exc:
            raise ToolError(f"CUDA device {device} is not usable: {exc}") from exc

    def properties(self, device: int) -> tuple[str, int, int]:
        major, minor = self.dev.compute_capability()
        return self.dev.name().strip(), int(major), int(minor)

    def stream_create(self):
        stream = self.cuda.Stream()
        return stream, stream.handle

    def stream_sync(self, stream) -> None:
        stream.synchronize()

    def stream_destroy(self, stream) -> None:
        pass  # freed with the object

    def malloc(self, nbytes: int) -> tuple[Any, int]:
        alloc = self.cuda.mem_alloc(nbytes)
        return alloc, int(alloc)

    def free(self, handle) -> None:
        handle.free()

    def host_alloc(self, nbytes: int) -> tuple[Any, np.ndarray]:
        arr = self.cuda.pagelocked_empty(nbytes, np.uint8)
        return arr, arr

    def host_free(self, handle) -> None:
        handle.base.free()

    def h2d(self, dst: int, src: np.ndarray, stream) -> None:
        self.cuda.memcpy_htod_async(dst, src, stream)

    def d2h(self, dst: np.ndarray, src: int, stream) -> None:
        self.cuda.memcpy_dtoh_async(dst, src, stream)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ctx.pop()

    @contextlib.contextmanager
    def bind_thread(self, device: int) -> Iterator[None]:
        """A driver-API context is current in one thread only: push it in another for the time it infers."""
        self.ctx.push()
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                self.ctx.pop()


def _open_cuda(device: int):
    """cuda-python if present, else PyCUDA; ToolError when neither is installed."""
    try:
        return _CudaPython(device)
    except ImportError:
        pass
    try:
        return _PyCuda(device)
    except ImportError:
        raise ToolError(_NO_CUDA) from None


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ToolError(_NO_TENSORRT) from exc
    return trt


def current_device_fingerprint(device: int = 0) -> dict[str, str]:
    """This machine's fingerprint for CUDA device ``device``: the dict the exporter writes to
    ``<engine>.json`` and the runner compares with (``gpu_name``, ``compute_capability`` as ``"8.7"``,
    ``tensorrt_version``).

    Raises:
        ToolError: TensorRT or a CUDA binding is not installed, or the device is not usable.
    """
    trt = _import_tensorrt()
    cuda = _open_cuda(device)
    try:
        name, major, minor = cuda.properties(device)
    finally:
        cuda.close()
    return {
        "gpu_name": name,
        "compute_capability": f"{major}.{minor}",
        "tensorrt_version": str(trt.__version__),
    }


# ---------------------------------------------------------------------------------------------- runner
class TensorRtRunner(Runner):
    """Run a serialized TensorRT engine (``.engine``/``.plan``) with ``execute_async_v3``.

    Device and pinned host buffers are allocated once in ``activate()`` (at the optimization profile's
    maximum for dynamic inputs), so ``infer()`` only copies: host -> device, execute, device -> host on one
    CUDA stream.

    Args:
        path: the engine file (an Ultralytics metadata header is read and skipped).
        device: CUDA device index.
        check_fingerprint: compare ``<engine>.json`` with this device first and refuse a mismatch.
        name: runner name for messages.
    """

    prefix = "tensorrt"

    def __init__(
        self, path: str | Path, device: int = 0, check_fingerprint: bool = True, name: str | None = None
    ):
        super().__init__(require_file(path, "TensorRT engine"), name)
        self.device = int(device)
        self.check_fingerprint = bool(check_fingerprint)
        self._offset, header = read_engine_header(self.path)
        if self._offset >= self.path.stat().st_size:
            raise ModelError(f"{self.path} holds a metadata header but no engine (truncated?)")
        self.metadata = normalize_metadata(header)
        self.fingerprint: dict[str, Any] | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._trt = self._cuda = self._runtime = self._engine = self._context = None
        self._stream = self._stream_handle = None
        self._names_in: list[str] = []
        self._names_out: list[str] = []
        self._meta_in: TensorMetadata = {}
        self._meta_out: TensorMetadata = {}
        self._dev: dict[str, int] = {}
        self._host: dict[str, np.ndarray] = {}
        self._allocs: list[tuple[str, Any]] = []
        self._cur_in: dict[str, tuple[int, ...]] = {}
        self._cur_out: dict[str, tuple[int, ...]] = {}

    def activate_impl(self) -> None:
        trt = self._trt = _import_tensorrt()
        if not hasattr(trt.ICudaEngine, "num_io_tensors"):  # name-based I/O: TensorRT 8.5+, the API of 10
            raise ToolError(f"TensorRT {trt.__version__} is too old: the runner needs TensorRT >= 10")
        cuda = self._cuda = _open_cuda(self.device)
        if self.check_fingerprint:
            name, major, minor = cuda.properties(self.device)
            here = {
                "gpu_name": name,
                "compute_capability": f"{major}.{minor}",
                "tensorrt_version": trt.__version__,
            }
            self.fingerprint = check_engine_fingerprint(self.path, here)

        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        dla = self.metadata.get("dla")
        if dla is not None:
            self._runtime.DLA_core = int(dla)
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            blob = f.read()
        self._engine = self._runtime.deserialize_cuda_engine(blob)
        del blob
        if self._engine is None:
            raise ModelError(
                f"{self.path}: TensorRT {trt.__version__} cannot deserialize this engine "
                f"(truncated or corrupt, or built with another TensorRT release or GPU)"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise ToolError(
                f"{self.name}: TensorRT could not create an execution context (out of GPU memory?)"
            )
        self._stream, self._stream_handle = cuda.stream_create()

        engine, context = self._engine, self._context
        for i in range(engine.num_io_tensors):
            tname = engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(tname)))
            shape = tuple(int(d) for d in engine.get_tensor_shape(tname))
            dims = tuple(None if d < 0 else d for d in shape)
            if engine.get_tensor_mode(tname) == trt.TensorIOMode.INPUT:
                self._names_in.append(tname)
                self._meta_in[tname] = (dtype, dims)
                if None in dims:  # size buffers for the largest shape the profile admits
                    shape = tuple(int(d) for d in engine.get_tensor_profile_shape(tname, 0)[2])
                    if not context.set_input_shape(tname, shape):
                        raise ToolError(f"{self.name}: cannot set '{tname}' to its profile maximum {shape}")
                self._cur_in[tname] = shape
            else:
                self._names_out.append(tname)
                self._meta_out[tname] = (dtype, dims)
        for tname in self._names_out:
            shape = tuple(int(d) for d in context.get_tensor_shape(tname))
            if any(d < 0 for d in shape):
                raise ToolError(
                    f"{self.name}: output '{tname}' has a data-dependent shape {shape}; not supported"
                )
            self._cur_out[tname] = shape
        for tname, shape in [*self._cur_in.items(), *self._cur_out.items()]:
            dtype = (self._meta_in.get(tname) or self._meta_out[tname])[0]
            nbytes = max(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, 1)
            dev_handle, dev_ptr = cuda.malloc(nbytes)
            self._allocs.append(("dev", dev_handle))
            host_handle, host = cuda.host_alloc(nbytes)
            self._allocs.append(("host", host_handle))
            self._dev[tname], self._host[tname] = dev_ptr, host
            if not context.set_tensor_address(tname, dev_ptr):
                raise ToolError(f"{self.name}: TensorRT refused the buffer address of '{tname}'")

    def deactivate_impl(self) -> None:
        cuda = self._cuda
        if cuda is not None:
            if self._stream is not None:
                with contextlib.suppress(Exception):
                    cuda.stream_sync(self._stream)
            self._context = None  # the context goes before the memory it points at and before the engine
            for kind, handle in reversed(self._allocs):
                with contextlib.suppress(Exception):
                    if kind == "dev":
                        cuda.free(handle)
                    else:
                        cuda.host_free(handle)
            if self._stream is not None:
                with contextlib.suppress(Exception):
                    cuda.stream_destroy(self._stream)
            self._engine = None
            self._runtime = None
            cuda.close()
        self._reset_state()

    def input_metadata_impl(self) -> TensorMetadata:
        return dict(self._meta_in)

    def output_metadata_impl(self) -> TensorMetadata:
        return dict(self._meta_out)

    def _set_input_shape(self, tname: str, shape: tuple[int, ...]) -> None:
        if not self._context.set_input_shape(tname, shape):
            raise InputError(
                f"{self.name}: input '{tname}' shape {shape} is outside the engine's optimization profile"
            )
        self._cur_in[tname] = shape
        for out in self._names_out:
            self._cur_out[out] = tuple(int(d) for d in self._context.get_tensor_shape(out))

    def thread_context(self) -> contextlib.AbstractContextManager[None]:
        cuda = self._cuda
        return cuda.bind_thread(self.device) if cuda is not None else contextlib.nullcontext()

    def infer_impl(self, feed: Mapping[str, np.ndarray], copy_outputs: bool) -> dict[str, np.ndarray]:
        cuda, stream = self._cuda, self._stream
        for tname in self._names_in:
            arr = feed[tname]
            if arr.shape != self._cur_in[tname]:
                self._set_input_shape(tname, tuple(arr.shape))
            staged = self._host[tname][: arr.nbytes]
            np.copyto(staged.view(arr.dtype).reshape(arr.shape), arr)
            cuda.h2d(self._dev[tname], staged, stream)
        if not self._context.execute_async_v3(self._stream_handle):
            raise ToolError(f"{self.name}: TensorRT execute_async_v3 failed")
        views = {}
        for tname in self._names_out:
            dtype, shape = self._meta_out[tname][0], self._cur_out[tname]
            host = self._host[tname][: int(np.prod(shape, dtype=np.int64)) * dtype.itemsize]
            cuda.d2h(host, self._dev[tname], stream)
            views[tname] = host.view(dtype).reshape(shape)
        cuda.stream_sync(stream)
        if copy_outputs:
            return {k: v.copy() for k, v in views.items()}
        return views
