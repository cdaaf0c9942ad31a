"""``bench()``: latency percentiles, throughput, cold start and memory of one artifact (torch-free)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_lora.errors import InputError
from edge_lora.runtime.timing import LatencyStats, peak_rss_mb

SCHEMA = "edge-lora-bench/1"


@dataclass
class BenchReport:
    """One artifact's benchmark; JSON-comparable between runs and machines."""

    artifact: str
    runner: str
    settings: dict[str, Any]
    load_time_s: float | None
    per_batch: dict[int, LatencyStats]
    skipped_batches: dict[int, str]
    peak_rss_mb: float | None
    device: dict[str, Any]
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``schema`` lets ``--compare`` refuse other files)."""
        return {
            "schema": SCHEMA,
            "artifact": self.artifact,
            "runner": self.runner,
            "settings": self.settings,
            "load_time_s": self.load_time_s,
            "per_batch": {str(b): s.to_dict() for b, s in self.per_batch.items()},
            "skipped_batches": {str(b): why for b, why in self.skipped_batches.items()},
            "peak_rss_mb": self.peak_rss_mb,
            "device": self.device,
            "date": self.date,
        }


def _input_for(runner, batch: int) -> np.ndarray:
    name, (dtype, shape) = next(iter(runner.input_metadata().items()))
    dims = [batch if i == 0 else (d or 640) for i, d in enumerate(shape)]
    if shape[0] not in (None, batch):
        raise InputError(f"batch {batch}: the artifact has a fixed batch of {shape[0]}")
    rng = np.random.default_rng(0)
    return rng.random(dims, dtype=np.float32).astype(dtype)


def bench(
    artifact: str | Path,
    *,
    runs: int = 500,
    warmup: int = 50,
    batches: Sequence[int] = (1,),
    settings: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> BenchReport:
    """Time ``runs`` inferences (after ``warmup``) per batch size; inference only, fixed random input.

    A batch size the artifact cannot take (static batch) is skipped with the reason, not an error.
    """
    from edge_lora.runtime.loader import load_runner
    from edge_lora.validate.device import describe_device

    if runs < 1 or warmup < 0:
        raise InputError(f"--runs must be >= 1 and --warmup >= 0, got {runs} and {warmup}")
    runner = load_runner(artifact, **(settings or {}))
    per_batch: dict[int, LatencyStats] = {}
    skipped: dict[int, str] = {}
    with runner:
        for b in batches:
            try:
                x = _input_for(runner, b)
            except InputError as e:
                skipped[b] = str(e)
                continue
            samples = []
            for i in range(warmup + runs):
                t0 = time.perf_counter()
                runner.infer(x, check_inputs=False, copy_outputs=False)
                if i >= warmup:
                    samples.append(time.perf_counter() - t0)
                if progress:
                    progress(1)
            per_batch[b] = LatencyStats.from_samples(samples, batch_size=b)
    return BenchReport(
        artifact=str(artifact),
        runner=runner.name,
        settings={"runs": runs, "warmup": warmup, "batches": list(batches), **(settings or {})},
        load_time_s=runner.load_time_s,
        per_batch=per_batch,
        skipped_batches=skipped,
        peak_rss_mb=peak_rss_mb(),
        device=describe_device(),
    )


def load_bench(path: str | Path) -> dict[str, Any]:
    """Read a ``bench --json`` file, refusing anything else."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{p}: not a readable bench JSON ({e})") from None
    if data.get("schema") != SCHEMA:
        raise InputError(f"{p}: not an edge-lora bench result (schema {data.get('schema')!r})")
    return data


def compare_bench(a: str | Path, b: str | Path) -> list[dict[str, Any]]:
    """Rows comparing two bench results per batch size: p50/p99 of each and the ratio a/b."""
    da, db = load_bench(a), load_bench(b)
    rows = []
    for batch in sorted(set(da["per_batch"]) & set(db["per_batch"]), key=int):
        sa, sb = da["per_batch"][batch], db["per_batch"][batch]
        rows.append(
            {
                "batch": int(batch),
                "a_p50_ms": sa["p50_ms"],
                "b_p50_ms": sb["p50_ms"],
                "a_p99_ms": sa["p99_ms"],
                "b_p99_ms": sb["p99_ms"],
                "speedup_b_over_a": sa["p50_ms"] / sb["p50_ms"] if sb["p50_ms"] else None,
            }
        )
    return rows
