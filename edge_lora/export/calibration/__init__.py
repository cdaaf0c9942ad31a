"""Calibration sets for INT8 quantization: selection, a hash-checked record, and a streaming reader.

Three steps, three functions (one module each, re-exported here so ``edge_lora.export.calibration``
stays the one name to import from):

* :func:`select_calibration` draws images from a dataset split the way a recipe (``calib/*.yaml``) says
  (``stratified``: rare classes first, so a defect seen in one image still calibrates; or ``random``),
  drops byte-identical copies, and writes ``calibration.json``: the data YAML hash, the split's content
  hash, the resolved recipe, every image with its sha256 and classes, and the class coverage.
* :meth:`CalibrationSet.load` reads that record back and re-hashes every image, so a set that no longer
  matches its images is refused instead of silently calibrating on something else.
* :meth:`CalibrationSet.batches` streams NCHW float32 batches through the one runtime preprocessing
  (:func:`edge_lora.runtime.prepost.preprocess`), reading one batch of images at a time. Adapters:
  :class:`OrtCalibrationReader` (ONNX Runtime's ``CalibrationDataReader`` protocol) and
  :meth:`CalibrationSet.iterable` (re-iterable, for ``nncf.Dataset``).

Quantized artifacts are only valid for the exact weights and calibration set they were built from:
:func:`calibration_key` names that combination and :func:`assert_fresh` refuses a stale one.

Torch-free (numpy, OpenCV); ONNX Runtime and NNCF are never imported here.
"""

from __future__ import annotations

from edge_lora.export.calibration.freshness import (
    StaleCalibrationError,
    assert_fresh,
    calibration_key,
    calibration_record,
)
from edge_lora.export.calibration.readers import CalibrationBatches, OrtCalibrationReader
from edge_lora.export.calibration.record import (
    CALIBRATION_FILE,
    CALIBRATION_SCHEMA_VERSION,
    CalibImage,
    CalibrationSet,
)
from edge_lora.export.calibration.select import accepting_recipes, select_calibration

__all__ = [
    "CALIBRATION_FILE",
    "CALIBRATION_SCHEMA_VERSION",
    "CalibImage",
    "CalibrationBatches",
    "CalibrationSet",
    "OrtCalibrationReader",
    "StaleCalibrationError",
    "accepting_recipes",
    "assert_fresh",
    "calibration_key",
    "calibration_record",
    "select_calibration",
]
