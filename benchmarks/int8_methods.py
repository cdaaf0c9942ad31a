"""INT8 methods side by side on DeepPCB new boards (issue: INT8 that keeps the unmerged model's accuracy).

Rows, per backend scheme (ONNX Runtime u8s8, TensorRT s8s8 run in ONNX Runtime as the host proxy, OpenVINO NNCF):

* ``plain``: post-training INT8 of the merged r=8 adapter (accuracy-aware search off);
* ``accuracy-aware``: the same with ``quantization.accuracy_aware`` (QDQ) / ``openvino.accuracy_aware`` (NNCF);
* ``quant-aware``: an adapter trained with ``edge-lora train --quant-aware <target>``, exported with the
  scales it was trained with (no re-calibration; OpenVINO has no such path and calibrates as usual);
  ``lsq``: the same with ``--quant-scales learned`` (LSQ scales, initialised from MinMax);
* ``ultralytics``: Ultralytics' own INT8 export of the same merged checkpoint (``format=onnx, int8`` for ONNX
  Runtime, ``format=openvino, int8`` for OpenVINO), run by the same runner.

Every row is scored by the one evaluator against the unmerged FP32 model of the plain r=8 adapter (PyTorch, base +
adapter), on the 166 new-board val images, and for quant-aware rows also against their own unmerged FP32 model.

    python benchmarks/int8_methods.py --phase train      # the three adapters (about 50 min on 2 cores)
    python benchmarks/int8_methods.py --phase evaluate   # exports + validation of every row
    python benchmarks/int8_methods.py                    # both

Adapters are trained once into benchmarks/work/int8_methods/ (kept when their train record exists).
Writes benchmarks/results/int8_methods.json and int8_methods.md (after every row).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BASE, NEWBOARDS, REPO, SHARED, target_profile  # noqa: E402
from machine import machine_details, markdown_details  # noqa: E402

CLI = [sys.executable, "-m", "edge_lora.cli.main"]
LORA = ["--rank", "8", "--alpha", "16"]  # the r=8 adapter of lora_vs_full.py / validate_bench.py
# adapter name -> extra train arguments
ADAPTERS: dict[str, list[str]] = {
    "plain": [],
    "qa-u8s8": ["--quant-aware", "cpu-onnxruntime"],
    "qa-s8s8": ["--quant-aware", "jetson"],
    "lsq-u8s8": ["--quant-aware", "cpu-onnxruntime", "--quant-scales", "learned"],
    "lsq-s8s8": ["--quant-aware", "jetson", "--quant-scales", "learned"],
}


def train_adapter(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """``edge-lora train`` of one adapter as its own process (log next to it); the train record it wrote."""
    work: Path = args.work
    record = work / f"{name}.train.json"
    if record.exists() and (work / name / "edge_lora.json").exists():
        return json.loads(record.read_text())
    work.mkdir(parents=True, exist_ok=True)
    cmd = [
        *CLI, "train", "--base", str(BASE), "--data", str(NEWBOARDS), "--out", str(work / name),
        "--epochs", str(args.epochs), "--imgsz", str(args.imgsz), "--batch", "16", "--seed", "0",
        "--overwrite", "--json", str(record), *LORA, *ADAPTERS[name],
    ]  # fmt: skip
    log = work / f"{name}.train.log"
    print(f"[train] {name}: {' '.join(cmd[3:])} (log {log})", flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"[train] {name} failed with exit {proc.returncode}; see {log}")
    result = json.loads(record.read_text())
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    record.write_text(json.dumps(result, indent=2))
    print(f"[train] {name}: {result['wall_seconds']} s, val {result.get('metrics')}", flush=True)
    return result


GOAL_POINTS = 0.2  # every shipped INT8 artifact within this many mAP50-95 points of the unmerged FP32 model
GOAL_F1 = 0.97
GOAL_LATENCY = 1.15  # at most 15% above plain INT8 of the same backend
GOAL_TRAIN = 1.5  # quant-aware training at most 1.5x plain LoRA
SCHEMES = {  # scheme -> (shipped profile, what runs it here)
    "u8s8": ("cpu-onnxruntime", "ONNX Runtime CPU"),
    "s8s8": ("jetson-orin-nano", "TensorRT-bound QDQ ONNX in ONNX Runtime CPU (host proxy)"),
    "nncf": ("intel-openvino", "OpenVINO CPU"),
}
QDQ_OFF = {"quantization.accuracy_aware": False}
# row -> (scheme, method, adapter, profile overrides, what it is); ultralytics rows export with Ultralytics
ROWS: dict[str, tuple[str, str, str, dict[str, Any], str]] = {
    "u8s8-fp32": ("u8s8", "fp32", "plain", {}, "merged FP32 ONNX (the speed INT8 must beat)"),
    "u8s8-plain": ("u8s8", "plain", "plain", QDQ_OFF, "post-training INT8, no accuracy-aware search"),
    "u8s8-accuracy-aware": ("u8s8", "accuracy-aware", "plain", {}, "shipped profile: accuracy-aware QDQ"),
    "u8s8-quant-aware": ("u8s8", "quant-aware", "qa-u8s8", QDQ_OFF, "trained scales, no search"),
    "u8s8-quant-aware+aa": ("u8s8", "quant-aware+aa", "qa-u8s8", {}, "trained scales, shipped profile"),
    "u8s8-lsq": ("u8s8", "quant-aware-lsq", "lsq-u8s8", QDQ_OFF, "learned (LSQ) scales, no search"),
    "u8s8-ultralytics": ("u8s8", "ultralytics", "plain", {}, "Ultralytics format=onnx, quantize=8"),
    # Exploration of "the placement ONNX Runtime's CPU kernels fuse": the SiLU's Sigmoid and Mul and the
    # residual Add quantized too (QLinearSigmoid/QLinearMul/QLinearAdd), so a conv block stays in int8 between
    # convs instead of DQ -> float SiLU -> Q; the head's decode stays float.
    "u8s8-int8-silu": (
        "u8s8", "explore", "plain",
        {**QDQ_OFF, "quantization.op_types": ["Conv", "Sigmoid", "Mul", "Add"],
         "quantization.keep_float_op_types": ["TopK", "GatherElements", "ReduceMax"],
         "quantization.keep_float_nodes": [r"^/model\.23/(?!.*/Conv$)"]},
        "plain INT8, SiLU and residual Add quantized too (placement experiment)",
    ),
    "s8s8-plain": ("s8s8", "plain", "plain", QDQ_OFF, "post-training INT8, no accuracy-aware search"),
    "s8s8-accuracy-aware": ("s8s8", "accuracy-aware", "plain", {}, "shipped profile: accuracy-aware QDQ"),
    "s8s8-quant-aware": ("s8s8", "quant-aware", "qa-s8s8", QDQ_OFF, "trained scales, no search"),
    "s8s8-quant-aware+aa": ("s8s8", "quant-aware+aa", "qa-s8s8", {}, "trained scales, shipped profile"),
    "s8s8-lsq": ("s8s8", "quant-aware-lsq", "lsq-s8s8", QDQ_OFF, "learned (LSQ) scales, no search"),
    "nncf-plain": ("nncf", "plain", "plain", {}, "shipped profile: NNCF mixed preset"),
    "nncf-accuracy-aware": (
        "nncf", "accuracy-aware", "plain", {"openvino.accuracy_aware": True, "gates.max_map_drop": GOAL_POINTS},
        "NNCF accuracy control to 0.2 points (tuned on train images)",
    ),
    "nncf-quant-aware": (
        "nncf", "quant-aware", "qa-u8s8", {}, "u8s8 quant-aware adapter, NNCF calibrates its own scales",
    ),
    "nncf-ultralytics": ("nncf", "ultralytics", "plain", {}, "Ultralytics format=openvino, quantize=8"),
}  # fmt: skip


def merged_checkpoint(adapter: str, work: Path) -> Path:
    """The adapter merged into the base (once)."""
    from edge_lora.merge import merge

    out = work / f"{adapter}.merged.pt"
    if not out.is_file():
        merge(BASE, work / adapter, out, data=NEWBOARDS)
    return out


def export_row(name: str, merged: Path, profile: Any, out: Path) -> dict[str, Any]:
    """Export one row's artifact: edge-lora's ``export()``, or Ultralytics' exporter for ultralytics rows."""
    scheme, method, *_ = ROWS[name]
    from export_bench import export_edge, export_ultralytics

    if method == "ultralytics":
        fmt = "openvino" if scheme == "nncf" else "onnx"
        spec = {"args": {"format": fmt, "quantize": 8, "data": str(NEWBOARDS)}}
        return export_ultralytics(spec, out, checkpoint=merged)
    spec = {"precision": "fp32" if method == "fp32" else "int8"}
    return export_edge(spec, profile, out, checkpoint=merged, data=NEWBOARDS)


