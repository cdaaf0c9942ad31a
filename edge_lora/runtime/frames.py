"""Frame sources of the line runtime: a folder, a glob, an image, a video, a watched folder, or a live source
(a camera, an RTSP/HTTP stream, a GStreamer pipeline).

Each yields ``(frame id, BGR image or None when unreadable)``, so the runtime (:mod:`edge_lora.runtime.line`)
counts an unreadable frame and goes on instead of crashing. Files, folders, globs and video files are read in
order and every frame is processed; live sources are read by a thread into a bounded queue that drops the
oldest frame when inference falls behind, and reconnect after an outage (:mod:`edge_lora.runtime.live`).
OpenCV and numpy only (torch-free).
"""

from __future__ import annotations

import glob
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from edge_lora.errors import InputError
from edge_lora.runtime.live import (
    LiveSource,
    StreamStats,
    check_gstreamer,
    is_gstreamer_pipeline,
    is_stream_url,
    redact,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "Frame",
    "LiveSource",
    "StreamStats",
    "describe_source",
    "is_live",
    "iter_frames",
    "read_image",
    "watch_frames",
]

# What Ultralytics accepts as images and videos (data/utils.py IMG_FORMATS / VID_FORMATS).
IMAGE_SUFFIXES = (".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic")
VIDEO_SUFFIXES = (
    ".asf",
    ".avi",
    ".gif",
    ".m4v",
    ".mkv",
    ".mov",
    ".mp4",
    ".mpeg",
    ".mpg",
    ".ts",
    ".wmv",
    ".webm",
)
_GLOB_CHARS = ("*", "?", "[")

