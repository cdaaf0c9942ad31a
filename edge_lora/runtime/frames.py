"""Frame sources of the line runtime: a folder, a glob, an image, a video, a camera, or a watched folder.

Each yields ``(frame id, BGR image or None when unreadable)``, so the runtime (:mod:`edge_lora.runtime.line`)
counts an unreadable frame and goes on instead of crashing. OpenCV and numpy only (torch-free).
"""

from __future__ import annotations

import glob
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from edge_lora.errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "Frame",
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
# A camera that fails this many reads in a row is considered gone.
_CAMERA_MAX_FAILURES = 30

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


def _capture(target: str | int, label: str, camera: bool) -> Iterator[Frame]:
    cap = cv2.VideoCapture(target)
    try:
        if not cap.isOpened():
            kind = "camera" if camera else "video"
            raise InputError(f"cannot open {kind} {target!r}")
        n, failures = 0, 0
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                if not camera:
                    return  # end of the video
                failures += 1
                if failures >= _CAMERA_MAX_FAILURES:
                    _stderr(f"camera {target}: {failures} failed reads in a row; stopping")
                    return
                yield f"{label}#{n}", None
                n += 1
                continue
            failures = 0
            yield f"{label}#{n}", frame
            n += 1
    finally:
        cap.release()


def _files(paths: list[tuple[str, Path]]) -> Iterator[Frame]:
    for frame_id, path in paths:
        yield frame_id, read_image(path)


def iter_frames(source: str | int | Path) -> Iterator[Frame]:
    """Frames of ``source`` as ``(frame id, BGR image or None when unreadable)``.

    ``source`` is a folder (its images, sorted by name; ids are the file names), a glob such as
    ``"line/**/*.png"`` (sorted matches; ids are the paths), an image or video file (video ids are
    ``"name#frame"``), or a camera index (an int, or a string of digits that is not an existing path).
    The source is checked here, before the first frame is read.

    Raises:
        InputError: the source does not exist, holds no images, or is not an image or video.
    """
    if isinstance(source, int) or (
        isinstance(source, str) and source.isdigit() and not Path(source).exists()
    ):
        index = int(source)
        return _capture(index, f"camera{index}", camera=True)
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
            return _capture(str(p), p.name, camera=False)
        if suffix in IMAGE_SUFFIXES:
            return _files([(text, p)])
        raise InputError(f"source {p}: {suffix or 'no suffix'!r} is neither an image nor a video type")
    if any(c in text for c in _GLOB_CHARS):
        matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
        images = [m for m in matches if m.is_file() and _is_image(m)]
        if not images:
            raise InputError(f"source {text!r} matches no images")
        return _files([(str(m), m) for m in images])
    raise InputError(f"source {text!r} is not a folder, image, video, glob or camera index (does it exist?)")


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
