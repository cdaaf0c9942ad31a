"""``edge-lora run`` on the DeepPCB new-board val images: pipelined vs sequential, and ``yolo predict`` beside it
(issue 13.3; not CI).

Per bundle (e.g. the ``cpu-onnxruntime`` and ``intel-openvino`` bundles ``benchmarks/build_bench.py`` builds),
the same images (``../shared/datasets/deeppcb/newboards_val.txt``, at the bundle's imgsz) run through
``LineRuntime.run`` twice, ``pipeline=False`` and ``pipeline=True``, after one warm-up pass; reported:

* frames/s: frames / wall time of the run (image decoding, letterbox, inference, decoding, JSON lines);
* per-frame latency p50/p99: each record's ``latency_ms.total`` (its batch's letterbox + inference + its
  decoding; image decoding excluded, as ``edge-lora run`` reports it), and the p50/p99 interval between
  consecutive records (what a line waiting for verdicts sees);
* whether the two paths gave the same records (ids, order, detections, verdicts).

With ``--yolo-weights MERGED.pt`` the same images also go through ``yolo predict`` (the Python API, one
call per image) on Ultralytics' own exports of that checkpoint (``--yolo-format``, repeatable; default
``openvino`` and ``openvino-int8``, its fastest CPU paths; ``onnx`` and ``torchscript`` also work), timed the
same way, in ``--rounds`` interleaved rounds; its per-image time is
Ultralytics' own ``speed`` (preprocess + inference + postprocess), and its verdicts (the bundle's per-class
thresholds and defect classes applied to its detections) are compared with the bundle's.

    python benchmarks/line_bench.py --bundle dist/newboards-cpu-onnxruntime --max-images 50   # smoke run
    python benchmarks/line_bench.py --bundle B1 --bundle B2 --yolo-weights merged.pt          # the full one

Writes ``line_bench.json`` and ``line_bench.md`` into ``--results`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import NEWBOARDS, REPO  # noqa: E402
from machine import machine_details, markdown_details  # noqa: E402


def val_images(limit: int | None) -> list[Path]:
    """The new-board val images, in the list's order (first ``limit``)."""
    root = NEWBOARDS.parent
    lines = (root / "newboards_val.txt").read_text().split()
    paths = [(root / line).resolve() for line in lines]
    return paths[:limit] if limit else paths


def image_folder(images: list[Path], folder: Path) -> Path:
    """A folder of symlinks named in source order, so ``run --source FOLDER`` reads exactly these images."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(images):
        link = folder / f"{i:05d}_{p.name}"
        if not link.exists():
            os.symlink(p, link)
    return folder


class _Clock:
    """A run sink that timestamps every record (for the interval between verdicts)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.records: list[dict] = []

    def write(self, record: dict) -> None:
        self.times.append(time.perf_counter())
        self.records.append(record)


def _pcts(values_ms: list[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(values_ms, dtype=float)
    if a.size == 0:
        return {"p50": float("nan"), "p99": float("nan")}
    return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3)}


def _verdicts(records: list[dict]) -> list[tuple]:
    return [(r["frame"], r["verdict"], json.dumps(r["detections"], sort_keys=True)) for r in records]


def bench_bundle(bundle: Path, folder: Path, threads: int | None) -> dict[str, Any]:
    """Sequential and pipelined ``LineRuntime.run`` of one bundle over ``folder``."""
    from edge_lora.runtime.line import LineRuntime

    override = {"intra_op_threads": threads} if threads is not None else None
    out: dict[str, Any] = {"bundle": str(bundle)}
    with LineRuntime(bundle, allow_failed=True, settings_override=override) as line:
        out["backend"] = line.artifact.backend
        out["precision"] = line.artifact.precision
        out["batch"] = line._batch
        out["imgsz"] = list(line.manifest.imgsz)
        with open(os.devnull, "w") as null:  # warm-up
            line.run(folder, out_jsonl=null, max_frames=5, log=lambda m: None)
        records = {}
        for mode in ("sequential", "pipelined"):
            clock = _Clock()
            with open(os.devnull, "w") as null:
                start = time.perf_counter()
                summary = line.run(
                    folder, out_jsonl=null, sinks=[clock], pipeline=mode == "pipelined", log=lambda m: None
                )
            gaps = np.diff([start, *clock.times]) * 1e3
            out[mode] = {
                "frames": summary.frames,
                "elapsed_s": round(summary.elapsed_s, 3),
                "fps": round(summary.frames / summary.elapsed_s, 2),
                "latency_total_ms": _pcts([r["latency_ms"]["total"] for r in clock.records]),
                "interval_ms": _pcts(gaps),
                "rejects": summary.rejects,
            }
            records[mode] = clock.records
        out["same_records"] = _verdicts(records["sequential"]) == _verdicts(records["pipelined"])
        out["speedup"] = round(out["pipelined"]["fps"] / out["sequential"]["fps"], 3)
        out["_verdicts"] = {r["frame"]: r["verdict"] for r in records["pipelined"]}
        out["_manifest"] = line.manifest
    return out


