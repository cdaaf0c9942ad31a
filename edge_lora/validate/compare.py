"""``validate()``: run the candidate artifact and the reference over a val set, through one preprocessing,
one post-processing and one evaluator, and check the target profile's gates.

Device side: nothing here imports torch or ultralytics. The reference is an exported artifact (the bundle's
``reference/unmerged.onnx``) loaded by its torch-free runner, or a runner the caller built: the host side
passes the PyTorch unmerged model (``edge_lora.validate.reference.torch_reference``), so the comparator never
imports it.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge_lora import backends
from edge_lora.errors import DataError, InputError
from edge_lora.runtime.base import Runner
from edge_lora.runtime.prepost import Detections, postprocess, preprocess
from edge_lora.validate.gates import KNOWN_GATES, GateReport, evaluate_gates
from edge_lora.validate.metrics import (
    AccuracyResult,
    AgreementResult,
    LatencyStats,
    ParityAccumulator,
    agreement,
    evaluate_detections,
    peak_rss_mb,
    read_yolo_labels,
    speedup,
)
from edge_lora.validate.parity import paired_detection_rows  # also importable from here, as before

if TYPE_CHECKING:
    from edge_lora.profiles import TargetProfile

EVAL_CONF = 0.001  # detections kept for mAP (as Ultralytics val); the deploy threshold only drives P/R/F1


@dataclass
class ReferencePass:
    """The reference side of one validation (detections, raw outputs, latency), reusable for the next candidate.

    ``raw`` is empty unless the pass is cached: a raw-output model's tensors are ~0.3 MB per image at 640 px.
    """

    name: str
    end2end: bool
    images: list[str]
    detections: list[Detections]
    raw: list[np.ndarray]
    latency: dict[str, LatencyStats]
    load_time_s: float | None
    peak_rss_mb: float | None


ReferenceCache = dict[tuple, ReferencePass]
"""Reference passes by (reference, images, imgsz, settings): a build validating several candidates against
the same unmerged model runs it once. Keyed by path, so it must not outlive the files it describes."""


@dataclass
class SideResult:
    """One runner's measurements."""

    name: str
    artifact: str
    accuracy: AccuracyResult
    latency: dict[str, LatencyStats]  # infer | model (infer + decode) | e2e (read + preprocess + model)
    load_time_s: float | None
    peak_rss_mb: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "name": self.name,
            "artifact": self.artifact,
            "accuracy": self.accuracy.to_dict(),
            "latency": {k: v.to_dict() for k, v in self.latency.items()},
            "load_time_s": self.load_time_s,
            "peak_rss_mb": self.peak_rss_mb,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SideResult:
        """Inverse of :meth:`to_dict`."""
        return cls(
            data["name"],
            data["artifact"],
            AccuracyResult.from_dict(data["accuracy"]),
            {k: LatencyStats.from_dict(v) for k, v in data["latency"].items()},
            data["load_time_s"],
            data["peak_rss_mb"],
        )


