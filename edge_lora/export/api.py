"""``export()``: one merged checkpoint -> the artifacts a target profile asks for (public API of
``edge-lora export``). Validates first, then builds each precision with the exporter its backend's registry
entry names (:mod:`edge_lora.backends`); each backend's export module is imported only when it is used.

Layout of ``out``::

    onnx/model.onnx (+ .json)        the FP32 ONNX every backend starts from (always)
    calibration/calibration.json     the calibration set, when INT8 is built and none was given
    onnxruntime-int8/model.onnx      ORT: QDQ INT8 (policy from the profile: u8s8 Conv-only on x86)
    openvino-<precision>/model.xml   OpenVINO IR (FP16 compressed / FP32 computed in bf16 / NNCF INT8)
    tensorrt-<precision>/            TensorRT: the ONNX the engine is built from + build_plan.json + trtexec.sh
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_lora import backends
from edge_lora.errors import InputError, ToolError
from edge_lora.fileio import atomic_output_dir, check_output, sha256_file

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from edge_lora.export.onnx.adapter_scales import AdapterScales
    from edge_lora.profiles import TargetProfile


@dataclass
class Artifact:
    """One exported artifact."""

    backend: str  # a registered backend (edge_lora.backends)
    precision: str  # fp32 | fp16 | bf16 | int8
    path: Path  # file the runner loads (.onnx, model.xml, or the TensorRT plan dir's model.onnx)
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        """Size on disk with the files its backend says belong to it (an OpenVINO IR counts its .bin)."""
        return backends.get(self.backend).artifact_bytes(self.path)

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        """JSON-able form; with ``relative_to``, paths inside that folder are written relative to it (the
        details that hold one are listed under ``path_details``) and :meth:`from_dict` makes them absolute
        against wherever the folder is then."""
        d = {
            "backend": self.backend,
            "precision": self.precision,
            "path": _path_str(self.path, relative_to),
            "bytes": self.bytes,
            "seconds": round(self.seconds, 2),
            "details": dict(self.details),
        }
        if relative_to is not None:
            inside = [
                k
                for k, v in self.details.items()
                if isinstance(v, (str, Path)) and Path(v).is_relative_to(relative_to)
            ]
            d["details"].update({k: _path_str(Path(self.details[k]), relative_to) for k in inside})
            d["path_details"] = inside
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: Path | None = None) -> Artifact:
        """The artifact :meth:`to_dict` wrote, its relative paths resolved against ``base``."""
        details = dict(d.get("details") or {})
        for k in d.get("path_details", []):
            details[k] = str(_resolved(details[k], base))
        return cls(d["backend"], d["precision"], _resolved(d["path"], base), d["seconds"], details)


def _path_str(path: Path, relative_to: Path | None) -> str:
    if relative_to is not None and path.is_relative_to(relative_to):
        return path.relative_to(relative_to).as_posix()
    return str(path)


def _resolved(path: str, base: Path | None) -> Path:
    """``path`` against ``base`` (an absolute path stays as it is)."""
    return Path(path) if base is None else base / path


@dataclass
class ExportResult:
    """What ``export`` wrote."""

    out: Path
    target: str
    model_sha256: str
    fp32_onnx: Path
    artifacts: list[Artifact]
    calibration: Path | None
    failures: dict[str, str]  # precision -> why it could not be built
    #: what the user should know (e.g. a quant-aware adapter's scales that were not used)
    notes: list[str] = field(default_factory=list)

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        """JSON-able form; with ``relative_to`` (the export folder, or one above it), paths inside it are
        relative and :meth:`from_dict` resolves them against where that folder is when it is read."""
        return {
            "out": _path_str(self.out, relative_to) if relative_to is not None else str(self.out),
            "target": self.target,
            "model_sha256": self.model_sha256,
            "fp32_onnx": _path_str(self.fp32_onnx, relative_to),
            "artifacts": [a.to_dict(relative_to) for a in self.artifacts],
            "calibration": _path_str(self.calibration, relative_to) if self.calibration else None,
            "failures": self.failures,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: Path | None = None) -> ExportResult:
        """The result :meth:`to_dict` wrote, its relative paths resolved against ``base``."""
        return cls(
            _resolved(d["out"], base),
            d["target"],
            d["model_sha256"],
            _resolved(d["fp32_onnx"], base),
            [Artifact.from_dict(a, base) for a in d["artifacts"]],
            _resolved(d["calibration"], base) if d.get("calibration") else None,
            dict(d.get("failures") or {}),
            list(d.get("notes") or []),
        )


def _check_images(data: Path | None, n: int = 2) -> list[Path] | None:
    if data is None:
        return None
    from edge_lora.data.checks import load_data_yaml

    return sorted(load_data_yaml(data, splits=("val",), check_labels=False).splits["val"])[:n]


def export(
    model: str | Path,
    target: str | Path | TargetProfile,
    out: str | Path,
    *,
    data: str | Path | None = None,
    calib: str | Path | None = None,
    precisions: list[str] | None = None,
    overwrite: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``model`` (a merged Ultralytics checkpoint) for ``target``.

    Args:
        model: the checkpoint (any Ultralytics detection checkpoint works).
        target: a resolved ``TargetProfile`` (used as it is), or a profile name, family or YAML file.
        out: output folder (refused if it exists, unless ``overwrite``).
        data: data YAML; its val images check each export, and INT8 calibrates on it when ``calib`` is None.
        calib: a calibration set folder from ``edge-lora calib`` (INT8).
        precisions: override the profile's precision chain (e.g. ``["fp32"]``).
        on_progress: ``f(message)`` for long steps inside a precision (the accuracy-aware INT8 search).

    Every precision of the chain is attempted; one that fails is reported in ``failures`` (the caller decides,
    per the profile's fallbacks). FP32 ONNX failing is fatal.
    """
    from edge_lora.profiles import resolve_target

    profile, _ = resolve_target(str(target) if isinstance(target, (str, Path)) else target)
    model, out = Path(model), Path(out)
    chain = precisions or profile.precision_chain()
    offered = profile.buildable_precisions()  # what the schema checked the profile's own chain against
    for p in chain:
        if p not in offered:
            raise InputError(
                f"--precision {p}: {profile.backend} ({profile.name}) builds {', '.join(sorted(offered))}"
            )
    check_output(out, overwrite)
    from edge_lora.models import load_detection_model

    loaded = load_detection_model(model)  # a missing file or a non-detector fails here, before any work
    scales = _adapter_scales(loaded.provenance)
    if "int8" in chain and calib is None and data is None:
        raise InputError(
            f"target {profile.name} builds INT8: pass --data DATA.yaml or --calib DIR for calibration"
        )
    data = Path(data) if data else None
    model_sha = sha256_file(model)
    # Everything is written into a temp folder renamed at the end: a failed export leaves nothing behind.
    # Its paths are written relative to the temp folder and read back against the final one.
    with atomic_output_dir(out, overwrite) as tmp:
        result = _export_into(tmp, profile, chain, model, model_sha, data, calib, on_progress, scales)
        relative = result.to_dict(relative_to=tmp)
    return ExportResult.from_dict(relative, out)


