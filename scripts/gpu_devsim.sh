#!/usr/bin/env bash
# A Python HERE that has only what the lent GPU machine has, to test scripts/gpu_check.sh's install part
# (are the carried wheels complete? does edge-lora build from the tree there? does the polars stub do?).
#
#   bash scripts/gpu_devsim.sh                          # -> /tmp/gpu_devsim/bin/python
#   PYVER=3.11 WHL=/tmp/whl311 bash scripts/gpu_wheels.sh   # the same wheel set, for this Python
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_PY=/tmp/gpu_devsim/bin/python GPU_CHECK_INSTALL=1 GPU_CHECK_WHL=/tmp/whl311 \
#       bash scripts/gpu_check.sh
#
# A venv of .venv's base interpreter whose site-packages links every distribution of .venv except the ones
# the GPU machine lacks (the device tool's KINDS.md lists what it has): edge-lora, Ultralytics and its own
# packages, pydantic and its parts, faster-coco-eval, onnxslim, polars, OpenVINO/NNCF and the dev tools.
# Not simulated: the GPU machine's Python 3.12 and its versions of torch (2.11), onnxruntime (1.30), numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
SIM=${SIM:-/tmp/gpu_devsim}
VENV_PY=${PY:-.venv/bin/python}
BASE_PY=$("$VENV_PY" -c 'import sys; print(sys._base_executable)')

rm -rf "$SIM"
"$BASE_PY" -m venv "$SIM"
SITE=$("$SIM/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$VENV_PY" - "$SITE" <<'EOF'
import importlib.metadata as md
import os
import re
import sys
from pathlib import Path

site = Path(sys.argv[1])
ABSENT = {  # on the GPU machine: not installed (scripts/gpu_wheels.sh carries what the check needs)
    "edge-lora", "ultralytics", "ultralytics-thop", "ultralytics-platform", "pydantic", "pydantic-core",
    "annotated-types", "typing-inspection", "faster-coco-eval", "onnxslim", "polars", "polars-runtime-32",
    "openvino", "openvino-telemetry", "nncf", "pydot", "ruff", "pip", "setuptools",
}
linked = 0
for dist in md.distributions():
    name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
    if name in ABSENT or dist.files is None:
        continue
    root = Path(dist.locate_file(""))
    tops = {f.parts[0] for f in dist.files if f.parts and f.parts[0] != ".."}
    for top in tops:
        src, dst = root / top, site / top
        if src.exists() and not dst.exists() and not top.endswith(".pth"):
            os.symlink(src, dst)
            linked += 1
print(f"gpu_devsim: {linked} entries linked into {site}")
EOF
cd /tmp  # not the repo root: python -c puts the working directory on sys.path
"$SIM/bin/python" -c 'import torch, onnxruntime, peft, cv2; print("gpu_devsim: torch", torch.__version__)'
for m in ultralytics pydantic faster_coco_eval onnxslim polars edge_lora; do
    if "$SIM/bin/python" -c "import $m" 2>/dev/null; then echo "gpu_devsim: $m imports (it should not)" >&2; exit 1; fi
done
echo "gpu_devsim: $SIM/bin/python ready (no ultralytics, pydantic, faster-coco-eval, onnxslim, polars, edge-lora)"
