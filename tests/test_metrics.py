"""Behavioural tests of the torch-free validation metrics and gates (no mocks, real evaluator)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_lora.errors import EXIT_GATE_FAILED, DataError, GateFailed, InputError, ProfileError
from edge_lora.validate.gates import KNOWN_GATES, TABLE_COLUMNS, GateCheck, GateReport, evaluate_gates
from edge_lora.validate.metrics import (
    COCO_MAX_DETS,
    AccuracyResult,
    AgreementResult,
    DetectionsLike,
    GroundTruth,
    LatencyStats,
    ParityAccumulator,
    ParityResult,
    Timer,
    agreement,
    box_iou,
    evaluate_detections,
    peak_rss_mb,
    read_yolo_labels,
    speedup,
    tensor_parity,
)

REPO = Path(__file__).resolve().parents[1]
NAMES = {0: "open", 1: "short", 2: "spur"}
W, H = 640, 480


@dataclass(frozen=True)
class Dets:
    """Stand-in for ``runtime.prepost.Detections``: any object with the three arrays works."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def _dets(boxes, scores, classes) -> Dets:
    return Dets(
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(scores, np.float32).reshape(-1),
        np.asarray(classes, np.int64).reshape(-1),
    )


def _gt_as_dets(gt: GroundTruth, score: float = 1.0) -> Dets:
    return _dets(gt.boxes, np.full(len(gt), score), gt.classes)


@pytest.fixture(scope="module")
def dataset() -> list[GroundTruth]:
    """20 images, 1-6 objects each, every class present, boxes 40-150 px, mostly non-overlapping."""
    rng = np.random.default_rng(0)
    gts = []
    for i in range(20):
        n = int(rng.integers(1, 7))
        boxes, classes = [], []
        for k in range(n):
            # One object per 100 px column keeps boxes apart, so matching is unambiguous.
            x1 = 100.0 * k + rng.uniform(0, 10)
            y1 = rng.uniform(0, H - 160)
            w, h = rng.uniform(40, 90), rng.uniform(40, 150)
            boxes.append([x1, y1, x1 + w, y1 + h])
            classes.append((i + k) % 3)
        gts.append(GroundTruth(np.asarray(boxes, np.float32), np.asarray(classes)))
    return gts


def _evaluate(gts, dets, names=NAMES, **kw) -> AccuracyResult:
    return evaluate_detections(gts, dets, names, image_sizes=[(W, H)] * len(gts), **kw)


# --------------------------------------------------------------------------------------------------
# Ground truth input
# --------------------------------------------------------------------------------------------------


def test_read_yolo_labels_converts_normalized_xywh_to_pixel_xyxy(tmp_path: Path) -> None:
    label = tmp_path / "a.txt"
    label.write_text("0 0.5 0.5 0.2 0.4\n\n2 0.1 0.2 0.2 0.2\n0 0.5 0.5 0.2 0.4\n1 0.1 0.1 0.3 0.1 0.3 0.3\n")
    gt = read_yolo_labels(label, 100, 50)
    # The duplicate row is dropped (as Ultralytics does); the polygon becomes its bounding box.
    np.testing.assert_allclose(gt.boxes, [[40, 15, 60, 35], [0, 5, 20, 15], [10, 5, 30, 15]], atol=1e-4)
    assert gt.classes.tolist() == [0, 2, 1]
    assert gt.boxes.dtype == np.float32 and gt.boxes.shape == (3, 4)


def test_read_yolo_labels_missing_or_empty_file_is_a_background_image(tmp_path: Path) -> None:
    assert len(read_yolo_labels(tmp_path / "missing.txt", 10, 10)) == 0
    (tmp_path / "empty.txt").write_text("\n")
    gt = read_yolo_labels(tmp_path / "empty.txt", 10, 10)
    assert gt.boxes.shape == (0, 4) and gt.classes.shape == (0,)


@pytest.mark.parametrize(
    "row",
    ["0 0.5 0.5 0.2", "x 0.5 0.5 0.2 0.2", "-1 0.5 0.5 0.2 0.2", "0 0.5 0.5 1.7 0.2", "1.5 .5 .5 .1 .1"],
)
def test_read_yolo_labels_rejects_malformed_rows(tmp_path: Path, row: str) -> None:
    label = tmp_path / "bad.txt"
    label.write_text(row + "\n")
    with pytest.raises(DataError, match="bad.txt:1"):
        read_yolo_labels(label, 10, 10)


