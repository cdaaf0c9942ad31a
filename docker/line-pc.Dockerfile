# An x86 line PC: edge-lora-runtime with OpenVINO (and ONNX Runtime), no torch. UNTESTED: Docker was not
# available where this was written; the same install is tested without Docker by
# tests/test_device_distribution.py and `make device-venv`.
#
#   docker build -f docker/line-pc.Dockerfile -t edge-lora-line-pc .      # context: the repository root
#   docker run --rm -v "$PWD/dist:/bundles:ro" edge-lora-line-pc verify /bundles/line3-intel-openvino
#   docker run --rm -v "$PWD/dist:/bundles:ro" -v /srv/line3:/data edge-lora-line-pc \
#       run /bundles/line3-intel-openvino --source /data/incoming --watch --out /data/results.jsonl
# An Intel iGPU (intel-igpu-openvino) also needs --device /dev/dri and Intel's GPU compute runtime in the image.

# Stage 1: the wheel, built from this checkout the way `make device-wheel` builds it.
FROM python:3.12-slim AS wheel
WORKDIR /src
COPY edge_lora/ edge_lora/
COPY targets/ targets/
COPY calib/ calib/
COPY packaging/runtime/ packaging/runtime/
RUN pip wheel --no-cache-dir --no-deps -w /wheels packaging/runtime

# Stage 2: only the runtime and its dependencies (opencv-python-headless: no X11/GL libraries needed).
FROM python:3.12-slim
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-cache-dir "$(ls /tmp/wheels/edge_lora_runtime-*.whl)[openvino]" \
    && rm -rf /tmp/wheels \
    && useradd --create-home --uid 1000 line
USER line
WORKDIR /home/line
ENTRYPOINT ["edge-lora"]
CMD ["--help"]
