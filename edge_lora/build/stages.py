"""The build's stages, one function each: merge, reference, export, validate.

Each stage runs through the stage cache (:class:`~edge_lora.build.cache.TimedStages`) under a key that
hashes its inputs, writes into the temp folder it is given, and returns a typed result. A result
serialises to the JSON ``done.json`` stores with its paths relative to its folder (``to_json``) and is read
back against the folder the cache returns (``from_json``), so a moved cache is still reused. The keys and
the JSON are those of the single-module ``build.py`` before, so its caches are reused, not misread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_lora.build.cache import TimedStages
from edge_lora.build.inputs import AdapterInput, BuildInputs
from edge_lora.build.results import StageRecord
from edge_lora.fileio import atomic_write_json, sha256_file

if TYPE_CHECKING:
    from edge_lora.export.api import ExportResult
    from edge_lora.profiles import TargetProfile

#: ``validation.json`` as ``ValidationReport.from_dict`` reads it: a cache entry from an older format (no
#: Ultralytics mAP, no samples) is recomputed, never misread. Bump it when that format changes.
REPORT_FORMAT = 2


@dataclass
class BuildContext:
    """What every stage of one build shares: its inputs, the stage cache, and the reference passes.

    ``reference_cache``: one PyTorch reference pass per (adapter, imgsz, data) for every candidate
    validated in this build (in memory: keyed by paths, it must not outlive the build).
    """

    inputs: BuildInputs
    stages: TimedStages
    reference_cache: dict[tuple, Any] = field(default_factory=dict)


def _rel(path: str | Path, folder: Path) -> str:
    return Path(path).relative_to(folder).as_posix()


# ------------------------------------------------------------------------------------------------ merge
@dataclass(frozen=True)
class Merged:
    """The merged checkpoint (base + adapter folded in) and its merge parity."""

    path: Path
    sha256: str
    parity_max_rel: float | None

    def to_json(self, folder: Path) -> dict[str, Any]:
        """``done.json`` form, paths relative to ``folder``."""
        return {
            "merged": _rel(self.path, folder),
            "sha256": self.sha256,
            "parity_max_rel": self.parity_max_rel,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], folder: Path) -> Merged:
        """Inverse of :meth:`to_json`, against the folder the stage now lives in."""
        return cls(folder / doc["merged"], doc["sha256"], doc.get("parity_max_rel"))


def merge_stage(ctx: BuildContext, adapter: AdapterInput, records: list[StageRecord]) -> Merged:
    """Fold ``adapter`` into the base (one per adapter, shared by its targets)."""
    inputs = ctx.inputs

    def run(tmp: Path) -> dict[str, Any]:
        from edge_lora.merge import merge

        report = merge(inputs.base, adapter.path, tmp / "merged.pt", data=inputs.data)
        return Merged(tmp / "merged.pt", report.out_sha256, report.parity.max_rel).to_json(tmp)

    key = {"base": inputs.base_sha, "adapter": adapter.files}
    folder, doc = ctx.stages.run(f"merge:{adapter.name}", key, run, records)
    return Merged.from_json(doc, folder)


# -------------------------------------------------------------------------------------------- reference
@dataclass(frozen=True)
class Reference:
    """The unmerged model (base + LoRA branches) exported to ONNX: the bundle's device-side reference."""

    path: Path

    def to_json(self, folder: Path) -> dict[str, Any]:
        """``done.json`` form, paths relative to ``folder``."""
        return {"path": _rel(self.path, folder)}

    @classmethod
    def from_json(cls, doc: dict[str, Any], folder: Path) -> Reference:
        """Inverse of :meth:`to_json`."""
        return cls(folder / doc["path"])


def reference_stage(
    ctx: BuildContext, adapter: AdapterInput, profile: TargetProfile, records: list[StageRecord]
) -> Reference:
    """Export the unmerged model at the profile's input size and output form."""
    inputs = ctx.inputs
    end2end = profile.output == "end2end"

    def run(tmp: Path) -> dict[str, Any]:
        from edge_lora.export.unmerged import export_unmerged_onnx

        path = export_unmerged_onnx(
            inputs.base,
            adapter.path,
            tmp / "unmerged.onnx",
            imgsz=profile.imgsz,
            opset=profile.opset,
            end2end=end2end,
            max_det=profile.max_det,
        )
        return Reference(Path(path)).to_json(tmp)

    key = {
        "base": inputs.base_sha,
        "adapter": adapter.files,
        "imgsz": profile.imgsz,
        "opset": profile.opset,
        "end2end": end2end,
        "max_det": profile.max_det,
    }
    folder, doc = ctx.stages.run("reference", key, run, records)
    return Reference.from_json(doc, folder)


