"""``build()``: base + adapter(s) -> verified deploy bundle(s), one per (adapter, target).

Stages: merge -> reference (unmerged ONNX) -> export/quantize (calibration inside) -> validate -> choose ->
bundle. Each stage's result is cached under ``cache/<stage>/<key>/`` where the key hashes the stage's inputs;
a stage folder is written in a temp dir and renamed with ``done.json`` inside, whose file hashes are checked
before reuse. A re-run redoes only what changed, an interrupted build resumes, and nothing half-written or
tampered is reused. Bundles are written atomically; a gate failure leaves a bundle marked ``failed``.

Modules: ``pipeline`` (``build()``), ``inputs`` (checked arguments, ``fit_imgsz``, the reference check),
``cache`` (``StageCache``), ``stages`` (one function per stage, typed results), ``choose`` (the precision),
``write`` (the bundle), ``results`` (what ``build()`` returns).
"""

from __future__ import annotations

from edge_lora.build.cache import Event, StageCache
from edge_lora.build.inputs import (
    MIN_RECORDED_MAP,
    MIN_REFERENCE_SHARE,
    check_reference_accuracy,
    fit_imgsz,
)
from edge_lora.build.pipeline import build
from edge_lora.build.results import BuildResult, BundleResult, StageRecord
from edge_lora.build.write import bundle_files_for, on_device_steps

#: Names of the single-module ``build.py`` (tests and scripts import them).
_bundle_files_for = bundle_files_for
_on_device_steps = on_device_steps

__all__ = [
    "MIN_RECORDED_MAP",
    "MIN_REFERENCE_SHARE",
    "BuildResult",
    "BundleResult",
    "Event",
    "StageCache",
    "StageRecord",
    "build",
    "bundle_files_for",
    "check_reference_accuracy",
    "fit_imgsz",
    "on_device_steps",
]
