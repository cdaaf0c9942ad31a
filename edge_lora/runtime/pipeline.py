"""The pipelined path of ``edge-lora run``: decode + letterbox, inference and decoding overlap, in order.

Three stages, each in one thread, joined by bounded FIFO queues, so the output order is the source's order:

1. the *prepare* thread takes frames from the source (image decoding happens there, in the source's
   iterator), letterboxes them and groups consecutive readable frames into one batch of the model's fixed
   batch size (a final partial batch is padded; the padding's outputs are dropped by the caller);
2. the *infer* thread runs the backend on each batch (ONNX Runtime, OpenVINO and TensorRT release the GIL
   while they run, so a plain thread overlaps them with the other stages);
3. the caller's thread (:meth:`FramePipeline.__iter__`) decodes the outputs and writes the records.

A stop (``should_stop()``, Ctrl-C/SIGTERM) ends the taking of frames; the frames already taken are still
inferred and handed out (a watched folder's file, once taken, is never offered again, so it must not be
lost). An exception in either thread is handed out in order, after the frames before it, and re-raised by
the caller's iteration, so a failing backend is one error, never a hang. Numpy only (torch-free).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Chunk", "FramePipeline"]

#: Seconds a blocked put/get waits before it looks at the halt flag again.
_POLL_S = 0.05


@dataclass
class Chunk:
    """Consecutive frames of the source and, for the readable ones, their batch's inference.

    Attributes:
        entries: ``(frame id, BGR image or None when unreadable, row in the batch or None)`` in source order.
        infos: one letterbox info per batch row (padding rows included), None when no frame was readable.
        outputs: the backend's outputs for the batch, None when no frame was readable.
        rows: readable frames in the batch (the rows after them are padding).
        pre_s: seconds letterboxing the batch took. infer_s: seconds the backend took.
    """

    entries: list[tuple[str, np.ndarray | None, int | None]] = field(default_factory=list)
    batch: np.ndarray | None = None
    infos: list[Any] | None = None
    outputs: dict[str, np.ndarray] | None = None
    rows: int = 0
    pre_s: float = 0.0
    infer_s: float = 0.0


class _End:
    """The last item of a stage's queue (the source is exhausted or the run stopped)."""


@dataclass
class _Failed:
    error: BaseException


class FramePipeline:
    """Prepare and infer ``frames`` in two threads; iterate to get :class:`Chunk` objects in source order.

    Args:
        frames: ``(frame id, BGR image or None)`` pairs (see :func:`edge_lora.runtime.frames.iter_frames`).
        prepare: letterboxes a list of images into ``(batch, infos)`` padded to ``batch_size`` rows.
        infer: runs the backend on a batch and returns its outputs.
        batch_size: readable frames per batch (the model's fixed batch; 1 for a dynamic or batch-1 model).
        max_frames: take at most this many frames (readable or not) from the source.
        should_stop: polled before each frame is taken; when True no more are taken.
        depth: batches waiting between two stages (1: one batch prepared while one is inferred).
        infer_context: entered by the infer thread around all its calls (the runner's
            :meth:`~edge_lora.runtime.base.Runner.thread_context`: TensorRT's CUDA context is per thread).

    Use it as a context manager (or call :meth:`close`): leaving stops both threads and waits for them.
    """

    def __init__(
        self,
        frames: Iterable[tuple[str, np.ndarray | None]],
        *,
        prepare: Callable[[list[np.ndarray]], tuple[np.ndarray, list[Any]]],
        infer: Callable[[np.ndarray], dict[str, np.ndarray]],
        batch_size: int = 1,
        max_frames: int | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        depth: int = 1,
        infer_context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        if batch_size < 1 or depth < 1:
            raise ValueError(f"batch_size and depth must be >= 1, got {batch_size}, {depth}")
        self._frames = iter(frames)
        self._prepare = prepare
        self._infer = infer
        self._infer_context = infer_context
        self.batch_size = int(batch_size)
        self._max_frames = max_frames
        self._should_stop = should_stop
        self._halt = threading.Event()  # the consumer is gone: both threads end at once
        self._prepared: queue.Queue = queue.Queue(maxsize=depth)
        self._inferred: queue.Queue = queue.Queue(maxsize=depth)
        self._threads = [
            threading.Thread(target=self._prepare_loop, name="run:prepare", daemon=True),
            threading.Thread(target=self._infer_loop, name="run:infer", daemon=True),
        ]
        self._started = False

    # ------------------------------------------------------------------------------------------ consumer
    def __enter__(self) -> FramePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Chunk]:
        if not self._started:
            self._started = True
            for t in self._threads:
                t.start()
        while True:
            item = self._get(self._inferred, self._threads[1])
            if isinstance(item, _End):
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def close(self) -> None:
        """Stop both threads and wait for them (the infer thread finishes the batch it is running)."""
        self._halt.set()
        for t in self._threads:
            if t.is_alive() and t is not threading.current_thread():
                t.join()

    # ------------------------------------------------------------------------------------------- helpers
    def _get(self, q: queue.Queue, producer: threading.Thread) -> Any:
        while True:
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                if self._halt.is_set():
                    return _End()
                if not producer.is_alive() and q.empty():  # it died without a word: say so, do not hang
                    return _Failed(RuntimeError(f"the {producer.name} thread ended without a result"))

    def _put(self, q: queue.Queue, item: Any) -> bool:
        while not self._halt.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    # ------------------------------------------------------------------------------------------- threads
    def _prepare_loop(self) -> None:
        taken = 0
        try:
            chunk = Chunk()
            images: list[np.ndarray] = []
            while not self._halt.is_set():
                if self._should_stop() or (self._max_frames is not None and taken >= self._max_frames):
                    break
                try:
                    frame_id, image = next(self._frames)
                except StopIteration:
                    break
                taken += 1
                row = None if image is None else len(images)
                if image is not None:
                    images.append(image)
                chunk.entries.append((frame_id, image, row))
                if len(images) == self.batch_size:
                    if not self._put(self._prepared, self._finish(chunk, images)):
                        return
                    chunk, images = Chunk(), []
            if chunk.entries and not self._put(self._prepared, self._finish(chunk, images)):
                return
            self._put(self._prepared, _End())
        except BaseException as e:  # a source or letterbox failure: hand it on in order
            self._put(self._prepared, _Failed(e))

    def _finish(self, chunk: Chunk, images: list[np.ndarray]) -> Chunk:
        if images:
            t0 = time.perf_counter()
            chunk.batch, chunk.infos = self._prepare(images)
            chunk.pre_s = time.perf_counter() - t0
            chunk.rows = len(images)
        return chunk

    def _infer_loop(self) -> None:
        try:
            with self._infer_context():
                self._infer_batches()
        except BaseException as e:  # a backend failure: the caller raises it after the frames before it
            # The prepare thread may go on filling its queue until the caller's close() halts it.
            self._put(self._inferred, _Failed(e))

    def _infer_batches(self) -> None:
        while True:
            item = self._get(self._prepared, self._threads[0])
            if isinstance(item, (_End, _Failed)):
                self._put(self._inferred, item)
                return
            if item.batch is not None:
                t0 = time.perf_counter()
                item.outputs = self._infer(item.batch)
                item.infer_s = time.perf_counter() - t0
                item.batch = None  # the caller needs the outputs, not the input tensor
            if not self._put(self._inferred, item):
                return
