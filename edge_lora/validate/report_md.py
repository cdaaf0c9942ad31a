"""The validation report as Markdown (``report.md`` beside ``validation.json``). Torch-free: the device writes it
too (``build --on-device``), so it lives with the evaluator, not in the CLI."""

from __future__ import annotations

from typing import Any

from edge_lora.validate.gates import format_value


def _map_text(value: float | None) -> str:
    """A mAP fraction with 4 decimals (0.01 points), ``-`` where a report predates the figure."""
    return "-" if value is None else f"{value:.4f}"


def _points(cand: float | None, ref: float | None) -> str:
    """``cand - ref`` in mAP points, signed, 2 decimals (a -2e-7 delta reads +0.00, not -0.00)."""
    return "-" if cand is None or ref is None else format_value(100.0 * (cand - ref), decimals=2, sign=True)


def render_markdown(report: Any) -> str:
    """The validation report as Markdown (written next to the JSON).

    Values are rounded to what they resolve (mAP to 0.01 points, F1 to 1e-3, ms to 0.01); both mAP figures
    are shown, COCO's (the one the gates use) and Ultralytics' convention on the same detections; every
    gate row says what it measured or why it was skipped.
    """
    ref_acc, cand_acc = report.reference.accuracy, report.candidate.accuracy
    lines = [
        f"# Validation: {report.candidate.artifact} for `{report.target}`",
        "",
        f"Verdict: **{'PASS' if report.passed else 'FAIL'}** on {report.images} images"
        + (f" ({len(report.skipped_images)} undecodable, skipped)" if report.skipped_images else ""),
        "",
        "| | mAP50-95 COCO | mAP50-95 Ultralytics | mAP50 COCO | mAP50 Ultralytics | P | R | F1 @deploy "
        "| infer p50 ms | e2e p50 ms | e2e p99 ms | load s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, side in (("reference", report.reference), ("candidate", report.candidate)):
        a, lat = side.accuracy, side.latency
        lines.append(
            f"| {label} `{side.name}` | {_map_text(a.map50_95)} | {_map_text(a.map50_95_ultralytics)} | "
            f"{_map_text(a.map50)} | {_map_text(a.map50_ultralytics)} | {a.precision:.3f} | {a.recall:.3f} | "
            f"{a.f1:.3f} | {lat['infer'].p50_ms:.2f} | {lat['e2e'].p50_ms:.2f} | {lat['e2e'].p99_ms:.2f} | "
            f"{side.load_time_s or 0:.2f} | {side.peak_rss_mb or 0:.0f} |"
        )
    summary = (
        f"mAP50-95 delta (candidate - reference): {_points(cand_acc.map50_95, ref_acc.map50_95)} points COCO "
        f"(gated), {_points(cand_acc.map50_95_ultralytics, ref_acc.map50_95_ultralytics)} points Ultralytics "
        f"convention; agreement F1 {report.agreement.f1:.3f}"
    )
    if report.speedup:
        summary += f"; end-to-end speedup {report.speedup:.2f}x"
    lines += [
        "",
        summary + ".",
        "",
        "mAP: COCO (faster-coco-eval, 101-point step interpolation) and Ultralytics' convention (linear "
        "interpolation, trapezoid) score the same detections. To compare with `yolo val`, use the Ultralytics "
        "column and `yolo val nms=False` for an `output: end2end` artifact: without it Ultralytics 8.4 validates "
        "YOLO26's one-to-many head + NMS, a different output from the NMS-free head the artifact runs.",
        "",
        "| gate | status | value | threshold | detail |",
        "|---|---|---:|---:|---|",
    ]
    for name, value, threshold, status, why in report.gates.table_rows():
        lines.append(f"| {name} | {status} | {value} | {threshold} | {why} |")
    if report.latency_is_proxy:
        lines += ["", f"Latency is a host proxy ({report.proxy_reason}): confirm on the device."]
    lines += [
        "",
        f"Device: {report.device.get('cpu')} ({report.device.get('cores')} cores, {report.device.get('arch')}).",
    ]
    return "\n".join(lines) + "\n"
