"""The ONNX backend's host side: export a merged checkpoint to ONNX and prove it, quantize it to QDQ.

* :mod:`.exporter`: :func:`~.exporter.export_onnx` (FP32/FP16), argument mapping, the provenance sidecar;
* :mod:`.ultralytics_export`: Ultralytics' exporter, wrapped, and the workarounds it needs;
* :mod:`.graph`: graph facts (``onnx.checker``, the decoded-predictions tensor) and one ONNX Runtime run;
* :mod:`.check`: ONNX Runtime vs PyTorch, judged by :mod:`edge_lora.validate.parity`;
* :mod:`.qdq`: INT8 QDQ with ``onnxruntime.quantization`` under the policy of :mod:`edge_lora.export.policy`
  (the same graph feeds TensorRT).
"""
