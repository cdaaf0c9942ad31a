"""On-device runtime: runners for exported detectors and the numpy/OpenCV pre- and postprocessing.

Torch- and Ultralytics-free, so it installs on a Jetson or a line PC. Names are resolved lazily (PEP 562):
``import edge_lora.runtime`` imports nothing heavy, and a backend (onnxruntime, openvino, tensorrt) is
imported only when a runner of that kind is activated.

    from edge_lora.runtime import load_runner, preprocess, postprocess

    with load_runner("model.onnx") as runner:
        batch, infos = preprocess([image_bgr], runner.metadata["imgsz"])
        detections = postprocess(runner.infer(batch), infos, end2end=runner.metadata["end2end"])
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Runner": "base",
    "TensorMetadata": "base",
    "normalize_metadata": "base",
    "Detections": "prepost",
    "LetterboxInfo": "prepost",
    "letterbox": "prepost",
    "preprocess": "prepost",
    "postprocess": "prepost",
    "scale_boxes": "prepost",
    "nms": "prepost",
    "OnnxRuntimeRunner": "onnxrt",
    "read_onnx_metadata": "onnxrt",
    "OpenVinoRunner": "openvino_rt",
    "TensorRtRunner": "tensorrt_rt",
    "current_device_fingerprint": "tensorrt_rt",
    "check_engine_fingerprint": "tensorrt_rt",
    "compare_fingerprints": "tensorrt_rt",
    "load_runner": "loader",
    "runner_class": "loader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
