"""``build --on-device BUNDLE``: finish a bundle on its device with the torch-free runtime only.

First build what the backend builds on the device (the backend registry's ``device_build``: a TensorRT
engine for this exact GPU). Then validate the shipped artifact against the bundled unmerged reference
(``reference/unmerged.onnx``, run by ONNX Runtime here) with the profile's gates — now including latency,
measured on the device — and benchmark it. Results go to ``BUNDLE.on-device/`` so the
bundle itself (and its hashes) stays untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_lora import backends
from edge_lora.fileio import atomic_write_json, atomic_write_text


def finish_on_device(
    bundle: str | Path,
    *,
    data: str | Path,
    runs: int | None = None,
    warmup: int | None = None,
    max_images: int | None = None,
) -> dict[str, Any]:
    """Device build (a TensorRT engine), validation against the unmerged reference, bench; return a summary dict."""
    from edge_lora.bundle.pack import load_verified
    from edge_lora.profiles import TargetProfile, _validate, list_recipes
    from edge_lora.validate.bench import bench
    from edge_lora.validate.compare import validate
    from edge_lora.validate.report_md import render_markdown

    bundle = Path(bundle)
    manifest = load_verified(bundle)
    primary = manifest.primary
    candidate = bundle / primary.path
    spec = backends.get(primary.backend)
    # The manifest records where this bundle's device outputs go (bundles from before may differ from the
    # registry's layout); the registry says how to build them (a TensorRT engine for this exact GPU).
    outputs = list(primary.device_outputs) or list(spec.device_outputs)
    if outputs and spec.device_build:
        built = bundle / outputs[0]
        if not built.is_file():
            backends.load_attr(spec.device_build)(candidate.parent, built)
        candidate = built
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
