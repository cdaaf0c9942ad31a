"""Validate merged + quantized artifacts against the unmerged PyTorch model on DeepPCB new boards
(issue: torch-free runtime, validation against the unmerged model, on-device benchmark).

Adapter: an adapter trained by benchmarks/lora_vs_full.py (default its lora8). Artifacts: ONNX FP32 and ONNX
INT8 (cpu-onnxruntime) and OpenVINO INT8 and BF16 (intel-openvino), imgsz 640, each validated with `validate()` on
newboards val against base + adapter run unmerged in PyTorch — one preprocessing, one evaluator.

    python benchmarks/validate_bench.py [--adapter DIR] [--max-images N] [--runs 100]

Writes benchmarks/results/validate.json and validate.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BASE, NEWBOARDS, REPO, SHARED, validate_merged  # noqa: E402
from machine import machine_details, markdown_details  # noqa: E402

DATA = NEWBOARDS
ROWS = [
    ("cpu-onnxruntime", "fp32"),
    ("cpu-onnxruntime", "int8"),
    ("intel-openvino", "int8"),
    ("intel-openvino", "bf16"),
]


def goals(rows_list: list[dict]) -> dict[str, bool]:
    """The issue's three goals, from the rows present."""
    rows = {r["name"]: r for r in rows_list if "error" not in r}
    fp32 = rows.get("cpu-onnxruntime fp32")
    return {
        # 0.0 up to float summation noise: 1e-3 points is 1e-5 mAP, far below what is ever reported.
        "merged FP32 agreement F1 >= 0.999 and mAP delta 0.0 (|Δ| < 0.001 points)": bool(fp32)
        and fp32["agreement_f1"] >= 0.999
        and abs(fp32["delta_points"]) < 1e-3,
        "every INT8 mAP50-95 drop <= 0.2 points": all(
            r["delta_points"] >= -0.2 for n, r in rows.items() if "int8" in n
        ),
        "best e2e p50 >= 5x faster than unmerged PyTorch": max((r["speedup"] or 0) for r in rows.values())
        >= 5.0,
    }


def markdown(report: dict) -> str:
    lines = [
        "# Validation vs the unmerged model: DeepPCB new boards",
        "",
        f"Adapter `{report['adapter']}` on `{BASE.name}`; val {report['images']} images at imgsz 640; reference: base + "
        "adapter unmerged in PyTorch (CPU, same process, same preprocessing and evaluator). Latency: this 2-core "
        "host is the device for these CPU targets; `e2e` = read + letterbox + infer + decode per image.",
        "",
        "| artifact | mAP50-95 ref | mAP50-95 | Δ points | mAP50 | agreement F1 | infer p50 ms | e2e p50 ms | e2e p99 ms "
        "| ref e2e p50 ms | speedup e2e | size MB | gates |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['error']} |" + " |" * 11)
            continue
        lines.append(
            f"| {r['name']} | {r['ref_map50_95']:.4f} | {r['map50_95']:.4f} | {r['delta_points']:+.3f} | {r['map50']:.4f} | "
            f"{r['agreement_f1']:.4f} | {r['infer_p50_ms']:.2f} | {r['e2e_p50_ms']:.2f} | {r['e2e_p99_ms']:.2f} | "
            f"{r['ref_e2e_p50_ms']:.1f} | {r['speedup']:.2f}x | {r['bytes'] / 1e6:.1f} | {'PASS' if r['passed'] else 'FAIL'} |"
        )
    lines += [
        "",
        "Goals: merged FP32 agreement F1 >= 0.999 and mAP delta 0.0; INT8 drop <= 0.2 points; best artifact's e2e "
        "p50 >= 5x faster than the unmerged PyTorch model.",
        "",
    ]
    for goal, ok in report["goals"].items():
        lines.append(f"- {goal}: **{'met' if ok else 'NOT met'}**")
    lines += [
        "",
        "The shipped INT8 settings above are the profiles' defaults. `int8_sweep.md` tries others on the same "
        "merged model: OpenVINO accuracy-aware INT8 (max drop 0.2) reaches -0.05 points; no ONNX Runtime QDQ "
        "variant tried reaches 0.2 (best: entropy calibration, -0.38 at twice the latency).",
    ]
    lines += ["", markdown_details(report["machine"]), "", f"Measured {report['date']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", type=Path, default=REPO / "benchmarks" / "work" / "lora_vs_full" / "lora8")
    ap.add_argument("--max-images", type=int)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "validate")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    if not BASE.is_file() or not DATA.is_file():
        sys.exit(f"skipped: DeepPCB data or base model not found under {SHARED}")
    if not (args.adapter / "edge_lora.json").is_file():
        sys.exit(
            f"skipped: adapter {args.adapter} not found; run benchmarks/lora_vs_full.py --configs lora8 first"
        )
    from edge_lora.export.api import export
    from edge_lora.fileio import atomic_write_json, atomic_write_text
    from edge_lora.merge import merge

    args.work.mkdir(parents=True, exist_ok=True)
    merged = args.work / "merged.pt"
    if not merged.is_file():
        merge(BASE, args.adapter, merged, data=DATA)
    report = {
        "adapter": str(args.adapter),
        "machine": machine_details(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rows": [],
        "images": None,
        "goals": {},
    }
    exports: dict[str, object] = {}
    reference_cache: dict = {}  # base + adapter run once in PyTorch for all rows
    for target, precision in ROWS:
        name = f"{target} {precision}"
        print(f"== {name}", flush=True)
        try:
            if target not in exports:
                chain = [p for t, p in ROWS if t == target]
                exports[target] = export(
                    merged, target, args.work / target, data=DATA, precisions=chain, overwrite=True
                )
            art = next(a for a in exports[target].artifacts if a.precision == precision)
            rep = validate_merged(art.path, target, DATA, args, reference_cache)
        except Exception as e:  # a benchmark row reports its failure and the others still run
            report["rows"].append({"name": name, "error": f"{type(e).__name__}: {e}".splitlines()[0]})
            continue
        report["images"] = rep.images
        report["rows"].append(
            {
                "name": name,
                "artifact": str(art.path),
                "bytes": art.bytes,
                "export_seconds": round(art.seconds, 1),
                "ref_map50_95": rep.reference.accuracy.map50_95,
                "map50_95": rep.candidate.accuracy.map50_95,
                "map50": rep.candidate.accuracy.map50,
                "delta_points": rep.map_delta_points,
                "agreement_f1": rep.agreement.f1,
                "infer_p50_ms": rep.candidate.latency["infer"].p50_ms,
                "e2e_p50_ms": rep.candidate.latency["e2e"].p50_ms,
                "e2e_p99_ms": rep.candidate.latency["e2e"].p99_ms,
                "ref_e2e_p50_ms": rep.reference.latency["e2e"].p50_ms,
                "speedup": rep.speedup,
                "passed": rep.passed,
                "gates": rep.gates.to_dict(),
                "parity": rep.parity,
            }
        )
        report["goals"] = goals(report["rows"])
        args.results.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.results / "validate.json", report)
        atomic_write_text(args.results / "validate.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
