"""New defect classes (issue 12): LoRA variants vs head-only vs full fine-tuning on PV-Multi-Defect.

The DeepPCB base never saw the five PV classes, so ``--head auto`` rebuilds the class branch and trains it
densely. Each configuration runs as its own ``edge-lora train`` process (same epochs, imgsz, batch, seed) from
../shared/models/deeppcb-base-yolo26n.pt on ../shared/datasets/pv-multi-defect/pv.yaml (optionally a fixed
subset of its train images; the val split stays whole). Per-epoch val mAP is read from the lines
``edge-lora train`` prints when stdout is not a terminal, with the epoch's seconds (training loop, validation
and checkpoint): the curves and the equal-wall-time comparison use the cumulative sum of those.

    python benchmarks/new_classes.py --imgsz 256 --epochs 6           # every configuration, in priority order
    python benchmarks/new_classes.py --configs full,lora8 --epochs 1 --imgsz 64 --work /tmp/nc --results /tmp/nc

Configurations already in the results JSON (same name and epochs) are kept and skipped, so a cut-off run can be
continued. The same-class control (DeepPCB new boards) is read from results/lora_vs_full.json, not retrained.
Writes benchmarks/results/new_classes.json and new_classes.md after every configuration.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BASE, REPO, SHARED  # noqa: E402
from lora_vs_full import CLI  # noqa: E402
from machine import machine_details, markdown_details  # noqa: E402

PV = SHARED / "datasets" / "pv-multi-defect"
DATA = PV / "pv.yaml"
CONTROL = REPO / "benchmarks" / "results" / "lora_vs_full.json"

#: The learning-rate / warm-up variants of LoRA r=8 whose best recipe configs 6 and 7 reuse.
TUNED = ("lora8-lr5e-3", "lora8-lr5e-3-warm0", "lora8-lr2e-3", "lora8-lr1e-2")
RECIPE = "{recipe}"  # placeholder in CONFIGS: the best TUNED run's --optimizer/--lr/--set flags

#: In priority order (the brief's list); the ones after head/lora16/all are optional extras.
CONFIGS: dict[str, list[str]] = {
    "full": ["--full"],
    "lora8": ["--rank", "8", "--alpha", "16"],
    "lora8-lr5e-3": ["--rank", "8", "--alpha", "16", "--optimizer", "AdamW", "--lr", "0.005"],
    "lora8-lr5e-3-warm0": [
        *("--rank", "8", "--alpha", "16", "--optimizer", "AdamW", "--lr", "0.005"),
        *("--set", "warmup_epochs=0"),
    ],
    # Head-only: plain Ultralytics fine-tuning with the 23 layers before the Detect head frozen.
    "head": ["--full", "--set", "freeze=23"],
    "lora16-tuned": ["--rank", "16", "--alpha", "32", RECIPE],
    # --targets all: LoRA on the head's box branch too (the class branch is trained densely anyway).
    "lora8-all-tuned": ["--rank", "8", "--alpha", "16", "--targets", "all", RECIPE],
    "lora8-lr2e-3": ["--rank", "8", "--alpha", "16", "--optimizer", "AdamW", "--lr", "0.002"],
    "lora8-lr1e-2": ["--rank", "8", "--alpha", "16", "--optimizer", "AdamW", "--lr", "0.01"],
    "lora4-tuned": ["--rank", "4", "--alpha", "8", RECIPE],
    "full-warm0": ["--full", "--set", "warmup_epochs=0"],
    # The new-class recipe (edge_lora/train/recipe.py, no tuning flags): --targets all, --norm train,
    # AdamW 5e-3. The others take one ingredient out, or the rank down.
    "lora8-recipe": ["--rank", "8", "--alpha", "16"],
    "lora8-recipe-norm-frozen": ["--rank", "8", "--alpha", "16", "--norm", "frozen"],
    "lora4-recipe": ["--rank", "4", "--alpha", "8"],
    # rsLoRA: scale 16/sqrt(8) = 5.7 instead of 2.
    "lora8-recipe-rslora": ["--rank", "8", "--alpha", "16", "--rslora"],
    # --head lora: only the new final class convs (and the depthwise blocks) dense, the class branch with LoRA.
    "lora4-recipe-headlora": ["--rank", "4", "--alpha", "8", "--head", "lora"],
    "lora8-recipe-headlora": ["--rank", "8", "--alpha", "16", "--head", "lora"],
    # The same flags as lora8-recipe, run after training computed the adapted convs through the merged weight
    # (edge_lora/train/merged_forward.py): same model, less CPU per epoch.
    "lora8-recipe-merged-forward": ["--rank", "8", "--alpha", "16"],
    "lora8-old-defaults": [
        *("--rank", "8", "--alpha", "16", "--targets", "backbone,neck", "--norm", "frozen"),
        *("--set", "optimizer=auto"),
    ],
}

EPOCH_LINE = re.compile(
    r"epoch (\d+)/(\d+) .*val mAP50-95 ([\d.]+|nan) mAP50 ([\d.]+|nan)\s+(\d+)s", re.IGNORECASE
)
BEST_LINE = re.compile(r"best weights: val mAP50-95 ([\d.]+|nan) mAP50 ([\d.]+|nan)")


def subset_yaml(n: int, work: Path) -> Path:
    """A data YAML with ``n`` train images (a stable choice: lowest md5 of the file name) and the whole val split.

    Returns pv.yaml itself when ``n`` is 0 or not below the train split's size.
    """
    import yaml

    images = sorted(p for p in (PV / "images" / "train").iterdir() if p.suffix.lower() in (".jpg", ".png"))
    if not n or n >= len(images):
        return DATA
    chosen = sorted(images, key=lambda p: hashlib.md5(p.name.encode()).hexdigest())[:n]
    listing = work / f"train_subset_{n}.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted(chosen)))
    names = yaml.safe_load(DATA.read_text())["names"]
    path = work / f"pv_train{n}.yaml"
    # Absolute paths: Ultralytics finds each label by replacing /images/ with /labels/ in the image path.
    path.write_text(
        yaml.safe_dump(
            {"train": str(listing), "val": str(PV / "images" / "val"), "names": names}, sort_keys=False
        )
    )
    return path


def head_params(nc: int) -> dict[str, int]:
    """Parameters of the Detect head rebuilt for ``nc`` classes: all of it (DFL excluded; what head-only
    trains) and its class branches (what ``--head auto`` trains densely for new classes)."""
    from ultralytics import YOLO

    from edge_lora.train.inject import rebuild_for_classes

    model = rebuild_for_classes(YOLO(str(BASE)).model, {i: str(i) for i in range(nc)})
    head = model.model[-1]
    named = list(head.named_parameters())
    return {
        "detect_head": sum(p.numel() for n, p in named if not n.startswith("dfl.")),
        "class_branches": sum(p.numel() for n, p in named if n.split(".")[0] in ("cv3", "one2one_cv3")),
        # The only tensors the new classes force to be new: the final 1x1 class conv of each scale and branch.
        "final_class_convs": sum(
            p.numel()
            for n, p in named
            if n.split(".")[0] in ("cv3", "one2one_cv3") and n.split(".")[2] == "2"
        ),
        "total": sum(p.numel() for p in model.parameters()),
    }


def resolve_args(args: list[str], report: dict) -> tuple[list[str], str | None]:
    """Replace the recipe placeholder by the flags of the best TUNED run so far (by best mAP50-95)."""
    if RECIPE not in args:
        return args, None
    done = [r for r in report["runs"] if r.get("name") in TUNED and r.get("curve")]
    if not done:
        raise SystemExit("a *-tuned config needs one of the lr/warm-up runs first: " + ", ".join(TUNED))
    best = max(done, key=lambda r: r["best"]["mAP50-95"])
    flags = CONFIGS[best["name"]]
    recipe = flags[flags.index("--optimizer") :]  # everything after rank/alpha
    i = args.index(RECIPE)
    return [*args[:i], *recipe, *args[i + 1 :]], best["name"]


def tree_cpu_seconds(pid: int) -> float | None:
    """User+system CPU seconds of ``pid`` and its live descendants (dataloader workers), reaped children
    included: a cost that a shared, contended CPU distorts far less than wall time."""
    import os

    stats: dict[int, list[str]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                text = (d / "stat").read_text()
            except OSError:
                continue
            stats[int(d.name)] = text.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
    if pid not in stats:
        return None
    children: dict[int, list[int]] = {}
    for p, f in stats.items():
        children.setdefault(int(f[1]), []).append(p)
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    # Fields 14-17 of /proc/PID/stat (utime, stime, cutime, cstime) are 11-14 after the comm field.
    ticks = sum(sum(int(x) for x in stats[p][11:15]) for p in tree if p in stats)
    return ticks / os.sysconf("SC_CLK_TCK")


def run(name: str, args: list[str], data: Path, settings: dict, work: Path) -> dict:
    """One ``edge-lora train`` process; its JSON record plus the per-epoch curve read from its stdout."""
    out, json_path, log = work / name, work / f"{name}.json", work / f"{name}.log"
    cmd = [
        *CLI,
        "train",
        *("--base", str(BASE), "--data", str(data), "--out", str(out)),
        *("--epochs", str(settings["epochs"]), "--imgsz", str(settings["imgsz"])),
        *("--batch", str(settings["batch"]), "--seed", "0", "--overwrite", "--json", str(json_path)),
        *args,
    ]
    curve: list[dict[str, float]] = []
    best_line: dict[str, float] | None = None
    cumulative = 0.0
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with (
        open(log, "w") as f,
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO, text=True, bufsize=1
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            f.flush()
            if m := EPOCH_LINE.search(line):
                cumulative += float(m.group(5))
                cpu = tree_cpu_seconds(proc.pid)
                curve.append(
                    {
                        "epoch": int(m.group(1)),
                        "mAP50-95": float(m.group(3)),
                        "mAP50": float(m.group(4)),
                        "seconds": float(m.group(5)),
                        "cumulative_seconds": round(cumulative, 1),
                        "wall_since_start": round(time.perf_counter() - start, 1),
                        "cpu_since_start": None if cpu is None else round(cpu, 1),
                    }
                )
                print(f"   {name}: {line.strip()}", flush=True)
            elif m := BEST_LINE.search(line):
                best_line = {"mAP50-95": float(m.group(1)), "mAP50": float(m.group(2))}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the run was reaped: all its CPU, workers included
    cpu_total = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    base = {"name": name, "args": " ".join(args), "curve": curve, "cpu_seconds": round(cpu_total, 1)}
    if proc.returncode:
        return {**base, "error": f"exit {proc.returncode}; see {log}"}
    result = json.loads(json_path.read_text())
    result.update(base, wall_seconds=round(time.perf_counter() - start, 1))
    result["seconds_per_epoch"] = round(cumulative / max(len(curve), 1), 1)
    # The final validation of the best weights (merged adapter for LoRA, which prints no line for it).
    result["best_weights_val"] = best_line or result.get("metrics")
    if curve:
        top = max(curve, key=lambda c: c["mAP50-95"])
        result["best"] = {"epoch": top["epoch"], "mAP50-95": top["mAP50-95"], "mAP50": top["mAP50"]}
        result["final"] = {"mAP50-95": curve[-1]["mAP50-95"], "mAP50": curve[-1]["mAP50"]}
    return result


def interpolate(curve: list[dict], seconds: float, key: str = "mAP50-95") -> tuple[float, bool]:
    """``key`` of ``curve`` at ``seconds`` of cumulative training (linear between epochs, 0 at 0 s: a rebuilt
    class branch starts at no detections). Second value: False when ``seconds`` lies past the curve's end
    (then its last value is returned)."""
    points = [(0.0, 0.0)] + [(c["cumulative_seconds"], c[key]) for c in curve]
    for (t0, v0), (t1, v1) in zip(points, points[1:], strict=False):
        if seconds <= t1 + 1e-6:
            return v0 + (v1 - v0) * (seconds - t0) / max(t1 - t0, 1e-9), True
    return points[-1][1], False


def cpu_curve(run: dict) -> list[dict]:
    """The run's curve on a CPU-seconds axis (as ``cumulative_seconds``, for :func:`interpolate`): measured per
    epoch where recorded, else the process's total CPU spread evenly over its epochs."""
    curve = run["curve"]
    if all(c.get("cpu_since_start") is not None for c in curve):
        return [{**c, "cumulative_seconds": c["cpu_since_start"]} for c in curve]
    n = len(curve)
    return [{**c, "cumulative_seconds": run["cpu_seconds"] * (i + 1) / n} for i, c in enumerate(curve)]


