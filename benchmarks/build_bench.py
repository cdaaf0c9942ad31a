"""The full ``edge-lora build`` pipeline per target (issue: ``edge-lora build --target``).

Base ../shared/models/deeppcb-base-yolo26n.pt + one LoRA adapter (default: the lora8 adapter that
benchmarks/lora_vs_full.py trains) on ../shared/datasets/deeppcb/newboards.yaml, built in one
``edge_lora.build.build`` call for three targets with their shipped profiles:

* ``cpu-onnxruntime``  INT8 QDQ u8s8 (FP32 fallback), run by ONNX Runtime here;
* ``intel-openvino``   INT8 via NNCF (FP16, FP32 fallbacks), run by OpenVINO here;
* ``jetson-orin-nano`` host proxy: the S8S8 QDQ ONNX the TensorRT engine would be built from, run by ONNX
  Runtime on this CPU. Its latency is not the Jetson's, so the latency gates are skipped (the bundle says so
  and lists the on-device step that checks them); accuracy and agreement are real.

Per target: mAP50-95 of the reference (the unmerged base + adapter in PyTorch) and of the candidate,
agreement F1, end-to-end p50/p99 latency and speedup vs the unmerged PyTorch model, bundle size, and the build
time of every stage (merge and the unmerged reference are shared between targets: built once, then cached).

    python benchmarks/build_bench.py                          # all val images, 100 timed runs
    python benchmarks/build_bench.py --max-images 4 --runs 5 --warmup 1 --results /tmp/r   # smoke test

Writes benchmarks/results/build.json and build.md (after every bundle: partial results survive).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BASE, LORA8, NEWBOARDS, REPO, SHARED  # noqa: E402
from machine import machine_details, markdown_details  # noqa: E402

DATA = NEWBOARDS
ADAPTER = LORA8
TARGETS = ["cpu-onnxruntime", "intel-openvino", "jetson-orin-nano"]
NOTES = [
    "Jetson host proxy: the INT8 candidate is the S8S8 QDQ ONNX the engine is built from (weights stay float "
    "behind Q/DQ nodes, hence its size; TensorRT quantizes them at engine build), run by ONNX Runtime on this "
    "CPU. The FP16 fallback is the FP32 ONNX the FP16 engine is built from: on this host its accuracy is "
    "FP32's, FP16 accuracy is only measured on the device.",
    "Bundle = the shipped model, the unmerged reference ONNX (for on-device re-validation), manifest, "
    "validation.json, report and plots.",
]


def tree_bytes(path: Path) -> dict[str, int]:
    """Bytes under ``path`` per top-level entry (``model``, ``reference``, ...) and in total."""
    sizes: dict[str, int] = {}
    if path.is_file():
        return {"total": path.stat().st_size}
    for f in path.rglob("*"):
        if f.is_file():
            top = f.relative_to(path).parts[0]
            sizes[top] = sizes.get(top, 0) + f.stat().st_size
    sizes["total"] = sum(sizes.values())
    return sizes


def summarize(bundle: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """One bundle's numbers for the report, from ``BundleResult.to_dict()`` (the ``bundle`` event)."""
    candidates = []
    for c in bundle["candidates"]:
        report = json.loads(Path(c["validation"]).read_text())
        cand, ref = report["candidate"], report["reference"]
        candidates.append(
            {
                "precision": c["precision"],
                "backend": c["backend"],
                "shipped": c["precision"] == bundle["chosen"],
                "passed": c["passed"],
                "artifact": c["path"],
                "artifact_bytes": c["bytes"],
                "ref_map50_95": c["ref_map50_95"],
                "map50_95": c["map50_95"],
                "delta_points": report["deltas"]["map50_95_points"],
                "agreement_f1": c["agreement_f1"],
                "e2e_p50_ms": cand["latency"]["e2e"]["p50_ms"],
                "e2e_p99_ms": cand["latency"]["e2e"]["p99_ms"],
                "model_p50_ms": cand["latency"]["model"]["p50_ms"],
                "ref_e2e_p50_ms": ref["latency"]["e2e"]["p50_ms"],
                "ref_e2e_p99_ms": ref["latency"]["e2e"]["p99_ms"],
                "speedup": c["speedup"],
                "images": report["images"],
                "latency_is_proxy": report["latency_is_proxy"],
                "proxy_reason": report["proxy_reason"],
                "runner": cand["name"],
                "gates": [
                    {k: g[k] for k in ("name", "value", "threshold", "passed", "skipped", "reason")}
                    for g in report["gates"]["checks"]
                ],
                "validation": c["validation"],
            }
        )
    mine = [e for e in events if e.get("target") == bundle["target"]]
    return {
        "target": bundle["target"],
        "adapter": bundle["adapter"],
        "passed": bundle["passed"],
        "shipped": bundle["chosen"],
        "bundle": str(bundle["bundle"]),
        "bundle_bytes": tree_bytes(Path(bundle["bundle"])),
        "target_message": bundle["target_message"],
        "stages": [
            {
                "name": s["name"],
                "seconds": round(s["seconds"], 2),
                "cached": s["cached"],
                "verdict": s["verdict"],
            }
            for s in bundle["stages"]
        ],
        "wall_seconds": round(mine[-1]["t"] - mine[0]["t"], 1) if len(mine) > 1 else None,
        "candidates": candidates,
    }


