#!/usr/bin/env bash
# The edge-lora demo, offline, on the project's own synthetic data (make demo).
#   1. generate a two-line synthetic PCB defect dataset (line A: the base's boards, line B: a new product)
#   2. train a small YOLO26n base on line A from the YAML (no download)
#   3. fine-tune a LoRA adapter for line B (frozen base)
#   4. build verified deploy bundles for two CPU targets (merge, INT8 calibration + export, validation of the
#      exported model against the unmerged base + adapter, gates, bundle)
#   5. run a bundle on a few line-B images with the torch-free line runtime
# Sizes are chosen to finish within ~10 minutes on 2 CPU cores.
set -euo pipefail
DEMO=${DEMO:-demo_out}
CLI=${CLI:-edge-lora}
IMGSZ=${IMGSZ:-128}
BASE_EPOCHS=${BASE_EPOCHS:-40}
LORA_EPOCHS=${LORA_EPOCHS:-20}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

mkdir -p "$DEMO"
step "1/5 synthetic dataset -> $DEMO/data"
[ -f "$DEMO/data/line_b.yaml" ] || $CLI demo-data "$DEMO/data" --train 160 --val 32 --imgsz "$IMGSZ"

step "2/5 base model on line A (full training from yolo26n.yaml; reused if present)"
[ -f "$DEMO/base/model.pt" ] || $CLI train --full --base yolo26n.yaml --data "$DEMO/data/line_a.yaml" \
    --out "$DEMO/base" --epochs "$BASE_EPOCHS" --imgsz "$IMGSZ" --batch 16

step "3/5 LoRA adapter for line B (base frozen; reused if present)"
[ -f "$DEMO/adapters/line_b/edge_lora.json" ] || $CLI train --base "$DEMO/base/model.pt" \
    --data "$DEMO/data/line_b.yaml" --out "$DEMO/adapters/line_b" --rank 8 --alpha 16 \
    --epochs "$LORA_EPOCHS" --imgsz "$IMGSZ" --batch 16

step "4/5 build bundles for cpu-onnxruntime and intel-openvino (INT8), validated against the unmerged model"
# The shipped profiles are for 640 px production models; the demo overrides imgsz for its 128 px toy data.
# Calibration uses the profiles' own 'default' recipe: its 100-image minimum is met by the 160 train images.
status=0
$CLI build --base "$DEMO/base/model.pt" --adapter "$DEMO/adapters/line_b" --data "$DEMO/data/line_b.yaml" \
    --target cpu-onnxruntime --target intel-openvino --set imgsz="$IMGSZ" \
    --out "$DEMO/dist" --runs 100 --warmup 10 --json "$DEMO/build.json" || status=$?

step "5/5 run the cpu-onnxruntime bundle on line B images (torch-free line runtime)"
$CLI verify "$DEMO/dist/line_b-cpu-onnxruntime" >/dev/null && echo "bundle verified: every sha256 matches"
$CLI run "$DEMO/dist/line_b-cpu-onnxruntime" --source "$DEMO/data/line_b/images/val" --max-frames 8 \
    --out "$DEMO/run.jsonl" --allow-failed
head -n 2 "$DEMO/run.jsonl"

printf '\nBundles: %s\nReport:  %s\n' "$DEMO/dist" "$DEMO/dist/line_b-cpu-onnxruntime/report.md"
exit $status
