"""Live frame sources: network streams (RTSP, HTTP MJPEG), GStreamer pipelines and cameras.

A live source produces frames at its own rate whether or not inference keeps up, and it may drop. So:

* a reader thread reads the capture continuously into a bounded queue; when the queue is full the **oldest**
  frame is dropped (and counted), so the line always works on the newest frames instead of a growing
  backlog (and OpenCV's own buffer never fills with stale frames);
* a failed read or open is an outage: the capture is reopened at once, then with back-off (0.5 s doubling
  to 8 s by default); the source gives up with :class:`~edge_lora.errors.SourceLostError` once it has
  failed to reconnect for ``reconnect_timeout_s`` seconds. The frames already queued are handed out first.

OpenCV and the standard library only (device side, torch-free). :func:`edge_lora.runtime.frames.iter_frames`
decides which sources are live; files, folders, globs and video files never go through here (every frame of
those is processed).
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from edge_lora.errors import InputError, SourceLostError

__all__ = [
    "STREAM_SCHEMES",
    "Capture",
    "LiveSource",
    "StreamStats",
    "gstreamer_available",
    "is_gstreamer_pipeline",
    "is_stream_url",
    "open_capture",
    "redact",
]

#: URL schemes read through OpenCV's FFmpeg backend.
STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")
#: FFmpeg's open and read timeouts: a stream that stalls without closing its socket is an outage after this.
OPEN_TIMEOUT_MS = 10_000
READ_TIMEOUT_MS = 5_000


class Capture(Protocol):
    """What the reader needs of a ``cv2.VideoCapture`` (tests pass fakes)."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def is_stream_url(source: object) -> bool:
    """True for an ``rtsp://``, ``rtsps://``, ``http://`` or ``https://`` URL."""
    return (
        isinstance(source, str) and re.match(rf"^({'|'.join(STREAM_SCHEMES)})://", source, re.I) is not None
    )


def is_gstreamer_pipeline(source: object) -> bool:
    """True for a GStreamer pipeline string (elements joined by ``!``), e.g. ``"videotestsrc ! appsink"``."""
    return isinstance(source, str) and "!" in source and not is_stream_url(source)


