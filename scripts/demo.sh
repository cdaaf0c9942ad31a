#!/usr/bin/env bash
# The edge-lora demo, offline, on the project's own synthetic data (make demo).
#   1. generate a two-line synthetic PCB defect dataset (line A: the base's boards, line B: a new product)
#   2. train a small YOLO26n base on line A from the YAML (no download)
#   3. fine-tune a LoRA adapter for line B (frozen base)
#   4. merge the adapter exactly and prove parity
# Sizes are chosen to finish within ~10 minutes on 2 CPU cores.
set -euo pipefail
DEMO=${DEMO:-demo_out}
CLI=${CLI:-edge-lora}
IMGSZ=${IMGSZ:-128}
BASE_EPOCHS=${BASE_EPOCHS:-50}
LORA_EPOCHS=${LORA_EPOCHS:-25}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

mkdir -p "$DEMO"
step "1/4 synthetic dataset -> $DEMO/data"
[ -f "$DEMO/data/line_b.yaml" ] || $CLI demo-data "$DEMO/data" --train 160 --val 32 --imgsz "$IMGSZ"

step "2/4 base model on line A (full training from yolo26n.yaml)"
[ -f "$DEMO/base/model.pt" ] || $CLI train --full --base yolo26n.yaml --data "$DEMO/data/line_a.yaml" \
    --out "$DEMO/base" --epochs "$BASE_EPOCHS" --imgsz "$IMGSZ" --batch 16

step "3/4 LoRA adapter for line B (base frozen)"
$CLI train --base "$DEMO/base/model.pt" --data "$DEMO/data/line_b.yaml" --out "$DEMO/adapters/line_b" \
    --rank 8 --alpha 16 --epochs "$LORA_EPOCHS" --imgsz "$IMGSZ" --batch 16 --overwrite

step "4/4 exact merge (parity proven on line B val images)"
$CLI merge --base "$DEMO/base/model.pt" --adapter "$DEMO/adapters/line_b" --out "$DEMO/merged.pt" --overwrite
$CLI info "$DEMO/adapters/line_b"

printf '\nDone. Adapter: %s  merged checkpoint: %s\n' "$DEMO/adapters/line_b" "$DEMO/merged.pt"
