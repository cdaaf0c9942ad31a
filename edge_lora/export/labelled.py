"""Labelled images for accuracy-aware INT8, and their mAP50-95 by edge-lora's one evaluator.

Both accuracy-aware paths read them: NNCF's ``quantize_with_accuracy_control`` (OpenVINO) calls
``validation_fn(compiled_model, items)`` on the whole set and on single items while it ranks layers, and the
QDQ search (:mod:`edge_lora.export.onnx.mixed_precision`) scores its trial graphs with :func:`score_map`.
Each item is one labelled image of the calibration recipe's ``validation_split`` (train by default: the val
images that gate the build stay unseen), preprocessed once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class LabelledImage:
    """One preprocessed val image with its ground truth (in original pixels)."""

    batch: np.ndarray
    info: Any
    gt: Any
    size: tuple[int, int]


def labelled_images(data: str | Path, imgsz: int, limit: int, split: str = "train") -> list[LabelledImage]:
    """Up to ``limit`` images of ``data``'s ``split`` that decode, with their labels (evenly spread over the
    sorted split, so a capped set still covers all of it)."""
    from edge_lora.data.checks import label_path, load_data_yaml
    from edge_lora.runtime.prepost import preprocess
    from edge_lora.validate.metrics import read_yolo_labels

    spec = load_data_yaml(data, splits=(split,))
    paths = sorted(spec.splits[split])
    if len(paths) > limit:
        paths = [paths[int(i * len(paths) / limit)] for i in range(limit)]
    items = []
    for path in paths:
        img = cv2.imread(str(path))
        if img is None:
            continue
        batch, infos = preprocess([img], imgsz)
        h, w = img.shape[:2]
        items.append(LabelledImage(batch, infos[0], read_yolo_labels(label_path(path), w, h), (w, h)))
        if len(items) >= limit:
            break
    return items


def validation_set(
    profile: Any, data: str | Path | None, what: str
) -> tuple[list[LabelledImage], dict[int, str]]:
    """The labelled images the profile's calibration recipe names for accuracy-aware INT8, the class names and
    the split they come from.

    Raises:
        InputError: no ``data``, or no decodable image in the recipe's split (``what`` names the caller).
    """
    from edge_lora.data.checks import load_data_yaml
    from edge_lora.errors import InputError

    if data is None:
        raise InputError(f"{profile.name}: {what} needs --data (labelled images)")
    recipe = profile.load_calibration()
    limit = getattr(recipe, "validation_images", 0) or 100
    split = getattr(recipe, "validation_split", "train")
    items = labelled_images(data, profile.imgsz, limit, split)
    if not items:
        raise InputError(f"{data}: no decodable {split} image for {what} (calibration recipe)")
    return items, load_data_yaml(data, splits=("val",), check_labels=False).names, split


def score_map(
    items: Sequence[LabelledImage],
    dets: Sequence[Any],
    names: dict[int, str],
    truths: Sequence[Any] | None = None,
) -> float:
    """mAP50-95 (0-1) of ``dets`` on ``items`` (against ``truths`` instead of their labels when given); 0 when
    no image has an object (NNCF ranks on single items; one without defects scores 0)."""
    from edge_lora.validate.metrics import evaluate_detections

    gts = list(truths) if truths is not None else [item.gt for item in items]
    if not any(len(g.classes) for g in gts):
        return 0.0
    return float(evaluate_detections(gts, dets, names, image_sizes=[item.size for item in items]).map50_95)


def map_validation_fn(names: dict[int, str], end2end: bool):
    """``validation_fn(compiled_model, items) -> mAP50-95`` (0-1 scale) for NNCF."""
    from edge_lora.runtime.prepost import postprocess

    def validation_fn(compiled_model: Any, items: Any) -> float:
        items = list(items)
        dets = []
        for item in items:
            out = compiled_model(item.batch)[0]
            dets.extend(postprocess(np.asarray(out), [item.info], end2end=end2end, conf=0.001, nc=len(names)))
        return score_map(items, dets, names)

    return validation_fn