def compare(report: dict) -> None:
    """Add each run's share of full fine-tuning at equal epochs and at equal wall time (in place)."""
    full = next((r for r in report["runs"] if r["name"] == "full" and r.get("curve")), None)
    for r in report["runs"]:
        if not full or not r.get("curve"):
            continue
        n = min(len(r["curve"]), len(full["curve"]))
        full_at_n = full["curve"][n - 1]["mAP50-95"]
        mine_at_n = r["curve"][n - 1]["mAP50-95"]
        t = r["curve"][-1]["cumulative_seconds"]
        full_at_t, inside = interpolate(full["curve"], t)
        r["vs_full"] = {
            "equal_epochs": n,
            "equal_epochs_pct": round(100 * mine_at_n / full_at_n, 1) if full_at_n else None,
            "best_vs_best_pct": round(100 * r["best"]["mAP50-95"] / full["best"]["mAP50-95"], 1)
            if full["best"]["mAP50-95"]
            else None,
            "wall_seconds": t,
            "full_at_wall": round(full_at_t, 4),
            "full_curve_covers_wall": inside,
            "equal_wall_pct": round(100 * r["final"]["mAP50-95"] / full_at_t, 1) if full_at_t else None,
        }
        if r.get("cpu_seconds") and full.get("cpu_seconds"):
            full_at_cpu, inside = interpolate(cpu_curve(full), r["cpu_seconds"])
            r["vs_full"].update(
                cpu_seconds=r["cpu_seconds"],
                full_at_cpu=round(full_at_cpu, 4),
                full_curve_covers_cpu=inside,
                equal_cpu_pct=round(100 * r["final"]["mAP50-95"] / full_at_cpu, 1) if full_at_cpu else None,
            )
            if not inside:  # the run cost more CPU than all of full's: compare it at full's budget instead
                mine_at_full, _ = interpolate(cpu_curve(r), full["cpu_seconds"])
                r["vs_full"].update(
                    mine_at_full_cpu=round(mine_at_full, 4),
                    full_curve_covers_cpu=True,
                    equal_cpu_pct=round(100 * mine_at_full / full["final"]["mAP50-95"], 1),
                    equal_cpu_at="full's budget",
                )


