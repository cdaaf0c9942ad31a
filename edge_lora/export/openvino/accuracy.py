"""The metric behind OpenVINO accuracy-aware INT8: mAP50-95 with edge-lora's one evaluator.

``nncf.quantize_with_accuracy_control`` calls ``validation_fn(compiled_model, items)`` on the whole set and
on single items while it ranks layers; each item is one labelled image (by default from the train split, see
``CalibRecipe.validation_split``), preprocessed once.
"""

from __future__ import annotations

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


def map_validation_fn(names: dict[int, str], end2end: bool):
    """``validation_fn(compiled_model, items) -> mAP50-95`` (0-1 scale) for NNCF."""
    from edge_lora.runtime.prepost import postprocess
    from edge_lora.validate.metrics import evaluate_detections

    def validation_fn(compiled_model: Any, items: Any) -> float:
        items = list(items)
        gts, dets, sizes = [], [], []
        for item in items:
            out = compiled_model(item.batch)[0]
            dets.extend(postprocess(np.asarray(out), [item.info], end2end=end2end, conf=0.001, nc=len(names)))
            gts.append(item.gt)
            sizes.append(item.size)
        if not any(len(g.classes) for g in gts):  # NNCF ranks on single images; one without defects scores 0
            return 0.0
        return float(evaluate_detections(gts, dets, names, image_sizes=sizes).map50_95)

    return validation_fn
