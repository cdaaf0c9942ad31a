"""Tensor parity: :func:`tensor_parity` -> :class:`ParityResult`, over batches :class:`ParityAccumulator`.

One job: element-wise closeness of a candidate's output tensors to the reference's (max/mean abs, relative,
cosine, PSNR, non-finite count), aggregated over batches into a :class:`ParitySummary`; plus the cosine
measures the INT8 checks use (:func:`cosine_similarity`, :func:`score_cosine`). Device side: numpy and the
standard library only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge_lora.validate.parity.result import ParityResult

__all__ = [
    "SCORE_COSINE_FLOOR",
    "ParityAccumulator",
    "ParitySummary",
    "cosine_similarity",
    "score_cosine",
    "tensor_parity",
]

#: :func:`score_cosine` compares the anchors that could become a detection (either side's best class score at
#: least this): the thousands of background anchors near 1e-3 carry INT8 noise that says nothing about the
#: detections, yet on a small or young model they alone pulled the score cosine of a good IR to 0.84.
SCORE_COSINE_FLOOR = 0.05


def _psnr(peak: float, mse: float) -> float:
    if mse == 0:
        return math.inf
    if peak == 0:
        return -math.inf
    return 10.0 * math.log10(peak * peak / mse)


def _cosine(dot: float, norm_ref_sq: float, norm_cand_sq: float) -> float:
    if norm_ref_sq == 0 and norm_cand_sq == 0:
        return 1.0
    if norm_ref_sq == 0 or norm_cand_sq == 0:
        return 0.0
    # Clip: rounding can push |cos| a hair over 1 for identical tensors.
    return float(np.clip(dot / math.sqrt(norm_ref_sq * norm_cand_sq), -1.0, 1.0))


def _max_rel(max_abs: float, peak: float) -> float:
    if peak == 0:
        return 0.0 if max_abs == 0 else math.inf
    return max_abs / peak


def _parity(ref: np.ndarray, cand: np.ndarray) -> tuple[ParityResult, float, float]:
    """:func:`tensor_parity` plus the sum of squared errors and the peak, for the accumulator."""
    r = np.asarray(ref, dtype=np.float64)
    c = np.asarray(cand, dtype=np.float64)
    if r.shape != c.shape:
        raise ValueError(
            f"tensor shapes differ: reference {tuple(r.shape)} vs candidate {tuple(c.shape)}; "
            "compare the same output of the same batch"
        )
    if r.size == 0:
        raise ValueError(f"cannot compare empty tensors of shape {tuple(r.shape)}")
    shape = tuple(int(s) for s in r.shape)
    r, c = r.ravel(), c.ravel()
    diff = np.abs(c - r)
    max_abs = float(diff.max())
    peak = float(np.abs(r).max())
    sum_sq = float(diff @ diff)
    result = ParityResult(
        shape=shape,
        max_abs=max_abs,
        mean_abs=float(diff.mean()),
        max_rel=_max_rel(max_abs, peak),
        cosine=_cosine(float(r @ c), float(r @ r), float(c @ c)),
        psnr_db=_psnr(peak, sum_sq / r.size),
        n_nonfinite=int(np.count_nonzero(~np.isfinite(c))),
    )
    return result, sum_sq, peak


def tensor_parity(ref: np.ndarray, cand: np.ndarray, *, tolerance: float | None = None) -> ParityResult:
    """Compare a candidate output tensor with the reference output (see :class:`ParityResult`).

    Args:
        ref, cand: the two tensors, same shape (any float or int dtype; computed in float64).
        tolerance: the limit on ``max_rel`` for the verdict (``passed``); None: no verdict.

    Raises:
        ValueError: the shapes differ or the tensors are empty.
    """
    result = _parity(ref, cand)[0]
    return result if tolerance is None else result.with_tolerance(tolerance)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays of the same size, flattened, in float64 (1.0 for two all-zero arrays,
    0.0 when only one is): the ``cosine`` of :func:`tensor_parity`, without the other statistics."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.size != y.size:
        raise ValueError(f"cosine of arrays of different sizes: {x.size} vs {y.size}")
    return _cosine(float(x @ y), float(x @ x), float(y @ y))


def score_cosine(ref: np.ndarray, cand: np.ndarray, floor: float = SCORE_COSINE_FLOOR) -> float:
    """Cosine of two ``(N, nc, anchors)`` class-score tensors over the anchors either side scores at least
    ``floor`` (1.0 when neither has one: nothing to detect on either side). Any other shape is compared
    whole (:func:`cosine_similarity`)."""
    r, c = np.asarray(ref), np.asarray(cand)
    if r.ndim != 3 or r.shape != c.shape:  # not the decoded (N, nc, anchors) form: compare it whole
        return cosine_similarity(r, c)
    keep = (r.max(axis=1) >= floor) | (c.max(axis=1) >= floor)  # (N, anchors)
    if not keep.any():
        return 1.0
    return cosine_similarity(np.moveaxis(r, 1, -1)[keep], np.moveaxis(c, 1, -1)[keep])


@dataclass
class ParitySummary:
    """Parity over many batches: worst case and averages (see :class:`ParityAccumulator`)."""

    n_batches: int
    numel: int
    max_abs: float
    mean_abs: float
    max_rel: float
    cosine_mean: float
    cosine_min: float
    psnr_db: float
    worst_batch: int
    n_nonfinite: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParitySummary:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


class ParityAccumulator:
    """Aggregate :func:`tensor_parity` over batches without keeping the tensors.

    ``max_abs`` is the worst batch's; ``mean_abs``, ``max_rel`` and ``psnr_db`` are computed as if
    all batches were one tensor (element-weighted, peak = max|ref| over all batches); cosine is
    reported per batch as mean and minimum, since one bad batch should stay visible.
    """

    def __init__(self) -> None:
        self._n = 0
        self._numel = 0
        self._sum_abs = 0.0
        self._sum_sq = 0.0
        self._max_abs = -math.inf
        self._peak = 0.0
        self._cosines: list[float] = []
        self._worst = -1
        self._nonfinite = 0

    def update(self, ref: np.ndarray, cand: np.ndarray) -> ParityResult:
        """Add one batch; returns that batch's own :class:`ParityResult`."""
        res, sum_sq, peak = _parity(ref, cand)
        numel = math.prod(res.shape)
        self._numel += numel
        self._sum_abs += res.mean_abs * numel
        self._sum_sq += sum_sq
        # "not <=" rather than ">" so that a NaN max_abs becomes (and stays) the worst batch.
        if self._worst < 0 or not res.max_abs <= self._max_abs:
            self._max_abs, self._worst = res.max_abs, self._n
        self._peak = max(self._peak, peak)
        self._cosines.append(res.cosine)
        self._nonfinite += res.n_nonfinite
        self._n += 1
        return res

    def __len__(self) -> int:
        return self._n

    def result(self) -> ParitySummary:
        """The summary so far.

        Raises:
            ValueError: no batch was added.
        """
        if self._n == 0:
            raise ValueError("ParityAccumulator.result() called before any update()")
        return ParitySummary(
            n_batches=self._n,
            numel=self._numel,
            max_abs=self._max_abs,
            mean_abs=self._sum_abs / self._numel,
            max_rel=_max_rel(self._max_abs, self._peak),
            cosine_mean=float(np.mean(self._cosines)),
            cosine_min=float(np.min(self._cosines)),
            psnr_db=_psnr(self._peak, self._sum_sq / self._numel),
            worst_batch=self._worst,
            n_nonfinite=self._nonfinite,
        )
