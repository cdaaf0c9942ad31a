"""Where the line runtime's verdicts go. Torch-free (device side).

A sink takes one record (a frame's verdict) at a time and must never leave half a record behind: a consumer
tailing the file, or a rerun appending to it, reads whole lines only.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any

from edge_lora.fileio import is_no_space, no_space_error, writing


class JsonlSink:
    """Append one JSON line per record to a file (created with its folder) or to an open text stream.

    Lines are written unbuffered and whole; on a full disk the file is cut back to the last complete line
    and :class:`~edge_lora.errors.NoSpaceError` names it.
    """

    def __init__(self, target: str | os.PathLike | IO[str] | None) -> None:
        self.path = Path(target) if isinstance(target, (str, os.PathLike)) else None
        self._stream: IO[str] = sys.stdout if target is None else target  # type: ignore[assignment]
        self._raw = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._raw = open(self.path, "ab", buffering=0)  # noqa: SIM115 - closed by close()

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line, now (flushed: a log or a tailing consumer sees it at once)."""
        line = json.dumps(record, separators=(",", ":")) + "\n"
        if self._raw is None:
            with writing("<output stream>", needed=len(line)):
                self._stream.write(line)
                self._stream.flush()
            return
        data = memoryview(line.encode("utf-8"))
        start = self._raw.seek(0, os.SEEK_END)
        try:
            while data:  # a raw write may take part of the buffer
                data = data[self._raw.write(data) :]
        except OSError as e:
            if not is_no_space(e):
                raise
            os.ftruncate(self._raw.fileno(), start)  # freeing space needs none
            raise no_space_error(e, self.path, len(line)) from e

    def close(self) -> None:
        """Close the file (a stream passed in stays open: it is the caller's)."""
        if self._raw is not None:
            self._raw.close()
            self._raw = None
