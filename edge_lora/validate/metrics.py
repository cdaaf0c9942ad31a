"""The evaluator's metrics under one name: a re-export module, kept so that ``from edge_lora.validate.metrics
import X`` goes on working. It defines nothing; each family lives in a module with that one job:

* ground truth: :mod:`edge_lora.validate.labels` (:class:`GroundTruth`, :func:`read_yolo_labels`);
* matching shared by accuracy and agreement: :mod:`edge_lora.validate.matching` (:func:`box_iou`,
  :class:`DetectionsLike`);
* accuracy against ground truth: :mod:`edge_lora.validate.accuracy` (:func:`evaluate_detections` ->
  :class:`AccuracyResult`, COCO and Ultralytics-convention AP);
* agreement between two runners: :mod:`edge_lora.validate.agreement` (:func:`agreement` ->
  :class:`AgreementResult`);
* output parity, the one implementation merge, the export checks and validate share:
  :mod:`edge_lora.validate.parity` (:class:`ParityResult`, :func:`tensor_parity`, :class:`ParityAccumulator`,
  :func:`detection_parity`, :func:`cosine_similarity`);
* latency and memory: :mod:`edge_lora.runtime.timing` (:class:`LatencyStats`, :func:`speedup`,
  :class:`Timer`, :func:`peak_rss_mb`), in the runtime because the device line times frames with it.

New code imports from those modules. Boxes are always ``xyxy`` in original-image pixels; every result object
has ``to_dict()`` / ``from_dict()`` producing plain JSON-able values.
"""

from __future__ import annotations

from edge_lora.runtime.timing import MAX_KEPT_SAMPLES, LatencyStats, Timer, peak_rss_mb, speedup
from edge_lora.validate.accuracy import (
    COCO_MAX_DETS,
    IOU_THRESHOLDS,
    AccuracyResult,
    ClassAccuracy,
    evaluate_detections,
    ultralytics_ap,
    ultralytics_match,
)
from edge_lora.validate.agreement import AgreementResult, ClassAgreement, agreement
from edge_lora.validate.labels import GroundTruth, read_yolo_labels
from edge_lora.validate.matching import DetectionsLike, box_iou
from edge_lora.validate.parity import ParityAccumulator, ParityResult, ParitySummary, tensor_parity

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