# --------------------------------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------------------------------


def test_ground_truth_as_detections_scores_perfectly(dataset) -> None:
    assert isinstance(_gt_as_dets(dataset[0]), DetectionsLike)
    res = _evaluate(dataset, [_gt_as_dets(g) for g in dataset])
    assert res.map50_95 == 1.0 and res.map50 == 1.0
    assert res.precision == res.recall == res.f1 == 1.0
    assert res.fp == res.fn == 0 and res.tp == sum(len(g) for g in dataset)
    assert all(c.ap50_95 == 1.0 and c.ap50 == 1.0 and c.f1 == 1.0 for c in res.per_class.values())
    assert res.max_dets == COCO_MAX_DETS == 300
    assert res.evaluator.startswith("faster-coco-eval")


def test_few_pixel_box_errors_lower_map50_95_but_not_map50(dataset) -> None:
    rng = np.random.default_rng(1)
    dets = [_dets(g.boxes + rng.uniform(-4, 4, g.boxes.shape), np.ones(len(g)), g.classes) for g in dataset]
    res = _evaluate(dataset, dets)
    assert 0.3 < res.map50_95 < 0.95
    assert res.map50 == pytest.approx(1.0)
    assert res.recall == 1.0  # all boxes still match at IoU 0.5


def test_dropping_half_the_detections_halves_recall(dataset) -> None:
    dets = [_dets(g.boxes[::2], np.ones(len(g.boxes[::2])), g.classes[::2]) for g in dataset]
    kept = sum(len(d.scores) for d in dets)
    total = sum(len(g) for g in dataset)
    res = _evaluate(dataset, dets)
    assert res.recall == pytest.approx(kept / total)
    assert res.precision == 1.0
    assert res.map50_95 < 0.8


def test_wrong_class_scores_zero_for_that_class(dataset) -> None:
    # Every "spur" (2) detection is reported as "open" (0).
    dets = [_dets(g.boxes, np.ones(len(g)), np.where(g.classes == 2, 0, g.classes)) for g in dataset]
    res = _evaluate(dataset, dets)
    spur, opened, short = res.per_class[2], res.per_class[0], res.per_class[1]
    assert spur.ap50_95 == 0.0 and spur.ap50 == 0.0 and spur.recall == 0.0 and spur.tp == 0
    assert opened.recall == 1.0 and opened.precision < 1.0 and opened.fp == spur.fn
    assert short.ap50_95 == 1.0
    assert res.map50_95 < 1.0


def test_class_absent_from_ground_truth_is_none_not_zero(dataset) -> None:
    res = _evaluate(dataset, [_gt_as_dets(g) for g in dataset], names={**NAMES, 3: "mousebite"})
    absent = res.per_class[3]
    assert absent.ap50_95 is None and absent.ap50 is None and absent.f1 is None
    assert res.map50_95 == 1.0  # averaged over classes that occur only


def test_deploy_conf_only_affects_precision_recall(dataset) -> None:
    res = _evaluate(dataset, [_gt_as_dets(g, score=0.1) for g in dataset], deploy_conf=0.25)
    assert res.map50_95 == 1.0
    assert res.recall == 0.0 and res.precision == 0.0 and res.f1 == 0.0
    assert res.n_predictions == sum(len(g) for g in dataset)


def test_dense_image_keeps_300_detections() -> None:
    # 250 objects in one image: with COCO's maxDets=100 recall would stop at 0.4.
    boxes = [[24.0 * c, 40.0 * r, 24.0 * c + 20, 40.0 * r + 30] for r in range(10) for c in range(25)]
    gt = GroundTruth(np.asarray(boxes), np.zeros(250))
    scores = np.linspace(1.0, 0.5, 250)
    res = evaluate_detections([gt], [_dets(boxes, scores, np.zeros(250))], {0: "a"}, image_sizes=[(W, H)])
    assert res.map50_95 == 1.0