def control() -> dict[str, Any] | None:
    """The same-class control from lora_vs_full.json (DeepPCB new boards, imgsz 640): mAP50-95 vs full."""
    if not CONTROL.is_file():
        return None
    doc = json.loads(CONTROL.read_text())
    runs = {r["name"]: r for r in doc["runs"] if "metrics" in r}
    if "full" not in runs:
        return None
    full = runs["full"]["metrics"]["mAP50-95"]
    return {
        "settings": doc["settings"],
        "date": doc["date"],
        "runs": {
            n: {
                "trainable_share": r["trainable_share"],
                "mAP50-95": r["metrics"]["mAP50-95"],
                "pct_of_full": round(100 * r["metrics"]["mAP50-95"] / full, 1),
            }
            for n, r in runs.items()
        },
    }


def goals(report: dict) -> str:
    """The issue's PV goals per LoRA run: <= 10% trainable, >= 95% of full at equal epochs, >= 100% at equal
    CPU time (wall time on this shared CPU measures the neighbours too)."""
    lines = [
        "\n## Goals (issue 12, new classes)\n",
        "LoRA at <= 10% trainable parameters (head included) reaching >= 95% of full fine-tuning's mAP50-95 at "
        "equal epochs and >= 100% at equal CPU time:\n",
        "| LoRA run | share | <= 10% | equal epochs | >= 95% | equal CPU | >= 100% | all three |",
        "|---|---:|:-:|---:|:-:|---:|:-:|:-:|",
    ]
    met_any = False
    for r in report["runs"]:
        if r.get("mode") != "lora" or "vs_full" not in r:
            continue
        v = r["vs_full"]
        ok = (
            r["trainable_share"] <= 0.10,
            (v.get("equal_epochs_pct") or 0) >= 95,
            (v.get("equal_cpu_pct") or 0) >= 100,
        )
        met_any |= all(ok)
        yes = ["met" if o else "NOT met" for o in ok]
        lines.append(
            f"| {r['name']} | {100 * r['trainable_share']:.2f}% | {yes[0]} | {_pct(v.get('equal_epochs_pct'))} "
            f"| {yes[1]} | {_pct(v.get('equal_cpu_pct'), v.get('full_curve_covers_cpu', True))} | {yes[2]} "
            f"| {'met' if all(ok) else 'NOT met'} |"
        )
    lines.append(f"\nOverall: **{'met' if met_any else 'NOT met'}** by any LoRA run measured here.\n")
    return "\n".join(lines)