def yolo_export(weights: Path, fmt: str, imgsz: int) -> str:
    """Ultralytics' own export of ``weights``: ``fmt`` is an export format, ``openvino-int8`` its OpenVINO
    INT8 (NNCF, calibrated by Ultralytics on the new-board data), ``pt`` the checkpoint itself."""
    from ultralytics import YOLO

    if fmt == "pt":
        return str(weights)
    if fmt == "openvino-int8":
        return str(YOLO(str(weights)).export(format="openvino", int8=True, data=str(NEWBOARDS), imgsz=imgsz))
    return str(YOLO(str(weights)).export(format=fmt, imgsz=imgsz))


def bench_yolo(exported: str, fmt: str, images: list[Path], imgsz: int, manifest) -> dict[str, Any]:
    """``yolo predict`` (Python API) on Ultralytics' export ``exported``, timed like the bundle."""
    from ultralytics import YOLO

    model = YOLO(str(exported), task="detect")
    thr = dict(manifest.thresholds.conf)
    defects = set(manifest.thresholds.defect_classes)
    low = float(min(thr.values())) if thr else 0.25
    kw = {"imgsz": imgsz, "conf": low, "verbose": False}
    for p in images[:5]:  # warm-up
        model.predict(str(p), **kw)
    times, speeds, verdicts = [], [], []
    start = time.perf_counter()
    # One call per image, as a line gets them (a list source is predicted as one batch, timed as one).
    for p in images:
        r = model.predict(str(p), **kw)[0]
        times.append(time.perf_counter())
        speeds.append(sum(r.speed.values()))
        cls = r.boxes.cls.int().tolist()
        conf = r.boxes.conf.tolist()
        reject = any(c in defects and s > thr.get(c, 1.0) for c, s in zip(cls, conf, strict=True))
        verdicts.append("reject" if reject else "pass")
    elapsed = time.perf_counter() - start
    return {
        "format": fmt,
        "export": str(exported),
        "frames": len(times),
        "elapsed_s": round(elapsed, 3),
        "fps": round(len(times) / elapsed, 2),
        "latency_total_ms": _pcts(speeds),
        "interval_ms": _pcts(np.diff([start, *times]) * 1e3),
        "rejects": verdicts.count("reject"),
        "_verdicts": verdicts,
    }


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# `edge-lora run`: pipelined vs sequential (and `yolo predict`)",
        "",
        f"{doc['images']} DeepPCB new-board val images"
        + (" (a smoke run, not the full set)" if doc["smoke"] else "")
        + f"; machine: {doc['machine'].get('cpu', '?')}, {doc['machine'].get('cores', '?')} cores.",
        "",
        "| path | frames/s | latency p50 / p99 ms | interval p50 / p99 ms | rejects | same records |",
        "|---|---|---|---|---|---|",
    ]
    for b in doc["bundles"]:
        name = f"{Path(b['bundle']).name} ({b['backend']}, {b['precision']}, batch {b['batch']})"
        for mode in ("sequential", "pipelined"):
            m = b[mode]
            lines.append(
                f"| {name} {mode} | {m['fps']} | {m['latency_total_ms']['p50']} / {m['latency_total_ms']['p99']} "
                f"| {m['interval_ms']['p50']} / {m['interval_ms']['p99']} | {m['rejects']} "
                f"| {'yes' if b['same_records'] else 'NO'} |"
            )
    for y in doc.get("yolo", []):
        agree = ", ".join(f"{n} {a}" for n, a in y.get("agreement_by_bundle", {}).items()) or y.get(
            "verdict_agreement"
        )
        lines.append(
            f"| yolo predict ({y['format']}) | {y['fps']} | {y['latency_total_ms']['p50']} / "
            f"{y['latency_total_ms']['p99']} | {y['interval_ms']['p50']} / {y['interval_ms']['p99']} "
            f"| {y['rejects']} | verdicts agree with the bundles: {agree} |"
        )
    rounds = doc.get("rounds", 1)
    lines += [
        "",
        "Latency: a record's `latency_ms.total` (letterbox + inference of its batch + its decoding) for `edge-lora "
        "run`, Ultralytics' `speed` (preprocess + inference + postprocess) for `yolo predict`; interval: time "
        "between consecutive verdicts (what a line waiting for verdicts sees; image decoding included for both). "
        f"Every path ran {rounds} interleaved round(s) over the same images; frames/s and latencies are the "
        "median round's (all rounds' frames/s in the JSON).",
    ]
    g = doc.get("goal")
    if g:
        lines += [
            "",
            f"**Goal (>= 1.5x the frames/s of Ultralytics' fastest path, p99 no worse): "
            f"{'met' if g['met'] else 'NOT met'}.** Best here: {g['ours']} at {g['fps_ratio']}x "
            f"{g['theirs']}; per-frame latency p99 {g['latency_p99_ms'][0]} vs {g['latency_p99_ms'][1]} ms; verdicts "
            f"agree on {g['verdict_agreement']}.",
        ]
    if "date" in doc:
        lines += ["", markdown_details(doc["machine"]), "", f"Measured {doc['date']}."]
    return "\n".join(lines) + "\n"


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median frames/s (its latencies with it), plus every round's frames/s."""
    ordered = sorted(rounds, key=lambda r: r["fps"])
    median = dict(ordered[(len(ordered) - 1) // 2])
    median["fps_rounds"] = [r["fps"] for r in rounds]
    return median


def goal(doc: dict[str, Any]) -> dict[str, Any] | None:
    """Issue 13's goal: the best ``edge-lora run`` path >= 1.5x the frames/s of Ultralytics' fastest path,
    at equal verdicts, with p99 latency no worse."""
    if not doc.get("yolo"):
        return None
    ours = max(
        ((b, m) for b in doc["bundles"] for m in ("sequential", "pipelined")),
        key=lambda bm: bm[0][bm[1]]["fps"],
    )
    theirs = max(doc["yolo"], key=lambda y: y["fps"])
    b, mode = ours
    ratio = b[mode]["fps"] / theirs["fps"]
    # Per-frame latency as each side reports it (letterbox/preprocess + inference + decode/postprocess).
    p99_ours, p99_theirs = b[mode]["latency_total_ms"]["p99"], theirs["latency_total_ms"]["p99"]
    agree = theirs.get("agreement_by_bundle", {}).get(Path(b["bundle"]).name)
    return {
        "ours": f"{Path(b['bundle']).name} {mode}",
        "theirs": f"yolo predict ({theirs['format']})",
        "fps_ratio": round(ratio, 3),
        "latency_p99_ms": [p99_ours, p99_theirs],
        "verdict_agreement": agree,
        "met": ratio >= 1.5 and p99_ours <= p99_theirs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, action="append", required=True, help="bundle folder (repeatable)")
    ap.add_argument("--max-images", type=int, help="first N val images only (a smoke run)")
    ap.add_argument("--threads", type=int, help="intra-op threads for ONNX Runtime bundles (default: theirs)")
    ap.add_argument("--yolo-weights", type=Path, help="the merged checkpoint for `yolo predict`")
    ap.add_argument(
        "--yolo-format",
        action="append",
        help="Ultralytics export format, repeatable (default: openvino and openvino-int8, its fastest CPU paths)",
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds over every path (median reported)"
    )
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    images = val_images(args.max_images)
    formats = args.yolo_format or ["openvino", "openvino-int8"]
    doc: dict[str, Any] = {
        "images": len(images),
        "smoke": args.max_images is not None,
        "rounds": args.rounds,
        "machine": machine_details(),
        "bundles": [],
    }
    bundle_rounds: dict[Path, list[dict[str, Any]]] = {b: [] for b in args.bundle}
    yolo_rounds: dict[str, list[dict[str, Any]]] = {f: [] for f in formats}
    exports: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="line_bench_") as tmp:
        folder = image_folder(images, Path(tmp) / "frames")
        for k in range(args.rounds):  # interleaved: a slow minute of a shared host hits every path alike
            for bundle in args.bundle:
                print(f"round {k + 1}/{args.rounds}: bundle {bundle} ...", flush=True)
                bundle_rounds[bundle].append(bench_bundle(bundle, folder, args.threads))
            if args.yolo_weights is None:
                continue
            manifest = bundle_rounds[args.bundle[0]][0]["_manifest"]
            imgsz = bundle_rounds[args.bundle[0]][0]["imgsz"][0]
            for fmt in formats:
                if fmt not in exports:
                    exports[fmt] = yolo_export(args.yolo_weights, fmt, imgsz)
                print(f"round {k + 1}/{args.rounds}: yolo predict ({fmt}) ...", flush=True)
                yolo_rounds[fmt].append(bench_yolo(exports[fmt], fmt, images, imgsz, manifest))
    for rounds in bundle_rounds.values():
        b = dict(rounds[-1])
        for mode in ("sequential", "pipelined"):
            b[mode] = _median_round([r[mode] for r in rounds])
        b["same_records"] = all(r["same_records"] for r in rounds)
        doc["bundles"].append(b)
    if args.yolo_weights is not None:
        doc["yolo"] = []
        for rounds in yolo_rounds.values():
            y = _median_round(rounds)
            theirs = y.pop("_verdicts")
            y["agreement_by_bundle"] = {}
            for b in doc["bundles"]:
                ours = list(b["_verdicts"].values())
                same = sum(a == c for a, c in zip(ours, theirs, strict=True))
                y["agreement_by_bundle"][Path(b["bundle"]).name] = f"{same}/{len(ours)}"
            y["verdict_agreement"] = y["agreement_by_bundle"][Path(doc["bundles"][0]["bundle"]).name]
            doc["yolo"].append(y)
    for b in doc["bundles"]:
        b.pop("_verdicts"), b.pop("_manifest")
    doc["goal"] = goal(doc)
    doc["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "line_bench.json").write_text(json.dumps(doc, indent=2, default=str))
    (args.results / "line_bench.md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