def test_accuracy_delta_and_json_round_trip(dataset) -> None:
    ref = _evaluate(dataset, [_gt_as_dets(g) for g in dataset])
    cand = _evaluate(dataset, [_dets(g.boxes + 3.0, np.ones(len(g)), g.classes) for g in dataset])
    delta = cand.delta(ref)
    assert delta["map50_95"] == pytest.approx(cand.map50_95 - ref.map50_95) and delta["map50_95"] < 0
    assert set(delta) >= {"map50_95", "map50", "precision", "recall", "f1", "per_class"}
    assert delta["per_class"][1]["ap50_95"] == pytest.approx(cand.per_class[1].ap50_95 - 1.0)
    assert ref.delta(ref)["map50_95"] == 0.0

    back = AccuracyResult.from_dict(json.loads(json.dumps(cand.to_dict())))
    assert back == cand


def test_accuracy_rejects_inconsistent_inputs(dataset) -> None:
    with pytest.raises(DataError, match="no ground-truth"):
        _evaluate([GroundTruth.empty()], [_dets([], [], [])])
    with pytest.raises(InputError, match="not in names"):
        _evaluate(dataset[:1], [_dets([[0, 0, 5, 5]], [0.9], [7])])
    with pytest.raises(ValueError, match="differ in length"):
        _evaluate(dataset[:2], [_gt_as_dets(dataset[0])])


# --------------------------------------------------------------------------------------------------
# Agreement
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(dataset) -> list[Dets]:
    rng = np.random.default_rng(2)
    return [_dets(g.boxes, rng.uniform(0.5, 1.0, len(g)), g.classes) for g in dataset]


def _replace(runs: list[Dets], i: int, boxes=None, scores=None, classes=None) -> list[Dets]:
    d = runs[i]
    new = _dets(
        d.boxes if boxes is None else boxes,
        d.scores if scores is None else scores,
        d.classes if classes is None else classes,
    )
    return [*runs[:i], new, *runs[i + 1 :]]


def test_identical_runners_agree_exactly(runs) -> None:
    res = agreement(runs, runs)
    assert res.f1 == 1.0 and res.precision == 1.0 and res.recall == 1.0
    assert res.identical_images == res.n_images == len(runs) and res.identical_fraction == 1.0
    assert res.mean_iou == 1.0 and res.mean_abs_score_diff == 0.0
    assert all(c.f1 == 1.0 for c in res.per_class.values())


def test_empty_runners_agree() -> None:
    empty = [_dets([], [], [])] * 3
    res = agreement(empty, empty)
    assert res.f1 == 1.0 and res.identical_images == 3
    assert res.mean_iou is None and res.mean_abs_score_diff is None


def test_removed_detection_is_a_false_negative(runs) -> None:
    cand = _replace(runs, 0, boxes=runs[0].boxes[1:], scores=runs[0].scores[1:], classes=runs[0].classes[1:])
    res = agreement(runs, cand)
    assert (res.tp, res.fp, res.fn) == (sum(len(r.scores) for r in runs) - 1, 0, 1)
    assert res.f1 < 1.0 and res.precision == 1.0 and res.recall < 1.0
    assert res.identical_images == len(runs) - 1


def test_shifted_detection_beyond_iou_half_is_fp_and_fn(runs) -> None:
    moved = runs[3].boxes.copy()
    moved[0] += np.array([200, 0, 200, 0], np.float32)  # far from every box (gaps are >= 10 px)
    res = agreement(runs, _replace(runs, 3, boxes=moved))
    assert (res.fp, res.fn) == (1, 1) and res.f1 < 1.0


def test_small_shift_still_agrees_with_lower_iou(runs) -> None:
    res = agreement(runs, _replace(runs, 3, boxes=runs[3].boxes + 2.0))
    assert res.f1 == 1.0 and res.mean_iou is not None and res.mean_iou < 1.0


def test_relabelled_detection_disagrees_per_class(runs) -> None:
    classes = runs[5].classes.copy()
    old = int(classes[0])
    classes[0] = (old + 1) % 3
    res = agreement(runs, _replace(runs, 5, classes=classes))
    assert (res.fp, res.fn) == (1, 1)
    assert res.per_class[old].fn == 1 and res.per_class[(old + 1) % 3].fp == 1


