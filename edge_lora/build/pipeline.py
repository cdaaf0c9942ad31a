"""``build()``: base + adapter(s) -> verified deploy bundle(s), one per (adapter, target).

The pipeline, per adapter: merge; then per target: reference -> export -> validate -> choose -> bundle.
Each stage is a function of :mod:`edge_lora.build.stages`, cached by the hash of its inputs, so a re-run
redoes only what changed and an interrupted build resumes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edge_lora.build.cache import Event, StageCache, TimedStages
from edge_lora.build.choose import accuracy_aware_variant, choose_precision
from edge_lora.build.inputs import (
    AdapterInput,
    TargetInput,
    check_reference_accuracy,
    fit_imgsz,
    resolve_inputs,
)
from edge_lora.build.results import BuildResult, BundleResult, StageRecord
from edge_lora.build.stages import (
    BuildContext,
    Merged,
    export_stage,
    merge_stage,
    reference_stage,
    validate_stage,
)
from edge_lora.build.write import BundleContent, write_bundle_for


def build(
    *,
    base: str | Path,
    adapters: list[str | Path],
    targets: list[str],
    data: str | Path,
    out: str | Path,
    cache: str | Path | None = None,
    precision: str | None = None,
    overrides: dict[str, Any] | None = None,
    clean: bool = False,
    archive: bool = False,
    max_images: int | None = None,
    runs: int | None = None,
    warmup: int | None = None,
    on_event: Event | None = None,
) -> BuildResult:
    """Build one verified bundle per (adapter, target) in ``out``.

    Args:
        base: base checkpoint the adapters were trained on.
        adapters: adapter package folders (one product line each).
        targets: profile names, family names (``jetson`` -> default Jetson profile) or YAML files.
        data: data YAML; val split for validation, train split for INT8 calibration.
        out: output folder for the bundles (``out/<adapter>-<target>``).
        cache: stage cache (default ``out/.cache``).
        precision: override the profile's precision (``auto`` builds every precision and ships the fastest
            that passes).
        overrides: dotted profile fields to override on every target, e.g. ``{"imgsz": 320}``.
        clean: drop the cache first.
        max_images, runs, warmup: validation size and latency runs (default: all val images, profile's runs).
        on_event: ``f(kind, data)`` for ``stage_start``, ``stage_end``, ``progress`` (inside a stage),
            ``note`` and ``bundle`` events.
    """
    emit = on_event or (lambda _kind, _data: None)
    inputs = resolve_inputs(
        base=base,
        adapters=adapters,
        targets=targets,
        data=data,
        out=out,
        precision=precision,
        overrides=overrides,
        archive=archive,
        max_images=max_images,
        runs=runs,
        warmup=warmup,
    )
    cache_dir = Path(cache) if cache else inputs.out / ".cache"
    if clean and cache_dir.exists():
        shutil.rmtree(cache_dir)
    ctx = BuildContext(inputs, TimedStages(StageCache(cache_dir), emit))
    results = []
    for adapter in inputs.adapters:
        merge_records: list[StageRecord] = []
        merged = merge_stage(ctx, adapter, merge_records)
        for target in inputs.targets:
            results.append(build_target(ctx, adapter, merged, target, list(merge_records), emit))
            emit("bundle", results[-1].to_dict())
    return BuildResult(results)


def build_target(
    ctx: BuildContext,
    adapter: AdapterInput,
    merged: Merged,
    target: TargetInput,
    records: list[StageRecord],
    emit: Event,
) -> BundleResult:
    """One (adapter, target): reference -> export -> validate and choose -> bundle."""
    inputs = ctx.inputs
    profile, imgsz_note = fit_imgsz(
        target.profile, adapter.meta.get("imgsz"), "imgsz" in inputs.overrides, adapter.name
    )
    notes = [imgsz_note] if imgsz_note else []
    for note in notes:
        emit("note", {"message": note})

    def judge_reference(report: Any) -> None:
        warning = check_reference_accuracy(
            report.reference.accuracy.map50_95, adapter.meta, adapter.name, inputs.data, profile.imgsz
        )
        if warning:
            notes.append(warning)
            emit("note", {"message": warning})

    reference = reference_stage(ctx, adapter, profile, records)
    exported = export_stage(ctx, merged, profile, records)
    for note in exported.result.notes:  # e.g. a quant-aware adapter built for another scheme (also cached)
        notes.append(note)
        emit("note", {"message": note})
    searched = accuracy_aware_variant(profile)

    def retry_int8() -> dict[str, Any] | None:
        if searched is None:
            return None
        note = f"{profile.name}: INT8 failed its gates; trying accuracy-aware INT8 (some convs kept float)"
        notes.append(note)
        emit("note", {"message": note})
        (artifact,) = export_stage(ctx, merged, searched, records, precisions=["int8"]).artifacts
        return {**artifact, "variant": "accuracy-aware"}

    candidates, chosen = choose_precision(
        profile,
        exported.artifacts,
        lambda artifact: validate_stage(ctx, adapter, profile, artifact, records),
        on_first=judge_reference,
        retry_int8=retry_int8,
    )
    if chosen is not None and chosen.get("variant") == "accuracy-aware" and searched is not None:
        profile = searched  # the bundle records the profile its artifact was built with
    bundle = write_bundle_for(
        BundleContent(
            out=inputs.out,
            adapter=adapter,
            base=inputs.base,
            base_sha=inputs.base_sha,
            merged_sha=merged.sha256,
            unmerged=reference.path,
            profile=profile,
            names=inputs.spec.names,
            calibration=exported.calibration,
            candidates=candidates,
            chosen=chosen,
            records=records,
            archive=inputs.archive,
        )
    )
    return BundleResult(
        adapter.name,
        profile.name,
        bundle,
        chosen is not None,
        chosen["precision"] if chosen else None,
        [{k: v for k, v in c.items() if k != "report"} for c in candidates],
        records,
        target.message,
        notes,
    )
