"""Reports read like reports (issue 9, item 6): values rounded to what they resolve, skipped gates say why,
the latency CDF is drawn from every timed run, and reports written before these changes still render."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_lora.validate.compare import SideResult, ValidationReport
from edge_lora.validate.gates import GateCheck, GateReport, evaluate_gates, format_value
from edge_lora.validate.metrics import (
    MAX_KEPT_SAMPLES,
    AccuracyResult,
    GroundTruth,
    LatencyStats,
    agreement,
    evaluate_detections,
)

NAMES = {0: "open", 1: "short"}
GATES = {"max_map_drop": 1.0, "min_agreement_f1": 0.9, "max_p99_ms": None, "min_speedup": 1.5}
# The example of a value printed at full float precision.
RAW_DROP = 0.25036233426748433


@dataclass(frozen=True)
class Dets:
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def test_format_value_rounds_to_what_the_unit_resolves() -> None:
    assert format_value(-RAW_DROP, "mAP pts") == "-0.25 mAP pts"
    assert format_value(0.959234, "F1") == "0.959 F1"
    assert format_value(3.634567, "ms") == "3.63 ms"
    assert format_value(9.12345, "x") == "9.12x"
    assert format_value(None, "ms") == "-" and format_value(float("nan"), "ms") == "NaN"
    assert format_value(float("inf"), "x") == "infx"
    # A -2e-7 point delta (merged FP32) is no drop: no "-0.00".
    assert format_value(-2e-7, "mAP pts") == "0.00 mAP pts"
    assert format_value(-2e-7, "mAP pts", sign=True) == "+0.00 mAP pts"
    assert format_value(0.123456789) == "0.1235"  # unknown unit: 4 significant digits


def _gates(**kw) -> GateReport:
    args = {"accuracy_delta_points": -RAW_DROP, "agreement_f1": 0.97123456, "p99_ms": 12.3456789}
    args |= {"speedup": 3.14159, "latency_is_proxy": False}
    return evaluate_gates(kw.pop("gates", GATES), **(args | kw))


def test_gate_rows_are_rounded_and_skipped_gates_say_why() -> None:
    rows = {
        r[0]: r for r in _gates(latency_is_proxy=True, proxy_reason="no NVIDIA GPU on this host").table_rows()
    }
    name, value, threshold, status, why = rows["max_map_drop"]
    assert (value, threshold, status) == ("0.25 mAP pts", "<= 1.00 mAP pts", "PASS")
    assert why == "mAP50-95 -0.25 mAP pts (candidate - reference)"
    assert rows["min_agreement_f1"][1:4] == ("0.971 F1", ">= 0.900 F1", "PASS")
    assert "margin +0.071 F1" in rows["min_agreement_f1"][4]
    # Disabled in the profile: no "<= None", and the row says so.
    assert rows["max_p99_ms"][2:4] == ("- (disabled)", "SKIP")
    assert rows["max_p99_ms"][4] == "skipped: disabled in the profile (gates.max_p99_ms: null)"
    # Skipped because latency was measured on a host proxy: the value is shown, and why it does not count.
    assert rows["min_speedup"][1:4] == ("3.14x", ">= 1.50x", "SKIP")
    assert rows["min_speedup"][4].startswith("skipped: latency measured on a host proxy")
    assert "no NVIDIA GPU on this host" in rows["min_speedup"][4] and "--on-device" in rows["min_speedup"][4]
    text = "\n".join(" ".join(r) for r in rows.values())
    assert "None" not in text and "0.2503" not in text and "12.3456" not in text


def test_a_failed_gate_keeps_the_digits_that_show_why() -> None:
    check = _gates(gates={"max_map_drop": 0.0}, accuracy_delta_points=-0.004)["max_map_drop"]
    assert check.passed is False
    # At 2 decimals this would read "0.00 <= 0.00 FAIL".
    assert check.value_text == "0.004 mAP pts" and check.threshold_text == "<= 0.000 mAP pts"
    assert str(check) == "max_map_drop: FAIL (0.004 mAP pts <= 0.000 mAP pts)"
    ok = _gates(gates={"max_map_drop": 0.0}, accuracy_delta_points=0.004)["max_map_drop"]
    assert ok.passed and ok.value_text == "0.00 mAP pts"  # a gain of 0.004 is a drop of -0.004 -> "0.00"


def test_gate_records_of_old_bundles_still_load() -> None:
    # What a bundle's manifest / validation.json held before this change (same fields; raw values).
    old = {
        "name": "max_p99_ms",
        "value": 41.23456789,
        "threshold": None,
        "comparator": "<=",
        "passed": None,
        "unit": "ms",
        "detail": "candidate p99 latency",
        "skipped": True,
        "reason": "disabled in the profile",
    }
    check = GateCheck.from_dict(old)
    assert check.to_dict() == old  # no new serialised fields: the manifest schema (extra=forbid) still holds
    assert (check.value_text, check.threshold_text, check.why) == (
        "41.23 ms",
        "- (disabled)",
        "skipped: disabled in the profile",
    )


# --------------------------------------------------------------------------------------------------
# Latency samples
# --------------------------------------------------------------------------------------------------


def test_latency_stats_keep_every_run_sorted_in_ms() -> None:
    rng = np.random.default_rng(0)
    runs_s = rng.gamma(4.0, 0.002, 300)
    stats = LatencyStats.from_samples(runs_s, keep_samples=True)
    assert stats.count == len(stats.samples_ms) == 300
    assert stats.samples_ms == sorted(stats.samples_ms)
    assert stats.samples_ms == [round(v, 3) for v in np.sort(runs_s * 1e3).tolist()]
    assert stats.samples_ms[0] == round(stats.min_ms, 3) and stats.samples_ms[-1] == round(stats.max_ms, 3)
    x, y, exact = stats.cdf()
    assert exact and len(x) == 300 and y[0] == pytest.approx(1 / 300) and y[-1] == 1.0
    assert np.interp(0.99, y, x) == pytest.approx(stats.p99_ms, rel=0.05)
    back = LatencyStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert back == stats
    # Not kept unless asked for (the line runtime summarises 10,000-frame windows): no key, not None.
    plain = LatencyStats.from_samples(runs_s)
    assert plain.samples_ms is None and "samples_ms" not in plain.to_dict()
    assert plain.cdf()[2] is False and len(plain.cdf()[0]) == 6


def test_latency_stats_of_very_long_runs_keep_a_bounded_sample() -> None:
    runs_s = np.linspace(0.001, 0.002, 3 * MAX_KEPT_SAMPLES + 7)
    stats = LatencyStats.from_samples(runs_s, keep_samples=True)
    assert stats.count == len(runs_s) and len(stats.samples_ms) == MAX_KEPT_SAMPLES
    assert stats.samples_ms[0] == 1.0 and stats.samples_ms[-1] == 2.0  # min and max are kept
    assert np.all(np.diff(stats.samples_ms) >= 0)


def test_latency_stats_written_before_samples_existed_still_load() -> None:
    old = LatencyStats.from_samples([0.010, 0.011, 0.012]).to_dict()
    assert "samples_ms" not in old
    stats = LatencyStats.from_dict(old)
    x, y, exact = stats.cdf()
    assert not exact and list(y) == [0.0, 0.5, 0.9, 0.95, 0.99, 1.0] and x[0] == pytest.approx(10.0)


# --------------------------------------------------------------------------------------------------
# A real validation report, rendered
# --------------------------------------------------------------------------------------------------


def _scene() -> tuple[list[GroundTruth], list[Dets], list[Dets]]:
    """Ground truth, the reference's detections (close to it) and a candidate's (the reference's, shifted by
    a pixel or two, one box lost): a quantized artifact that lost a little."""
    rng = np.random.default_rng(0)
    gts, ref, cand = [], [], []
    for i in range(12):
        xy = rng.uniform(0, 200, (3, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(20, 60, (3, 2))], axis=1).astype(np.float32)
        classes = rng.integers(0, 2, 3)
        gts.append(GroundTruth(boxes, classes))
        scores = rng.uniform(0.3, 1, 3)
        ref_boxes = boxes + rng.normal(0, 2, boxes.shape).astype(np.float32)
        ref.append(Dets(ref_boxes, scores, classes))
        keep = slice(None) if i else slice(1, None)
        cand_boxes = ref_boxes + rng.normal(0, 1.5, boxes.shape).astype(np.float32)
        cand.append(Dets(cand_boxes[keep], (scores * 0.98)[keep], classes[keep]))
    return gts, ref, cand


def _report(*, proxy: bool = True, runs: int = 300) -> ValidationReport:
    gts, ref_dets, cand_dets = _scene()
    sizes = [(320, 320)] * len(gts)
    ref_acc = evaluate_detections(gts, ref_dets, NAMES, image_sizes=sizes)
    cand_acc = evaluate_detections(gts, cand_dets, NAMES, image_sizes=sizes)
    rng = np.random.default_rng(2)

    def lat(scale: float, n: int) -> dict[str, LatencyStats]:
        infer = rng.gamma(9, scale, n)  # model = infer + decode, e2e = model + read and letterbox
        runs_s = {"infer": infer, "model": infer * 1.05, "e2e": infer * 1.05 + rng.gamma(4, scale / 10, n)}
        return {k: LatencyStats.from_samples(v, keep_samples=True) for k, v in runs_s.items()}

    ref_lat, cand_lat = lat(0.01, 50), lat(0.001, runs)
    agree = agreement(ref_dets, cand_dets)
    gates = evaluate_gates(
        GATES,
        accuracy_delta_points=100 * (cand_acc.map50_95 - ref_acc.map50_95),
        agreement_f1=agree.f1,
        p99_ms=cand_lat["model"].p99_ms,
        speedup=ref_lat["e2e"].p50_ms / cand_lat["e2e"].p50_ms,
        latency_is_proxy=proxy,
        proxy_reason="no NVIDIA GPU on this host" if proxy else "",
    )
    return ValidationReport(
        target="jetson-orin-nano",
        candidate=SideResult("onnxruntime:model.onnx", "model.onnx", cand_acc, cand_lat, 0.5, 300.0),
        reference=SideResult("torch:base.pt+line_b", "line_b", ref_acc, ref_lat, 2.0, 900.0),
        agreement=agree,
        parity={},
        gates=gates,
        images=len(gts),
        skipped_images=[],
        latency_is_proxy=proxy,
        proxy_reason="no NVIDIA GPU on this host" if proxy else "",
        device={"cpu": "test CPU", "cores": 2, "arch": "x86_64"},
    )


_LONG_FLOAT = re.compile(r"\d\.\d{5,}")  # any number printed with 5+ decimals


def test_validation_markdown_is_rounded_shows_both_maps_and_why_gates_were_skipped() -> None:
    from edge_lora.validate.report_md import render_markdown

    report = _report()
    md = render_markdown(report)
    assert not _LONG_FLOAT.search(md), _LONG_FLOAT.search(md)
    assert "None" not in md
    ref, cand = report.reference.accuracy, report.candidate.accuracy
    assert f"| {ref.map50_95:.4f} | {ref.map50_95_ultralytics:.4f} |" in md
    assert f"| {cand.map50_95:.4f} | {cand.map50_95_ultralytics:.4f} |" in md
    assert "mAP50-95 Ultralytics" in md and "yolo val nms=False" in md
    drop = report.gates["max_map_drop"]
    assert f"| max_map_drop | {drop.status} | {format_value(drop.value, 'mAP pts')} | <= 1.00 mAP pts |" in md
    assert "| max_p99_ms | SKIP |" in md and "skipped: disabled in the profile (gates.max_p99_ms: null)" in md
    assert (
        "skipped: latency measured on a host proxy, not on the target device (no NVIDIA GPU on this host)"
        in md
    )
    assert f"{report.map_delta_points:+.2f} points COCO (gated)" in md


def test_validation_markdown_of_a_report_from_before_the_change() -> None:
    from edge_lora.validate.report_md import render_markdown

    report = _report(proxy=False)
    for side in (report.reference, report.candidate):
        old = side.accuracy.to_dict()
        old.pop("map50_95_ultralytics"), old.pop("map50_ultralytics")
        for entry in old["per_class"].values():
            entry.pop("ap50_95_ultralytics"), entry.pop("ap50_ultralytics")
        side.accuracy = AccuracyResult.from_dict(old)
        side.latency = {
            k: LatencyStats.from_dict({**v.to_dict(), "samples_ms": None}) for k, v in side.latency.items()
        }
    md = render_markdown(report)
    assert "None" not in md and "points Ultralytics convention" in md
    assert "| - |" in md  # the Ultralytics columns are empty, not invented


# --------------------------------------------------------------------------------------------------
# The build report (report.md + plots of a bundle)
# --------------------------------------------------------------------------------------------------


def _candidate(report: ValidationReport, precision: str = "int8") -> dict:
    """A build candidate exactly as build.py makes it: from the validation JSON written to disk."""
    data = json.loads(json.dumps(report.to_dict()))
    return {
        "backend": "onnxruntime",
        "precision": precision,
        "passed": data["passed"],
        "map50_95": data["candidate"]["accuracy"]["map50_95"],
        "ref_map50_95": data["reference"]["accuracy"]["map50_95"],
        "agreement_f1": data["agreement"]["f1"],
        "model_p50_ms": data["candidate"]["latency"]["model"]["p50_ms"],
        "e2e_p50_ms": data["candidate"]["latency"]["e2e"]["p50_ms"],
        "e2e_p99_ms": data["candidate"]["latency"]["e2e"]["p99_ms"],
        "ref_e2e_p50_ms": data["reference"]["latency"]["e2e"]["p50_ms"],
        "speedup": data["speedup_e2e_p50"],
        "report": data,
    }


def _old_form(candidate: dict) -> dict:
    """The same candidate as a bundle built before this change recorded it."""
    old = copy.deepcopy(candidate)
    for side in ("reference", "candidate"):
        acc = old["report"][side]["accuracy"]
        acc.pop("map50_95_ultralytics"), acc.pop("map50_ultralytics")
        for lat in old["report"][side]["latency"].values():
            lat.pop("samples_ms")
    return old


def test_build_report_is_rounded_and_says_why_gates_were_skipped(tmp_path: Path) -> None:
    from edge_lora.profiles import resolve_target
    from edge_lora.report import write_report

    profile, _ = resolve_target("jetson-orin-nano")
    cand = _candidate(_report())
    write_report(tmp_path, profile=profile, candidates=[cand], chosen=cand, stages=[], names=NAMES)
    md = (tmp_path / "report.md").read_text()
    assert "None" not in md and not _LONG_FLOAT.search(md), _LONG_FLOAT.search(md)
    assert "| max_p99_ms | SKIP | " in md and "| - (disabled) | skipped: disabled in the profile" in md
    assert "| min_speedup | SKIP |" in md and "host proxy" in md
    ultra = cand["report"]["reference"]["accuracy"]["map50_95_ultralytics"]
    assert f"{ultra:.4f} -> " in md and "yolo val nms=False" in md
    assert (tmp_path / "plots" / "latency_cdf.png").stat().st_size > 0

    old = _old_form(cand)
    write_report(tmp_path / "old", profile=profile, candidates=[old], chosen=old, stages=[], names=NAMES)
    old_md = (tmp_path / "old" / "report.md").read_text()
    assert "None" not in old_md and "| - -> - |" in old_md


def test_latency_cdf_is_drawn_through_every_timed_run() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edge_lora.report import _plot_cdf

    cand = _candidate(_report(runs=257))
    e2e = cand["report"]["candidate"]["latency"]["e2e"]
    fig, ax = plt.subplots()
    try:
        _plot_cdf(ax, e2e, "onnxruntime int8", "-")
        _plot_cdf(ax, _old_form(cand)["report"]["candidate"]["latency"]["e2e"], "old bundle", "-")
        every_run, old = ax.lines
        # One step per timed run, at the run's own latency.
        np.testing.assert_array_equal(every_run.get_xdata(), e2e["samples_ms"])
        assert len(every_run.get_xdata()) == 257 and every_run.get_ydata()[-1] == 1.0
        assert every_run.get_label() == "onnxruntime int8 (257 runs)"
        # A report without the runs can only show its percentiles, and says so.
        assert len(old.get_xdata()) == 6 and old.get_label() == "old bundle (percentiles only)"
    finally:
        plt.close(fig)


def test_validation_json_with_every_run_stays_small() -> None:
    size = len(json.dumps(_report(runs=300).to_dict()))
    assert size < 60_000, size  # 3 x 300 candidate runs + 3 x 50 reference runs at 1 us resolution
