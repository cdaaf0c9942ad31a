"""edge-lora: LoRA fine-tuning, exact merge, quantized export and on-device validation for YOLO."""

__version__ = "0.1.0"
