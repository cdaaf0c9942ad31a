"""Markdown for benchmarks/results/int8_diagnosis.md (see int8_diagnosis.py); only what was measured."""

from __future__ import annotations

from typing import Any


def _pts(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2f}"


def render(r: dict[str, Any]) -> str:
    out = [
        "# Why INT8 loses accuracy on the merged LoRA model (DeepPCB new boards)",
        "",
        "Base `deeppcb-base-yolo26n.pt` vs the same model merged with the `lora8` adapter; QDQ INT8 by "
        "ONNX Runtime's quantizer under the shipped policies (u8s8: `cpu-onnxruntime`; s8s8: the Jetson "
        "profiles, run in ONNX Runtime on this CPU as the TensorRT host proxy). mAP50-95 by edge-lora's one "
        "evaluator; 'points' = mAP50-95 x 100, negative = a loss vs the model's own FP32 ONNX.",
        "",
    ]
    if "finding" in r:
        out += ["## Finding", "", r["finding"], ""]
    if "decompose" in r:
        out += [
            "## Where the drop is: weights or activations (newboards val, 166 images)",
            "",
            "| model / scheme | FP32 mAP | INT8 | weights INT8 only | activations INT8 only | convs float |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for key, row in r["decompose"].items():
            f = row["fp32"]
            out.append(
                f"| {key} | {f:.4f} | {_pts(100 * (row['int8'] - f))} | {_pts(100 * (row['weights_only'] - f))} "
                f"| {_pts(100 * (row['activations_only'] - f))} | {_pts(100 * (row['all_convs_float'] - f))} |"
            )
        out.append("")
    if "blocks" in r:
        for scheme, b in r["blocks"].items():
            out += [
                f"## Per-block sensitivity, merged model, {scheme} (train split, {len(b['rows'])} blocks)",
                "",
                f"Plain INT8 on the train images: {_pts(-b['int8_drop_points'])} points. 'saved' = points "
                "recovered with that block's convs float (mAP vs labels, 166 images); 'agreement' = the "
                "search's cheap ranking score (agreement with FP32 on 32 of those images). Spearman rank "
                f"correlation saved vs agreement: {b['spearman_saved_vs_agreement']:.2f}.",
                "",
                "| block | convs | saved points | agreement gain |",
                "|---|---:|---:|---:|",
            ]
            for row in sorted(b["rows"], key=lambda x: -x["saved_points"]):
                out.append(
                    f"| `{row['block']}` | {row['convs']} | {_pts(row['saved_points'])} | {row['agreement_gain']:+.4f} |"
                )
            out.append("")
    if "weights" in r:
        w = r["weights"]
        out += [
            "## What the merge does to the weights (per output channel max|W'| / max|W|, BN folded)",
            "",
            f"{w['changed_convs']} convs changed by the merge, {w['unchanged_convs']} unchanged; median of the "
            f"per-conv largest ratio: {w['max_ratio_median']:.3f}.",
            "",
            "| conv | channels | max ratio | median | min | channels > 1.5x |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in w["top"]:
            out.append(
                f"| `{row['conv']}` | {row['channels']} | {row['max_ratio']:.3f} | {row['median_ratio']:.3f} "
                f"| {row['min_ratio']:.3f} | {row['channels_over_1.5x']} |"
            )
        out.append("")
    if "activations" in r:
        a = r["activations"]
        out += [
            "## What the merge does to activation ranges (MinMax on the same 166 calibration images)",
            "",
            f"{a['tensors']} quantized activations; median range width merged/base {a['width_ratio_median']:.3f}; "
            f"{a['wider_by_10pct']} wider by >10%, {a['narrower_by_10pct']} narrower by >10%. Outliers: "
            "max|x| / 99.99th percentile of |x| on 16 images (1 = none).",
            "",
            "| tensor (conv that reads it) | base range | merged range | width ratio | outliers base | merged |",
            "|---|---|---|---:|---:|---:|",
        ]
        for row in a["most_changed"]:
            out.append(
                f"| `{row['conv']}` | {row['base'][0]:.2f}..{row['base'][1]:.2f} | "
                f"{row['merged'][0]:.2f}..{row['merged'][1]:.2f} | {row['width_ratio']:.3f} | "
                f"{row.get('outlier_base', float('nan')):.1f} | {row.get('outlier_merged', float('nan')):.1f} |"
            )
        out.append("")
    if "calibration" in r:
        out += [
            "## Calibration method and image count (merged model, u8s8, newboards val)",
            "",
            "166 = every new-board train image; 1000 = those 166 plus 834 base-board images.",
            "",
            "| method / images | points vs FP32 | quantize s |",
            "|---|---:|---:|",
        ]
        for key, row in r["calibration"].items():
            out.append(f"| {key} | {_pts(-row['drop_points'])} | {row['seconds']:.0f} |")
        out.append("")
    if "search" in r:
        out += [
            "## Accuracy-aware mixed precision (quantization.accuracy_aware, target 0.2 points)",
            "",
            "Searched on the train split (the val images stay unseen), then scored on val. 'search s' was "
            "measured while other work shared the 2 cores; latency: see the interleaved table below.",
            "",
            "| scheme | float convs | train: INT8 -> mixed | val: INT8 -> mixed | trials | search s |",
            "|---|---:|---|---|---:|---:|",
        ]
        for scheme, s in r["search"].items():
            q = s["search"]
            out.append(
                f"| {scheme} | {len(q['float_nodes'])} | {_pts(-q['int8_drop_points'])} -> {_pts(-q['drop_points'])} "
                f"| {_pts(-s['val_drop_plain'])} -> {_pts(-s['val_drop_mixed'])} | {q['trials']} | {q['seconds']:.0f} |"
            )
        out.append("")
        for scheme, s in r["search"].items():
            steps = s["search"]["steps"][: len(s["search"]["float_nodes"])]
            if not steps:
                out += [
                    f"{scheme}: no conv kept float (plain INT8 was within the target on the train images).",
                    "",
                ]
                continue
            out += [f"Convs kept float for {scheme}, in the order chosen:", ""]
            for step in steps:
                out.append(
                    f"- `{step['node']}`: saved {_pts(step['saved_points'])} points on the train images"
                )
            out.append("")
    if "latency" in r:
        out += [
            "## Latency, interleaved (ONNX Runtime CPU, one image, p50 of 200 runs each, same process)",
            "",
            "| scheme | FP32 ms | plain INT8 ms | accuracy-aware INT8 ms | convs float |",
            "|---|---:|---:|---:|---:|",
        ]
        for scheme, row in r["latency"].items():
            out.append(
                f"| {scheme} | {row['fp32']:.1f} | {row['int8']:.1f} | {row['mixed']:.1f} | {row['float_convs']} |"
            )
        out += [
            "",
            "For s8s8 this is ONNX Runtime on this CPU, a host proxy: TensorRT's latency is measured on the device.",
            "",
        ]
    out.append(f"Measured {r.get('measured', '?')}.")
    return "\n".join(out)
