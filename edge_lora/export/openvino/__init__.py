"""The OpenVINO backend's host side: convert the FP32 ONNX to an IR folder (FP32, FP16, BF16, INT8) and prove it.

* :mod:`.exporter`: :func:`~.exporter.export_openvino`, the atomic output folder, the result record;
* :mod:`.quantize`: INT8 with NNCF (the ignored scope, accuracy-aware quantization);
* :mod:`.accuracy`: the mAP validation function accuracy-aware INT8 ranks layers with;
* :mod:`.ir`: ONNX facts, Ultralytics' ``metadata.yaml`` and ``rt_info``, quantizer counts;
* :mod:`.check`: the IR, run by the device's runner, vs ONNX Runtime FP32, judged by
  :mod:`edge_lora.validate.parity`.
"""