def test_agreement_ignores_boxes_below_conf_and_round_trips(runs) -> None:
    extra = _replace(
        runs,
        0,
        boxes=np.vstack([runs[0].boxes, [[1, 1, 30, 30]]]),
        scores=np.append(runs[0].scores, 0.1),
        classes=np.append(runs[0].classes, 0),
    )
    res = agreement(runs, extra, conf=0.25)
    assert res.f1 == 1.0
    assert agreement(runs, extra, conf=0.05).fp == 1
    assert AgreementResult.from_dict(json.loads(json.dumps(res.to_dict()))) == res
    with pytest.raises(ValueError, match="images"):
        agreement(runs, runs[:-1])


def test_box_iou_known_values() -> None:
    iou = box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [3, 3, 3, 3]])
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0, 0.0]])


# --------------------------------------------------------------------------------------------------
# Tensor parity
# --------------------------------------------------------------------------------------------------


def test_identical_tensors_have_perfect_parity() -> None:
    x = np.random.default_rng(3).standard_normal((2, 84, 100)).astype(np.float32)
    res = tensor_parity(x, x.copy())
    assert res.max_abs == 0.0 and res.mean_abs == 0.0 and res.max_rel == 0.0
    assert res.cosine == 1.0 and res.psnr_db == math.inf and res.shape == (2, 84, 100)


def test_parity_known_values_and_noise_lowers_psnr() -> None:
    res = tensor_parity(np.array([1.0, 2, 3, 4]), np.array([1.0, 2, 3, 5]))
    assert (res.max_abs, res.mean_abs, res.max_rel) == (1.0, 0.25, 0.25)
    assert res.psnr_db == pytest.approx(10 * math.log10(16 / 0.25))
    assert res.cosine == pytest.approx(34 / math.sqrt(30 * 39))

    rng = np.random.default_rng(4)
    x = rng.standard_normal(10_000)
    small = tensor_parity(x, x + 1e-3 * rng.standard_normal(x.shape))
    large = tensor_parity(x, x + 1e-1 * rng.standard_normal(x.shape))
    assert math.inf > small.psnr_db > large.psnr_db
    assert 1.0 > small.cosine > large.cosine
    assert ParityResult.from_dict(json.loads(json.dumps(small.to_dict()))) == small


def test_parity_shape_mismatch_and_nan() -> None:
    with pytest.raises(ValueError, match=r"shapes differ: reference \(2, 3\) vs candidate \(3, 2\)"):
        tensor_parity(np.zeros((2, 3)), np.zeros((3, 2)))
    res = tensor_parity(np.ones(4), np.array([1.0, np.nan, 1, 1]))
    assert res.n_nonfinite == 1 and math.isnan(res.max_abs)


def test_parity_accumulator_keeps_worst_case() -> None:
    rng = np.random.default_rng(5)
    acc = ParityAccumulator()
    with pytest.raises(ValueError):
        acc.result()
    batches = [rng.standard_normal((4, 50)) for _ in range(3)]
    noise = [1e-4, 1e-1, 1e-3]
    per_batch = [
        acc.update(b, b + s * rng.standard_normal(b.shape)) for b, s in zip(batches, noise, strict=True)
    ]
    summary = acc.result()
    assert summary.n_batches == len(acc) == 3 and summary.numel == 600
    assert summary.max_abs == max(r.max_abs for r in per_batch) and summary.worst_batch == 1
    assert summary.cosine_min == min(r.cosine for r in per_batch)
    assert summary.cosine_mean == pytest.approx(np.mean([r.cosine for r in per_batch]))
    assert summary.mean_abs == pytest.approx(np.mean([r.mean_abs for r in per_batch]))

    one = ParityAccumulator()
    single = one.update(batches[0], batches[0] + 0.01)
    assert one.result().psnr_db == pytest.approx(single.psnr_db)


# --------------------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------------------


