"""The stage cache: each stage's result under ``cache/<stage>/<key>/``, checked before it is reused.

The key hashes the stage's inputs. A stage folder is written in a temp dir and renamed with ``done.json``
inside, whose file hashes are checked before reuse: an interrupted build resumes, and nothing half-written
or tampered is reused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edge_lora.build.results import StageRecord
from edge_lora.fileio import atomic_output_dir, atomic_write_json, sha256_file, sha256_json

#: ``on_event(kind, data)``: ``stage_start``, ``stage_end``, ``progress``, ``note`` and ``bundle`` events of a build.
Event = Callable[[str, dict[str, Any]], None]


class StageCache:
    """Content-addressed stage results with integrity checks."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def run(
        self, stage: str, key: dict[str, Any], fn: Callable[[Path], dict[str, Any]]
    ) -> tuple[Path, dict, bool]:
        """Return (folder, result, cached); run ``fn(tmp_folder) -> result`` when there is no valid entry.

        A result names the files it wrote relative to the folder it was given (``done.json`` stores it as
        it is), so the caller resolves them against the returned folder wherever that folder now is.
        """
        folder = self.root / stage / sha256_json(key)[:20]
        done = folder / "done.json"
        if done.is_file():
            record = json.loads(done.read_text())
            if all(
                (folder / f).is_file() and sha256_file(folder / f) == h for f, h in record["files"].items()
            ):
                return folder, record["result"], True
        with atomic_output_dir(folder, overwrite=True) as tmp:
            result = fn(tmp)
            files = {
                p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()
            }
            atomic_write_json(
                tmp / "done.json", {"stage": stage, "key": key, "result": result, "files": files}
            )
        return folder, result, False


class TimedStages:
    """A :class:`StageCache` that reports each stage (``stage_start``/``stage_end`` events) and records it.

    A stage's display name is ``kind[:detail]`` (``export:cpu-onnxruntime``); its cache folder is the kind.
    """

    def __init__(self, cache: StageCache, emit: Event) -> None:
        self.cache, self.emit = cache, emit

    def run(
        self,
        name: str,
        key: dict[str, Any],
        fn: Callable[[Path], dict[str, Any]],
        records: list[StageRecord],
    ) -> tuple[Path, dict[str, Any]]:
        """Run (or reuse) one stage, append its :class:`StageRecord` to ``records``; (folder, result)."""
        self.emit("stage_start", {"stage": name})
        t0 = time.perf_counter()
        folder, result, cached = self.cache.run(name.split(":")[0], key, fn)
        rec = StageRecord(name, time.perf_counter() - t0, cached, result.get("verdict", "ok"))
        records.append(rec)
        self.emit("stage_end", asdict(rec))
        return folder, result
