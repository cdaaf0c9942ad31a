"""Accuracy against ground truth: :func:`evaluate_detections` -> :class:`AccuracyResult`.

One job: score one model's detections on a labelled image set - COCO-style mAP50-95 / mAP50 (faster-coco-eval),
the same figures under Ultralytics' AP convention (what ``yolo val`` computes from the same detections:
:func:`ultralytics_match`, :func:`ultralytics_ap`) and precision / recall / F1 at the deployment confidence.
The reference and the candidate are scored by these same functions, so systematic differences from other
evaluators cancel out in the deltas the gates look at. Device side: numpy, the standard library and
``faster-coco-eval`` only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edge_lora.errors import DataError, InputError
from edge_lora.validate.labels import GroundTruth
from edge_lora.validate.matching import (
    MATCH_IOU,
    DetectionsLike,
    _count_matches,
    _Counts,
    _det_arrays,
    _PerClassJson,
    box_iou,
)

__all__ = [
    "COCO_MAX_DETS",
    "IOU_THRESHOLDS",
    "AccuracyResult",
    "ClassAccuracy",
    "evaluate_detections",
    "ultralytics_ap",
    "ultralytics_match",
]

# YOLO's predictor/validator keeps up to max_det=300 boxes per image after NMS. COCO's default of
# 100 would silently drop the lowest-scoring boxes of dense images (PCB defects, crowds), cut the
# tail of the precision/recall curve and make mAP depend on how many low-confidence boxes happen to
# rank above 100. Evaluating with 300 scores every box the deployed model actually emits.
COCO_MAX_DETS = 300

# IoU thresholds 0.50:0.05:0.95 of mAP50-95 (COCO's iouThrs, Ultralytics' ``DetectionValidator.iouv``).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)

# Recall points at which Ultralytics samples the precision envelope before integrating it
# (``ultralytics.utils.metrics._AP_X``).
_ULTRALYTICS_AP_X = np.linspace(0.0, 1.0, 101)


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