def test_latency_stats_exact_percentiles() -> None:
    stats = LatencyStats.from_samples([i / 1000 for i in range(10, 0, -1)], batch_size=4)  # 1..10 ms
    assert stats.count == 10
    assert (stats.min_ms, stats.max_ms) == pytest.approx((1.0, 10.0))
    assert stats.mean_ms == pytest.approx(5.5) and stats.p50_ms == pytest.approx(5.5)
    # numpy "linear": rank = q/100 * (n - 1) between order statistics.
    assert (stats.p90_ms, stats.p95_ms, stats.p99_ms) == pytest.approx((9.1, 9.55, 9.91))
    assert stats.std_ms == pytest.approx(math.sqrt(8.25))
    assert stats.throughput == pytest.approx(4 / 0.0055)
    assert LatencyStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats


def test_latency_stats_from_real_timings_are_monotonic() -> None:
    samples: list[float] = []
    for _ in range(15):
        with Timer(samples) as t:
            time.sleep(0.001)
        assert t.elapsed_ms >= 1.0
    stats = LatencyStats.from_samples(samples)
    assert stats.count == 15
    assert stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p95_ms <= stats.p99_ms <= stats.max_ms
    assert stats.min_ms >= 1.0 and stats.throughput > 0


def test_timer_does_not_record_failed_runs() -> None:
    samples: list[float] = []
    with pytest.raises(RuntimeError), Timer(samples):
        raise RuntimeError("inference failed")
    assert samples == []


def test_speedup_and_bad_samples() -> None:
    ref = LatencyStats.from_samples([0.010] * 5)
    cand = LatencyStats.from_samples([0.004] * 5)
    assert speedup(ref, cand) == pytest.approx(2.5)
    assert speedup(ref, cand, key="p99_ms") == pytest.approx(2.5)
    # Per-item latency: a batch of 4 in 16 ms beats 1 image in 10 ms.
    assert speedup(ref, LatencyStats.from_samples([0.016] * 5, batch_size=4)) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="unknown latency statistic"):
        speedup(ref, cand, key="p42")
    for bad in ([], [0.1, -0.1], [float("nan")]):
        with pytest.raises(ValueError):
            LatencyStats.from_samples(bad)


