"""The bundle's human report: ``report.md``, ``README.md`` and PNG plots (host side; matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge_lora import backends


@contextmanager
def _figure(path: Path, size: tuple[float, float], *, log_x: bool = False) -> Iterator[Any]:
    """One matplotlib (Agg) figure: yields its axes, then adds the legend and grid and saves it to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        if log_x:
            ax.set_xscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def _plot_cdf(ax: Any, latency: dict[str, Any], label: str, style: str) -> None:
    """One empirical CDF: a step per timed run when the report kept them (``samples_ms``); reports written
    before runs were kept only have percentiles, drawn as points and labelled as such."""
    from edge_lora.runtime.timing import LatencyStats

    x, y, exact = LatencyStats.from_dict(latency).cdf()
    if exact:
        ax.step(x, y, style, where="post", label=f"{label} ({len(x)} runs)")
    else:
        ax.plot(x, y, style + "o", label=f"{label} (percentiles only)")


def _plots(folder: Path, candidates: list[dict[str, Any]], names: dict[int, str]) -> list[str]:
    import numpy as np

    if not candidates:
        return []
    reference = candidates[0]["report"]["reference"]
    ref_e2e = reference["latency"]["e2e"]
    # Latency CDF per artifact vs the unmerged reference, from every timed end-to-end run.
    with _figure(folder / "latency_cdf.png", (6, 4), log_x=True) as ax:
        _plot_cdf(ax, ref_e2e, "unmerged reference (PyTorch)", "k--")
        for c in candidates:
            _plot_cdf(ax, c["report"]["candidate"]["latency"]["e2e"], f"{c['backend']} {c['precision']}", "-")
        ax.set_xlabel("end-to-end latency per image (ms, log)")
        ax.set_ylabel("fraction of runs")
    # Accuracy vs latency per precision.
    with _figure(folder / "accuracy_vs_latency.png", (6, 4), log_x=True) as ax:
        ax.scatter([ref_e2e["p50_ms"]], [candidates[0]["ref_map50_95"]], c="k", marker="s", label="reference")
        for c in candidates:
            verdict = "PASS" if c["passed"] else "FAIL"
            ax.scatter([c["e2e_p50_ms"]], [c["map50_95"]], label=f"{c['precision']} ({verdict})")
        ax.set_xlabel("end-to-end p50 (ms, log)")
        ax.set_ylabel("mAP50-95")
    # Per-class AP: reference vs each candidate.
    ids = sorted(names)

    def per_class(acc: dict[str, Any]) -> list[float]:
        pc = acc.get("per_class", {})
        return [float((pc.get(str(i)) or pc.get(i) or {}).get("ap50_95") or 0.0) for i in ids]

    with _figure(folder / "per_class_ap.png", (7, 4)) as ax:
        x = np.arange(len(ids))
        width = 0.8 / (len(candidates) + 1)
        ax.bar(x, per_class(reference["accuracy"]), width, label="reference", color="k")
        for j, c in enumerate(candidates, start=1):
            ax.bar(
                x + j * width, per_class(c["report"]["candidate"]["accuracy"]), width, label=c["precision"]
            )
        ax.set_xticks(x + width * len(candidates) / 2, [names[i] for i in ids], rotation=20)
        ax.set_ylabel("AP50-95")
    return ["latency_cdf.png", "accuracy_vs_latency.png", "per_class_ap.png"]


def _spec(profile: Any) -> backends.BackendSpec | None:
    """The profile's backend spec; None for a backend no longer registered (a report never fails on it)."""
    return backends.get(profile.backend) if profile.backend in backends.names() else None


def _int8_hints(profile: Any, candidates: list[dict[str, Any]]) -> list[str]:
    """A next step when an INT8 candidate failed the mAP gate (the numbers say by how much): the backend
    spec's ``int8_hint``, measured in benchmarks/results/int8_sweep.md."""
    lines = []
    for c in candidates:
        if c["precision"] != "int8":
            continue
        checks = c["report"]["gates"]["checks"]
        failed = next((g for g in checks if g["name"] == "max_map_drop" and g.get("passed") is False), None)
        hint = spec.int8_hint if (spec := _spec(profile)) is not None else ""
        if failed and hint:
            lines += [
                "",
                f"INT8 lost {float(failed['value']):.2f} mAP50-95 points (gate: at most "
                f"{float(failed['threshold']):.2f}). To keep INT8: {hint}.",
            ]
    return lines


