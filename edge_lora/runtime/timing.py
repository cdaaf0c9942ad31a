"""Latency and memory of repeated runs: :class:`Timer`, :class:`LatencyStats`, :func:`speedup`, :func:`peak_rss_mb`.

One job: time runs and summarise their latency distribution. It lives in the runtime because the device
runtime (:mod:`edge_lora.runtime.line`) times frames and must not depend on the evaluator above it; the
evaluator (``validate/``) reads it from here. Numpy and the standard library only.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["MAX_KEPT_SAMPLES", "LatencyStats", "Timer", "peak_rss_mb", "speedup"]

_LATENCY_KEYS = ("mean", "min", "p50", "p90", "p95", "p99", "max")

#: At most this many per-run latencies are kept in a :class:`LatencyStats` (``keep_samples=True``). Beyond it
#: evenly spaced order statistics are kept (min and max included): a CDF of 10,000 points is indistinguishable
#: from one of a million, and a validation JSON stays in the tens of kilobytes.
MAX_KEPT_SAMPLES = 10_000


@dataclass
class LatencyStats:
    """Latency distribution of repeated runs, in milliseconds.

    Percentiles use ``numpy.percentile(..., method="linear")`` (numpy's default, type 7 of Hyndman
    & Fan: linear interpolation between the two nearest order statistics), so p99 of 100 samples is
    interpolated between the 99th and 100th smallest. ``std_ms`` is the population standard
    deviation (ddof=0). ``throughput`` is items per second of sequential single-stream inference,
    ``batch_size / mean``.

    ``samples_ms`` holds the timed runs themselves when they were kept (``from_samples(...,
    keep_samples=True)``): sorted ascending, in ms rounded to 3 decimals (1 us, far below run-to-run noise),
    at most :data:`MAX_KEPT_SAMPLES` of them. ``None`` when not kept, and in reports written before the
    field existed; :meth:`cdf` then falls back to the percentile points.
    """

    count: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    batch_size: int = 1
    throughput: float = 0.0
    samples_ms: list[float] | None = None

    @classmethod
    def from_samples(
        cls, samples_s: Sequence[float] | np.ndarray, *, batch_size: int = 1, keep_samples: bool = False
    ) -> LatencyStats:
        """Summarize per-run latencies given in **seconds** (e.g. from :class:`Timer`).

        Args:
            samples_s: one latency per timed run, in seconds.
            batch_size: items per run (for ``throughput``).
            keep_samples: also keep the runs themselves (``samples_ms``), e.g. to draw a latency CDF from
                every run. Off by default: a long-running line runtime summarises 10,000-frame windows.

        Raises:
            ValueError: no samples, a negative or non-finite sample, or ``batch_size < 1``.
        """
        s = np.asarray(samples_s, dtype=np.float64).reshape(-1)
        if s.size == 0:
            raise ValueError("no latency samples")
        if not np.all(np.isfinite(s)) or np.any(s < 0):
            raise ValueError("latency samples must be finite and non-negative")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        ms = s * 1e3
        p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99], method="linear")
        mean_s = float(s.mean())
        kept = None
        if keep_samples:
            ordered = np.sort(ms)
            if ordered.size > MAX_KEPT_SAMPLES:
                ordered = ordered[np.linspace(0, ordered.size - 1, MAX_KEPT_SAMPLES).round().astype(np.int64)]
            kept = [round(float(v), 3) for v in ordered]
        return cls(
            count=int(s.size),
            mean_ms=float(ms.mean()),
            std_ms=float(ms.std()),
            min_ms=float(ms.min()),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p95_ms=float(p95),
            p99_ms=float(p99),
            max_ms=float(ms.max()),
            batch_size=int(batch_size),
            throughput=batch_size / mean_s if mean_s > 0 else math.inf,
            samples_ms=kept,
        )

    def get(self, key: str) -> float:
        """A statistic by short name (``"p50"``) or field name (``"p50_ms"``)."""
        name = key if key.endswith("_ms") else f"{key}_ms"
        if name.removesuffix("_ms") not in _LATENCY_KEYS:
            raise ValueError(f"unknown latency statistic {key!r}; use one of {list(_LATENCY_KEYS)}")
        return float(getattr(self, name))

    def cdf(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """The empirical latency CDF: ``(ms, fraction of runs <= ms, from_samples)``.

        From every kept run when ``samples_ms`` exists (the k-th smallest of n runs at ``k / n``); otherwise
        from the six summary points (min, p50, p90, p95, p99, max at 0, .5, .9, .95, .99, 1), with
        ``from_samples`` False so that a plot can say it is an approximation.
        """
        if self.samples_ms:
            x = np.asarray(self.samples_ms, dtype=np.float64)
            return x, np.arange(1, x.size + 1, dtype=np.float64) / x.size, True
        x = np.array([self.min_ms, self.p50_ms, self.p90_ms, self.p95_ms, self.p99_ms, self.max_ms])
        return x, np.array([0.0, 0.5, 0.9, 0.95, 0.99, 1.0]), False

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form; ``samples_ms`` only when the runs were kept (older readers never see the key)."""
        d = asdict(self)
        if d["samples_ms"] is None:
            del d["samples_ms"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyStats:
        """Inverse of :meth:`to_dict`; reads reports written before ``samples_ms`` existed."""
        return cls(**data)


def speedup(reference: LatencyStats, candidate: LatencyStats, key: str = "p50") -> float:
    """``reference / candidate`` latency for ``key`` (``"p50"``, ``"p99"``, ``"mean"`` ...).

    Greater than 1 means the candidate is faster. Compare per-item latency: if the batch sizes
    differ, each side is divided by its batch size first. A zero-latency candidate gives ``inf``.
    """
    ref = reference.get(key) / reference.batch_size
    cand = candidate.get(key) / candidate.batch_size
    if cand == 0:
        return math.inf if ref > 0 else 1.0
    return ref / cand


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process in MiB, or ``None`` when the platform cannot tell.

    Uses ``resource.getrusage`` (``ru_maxrss`` is KiB on Linux, bytes on macOS). Where ``resource``
    does not exist (Windows) falls back to psutil's ``peak_wset`` if psutil is installed. On a Jetson
    the GPU shares this memory, but CUDA/TensorRT allocations are not all counted in RSS.
    """
    try:
        import resource
    except ImportError:
        resource = None  # type: ignore[assignment]
    if resource is not None:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        divisor = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0
        return maxrss / divisor
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        return None
    info = psutil.Process().memory_info()
    peak = getattr(info, "peak_wset", None)
    return (peak if peak is not None else info.rss) / (1024.0 * 1024.0)


class Timer:
    """Wall-clock timer using ``time.perf_counter`` (monotonic, highest resolution available).

    ``with Timer(samples) as t: run()`` appends the elapsed seconds to ``samples`` - only when the
    block completes without an exception, so a failed run never becomes a latency sample.
    Synchronize asynchronous runtimes (CUDA streams) inside the block, or it times the launch only.
    """

    def __init__(self, sink: list[float] | None = None) -> None:
        self.sink = sink
        self.elapsed_s: float = 0.0
        self._start: float | None = None

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self._start is not None
        self.elapsed_s = time.perf_counter() - self._start
        if exc_type is None and self.sink is not None:
            self.sink.append(self.elapsed_s)

    @property
    def elapsed_ms(self) -> float:
        """Elapsed time of the last block in milliseconds."""
        return self.elapsed_s * 1e3