def _export_into(
    tmp: Path,
    profile,
    chain: list[str],
    model: Path,
    model_sha: str,
    data: Path | None,
    calib: str | Path | None,
    on_progress: Callable[[str], None] | None = None,
    scales: AdapterScales | None = None,
) -> ExportResult:
    from edge_lora.export.onnx.exporter import export_onnx

    out = tmp
    t0 = time.perf_counter()
    fp32 = export_onnx(
        model,
        out / "onnx" / "model.onnx",
        imgsz=profile.imgsz,
        opset=profile.opset,
        end2end=profile.output == "end2end",
        batch=profile.batch,
        max_det=profile.max_det,
        check_images=_check_images(data),
        profile=profile,
        overwrite=True,
    )
    artifacts: list[Artifact] = []
    failures: dict[str, str] = {}
    notes: list[str] = []
    fp32_seconds = time.perf_counter() - t0
    spec = backends.get(profile.backend)
    if spec.fp32_is_onnx and "fp32" in chain:  # ONNX Runtime: the FP32 ONNX is its fp32 artifact
        artifacts.append(
            Artifact(spec.name, "fp32", fp32.path, fp32_seconds, {"output_form": fp32.output_form})
        )

    calib_set = None
    calib_dir: Path | None = None
    if "int8" in chain:
        from edge_lora.export.calibration import CalibrationSet, select_calibration

        if calib is not None:
            calib_set = CalibrationSet.load(calib)
            calib_dir = Path(calib)
        else:
            recipe = profile.load_calibration() or profile.calibration or "default"
            calib_dir = out / "calibration"
            calib_set = select_calibration(data, recipe, calib_dir, overwrite=True)

    for precision in chain:
        if spec.fp32_is_onnx and precision == "fp32":
            continue
        job = ExportJob(
            profile, precision, fp32.path, model, model_sha, calib_set, out, data, time.perf_counter(),
            on_progress, scales if precision == "int8" else None, notes,
        )  # fmt: skip
        try:
            artifacts.append(backends.get(profile.backend).export_function()(job))
        except ToolError as e:
            failures[precision] = str(e)
    if not artifacts:
        raise ToolError(
            f"no artifact could be built for {profile.name}: "
            + "; ".join(f"{k}: {v}" for k, v in failures.items())
        )
    return ExportResult(out, profile.name, model_sha, fp32.path, artifacts, calib_dir, failures, notes)