def test_peak_rss_grows_with_allocation() -> None:
    before = peak_rss_mb()
    assert before is not None and before > 0
    block = np.ones(48 * 1024 * 1024 // 8)  # 48 MiB, touched
    after = peak_rss_mb()
    assert after is not None and after >= before and after >= 48
    del block


# --------------------------------------------------------------------------------------------------
# Gates
# --------------------------------------------------------------------------------------------------

GATES = {"max_map_drop": 0.5, "min_agreement_f1": 0.95, "max_p99_ms": 20.0, "min_speedup": 1.5}


def _report(gates=GATES, *, delta=-0.2, f1=0.99, p99=10.0, sp=2.0, proxy=False) -> GateReport:
    return evaluate_gates(
        gates, accuracy_delta_points=delta, agreement_f1=f1, p99_ms=p99, speedup=sp, latency_is_proxy=proxy
    )


@pytest.mark.parametrize(
    ("name", "kwargs", "passed"),
    [
        ("max_map_drop", {"delta": -0.5}, True),  # a drop of exactly 0.5 points is allowed
        ("max_map_drop", {"delta": 100 * (0.700 - 0.705)}, True),  # the same drop, with float rounding
        ("max_map_drop", {"delta": -0.51}, False),
        ("max_map_drop", {"delta": 1.0}, True),  # an improvement
        ("min_agreement_f1", {"f1": 0.95}, True),
        ("min_agreement_f1", {"f1": 0.9499}, False),
        ("min_agreement_f1", {"f1": float("nan")}, False),
        ("max_p99_ms", {"p99": 20.0}, True),
        ("max_p99_ms", {"p99": 20.01}, False),
        ("min_speedup", {"sp": 1.5}, True),
        ("min_speedup", {"sp": 1.49}, False),
    ],
)
def test_gate_boundaries(name: str, kwargs: dict, passed: bool) -> None:
    report = _report(**kwargs)
    assert report[name].passed is passed and report[name].status == ("PASS" if passed else "FAIL")
    assert bool(report) is passed and report.passed is passed
    assert report.return_code == (0 if passed else EXIT_GATE_FAILED)


def test_map_drop_gate_reports_the_drop_in_points() -> None:
    check = _report(delta=-0.3)["max_map_drop"]
    assert check.value == pytest.approx(0.3) and check.threshold == 0.5 and check.comparator == "<="
    assert check.unit == "mAP pts" and "-0.30 mAP pts" in check.detail


def test_proxy_latency_gates_are_skipped_not_failed() -> None:
    report = _report(p99=500.0, sp=0.5, proxy=True)
    for name in ("max_p99_ms", "min_speedup"):
        assert report[name].skipped and report[name].passed is None and report[name].status == "SKIP"
        assert "proxy" in report[name].reason and bool(report[name])
    assert report.passed and report.return_code == 0 and len(report.skipped) == 2
    assert not _report(p99=500.0, proxy=False).passed


def test_disabled_and_unmeasured_gates() -> None:
    report = _report({**GATES, "max_p99_ms": None}, sp=None)
    assert report["max_p99_ms"].skipped and "disabled" in report["max_p99_ms"].reason
    # A set gate without a measurement must not pass silently.
    assert report["min_speedup"].passed is False and "not measured" in report["min_speedup"].detail
    assert [c.name for c in report.failed] == ["min_speedup"]
    assert [c.name for c in _report({"min_agreement_f1": 0.9}).checks] == ["min_agreement_f1"]
    assert _report({}).passed  # nothing to check
    assert _report({"max_p99_ms": np.float32(20)}, p99=20.0).passed  # numpy thresholds are numbers too


def test_unknown_or_malformed_gate_is_a_profile_error() -> None:
    with pytest.raises(ProfileError, match="max_map_dorp"):
        _report({"max_map_dorp": 0.5})
    with pytest.raises(ProfileError, match="number"):
        _report({"max_map_drop": "half"})


def test_failed_report_raises_and_round_trips_through_json() -> None:
    report = _report(delta=-2.0, p99=30.0, proxy=False)
    assert not report and report.return_code == 1
    assert [c.name for c in report.failed] == ["max_map_drop", "max_p99_ms"]
    with pytest.raises(GateFailed, match="max_map_drop") as excinfo:
        report.raise_if_failed()
    assert excinfo.value.exit_code == EXIT_GATE_FAILED

    data = json.loads(json.dumps(report.to_dict()))
    assert data["passed"] is False and data["return_code"] == 1
    back = GateReport.from_dict(data)
    assert back == report and back.table_rows() == report.table_rows()

    rows = report.table_rows()
    assert [r[0] for r in rows] == list(KNOWN_GATES)
    assert all(len(r) == len(TABLE_COLUMNS) for r in rows)
    assert rows[0][3] == "FAIL" and rows[1][3] == "PASS" and rows[0][2] == "<= 0.50 mAP pts"
    assert "FAILED" in str(report)


def test_gate_check_validates_itself() -> None:
    with pytest.raises(ValueError, match="comparator"):
        GateCheck("x", 1.0, 1.0, "<", True)
    with pytest.raises(ValueError, match="skipped"):
        GateCheck("x", 1.0, 1.0, "<=", None)


# --------------------------------------------------------------------------------------------------
# Torch-free on the device
# --------------------------------------------------------------------------------------------------


def test_validate_modules_import_and_run_without_torch() -> None:
    script = textwrap.dedent(
        """
        import importlib.abc, sys

        BLOCKED = {"torch", "torchvision", "ultralytics"}

        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, Blocker())
        try:
            import torch  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("blocker ineffective")

        import numpy as np
        from edge_lora.validate import gates, metrics

        gt = metrics.GroundTruth(np.array([[0, 0, 10, 10]]), np.array([0]))
        det = type("D", (), {"boxes": gt.boxes, "scores": np.ones(1), "classes": gt.classes})()
        acc = metrics.evaluate_detections([gt], [det], {0: "a"}, image_sizes=[(20, 20)])
        assert acc.map50_95 == 1.0, acc
        assert metrics.agreement([det], [det]).f1 == 1.0
        assert gates.evaluate_gates(
            {"max_map_drop": 0.5}, accuracy_delta_points=0.0, agreement_f1=1.0,
            p99_ms=None, speedup=None, latency_is_proxy=True,
        ).passed
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not leaked, leaked
        print("torch-free ok")
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "torch-free ok" in proc.stdout