def _device_step_line(spec: backends.BackendSpec | None) -> str:
    """The README's line for what the device builds from the artifact (a TensorRT engine); empty if nothing."""
    if spec is None or not spec.device_step:
        return ""
    return f"{spec.device_step}   # builds the {spec.display} engine for this exact device\n"


def _map(value: Any) -> str:
    """A mAP fraction to 4 decimals (0.01 points); ``-`` where a report predates the figure."""
    return "-" if value is None else f"{float(value):.4f}"


def _ultralytics_maps(candidate: dict[str, Any]) -> str:
    """``ref -> cand`` mAP50-95 under Ultralytics' convention, from the candidate's validation report."""
    report = candidate.get("report") or {}
    ref = report.get("reference", {}).get("accuracy", {}).get("map50_95_ultralytics")
    cand = report.get("candidate", {}).get("accuracy", {}).get("map50_95_ultralytics")
    return f"{_map(ref)} -> {_map(cand)}"


def _gate_rows(checks: list[dict[str, Any]]) -> list[str]:
    """Markdown rows of the gate table: rounded values, a skipped gate's reason, a disabled gate said so."""
    from edge_lora.validate.gates import GateCheck

    rows = []
    for g in checks:
        c = GateCheck.from_dict(g)
        rows.append(f"| {c.name} | {c.status} | {c.value_text} | {c.threshold_text} | {c.why} |")
    return rows


def candidate_label(c: dict[str, Any]) -> str:
    """``backend precision``, plus the variant (``accuracy-aware``) when one INT8 was rebuilt."""
    label = f"{c['backend']} {c['precision']}"
    return f"{label} {c['variant']}" if c.get("variant") else label


def _with_record(candidates: list[dict[str, Any]], key: str) -> Iterator[tuple[dict[str, Any], Any]]:
    """``(candidate, record)`` for each candidate whose export details hold a ``key`` record."""
    for c in candidates:
        record = (c.get("details") or {}).get(key)
        if record:
            yield c, record


def _accuracy_aware_lines(candidates: list[dict[str, Any]]) -> list[str]:
    """What the accuracy-aware search kept float, what each conv saved and cost (from the export record)."""
    lines: list[str] = []
    for c, record in _with_record(candidates, "accuracy_aware"):
        n = len(record["float_nodes"])
        lines += [
            "",
            f"## Accuracy-aware INT8 ({candidate_label(c)})",
            "",
            f"Searched on {record['images']} labelled {record['split']} images (the val split stays unseen): "
            f"plain INT8 {-record['int8_drop_points']:+.2f} mAP50-95 points vs FP32, with {n} conv(s) float "
            f"{-record['drop_points']:+.2f} (target {-record['target_points']:+.2f}, at most "
            f"{record['max_float_layers']} convs); ONNX Runtime run on the build host "
            f"{record['int8_latency_ms']:.2f} -> {record['final_latency_ms']:.2f} ms per image "
            f"({record['trials']} trials, {record['seconds']:.0f} s).",
        ]
        if n:
            lines += ["", "| conv kept float | saved points | host ms after |", "|---|---:|---:|"]
            lines += [
                f"| `{s['node']}` | {s['saved_points']:+.2f} | {s['latency_ms']:.2f} |"
                for s in record["steps"][:n]
            ]
    return lines


def _quant_aware_lines(candidates: list[dict[str, Any]]) -> list[str]:
    """Where an INT8 candidate's activation scales came from, for a quant-aware adapter (export record)."""
    lines: list[str] = []
    for c, record in _with_record(candidates, "quant_aware"):
        if record.get("source") == "adapter":
            float_note = f", {record['float']} of them kept float" if record.get("float") else ""
            text = (
                f"{candidate_label(c)}: the inputs of the adapter's {record['convs']} adapted convs "
                f"({record['tensors']} tensors{float_note}) are quantized with the scales the adapter was "
                f"trained with ({record['scheme']}, {record['method']}; checked in the graph), not "
                "re-calibrated; every other tensor is calibrated as usual."
            )
            if record.get("unmatched"):
                text += f" Not found in the graph: {', '.join(record['unmatched'])}."
        else:
            text = f"{candidate_label(c)}: {record['reason']}."
        lines.append(text)
    return ["", "## Quant-aware adapter", "", *lines] if lines else []


