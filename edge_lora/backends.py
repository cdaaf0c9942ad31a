"""The backend registry: what a backend is, said once (issue 10, step 1).

A backend is one :class:`BackendSpec`: its name, the files its runner loads, the precisions it builds for a
profile, where its artifact goes in a bundle and what the device builds from it, its runner and the runner's
settings from a profile, its host-side exporter, and its part of the profile schema (the device families
that run it, its settings section's model, its own cross-field checks). Every place that used to decide these
with an ``if backend == ...`` chain (export dispatch, artifact size, runner choice, runner settings, bundle
layout, the manifest's ``backend`` and suffixes, the profile's ``backend``, settings section and family fit,
buildable precisions and the ``auto`` chain) reads :func:`get` or :func:`for_artifact` instead.

Adding a backend is one spec and one :func:`register` call, found the way PEFT finds its tuners: a dict
keyed by name. The three shipped specs live here, not beside their runners, because their runner modules
must not be imported to register them (``runtime/openvino_rt.py`` and the exporters are heavy or need the
host side), and because profiles and the bundle schema, which are below the runtime, read this module; so an
in-tree backend touches this file plus its two new modules, and an out-of-tree one touches no edge_lora file.

Device side and foundation level: this module imports nothing of the host side and no torch, Ultralytics,
ONNX or OpenVINO. Runners and exporters are ``"module:attribute"`` strings imported when used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_lora.errors import InputError

__all__ = [
    "ARTIFACT_SUFFIXES",
    "BackendSpec",
    "BundleLayout",
    "check_registered",
    "for_artifact",
    "get",
    "json_schema_enum",
    "load_attr",
    "names",
    "register",
    "specs",
    "unregister",
]


def load_attr(ref: str) -> Any:
    """The object a ``"package.module:attribute"`` string names (imported now)."""
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{ref!r} is not a 'module:attribute' reference")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class BundleLayout:
    """Where a backend's artifact goes in a bundle.

    ``dest`` is the bundle path it is shipped at; with ``folder`` the artifact's whole folder is shipped
    there (an OpenVINO IR and its .bin, a TensorRT plan folder) and the runner loads ``dest/<file name>``,
    otherwise the file itself is ``dest``. Bundles written before may use other paths (``model/openvino/``):
    the manifest records the path the runner loads, so they still verify and run.
    """

    dest: str
    folder: bool = False

    def files(self, path: Path) -> tuple[dict[str, Path], str]:
        """(bundle path -> source, the bundle path the runner loads) for the artifact at ``path``."""
        if self.folder:
            return {self.dest: path.parent}, f"{self.dest}/{path.name}"
        return {self.dest: path}, self.dest


def _no_settings(profile: Any, artifact: Path) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class BackendSpec:
    """One backend. Callables take a ``TargetProfile`` (duck-typed: this module is below the profiles).

    Attributes:
        name: the profile's ``backend`` and the manifest's artifact ``backend``.
        runner: ``"module:Class"`` of its :class:`~edge_lora.runtime.base.Runner`, imported when used.
        exporter: ``"module:function"`` building one precision on the host: ``f(job) -> Artifact`` with the
            job of :func:`edge_lora.export.api._export_into`. Imported only by ``export()``.
        suffixes: file suffixes its runner loads (lower case); no two backends share one.
        loads: how messages name what it loads (``"an OpenVINO .xml (or its folder)"``).
        bundle: where its artifact goes in a bundle.
        bundle_suffixes: suffixes a bundle's artifact path may have; ``suffixes`` when empty (a TensorRT bundle
            ships the ONNX the device builds its engine from).
        device_outputs: bundle paths the device builds from the artifact; the first is what runs.
        device_build: ``"module:function"``, ``f(artifact folder, first device output)``, that builds them on
            the device (``build --on-device``); device_step: the command a bundle's README gives for it.
        precisions: ``f(profile) -> tuple`` of the precisions it builds for that profile and device.
        auto_precisions: ``f(profile) -> tuple``: what ``precision: auto`` expands to.
        runner_settings: ``f(profile, artifact) -> dict`` of runner constructor settings.
        folder_glob: a folder holding a match is its artifact (``"*.xml"``: an OpenVINO IR folder).
        folder_holds: how messages name such a folder's content (``"an OpenVINO IR"``).
        fp32_is_onnx: the FP32 ONNX every export starts from is itself its fp32 artifact (no exporter call).
        families: device families whose hardware runs it (the profile's ``family`` must be one); empty: all.
        settings: ``"module:Model"`` of the pydantic model of its profile section, the top-level key named
            after the backend (``openvino:``); None: it has none. Only the active backend's section may
            appear in a profile; left out, it is filled with the model's defaults.
        profile_checks: ``"module:function"``, ``f(profile) -> [(dotted field, message)]``: the
            backend's own cross-field checks of a validated profile (``tensorrt.dla_core`` on Jetson only).
        qdq_int8: its int8 is the QDQ graph built from the profile's ``quantization`` section (which int8
            then requires); False: the backend quantizes itself and the profile must not have that section.
        why_not: precision -> why it does not build it, for the profile's error message (and
            ``"quantization"`` -> why a profile of a backend without ``qdq_int8`` has no such section).
        title: its name in messages (``"TensorRT"``); ``name`` when empty.
        companions: suffixes of files beside the artifact that belong to it (an OpenVINO IR's ``.bin``):
            its size and its provenance sidecar count them.
        int8_hint: what to try when its int8 fails the mAP gate, in the profile's own terms (the bundle's
            ``report.md`` gives it as the next step); empty: no hint.
    """

    name: str
    runner: str
    exporter: str
    suffixes: tuple[str, ...]
    loads: str
    bundle: BundleLayout
    precisions: Callable[[Any], tuple[str, ...]]
    auto_precisions: Callable[[Any], tuple[str, ...]]
    runner_settings: Callable[[Any, Path], dict[str, Any]] = _no_settings
    bundle_suffixes: tuple[str, ...] = ()
    device_outputs: tuple[str, ...] = ()
    device_build: str | None = None
    device_step: str | None = None
    folder_glob: str | None = None
    folder_holds: str | None = None
    fp32_is_onnx: bool = False
    families: tuple[str, ...] = ()
    settings: str | None = None
    profile_checks: str | None = None
    qdq_int8: bool = True
    why_not: Mapping[str, str] = field(default_factory=dict)
    companions: tuple[str, ...] = ()
    title: str = ""
    int8_hint: str = ""

    def runs_on(self, family: str) -> bool:
        """Whether a device of ``family`` can run it."""
        return not self.families or family in self.families

    def artifact_bytes(self, path: Path) -> int:
        """Size on disk of the artifact at ``path`` with its companion files."""
        path = Path(path)
        return path.stat().st_size + sum(path.with_suffix(s).stat().st_size for s in self.companions)

    def settings_model(self) -> type | None:
        """The pydantic model of its profile section (imported now), or None when it has none."""
        return load_attr(self.settings) if self.settings else None

    def check_profile(self, profile: Any) -> list[tuple[str, str]]:
        """Its own cross-field problems of ``profile`` as ``(dotted field, message)``; none when it has none."""
        return list(load_attr(self.profile_checks)(profile)) if self.profile_checks else []

    @property
    def display(self) -> str:
        """Its name in messages."""
        return self.title or self.name

    @property
    def shipped_suffixes(self) -> tuple[str, ...]:
        """Suffixes a bundle's artifact of this backend may have."""
        return self.bundle_suffixes or self.suffixes

    def runner_class(self) -> type:
        """The runner class (imports its module, not yet the backend's runtime)."""
        return load_attr(self.runner)

    def export_function(self) -> Callable[..., Any]:
        """The host-side exporter (imports the host side)."""
        return load_attr(self.exporter)

    def bundle_files(self, path: Path) -> tuple[dict[str, Path], str, list[str]]:
        """(bundle files, bundle path of the runner's file, device outputs) for the artifact at ``path``."""
        files, run_path = self.bundle.files(Path(path))
        return files, run_path, list(self.device_outputs)