def _accuracy_control(profile, data: Path | None, calib_set):
    """NNCF accuracy-aware INT8 bounded by the profile's max mAP drop, scored by our evaluator on labelled
    images of the recipe's validation_split (train by default: the gate's val images stay unseen)."""
    from edge_lora.export.labelled import map_validation_fn, validation_set
    from edge_lora.export.openvino.quantize import AccuracyControl

    items, names, _split = validation_set(profile, data, "accuracy-aware INT8 (openvino.accuracy_aware)")
    return AccuracyControl(
        validation_data=items,
        validation_fn=map_validation_fn(names, profile.output == "end2end"),
        max_drop=profile.gates.max_map_drop / 100.0,  # gate in mAP points, NNCF metric on the 0-1 scale
    )


def _qdq(job: ExportJob, out_path: Path) -> tuple[Any, dict[str, Any] | None, dict[str, Any] | None]:
    """INT8 QDQ under the profile's quantization policy (u8s8 for ORT on x86, s8s8 for TensorRT); with
    ``quantization.accuracy_aware``, the fewest convs float that bring it within the INT8 target. A
    quant-aware adapter's activation scales go into the graph as trained when its scheme is the policy's.
    Returns the QdqResult, the search record (None without the search) and the quant-aware record."""
    from edge_lora.export.onnx.qdq import quantize_qdq
    from edge_lora.export.policy import QuantPolicy

    profile = job.profile
    policy = QuantPolicy.from_profile(profile)
    kwargs: dict[str, Any] = dict(
        imgsz=profile.imgsz, source_checkpoint=job.model, source_sha256=job.model_sha, overwrite=True
    )
    quant_aware = _use_adapter_scales(job, policy.scheme)
    if quant_aware is None and job.adapter_scales is not None:
        kwargs["adapter_scales"] = job.adapter_scales
    if profile.quantization is not None and profile.quantization.accuracy_aware:
        from edge_lora.export.onnx.accuracy_aware import quantize_accuracy_aware

        res, search = quantize_accuracy_aware(
            job.fp32_onnx,
            out_path,
            job.calib_set,
            policy,
            profile=profile,
            data=job.data,
            on_progress=job.on_progress or _log.info,
            **kwargs,
        )
    else:
        res = quantize_qdq(job.fp32_onnx, out_path, job.calib_set, policy, profile=profile, **kwargs)
        search = None
    return res, search, res.quant_aware or quant_aware


def _adapter_scales(provenance: dict[str, Any]) -> AdapterScales | None:
    """The quant-aware scales ``merge`` recorded from the adapter (None for any other checkpoint)."""
    from edge_lora.export.onnx.adapter_scales import AdapterScales

    return AdapterScales.from_record((provenance.get("adapter") or {}).get("quant_aware"))


def _use_adapter_scales(job: ExportJob, scheme: str | None) -> dict[str, Any] | None:
    """None when the job's quant-aware scales are to be used; else the record of why not (and a note).

    ``scheme`` None: the backend quantizes with its own tool (OpenVINO NNCF), which calibrates its own.
    """
    scales = job.adapter_scales
    if scales is None:
        return None
    if scheme is None:
        why = (
            f"the adapter was trained quant-aware for {scales.scheme}, but {job.profile.name} quantizes with "
            f"{backends.get(job.profile.backend).display}'s own calibration: its scales are not used; "
            "INT8 is validated as usual"
        )
    else:
        why = scales.mismatch(scheme, job.profile.name)
    if why is None:
        imgsz_note = scales.imgsz_note(job.profile.imgsz)
        if imgsz_note:
            job.note(f"{job.profile.name}: {imgsz_note}")
        return None
    job.note(f"{job.profile.name}: {why}")
    return {"source": "calibration", "adapter_scheme": scales.scheme, "used": False, "reason": why}


