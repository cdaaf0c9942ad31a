#!/usr/bin/env bash
# Fill .whl/ with the wheels a lent GPU machine lacks, for scripts/gpu_check.sh (run HERE, where pip reaches
# PyPI; make gpu-wheels). The GPU machine has Python 3.12 with torch/torchvision (CUDA), onnx, onnxruntime,
# peft, safetensors, click, rich, pyyaml, scipy, matplotlib, opencv-python-headless, psutil, pillow, requests,
# httpx, sympy, ml-dtypes, colorama, setuptools ... and no package registry (see the device tool's KINDS.md).
# What edge-lora's train / merge / build (cpu-onnxruntime) path imports beyond that:
#   ultralytics, ultralytics-thop (model info), ultralytics-platform (lazy; tiny, carried to be safe),
#   pydantic (+ pydantic-core, annotated-types, typing-inspection, a recent typing-extensions),
#   faster-coco-eval (the evaluator), onnxslim (Ultralytics' ONNX simplifier; edge-lora requires it),
#   setuptools (>= 77, to build edge-lora from the travelling tree there), and edge-lora itself as a wheel
#   (the fallback when that build fails).
# Not carried: openvino / nncf (intel targets only, imported lazily), tensorrt (GBs; that part of the check
# runs only where it already imports), polars (~40 MB: Ultralytics imports it only to copy results.csv into
# a full-training checkpoint, inside try/except, and for plots, which edge-lora turns off; gpu_check.sh puts
# a stub there instead). WITH_POLARS=1 carries the real one.
#
# Versions are the ones installed in $PY (the project's .venv) so the GPU machine runs what the tests ran.
# Env: WHL (default .whl), PY (.venv/bin/python), PYVER (3.12: the GPU machine's; 3.11 to simulate here),
#      WITH_POLARS (0), MAX_MIB (50: fail when the folder is larger).
set -euo pipefail
cd "$(dirname "$0")/.."
WHL=${WHL:-.whl}
PY=${PY:-.venv/bin/python}
PYVER=${PYVER:-3.12}
WITH_POLARS=${WITH_POLARS:-0}
MAX_MIB=${MAX_MIB:-50}

pkgs=(ultralytics ultralytics-thop ultralytics-platform pydantic pydantic-core annotated-types
    typing-inspection typing-extensions faster-coco-eval onnxslim setuptools)
[ "$WITH_POLARS" = 1 ] && pkgs+=(polars polars-runtime-32)

# One version of each: pin to what $PY has.
mapfile -t specs < <("$PY" - "${pkgs[@]}" <<'EOF'
import importlib.metadata as md
import sys

for name in sys.argv[1:]:
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        sys.exit(f"gpu_wheels: {name} is not installed in {sys.executable}; make install first")
EOF
)

# .whl/ is a build output: keep it out of git (the device tool carries it by name)
if exclude=$(git rev-parse --git-path info/exclude 2>/dev/null) && [ "$WHL" = .whl ]; then
    mkdir -p "$(dirname "$exclude")"
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
fi
rm -rf "$WHL"
mkdir -p "$WHL"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
echo "gpu_wheels: downloading for CPython $PYVER x86_64: ${specs[*]}"
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }  # this machine's pip config
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${platforms[@]}" -d "$WHL" "${specs[@]}" 2>&1 | quiet

echo "gpu_wheels: building the edge-lora wheel from the working tree"
# from a copy of what the package is made of, so setuptools writes no build/ or egg-info into the tree
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cp -r pyproject.toml README.md edge_lora targets calib "$src"/
cp LICEN[CS]E* "$src"/ 2>/dev/null || true
find "$src" -name __pycache__ -prune -exec rm -rf {} +
"$PY" -m pip wheel --quiet --no-deps -w "$WHL" "$src" 2>&1 | quiet
# Which tree the wheel was built from (the GPU machine has no .git).
{
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "dirty_files: $(git status --porcelain --untracked-files=no 2>/dev/null | wc -l)"
    echo "python: $PYVER"
    echo "polars: $([ "$WITH_POLARS" = 1 ] && echo carried || echo stub)"
} >"$WHL/BUILD_INFO"

ls -l "$WHL"
total=$(du -cb "$WHL"/* | tail -1 | cut -f1)
mib=$(awk -v b="$total" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "gpu_wheels: $(ls "$WHL"/*.whl | wc -l) wheels, ${mib} MiB in $WHL (carry limit 64 MiB with the tree)"
if awk -v m="$mib" -v max="$MAX_MIB" 'BEGIN { exit !(m > max) }'; then
    echo "gpu_wheels: over MAX_MIB=$MAX_MIB" >&2
    exit 1
fi
