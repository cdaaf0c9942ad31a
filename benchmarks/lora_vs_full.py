"""LoRA vs head-only vs full fine-tuning on DeepPCB's new boards (issue: LoRA fine-tuning and exact merge).

Runs each configuration as its own ``edge-lora train`` process (so peak RSS is per run), with the same epochs,
imgsz and seed, from ../shared/models/deeppcb-base-yolo26n.pt on ../shared/datasets/deeppcb/newboards.yaml.
Metrics are those the trainer records: Ultralytics' validator on the new boards' val split, run on the
merged best adapter (LoRA) or the best checkpoint (full / head-only).

    python benchmarks/lora_vs_full.py --epochs 10            # all configurations (about an hour on 2 cores)
    python benchmarks/lora_vs_full.py --configs lora8 --epochs 1   # one quick run

Writes benchmarks/results/lora_vs_full.json and lora_vs_full.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BASE, NEWBOARDS, REPO, SHARED  # noqa: E402
from machine import machine_details, markdown_details  # noqa: E402

DATA = NEWBOARDS
CLI = [sys.executable, "-m", "edge_lora.cli.main"]

CONFIGS: dict[str, list[str]] = {
    "lora4": ["--rank", "4", "--alpha", "8"],
    "lora8": ["--rank", "8", "--alpha", "16"],
    "lora16": ["--rank", "16", "--alpha", "32"],
    "lora16-all": ["--rank", "16", "--alpha", "32", "--targets", "all", "--head", "frozen"],
    # Head-only: plain Ultralytics fine-tuning with the 23 layers before the Detect head frozen.
    "head": ["--full", "--set", "freeze=23"],
    "full": ["--full"],
}


def base_map(imgsz: int, batch: int) -> dict[str, float]:
    """The base model's own mAP on the new boards' val split: the starting point."""
    from ultralytics import YOLO

    m = YOLO(str(BASE)).val(data=str(DATA), imgsz=imgsz, batch=batch, plots=False, verbose=False)
    return {"mAP50-95": round(float(m.box.map), 6), "mAP50": round(float(m.box.map50), 6)}


def head_params() -> int:
    """Parameters of the Detect head (what head-only fine-tuning trains), DFL excluded."""
    from ultralytics import YOLO

    model = YOLO(str(BASE)).model
    head = model.model[-1]
    return sum(p.numel() for n, p in head.named_parameters() if not n.startswith("dfl."))


def run(name: str, args: list[str], epochs: int, imgsz: int, batch: int, work: Path) -> dict:
    out = work / name
    json_path = work / f"{name}.json"
    cmd = [
        *CLI,
        "train",
        "--base",
        str(BASE),
        "--data",
        str(DATA),
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--imgsz",
        str(imgsz),
        "--batch",
        str(batch),
        "--overwrite",
        "--json",
        str(json_path),
        *args,
    ]
    log = work / f"{name}.log"
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if proc.returncode:
        return {"name": name, "error": f"exit {proc.returncode}; see {log}"}
    result = json.loads(json_path.read_text())
    result.update(name=name, args=" ".join(args), wall_seconds=round(time.perf_counter() - start, 1))
    result["seconds_per_epoch"] = round(result["seconds"] / max(result["epochs"], 1), 1)
    return result


def markdown(report: dict) -> str:
    rows = [
        "| config | trainable params | share | artifact bytes | s/epoch | peak RSS MB | mAP50-95 | mAP50 | vs full mAP50-95 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = report["base_metrics"]
    rows.append(
        f"| base (no fine-tuning) | 0 | 0% | – | – | – | {base['mAP50-95']:.4f} | {base['mAP50']:.4f} | |"
    )
    full = next((r for r in report["runs"] if r.get("name") == "full" and "metrics" in r), None)
    for r in report["runs"]:
        if "error" in r:
            rows.append(f"| {r['name']} | {r['error']} |||||||")
            continue
        rel = f"{100 * r['metrics']['mAP50-95'] / full['metrics']['mAP50-95']:.1f}%" if full else "–"
        rows.append(
            f"| {r['name']} (`{r['args']}`) | {r['trainable_params']:,} | {100 * r['trainable_share']:.2f}% | "
            f"{r['artifact_bytes']:,} | {r['seconds_per_epoch']} | {r['peak_rss_mb']:.0f} | "
            f"{r['metrics'].get('mAP50-95', 0):.4f} | {r['metrics'].get('mAP50', 0):.4f} | {rel} |"
        )
    s = report["settings"]
    return (
        f"# LoRA vs full fine-tuning on DeepPCB new boards\n\n"
        f"Base `{BASE.name}`, data `newboards.yaml` (val: 166 images), {s['epochs']} epochs, imgsz {s['imgsz']}, "
        f"batch {s['batch']}, seed 0, CPU. mAP: Ultralytics validator on the merged best adapter / best "
        f"checkpoint. s/epoch includes the per-epoch validation. Head-only trainable params: "
        f"{report['head_params']:,} (the Detect head, DFL excluded).\n\n"
        + "\n".join(rows)
        + f"\n\n{markdown_details(report['machine'])}\n\nMeasured {report['date']}.\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "lora_vs_full")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    if not BASE.is_file() or not DATA.is_file():
        sys.exit(f"skipped: DeepPCB data or base model not found under {SHARED} (see ../shared/README.md)")
    args.work.mkdir(parents=True, exist_ok=True)
    report = {
        "settings": {"epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch},
        "machine": machine_details(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "base_metrics": base_map(args.imgsz, args.batch),
        "head_params": head_params(),
        "runs": [],
    }
    args.results.mkdir(parents=True, exist_ok=True)
    for name in args.configs.split(","):
        print(f"== {name}", flush=True)
        result = run(name, CONFIGS[name], args.epochs, args.imgsz, args.batch, args.work)
        if (
            name == "head" and "trainable_params" in result
        ):  # --full reports every weight; only the head trains
            result["trainable_params"] = report["head_params"]
            result["trainable_share"] = report["head_params"] / result["total_params"]
        report["runs"].append(result)
        from edge_lora.fileio import atomic_write_json, atomic_write_text

        atomic_write_json(
            args.results / "lora_vs_full.json", report
        )  # after every run: partial results survive
        atomic_write_text(args.results / "lora_vs_full.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