# ----------------------------------------------------------------------------------------------- export
@dataclass(frozen=True)
class Exported:
    """Every precision the profile builds from the merged model (an ``ExportResult``), with paths resolved."""

    result: ExportResult

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        """The built artifacts as dicts (``backend``, ``precision``, absolute ``path``, ...)."""
        return self.result.to_dict()["artifacts"]

    @property
    def calibration(self) -> Path | None:
        """The calibration folder (INT8), or None."""
        calib = self.result.to_dict().get("calibration")
        return Path(calib) if calib else None

    def to_json(self, folder: Path) -> dict[str, Any]:
        """``done.json`` form: the export result relative to ``folder``, and a verdict for the display."""
        res = self.result
        verdict = f"{len(res.artifacts)} artifacts" + (
            f", {len(res.failures)} failed" if res.failures else ""
        )
        return {**res.to_dict(relative_to=folder), "verdict": verdict}

    @classmethod
    def from_json(cls, doc: dict[str, Any], folder: Path) -> Exported:
        """Inverse of :meth:`to_json`."""
        from edge_lora.export.api import ExportResult

        return cls(ExportResult.from_dict(doc, folder))


def export_stage(
    ctx: BuildContext,
    merged: Merged,
    profile: TargetProfile,
    records: list[StageRecord],
    precisions: list[str] | None = None,
) -> Exported:
    """Export and quantize the merged model for the profile (INT8 calibration inside); ``precisions``
    overrides the profile's chain (the accuracy-aware INT8 retry builds only int8)."""
    inputs = ctx.inputs

    def run(tmp: Path) -> dict[str, Any]:
        from edge_lora.export.api import export

        return Exported(
            export(
                merged.path,
                profile,
                tmp / "export",
                data=inputs.data,
                precisions=precisions,
                overwrite=True,
                on_progress=lambda message: ctx.stages.emit("progress", {"message": message}),
            )
        ).to_json(tmp)

    key = {"merged": merged.sha256, "profile": profile.sha256(), "data": inputs.data_hash}
    if precisions is not None:  # only then: earlier caches keep their keys
        key["precisions"] = list(precisions)
    folder, doc = ctx.stages.run(f"export:{profile.name}", key, run, records)
    return Exported.from_json(doc, folder)


# --------------------------------------------------------------------------------------------- validate
@dataclass(frozen=True)
class Validated:
    """One candidate's validation against the unmerged PyTorch reference: verdict, JSON and Markdown."""

    passed: bool
    json: Path
    md: Path

    @property
    def report_doc(self) -> dict[str, Any]:
        """``validation.json`` as written."""
        return json.loads(self.json.read_text())

    def to_json(self, folder: Path) -> dict[str, Any]:
        """``done.json`` form, paths relative to ``folder``."""
        return {
            "passed": self.passed,
            "verdict": "PASS" if self.passed else "FAIL",
            "json": _rel(self.json, folder),
            "md": _rel(self.md, folder),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], folder: Path) -> Validated:
        """Inverse of :meth:`to_json`."""
        return cls(doc["passed"], folder / doc["json"], folder / doc["md"])


def validate_stage(
    ctx: BuildContext,
    adapter: AdapterInput,
    profile: TargetProfile,
    artifact: dict[str, Any],
    records: list[StageRecord],
) -> Validated:
    """Validate one exported artifact against base + adapter (unmerged, PyTorch) with the profile's gates."""
    inputs = ctx.inputs

    def run(tmp: Path) -> dict[str, Any]:
        from edge_lora.validate.compare import validate
        from edge_lora.validate.reference import torch_reference
        from edge_lora.validate.report_md import render_markdown

        rep = validate(
            artifact["path"],
            data=inputs.data,
            target=profile,
            reference=torch_reference(inputs.base, adapter.path, target=profile),
            max_images=inputs.max_images,
            runs=inputs.runs,
            warmup=inputs.warmup,
            reference_cache=ctx.reference_cache,
        )
        atomic_write_json(tmp / "validation.json", rep.to_dict())
        (tmp / "report.md").write_text(render_markdown(rep))
        return Validated(rep.passed, tmp / "validation.json", tmp / "report.md").to_json(tmp)

    key = {
        "artifact": sha256_file(artifact["path"]),
        "profile": profile.sha256(),
        "data": inputs.data_hash,
        "max_images": inputs.max_images,
        "runs": inputs.runs,
        "warmup": inputs.warmup,
        "reference": {"base": inputs.base_sha, "adapter": adapter.files},
        "report_format": REPORT_FORMAT,
    }
    folder, doc = ctx.stages.run(f"validate:{profile.name}:{artifact['precision']}", key, run, records)
    return Validated.from_json(doc, folder)
