"""Write one (adapter, target)'s deploy bundle: the chosen artifact, the reference, report and manifest.

A bundle whose gates passed is written ``complete``; otherwise it is written ``failed`` with the reason
(the candidate tried last is shown, so the report says what failed). Written atomically either way.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_lora import backends
from edge_lora.build.choose import SUMMARY_KEYS
from edge_lora.build.inputs import AdapterInput
from edge_lora.build.results import StageRecord

if TYPE_CHECKING:
    from edge_lora.profiles import TargetProfile


@dataclass(frozen=True)
class BundleContent:
    """What goes into one bundle (``out/<adapter>-<target>``).

    Attributes:
        out: the folder bundles are written in.
        adapter: the adapter package the bundle ships.
        base, base_sha: the base checkpoint and its hash (provenance).
        merged_sha: the merged checkpoint's hash (provenance).
        unmerged: the unmerged ONNX reference shipped as ``reference/unmerged.onnx``.
        profile: the resolved target profile.
        names: class id -> name.
        calibration: the INT8 calibration folder of the export, or None.
        candidates: every precision tried (``choose.candidate_row``), in order.
        chosen: the one shipped, or None when none passed.
        records: the stages run for it, for the report.
        archive: also write ``<bundle>.tar.gz``.
    """

    out: Path
    adapter: AdapterInput
    base: Path
    base_sha: str
    merged_sha: str
    unmerged: Path
    profile: TargetProfile
    names: dict[int, str]
    calibration: Path | None
    candidates: list[dict[str, Any]]
    chosen: dict[str, Any] | None
    records: list[StageRecord]
    archive: bool = False

    @property
    def name(self) -> str:
        """The bundle's name, ``<adapter>-<target>``."""
        return f"{self.adapter.name}-{self.profile.name}"

    @property
    def shown(self) -> dict[str, Any] | None:
        """The candidate whose files and numbers the bundle carries: the chosen one, else the last tried."""
        return self.chosen or (self.candidates[-1] if self.candidates else None)


def bundle_files_for(artifact: dict[str, Any]) -> tuple[dict[str, Path], str, list[str]]:
    """Bundle files of one artifact -> (files, path of the runner's file in the bundle, device outputs), as
    its backend's registry entry lays them out (``model/model.onnx``, ``model/model_openvino_model/``,
    ``model/tensorrt/``; bundles from before with other paths still run: the manifest records the path)."""
    return backends.get(artifact["backend"]).bundle_files(Path(artifact["path"]))


def on_device_steps(profile: TargetProfile, proxy: bool) -> list[str]:
    """What the bundle's README tells the device to run: the backend's device build, then validation."""
    steps = []
    device_step = backends.get(profile.backend).device_step  # e.g. a TensorRT engine for this GPU
    if device_step:
        steps.append(device_step)
    steps.append(
        f"edge-lora build --on-device . --data DATA.yaml   # validate + bench with the torch-free runtime on the {profile.name}"
    )
    if proxy:
        steps.append(
            "latency gates were skipped on the build host (host proxy): they are checked by the step above"
        )
    return steps


def _artifact_entry(shown: dict[str, Any], profile: TargetProfile, art_path: str, outputs: list[str]) -> dict:
    return {
        "path": art_path,
        "backend": shown["backend"],
        "precision": shown["precision"],
        "role": "primary",
        # The settings of the runner the bundle runs (a TensorRT engine's: none), not of the one that
        # validated it here.
        "runner_settings": backends.get(shown["backend"]).runner_settings(profile, Path(shown["path"])),
        "device_outputs": outputs,
    }


def _manifest_fields(content: BundleContent, artifacts: list[dict]) -> dict[str, Any]:
    from edge_lora.export.artifact import library_versions

    profile, shown = content.profile, content.shown
    report = shown["report"] if shown else None
    calib = content.calibration
    calib_meta = json.loads((calib / "calibration.json").read_text()) if calib else None
    proxy = bool(report and report["latency_is_proxy"])
    return {
        "name": content.name,
        "target": profile,
        "classes": content.names,
        "imgsz": profile.imgsz,
        "postprocessing": {
            "end2end": profile.output == "end2end",
            "conf": profile.gates.agreement_conf,
            "iou": profile.nms_iou or 0.7,
            "max_det": profile.max_det,
        },
        "artifacts": artifacts,
        "provenance": {
            "base": {"path": str(content.base), "sha256": content.base_sha},
            "adapter": {"path": str(content.adapter.path), "files": content.adapter.files},
            "merged": {"sha256": content.merged_sha},
            "calibration": {
                "sha256": calib_meta["sha256"],
                "recipe": calib_meta.get("recipe", {}).get("name"),
                "images": len(calib_meta.get("images", [])),
            }
            if calib_meta
            else None,
            "toolchain": library_versions(),
        },
        "validation": {
            "passed": bool(content.chosen),
            "gates": report["gates"]["checks"] if report else [],
            "summary": {k: shown[k] for k in SUMMARY_KEYS},
            "latency_is_proxy": proxy,
            "proxy_reason": report["proxy_reason"] if report else "",
        }
        if shown
        else None,
        "on_device_steps": on_device_steps(profile, proxy),
    }


def write_bundle_for(content: BundleContent) -> Path:
    """Write the bundle (``complete`` when a precision was chosen, else ``failed``); its path."""
    from edge_lora.bundle.pack import write_bundle, write_failed_bundle
    from edge_lora.report import write_report

    shown = content.shown
    files: dict[str, Any] = {"reference/unmerged.onnx": content.unmerged}
    artifacts = []
    if shown is not None:
        art_files, art_path, outputs = bundle_files_for(shown)
        files.update(art_files)
        artifacts.append(_artifact_entry(shown, content.profile, art_path, outputs))
        files["validation.json"] = Path(shown["validation"])
    tmpdir = Path(tempfile.mkdtemp(prefix="edge-lora-report-"))
    try:
        write_report(
            tmpdir,
            profile=content.profile,
            candidates=content.candidates,
            chosen=content.chosen,
            stages=[asdict(r) for r in content.records],
            names=content.names,
        )
        for f in tmpdir.rglob("*"):
            if f.is_file():
                files[f.relative_to(tmpdir).as_posix()] = f
        fields = _manifest_fields(content, artifacts)
        target = content.out / content.name
        if content.chosen:
            return write_bundle(target, files, fields, overwrite=True, archive=content.archive)
        tried = (
            ", ".join(
                f"{c['precision']}{' ' + c['variant'] if c.get('variant') else ''}: {'PASS' if c['passed'] else 'FAIL'}"
                for c in content.candidates
            )
            or "nothing exported"
        )
        reason = f"no precision passed the gates of {content.profile.name} ({tried})"
        return write_failed_bundle(target, files, fields, reason, overwrite=True, archive=content.archive)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
