"""``build()``: base + adapter(s) -> verified deploy bundle(s), one per (adapter, target).

Stages: merge -> reference (unmerged ONNX) -> export/quantize (calibration inside) -> validate -> bundle.
Each stage's result is cached under ``cache/<stage>/<key>/`` where the key hashes the stage's inputs; a
stage folder is written in a temp dir and renamed with ``done.json`` inside, whose file hashes are checked
before reuse. A re-run redoes only what changed, an interrupted build resumes, and nothing half-written or
tampered is reused. Bundles are written atomically; a gate failure leaves a bundle marked ``failed``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_lora import backends
from edge_lora.errors import InputError, ReferenceAccuracyError
from edge_lora.fileio import atomic_output_dir, atomic_write_json, sha256_file, sha256_json

Event = Callable[[str, dict[str, Any]], None]


@dataclass
class StageRecord:
    """One stage's outcome, for the progress display and the report."""

    name: str
    seconds: float
    cached: bool
    verdict: str = "ok"


@dataclass
class BundleResult:
    """The bundle of one (adapter, target)."""

    adapter: str
    target: str
    bundle: Path
    passed: bool
    chosen: str | None  # precision shipped
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every precision tried, with its numbers
    stages: list[StageRecord] = field(default_factory=list)
    target_message: str | None = None
    notes: list[str] = field(default_factory=list)  # choices the build made for the user (e.g. imgsz)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        d = asdict(self)
        d["bundle"] = str(self.bundle)
        return d


@dataclass
class BuildResult:
    """All bundles of a build; ``return_code`` is 1 when any bundle failed its gates."""

    bundles: list[BundleResult]

    @property
    def passed(self) -> bool:
        """True when every bundle passed."""
        return all(b.passed for b in self.bundles)

    @property
    def return_code(self) -> int:
        """0 pass, 1 a gate failed."""
        return 0 if self.passed else 1