def write_report(
    folder: Path,
    *,
    profile: Any,
    candidates: list[dict[str, Any]],
    chosen: dict[str, Any] | None,
    stages: list[dict[str, Any]],
    names: dict[int, str],
) -> None:
    """Write ``report.md``, ``README.md`` and ``plots/*.png`` into ``folder``."""
    plots = folder / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    made = _plots(plots, candidates, names)
    verdict = (
        f"PASS: ships **{candidate_label(chosen)}**" if chosen else "FAIL: no precision passed the gates"
    )
    lines = [
        f"# Build report: `{profile.name}`",
        "",
        f"Verdict: {verdict}",
        "",
        "| precision | mAP50-95 COCO (ref) | mAP50-95 COCO | mAP50-95 Ultralytics (ref -> cand) | agreement F1 "
        "| e2e p50 ms | e2e p99 ms | ref e2e p50 ms | speedup | gates |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in candidates:
        speedup = f"{c['speedup']:.2f}x" if c["speedup"] else "-"
        lines.append(
            f"| {candidate_label(c)} | {_map(c['ref_map50_95'])} | {_map(c['map50_95'])} | "
            f"{_ultralytics_maps(c)} | {c['agreement_f1']:.3f} | {c['e2e_p50_ms']:.2f} | {c['e2e_p99_ms']:.2f} | "
            f"{c['ref_e2e_p50_ms']:.2f} | {speedup} | {'PASS' if c['passed'] else 'FAIL'} |"
        )
    if candidates:
        lines += [
            "",
            "mAP: the gates use COCO's figure (faster-coco-eval); Ultralytics' convention scores the same "
            "detections as `yolo val` would. Compare an `output: end2end` bundle with `yolo val nms=False`: "
            "without it Ultralytics 8.4 validates YOLO26's one-to-many head + NMS, not the NMS-free head "
            "the bundle runs.",
        ]
    if candidates and candidates[0]["report"]["latency_is_proxy"]:
        lines += [
            "",
            f"Latency measured on the build host is a proxy ({candidates[0]['report']['proxy_reason']}); "
            "latency gates are skipped here and must be confirmed on the device.",
        ]
    lines += _int8_hints(profile, candidates)
    lines += _accuracy_aware_lines(candidates)
    lines += _quant_aware_lines(candidates)
    lines += [
        "",
        "## Gates of the shipped (or last tried) artifact",
        "",
        "| gate | status | value | threshold | detail |",
        "|---|---|---:|---:|---|",
    ]
    shown = chosen or (candidates[-1] if candidates else None)
    lines += _gate_rows(shown["report"]["gates"]["checks"] if shown else [])
    lines += ["", "## Stages", "", "| stage | seconds | cached | verdict |", "|---|---:|---|---|"]
    lines += [
        f"| {s['name']} | {s['seconds']:.1f} | {'yes' if s['cached'] else 'no'} | {s['verdict']} |"
        for s in stages
    ]
    lines += [""] + [f"![{m}](plots/{m})" for m in made]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    (folder / "README.md").write_text(
        f"# Deploy bundle for `{profile.name}`\n\n"
        "Everything the line needs: the model under `model/`, the unmerged reference under `reference/`, and\n"
        "`manifest.json` with the sha256 of every file, the classes, thresholds and the validation verdict.\n\n"
        "On the device (needs only the `edge-lora-runtime` wheel, `make device-wheel` in edge-lora's "
        "repository; no torch):\n\n"
        "```bash\n"
        "edge-lora verify .                       # every hash, the manifest schema\n"
        + _device_step_line(_spec(profile))
        + "edge-lora run . --source /path/to/images --out results.jsonl\n"
        "```\n\nSee `report.md` for accuracy, agreement and latency against the unmerged model.\n"
    )