def _gate_text(c: dict[str, Any]) -> str:
    parts = []
    for g in c["gates"]:
        if g["threshold"] is None and not g["skipped"]:
            continue
        status = "skip" if g["skipped"] else ("pass" if g["passed"] else "FAIL")
        parts.append(f"{g['name']} {status}")
    return ", ".join(parts)


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    rows = [
        "| target | precision | verdict | mAP50-95 ref → cand | Δ pts | agreement F1 | e2e p50 / p99 ms | "
        "PyTorch e2e p50 / p99 ms | speedup | model MB | bundle MB | gates |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for b in report["bundles"]:
        if "error" in b:
            rows.append(f"| {b['target']} | error: {b['error']} |||||||||||")
            continue
        for c in b["candidates"]:
            verdict = ("**shipped**" if c["shipped"] else "pass") if c["passed"] else "fail"
            proxy = " (host proxy)" if c["latency_is_proxy"] else ""
            bundle_mb = f"{b['bundle_bytes']['total'] / 1e6:.2f}"
            rows.append(
                f"| {b['target']} | {c['precision']} ({c['runner'].split(':')[0]}) | {verdict} | "
                f"{c['ref_map50_95']:.4f} → {c['map50_95']:.4f} | {c['delta_points']:+.2f} | "
                f"{c['agreement_f1']:.3f} | {c['e2e_p50_ms']:.1f} / {c['e2e_p99_ms']:.1f}{proxy} | "
                f"{c['ref_e2e_p50_ms']:.1f} / {c['ref_e2e_p99_ms']:.1f} | "
                f"{c['speedup']:.2f}x | {c['artifact_bytes'] / 1e6:.2f} | "
                f"{bundle_mb if c['shipped'] else '–'} | {_gate_text(c)} |"
            )
    stage_rows = ["| target | stage | seconds | cached | verdict |", "|---|---|---:|---|---|"]
    seen_merge: set[str] = set()
    for b in report["bundles"]:
        for st in b.get("stages", []):
            if st["name"].startswith("merge:") and st["name"] in seen_merge:
                stage_rows.append(f"| {b['target']} | {st['name']} | – | shared | done once, above |")
                continue
            seen_merge.add(st["name"])
            stage_rows.append(
                f"| {b['target']} | {st['name']} | {st['seconds']:.1f} | {'yes' if st['cached'] else ''} | "
                f"{st['verdict']} |"
            )
        if b.get("wall_seconds") is not None:
            stage_rows.append(
                f"| {b['target']} | **target wall** (reference → bundle written; merge excluded) | {b['wall_seconds']:.1f} | | |"
            )
    proxy = [
        f"- `{b['target']}`: {c['proxy_reason']}; latency gates skipped (checked on the device by "
        f"`edge-lora build --on-device`)."
        for b in report["bundles"]
        for c in b.get("candidates", [])
        if c["latency_is_proxy"] and c["shipped"]
    ]
    subset = (
        ""
        if s["max_images"] is None
        else f" **Subset run: {s['max_images']} images, {s['runs']} runs — not a measurement.**"
    )
    sizes = "; ".join(
        f"`{b['target']}` model/ {b['bundle_bytes'].get('model', 0) / 1e6:.2f} MB + reference/ "
        f"{b['bundle_bytes'].get('reference', 0) / 1e6:.2f} MB + the rest "
        f"{(b['bundle_bytes']['total'] - b['bundle_bytes'].get('model', 0) - b['bundle_bytes'].get('reference', 0)) / 1e6:.2f} MB"
        for b in report["bundles"]
        if "bundle_bytes" in b
    )
    return (
        "# `edge-lora build`: base + LoRA adapter → verified bundles\n\n"
        f"Base `{BASE.name}`, adapter `{s['adapter']}`, data `newboards.yaml` (val: {s['images']} images "
        f"evaluated), one `build()` call for {', '.join(f'`{t}`' for t in s['targets'])} with the shipped "
        f"profiles. Reference = the unmerged base + adapter in PyTorch on this CPU; candidate = the exported "
        f"artifact run by its torch-free runner. Latency: {s['warmup']} warm-up + {s['runs']} timed runs "
        f"(PyTorch reference: at most 10 + 50), e2e = read + letterbox + inference + decode of one image; "
        f"speedup = PyTorch e2e p50 / candidate e2e p50. Rows: every precision a target tried, in its "
        f"fallback order, until one passed its gates. Bundle size = every file of the bundle folder.{subset}\n\n"
        + "\n".join(rows)
        + "\n\n"
        + ("\n".join(proxy) + "\n\n" if proxy else "")
        + "".join(f"- {n}\n" for n in NOTES)
        + "\n"
        + f"Bundle contents: {sizes}.\n\n"
        "## Build time per stage\n\n"
        "Stages as `build()` records them (`on_event` stage_end). `merge` is done once per adapter and "
        "listed under every target; the unmerged reference ONNX has the same key for the three targets, so "
        f"the second and third reuse it (cached). Cache cleared first: {s['clean']}. Total wall: "
        f"{report.get('total_seconds', 0):.1f} s.\n\n"
        + "\n".join(stage_rows)
        + f"\n\n{markdown_details(report['machine'])}\n\nMeasured {report['date']}.\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", type=Path, default=ADAPTER, help="adapter package folder")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--max-images", type=int, default=None, help="val images to evaluate (default: all 166)")
    ap.add_argument("--runs", type=int, default=100, help="timed latency runs per candidate")
    ap.add_argument("--warmup", type=int, default=10, help="warm-up runs per candidate")
    ap.add_argument("--keep-cache", action="store_true", help="reuse cached stages (default: clean build)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "work" / "build")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    if not BASE.is_file() or not DATA.is_file():
        sys.exit(f"skipped: DeepPCB data or base model not found under {SHARED} (see ../shared/README.md)")
    if not (args.adapter / "edge_lora.json").is_file():
        sys.exit(
            f"skipped: no adapter package at {args.adapter} "
            "(train it first: python benchmarks/lora_vs_full.py --configs lora8, or pass --adapter DIR)"
        )
    from edge_lora.build import build
    from edge_lora.data.checks import load_data_yaml
    from edge_lora.fileio import atomic_write_json, atomic_write_text

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    n_val = len(load_data_yaml(DATA, splits=("val",), check_labels=False).splits["val"])
    args.results.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "settings": {
            "adapter": str(args.adapter),
            "targets": targets,
            "max_images": args.max_images,
            "images": min(n_val, args.max_images or n_val),
            "runs": args.runs,
            "warmup": args.warmup,
            "clean": not args.keep_cache,
            "out": str(args.out),
        },
        "machine": machine_details(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "bundles": [],
        "events": [],
    }
    json_path, md_path = args.results / "build.json", args.results / "build.md"

    def save() -> None:
        atomic_write_json(json_path, report)
        atomic_write_text(md_path, markdown(report))

    start = time.perf_counter()
    current = {"target": None}
    events: list[dict[str, Any]] = report["events"]

    def on_event(kind: str, d: dict[str, Any]) -> None:
        t = round(time.perf_counter() - start, 2)
        if kind == "stage_start":
            stage = d["stage"]
            # export:/validate: stages name their profile; merge/reference belong to the target about to build.
            if stage.startswith(("export:", "validate:")):
                current["target"] = stage.split(":")[1]
            elif stage == "reference":
                done = {b["target"] for b in report["bundles"]}
                current["target"] = next((x for x in targets if x not in done), None)
            events.append({"t": t, "kind": kind, "stage": stage, "target": current["target"]})
            print(f"  [{t:7.1f}s] {stage} ...", flush=True)
        elif kind == "stage_end":
            events.append(
                {"t": t, "kind": kind, **{k: d[k] for k in ("name", "seconds", "cached", "verdict")}}
            )
            events[-1]["target"] = current["target"]
            tag = "cached" if d["cached"] else f"{d['seconds']:.1f}s"
            print(f"  [{t:7.1f}s] {d['name']:<40} {tag:>10}  {d['verdict']}", flush=True)
        elif kind == "bundle":
            events.append({"t": t, "kind": kind, "target": d["target"], "passed": d["passed"]})
            report["bundles"].append(summarize(d, events))
            report["total_seconds"] = t
            save()
            print(f"  [{t:7.1f}s] bundle {d['target']}: {'PASS' if d['passed'] else 'FAIL'} {d['bundle']}")

    print(f"== build {args.adapter.name} for {', '.join(targets)} -> {args.out}", flush=True)
    load0 = os.getloadavg()
    try:
        result = build(
            base=BASE,
            adapters=[args.adapter],
            targets=targets,
            data=DATA,
            out=args.out,
            clean=not args.keep_cache,
            max_images=args.max_images,
            runs=args.runs,
            warmup=args.warmup,
            on_event=on_event,
        )
        report["passed"] = result.passed
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        done = {b["target"] for b in report["bundles"]}
        report["bundles"] += [
            {"target": t, "error": f"{type(e).__name__}: {first}"[:300]} for t in targets if t not in done
        ]
        save()
        raise
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    report["loadavg"] = {"start": [round(x, 2) for x in load0], "end": [round(x, 2) for x in os.getloadavg()]}
    save()
    print(markdown(report))


if __name__ == "__main__":
    main()
