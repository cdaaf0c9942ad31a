"""edge-lora's Ultralytics-convention mAP against Ultralytics itself (issue 9, item 10).

The evaluator's numpy re-implementation (``ultralytics_match``, ``ultralytics_ap``) is compared with
``ultralytics.utils.metrics`` / ``DetectionValidator.match_predictions`` on the same detections, and the whole
pipeline (letterbox, model, decode, score) with ``YOLO.val(nms=False)`` on a tiny trained model. Tests may import
torch and ultralytics; the modules under test may not (test_metrics checks that).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import fast_train_args

from edge_lora.validate.metrics import (
    IOU_THRESHOLDS,
    GroundTruth,
    evaluate_detections,
    ultralytics_ap,
    ultralytics_match,
)

NAMES = {0: "open", 1: "short", 2: "spur", 3: "never-labelled"}
W, H = 320, 240

#: Same detections, two implementations: only float32 (Ultralytics' torch IoU) vs float64 rounding differs.
SAME_DETECTIONS_TOL = 1e-6
#: ``yolo val`` matches boxes in letterbox space *unclipped*; edge-lora scores the detections as deployed,
#: clipped to the image (Ultralytics' predict clips too). That is the only difference left, and it only moves
#: boxes that cross the image border: 0.0001 on DeepPCB (benchmarks/results/map_alignment.md), up to ~0.002
#: mAP50-95 / ~0.02 mAP50 on the tiny model below, whose boxes often spill over the edge of a 96 px image.
CLIPPING_TOL_MAP50_95 = 0.005
CLIPPING_TOL_MAP50 = 0.03


@dataclass(frozen=True)
class Dets:
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def _scene(seed: int, n_images: int = 30) -> tuple[list[GroundTruth], list[Dets]]:
    """Ground truth plus a plausible detector's output: jittered true boxes (some with the wrong class, some
    missed), duplicates, and background false positives, all with distinct random scores."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for _ in range(n_images):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, [W - 80, H - 80], (n, 2))
        wh = rng.uniform(12, 80, (n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        classes = rng.integers(0, 3, n)
        gts.append(GroundTruth(boxes, classes))
        found = rng.random(n) < 0.85
        jitter = rng.normal(0, 0.04, (n, 4)) * np.repeat(wh, 2, axis=1)
        pb = (boxes + jitter)[found]
        pc = np.where(rng.random(n) < 0.1, (classes + 1) % 3, classes)[found]
        dup = rng.random(len(pb)) < 0.3  # second, looser boxes on the same objects
        pb = np.concatenate([pb, pb[dup] + rng.normal(0, 6, (int(dup.sum()), 4))])
        pc = np.concatenate([pc, pc[dup]])
        m = int(rng.integers(0, 8))
        bg_xy = rng.uniform(0, [W - 40, H - 40], (m, 2))
        pb = np.concatenate([pb, np.concatenate([bg_xy, bg_xy + rng.uniform(8, 40, (m, 2))], axis=1)])
        pc = np.concatenate([pc, rng.integers(0, 3, m)])
        pb[:, [0, 2]] = np.clip(pb[:, [0, 2]], 0, W)
        pb[:, [1, 3]] = np.clip(pb[:, [1, 3]], 0, H)
        dets.append(Dets(pb.astype(np.float32), rng.uniform(0.001, 1, len(pb)).astype(np.float32), pc))
    return gts, dets


def _ultralytics_map(gts: list[GroundTruth], dets: list[Dets]) -> tuple[float, float, dict[int, np.ndarray]]:
    """mAP50-95, mAP50 and per-class AP computed by Ultralytics' own code, fed as its validator feeds it."""
    import torch
    from ultralytics.models.yolo.detect.val import DetectionValidator
    from ultralytics.utils.metrics import ap_per_class, box_iou

    validator = DetectionValidator()
    tp, conf, pred_cls, target_cls = [], [], [], []
    for g, d in zip(gts, dets, strict=True):
        order = np.argsort(-d.scores, kind="stable")  # NMS output is sorted; match_predictions relies on it
        boxes, scores, classes = d.boxes[order], d.scores[order], d.classes[order]
        if len(g) and len(boxes):
            iou = box_iou(torch.from_numpy(g.boxes), torch.from_numpy(boxes))
            correct = validator.match_predictions(
                torch.from_numpy(classes.astype(np.float32)),
                torch.from_numpy(g.classes.astype(np.float32)),
                iou,
            ).numpy()
        else:
            correct = np.zeros((len(boxes), 10), dtype=bool)
        tp.append(correct)
        conf.append(scores)
        pred_cls.append(classes)
        target_cls.append(g.classes)
    out = ap_per_class(
        np.concatenate(tp), np.concatenate(conf), np.concatenate(pred_cls), np.concatenate(target_cls)
    )
    ap, classes = out[5], out[6]
    return float(ap.mean()), float(ap[:, 0].mean()), {int(c): ap[i] for i, c in enumerate(classes)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ultralytics_convention_equals_ultralytics_code_on_the_same_detections(seed: int) -> None:
    gts, dets = _scene(seed)
    res = evaluate_detections(gts, dets, NAMES, image_sizes=[(W, H)] * len(gts))
    map50_95, map50, per_class = _ultralytics_map(gts, dets)
    assert 0.2 < map50_95 < 0.9  # a non-trivial curve, or agreement would prove little
    assert res.map50_95_ultralytics == pytest.approx(map50_95, abs=SAME_DETECTIONS_TOL)
    assert res.map50_ultralytics == pytest.approx(map50, abs=SAME_DETECTIONS_TOL)
    for c, ap in per_class.items():
        assert res.per_class[c].ap50_95_ultralytics == pytest.approx(ap.mean(), abs=SAME_DETECTIONS_TOL)
        assert res.per_class[c].ap50_ultralytics == pytest.approx(ap[0], abs=SAME_DETECTIONS_TOL)
    # A class nobody labelled has no AP under either convention.
    assert res.per_class[3].ap50_95_ultralytics is None and res.per_class[3].ap50_95 is None
    # Same matching, different interpolation: the conventions differ, but only a little.
    assert res.map50_95_ultralytics != res.map50_95
    assert abs(res.map50_95_ultralytics - res.map50_95) < 0.01


def test_ultralytics_match_equals_match_predictions_per_threshold() -> None:
    import torch
    from ultralytics.models.yolo.detect.val import DetectionValidator
    from ultralytics.utils.metrics import box_iou

    gts, dets = _scene(5, n_images=40)
    validator = DetectionValidator()
    compared = 0
    for g, d in zip(gts, dets, strict=True):
        ours = ultralytics_match(g.boxes, g.classes, d.boxes, d.scores, d.classes)
        assert ours.shape == (len(d.boxes), len(IOU_THRESHOLDS))
        if not len(g) or not len(d.boxes):
            assert not ours.any()
            continue
        order = np.argsort(-d.scores, kind="stable")
        iou = box_iou(torch.from_numpy(g.boxes), torch.from_numpy(d.boxes[order]))
        theirs = validator.match_predictions(
            torch.from_numpy(d.classes[order].astype(np.float32)),
            torch.from_numpy(g.classes.astype(np.float32)),
            iou,
        ).numpy()
        np.testing.assert_array_equal(ours[order], theirs)  # ours is in input order, theirs in score order
        compared += int(theirs.sum())
    assert compared > 50


def test_ultralytics_ap_equals_compute_ap_and_differs_from_coco_steps() -> None:
    from ultralytics.utils.metrics import compute_ap

    rng = np.random.default_rng(3)
    for _ in range(50):
        hits = rng.random(int(rng.integers(1, 60))) < 0.6
        tpc, fpc = np.cumsum(hits), np.cumsum(~hits)
        recall = tpc / (hits.sum() + int(rng.integers(0, 5)) + 1e-16)
        precision = tpc / (tpc + fpc)
        assert ultralytics_ap(recall, precision) == pytest.approx(compute_ap(recall, precision)[0], abs=1e-12)
    assert ultralytics_ap(np.array([]), np.array([])) == pytest.approx(compute_ap([], [])[0])

    # TP, FP, TP on 2 objects: envelope 1.0 up to recall 0.5, 2/3 beyond. COCO samples that step function
    # at 101 points: (51 * 1 + 50 * 2/3) / 101 = 0.8350. Ultralytics integrates (trapezoid, step 0.01) its
    # linear interpolation, which is 2/3 already *at* recall 0.5 (the envelope of the second point) and 0 at
    # recall 1.0 (the closing sentinel): 0.49 + 0.005 * (1 + 2/3) + 0.49 * 2/3 + 0.005 * 2/3 = 0.8283.
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert ultralytics_ap(recall, precision) == pytest.approx(
        0.49 + 0.005 * 5 / 3 + 0.49 * 2 / 3 + 0.005 * 2 / 3
    )
    gts = [GroundTruth([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])]
    dets = [
        Dets(
            np.array([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], np.float32),
            np.array([0.9, 0.8, 0.7], np.float32),
            np.zeros(3, np.int64),
        )
    ]
    res = evaluate_detections(gts, dets, {0: "a"}, image_sizes=[(100, 100)])
    assert res.map50 == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert res.map50_ultralytics == pytest.approx(ultralytics_ap(recall, precision))


def test_old_accuracy_json_without_ultralytics_figures_still_loads() -> None:
    gts, dets = _scene(0, n_images=5)
    res = evaluate_detections(gts, dets, NAMES, image_sizes=[(W, H)] * 5)
    old = res.to_dict()
    for k in ("map50_95_ultralytics", "map50_ultralytics"):
        del old[k]
    for entry in old["per_class"].values():
        del entry["ap50_95_ultralytics"], entry["ap50_ultralytics"]
    back = type(res).from_dict(old)
    assert back.map50_95 == res.map50_95 and back.map50_95_ultralytics is None
    delta = res.delta(back)
    assert delta["map50_95"] == 0 and delta["map50_95_ultralytics"] is None
    assert delta["per_class"][0]["ap50_95_ultralytics"] is None


# --------------------------------------------------------------------------------------------------
# The whole pipeline against ``yolo val`` on a tiny trained model
# --------------------------------------------------------------------------------------------------

TINY_IMGSZ = 96  # the demo images' own size: no resize, so both pipelines feed the model the same pixels


@pytest.fixture(scope="module")
def tiny_trained(tmp_path_factory: pytest.TempPathFactory, demo_data) -> tuple[Path, Path]:
    """A YOLO26n trained from ``yolo26n.yaml`` on line A's 8 training images (40 epochs, no augmentation), and
    a data YAML whose val split *is* those images: the model only has to have learned them for its mAP to be
    clearly above zero, which is what makes an agreement test mean something."""
    import yaml
    from ultralytics import YOLO

    work = tmp_path_factory.mktemp("tiny_trained")
    cfg = yaml.safe_load(demo_data.line_a_yaml.read_text())
    cfg["val"] = cfg["train"]
    data = work / "line_a_trainval.yaml"
    data.write_text(yaml.safe_dump(cfg))
    no_augmentation = {"scale": 0.0, "translate": 0.0, "fliplr": 0.0, "erasing": 0.0, "auto_augment": None}
    no_augmentation |= {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0}
    model = YOLO("yolo26n.yaml")
    model.train(
        data=str(data),
        imgsz=TINY_IMGSZ,
        epochs=40,
        batch=4,
        workers=0,
        val=False,
        plots=False,
        verbose=False,
        amp=False,
        seed=0,
        deterministic=True,
        project=str(work),
        name="train",
        exist_ok=True,
        **(fast_train_args() | no_augmentation),
    )
    return Path(model.trainer.last), data


def _yolo_val_nms_free(
    ckpt: Path, data: Path, work: Path
) -> tuple[Any, dict[str, tuple[Dets, Dets, GroundTruth]]]:
    """``YOLO.val(nms=False)`` (the NMS-free head, which ``output: end2end`` artifacts run) plus, per image
    file name, the detections it scored: as matched (letterbox space, unclipped), as a user gets them
    (original image, clipped: the validator's own ``scale_preds``), and the ground truth in letterbox space.
    The validator is wrapped, not replaced: its ``update_metrics`` still runs and yields the printed figures."""
    from ultralytics import YOLO
    from ultralytics.models.yolo.detect.val import DetectionValidator

    from edge_lora.validate.compare import EVAL_CONF

    seen: dict[str, tuple[Dets, Dets, GroundTruth]] = {}
    original = DetectionValidator.update_metrics

    def update_metrics(self, preds, batch):  # noqa: ANN001 - Ultralytics' signature
        for si, pred in enumerate(preds):
            pbatch = self._prepare_batch(si, batch)
            scaled = self.scale_preds({k: v.clone() for k, v in pred.items()}, pbatch)
            as_dets = [
                Dets(p["bboxes"].numpy().copy(), p["conf"].numpy().copy(), p["cls"].numpy().astype(np.int64))
                for p in (pred, scaled)
            ]
            truth = GroundTruth(pbatch["bboxes"].numpy(), pbatch["cls"].numpy())
            seen[Path(pbatch["im_file"]).name] = (as_dets[0], as_dets[1], truth)
        return original(self, preds, batch)

    DetectionValidator.update_metrics = update_metrics
    try:
        metrics = YOLO(str(ckpt)).val(
            data=str(data), imgsz=TINY_IMGSZ, batch=4, conf=EVAL_CONF, nms=False, rect=False, plots=False,
            verbose=False, workers=0, project=str(work), name="val", exist_ok=True,
        )  # fmt: skip
    finally:
        DetectionValidator.update_metrics = original
    return metrics, seen


@pytest.mark.slow
def test_ultralytics_convention_agrees_with_yolo_val_on_a_tiny_model(tiny_trained, tmp_path: Path) -> None:
    import cv2

    from edge_lora.data.checks import label_path, load_data_yaml
    from edge_lora.runtime.prepost import postprocess, preprocess
    from edge_lora.validate.compare import EVAL_CONF
    from edge_lora.validate.metrics import read_yolo_labels
    from edge_lora.validate.reference import TorchReferenceRunner

    ckpt, data = tiny_trained
    ultra, by_name = _yolo_val_nms_free(ckpt, data, tmp_path)
    ultra_map, ultra_map50 = float(ultra.box.map), float(ultra.box.map50)
    assert ultra_map50 > 0.05, f"the tiny model learned too little ({ultra_map50}) to test anything"
    spec = load_data_yaml(data, splits=("val",))
    paths = sorted(spec.splits["val"])
    seen = [by_name[p.name] for p in paths]
    names = spec.names
    square = [(TINY_IMGSZ, TINY_IMGSZ)] * len(seen)

    # 1. The metric: on the detections yolo val matched, edge-lora's Ultralytics figure *is* yolo val's.
    on_theirs = evaluate_detections([s[2] for s in seen], [s[0] for s in seen], names, image_sizes=square)
    assert on_theirs.map50_95_ultralytics == pytest.approx(ultra_map, abs=SAME_DETECTIONS_TOL)
    assert on_theirs.map50_ultralytics == pytest.approx(ultra_map50, abs=SAME_DETECTIONS_TOL)

    # 2. The pipeline: edge-lora's letterbox + export-mode head + decode give yolo val's detections (clipped).
    gts, dets, sizes = [], [], []
    with TorchReferenceRunner(ckpt, imgsz=TINY_IMGSZ, end2end=True) as runner:
        for p in paths:
            img = cv2.imread(str(p))
            h, w = img.shape[:2]
            batch, infos = preprocess([img], TINY_IMGSZ)
            dets += postprocess(runner.infer(batch), infos, end2end=True, conf=EVAL_CONF, nc=spec.nc)
            gts.append(read_yolo_labels(label_path(p), w, h))
            sizes.append((w, h))
    assert sum(len(d) for d in dets) == sum(len(s[1].scores) for s in seen) > 0
    for ours, (_, theirs, _) in zip(dets, seen, strict=True):
        np.testing.assert_array_equal(ours.class_ids, theirs.classes)
        np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-5)
        np.testing.assert_allclose(ours.boxes, theirs.boxes, atol=1e-2)  # px; fused vs unfused BatchNorm

    # 3. End to end: equal up to box clipping (see CLIPPING_TOL_*).
    result = evaluate_detections(gts, dets, names, image_sizes=sizes)
    assert result.map50_95_ultralytics == pytest.approx(ultra_map, abs=CLIPPING_TOL_MAP50_95)
    assert result.map50_ultralytics == pytest.approx(ultra_map50, abs=CLIPPING_TOL_MAP50)