@dataclass
class ValidationReport:
    """Candidate vs reference, with the gate verdicts; truthy when every gate passed."""

    target: str
    candidate: SideResult
    reference: SideResult
    agreement: AgreementResult
    parity: dict[str, Any]
    gates: GateReport
    images: int
    skipped_images: list[str]
    latency_is_proxy: bool
    proxy_reason: str
    device: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every gate passed (skipped gates do not fail)."""
        return self.gates.passed

    def __bool__(self) -> bool:
        return self.passed

    @property
    def return_code(self) -> int:
        """0 when passed, 1 when a gate failed."""
        return self.gates.return_code

    @property
    def map_delta_points(self) -> float:
        """Candidate minus reference mAP50-95, in points (0-100 scale)."""
        return 100.0 * (self.candidate.accuracy.map50_95 - self.reference.accuracy.map50_95)

    @property
    def speedup(self) -> float | None:
        """Reference / candidate end-to-end p50 latency."""
        return speedup(self.reference.latency["e2e"], self.candidate.latency["e2e"], key="p50")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what ``--json`` writes)."""
        return {
            "target": self.target,
            "passed": self.passed,
            "candidate": self.candidate.to_dict(),
            "reference": self.reference.to_dict(),
            "deltas": {
                **self.candidate.accuracy.delta(self.reference.accuracy),
                "map50_95_points": self.map_delta_points,
            },
            "agreement": self.agreement.to_dict(),
            "parity": self.parity,
            "speedup_e2e_p50": self.speedup,
            "gates": self.gates.to_dict(),
            "images": self.images,
            "skipped_images": self.skipped_images,
            "latency_is_proxy": self.latency_is_proxy,
            "proxy_reason": self.proxy_reason,
            "device": self.device,
            "settings": self.settings,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationReport:
        """Inverse of :meth:`to_dict` (a ``validation.json``); what it derives (``passed``, ``deltas``,
        ``speedup_e2e_p50``) is recomputed, not read."""
        return cls(
            data["target"],
            SideResult.from_dict(data["candidate"]),
            SideResult.from_dict(data["reference"]),
            AgreementResult.from_dict(data["agreement"]),
            data["parity"],
            GateReport.from_dict(data["gates"]),
            data["images"],
            list(data["skipped_images"]),
            data["latency_is_proxy"],
            data["proxy_reason"],
            data["device"],
            data.get("settings", {}),
        )


def runner_settings(profile: Any, artifact: Path) -> dict[str, Any]:
    """Constructor settings for the artifact's runner, from the profile's section of the backend that runs
    it here (the backend registry: a TensorRT profile's ONNX runs on this host's CPU)."""
    spec = backends.for_artifact(artifact)
    return spec.runner_settings(profile, artifact) if spec is not None else {}  # load_runner says why


def artifact_backend(artifact: Path) -> str:
    """The backend that runs ``artifact`` here."""
    spec = backends.for_artifact(artifact)
    if spec is None:
        raise InputError(f"{artifact}: no registered backend runs it ({', '.join(backends.names())})")
    return spec.name


def reference_identity(reference: Runner | None, artifact: str | Path | None) -> tuple[str, ...]:
    """What a reference pass is of, for :data:`ReferenceCache` keys: the artifact path, or the caller's
    runner by its ``identity`` (a tuple of strings, when it defines one: the PyTorch reference names its
    base and adapter paths) else by class and path."""
    if artifact is not None:
        return ("artifact", str(artifact))
    assert reference is not None
    identity = getattr(reference, "identity", None)
    if identity is not None:
        return tuple(map(str, identity))
    return (type(reference).__qualname__, str(reference.path))


def _read_images(paths: list[Path], skipped: list[str]) -> Iterator[tuple[Path, np.ndarray]]:
    for p in paths:
        img = cv2.imread(str(p))
        if img is None:  # counted and reported, never a crash halfway through a val set
            skipped.append(str(p))
            continue
        yield p, img


def _detect(
    runner: Runner, images: list[np.ndarray], imgsz: int, conf: float, nc: int, max_det: int
) -> tuple[list[Detections], np.ndarray]:
    batch, infos = preprocess(images, imgsz)
    out = runner.infer(batch)
    raw = next(iter(out.values()))
    dets = postprocess(out, infos, end2end=runner.metadata.get("end2end"), conf=conf, nc=nc, max_det=max_det)
    return dets, raw


def check_artifact_fits(runner: Runner, names: dict[int, str], imgsz: int, where: str) -> None:
    """Class names and input size of the artifact must be those of the data and the profile."""
    meta_names = runner.metadata.get("names")
    if meta_names and dict(meta_names) != dict(names):
        raise InputError(
            f"{where}: class names {list(meta_names.values())} differ from the data's {list(names.values())}"
        )
    shape = next(iter(runner.input_metadata().values()))[1]
    if len(shape) == 4 and shape[2] not in (None, imgsz):
        raise InputError(
            f"{where}: the artifact takes {shape[2]}x{shape[3]} input, the profile says imgsz {imgsz}; re-export for {imgsz}"
        )


def measure_latency(
    runner: Runner, paths: list[Path], imgsz: int, *, warmup: int, runs: int, nc: int, conf: float
) -> dict[str, LatencyStats]:
    """Warm up, then ``runs`` timed iterations cycling over the images.

    ``infer`` is the backend call; ``model`` adds the decode (tensor in, detections out: the p99 gate's
    definition); ``e2e`` adds reading and letterboxing the image (what a line sees per frame).
    """
    samples: dict[str, list[float]] = {"infer": [], "model": [], "e2e": []}
    end2end = runner.metadata.get("end2end")
    for i, path in enumerate(itertools.islice(itertools.cycle(paths), warmup + runs)):
        t0 = time.perf_counter()
        img = cv2.imread(str(path))
        if img is None:
            continue
        batch, infos = preprocess([img], imgsz)
        t1 = time.perf_counter()
        out = runner.infer(batch, check_inputs=False)
        t2 = time.perf_counter()
        postprocess(out, infos, end2end=end2end, conf=conf, nc=nc)
        t3 = time.perf_counter()
        if i >= warmup:
            samples["infer"].append(t2 - t1)
            samples["model"].append(t3 - t1)
            samples["e2e"].append(t3 - t0)
    # Every timed run is kept (sorted, µs resolution) so that reports draw the latency CDF from the runs.
    return {k: LatencyStats.from_samples(v, keep_samples=True) for k, v in samples.items()}


def validate(
    candidate: str | Path,
    *,
    data: str | Path,
    target: str | Path | TargetProfile,
    reference: Runner | None = None,
    reference_artifact: str | Path | None = None,
    max_images: int | None = None,
    warmup: int | None = None,
    runs: int | None = None,
    progress: Any = None,
    reference_cache: ReferenceCache | None = None,
) -> ValidationReport:
    """Validate ``candidate`` against the unmerged reference on ``data``'s val split for ``target`` (a
    resolved ``TargetProfile``, used as it is, or a profile name, family or YAML file).

    The reference is ``reference``, a runner the caller built and has not activated (the host side's PyTorch
    unmerged model: :func:`edge_lora.validate.reference.torch_reference`), or ``reference_artifact`` (e.g.
    the unmerged model exported to ONNX) loaded here by its torch-free runner. With ``reference_cache``, a
    reference pass with the same inputs and settings is reused instead of run again (its latency then
    comes from that earlier pass, and ``reference`` is never activated).
    """
    from edge_lora.data.checks import load_data_yaml
    from edge_lora.profiles import resolve_target
    from edge_lora.runtime.loader import load_runner
    from edge_lora.validate.device import describe_device, latency_is_proxy

    profile, _ = resolve_target(str(target) if isinstance(target, (str, Path)) else target)
    candidate = Path(candidate)
    spec = load_data_yaml(data, splits=("val",))
    paths = sorted(spec.splits["val"])[: max_images or None]
    if not any(read_yolo_labels(p_lbl, 1, 1).boxes.size for p_lbl in spec.labels("val")[: len(paths)]):
        raise DataError(f"{data}: the val split has no labels; accuracy cannot be measured")
    names, nc, imgsz = spec.names, spec.nc, profile.imgsz
    warmup = profile.bench.warmup_runs if warmup is None else warmup
    runs = profile.bench.timed_runs if runs is None else runs
    gates = profile.gates
    deploy_conf = gates.agreement_conf

    if (reference_artifact is None) == (reference is None):
        raise InputError(
            "validate needs one reference: --reference BASE.pt [--adapter DIR] or --reference UNMERGED.onnx"
        )
    ref_source = str(reference_artifact if reference_artifact is not None else reference.path)  # type: ignore[union-attr]
    key = (
        *reference_identity(reference, reference_artifact),
        tuple(map(str, paths)),
        imgsz,
        profile.max_det,
        profile.backend if reference_artifact is not None else None,
        warmup,
        runs,
        deploy_conf,
    )
    cached = reference_cache.get(key) if reference_cache is not None else None
    cand_runner = load_runner(candidate, **runner_settings(profile, candidate))
    ref_runner: Runner | None = None
    if cached is None and reference_artifact is not None:
        ref_runner = load_runner(reference_artifact, **runner_settings(profile, Path(reference_artifact)))
    elif cached is None:
        ref_runner = reference

    skipped: list[str] = []
    gts, sizes, cand_dets, ref_dets, ref_raws, read = [], [], [], [], [], []
    parity = ParityAccumulator()
    with cand_runner, ref_runner or contextlib.nullcontext():
        check_artifact_fits(cand_runner, names, imgsz, str(candidate))
        if ref_runner is not None:
            check_artifact_fits(ref_runner, names, imgsz, ref_runner.name)
        ref_end2end = cached.end2end if cached else bool(ref_runner.metadata.get("end2end"))  # type: ignore[union-attr]
        if bool(cand_runner.metadata.get("end2end")) != ref_end2end:
            raise InputError(
                f"{candidate}: output form differs from the reference (end-to-end vs raw); export both the same way"
            )
        for i, (path, img) in enumerate(_read_images(paths, skipped)):
            h, w = img.shape[:2]
            gts.append(read_yolo_labels(_label(path), w, h))
            sizes.append((w, h))
            read.append(str(path))
            c, c_raw = _detect(cand_runner, [img], imgsz, EVAL_CONF, nc, profile.max_det)
            if cached is not None:
                r, r_raw = cached.detections[i : i + 1], cached.raw[i]
            else:
                r, r_raw = _detect(ref_runner, [img], imgsz, EVAL_CONF, nc, profile.max_det)  # type: ignore[arg-type]
                if reference_cache is not None:  # raw outputs are only kept for a pass that is reused
                    ref_raws.append(r_raw)
            cand_dets.extend(c)
            ref_dets.extend(r)
            if ref_end2end:
                pairs = paired_detection_rows(r_raw, c_raw, conf=deploy_conf)
                if len(pairs[0]):
                    parity.update(*pairs)
            elif c_raw.shape == r_raw.shape:
                parity.update(r_raw.astype(np.float32), c_raw.astype(np.float32))
            if progress:
                progress()
        if not gts:
            raise DataError(f"{data}: no val image could be decoded ({len(skipped)} skipped)")
        if cached is not None and cached.images != read:
            raise DataError(f"{data}: the val images changed since the cached reference pass; validate again")
        cand_lat = measure_latency(
            cand_runner, paths, imgsz, warmup=warmup, runs=runs, nc=nc, conf=deploy_conf
        )
        cand_rss = peak_rss_mb()
        if cached is None:
            assert ref_runner is not None
            # The reference is slow (PyTorch): fewer runs, enough for the p50 the speedup is computed from.
            ref_lat = measure_latency(
                ref_runner,
                paths,
                imgsz,
                warmup=min(warmup, 10),
                runs=max(min(runs, 50), 1),
                nc=nc,
                conf=deploy_conf,
            )
            cached = ReferencePass(
                ref_runner.name,
                ref_end2end,
                read,
                ref_dets,
                ref_raws,
                ref_lat,
                ref_runner.load_time_s,
                peak_rss_mb(),
            )
            if reference_cache is not None:
                reference_cache[key] = cached

    cand_acc = evaluate_detections(gts, cand_dets, names, deploy_conf=deploy_conf, image_sizes=sizes)
    ref_acc = evaluate_detections(gts, ref_dets, names, deploy_conf=deploy_conf, image_sizes=sizes)
    agree = agreement(ref_dets, cand_dets, iou=gates.agreement_iou, conf=deploy_conf)
    proxy, why = latency_is_proxy(profile.family, profile.backend, artifact_backend(candidate))
    sp = speedup(cached.latency["e2e"], cand_lat["e2e"], key="p50")
    gate_values = {k: getattr(gates, k) for k in KNOWN_GATES if hasattr(gates, k)}
    report = evaluate_gates(
        gate_values,
        accuracy_delta_points=100.0 * (cand_acc.map50_95 - ref_acc.map50_95),
        agreement_f1=agree.f1,
        p99_ms=cand_lat["model"].p99_ms,
        speedup=sp,
        latency_is_proxy=proxy,
        proxy_reason=why,
    )
    summary = parity.result() if len(parity) else None
    return ValidationReport(
        target=profile.name,
        candidate=SideResult(
            cand_runner.name, str(candidate), cand_acc, cand_lat, cand_runner.load_time_s, cand_rss
        ),
        reference=SideResult(
            cached.name, ref_source, ref_acc, cached.latency, cached.load_time_s, cached.peak_rss_mb
        ),
        agreement=agree,
        parity=summary.to_dict() if summary is not None and hasattr(summary, "to_dict") else {},
        gates=report,
        images=len(gts),
        skipped_images=skipped,
        latency_is_proxy=proxy,
        proxy_reason=why,
        device=describe_device(),
        settings={
            "warmup": warmup,
            "runs": runs,
            "deploy_conf": deploy_conf,
            "eval_conf": EVAL_CONF,
            "imgsz": imgsz,
            "parity": "end-to-end rows paired by class and IoU >= 0.5 at deploy_conf"
            if ref_end2end
            else "raw outputs, position by position",
        },
    )


def _label(image: Path) -> Path:
    from edge_lora.data.checks import label_path

    return label_path(image)