class StageCache:
    """Content-addressed stage results with integrity checks."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def run(
        self, stage: str, key: dict[str, Any], fn: Callable[[Path], dict[str, Any]]
    ) -> tuple[Path, dict, bool]:
        """Return (folder, result, cached); run ``fn(tmp_folder) -> result`` when there is no valid entry.

        A result names the files it wrote relative to the folder it was given (``done.json`` stores it as
        it is), so the caller resolves them against the returned folder wherever that folder now is.
        """
        folder = self.root / stage / sha256_json(key)[:20]
        done = folder / "done.json"
        if done.is_file():
            record = json.loads(done.read_text())
            if all(
                (folder / f).is_file() and sha256_file(folder / f) == h for f, h in record["files"].items()
            ):
                return folder, record["result"], True
        with atomic_output_dir(folder, overwrite=True) as tmp:
            result = fn(tmp)
            files = {
                p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()
            }
            atomic_write_json(
                tmp / "done.json", {"stage": stage, "key": key, "result": result, "files": files}
            )
        return folder, result, False


def _adapter_hashes(adapter: Path) -> dict[str, str]:
    meta = json.loads((adapter / "edge_lora.json").read_text())
    return {**meta.get("files", {}), "edge_lora.json": sha256_file(adapter / "edge_lora.json")}


def _bundle_files_for(artifact: dict[str, Any]) -> tuple[dict[str, Path], str, list[str]]:
    """Bundle files of one artifact -> (files, path of the runner's file in the bundle, device outputs), as
    its backend's registry entry lays them out (``model/model.onnx``, ``model/model_openvino_model/``,
    ``model/tensorrt/``; bundles from before with other paths still run: the manifest records the path)."""
    return backends.get(artifact["backend"]).bundle_files(Path(artifact["path"]))


#: The unmerged reference must score at least this share of the mAP50-95 the adapter recorded at training
#: (Ultralytics' validator, same val split). A reference far below it is a misconfigured build (another
#: imgsz or data than the adapter's), and every gate would compare candidates with a model that detects
#: nothing. Generous on purpose: the adapter records Ultralytics' training figure (one-to-many head + NMS,
#: rect batches), which runs ~10% above edge-lora's COCO figure on the NMS-free head (map_alignment.md).
MIN_REFERENCE_SHARE = 0.5
#: Below this recorded mAP50-95 an adapter's own number is too small to judge the reference against.
MIN_RECORDED_MAP = 0.01


def fit_imgsz(
    profile: Any, trained_imgsz: int | None, user_set: bool, adapter: str
) -> tuple[Any, str | None]:
    """The profile at the adapter's training size unless the user set one; and a note saying which and why.

    A model validated at another size than it was trained at is a different model (a 320 px adapter scored
    mAP50-95 0.0007 at 640 against 0.0115 at 320), so the training size wins over the profile's default.
    """
    if user_set:
        return profile, f"{adapter}: imgsz {profile.imgsz} (set with --set imgsz)"
    if not trained_imgsz or trained_imgsz == profile.imgsz:
        return profile, None
    fitted = profile.with_overrides({"imgsz": int(trained_imgsz)}, origin=f"adapter {adapter} imgsz")
    return fitted, (
        f"{adapter}: imgsz {trained_imgsz}, the adapter's training size (profile {profile.name} says "
        f"{profile.imgsz}; --set imgsz=N builds at another size)"
    )


def check_reference_accuracy(
    ref_map: float, adapter_meta: dict[str, Any], adapter: str, data: Path, imgsz: int
) -> str | None:
    """Stop a build whose unmerged reference scores far below what the adapter recorded; warn when ~zero.

    Returns a warning note, or None. Raises :class:`ReferenceAccuracyError` (exit 2).
    """
    recorded = (adapter_meta.get("metrics") or {}).get("mAP50-95")
    trained = adapter_meta.get("imgsz")
    if recorded is not None and recorded >= MIN_RECORDED_MAP and ref_map < MIN_REFERENCE_SHARE * recorded:
        raise ReferenceAccuracyError(
            f"--adapter {adapter}: the unmerged reference scores mAP50-95 {ref_map:.4f} on {data} val at imgsz "
            f"{imgsz}, far below the {recorded:.4f} the adapter recorded at training (imgsz {trained}); every "
            "gate would compare against a model that does not work here. Check that --data is the adapter's "
            f"line and build at its training size (--set imgsz={trained})"
        )
    if ref_map < MIN_RECORDED_MAP:
        return (
            f"{adapter}: the unmerged reference detects almost nothing here (mAP50-95 {ref_map:.4f}); a PASS "
            "only means the candidate matches it"
        )
    return None


def _on_device_steps(profile: Any, proxy: bool) -> list[str]:
    steps = []
    if profile.backend == "tensorrt":
        steps.append("edge-lora engine build model/tensorrt")
    steps.append(
        f"edge-lora build --on-device . --data DATA.yaml   # validate + bench with the torch-free runtime on the {profile.name}"
    )
    if proxy:
        steps.append(
            "latency gates were skipped on the build host (host proxy): they are checked by the step above"
        )
    return steps


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
    """
    from edge_lora.profiles import resolve_target

    emit = on_event or (lambda _e, _d: None)
    base, data, out = Path(base), Path(data), Path(out)
    if not base.is_file():
        raise InputError(f"--base {base} not found")
    if not adapters:
        raise InputError("--adapter is required (repeat it for several product lines)")
    if not targets:
        raise InputError("--target is required (a profile, a family such as 'jetson', or a YAML file)")
    resolved = []
    for t in targets:
        profile, message = resolve_target(t)
        if overrides:
            profile = profile.with_overrides(overrides, origin="--set")
        if precision:
            profile = profile.with_overrides({"precision": precision, "fallbacks": []}, origin="--precision")
        resolved.append((profile, message))
    from edge_lora.data.checks import load_data_yaml

    spec = load_data_yaml(data)
    data_hash = {"yaml": spec.sha256, "val": spec.content_hash("val"), "train": spec.content_hash("train")}
    cache_dir = Path(cache) if cache else out / ".cache"
    if clean and cache_dir.exists():
        shutil.rmtree(cache_dir)
    stages = StageCache(cache_dir)
    # One PyTorch reference pass per (adapter, imgsz, data) for every candidate validated in this build.
    reference_cache: dict[tuple, Any] = {}
    base_sha = sha256_file(base)
    results = []
    for adapter in map(Path, adapters):
        if not (adapter / "edge_lora.json").is_file():
            raise InputError(f"--adapter {adapter}: not an adapter package (no edge_lora.json)")
        adapter_files = _adapter_hashes(adapter)
        adapter_meta = json.loads((adapter / "edge_lora.json").read_text())
        if {int(k): v for k, v in adapter_meta["names"].items()} != spec.names:
            raise InputError(
                f"--adapter {adapter}: classes {list(adapter_meta['names'].values())} differ from {data}'s {list(spec.names.values())}"
            )
        adapter_stages: list[StageRecord] = []
        trained_imgsz = adapter_meta.get("imgsz")

        def timed(
            name: str, key: dict, fn: Callable[[Path], dict], records: list[StageRecord]
        ) -> tuple[Path, dict]:
            emit("stage_start", {"stage": name})
            t0 = time.perf_counter()
            folder, result, cached = stages.run(name.split(":")[0], key, fn)
            rec = StageRecord(name, time.perf_counter() - t0, cached, result.get("verdict", "ok"))
            records.append(rec)
            emit("stage_end", asdict(rec))
            return folder, result

        def do_merge(tmp: Path, adapter: Path = adapter) -> dict:
            from edge_lora.merge import merge

            report = merge(base, adapter, tmp / "merged.pt", data=data)
            return {
                "merged": "merged.pt",
                "sha256": report.out_sha256,
                "parity_max_rel": report.parity.max_rel,
            }

        mfolder, merged = timed(
            f"merge:{adapter.name}", {"base": base_sha, "adapter": adapter_files}, do_merge, adapter_stages
        )
        merged_pt = mfolder / merged["merged"]

        for target_profile, message in resolved:
            records = list(adapter_stages)
            profile, imgsz_note = fit_imgsz(
                target_profile, trained_imgsz, "imgsz" in (overrides or {}), adapter.name
            )
            notes = [imgsz_note] if imgsz_note else []
            for note in notes:
                emit("note", {"message": note})
            end2end = profile.output == "end2end"

            def do_reference(tmp: Path, profile=profile, end2end=end2end, adapter=adapter) -> dict:
                from edge_lora.export.unmerged import export_unmerged_onnx

                path = export_unmerged_onnx(
                    base,
                    adapter,
                    tmp / "unmerged.onnx",
                    imgsz=profile.imgsz,
                    opset=profile.opset,
                    end2end=end2end,
                    max_det=profile.max_det,
                )
                return {"path": Path(path).relative_to(tmp).as_posix()}

            rfolder, ref = timed(
                "reference",
                {
                    "base": base_sha,
                    "adapter": adapter_files,
                    "imgsz": profile.imgsz,
                    "opset": profile.opset,
                    "end2end": end2end,
                    "max_det": profile.max_det,
                },
                do_reference,
                records,
            )

            def do_export(tmp: Path, profile=profile, merged_pt=merged_pt) -> dict:
                from edge_lora.export.api import export

                res = export(merged_pt, profile, tmp / "export", data=data, overwrite=True)
                return {
                    **res.to_dict(relative_to=tmp),
                    "verdict": f"{len(res.artifacts)} artifacts"
                    + (f", {len(res.failures)} failed" if res.failures else ""),
                }

            efolder, export_doc = timed(
                f"export:{profile.name}",
                {"merged": merged["sha256"], "profile": profile.sha256(), "data": data_hash},
                do_export,
                records,
            )
            from edge_lora.export.api import ExportResult

            exported = ExportResult.from_dict(export_doc, efolder).to_dict()
            candidates, chosen = [], None
            auto = profile.precision == "auto"
            order = (
                profile.precision_chain() if profile.precision != "auto" else ["int8", "fp16", "bf16", "fp32"]
            )
            ordered = sorted(
                exported["artifacts"],
                key=lambda a: order.index(a["precision"]) if a["precision"] in order else 9,
            )
            for art in ordered:
                art_sha = sha256_file(art["path"])

                def do_validate(tmp: Path, art=art, profile=profile, adapter=adapter) -> dict:
                    from edge_lora.validate.compare import validate
                    from edge_lora.validate.report_md import render_markdown

                    rep = validate(
                        art["path"],
                        data=data,
                        target=profile,
                        reference_base=base,
                        reference_adapter=adapter,
                        max_images=max_images,
                        runs=runs,
                        warmup=warmup,
                        reference_cache=reference_cache,
                    )
                    atomic_write_json(tmp / "validation.json", rep.to_dict())
                    (tmp / "report.md").write_text(render_markdown(rep))
                    return {
                        "passed": rep.passed,
                        "verdict": "PASS" if rep.passed else "FAIL",
                        "json": "validation.json",
                        "md": "report.md",
                    }

                vfolder, val = timed(
                    f"validate:{profile.name}:{art['precision']}",
                    {
                        "artifact": art_sha,
                        "profile": profile.sha256(),
                        "data": data_hash,
                        "max_images": max_images,
                        "runs": runs,
                        "warmup": warmup,
                        "reference": {"base": base_sha, "adapter": adapter_files},
                        # validation.json as ValidationReport.from_dict reads it: a cache entry from an
                        # older format (no Ultralytics mAP, no samples) is recomputed, never misread.
                        "report_format": 2,
                    },
                    do_validate,
                    records,
                )
                from edge_lora.validate.compare import ValidationReport

                report = json.loads((vfolder / val["json"]).read_text())
                rep = ValidationReport.from_dict(report)
                if not candidates:  # one reference per target: judge it once
                    warning = check_reference_accuracy(
                        rep.reference.accuracy.map50_95, adapter_meta, adapter.name, data, profile.imgsz
                    )
                    if warning:
                        notes.append(warning)
                        emit("note", {"message": warning})
                candidates.append(
                    {
                        **art,
                        "passed": val["passed"],
                        "validation": str(vfolder / val["json"]),
                        "report_md": str(vfolder / val["md"]),
                        "map50_95": rep.candidate.accuracy.map50_95,
                        "ref_map50_95": rep.reference.accuracy.map50_95,
                        "agreement_f1": rep.agreement.f1,
                        "model_p50_ms": rep.candidate.latency["model"].p50_ms,
                        "e2e_p50_ms": rep.candidate.latency["e2e"].p50_ms,
                        "e2e_p99_ms": rep.candidate.latency["e2e"].p99_ms,
                        "ref_e2e_p50_ms": rep.reference.latency["e2e"].p50_ms,
                        "speedup": rep.speedup,
                        "report": report,  # the file's own form, for the plots and the bundle's manifest
                    }
                )
                if val["passed"] and not auto:
                    chosen = candidates[-1]
                    break
            if auto:
                passing = [c for c in candidates if c["passed"]]
                chosen = min(passing, key=lambda c: c["model_p50_ms"]) if passing else None
            bundle = _write(
                out,
                adapter,
                adapter_files,
                base,
                base_sha,
                merged,
                rfolder / ref["path"],
                profile,
                spec,
                exported,
                candidates,
                chosen,
                records,
                archive,
            )
            results.append(
                BundleResult(
                    adapter.name,
                    profile.name,
                    bundle,
                    chosen is not None,
                    chosen["precision"] if chosen else None,
                    [{k: v for k, v in c.items() if k != "report"} for c in candidates],
                    records,
                    message,
                    notes,
                )
            )
            emit("bundle", results[-1].to_dict())
    return BuildResult(results)