@dataclass
class ExportJob:
    """One precision to build for one profile: what a backend's exporter (``BackendSpec.exporter``) gets.

    ``out`` is the export folder (the exporter writes into its own subfolder of it); ``start`` is when this
    precision's build began (``time.perf_counter()``), for the artifact's ``seconds``.
    """

    profile: Any
    precision: str
    fp32_onnx: Path  # the FP32 ONNX every backend starts from
    model: Path
    model_sha: str
    calib_set: Any  # CalibrationSet when int8 is in the chain, else None
    out: Path
    data: Path | None
    start: float
    on_progress: Callable[[str], None] | None = None
    adapter_scales: AdapterScales | None = None  # a quant-aware adapter's activation scales (INT8 jobs)
    notes: list[str] = field(default_factory=list)  # the export's notes, appended to by the exporter

    def note(self, message: str) -> None:
        """Tell the user (the export result's ``notes``, the log and the progress callback)."""
        if message not in self.notes:
            self.notes.append(message)
            _log.warning("%s", message)
            if self.on_progress is not None:
                self.on_progress(message)

    def artifact(self, backend: str, path: Path, details: dict[str, Any] | None = None) -> Artifact:
        """The built artifact, timed from ``start``."""
        return Artifact(backend, self.precision, path, time.perf_counter() - self.start, details or {})


def export_onnxruntime(job: ExportJob) -> Artifact:
    """ONNX Runtime: QDQ INT8 (its FP32 is the FP32 ONNX itself)."""
    profile, precision = job.profile, job.precision
    if precision != "int8":
        raise ToolError(f"ONNX Runtime on {profile.name}: {precision} is not built for CPU providers")
    res, search, quant_aware = _qdq(job, job.out / "onnxruntime-int8" / "model.onnx")
    details = {
        "quantize_nodes": res.quantize_nodes,
        "quantized_convs": res.quantized_convs,
        "float_convs": res.float_convs,
        "activation_dtype": res.activation_dtype,
    }
    if search is not None:
        details["accuracy_aware"] = search
    if quant_aware is not None:
        details["quant_aware"] = quant_aware
    return Artifact("onnxruntime", "int8", res.path, time.perf_counter() - job.start, details)


def export_openvino_ir(job: ExportJob) -> Artifact:
    """OpenVINO IR: FP16 compressed, FP32 (computed in bf16 for bf16), NNCF INT8 (accuracy-aware if asked)."""
    from edge_lora.export.openvino.exporter import export_openvino

    profile, precision, calib_set = job.profile, job.precision, job.calib_set
    sample = _check_images(job.data, 1)
    control = None
    quant_aware = _use_adapter_scales(job, None) if precision == "int8" else None
    if precision == "int8" and profile.openvino is not None and profile.openvino.accuracy_aware:
        control = _accuracy_control(profile, job.data, calib_set)
    res = export_openvino(
        job.fp32_onnx,
        job.out / f"openvino-{precision}",
        precision=precision,
        calib=calib_set if precision == "int8" else None,
        profile_settings=profile,
        sample=sample[0] if sample else None,
        accuracy_control=control,
        overwrite=True,
    )
    return Artifact(
        "openvino",
        precision,
        res.xml,
        time.perf_counter() - job.start,
        {
            "quantization": getattr(res, "quantization", None),
            "parity": getattr(res, "parity", None),
            **({"quant_aware": quant_aware} if quant_aware else {}),
        },
    )


def export_tensorrt_plan(job: ExportJob) -> Artifact:
    """TensorRT: the ONNX the device builds its engine from (S8S8 QDQ for INT8), build_plan.json, trtexec.sh."""
    from edge_lora.export.tensorrt.prepare import prepare_tensorrt

    profile, precision, out = job.profile, job.precision, job.out
    source = job.fp32_onnx
    details: dict[str, Any] = {}
    if precision == "int8":
        qdq, search, quant_aware = _qdq(job, out / "tensorrt-int8-qdq" / "model.onnx")
        source = qdq.path
        details = {"quantize_nodes": qdq.quantize_nodes, "activation_dtype": qdq.activation_dtype}
        if search is not None:
            details["accuracy_aware"] = search
        if quant_aware is not None:
            details["quant_aware"] = quant_aware
    plan = prepare_tensorrt(
        source, out / f"tensorrt-{precision}", profile, precision=precision, overwrite=True
    )
    details["build_plan"] = str(plan.plan_path)
    details["trtexec"] = str(plan.trtexec_path)
    return Artifact("tensorrt", precision, plan.onnx_path, time.perf_counter() - job.start, details)
