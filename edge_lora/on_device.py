"""``build --on-device BUNDLE``: finish a bundle on its device with the torch-free runtime only.

TensorRT: build the engine for this exact device. Then validate the shipped artifact against the bundled
unmerged reference (``reference/unmerged.onnx``, run by ONNX Runtime here) with the profile's gates — now
including latency, measured on the device — and benchmark it. Results go to ``BUNDLE.on-device/`` so the
bundle itself (and its hashes) stays untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_lora.fileio import atomic_write_json, atomic_write_text


def finish_on_device(
    bundle: str | Path,
    *,
    data: str | Path,
    runs: int | None = None,
    warmup: int | None = None,
    max_images: int | None = None,
) -> dict[str, Any]:
    """Engine build (TensorRT), validation against the unmerged reference, bench; return a summary dict."""
    from edge_lora.bundle.pack import load_verified
    from edge_lora.profiles import TargetProfile, _validate, list_recipes
    from edge_lora.validate.bench import bench
    from edge_lora.validate.compare import validate
    from edge_lora.validate.report_md import render_markdown

    bundle = Path(bundle)
    manifest = load_verified(bundle)
    primary = manifest.primary
    candidate = bundle / primary.path
    if primary.backend == "tensorrt":
        engine = bundle / primary.device_outputs[0]
        if not engine.is_file():
            from edge_lora.runtime.tensorrt_engine import build_engine

            build_engine(candidate.parent, engine)
        candidate = engine
    out = bundle.with_name(bundle.name + ".on-device")
    out.mkdir(exist_ok=True)
    where = f"{bundle / 'manifest.json'}: target.profile"
    doc = manifest.target.profile
    fix = {}
    if doc.get("calibration") and doc["calibration"] not in list_recipes():
        # A user recipe file lived on the build host; validation does not calibrate, but the schema wants
        # an INT8 profile to name a recipe, so name a shipped one (provenance keeps the real one's hash).
        fix = {"calibration": "default"}
    profile = _validate(TargetProfile, doc, lambda _loc: where).with_overrides(fix, origin=where)
    report = validate(
        candidate,
        data=data,
        target=profile,
        reference_artifact=bundle / "reference" / "unmerged.onnx",
        max_images=max_images,
        runs=runs,
        warmup=warmup,
    )
    atomic_write_json(out / "validation.json", report.to_dict())
    atomic_write_text(out / "report.md", render_markdown(report))
    b = bench(candidate, runs=runs or 200, warmup=warmup or 20, settings=primary.runner_settings or None)
    atomic_write_json(out / "bench.json", b.to_dict())
    return {"passed": report.passed, "out": str(out), "latency_is_proxy": report.latency_is_proxy}