def _write(
    out: Path,
    adapter: Path,
    adapter_files: dict,
    base: Path,
    base_sha: str,
    merged: dict,
    unmerged: Path,
    profile: Any,
    spec: Any,
    exported: dict,
    candidates: list[dict],
    chosen: dict | None,
    records: list[StageRecord],
    archive: bool,
) -> Path:
    from edge_lora.bundle.pack import write_bundle, write_failed_bundle
    from edge_lora.export.artifact import library_versions
    from edge_lora.report import write_report

    name = f"{adapter.name}-{profile.name}"
    shown = chosen or (candidates[-1] if candidates else None)
    files: dict[str, Any] = {"reference/unmerged.onnx": unmerged}
    artifacts = []
    if shown is not None:
        art_files, art_path, device_outputs = _bundle_files_for(shown)
        files.update(art_files)
        artifacts.append(
            {
                "path": art_path,
                "backend": shown["backend"],
                "precision": shown["precision"],
                "role": "primary",
                # The settings of the runner the bundle runs (a TensorRT engine's: none), not of the one that
                # validated it here.
                "runner_settings": backends.get(shown["backend"]).runner_settings(
                    profile, Path(shown["path"])
                ),
                "device_outputs": device_outputs,
            }
        )
        files["validation.json"] = Path(shown["validation"])
    import tempfile

    tmpdir = Path(tempfile.mkdtemp(prefix="edge-lora-report-"))
    try:
        write_report(
            tmpdir,
            profile=profile,
            candidates=candidates,
            chosen=chosen,
            stages=[asdict(r) for r in records],
            names=spec.names,
        )
        for f in tmpdir.rglob("*"):
            if f.is_file():
                files[f.relative_to(tmpdir).as_posix()] = f
        report = shown["report"] if shown else None
        calib = exported.get("calibration")
        calib_meta = json.loads((Path(calib) / "calibration.json").read_text()) if calib else None
        fields = {
            "name": name,
            "target": profile,
            "classes": spec.names,
            "imgsz": profile.imgsz,
            "postprocessing": {
                "end2end": profile.output == "end2end",
                "conf": profile.gates.agreement_conf,
                "iou": profile.nms_iou or 0.7,
                "max_det": profile.max_det,
            },
            "artifacts": artifacts,
            "provenance": {
                "base": {"path": str(base), "sha256": base_sha},
                "adapter": {"path": str(adapter), "files": adapter_files},
                "merged": {"sha256": merged["sha256"]},
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
                "passed": bool(chosen),
                "gates": report["gates"]["checks"] if report else [],
                "summary": {
                    k: shown[k]
                    for k in (
                        "precision",
                        "map50_95",
                        "ref_map50_95",
                        "agreement_f1",
                        "e2e_p50_ms",
                        "e2e_p99_ms",
                        "speedup",
                    )
                }
                if shown
                else {},
                "latency_is_proxy": bool(report and report["latency_is_proxy"]),
                "proxy_reason": report["proxy_reason"] if report else "",
            }
            if shown
            else None,
            "on_device_steps": _on_device_steps(profile, bool(report and report["latency_is_proxy"])),
        }
        if chosen:
            return write_bundle(out / name, files, fields, overwrite=True, archive=archive)
        tried = (
            ", ".join(f"{c['precision']}: {'PASS' if c['passed'] else 'FAIL'}" for c in candidates)
            or "nothing exported"
        )
        return write_failed_bundle(
            out / name,
            files,
            fields,
            f"no precision passed the gates of {profile.name} ({tried})",
            overwrite=True,
            archive=archive,
        )
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
