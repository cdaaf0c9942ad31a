"""Matching detections to reference boxes: IoU, the greedy one-to-one match and per-class TP/FP/FN counts.

One job: the matching that accuracy (detections vs ground truth, :mod:`edge_lora.validate.accuracy`) and
agreement (candidate vs reference runner, :mod:`edge_lora.validate.agreement`) share, with the detection
input they both read (:class:`DetectionsLike`) and the JSON round trip of their per-class results. Device
side: numpy and the standard library only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np

__all__ = ["MATCH_IOU", "DetectionsLike", "box_iou"]

# The IoU threshold of the "matched" definition used for P/R/F1 and agreement (PASCAL/COCO AP50).
MATCH_IOU = 0.5


@runtime_checkable
class DetectionsLike(Protocol):
    """Anything with per-image detections: ``boxes`` (K, 4) xyxy pixels, ``scores`` (K,), ``classes`` (K,).

    ``edge_lora.runtime.prepost.Detections`` satisfies it; so does any simple namespace. Read-only
    properties are used so that frozen dataclasses match too.
    """

    @property
    def boxes(self) -> Any: ...

    @property
    def scores(self) -> Any: ...

    @property
    def classes(self) -> Any: ...


def _det_arrays(det: DetectionsLike, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and return (boxes float64 (K,4), scores float64 (K,), classes int64 (K,))."""
    boxes = np.asarray(det.boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(det.scores, dtype=np.float64).reshape(-1)
    classes = np.asarray(det.classes).reshape(-1)
    if not (len(boxes) == len(scores) == len(classes)):
        raise ValueError(
            f"{where}: boxes/scores/classes lengths differ ({len(boxes)}/{len(scores)}/{len(classes)})"
        )
    # Float class ids (raw model outputs) are fine as long as they are integral.
    int_classes = classes.astype(np.int64)
    if classes.size and not np.array_equal(int_classes, classes):
        raise ValueError(f"{where}: class ids must be integers")
    return boxes, scores, int_classes


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``xyxy`` boxes: (N, 4) x (M, 4) -> (N, M) float64.

    Uses the continuous-coordinate convention (no ``+1``), like COCO. Degenerate pairs whose union
    is zero get IoU 0.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def _greedy_match(
    truth_boxes: np.ndarray,
    truth_classes: np.ndarray,
    pred_boxes: np.ndarray,
    pred_scores: np.ndarray,
    pred_classes: np.ndarray,
    iou_thr: float,
) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching, highest score first, same class, IoU >= ``iou_thr``.

    Each prediction takes the still-unmatched truth box of its class with the highest IoU (the COCO
    rule at a single threshold). Ties in score keep input order (stable sort) so results are
    deterministic. Returns ``(pred_index, truth_index, iou)`` triples.
    """
    if len(pred_boxes) == 0 or len(truth_boxes) == 0:
        return []
    ious = box_iou(pred_boxes, truth_boxes)
    # -1 marks pairs that can never match (other class / already taken); valid IoUs are >= 0.
    ious[pred_classes[:, None] != truth_classes[None, :]] = -1.0
    pairs: list[tuple[int, int, float]] = []
    for i in np.argsort(-pred_scores, kind="stable"):
        row = ious[i]
        j = int(np.argmax(row))
        best = float(row[j])
        if best >= iou_thr:
            pairs.append((int(i), j, best))
            ious[:, j] = -1.0
    return pairs


def _ratio(num: float, den: float, *, empty: float) -> float:
    return num / den if den > 0 else empty


@dataclass(frozen=True)
class _Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: _Counts) -> _Counts:
        return _Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def empty(self) -> bool:
        return self.tp + self.fp + self.fn == 0

    def prf(self, *, both_empty: float) -> tuple[float, float, float]:
        """Precision, recall, F1. ``both_empty`` is returned for all three when tp = fp = fn = 0.

        Otherwise a zero denominator gives 0.0 (e.g. precision when nothing was predicted but
        something was expected). F1 is ``2tp / (2tp + fp + fn)``, defined whenever anything exists.
        """
        if self.empty:
            return both_empty, both_empty, both_empty
        p = _ratio(self.tp, self.tp + self.fp, empty=0.0)
        r = _ratio(self.tp, self.tp + self.fn, empty=0.0)
        f1 = 2 * self.tp / (2 * self.tp + self.fp + self.fn)
        return p, r, f1


def _count_matches(
    truth_boxes: np.ndarray,
    truth_classes: np.ndarray,
    pred_boxes: np.ndarray,
    pred_scores: np.ndarray,
    pred_classes: np.ndarray,
    iou_thr: float,
) -> tuple[dict[int, _Counts], list[tuple[int, int, float]]]:
    """Per-class TP/FP/FN of one image plus the matched pairs."""
    pairs = _greedy_match(truth_boxes, truth_classes, pred_boxes, pred_scores, pred_classes, iou_thr)
    tp_per_class: dict[int, int] = {}
    for pi, _, _ in pairs:
        c = int(pred_classes[pi])
        tp_per_class[c] = tp_per_class.get(c, 0) + 1
    pred_n = dict(zip(*np.unique(pred_classes, return_counts=True), strict=True))
    truth_n = dict(zip(*np.unique(truth_classes, return_counts=True), strict=True))
    counts: dict[int, _Counts] = {}
    for c in set(pred_n) | set(truth_n):
        tp = tp_per_class.get(int(c), 0)
        counts[int(c)] = _Counts(tp, int(pred_n.get(c, 0)) - tp, int(truth_n.get(c, 0)) - tp)
    return counts, pairs


_R = TypeVar("_R", bound="_PerClassJson")


class _PerClassJson:
    """JSON round trip of a result dataclass whose ``per_class`` maps class ids to ``_class_entry``."""

    _class_entry: ClassVar[type]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (class ids become string keys when dumped by ``json``)."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_R], data: dict[str, Any]) -> _R:
        """Inverse of :meth:`to_dict`; accepts the string class-id keys that JSON produces."""
        data = dict(data)
        data["per_class"] = {int(k): cls._class_entry(**v) for k, v in data["per_class"].items()}
        return cls(**data)
