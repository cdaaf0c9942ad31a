"""Why does INT8 lose accuracy on the merged LoRA model? (issue 11, part 1)

On DeepPCB new boards, base model vs the model merged with the ``lora8`` adapter, for the QDQ schemes edge-lora
ships (u8s8 for ONNX Runtime on x86, s8s8 for TensorRT, run here in ONNX Runtime as the host proxy):

- ``weights``: per output channel, max|W'| / max|W| of every conv (BatchNorm folded, as exported) - how the
  merge changes what the per-channel weight quantizer sees;
- ``activations``: the MinMax range of every quantized activation, base vs merged, on the same calibration
  images, and how much of each range is outliers (max / 99.99th percentile of |x| on 16 images);
- ``decompose``: the drop with only the weights INT8 (activations float) and with only the activations INT8;
- ``blocks``: the drop with one top-level block (``/model.N/``) float, measured by mAP50-95 against labels on
  the train split, next to the cheap proxy the accuracy-aware search ranks with (agreement with FP32 on 32 of
  those images), and their rank correlation;
- ``calibration``: MinMax / entropy / percentile with 50 / 100 / 166 (all) new-board train images, and 1000
  images (the 166 plus 834 base-board images);
- ``search``: what the accuracy-aware search (``quantization.accuracy_aware``) chooses, and the val drop and
  latency of the graph it exports, vs plain INT8;
- ``latency``: FP32, plain INT8 and the searched graph timed interleaved (run it on a quiet host).

Every val number is mAP50-95 by edge-lora's one evaluator on newboards val (166 images, imgsz 640), against
the model's own FP32 ONNX (merge parity is 1e-6 relative, so merged FP32 stands for the unmerged model).

    python benchmarks/int8_diagnosis.py [--sections weights,activations,decompose,blocks,calibration,search]

Writes benchmarks/results/int8_diagnosis.json and .md after every section (a rerun reuses the work folder).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BASE, BASE_DATA, LORA8, NEWBOARDS, REPO  # noqa: E402
from machine import machine_details, markdown_details  # noqa: E402

WORK = REPO / "benchmarks" / "work" / "int8_diag"
RESULTS = REPO / "benchmarks" / "results"
SCHEMES = {"u8s8": "cpu-onnxruntime", "s8s8": "jetson-orin-nano"}
SECTIONS = ("weights", "activations", "decompose", "blocks", "calibration", "search", "latency")
IMGSZ = 640


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------- setup
def fp32_onnx(model: str) -> Path:
    """The FP32 end-to-end ONNX of ``model`` ("base" or "merged"), exported once."""
    from edge_lora.export.api import export

    path = WORK / f"fp32_{model}" / "onnx" / "model.onnx"
    if not path.is_file():
        src = BASE if model == "base" else merged_pt()
        log(f"export FP32 ONNX of {model}")
        export(src, "cpu-onnxruntime", WORK / f"fp32_{model}", precisions=["fp32"], overwrite=True)
    return path


def merged_pt() -> Path:
    from edge_lora.merge import merge

    path = WORK / "merged.pt"
    if not path.is_file():
        log("merge lora8 into the base")
        merge(BASE, LORA8, path, data=NEWBOARDS)
    return path


def calib_set(n: int | None, data: Path = NEWBOARDS, name: str = "") -> Any:
    """A calibration set of ``n`` stratified train images (None: the default recipe, i.e. all 166)."""
    from edge_lora.export.calibration import CalibrationSet, select_calibration
    from edge_lora.profiles import CalibRecipe, load_recipe

    folder = WORK / f"calib_{name or n or 'default'}"
    if not (folder / "calibration.json").is_file():
        recipe = load_recipe("default")
        if n is not None:
            doc = recipe.model_dump(mode="json") | {"num_images": n, "min_images": min(n, recipe.min_images)}
            recipe = CalibRecipe.model_validate(doc | {"name": f"default-{n}"})
        select_calibration(data, recipe, folder, overwrite=True)
    return CalibrationSet.load(folder)


def mixed_calib_1000() -> Any:
    """166 new-board train images + 834 base-board images: a data YAML listing both, calibrated at 1000."""
    import yaml

    from edge_lora.data.checks import load_data_yaml

    new = sorted(load_data_yaml(NEWBOARDS, splits=("train",), check_labels=False).splits["train"])
    old = sorted(load_data_yaml(BASE_DATA, splits=("train",), check_labels=False).splits["train"])
    old = [old[int(i * len(old) / 834)] for i in range(834)]
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "mixed_train.txt").write_text("\n".join(str(p) for p in new + old) + "\n")
    doc = yaml.safe_load(NEWBOARDS.read_text())
    doc.update(train=str(WORK / "mixed_train.txt"), val=str((NEWBOARDS.parent / doc["val"]).resolve()))
    data = WORK / "mixed.yaml"
    data.write_text(yaml.safe_dump(doc))
    return calib_set(1000, data, "mixed1000")


def quantize(model: str, scheme: str, calib: Any, method: str = "minmax", tag: str = "") -> Path:
    """Plain INT8 QDQ of ``model``'s FP32 graph under the ``scheme``'s shipped policy."""
    from edge_lora.export.onnx.qdq import quantize_qdq
    from edge_lora.export.policy import QuantPolicy
    from edge_lora.profiles import resolve_target

    out = WORK / f"qdq_{model}_{scheme}_{method}{tag}.onnx"
    if not out.is_file():
        profile, _ = resolve_target(SCHEMES[scheme])
        t0 = time.perf_counter()
        quantize_qdq(fp32_onnx(model), out, calib, QuantPolicy.from_profile(profile), imgsz=IMGSZ,
                     calibrate_method=method, write_sidecar=False)  # fmt: skip
        log(f"quantized {out.name} in {time.perf_counter() - t0:.0f} s")
    return out


class Scores:
    """mAP50-95 on newboards val and train (labelled, preprocessed once), by the one evaluator."""

    def __init__(self) -> None:
        from edge_lora.data.checks import load_data_yaml
        from edge_lora.export.labelled import labelled_images
        from edge_lora.export.onnx.mixed_precision import OnnxMapScorer

        self.names = load_data_yaml(NEWBOARDS, splits=("val",), check_labels=False).names
        self.val = labelled_images(NEWBOARDS, IMGSZ, 10_000, "val")
        self.train = labelled_images(NEWBOARDS, IMGSZ, 10_000, "train")
        self.scorer = OnnxMapScorer(self.names, end2end=True)

    def map(self, model: Any, split: str = "val") -> float:
        import onnx

        proto = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
        items = self.val if split == "val" else self.train
        return self.scorer.score(items, self.scorer.detect(proto, items))


# --------------------------------------------------------------------------------------------- sections
def conv_weights(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {t.name: t for t in proto.graph.initializer}
    out = {}
    for n in proto.graph.node:
        if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in inits:
            out[n.name] = numpy_helper.to_array(inits[n.input[1]])
    return out


def section_weights(_: Any) -> dict[str, Any]:
    base, merged = conv_weights(fp32_onnx("base")), conv_weights(fp32_onnx("merged"))
    rows = []
    for name, w in base.items():
        w2 = merged[name]
        a = np.abs(w.reshape(w.shape[0], -1)).max(1)
        b = np.abs(w2.reshape(w2.shape[0], -1)).max(1)
        if np.array_equal(w, w2):
            continue
        ratio = b / np.maximum(a, 1e-12)
        rows.append({"conv": name, "channels": int(len(a)), "max_ratio": float(ratio.max()),
                     "median_ratio": float(np.median(ratio)), "min_ratio": float(ratio.min()),
                     "channels_over_1.5x": int((ratio > 1.5).sum())})  # fmt: skip
    rows.sort(key=lambda r: -r["max_ratio"])
    ratios = np.array([r["max_ratio"] for r in rows])
    return {
        "changed_convs": len(rows),
        "unchanged_convs": len(base) - len(rows),
        "max_ratio_median": float(np.median(ratios)) if len(ratios) else None,
        "top": rows[:10],
    }


def activation_ranges(fp32: Path, calib: Any, policy: Any) -> dict[str, tuple[float, float]]:
    """MinMax ranges of the tensors the quantizer calibrates, by ONNX Runtime's own calibrator."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from edge_lora.export.calibration import OrtCalibrationReader

    tmp = WORK / "augmented.onnx"
    cal = create_calibrator(fp32, list(policy.op_types), augmented_model_path=str(tmp),
                            calibrate_method=CalibrationMethod.MinMax)  # fmt: skip
    cal.collect_data(OrtCalibrationReader(calib, "images", (IMGSZ, IMGSZ), 1))
    data = cal.compute_data()
    tmp.unlink(missing_ok=True)
    # range_value is (low, high), each a 0-d or 1-element array depending on the calibrator
    return {
        k: (float(np.min(v.range_value[0])), float(np.max(v.range_value[1]))) for k, v in data.data.items()
    }


