#!/usr/bin/env bash
# The GPU check (issue 9, item 11): edge-lora end to end on a lent GPU machine, in under 5 minutes.
#
# Run it ON the GPU machine, from the repo root, with the wheels of scripts/gpu_wheels.sh carried (.whl):
#   device run: command "bash scripts/gpu_check.sh", carry [".whl"], timeout_s 420
# It installs the carried wheels into /tmp/site (the machine has no registry) and edge-lora itself from the
# travelling tree, then, on the synthetic demo data at 128 px (scripts/gpu_check.py has the steps):
#   base: full training from yolo26n.yaml on line A on the GPU (Ultralytics turns AMP on for CUDA)
#   LoRA adapter on line B on the GPU: AMP recorded from the trainer itself (trainer.amp, the GradScaler,
#     the dtype of a conv and of a LoRA branch inside the first step), the frozen base bit-exact (the train
#     API's own check, edge_lora.json frozen_tensors_verified, plus the probe's model + EMA comparison)
#   merge parity, a cpu-onnxruntime bundle built and verified, the line runtime on 8 images
#   the TensorRT runner's CUDA memory path (cuda-bindings; no TensorRT needed)
#   TensorRT plan -> engine on the device -> TensorRT runner bench -> refusal of a tampered fingerprint, only
#     where `import tensorrt` works (its wheels are far over the 64 MiB carry limit); else skipped, with why
# Every step has a timeout cut to what is left of the budget, a failed step fails only what needs it, and the
# summary (wall time, pass/fail and key numbers per step) goes to $OUT/gpu_check.json, logs to $OUT/*.log,
# small records to $OUT/records.tar.gz (6 files), and is printed at the end.
#
# Here, without a GPU (a dry run of the same steps on the CPU, with .venv and --device cpu; slower):
#   GPU_CHECK_DEVICE=cpu bash scripts/gpu_check.sh
# Env: GPU_CHECK_DEVICE (0 | cpu), GPU_CHECK_PY (python3 | .venv/bin/python on cpu), GPU_CHECK_INSTALL
#      (1 on the GPU: install from .whl; 0 on cpu: use the Python as it is), GPU_CHECK_WHL (.whl),
#      GPU_CHECK_WORK (/tmp/gpu_check), GPU_CHECK_BUDGET (seconds for all steps: 280 | 1500 on cpu),
#      BASE_SECONDS / LORA_SECONDS (training wall time, Ultralytics' time mode: 60/40 | 150/90 on cpu; 0 uses
#      BASE_EPOCHS / LORA_EPOCHS), OUT (where the summary goes; the device tool sets it).
# Arguments are passed on to `gpu_check.py run` (e.g. --train-images 32 --val-images 8 --runs 20).
set -uo pipefail
T0=$(date +%s)
cd "$(dirname "$0")/.."
ROOT=$PWD

DEVICE=${GPU_CHECK_DEVICE:-0}
if [ "$DEVICE" = cpu ]; then
    PY=${GPU_CHECK_PY:-$([ -x .venv/bin/python ] && echo "$ROOT/.venv/bin/python" || echo python3)}
    INSTALL=${GPU_CHECK_INSTALL:-0}
    BUDGET=${GPU_CHECK_BUDGET:-1500}
    BASE_SECONDS=${BASE_SECONDS:-150}
    LORA_SECONDS=${LORA_SECONDS:-90}
    WORKERS=${GPU_CHECK_WORKERS:-2}
else
    PY=${GPU_CHECK_PY:-python3}
    INSTALL=${GPU_CHECK_INSTALL:-1}
    BUDGET=${GPU_CHECK_BUDGET:-280}
    BASE_SECONDS=${BASE_SECONDS:-60}
    LORA_SECONDS=${LORA_SECONDS:-40}
    WORKERS=${GPU_CHECK_WORKERS:-6}
fi
WHL=${GPU_CHECK_WHL:-$ROOT/.whl}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
OUT=${OUT:-$WORK-out}
SITE=${GPU_CHECK_SITE:-/tmp/site}

rm -rf "$WORK"
mkdir -p "$WORK" "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
# Ultralytics offline, with its settings (weights/runs/datasets folders) in the work dir, not in ~/.config
export YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$WORK/yolo_config"
# Nothing outside the GPU machine can be reached: make every download attempt (the AMP check's yolo26n.pt,
# the font check) fail at once instead of waiting on a connect timeout. Ultralytics then skips its AMP
# check with "Offline" and keeps AMP on, as it does on any offline machine.
export http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 \
    HTTPS_PROXY=http://127.0.0.1:9 no_proxy=localhost,127.0.0.1 NO_PROXY=localhost,127.0.0.1

echo "gpu_check: device=$DEVICE python=$PY install=$INSTALL budget=${BUDGET}s work=$WORK out=$OUT"
[ "$DEVICE" != cpu ] && { nvidia-smi -L 2>&1 | head -4 || true; }

# The steps; the orchestrator cuts every step to the budget, this outer timeout is the last resort.
timeout -k 10 $((BUDGET + 60)) "$PY" "$ROOT/scripts/gpu_check.py" run \
    --device "$DEVICE" --python "$PY" --install "$INSTALL" --whl "$WHL" --site "$SITE" \
    --work "$WORK" --out "$OUT" --budget "$BUDGET" --elapsed $(($(date +%s) - T0)) \
    --base-seconds "$BASE_SECONDS" --lora-seconds "$LORA_SECONDS" \
    --base-epochs "${BASE_EPOCHS:-50}" --lora-epochs "${LORA_EPOCHS:-25}" --workers "$WORKERS" "$@"
rc=$?

if [ $rc -gt 1 ]; then
    # The orchestrator was killed or crashed: keep what it had (gpu_check.json is rewritten after each step).
    echo "gpu_check: the orchestrator ended with $rc; the summary is what it had written" >&2
    for f in "$WORK"/logs/*.log; do
        [ -f "$f" ] && tail -c 4194304 "$f" >"$OUT/$(basename "$f")"
    done
    [ -f "$OUT/gpu_check.json" ] || printf '{"schema": 1, "kind": "edge-lora-gpu-check", "ok": false, "reason": "orchestrator exit %s before any step"}\n' "$rc" >"$OUT/gpu_check.json"
    cat "$OUT/gpu_check.json"
fi
echo "gpu_check: exit $rc after $(($(date +%s) - T0)) s; $(ls "$OUT" | wc -l) files in $OUT"
exit $rc