def gstreamer_available() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines."""
    try:
        return bool(cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER))
    except (AttributeError, cv2.error):
        return False


def redact(url: str) -> str:
    """``url`` without its user name, password and query (they may hold credentials): safe to log and store."""
    if not is_stream_url(url):
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def open_capture(source: str | int) -> cv2.VideoCapture:
    """A ``cv2.VideoCapture`` of a stream URL (FFmpeg backend, with open/read timeouts), a GStreamer pipeline
    or a camera index. The caller checks ``isOpened()``."""
    if isinstance(source, int):
        return cv2.VideoCapture(source)
    if is_stream_url(source):
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            OPEN_TIMEOUT_MS,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            READ_TIMEOUT_MS,
        ]
        return cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)
    return cv2.VideoCapture(source, cv2.CAP_GSTREAMER)


def check_gstreamer(pipeline: str) -> None:
    """Refuse a pipeline this OpenCV cannot run, before anything is opened.

    Raises:
        InputError: OpenCV was built without GStreamer, or the pipeline does not end in an ``appsink``.
    """
    if not gstreamer_available():
        raise InputError(
            "--source looks like a GStreamer pipeline (it contains '!'), but this OpenCV build lacks GStreamer "
            "(cv2.getBuildInformation() shows 'GStreamer: NO'); use an OpenCV built with it (on a Jetson: "
            "JetPack's python3-opencv instead of the PyPI wheel)"
        )
    if not re.search(r"\bappsink\b[^!]*$", pipeline.strip()):
        raise InputError(f"a GStreamer pipeline for OpenCV must end in 'appsink', got {pipeline!r}")


@dataclass
class StreamStats:
    """Counters of a live source, updated by its reader thread (read them at any time).

    Attributes:
        read: frames read from the capture. dropped: frames dropped from the queue (oldest first) because
            inference fell behind. outages: times the stream was lost after it had delivered frames.
        reconnects: outages that ended with the stream back. outage_s: seconds spent without a stream.
    """

    read: int = 0
    dropped: int = 0
    outages: int = 0
    reconnects: int = 0
    outage_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "dropped": self.dropped,
            "outages": self.outages,
            "reconnects": self.reconnects,
            "outage_s": round(self.outage_s, 3),
        }


class LiveSource:
    """An iterator of ``(frame id, BGR image)`` from a live source, read by a thread into a bounded queue.

    Frame ids are ``"{label}#{n}"`` with ``n`` counting every frame read (dropped ones too, so a gap in the
    ids shows a drop). The reader starts with :meth:`start` or the first ``next()``; :meth:`close` stops
    it.

    Args:
        target: URL, GStreamer pipeline or camera index, as given to ``open``.
        label: frame id prefix and the name in messages (credentials already removed).
        queue_size: frames kept for inference; when full, the oldest is dropped.
        reconnect_timeout_s: give up after failing to (re)open the source for this long.
        backoff_s: (first, largest) wait between reconnect attempts; it doubles in between.
        should_stop: polled while waiting for a frame; when True the iterator ends.
        open: makes a capture of ``target``; returns None or an object whose ``isOpened()`` is False when the
            source cannot be opened.
        log: where outage messages go (stderr by default).

    Raises (from ``next()``):
        SourceLostError: the source could not be reopened within ``reconnect_timeout_s``.
    """

    def __init__(
        self,
        target: str | int,
        *,
        label: str,
        queue_size: int = 2,
        reconnect_timeout_s: float = 30.0,
        backoff_s: tuple[float, float] = (0.5, 8.0),
        should_stop: Callable[[], bool] = lambda: False,
        open: Callable[[str | int], Any] = open_capture,  # noqa: A002 - mirrors the capture's own verb
        log: Callable[[str], None] = _stderr,
    ) -> None:
        if queue_size < 1:
            raise InputError(f"queue size must be >= 1, got {queue_size}")
        if reconnect_timeout_s < 0:
            raise InputError(f"reconnect timeout must be >= 0 s, got {reconnect_timeout_s}")
        if not 0 < backoff_s[0] <= backoff_s[1]:
            raise InputError(f"back-off must be 0 < first <= largest, got {backoff_s}")
        self.target = target
        self.label = label
        self.queue_size = int(queue_size)
        self.reconnect_timeout_s = float(reconnect_timeout_s)
        self.backoff_s = (float(backoff_s[0]), float(backoff_s[1]))
        self.stats = StreamStats()
        self._should_stop = should_stop
        self._open = open
        self._log = log
        self._queue: deque[tuple[str, np.ndarray]] = deque()
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._error: SourceLostError | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ consumer
    def __iter__(self) -> LiveSource:
        return self

    def start(self) -> None:
        """Start the reader thread (the first ``next()`` does). Idempotent."""
        if self._thread is None and not self._closed.is_set():
            self._thread = threading.Thread(target=self._read_loop, name=f"live:{self.label}", daemon=True)
            self._thread.start()

    def __next__(self) -> tuple[str, np.ndarray]:
        self.start()
        with self._cond:
            while True:
                if self._queue:
                    return self._queue.popleft()
                if self._error is not None:
                    raise self._error
                if self._closed.is_set() or self._should_stop():
                    raise StopIteration
                # A timeout, so that should_stop (Ctrl-C, SIGTERM) is seen while the stream is down.
                self._cond.wait(timeout=0.05)

    def close(self) -> None:
        """Stop the reader and release the capture. Idempotent; frames still queued are discarded."""
        self._closed.set()
        with self._cond:
            self._queue.clear()
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # A read blocked in FFmpeg returns within its read timeout; the thread releases the capture.
            thread.join(timeout=READ_TIMEOUT_MS / 1e3 + 1)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (a capture may poll it to end a blocking read)."""
        return self._closed.is_set()

    def __enter__(self) -> LiveSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------------------------------------- reader
    def _push(self, frame_id: str, image: np.ndarray) -> None:
        with self._cond:
            if len(self._queue) >= self.queue_size:
                self._queue.popleft()  # the line wants the newest frame: drop the oldest
                self.stats.dropped += 1
            self._queue.append((frame_id, image))
            self.stats.read += 1
            self._cond.notify()

    def _try_open(self) -> Capture | None:
        try:
            cap = self._open(self.target)
        except cv2.error as e:
            self._log(f"{self.label}: cannot open: {e}")
            return None
        if cap is None:
            return None
        is_opened = getattr(cap, "isOpened", None)
        if is_opened is not None and not is_opened():
            cap.release()
            return None
        return cap

    def _give_up(self, ever_opened: bool, down_s: float) -> None:
        timeout = f"{self.reconnect_timeout_s:g} s"
        if ever_opened:
            msg = (
                f"live source {self.label} lost and not back after {down_s:.1f} s (reconnect timeout {timeout}); "
                f"{self.stats.outages} outage(s), {self.stats.read} frames read, {self.stats.dropped} dropped"
            )
        else:
            msg = (
                f"cannot open live source {self.label} (tried for {down_s:.1f} s, reconnect timeout {timeout}); "
                "check the URL or pipeline and that the camera is on and reachable"
            )
        with self._cond:
            self._error = SourceLostError(msg)
            self._cond.notify_all()

    def _read_loop(self) -> None:
        cap: Capture | None = None
        n = 0
        ever_opened = False
        down_since: float | None = time.monotonic()  # not open yet counts as down, but not as an outage
        delay = self.backoff_s[0]
        try:
            while not self._closed.is_set():
                if cap is None:
                    cap = self._try_open()
                    now = time.monotonic()
                    if cap is None:
                        assert down_since is not None
                        down = now - down_since
                        if down >= self.reconnect_timeout_s:
                            self._give_up(ever_opened, down)
                            return
                        self._closed.wait(min(delay, self.reconnect_timeout_s - down))
                        delay = min(delay * 2, self.backoff_s[1])
                        continue
                    if ever_opened and down_since is not None:
                        down = now - down_since
                        self.stats.reconnects += 1
                        self.stats.outage_s += down
                        self._log(f"{self.label}: stream back after {down:.1f} s")
                    ever_opened, down_since, delay = True, None, self.backoff_s[0]
                ok, image = cap.read()
                if self._closed.is_set():
                    return
                if not ok or image is None:
                    cap.release()
                    cap = None
                    down_since = time.monotonic()
                    self.stats.outages += 1
                    self._log(
                        f"{self.label}: stream lost (outage {self.stats.outages}); reconnecting for up to "
                        f"{self.reconnect_timeout_s:g} s"
                    )
                    continue  # the first reopen is at once: a restarted server is often back already
                self._push(f"{self.label}#{n}", image)
                n += 1
        except Exception as e:  # a bug or a backend crash: end the consumer with a message, not a hang
            with self._cond:
                self._error = SourceLostError(f"live source {self.label} failed: {type(e).__name__}: {e}")
                self._cond.notify_all()
        finally:
            if down_since is not None and ever_opened:
                self.stats.outage_s += time.monotonic() - down_since
            if cap is not None:
                cap.release()
