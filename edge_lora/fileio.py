"""Hashing and atomic writes: an artifact is either complete or absent, never half-written.

Torch-free on purpose: the device side uses it too.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge_lora.errors import NoSpaceError, OutputExistsError

_CHUNK = 1 << 20
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_no_space(error: BaseException) -> bool:
    """True for an ``OSError`` that means the filesystem is full or over quota."""
    return isinstance(error, OSError) and error.errno in _NO_SPACE


def _free_bytes(path: Path) -> int | None:
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def no_space_error(error: OSError, path: str | Path, needed: int | None = None) -> NoSpaceError:
    """The one-line :class:`NoSpaceError` for ``error``: the path, the space needed if known, the space free."""
    # The OS names the file that failed (a temp file inside ``path``, say); ``path`` is what the user asked for.
    failed = getattr(error, "filename", None)
    path = Path(path)
    if failed and Path(failed) != path and path in Path(failed).parents:
        path = Path(failed)
    free = _free_bytes(path)
    parts = [f"no space left on the device writing {path}"]
    if needed is not None:
        parts.append(f"needs {_mib(needed)}")
    if free is not None:
        parts.append(f"{_mib(free)} free there")
    return NoSpaceError(
        # Said for every writer (train, build, run, calib), so nothing build-specific here; README says
        # that a rerun of build reuses its finished stages.
        "; ".join(parts) + "; nothing half-written was kept: free some space and run the command again"
    )


@contextlib.contextmanager
def writing(path: str | Path, needed: int | None = None) -> Iterator[None]:
    """Turn a full disk inside the block into a :class:`NoSpaceError` naming ``path``; other errors pass."""
    try:
        yield
    except OSError as e:
        if is_no_space(e):
            raise no_space_error(e, path, needed) from e
        raise


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of the canonical (sorted, compact) JSON form of ``obj``."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def dumps_json(obj: Any) -> str:
    """The JSON form edge-lora writes: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and an atomic rename."""
    path = Path(path)
    with writing(path, needed=len(data)):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as edge-lora JSON."""
    return atomic_write_text(path, dumps_json(obj))


def check_output(path: str | Path, overwrite: bool, option: str = "--out") -> Path:
    """Refuse an existing output path unless ``overwrite``; return it as a Path."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{option} {path} already exists; choose another path or pass --overwrite")
    return path


@contextlib.contextmanager
def atomic_output_dir(final: str | Path, overwrite: bool = False, option: str = "--out") -> Iterator[Path]:
    """Yield a temp directory beside ``final``; on success it replaces ``final`` in one rename.

    On any exception the temp directory is removed, so a failed run leaves nothing that looks complete; a
    full disk anywhere inside becomes a :class:`NoSpaceError` naming ``final``.
    """
    final = check_output(final, overwrite, option)
    with writing(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        with writing(final):
            yield tmp
        if final.exists():
            # Move the old one aside first so the swap is quick and never leaves a mix of both.
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