_REGISTRY: dict[str, BackendSpec] = {}


def register(spec: BackendSpec, *, replace: bool = False) -> BackendSpec:
    """Add ``spec`` to the registry (``replace`` to swap one of the same name); returns it."""
    if not replace and spec.name in _REGISTRY:
        raise ValueError(f"backend {spec.name!r} is already registered")
    for other in _REGISTRY.values():
        shared = set(spec.suffixes) & set(other.suffixes)
        if other.name != spec.name and shared:
            raise ValueError(f"backend {spec.name!r}: {sorted(shared)} already load with {other.name!r}")
    for ref in (spec.runner, spec.exporter, spec.settings, spec.profile_checks):
        if ref is not None and ":" not in ref:
            raise ValueError(f"backend {spec.name!r}: {ref!r} is not a 'module:attribute' reference")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a backend (tests that register a toy one clean up with it)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> BackendSpec:
    """The spec of backend ``name``; an InputError names the registered ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown backend {name!r}; registered: {', '.join(_REGISTRY)}") from None


def check_registered(name: str) -> str:
    """``name`` when it is a registered backend; else a ValueError listing them (a schema's field validator)."""
    if name not in _REGISTRY:
        listed = [repr(n) for n in _REGISTRY]
        either = " or ".join([", ".join(listed[:-1]), listed[-1]]) if len(listed) > 1 else "".join(listed)
        raise ValueError(f"Input should be a registered backend, {either}, got {name!r}")
    return name


def json_schema_enum(schema: dict[str, Any]) -> None:
    """``json_schema_extra`` of a field naming a backend: its JSON schema lists the registered ones."""
    schema["enum"] = list(_REGISTRY)


def names() -> tuple[str, ...]:
    """Registered backend names, in registration order."""
    return tuple(_REGISTRY)


def specs() -> tuple[BackendSpec, ...]:
    """Registered specs, in registration order."""
    return tuple(_REGISTRY.values())


def for_artifact(path: str | Path) -> BackendSpec | None:
    """The backend whose runner loads ``path``: by suffix, or for a folder by what it holds; else None."""
    p = Path(path)
    if p.is_dir():
        for spec in _REGISTRY.values():
            if spec.folder_glob and any(p.glob(spec.folder_glob)):
                return spec
        return None
    suffix = p.suffix.lower()
    for spec in _REGISTRY.values():
        if suffix in spec.suffixes:
            return spec
    return None


class _ShippedSuffixes(Mapping[str, tuple[str, ...]]):
    """Read-only view: backend name -> suffixes a bundle's artifact may have (the manifest checks them)."""

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return _REGISTRY[name].shipped_suffixes

    def __iter__(self) -> Iterator[str]:
        return iter(_REGISTRY)

    def __len__(self) -> int:
        return len(_REGISTRY)


ARTIFACT_SUFFIXES: Mapping[str, tuple[str, ...]] = _ShippedSuffixes()


# ---- the shipped backends ------------------------------------------------------------------------------


def _ort_settings(profile: Any, artifact: Path) -> dict[str, Any]:
    ort = getattr(profile, "onnxruntime", None)
    if ort is None:  # a TensorRT/OpenVINO profile's ONNX measured on this host's CPU
        return {"providers": ["CPUExecutionProvider"]}
    return {
        "providers": list(ort.execution_providers),
        "intra_op_threads": ort.intra_op_threads,
        "graph_optimization": ort.graph_optimization_level,
    }


def _ov_cpu(profile: Any) -> bool:
    ov = getattr(profile, "openvino", None)
    return ov is None or ov.device == "CPU"


def _ov_settings(profile: Any, artifact: Path) -> dict[str, Any]:
    ov = getattr(profile, "openvino", None)
    if ov is None:
        return {}
    from edge_lora.runtime.openvino_rt import recorded_inference_precision  # no openvino import

    return {
        "device": ov.device,
        "performance_hint": ov.performance_hint,
        # A bf16 IR records its precision; the runner honours it, so report that.
        "inference_precision": recorded_inference_precision(artifact) or ov.inference_precision_hint,
        "num_streams": ov.num_streams,
    }


ONNXRUNTIME = register(
    BackendSpec(
        name="onnxruntime",
        title="ONNX Runtime",
        runner="edge_lora.runtime.onnxrt:OnnxRuntimeRunner",
        exporter="edge_lora.export.api:export_onnxruntime",
        suffixes=(".onnx",),
        loads=".onnx",
        bundle=BundleLayout("model/model.onnx"),
        # fp16: ONNX Runtime's CPU kernels are fp32/int8, an fp16 graph runs Cast-wrapped and slower.
        precisions=lambda profile: ("fp32", "int8"),
        auto_precisions=lambda profile: ("int8", "fp32"),
        runner_settings=_ort_settings,
        fp32_is_onnx=True,
        settings="edge_lora.profiles.sections:OnnxRuntimeSettings",
        why_not={
            "fp16": "ONNX Runtime's CPU kernels are fp32/int8, so an fp16 graph runs Cast-wrapped and slower "
            "than fp32"
        },
        # The int8 hints are what benchmarks/results/int8_sweep.md measured to help.
        int8_hint="try `quantization.calibrate_method: entropy` or `percentile`, or keep the most sensitive "
        "blocks float with `quantization.keep_float_nodes` (each costs speed: measure with `precision: auto`)",
    )
)

OPENVINO = register(
    BackendSpec(
        name="openvino",
        title="OpenVINO",
        runner="edge_lora.runtime.openvino_rt:OpenVinoRunner",
        exporter="edge_lora.export.api:export_openvino_ir",
        suffixes=(".xml",),
        loads="an OpenVINO .xml (or its folder)",
        # "<stem>_openvino_model" is the folder name ultralytics.YOLO() recognises as an OpenVINO model, so
        # the bundle's IR also loads there directly. Bundles from before name it model/openvino.
        bundle=BundleLayout("model/model_openvino_model", folder=True),
        # bf16 is an OpenVINO CPU precision (AVX512-BF16/AMX). On CPU, auto tries bf16 then fp32 (bf16 is
        # only faster with AVX512-BF16 or AMX, which the measurement decides); fp16 on GPU/NPU/AUTO.
        precisions=lambda p: ("fp32", "fp16", "int8", "bf16") if _ov_cpu(p) else ("fp32", "fp16", "int8"),
        auto_precisions=lambda p: ("int8", "bf16", "fp32") if _ov_cpu(p) else ("int8", "fp16"),
        runner_settings=_ov_settings,
        folder_glob="*.xml",
        folder_holds="an OpenVINO IR",
        companions=(".bin",),
        # OpenVINO has no NVIDIA GPU plugin.
        families=("cpu", "intel", "rpi"),
        settings="edge_lora.profiles.sections:OpenVinoSettings",
        profile_checks="edge_lora.profiles.backend_checks:openvino_checks",
        qdq_int8=False,
        why_not={
            "quantization": "OpenVINO int8 is done by NNCF; use openvino.nncf_preset and openvino.ignored_op_types"
        },
        int8_hint="set `openvino.accuracy_aware: true` (NNCF reverts layers until `gates.max_map_drop` holds; "
        "slow), then pin the layers it reverted (the export's `quantization.float_weighted_ops`) in "
        "`openvino.keep_float_nodes` and turn it off again for fast rebuilds",
    )
)

TENSORRT = register(
    BackendSpec(
        name="tensorrt",
        title="TensorRT",
        runner="edge_lora.runtime.tensorrt_rt:TensorRtRunner",
        exporter="edge_lora.export.api:export_tensorrt_plan",
        suffixes=(".engine", ".plan"),
        loads=".engine or .plan",
        bundle=BundleLayout("model/tensorrt", folder=True),
        # A TensorRT bundle ships the ONNX model the engine is built from on the device (engines are tied to
        # one GPU and TensorRT release); an engine built elsewhere may be shipped as it is.
        bundle_suffixes=(".onnx", ".engine", ".plan"),
        device_outputs=("model/tensorrt/model.engine", "model/tensorrt/model.engine.json"),
        device_build="edge_lora.runtime.tensorrt_engine:build_engine",
        device_step="edge-lora engine build model/tensorrt",
        precisions=lambda profile: ("fp32", "fp16", "int8"),
        auto_precisions=lambda profile: ("int8", "fp16"),
        families=("jetson", "gpu"),  # an NVIDIA GPU
        settings="edge_lora.profiles.sections:TensorRTSettings",
        profile_checks="edge_lora.profiles.backend_checks:tensorrt_checks",
        int8_hint="keep sensitive blocks float with `quantization.keep_float_nodes` (TensorRT runs them in "
        "FP16), or ship the FP16 fallback",
    )
)