def _pct(v: float | None, covers: bool = True) -> str:
    if v is None:
        return "–"
    return f"{v:.1f}%" if covers else f"{v:.1f}%*"


def markdown(report: dict) -> str:
    """The results page: settings, the summary table, the per-epoch curves, the goals and the control."""
    s, hp = report["settings"], report["head_params"]
    rows = [
        "| config | flags | trainable | share | s/epoch | best mAP50-95 (ep) | final mAP50-95 | best mAP50 "
        "| final mAP50 | CPU s (run) | % of full, equal epochs | % of full, equal CPU time "
        "| % of full, equal wall time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["runs"]:
        flags = f"`{r['args']}`" + (f" (recipe of {r['recipe_from']})" if r.get("recipe_from") else "")
        if "error" in r:
            rows.append(f"| {r['name']} | {flags} | {r['error']} |||||||||||")
            continue
        v = r.get("vs_full", {})
        rows.append(
            f"| {r['name']} | {flags} | {r['trainable_params']:,} | {100 * r['trainable_share']:.2f}% | "
            f"{r['seconds_per_epoch']} | {r['best']['mAP50-95']:.4f} ({r['best']['epoch']}) | "
            f"{r['final']['mAP50-95']:.4f} | {r['best']['mAP50']:.4f} | {r['final']['mAP50']:.4f} | "
            f"{r.get('cpu_seconds') or '–'} | {_pct(v.get('equal_epochs_pct'))} | "
            f"{_pct(v.get('equal_cpu_pct'), v.get('full_curve_covers_cpu', True))} | "
            f"{_pct(v.get('equal_wall_pct'), v.get('full_curve_covers_wall', True))} |"
        )
    done = [r for r in report["runs"] if r.get("curve")]
    epochs = max((len(r["curve"]) for r in done), default=0)
    curves = [
        "| epoch | " + " | ".join(r["name"] for r in done) + " |",
        "|---:|" + "---:|" * len(done),
    ]
    for e in range(epochs):
        cells = [
            f"{r['curve'][e]['mAP50-95']:.4f} ({r['curve'][e]['cumulative_seconds']:.0f}s)"
            if e < len(r["curve"])
            else ""
            for r in done
        ]
        curves.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    curves50 = [
        "| epoch | " + " | ".join(r["name"] for r in done) + " |",
        "|---:|" + "---:|" * len(done),
    ]
    for e in range(epochs):
        cells = [f"{r['curve'][e]['mAP50']:.4f}" if e < len(r["curve"]) else "" for r in done]
        curves50.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    subset = (
        f"{s['train_images']} of the 816 train images (a fixed subset, lowest md5 of the file name)"
        if s["train_images"]
        else "all 816 train images"
    )
    text = (
        "# New defect classes: LoRA vs head-only vs full fine-tuning (PV-Multi-Defect)\n\n"
        f"Base `{BASE.name}` (DeepPCB, 6 classes) adapted to PV-Multi-Defect's 5 new classes: {subset}, "
        f"the whole val split (229 images). **Scaled down for a 2-core shared CPU** (configurations ran two at a "
        f"time or next to other jobs, see the notes): imgsz {s['imgsz']} (the issue's numbers are at 320, "
        f"DeepPCB's at 640), {s['epochs']} epochs, "
        f"batch {s['batch']}, seed 0. Absolute mAP is therefore low and the curves are short; the comparison "
        "between configurations is the point. Timings share the CPU with other jobs and carry their noise.\n\n"
        "mAP: Ultralytics' validator on the val split after every epoch (EMA weights; LoRA unmerged). best = the "
        "best epoch, final = the last epoch. s/epoch and the curves' seconds are the epoch's wall time as "
        "Ultralytics measures it (training loop + validation + checkpoint), summed for the equal-wall-time "
        "column: the config's final mAP50-95 over full fine-tuning's curve interpolated (linearly, from 0 at 0 s) "
        "at the config's total seconds; * = past the end of full's curve (compared to full's last epoch). "
        "On the equal-CPU-time axis a run that cost more CPU than all of full's run is compared the other way: "
        "its own curve interpolated at full's total CPU seconds, over full's final mAP50-95. "
        "The CPU was shared with up to four other jobs whose load changed during the run, so wall time measures "
        "the neighbours as much as the config: **equal CPU time** is the fairer cost axis (user+system CPU "
        "seconds of the whole `edge-lora train` process tree, dataloader workers included, from start to exit; "
        "full's curve on that axis is its per-epoch CPU where recorded, else its total spread evenly). "
        "Each schedule (linear lr decay, warm-up) is over the run's own epochs.\n\n"
        f"Head (rebuilt for 5 classes): Detect head {hp['detect_head']:,} parameters (DFL excluded; head-only "
        f"trains these; {100 * hp['detect_head'] / hp['total']:.2f}% of {hp['total']:,}), of which the two class "
        f"branches (cv3 and the end-to-end copy one2one_cv3, what `--head auto` trains densely) "
        f"{hp['class_branches']:,} = {100 * hp['class_branches'] / hp['total']:.2f}% of all parameters. "
        f"Only the final 1x1 class convs are new ({hp['final_class_convs']:,} parameters); the other "
        f"{hp['class_branches'] - hp['final_class_convs']:,} are the base's class-branch convs, which "
        "`--head auto` chooses to train densely (they could carry LoRA instead: a code change, not measured). "
        "Base mAP on PV is 0 by construction (none of its classes exist there).\n\n"
        + "\n".join(rows)
        + "\n\n## Curves: val mAP50-95 per epoch (cumulative seconds)\n\n"
        + "\n".join(curves)
        + "\n\n## Curves: val mAP50 per epoch\n\n"
        + "\n".join(curves50)
        + "\n"
    )
    text += goals(report)
    ctl = report.get("control")
    if ctl:
        text += (
            f"\n## Same-class control (DeepPCB new boards, from lora_vs_full.json, {ctl['settings']['epochs']} "
            f"epochs, imgsz {ctl['settings']['imgsz']}, {ctl['date']}; not retrained)\n\n"
            "| config | share | mAP50-95 | % of full |\n|---|---:|---:|---:|\n"
            + "\n".join(
                f"| {n} | {100 * r['trainable_share']:.2f}% | {r['mAP50-95']:.4f} | {r['pct_of_full']}% |"
                for n, r in ctl["runs"].items()
            )
            + "\n"
        )
    if report.get("notes"):
        text += "\n## Notes\n\n" + "\n".join(f"- {n}" for n in report["notes"]) + "\n"
    return text + f"\n{markdown_details(report['machine'])}\n\nMeasured {report['date']}.\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--train-images", type=int, default=0, help="a fixed subset of the train split (0: all)")
    ap.add_argument("--configs", default=",".join(list(CONFIGS)[:7]), help=f"from: {','.join(CONFIGS)}")
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "new_classes")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--markdown-only", action="store_true", help="re-render the .md from the results JSON")
    ap.add_argument(
        "--merge-from",
        type=Path,
        action="append",
        default=[],
        help="with --markdown-only: add the runs of another results folder with the same settings (configs run "
        "in parallel processes, each with its own --results)",
    )
    ap.add_argument("--note", action="append", default=[], help="with --markdown-only: add a note")
    args = ap.parse_args()
    if args.markdown_only:
        from edge_lora.fileio import atomic_write_json, atomic_write_text

        report = json.loads((args.results / "new_classes.json").read_text())
        for other in args.merge_from:
            doc = json.loads((other / "new_classes.json").read_text())
            if doc["settings"] != report["settings"]:
                sys.exit(f"{other}: other settings ({doc['settings']} vs {report['settings']})")
            names = {r["name"] for r in doc["runs"]}
            report["runs"] = [r for r in report["runs"] if r["name"] not in names] + doc["runs"]
        report["notes"] = report.get("notes", []) + [n for n in args.note if n not in report.get("notes", [])]
        report.update(head_params=head_params(5), control=control())
        compare(report)
        atomic_write_json(args.results / "new_classes.json", report)
        atomic_write_text(args.results / "new_classes.md", markdown(report))
        return
    if not BASE.is_file() or not DATA.is_file():
        sys.exit(
            f"skipped: PV-Multi-Defect or the base model not found under {SHARED} (see ../shared/README.md)"
        )
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"unknown configs: {', '.join(unknown)} (known: {', '.join(CONFIGS)})")
    from edge_lora.fileio import atomic_write_json, atomic_write_text

    args.work.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    settings = {
        "epochs": args.epochs,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "train_images": args.train_images,
    }
    json_out = args.results / "new_classes.json"
    report: dict[str, Any] = {"settings": settings, "runs": [], "notes": []}
    if json_out.is_file():  # continue a cut-off run with the same settings
        previous = json.loads(json_out.read_text())
        if previous.get("settings") == settings:
            report = previous
    report.update(machine=machine_details(), head_params=head_params(5), control=control())
    data = subset_yaml(args.train_images, args.work)
    for name in names:
        if any(r["name"] == name and "error" not in r for r in report["runs"]):
            print(f"== {name}: already in {json_out}, kept", flush=True)
            continue
        flags, recipe_from = resolve_args(CONFIGS[name], report)
        print(f"== {name}: {' '.join(flags)}", flush=True)
        result = run(name, flags, data, settings, args.work)
        if recipe_from:
            result["recipe_from"] = recipe_from
        if name.startswith("head") and "trainable_params" in result:  # --full reports every weight
            result["trainable_params"] = report["head_params"]["detect_head"]
            result["trainable_share"] = result["trainable_params"] / result["total_params"]
        report["runs"] = [r for r in report["runs"] if r["name"] != name] + [result]
        report["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        compare(report)
        atomic_write_json(json_out, report)  # after every run: a cut-off run still leaves a table
        atomic_write_text(args.results / "new_classes.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