def conv_inputs(path: Path) -> dict[str, str]:
    """activation tensor -> the conv that reads it (first reader)."""
    import onnx

    proto = onnx.load(str(path))
    inits = {t.name for t in proto.graph.initializer}
    out: dict[str, str] = {}
    for n in proto.graph.node:
        if n.op_type == "Conv" and n.input[0] not in inits:
            out.setdefault(n.input[0], n.name)
    return out


def outlier_ratio(fp32: Path, tensors: list[str], items: list[Any]) -> dict[str, float]:
    """max|x| / 99.99th percentile of |x| per tensor over ``items`` (1 = no outliers)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    proto = onnx.load(str(fp32))
    for t in tensors:
        proto.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    acc: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for item in items:
        for t, v in zip(tensors, session.run(tensors, {"images": item.batch}), strict=True):
            acc[t].append(np.abs(v).ravel())
    out = {}
    for t, vs in acc.items():
        v = np.concatenate(vs)
        out[t] = float(v.max() / max(np.percentile(v, 99.99), 1e-12))
    return out


def section_activations(scores: Scores) -> dict[str, Any]:
    from edge_lora.export.policy import QuantPolicy
    from edge_lora.profiles import resolve_target

    profile, _ = resolve_target("cpu-onnxruntime")
    policy = QuantPolicy.from_profile(profile)
    calib = calib_set(None)
    ranges = {m: activation_ranges(fp32_onnx(m), calib, policy) for m in ("base", "merged")}
    readers = conv_inputs(fp32_onnx("merged"))
    rows = []
    for t, conv in readers.items():
        if t not in ranges["base"] or t not in ranges["merged"]:
            continue
        (a0, a1), (b0, b1) = ranges["base"][t], ranges["merged"][t]
        rows.append({"tensor": t, "conv": conv, "base": [a0, a1], "merged": [b0, b1],
                     "width_ratio": (b1 - b0) / max(a1 - a0, 1e-12)})  # fmt: skip
    rows.sort(key=lambda r: -abs(np.log(max(r["width_ratio"], 1e-12))))
    picked = [r["tensor"] for r in rows[:12]]
    sample = scores.train[:: max(1, len(scores.train) // 16)][:16]
    out_m = outlier_ratio(fp32_onnx("merged"), picked, sample)
    out_b = outlier_ratio(fp32_onnx("base"), picked, sample)
    for r in rows[:12]:
        r["outlier_merged"], r["outlier_base"] = out_m[r["tensor"]], out_b[r["tensor"]]
    widths = np.array([r["width_ratio"] for r in rows])
    return {
        "tensors": len(rows),
        "width_ratio_median": float(np.median(widths)),
        "wider_by_10pct": int((widths > 1.1).sum()),
        "narrower_by_10pct": int((widths < 1 / 1.1).sum()),
        "most_changed": rows[:12],
    }


def section_decompose(scores: Scores) -> dict[str, Any]:
    import onnx

    from edge_lora.export.onnx.float_revert import revert_to_float

    out: dict[str, Any] = {}
    for model in ("base", "merged"):
        fp32 = fp32_onnx(model)
        f_map = scores.map(fp32)
        for scheme in SCHEMES:
            q = quantize(model, scheme, calib_set(None))
            qp, fp = onnx.load(str(q)), onnx.load(str(fp32))
            row = {"fp32": f_map, "int8": scores.map(qp)}
            row["weights_only"] = scores.map(_activations_float(qp, fp))
            # every quantized conv reverted = activations and weights float; the rest (Q/DQ of non-conv
            # readers) stays, which isolates the convs' share
            row["activations_only"] = scores.map(_weights_float(qp, fp))
            row["all_convs_float"] = scores.map(revert_to_float(qp, fp, _qconvs(qp)))
            out[f"{model}/{scheme}"] = {k: v for k, v in row.items()}
            log(
                f"decompose {model}/{scheme}: "
                + ", ".join(f"{k} {100 * (f_map - v):+.2f}" for k, v in row.items())
            )
    return out


def _qconvs(qp: Any) -> list[str]:
    from edge_lora.export.onnx.float_revert import quantized_nodes

    return quantized_nodes(qp)


def _partial(qp: Any, fp: Any, weights: bool) -> Any:
    """``qp`` with only the weight (``weights=True``) or only the activation inputs of its convs float."""
    import onnx

    fnodes = {n.name: n for n in fp.graph.node}
    finits = {t.name: t for t in fp.graph.initializer}
    m = onnx.ModelProto()
    m.CopyFrom(qp)
    producer = {o: n for n in m.graph.node for o in n.output}
    for n in m.graph.node:
        if n.op_type != "Conv" or n.name not in fnodes:
            continue
        for i, name in enumerate(n.input):
            d = producer.get(name)
            src = fnodes[n.name].input[i] if i < len(fnodes[n.name].input) else None
            if d is None or d.op_type != "DequantizeLinear" or src is None:
                continue
            if (src in finits) != weights:
                continue
            if src in finits:
                t = onnx.TensorProto()
                t.CopyFrom(finits[src])
                t.name = src + "__float"
                if t.name not in {x.name for x in m.graph.initializer}:
                    m.graph.initializer.append(t)
                src = t.name
            n.input[i] = src
    return m


def _activations_float(qp: Any, fp: Any) -> Any:
    return _partial(qp, fp, weights=False)


def _weights_float(qp: Any, fp: Any) -> Any:
    return _partial(qp, fp, weights=True)


def section_blocks(scores: Scores) -> dict[str, Any]:
    import onnx

    from edge_lora.export.onnx.float_revert import revert_to_float
    from edge_lora.export.onnx.mixed_precision import PSEUDO_LABEL_CONF
    from edge_lora.validate.labels import GroundTruth

    out: dict[str, Any] = {}
    rank = scores.train[:: max(1, len(scores.train) // 32)][:32]
    for scheme in SCHEMES:
        fp32 = fp32_onnx("merged")
        qp, fp = onnx.load(str(quantize("merged", scheme, calib_set(None)))), onnx.load(str(fp32))
        s = scores.scorer
        f_train = scores.map(fp, "train")
        q_train = scores.map(qp, "train")
        pseudo = [GroundTruth(d.boxes[d.scores >= PSEUDO_LABEL_CONF], d.class_ids[d.scores >= PSEUDO_LABEL_CONF])
                  for d in s.detect(fp, rank)]  # fmt: skip
        q_agree = s.score(rank, s.detect(qp, rank), pseudo)
        blocks: dict[str, list[str]] = {}
        for node in _qconvs(qp):
            m = re.match(r"^/model\.(\d+)/", node)
            blocks.setdefault(m.group(0) if m else node, []).append(node)
        rows = []
        for b, nodes in blocks.items():
            trial = revert_to_float(qp, fp, nodes)
            dets = s.detect(trial, scores.train)
            value = s.score(scores.train, dets)
            agree = s.score(rank, s.detect(trial, rank), pseudo)
            rows.append({"block": b, "convs": len(nodes), "train_drop_points": 100 * (f_train - value),
                         "saved_points": 100 * (value - q_train), "agreement_gain": agree - q_agree})  # fmt: skip
            log(
                f"blocks {scheme} {b}: saved {rows[-1]['saved_points']:+.2f} points, agreement {agree - q_agree:+.4f}"
            )
        rho = _spearman([r["saved_points"] for r in rows], [r["agreement_gain"] for r in rows])
        out[scheme] = {"train_fp32": f_train, "train_int8": q_train, "int8_drop_points": 100 * (f_train - q_train),
                       "spearman_saved_vs_agreement": rho, "rows": rows}  # fmt: skip
    return out


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def section_calibration(scores: Scores) -> dict[str, Any]:
    out: dict[str, Any] = {}
    f_map = scores.map(fp32_onnx("merged"))
    sets = {"50": lambda: calib_set(50), "100": lambda: calib_set(100), "166": lambda: calib_set(None),
            "1000": mixed_calib_1000}  # fmt: skip
    wanted = os.environ.get("CALIB_RUNS")  # e.g. "minmax/50,entropy/166": a subset, when time is short
    for n, make in sets.items():
        for method in ("minmax", "entropy", "percentile"):
            if wanted and f"{method}/{n}" not in wanted.split(","):
                continue
            t0 = time.perf_counter()
            q = quantize("merged", "u8s8", make(), method, tag=f"_{n}")
            seconds = time.perf_counter() - t0
            value = scores.map(q)
            out[f"{method}/{n}"] = {"map": value, "drop_points": 100 * (f_map - value), "seconds": seconds}
            log(f"calibration {method}/{n}: {100 * (f_map - value):+.2f} points")
    return out


def section_search(scores: Scores) -> dict[str, Any]:
    import onnx

    from edge_lora.export.onnx.float_revert import revert_to_float
    from edge_lora.export.onnx.mixed_precision import search_float_nodes
    from edge_lora.runtime.onnxrt import OnnxRuntimeRunner  # noqa: F401 - the runner the device uses
    from edge_lora.runtime.timing import LatencyStats

    out: dict[str, Any] = {}
    fp32 = fp32_onnx("merged")
    f_val = scores.map(fp32)
    for scheme in SCHEMES:
        q = quantize("merged", scheme, calib_set(None))
        qp, fp = onnx.load(str(q)), onnx.load(str(fp32))
        res = search_float_nodes(fp, qp, scores.train, scores.names, end2end=True, target_points=0.2,
                                 max_float_layers=8, on_progress=lambda m, s=scheme: log(f"search {s}: {m}"))  # fmt: skip
        mixed = revert_to_float(qp, fp, res.float_nodes)
        v_plain, v_mixed = scores.map(qp), scores.map(mixed)
        lat = {}
        for label, model in (("plain", qp), ("mixed", mixed)):
            lat[label] = _latency(model, scores.val[:20], LatencyStats)
        out[scheme] = {"search": res.to_dict(), "val_drop_plain": 100 * (f_val - v_plain),
                       "val_drop_mixed": 100 * (f_val - v_mixed), "latency_p50_ms": lat}  # fmt: skip
        log(f"search {scheme}: val {100 * (f_val - v_plain):+.2f} -> {100 * (f_val - v_mixed):+.2f} points, "
            f"p50 {lat['plain']:.1f} -> {lat['mixed']:.1f} ms")  # fmt: skip
    return out


def section_latency(scores: Scores, report: dict[str, Any] | None = None) -> dict[str, Any]:
    """FP32 vs plain INT8 vs the searched graph, interleaved (one run of each in turn), on a quiet host."""
    import onnx
    import onnxruntime as ort

    from edge_lora.export.onnx.float_revert import revert_to_float
    from edge_lora.runtime.timing import LatencyStats

    report = report or {}
    fp = onnx.load(str(fp32_onnx("merged")))
    out: dict[str, Any] = {}
    for scheme in SCHEMES:
        qp = onnx.load(str(quantize("merged", scheme, calib_set(None))))
        nodes = report.get("search", {}).get(scheme, {}).get("search", {}).get("float_nodes", [])
        models = {"fp32": fp, "int8": qp, "mixed": revert_to_float(qp, fp, nodes)}
        sessions = {k: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                    for k, m in models.items()}  # fmt: skip
        samples: dict[str, list[float]] = {k: [] for k in sessions}
        batches = [item.batch for item in scores.val[:20]]
        for i in range(220):
            for k, sess in sessions.items():
                t0 = time.perf_counter()
                sess.run(None, {"images": batches[i % len(batches)]})
                if i >= 20:
                    samples[k].append(time.perf_counter() - t0)
        out[scheme] = {k: LatencyStats.from_samples(v).p50_ms for k, v in samples.items()}
        out[scheme]["float_convs"] = len(nodes)
        log(
            f"latency {scheme}: "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in out[scheme].items() if k != "float_convs")
        )
    return out


def _latency(model: Any, items: list[Any], stats: Any, runs: int = 60) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for item in items[:5]:
        session.run(None, {"images": item.batch})
    samples = []
    for i in range(runs):
        t0 = time.perf_counter()
        session.run(None, {"images": items[i % len(items)].batch})
        samples.append(time.perf_counter() - t0)
    return stats.from_samples(samples).p50_ms


# ------------------------------------------------------------------------------------------- reporting
def markdown(report: dict[str, Any]) -> str:
    from int8_diagnosis_md import render

    return render(report)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default=",".join(SECTIONS))
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / "int8_diagnosis.json"
    report = json.loads(json_path.read_text()) if json_path.is_file() else {}
    report["machine"] = machine_details()
    scores = Scores()
    for name in args.sections.split(","):
        t0 = time.perf_counter()
        log(f"section {name}")
        section = globals()[f"section_{name}"]
        report[name] = section(scores, report) if name == "latency" else section(scores)
        report[name + "_seconds"] = round(time.perf_counter() - t0, 1)
        report["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        json_path.write_text(json.dumps(report, indent=1, default=float))
        (RESULTS / "int8_diagnosis.md").write_text(
            markdown(report) + "\n" + markdown_details(report["machine"])
        )
        log(f"section {name} done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
