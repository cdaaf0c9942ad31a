# A Jetson (JetPack 6, L4T r36): edge-lora-runtime with TensorRT and OpenCV from JetPack, not from PyPI.
# UNTESTED: neither Docker nor a Jetson was available where this was written. Build it on the Jetson (or an
# arm64 builder) and run it with NVIDIA's container runtime:
#
#   docker build -f docker/jetpack.Dockerfile -t edge-lora-jetson .       # context: the repository root
#   docker run --rm --runtime nvidia -v "$PWD/dist:/bundles" edge-lora-jetson \
#       build --on-device /bundles/line3-jetson-orin-nano --data /bundles/line3-val/data.yaml
#
# The bundle folder is mounted writable: `engine build` writes the engine for this GPU into it, and
# `build --on-device` writes BUNDLE.on-device/ beside it. Pick the tag that matches the JetPack on the device
# (`cat /etc/nv_tegra_release`); an engine built for one TensorRT version is refused by another.
ARG L4T_JETPACK=nvcr.io/nvidia/l4t-jetpack:r36.4.0
FROM ${L4T_JETPACK}

# TensorRT's Python binding and OpenCV (built with GStreamer, for CSI cameras) come from JetPack: the
# l4t-jetpack image is expected to have both for the system Python 3.10; where one is missing, it is taken from
# JetPack's apt repository (python3-libnvinfer) or Ubuntu's (python3-opencv, also built with GStreamer).
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip python3-venv \
    && (python3 -c "import tensorrt" || apt-get install -y --no-install-recommends python3-libnvinfer) \
    && (python3 -c "import cv2" || apt-get install -y --no-install-recommends python3-opencv) \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -c "import tensorrt, cv2; print('TensorRT', tensorrt.__version__, '- OpenCV', cv2.__version__)"

WORKDIR /src
COPY edge_lora/ edge_lora/
COPY targets/ targets/
COPY calib/ calib/
COPY packaging/runtime/ packaging/runtime/
# The venv sees the system site-packages (JetPack's tensorrt and cv2). The wheel goes in with --no-deps, so
# pip neither pulls PyPI's tensorrt nor puts opencv-python-headless (no GStreamer) in front of JetPack's cv2;
# requirements-jetson.txt is the rest of its dependencies (numpy < 2 for JetPack's cv2, cuda-python 12.x).
RUN python3 -m venv --system-site-packages /opt/edge-lora \
    && /opt/edge-lora/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/edge-lora/bin/pip wheel --no-cache-dir --no-deps -w /tmp/wheels packaging/runtime \
    && /opt/edge-lora/bin/pip install --no-cache-dir --no-deps /tmp/wheels/edge_lora_runtime-*.whl \
    && /opt/edge-lora/bin/pip install --no-cache-dir -r packaging/runtime/requirements-jetson.txt \
    && /opt/edge-lora/bin/python -c "import tensorrt, cv2, edge_lora.runtime.tensorrt_rt" \
    && /opt/edge-lora/bin/edge-lora targets \
    && rm -rf /tmp/wheels /src
ENV PATH=/opt/edge-lora/bin:$PATH
WORKDIR /
ENTRYPOINT ["edge-lora"]
CMD ["--help"]
