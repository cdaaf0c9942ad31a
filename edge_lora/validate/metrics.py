"""Torch-free metrics for validating an exported candidate against its reference model.

Everything here runs on the device (a Jetson, a line PC) next to the runtime, so it may only use
numpy, the standard library and ``faster-coco-eval``; importing torch or ultralytics here would
make validation impossible where it matters. The reference and the candidate are always scored by
the *same* functions in this module, so systematic differences from other evaluators (``yolo
val``, pycocotools) cancel out in the deltas the gates look at.

Four families of metrics:

* accuracy against ground truth: :func:`evaluate_detections` -> :class:`AccuracyResult`
  (COCO-style mAP50-95 / mAP50, the same figures under Ultralytics' AP convention - what ``yolo val``
  computes from the same detections - and precision / recall / F1 at the deployment confidence);
* agreement between two runners' detections: :func:`agreement` -> :class:`AgreementResult`;
* raw tensor parity: :func:`tensor_parity` -> :class:`ParityResult`, aggregated over batches by
  :class:`ParityAccumulator` -> :class:`ParitySummary`;
* latency: :class:`LatencyStats`, :func:`speedup`, :class:`Timer`, :func:`peak_rss_mb`.

Boxes are always ``xyxy`` in original-image pixels. Every result object has ``to_dict()`` /
``from_dict()`` producing plain JSON-able values (``float('inf')`` stays a float; ``json`` writes
it as ``Infinity``).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np

from edge_lora.errors import DataError, InputError

__all__ = [
    "COCO_MAX_DETS",
    "IOU_THRESHOLDS",
    "MAX_KEPT_SAMPLES",
    "AccuracyResult",
    "AgreementResult",
    "ClassAccuracy",
    "ClassAgreement",
    "DetectionsLike",
    "GroundTruth",
    "LatencyStats",
    "ParityAccumulator",
    "ParityResult",
    "ParitySummary",
    "Timer",
    "agreement",
    "box_iou",
    "evaluate_detections",
    "peak_rss_mb",
    "read_yolo_labels",
    "speedup",
    "tensor_parity",
    "ultralytics_ap",
    "ultralytics_match",
]

# YOLO's predictor/validator keeps up to max_det=300 boxes per image after NMS. COCO's default of
# 100 would silently drop the lowest-scoring boxes of dense images (PCB defects, crowds), cut the
# tail of the precision/recall curve and make mAP depend on how many low-confidence boxes happen to
# rank above 100. Evaluating with 300 scores every box the deployed model actually emits.
COCO_MAX_DETS = 300

# The IoU threshold of the "matched" definition used for P/R/F1 and agreement (PASCAL/COCO AP50).
MATCH_IOU = 0.5

# IoU thresholds 0.50:0.05:0.95 of mAP50-95 (COCO's iouThrs, Ultralytics' ``DetectionValidator.iouv``).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)

# Recall points at which Ultralytics samples the precision envelope before integrating it
# (``ultralytics.utils.metrics._AP_X``).
_ULTRALYTICS_AP_X = np.linspace(0.0, 1.0, 101)


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class GroundTruth:
    """Ground-truth objects of one image.

    Attributes:
        boxes: float32 (N, 4) ``xyxy`` boxes in original-image pixels.
        classes: int64 (N,) class ids.
    """

    boxes: np.ndarray
    classes: np.ndarray

    def __post_init__(self) -> None:
        # Coerce here so that callers may pass lists and so that an empty label file yields (0, 4).
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        if len(boxes) != len(classes):
            raise ValueError(f"GroundTruth has {len(boxes)} boxes but {len(classes)} classes")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "classes", classes)

    def __len__(self) -> int:
        return len(self.classes)

    @classmethod
    def empty(cls) -> GroundTruth:
        """An image without objects (a background image)."""
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))


def read_yolo_labels(label_path: str | Path, width: int, height: int) -> GroundTruth:
    """Read a YOLO label file (``cls cx cy w h`` normalized to 0..1, one object a line).

    Follows Ultralytics' reader where it matters for the numbers: a missing or empty file means a
    background image; rows with more than 6 values are segmentation polygons
    (``cls x1 y1 x2 y2 ...``) and become their bounding box; exact duplicate rows are dropped.
    Coordinates may exceed [0, 1] by 1e-3 (rounding in converters) and are clipped to the image.

    Args:
        label_path: path of the ``.txt`` label file.
        width: width of the original image in pixels.
        height: height of the original image in pixels.

    Returns:
        The objects with ``xyxy`` pixel boxes.

    Raises:
        DataError: a row is malformed (wrong column count, not a number, negative class,
            coordinates outside the image).
    """
    path = Path(label_path)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got width={width} height={height}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return GroundTruth.empty()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read label file {path}: {exc}") from exc

    rows: list[tuple[int, float, float, float, float]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{lineno}"
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise DataError(f"{where}: label row is not numeric: {line.strip()!r}") from None
        cls_f = values[0]
        if cls_f < 0 or cls_f != int(cls_f):
            raise DataError(f"{where}: class id must be a non-negative integer, got {parts[0]!r}")
        coords = values[1:]
        if len(coords) == 4:
            cx, cy, w, h = coords
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        elif len(coords) > 5 and len(coords) % 2 == 0:
            xs, ys = coords[0::2], coords[1::2]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
        else:
            raise DataError(
                f"{where}: expected 'cls cx cy w h' or a polygon 'cls x1 y1 x2 y2 ...', "
                f"got {len(parts)} values"
            )
        if not all(math.isfinite(v) and -1e-3 <= v <= 1 + 1e-3 for v in coords):
            raise DataError(f"{where}: coordinates must be normalized to 0..1: {line.strip()!r}")
        rows.append((int(cls_f), x1, y1, x2, y2))

    if not rows:
        return GroundTruth.empty()
    # Ultralytics removes duplicate label rows (a common annotation-tool glitch); counting them twice
    # would cap recall at 50 % for those objects.
    unique_rows = list(dict.fromkeys(rows))
    arr = np.asarray([r[1:] for r in unique_rows], dtype=np.float64)
    arr[:, [0, 2]] = np.clip(arr[:, [0, 2]], 0.0, 1.0) * width
    arr[:, [1, 3]] = np.clip(arr[:, [1, 3]], 0.0, 1.0) * height
    classes = np.asarray([r[0] for r in unique_rows], dtype=np.int64)
    return GroundTruth(arr.astype(np.float32), classes)


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


# --------------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Ultralytics' AP convention (what ``yolo val`` reports), re-implemented in numpy
# --------------------------------------------------------------------------------------------------
#
# ``ultralytics.utils.metrics`` imports torch at module level, so the device side cannot import it; the
# few lines below mirror Ultralytics 8.4 (``BaseValidator.match_predictions`` with ``use_scipy=False``,
# ``ap_per_class`` and ``compute_ap``) and are tested against the real functions (tests/test_map_alignment.py).
# Both conventions match boxes the same way (greedy by score, per IoU threshold); they differ only in how the
# PR curve becomes a number. Measured on DeepPCB (benchmarks/results/map_alignment.md) that is under 0.1
# mAP50-95 points on the same detections: the 5-point gap users saw to ``yolo val`` came from *which*
# detections are scored (NMS-free head vs one-to-many head + NMS), not from the AP arithmetic. What remains
# between this figure and ``yolo val nms=False`` is box clipping: Ultralytics matches unclipped boxes in
# letterbox space, edge-lora the detections as deployed, clipped to the image.


def ultralytics_match(
    truth_boxes: np.ndarray,
    truth_classes: np.ndarray,
    pred_boxes: np.ndarray,
    pred_scores: np.ndarray,
    pred_classes: np.ndarray,
) -> np.ndarray:
    """Which detections of one image are true positives at each IoU threshold, as Ultralytics decides it.

    Mirrors ``ultralytics.engine.validator.BaseValidator.match_predictions`` (8.4, greedy): detections in
    descending score order each claim the still-unclaimed same-class truth box of highest IoU, separately
    per threshold of :data:`IOU_THRESHOLDS`; a detection is correct at a threshold when that IoU reaches it.

    Returns:
        bool (K, 10) in the order of ``pred_boxes`` (not sorted), K = number of detections.
    """
    pred_boxes = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
    thresholds = IOU_THRESHOLDS
    correct = np.zeros((len(pred_boxes), len(thresholds)), dtype=bool)
    if len(pred_boxes) == 0 or len(truth_boxes) == 0:
        return correct
    order = np.argsort(-np.asarray(pred_scores, dtype=np.float64), kind="stable")
    # (truth, pred) IoU with other-class pairs zeroed, exactly like Ultralytics' ``iou * correct_class``.
    same_class = np.asarray(truth_classes)[:, None] == np.asarray(pred_classes)[order][None, :]
    iou = box_iou(truth_boxes, pred_boxes[order]) * same_class
    matched = np.zeros((len(truth_boxes), len(thresholds)), dtype=bool)
    columns = np.arange(len(thresholds))
    sorted_correct = np.zeros_like(correct)
    for j in np.flatnonzero((iou >= thresholds.min()).any(0)):
        # IoU with each still-unclaimed truth box, one column per threshold.
        available = np.where(matched, 0.0, iou[:, j, None])
        k = available.argmax(0)
        sorted_correct[j] = available[k, columns] >= thresholds
        matched[k, columns] |= sorted_correct[j]
    correct[order] = sorted_correct
    return correct


def ultralytics_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Average precision of one PR curve as ``ultralytics.utils.metrics.compute_ap`` computes it.

    The curve gets sentinels (precision 1 at recall 0; precision 0 from the last recall on), its precision
    envelope (running maximum from the right) is *linearly* interpolated at 101 recall points and integrated
    with the trapezoidal rule. COCO instead takes the envelope's value at the first curve point whose recall
    reaches each of the 101 points (a step function) and averages the 101 values.
    """
    recall = np.asarray(recall, dtype=np.float64).reshape(-1)
    precision = np.asarray(precision, dtype=np.float64).reshape(-1)
    mrec = np.concatenate(([0.0], recall, [recall[-1] if len(recall) else 1.0], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    y = np.interp(_ULTRALYTICS_AP_X, mrec, mpre)
    # The trapezoidal rule written out: np.trapz is deprecated in numpy 2, np.trapezoid missing before it.
    return float(np.sum((y[1:] + y[:-1]) * np.diff(_ULTRALYTICS_AP_X)) / 2.0)


def _ultralytics_ap_per_class(
    tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray
) -> dict[int, np.ndarray]:
    """AP (10 thresholds) per class present in ``target_cls``: the AP part of Ultralytics' ``ap_per_class``.

    A labelled class without detections gets AP 0 (and counts in the mean), as in Ultralytics and COCO.
    """
    # Ultralytics sorts with numpy's default (unstable) quicksort; stable only changes the order of exact
    # score ties, which can move AP in the last digits at most.
    i = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[i], conf[i], pred_cls[i]
    classes, n_labels = np.unique(target_cls, return_counts=True)
    eps = 1e-16  # Ultralytics' ``eps`` in the recall denominator
    out: dict[int, np.ndarray] = {}
    for c, n_l in zip(classes.tolist(), n_labels.tolist(), strict=True):
        mine = pred_cls == c
        ap = np.zeros(tp.shape[1])
        if mine.any():
            tpc = tp[mine].cumsum(0)
            fpc = (1 - tp[mine]).cumsum(0)
            recall = tpc / (n_l + eps)
            precision = tpc / (tpc + fpc)
            ap = np.array([ultralytics_ap(recall[:, t], precision[:, t]) for t in range(tp.shape[1])])
        out[int(c)] = ap
    return out


# --------------------------------------------------------------------------------------------------
# Accuracy against ground truth
# --------------------------------------------------------------------------------------------------


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


@dataclass
class ClassAccuracy:
    """Accuracy of one class. ``None`` means undefined (see :class:`AccuracyResult`).

    ``ap50_95_ultralytics`` / ``ap50_ultralytics`` are ``None`` in reports written before edge-lora computed
    them, as well as for classes absent from the ground truth.
    """

    name: str
    ap50_95: float | None
    ap50: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    tp: int
    fp: int
    fn: int
    ap50_95_ultralytics: float | None = None
    ap50_ultralytics: float | None = None

    @property
    def n_gt(self) -> int:
        """Ground-truth objects of this class."""
        return self.tp + self.fn


_ACC_SCALARS = ("map50_95", "map50", "precision", "recall", "f1", "tp", "fp", "fn")
# Absent (None) in results written before they existed; their delta is then None.
_ACC_OPTIONAL = ("map50_95_ultralytics", "map50_ultralytics")
_CLASS_SCALARS = (
    "ap50_95",
    "ap50",
    "precision",
    "recall",
    "f1",
    "tp",
    "fp",
    "fn",
    "ap50_95_ultralytics",
    "ap50_ultralytics",
)


@dataclass
class AccuracyResult(_PerClassJson):
    """Detection accuracy of one model on one labelled image set.

    ``map50_95`` / ``map50`` are fractions in 0..1 (multiply by 100 for "mAP points"). The AP values
    are COCO's (101-point interpolated precision, IoU 0.50:0.05:0.95, all areas, ``max_dets`` boxes
    per image), averaged over the classes that occur in the ground truth. ``precision`` /
    ``recall`` / ``f1`` and the counts are at ``deploy_conf`` with one greedy match per box at
    IoU >= 0.5 of the same class - what a user of the deployed model sees.

    ``map50_95_ultralytics`` / ``map50_ultralytics`` score the *same* detections under Ultralytics' AP
    convention (:func:`ultralytics_match`, :func:`ultralytics_ap`): the figure ``yolo val`` prints for
    these detections. Gates use the COCO figure (``map50_95``); the Ultralytics one is reported next to it
    so that a reader comparing with ``yolo val`` compares like with like. Results read from reports
    written before these fields existed have ``None`` there.

    Per class: AP is ``None`` for classes absent from the ground truth; P/R/F1 are ``None`` when a
    class has neither ground truth nor detections at ``deploy_conf``, and a zero denominator
    otherwise gives 0.0 (e.g. recall of a class that only has false positives).
    """

    map50_95: float
    map50: float
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int
    per_class: dict[int, ClassAccuracy]
    deploy_conf: float
    n_images: int
    n_predictions: int
    max_dets: int = COCO_MAX_DETS
    evaluator: str = ""
    map50_95_ultralytics: float | None = None
    map50_ultralytics: float | None = None
    _class_entry: ClassVar[type] = ClassAccuracy

    def delta(self, other: AccuracyResult) -> dict[str, Any]:
        """``self - other`` for every scalar and per-class value: call as ``candidate.delta(reference)``.

        Values are fractions (a ``map50_95`` delta of -0.004 is a drop of 0.4 mAP points). A per-class
        entry is ``None`` where either side is undefined.

        Raises:
            ValueError: the two results are not comparable (different classes, images or
                deployment confidence).
        """
        if set(self.per_class) != set(other.per_class):
            raise ValueError(
                f"results cover different classes: {sorted(self.per_class)} vs {sorted(other.per_class)}"
            )
        if self.n_images != other.n_images:
            raise ValueError(f"results cover different image counts: {self.n_images} vs {other.n_images}")
        if not math.isclose(self.deploy_conf, other.deploy_conf):
            raise ValueError(f"results use different deploy_conf: {self.deploy_conf} vs {other.deploy_conf}")
        out: dict[str, Any] = {k: getattr(self, k) - getattr(other, k) for k in _ACC_SCALARS}
        for k in _ACC_OPTIONAL:
            a, b = getattr(self, k), getattr(other, k)
            out[k] = None if a is None or b is None else a - b
        per_class: dict[int, dict[str, Any]] = {}
        for cid, mine in sorted(self.per_class.items()):
            theirs = other.per_class[cid]
            entry: dict[str, Any] = {"name": mine.name}
            for k in _CLASS_SCALARS:
                a, b = getattr(mine, k), getattr(theirs, k)
                entry[k] = None if a is None or b is None else a - b
            per_class[cid] = entry
        out["per_class"] = per_class
        return out


def _silent(*_args: Any, **_kwargs: Any) -> None:
    """faster-coco-eval prints progress through this hook; validation output is ours to format."""


def evaluate_detections(
    gts: Sequence[GroundTruth],
    dets: Sequence[DetectionsLike],
    names: dict[int, str],
    *,
    deploy_conf: float = 0.25,
    image_sizes: Sequence[tuple[int, int]],
) -> AccuracyResult:
    """Score detections against ground truth with faster-coco-eval's COCOeval (bbox) plus P/R/F1.

    The COCO datasets are built in memory: image ids are ``index + 1``, category ids are
    ``class id + 1`` (COCO treats 0 specially in places), ``iscrowd`` 0, ``area = w * h``. Only the
    "all" area range is evaluated, with ``maxDets = 300`` (YOLO's ``max_det``) instead of COCO's 100
    so that every box the deployed model emits is scored (see :data:`COCO_MAX_DETS`).

    Pass *all* detections (Ultralytics validates at conf 0.001) for a meaningful mAP; ``deploy_conf``
    only applies to precision / recall / F1.

    The same detections are also scored under Ultralytics' AP convention (``map50_95_ultralytics``; see
    :func:`ultralytics_match`, :func:`ultralytics_ap`): greedy matching at each IoU threshold as COCO does,
    but the precision envelope is interpolated linearly and integrated (trapezoid) instead of sampled as a
    step. On the same detections the two figures differ by about a tenth of a point. They are *not*
    comparable with ``yolo val`` on a YOLO26 checkpoint by default: Ultralytics 8.4 validates the
    one-to-many head + NMS unless ``nms=False``, while an ``end2end`` artifact runs the NMS-free head;
    ``yolo val nms=False`` is the comparable run (benchmarks/results/map_alignment.md).

    Args:
        gts: ground truth per image.
        dets: detections per image, same order as ``gts``.
        names: class id -> class name; defines the class set (``data.yaml`` ``names``; a list
            there must be turned into ``dict(enumerate(names))``).
        deploy_conf: the confidence threshold of the deployment, for P/R/F1.
        image_sizes: ``(width, height)`` of each original image, same order as ``gts``.

    Raises:
        ValueError: the sequences have different lengths or malformed arrays.
        DataError: there is no ground-truth object at all (mAP undefined) or a label uses a class
            that is not in ``names``.
        InputError: a detection uses a class id that is not in ``names`` (model/data mismatch).
    """
    from faster_coco_eval import COCO, COCOeval_faster
    from faster_coco_eval import __version__ as fce_version

    if not (len(gts) == len(dets) == len(image_sizes)):
        raise ValueError(
            f"gts, dets and image_sizes differ in length ({len(gts)}/{len(dets)}/{len(image_sizes)})"
        )
    if not names:
        raise ValueError("names is empty")
    # Keys may arrive as strings from JSON; compare class ids as ints everywhere below.
    names = {int(k): str(v) for k, v in names.items()}
    class_ids = sorted(names)

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    counts: dict[int, _Counts] = {c: _Counts() for c in class_ids}
    n_predictions = 0
    # Per detection (all images): Ultralytics-convention TP flags at the 10 IoU thresholds, score, class.
    u_tp: list[np.ndarray] = []
    u_conf: list[np.ndarray] = []
    u_cls: list[np.ndarray] = []
    for idx, (gt, det, size) in enumerate(zip(gts, dets, image_sizes, strict=True)):
        image_id = idx + 1
        width, height = int(size[0]), int(size[1])
        images.append({"id": image_id, "width": width, "height": height})

        unknown = set(gt.classes.tolist()) - set(names)
        if unknown:
            raise DataError(f"image {idx}: label class ids {sorted(unknown)} are not in names {names}")
        for box, cls in zip(gt.boxes.astype(np.float64), gt.classes, strict=True):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCO uses annotation id 0 as "unmatched"
                    "image_id": image_id,
                    "category_id": int(cls) + 1,
                    "bbox": [float(box[0]), float(box[1]), w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )

        boxes, scores, classes = _det_arrays(det, f"detections of image {idx}")
        unknown = set(classes.tolist()) - set(names)
        if unknown:
            raise InputError(
                f"image {idx}: the model predicts class ids {sorted(unknown)} that are not in names {names}"
            )
        n_predictions += len(scores)
        for box, score, cls in zip(boxes, scores, classes, strict=True):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(cls) + 1,
                    "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                    "score": float(score),
                }
            )

        gt_boxes = gt.boxes.astype(np.float64)
        u_tp.append(ultralytics_match(gt_boxes, gt.classes, boxes, scores, classes))
        u_conf.append(scores)
        u_cls.append(classes)

        keep = scores >= deploy_conf
        image_counts, _ = _count_matches(
            gt_boxes, gt.classes, boxes[keep], scores[keep], classes[keep], MATCH_IOU
        )
        for c, n in image_counts.items():
            counts[c] = counts[c] + n

    if not annotations:
        raise DataError("the validation set has no ground-truth objects; mAP is undefined")

    coco_gt = COCO(
        {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c + 1, "name": str(names[c])} for c in class_ids],
        },
        print_function=_silent,
    )
    coco_dt = coco_gt.loadRes(results)
    ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=_silent)
    ev.params.maxDets = [COCO_MAX_DETS]
    # Only the "all" area range feeds the numbers we report; skipping small/medium/large quarters
    # the work.
    ev.params.areaRng = [[0.0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    ev.evaluate()
    ev.accumulate()

    # precision: [T iou thresholds, R recall points, K classes, A areas, M maxDets]; -1 = class has
    # no ground truth.
    precision = np.asarray(ev.eval["precision"])[:, :, :, 0, -1]
    iou_thrs = np.asarray(ev.params.iouThrs)
    t50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
    cat_index = {int(cat_id): k for k, cat_id in enumerate(ev.params.catIds)}

    ultra = _ultralytics_ap_per_class(
        np.concatenate(u_tp).astype(np.float64),
        np.concatenate(u_conf),
        np.concatenate(u_cls),
        np.concatenate([g.classes for g in gts]),
    )

    per_class: dict[int, ClassAccuracy] = {}
    ap_all: list[float] = []
    ap_50: list[float] = []
    for c in class_ids:
        pc = precision[:, :, cat_index[c + 1]]
        ap = float(pc[pc > -1].mean()) if (pc > -1).any() else None
        p50 = pc[t50]
        ap50 = float(p50[p50 > -1].mean()) if (p50 > -1).any() else None
        if ap is not None:
            ap_all.append(ap)
        if ap50 is not None:
            ap_50.append(ap50)
        # A class nobody labelled and nobody predicted has no P/R/F1 (None), not a perfect one.
        p, r, f1 = counts[c].prf(both_empty=math.nan)
        undefined = counts[c].empty
        per_class[c] = ClassAccuracy(
            name=str(names[c]),
            ap50_95=ap,
            ap50=ap50,
            precision=None if undefined else p,
            recall=None if undefined else r,
            f1=None if undefined else f1,
            tp=counts[c].tp,
            fp=counts[c].fp,
            fn=counts[c].fn,
            ap50_95_ultralytics=float(ultra[c].mean()) if c in ultra else None,
            ap50_ultralytics=float(ultra[c][0]) if c in ultra else None,
        )

    # Ground truth exists (checked above), so the totals are never empty.
    total = sum(counts.values(), _Counts())
    p, r, f1 = total.prf(both_empty=math.nan)
    return AccuracyResult(
        # Mean over classes present in the ground truth == COCO's mean over valid precision cells.
        map50_95=float(np.mean(ap_all)),
        map50=float(np.mean(ap_50)),
        precision=p,
        recall=r,
        f1=f1,
        tp=total.tp,
        fp=total.fp,
        fn=total.fn,
        per_class=per_class,
        deploy_conf=float(deploy_conf),
        n_images=len(gts),
        n_predictions=n_predictions,
        max_dets=COCO_MAX_DETS,
        evaluator=f"faster-coco-eval {fce_version}",
        # Ultralytics' mAP: the mean over labelled classes of the per-class mean over the 10 thresholds.
        map50_95_ultralytics=float(np.mean([ap.mean() for ap in ultra.values()])),
        map50_ultralytics=float(np.mean([ap[0] for ap in ultra.values()])),
    )


# --------------------------------------------------------------------------------------------------
# Agreement between two runners
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Tensor parity
# --------------------------------------------------------------------------------------------------


@dataclass
class ParityResult:
    """Element-wise closeness of a candidate tensor to a reference tensor (computed in float64).

    Attributes:
        shape: the common shape.
        max_abs: max |cand - ref|.
        mean_abs: mean |cand - ref|.
        max_rel: ``max_abs / max|ref|`` - relative to the tensor's range rather than per element, so
            that near-zero logits do not blow it up (0 when both are all-zero, inf when only ref is).
        cosine: cosine similarity of the flattened tensors (1.0 when both are all-zero, 0.0 when
            only one is).
        psnr_db: ``10 log10(peak^2 / mse)`` with ``peak = max|ref|``; ``inf`` when identical.
        n_nonfinite: NaN/inf elements in the candidate (a broken engine); any NaN makes the
            statistics NaN, which fails every threshold comparison.
    """

    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    max_rel: float
    cosine: float
    psnr_db: float
    n_nonfinite: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (``inf`` stays a float)."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParityResult:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["shape"] = tuple(int(s) for s in data["shape"])
        return cls(**data)


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


def tensor_parity(ref: np.ndarray, cand: np.ndarray) -> ParityResult:
    """Compare a candidate output tensor with the reference output (see :class:`ParityResult`).

    Raises:
        ValueError: the shapes differ or the tensors are empty.
    """
    return _parity(ref, cand)[0]


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


# --------------------------------------------------------------------------------------------------
# Latency and memory
# --------------------------------------------------------------------------------------------------

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