def evaluate(args: argparse.Namespace, report: dict[str, Any], save: Any) -> None:
    """Export and validate every row (accuracy; latency comes from :func:`latency` afterwards)."""
    import traceback

    from edge_lora.validate.compare import validate
    from edge_lora.validate.reference import torch_reference

    names = [n for n in args.rows.split(",") if n]
    caches: dict[str, dict] = {}
    for name in names:
        scheme, method, adapter, overrides, what = ROWS[name]
        if any(r["name"] == name and "error" not in r for r in report["rows"]) and not args.fresh:
            continue
        print(f"== {name}: {what}", flush=True)
        row: dict[str, Any] = {"name": name, "scheme": scheme, "method": method, "adapter": adapter,
                               "overrides": overrides, "what": what,
                               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
        try:
            profile = target_profile(SCHEMES[scheme][0], overrides, name)
            merged = merged_checkpoint(adapter, args.work)
            row.update(export_row(name, merged, profile, args.work / "rows" / name))
            # Scored against the plain adapter's unmerged FP32 model (what a user would otherwise ship), and
            # a quant-aware adapter also against its own unmerged FP32 model.
            for ref_adapter, key in [("plain", "vs_plain"), (adapter, "vs_own")][: 1 + (adapter != "plain")]:
                rep = validate(
                    row["path"], data=NEWBOARDS, target=profile,
                    reference=torch_reference(BASE, args.work / ref_adapter, target=profile),
                    max_images=args.max_images, runs=5, warmup=1,
                    reference_cache=caches.setdefault(ref_adapter, {}),
                )  # fmt: skip
                row[key] = {
                    "ref_map50_95": rep.reference.accuracy.map50_95,
                    "map50_95": rep.candidate.accuracy.map50_95,
                    "delta_points": rep.map_delta_points,
                    "agreement_f1": rep.agreement.f1,
                }
                report["images"] = rep.images
            print(f"   Δ {row['vs_plain']['delta_points']:+.3f} pts vs plain FP32, F1 "
                  f"{row['vs_plain']['agreement_f1']:.3f}", flush=True)  # fmt: skip
        except Exception as e:  # one row's failure is a row, the others still run
            traceback.print_exc()
            row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        report["rows"] = [r for r in report["rows"] if r["name"] != name] + [row]
        save()


def latency(args: argparse.Namespace, report: dict[str, Any], save: Any) -> None:
    """End-to-end and backend latency of every row's artifact, interleaved: ``--rounds`` rounds of
    ``--runs`` timed runs per artifact, so that a drift of this shared host hits every row alike; the
    median of the rounds' p50 is reported."""
    import statistics

    from edge_lora.data.checks import load_data_yaml
    from edge_lora.runtime.loader import load_runner
    from edge_lora.validate.compare import measure_latency, runner_settings

    spec = load_data_yaml(NEWBOARDS, splits=("val",))
    paths = sorted(spec.splits["val"])[:32]
    rows = [r for r in report["rows"] if "error" not in r]
    samples: dict[str, dict[str, list[float]]] = {r["name"]: {"e2e": [], "infer": []} for r in rows}
    for k in range(args.rounds):
        for r in rows:
            profile = target_profile(SCHEMES[r["scheme"]][0], r["overrides"], r["name"])
            path = Path(r["path"])
            with load_runner(path, **runner_settings(profile, path)) as runner:
                stats = measure_latency(runner, paths, profile.imgsz, warmup=args.warmup, runs=args.runs,
                                        nc=spec.nc, conf=profile.gates.agreement_conf)  # fmt: skip
            for key in ("e2e", "infer"):
                samples[r["name"]][key].append(stats[key].p50_ms)
        print(f"[latency] round {k + 1}/{args.rounds} done", flush=True)
    for r in rows:
        s = samples[r["name"]]
        r["latency"] = {"e2e_p50_ms": round(statistics.median(s["e2e"]), 2),
                        "infer_p50_ms": round(statistics.median(s["infer"]), 2),
                        "rounds_e2e_p50_ms": [round(x, 2) for x in s["e2e"]]}  # fmt: skip
    report["latency_settings"] = {"rounds": args.rounds, "runs": args.runs, "warmup": args.warmup,
                                  "images": len(paths), "loadavg_end": list(os.getloadavg())}  # fmt: skip
    save()


def goals(report: dict[str, Any]) -> list[str]:
    """The issue's goals, each with what was measured and by how much it is missed."""
    rows = {r["name"]: r for r in report["rows"] if "error" not in r}
    out = []
    shipped = [n for n in ("u8s8-accuracy-aware", "s8s8-accuracy-aware", "nncf-plain") if n in rows]
    for n in shipped + [n for n in rows if "quant-aware" in n]:
        m = rows[n]["vs_plain"]
        ok = m["delta_points"] >= -GOAL_POINTS and m["agreement_f1"] >= GOAL_F1
        out.append(f"- `{n}` within {GOAL_POINTS} points and F1 >= {GOAL_F1}: {m['delta_points']:+.3f} points, "
                   f"F1 {m['agreement_f1']:.3f}: {'met' if ok else 'NOT met'}")  # fmt: skip
    for scheme in SCHEMES:
        plain = rows.get(f"{scheme}-plain", {}).get("latency")
        for n, r in rows.items():
            if r["scheme"] != scheme or r["method"] in ("plain", "fp32", "ultralytics") or "latency" not in r:
                continue
            if plain:
                ratio = r["latency"]["e2e_p50_ms"] / plain["e2e_p50_ms"]
                out.append(f"- `{n}` e2e p50 at most {GOAL_LATENCY:.2f}x plain INT8: {ratio:.2f}x: "
                           f"{'met' if ratio <= GOAL_LATENCY else 'NOT met'}")  # fmt: skip
    trains = report.get("training", {})
    plain_s = trains.get("plain", {}).get("seconds_per_epoch")
    for name, t in trains.items():
        if name != "plain" and plain_s and t.get("seconds_per_epoch"):
            ratio = t["seconds_per_epoch"] / plain_s
            out.append(f"- `{name}` training at most {GOAL_TRAIN}x plain LoRA per epoch: {ratio:.2f}x: "
                       f"{'met' if ratio <= GOAL_TRAIN else 'NOT met'}")  # fmt: skip
    return out


def markdown(report: dict[str, Any]) -> str:
    """The rows and goals as a Markdown page with the machine's details."""
    lines = [
        "# INT8 methods on DeepPCB new boards",
        "",
        f"Base `{BASE.name}`, r=8 LoRA adapters (5 epochs, imgsz 640, seed 0), newboards val "
        f"({report.get('images')} images). Every row is scored by the one evaluator against the **plain** "
        "adapter's unmerged FP32 model in PyTorch (Δ plain); quant-aware rows also against their own unmerged "
        "FP32 model (Δ own). Latency: this 2-core host, one image at a time, interleaved rounds (median of "
        "the rounds' p50); the s8s8 rows are the TensorRT-bound graph run by ONNX Runtime on the CPU, a host "
        "proxy for accuracy only: their latency says nothing about a Jetson.",
        "",
        "| row | what | mAP50-95 | Δ plain | Δ own | agreement F1 | e2e p50 ms | infer p50 ms | export s | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    order = {n: i for i, n in enumerate(ROWS)}
    for r in sorted(report["rows"], key=lambda r: order.get(r["name"], 99)):
        if "error" in r:
            lines.append(f"| {r['name']} | {r['what']} | error: {r['error']} ||||||||")
            continue
        m, own, lat = r["vs_plain"], r.get("vs_own"), r.get("latency", {})
        float_layers = (r.get("details") or {}).get("accuracy_aware", {}).get("float_nodes")
        notes = "; ".join(
            [*r.get("notes", []), *([f"float: {', '.join(float_layers)}"] if float_layers else [])]
        )
        own_delta = f"{own['delta_points']:+.3f}" if own else "–"
        lines.append(
            f"| {r['name']} | {r['what']} | {m['map50_95']:.4f} | {m['delta_points']:+.3f} | {own_delta} | "
            f"{m['agreement_f1']:.3f} | {lat.get('e2e_p50_ms', float('nan')):.1f} | "
            f"{lat.get('infer_p50_ms', float('nan')):.1f} | {r.get('export_seconds', float('nan')):.0f} | {notes} |"
        )
    if report.get("training"):
        lines += ["", "## Training", "", "| adapter | s/epoch (loop) | wall s | val mAP50-95 (Ultralytics) |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        for name, t in report["training"].items():
            lines.append(f"| {name} | {t.get('seconds_per_epoch', 0):.1f} | {t.get('wall_seconds', 0):.0f} | "
                         f"{t.get('metrics', {}).get('mAP50-95', float('nan')):.4f} |")  # fmt: skip
    lines += ["", "## Goals", "", *goals(report), "", markdown_details(report["machine"]), "",
              f"Measured {report['date']}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=["train", "evaluate", "latency", "all"], default="all")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--adapters", default=",".join(ADAPTERS), help="comma-separated subset to train")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of: {', '.join(ROWS)}")
    ap.add_argument("--fresh", action="store_true", help="redo rows already in the results")
    ap.add_argument("--max-images", type=int)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds")
    ap.add_argument("--runs", type=int, default=50, help="timed runs per artifact and round")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "int8_methods")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    if not BASE.is_file() or not NEWBOARDS.is_file():
        sys.exit(f"skipped: DeepPCB data or base model not found under {SHARED}")
    unknown = sorted(set(args.rows.split(",")) - set(ROWS) - {""})
    if unknown:
        sys.exit(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    if args.phase in ("train", "all"):
        for name in args.adapters.split(","):
            train_adapter(name, args)
    if args.phase == "train":
        return

    from edge_lora.fileio import atomic_write_json, atomic_write_text

    json_path = args.results / "int8_methods.json"
    report: dict[str, Any] = json.loads(json_path.read_text()) if json_path.is_file() else {"rows": []}
    report.update(machine=machine_details(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    report["training"] = {
        n: {k: v for k, v in json.loads(p.read_text()).items() if k in ("seconds_per_epoch", "wall_seconds",
                                                                         "seconds", "metrics", "quant_scheme")}
        for n in ADAPTERS if (p := args.work / f"{n}.train.json").is_file()
    }  # fmt: skip

    def save() -> None:
        args.results.mkdir(parents=True, exist_ok=True)
        atomic_write_json(json_path, report)
        atomic_write_text(args.results / "int8_methods.md", markdown(report))

    if args.phase in ("evaluate", "all"):
        evaluate(args, report, save)
    if args.phase in ("latency", "all"):
        latency(args, report, save)
    save()
    print(markdown(report))


if __name__ == "__main__":
    main()
