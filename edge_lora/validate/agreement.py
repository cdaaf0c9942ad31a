"""Agreement between two runners: :func:`agreement` -> :class:`AgreementResult`.

One job: how well a candidate runner's detections reproduce a reference runner's, the reference taken as
truth (greedy matching of :mod:`edge_lora.validate.matching`). Device side: numpy and the standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from edge_lora.validate.matching import (
    MATCH_IOU,
    DetectionsLike,
    _count_matches,
    _Counts,
    _det_arrays,
    _PerClassJson,
)

__all__ = ["AgreementResult", "ClassAgreement", "agreement"]


@dataclass
class ClassAgreement:
    """Agreement counts of one class (reference = truth) and the derived P/R/F1."""

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float


@dataclass
class AgreementResult(_PerClassJson):
    """How well the candidate's detections reproduce the reference's, treating the reference as truth.

    TP = candidate box matched to a reference box (same class, IoU >= ``iou``, greedy, highest
    candidate score first); FP = unmatched candidate box; FN = unmatched reference box. Both sides
    are filtered to score >= ``conf`` first.

    Convention: when neither side has any box, the runners agree perfectly, so precision, recall and
    F1 are 1.0; ``mean_iou`` and ``mean_abs_score_diff`` are ``None`` when there is no matched pair.
    An image is *identical* when both sides have the same number of boxes and all are matched.
    """

    iou: float
    conf: float
    n_images: int
    identical_images: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    per_class: dict[int, ClassAgreement]
    mean_iou: float | None
    mean_abs_score_diff: float | None
    _class_entry: ClassVar[type] = ClassAgreement

    @property
    def identical_fraction(self) -> float:
        """Share of images with identical detection sets (1.0 for an empty set of images)."""
        return self.identical_images / self.n_images if self.n_images else 1.0


def agreement(
    reference: Sequence[DetectionsLike],
    candidate: Sequence[DetectionsLike],
    *,
    iou: float = MATCH_IOU,
    conf: float = 0.25,
) -> AgreementResult:
    """Compare two runners' detections image by image (see :class:`AgreementResult`).

    Identical inputs give F1 exactly 1.0 (every box matches itself with IoU 1).

    Raises:
        ValueError: the sequences differ in length or hold malformed arrays.
    """
    if len(reference) != len(candidate):
        raise ValueError(f"reference has {len(reference)} images but candidate has {len(candidate)}")
    per_class: dict[int, _Counts] = {}
    identical = 0
    ious: list[float] = []
    score_diffs: list[float] = []
    for idx, (ref, cand) in enumerate(zip(reference, candidate, strict=True)):
        rb, rs, rc = _det_arrays(ref, f"reference image {idx}")
        cb, cs, cc = _det_arrays(cand, f"candidate image {idx}")
        rk, ck = rs >= conf, cs >= conf
        rb, rs, rc = rb[rk], rs[rk], rc[rk]
        cb, cs, cc = cb[ck], cs[ck], cc[ck]
        image_counts, pairs = _count_matches(rb, rc, cb, cs, cc, iou)
        for c, n in image_counts.items():
            per_class[c] = per_class.get(c, _Counts()) + n
        if len(pairs) == len(rb) == len(cb):
            identical += 1
        for ci, ri, pair_iou in pairs:
            ious.append(pair_iou)
            score_diffs.append(abs(float(cs[ci]) - float(rs[ri])))

    total = sum(per_class.values(), _Counts())
    classes: dict[int, ClassAgreement] = {}
    for c, n in sorted(per_class.items()):
        classes[c] = ClassAgreement(n.tp, n.fp, n.fn, *n.prf(both_empty=1.0))
    p, r, f1 = total.prf(both_empty=1.0)
    return AgreementResult(
        iou=float(iou),
        conf=float(conf),
        n_images=len(reference),
        identical_images=identical,
        tp=total.tp,
        fp=total.fp,
        fn=total.fn,
        precision=p,
        recall=r,
        f1=f1,
        per_class=classes,
        mean_iou=float(np.mean(ious)) if ious else None,
        mean_abs_score_diff=float(np.mean(score_diffs)) if score_diffs else None,
    )