Frame = tuple[str, "np.ndarray | None"]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def read_image(path: str | Path) -> np.ndarray | None:
    """A BGR uint8 image, or None when the file is empty, unreadable or not an image OpenCV can decode."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
        if data.size == 0:
            return None
        img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except (OSError, ValueError, cv2.error):
        return None
    return img if img is not None and img.size else None


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _list_images(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if _is_image(Path(e.name)) and e.is_file())


def _video(path: str, label: str) -> Iterator[Frame]:
    """Every frame of a video file, in order (a recording: nothing is dropped)."""
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise InputError(f"cannot open video {path!r}")
        n = 0
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                return  # end of the video
            yield f"{label}#{n}", frame
            n += 1
    finally:
        cap.release()


def _files(paths: list[tuple[str, Path]]) -> Iterator[Frame]:
    for frame_id, path in paths:
        yield frame_id, read_image(path)


def _camera_index(source: str | int | Path) -> int | None:
    if isinstance(source, int):
        return source
    if isinstance(source, str) and source.isdigit() and not Path(source).exists():
        return int(source)
    return None


def is_live(source: str | int | Path) -> bool:
    """Whether ``source`` is read as a live source (camera index, stream URL, GStreamer pipeline)."""
    if _camera_index(source) is not None or is_stream_url(source):
        return True
    return is_gstreamer_pipeline(source) and not Path(str(source)).exists()


def describe_source(source: str | int | Path) -> str:
    """``source`` as it may be logged and stored: a URL without its credentials, a pipeline as "gstreamer"."""
    text = str(source)
    if is_stream_url(text):
        return redact(text)
    if isinstance(source, str) and is_live(source) and _camera_index(source) is None:
        return "gstreamer: " + re.sub(r"(\w+://)[^/@\s]+@", r"\1", text)  # an rtspsrc location's login
    return text


def iter_frames(
    source: str | int | Path,
    *,
    queue_size: int = 2,
    reconnect_timeout_s: float = 30.0,
    should_stop: Callable[[], bool] = lambda: False,
    log: Callable[[str], None] = _stderr,
) -> Iterator[Frame]:
    """Frames of ``source`` as ``(frame id, BGR image or None when unreadable)``.

    ``source`` is a folder (its images, sorted by name; ids are the file names), a glob such as
    ``"line/**/*.png"`` (sorted matches; ids are the paths), an image or video file (video ids are
    ``"name#frame"``); these are read in order and every frame is processed. A live source is a camera index
    (an int, or a string of digits that is not an existing path; ids ``"camera0#n"``), an ``rtsp://``,
    ``rtsps://``, ``http://`` or ``https://`` URL (MJPEG or anything FFmpeg reads; ids ``"URL#n"`` without
    credentials), or a GStreamer pipeline ending in ``appsink`` (a string with ``!``; ids ``"gstreamer#n"``).
    A live source is a :class:`LiveSource`: a reader thread keeps the newest ``queue_size`` frames (dropping
    the oldest), reconnects after an outage and gives up after ``reconnect_timeout_s`` seconds without the
    stream (:class:`~edge_lora.errors.SourceLostError`); ``should_stop`` ends it while it waits for a frame.
    The source is checked here, before the first frame is read.

    Raises:
        InputError: the source does not exist, holds no images, is not an image or video, or is a GStreamer
            pipeline this OpenCV build cannot run.
    """
    index = _camera_index(source)
    if index is not None or (isinstance(source, str) and is_live(source)):
        if index is None and not is_stream_url(source):
            check_gstreamer(str(source))
        target: str | int = index if index is not None else str(source)
        if index is not None:
            label = f"camera{index}"
        elif is_stream_url(source):
            label = redact(str(source))
        else:
            label = "gstreamer"
        return LiveSource(
            target,
            label=label,
            queue_size=queue_size,
            reconnect_timeout_s=reconnect_timeout_s,
            should_stop=should_stop,
            log=log,
        )
    p = Path(source)
    text = str(source)
    if p.is_dir():
        names = _list_images(p)
        if not names:
            raise InputError(f"source {p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return _files([(name, p / name) for name in names])
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix in VIDEO_SUFFIXES:
            return _video(str(p), p.name)
        if suffix in IMAGE_SUFFIXES:
            return _files([(text, p)])
        raise InputError(f"source {p}: {suffix or 'no suffix'!r} is neither an image nor a video type")
    if any(c in text for c in _GLOB_CHARS):
        matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
        images = [m for m in matches if m.is_file() and _is_image(m)]
        if not images:
            raise InputError(f"source {text!r} matches no images")
        return _files([(str(m), m) for m in images])
    raise InputError(
        f"source {text!r} is not a folder, image, video, glob or camera index, nor a stream URL or GStreamer "
        "pipeline (does it exist?)"
    )


def watch_frames(
    folder: str | Path,
    *,
    poll_s: float = 0.5,
    idle_timeout_s: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    include_existing: bool = False,
    log: Callable[[str], None] = _stderr,
) -> Iterator[Frame]:
    """Images as they arrive in ``folder``, each file once, until ``should_stop()`` or ``idle_timeout_s``
    seconds without a new file.

    A file is taken once its size and mtime are unchanged between two polls, so a camera still writing it is
    not read half-written (writing to a dot-file or another suffix and renaming is better still: hidden and
    non-image files are ignored). Files already there are skipped unless ``include_existing``. Memory is
    bounded by the folder's content: names are forgotten once their file is removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--watch needs a folder, {folder} is not one")
    if poll_s <= 0:
        raise InputError(f"poll interval must be > 0, got {poll_s}")
    return _watch(folder, poll_s, idle_timeout_s, should_stop, include_existing, log)


def _watch(
    folder: Path,
    poll_s: float,
    idle_timeout_s: float | None,
    should_stop: Callable[[], bool],
    include_existing: bool,
    log: Callable[[str], None],
) -> Iterator[Frame]:
    existing = set(_list_images(folder))
    seen: set[str] = set() if include_existing else existing
    if existing and not include_existing:
        log(f"watching {folder}: {len(existing)} images already there are skipped")
    pending: dict[str, tuple[int, int]] = {}
    last_activity = time.monotonic()
    while not should_stop():
        current = _list_images(folder)
        present = set(current)
        seen &= present
        pending = {k: v for k, v in pending.items() if k in present}
        for name in current:
            if name in seen:
                continue
            try:
                st = os.stat(folder / name)
            except FileNotFoundError:
                continue
            sig = (st.st_size, st.st_mtime_ns)
            last_activity = time.monotonic()
            if pending.get(name) != sig:  # new, or still being written: look again next poll
                pending[name] = sig
                continue
            del pending[name]
            seen.add(name)
            yield name, read_image(folder / name)
            if should_stop():
                return
        if idle_timeout_s is not None and time.monotonic() - last_activity > idle_timeout_s:
            log(f"no new images in {folder} for {idle_timeout_s:g} s; stopping")
            return
        deadline = time.monotonic() + poll_s
        while not should_stop() and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))
