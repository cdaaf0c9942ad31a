"""A bounded on-disk spool: messages waiting for a broker, oldest first. Torch-free (device side, stdlib only).

One message per line in an append-only file, so a crash leaves whole lines (a partial last line is cut off
when the spool is opened again) and a restarted run replays what the last one could not deliver. When the
spool is full (``max_messages`` or ``max_bytes``) the oldest message is dropped and counted. Delivered
messages are removed by compaction (the file is cut to zero when the spool empties, and rewritten when its
delivered prefix grows past ``max_bytes``), so the file stays within about twice ``max_bytes``.

Not thread-safe: its owner (:class:`~edge_lora.runtime.mqtt_sink.MqttSink`) holds a lock around every call.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

from edge_lora.fileio import atomic_write_bytes


class Spool:
    """A FIFO of byte lines on disk; messages are handed out with :meth:`next_unsent` and removed by :meth:`ack`.

    Indices are absolute (they count every message ever appended), so an ack that arrives after its message
    was dropped is recognised and ignored.

    Attributes:
        path: the spool file. dropped: messages dropped because the spool was full.
        carried: messages found in the file when it was opened (left by an earlier run).
    """

    def __init__(self, path: str | os.PathLike, *, max_messages: int, max_bytes: int) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError(f"spool bounds must be >= 1, got {max_messages} messages, {max_bytes} bytes")
        self.path = Path(path)
        self.max_messages = int(max_messages)
        self.max_bytes = int(max_bytes)
        self.dropped = 0
        self._entries: deque[tuple[int, int]] = deque()  # (offset, length) of each pending line
        self._head = 0  # absolute index of _entries[0]
        self._sent = 0  # pending messages handed out (from the head), not acked yet
        self._acked: set[int] = set()  # acked out of order, waiting for the head to reach them
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+b", buffering=0)  # noqa: SIM115 - closed by close()
        self._load()
        self.carried = len(self._entries)

    # ------------------------------------------------------------------------------------------ state
    def __len__(self) -> int:
        """Messages not acked yet (sent or not)."""
        return len(self._entries)

    @property
    def unsent(self) -> int:
        """Messages not handed out since the last :meth:`rewind`."""
        return len(self._entries) - self._sent

    @property
    def bytes(self) -> int:
        """Bytes of the pending messages."""
        if not self._entries:
            return 0
        off, n = self._entries[-1]
        return off + n - self._entries[0][0]

    # ------------------------------------------------------------------------------------------ queue
    def append(self, line: bytes) -> None:
        """Add one message (a line without its newline); drop the oldest ones while the spool is over bounds."""
        data = line.rstrip(b"\n") + b"\n"
        while self._entries and (
            len(self._entries) >= self.max_messages or self.bytes + len(data) > self.max_bytes
        ):
            self._drop_head()
        if len(data) > self.max_bytes:  # larger than the whole spool: it can never be kept
            self.dropped += 1
            return
        offset = self._file.seek(0, os.SEEK_END)
        view = memoryview(data)
        try:
            while view:  # a raw write may take part of the buffer
                view = view[self._file.write(view) :]
        except OSError:
            os.ftruncate(self._file.fileno(), offset)  # never leave half a line
            raise
        self._entries.append((offset, len(data)))

    def next_unsent(self) -> tuple[int, bytes] | None:
        """The oldest message not handed out yet, as ``(index, line)``, or None."""
        if self._sent >= len(self._entries):
            return None
        offset, n = self._entries[self._sent]
        self._file.seek(offset)
        data = self._file.read(n)
        index = self._head + self._sent
        self._sent += 1
        return index, data.rstrip(b"\n")

    def ack(self, index: int) -> bool:
        """Mark the message ``index`` delivered; False when it is no longer pending (dropped meanwhile)."""
        if index < self._head or index >= self._head + self._sent or index in self._acked:
            return False
        self._acked.add(index)
        while self._head in self._acked:
            self._acked.discard(self._head)
            self._entries.popleft()
            self._head += 1
            self._sent -= 1
        self._compact()
        return True

    def rewind(self) -> None:
        """Hand out every pending message again (the connection they were sent on was lost)."""
        self._sent = 0
        self._acked.clear()

    def close(self) -> None:
        """Compact and close the file (what is pending stays for the next run). Idempotent."""
        if self._file.closed:
            return
        self._compact(force=True)
        self._file.close()

    # -------------------------------------------------------------------------------------- internals
    def _drop_head(self) -> None:
        self._entries.popleft()
        self._acked.discard(self._head)
        self._head += 1
        self._sent = max(0, self._sent - 1)
        self.dropped += 1

    def _load(self) -> None:
        self._file.seek(0)
        data = self._file.readall()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a line cut by a crash: it was never a whole message
            os.ftruncate(self._file.fileno(), end)
        offset = 0
        for line in data[:end].splitlines(keepends=True):
            if line.strip():
                self._entries.append((offset, len(line)))
            offset += len(line)
        while len(self._entries) > self.max_messages or self.bytes > self.max_bytes:
            self._drop_head()
        self._compact(force=True)

    def _compact(self, force: bool = False) -> None:
        """Remove delivered lines from the file: cut it when empty, rewrite it when the dead prefix is large."""
        if not self._entries:
            if force or self._file.seek(0, os.SEEK_END) > 0:
                os.ftruncate(self._file.fileno(), 0)
            return
        start = self._entries[0][0]
        if start == 0 or (not force and start < max(self.max_bytes, 1 << 20)):
            return
        self._file.seek(start)
        rest = self._file.read()
        self._file.close()
        atomic_write_bytes(self.path, rest)  # a crash keeps either the old file or the new one
        self._file = open(self.path, "a+b", buffering=0)  # noqa: SIM115 - closed by close()
        self._entries = deque((off - start, n) for off, n in self._entries)
