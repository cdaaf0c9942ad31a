"""TensorRT engine build, on the device the engine will run on (``edge-lora engine build <plan dir>``).

One job: turn a plan folder (:mod:`edge_lora.runtime.tensorrt_plan`, written on the build host) into a
deployable engine bound to this device. :func:`build_engine` checks the plan (schema, ONNX sha256, the
TensorRT range it admits, the device family it is for), builds with the ``tensorrt`` Python API (imported
only inside it), and writes::

    model.engine        4-byte little-endian length + JSON metadata (Ultralytics' header) + serialized engine
    model.engine.json   the device fingerprint (GPU, compute capability, TensorRT, CUDA, L4T/JetPack), the
                        plan's and the ONNX's sha256, precision, typing and flags

which :class:`~edge_lora.runtime.tensorrt_rt.TensorRtRunner` reads back
(:func:`~edge_lora.runtime.tensorrt_rt.read_engine_header`,
:func:`~edge_lora.runtime.tensorrt_rt.check_engine_fingerprint`) and uses to refuse an engine built for
another device.

Why under ``runtime/`` (not ``export/``, not a new package): an engine only runs on the GPU and TensorRT
release that built it, so this is device-side code, and the device side imports no torch, Ultralytics, PEFT
or NNCF and nothing from the host side (train, merge, export). ``runtime/`` is what a Jetson installs, and
the writer of the engine header and fingerprint sidecar sits beside their reader in
:mod:`edge_lora.runtime.tensorrt_rt`. Imports: the standard library, ``edge_lora.errors`` / ``fileio`` /
``profiles`` and ``edge_lora.runtime``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_lora.errors import ToolError
from edge_lora.fileio import atomic_write_bytes, atomic_write_json, check_output, sha256_bytes
from edge_lora.profiles import version_satisfies
from edge_lora.runtime.tensorrt_plan import ENGINE_NAME, TensorRtPlan, build_settings, edge_lora_version
from edge_lora.runtime.tensorrt_rt import fingerprint_path

__all__ = ["NO_TENSORRT", "EngineBuild", "build_engine", "jetpack_release"]

NO_TENSORRT = (
    "TensorRT is not installed here; build the engine on the device: edge-lora engine build <plan dir> "
    "(JetPack ships TensorRT; on other NVIDIA machines pip install tensorrt)"
)

_NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
# L4T release -> JetPack (NVIDIA's JetPack archive); exact release first, then major.minor.
_L4T_JETPACK = {
    "36.4.4": "6.2.1",
    "36.4.3": "6.2",
    "36.4": "6.1",
    "36.3": "6.0",
    "35.6": "5.1.4",
    "35.5": "5.1.3",
    "35.4": "5.1.2",
    "35.3": "5.1.1",
    "35.2": "5.1",
}

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- device facts
def jetpack_release(path: Path | None = None) -> dict[str, str | None]:
    """L4T and JetPack release of this Jetson from ``/etc/nv_tegra_release``; Nones elsewhere."""
    path = path or _NV_TEGRA_RELEASE
    try:
        first = path.read_text(encoding="utf-8", errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return {"l4t": None, "jetpack": None}
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", first)
    if not m:
        return {"l4t": None, "jetpack": None}
    l4t = f"{m.group(1)}.{m.group(2)}"
    short = ".".join(l4t.split(".")[:2])
    return {"l4t": l4t, "jetpack": _L4T_JETPACK.get(l4t) or _L4T_JETPACK.get(short)}


def _cuda_version() -> str | None:
    """CUDA runtime version via cuda-python or PyCUDA (whichever the runner uses); None if neither."""
    with contextlib.suppress(Exception):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        err, version = cudart.cudaRuntimeGetVersion()
        if int(err) == 0:
            return f"{version // 1000}.{(version % 1000) // 10}"
    with contextlib.suppress(Exception):
        import pycuda.driver as cuda

        return ".".join(str(v) for v in cuda.get_version()[:2])
    return None


# ----------------------------------------------------------------------------------------------- device
@dataclass
class EngineBuild:
    """The outcome of :func:`build_engine`.

    Attributes:
        engine: ``model.engine`` (Ultralytics metadata header + serialized engine).
        fingerprint_path: ``model.engine.json`` beside it.
        fingerprint: the device the engine is bound to (GPU, compute capability, TensorRT, CUDA, JetPack).
        plan_sha256 / onnx_sha256 / engine_sha256: what it was built from, and its own hash.
        strongly_typed / flags: how the network was built.
        fp32_layers_pinned: layers pinned to FP32 by precision constraints (weakly typed builds).
        warnings: device-match warnings and TensorRT's builder warnings.
    """

    engine: Path
    fingerprint_path: Path
    fingerprint: dict[str, Any]
    precision: str
    plan_sha256: str
    onnx_sha256: str
    engine_sha256: str
    strongly_typed: bool
    flags: list[str]
    fp32_layers_pinned: int
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["engine"], d["fingerprint_path"] = str(self.engine), str(self.fingerprint_path)
        return d


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ToolError(NO_TENSORRT) from exc
    return trt


def _device_fingerprint(device: int) -> dict[str, Any]:
    from edge_lora.runtime.tensorrt_rt import current_device_fingerprint

    try:
        fingerprint: dict[str, Any] = dict(current_device_fingerprint(device))
    except ToolError as exc:
        raise ToolError(
            f"no usable CUDA device here ({exc}); build the engine on the device: edge-lora engine build "
            f"<plan dir>"
        ) from exc
    fingerprint["cuda_version"] = _cuda_version()
    fingerprint.update(jetpack_release())
    return fingerprint


def _check_device(plan: TensorRtPlan, fingerprint: dict[str, Any], allow_other_device: bool) -> list[str]:
    from edge_lora.profiles import read_device_model

    device = plan.data["device"]
    on_jetson = fingerprint.get("l4t") is not None
    problems, warnings = [], []
    if device["family"] == "jetson" and not on_jetson:
        problems.append(f"the plan is for a Jetson ({plan.data['profile']['name']}), this is not one")
    if device["family"] != "jetson" and on_jetson:
        problems.append(f"the plan is for family {device['family']}, this is a Jetson")
    if problems and not allow_other_device:
        raise ToolError(
            f"{'; '.join(problems)}: an engine only runs where it was built. Build on the target device, or "
            f"pass allow_other_device (--allow-other-device) to build anyway"
        )
    warnings += [f"built anyway: {p}" for p in problems]
    if on_jetson and device["jetpack"] and fingerprint.get("jetpack") not in (None, device["jetpack"]):
        warnings.append(
            f"plan written for JetPack {device['jetpack']}, this device runs {fingerprint['jetpack']}"
        )
    model = read_device_model()
    matches = [m for m in device["model_match"] if model and m.lower() in model.lower()]
    if on_jetson and model and device["model_match"] and not matches:
        warnings.append(f"plan written for {device['model_match']}, this device is {model!r}")
    return warnings


def build_engine(
    plan: str | Path | TensorRtPlan,
    out_engine: str | Path | None = None,
    *,
    device: int = 0,
    allow_other_device: bool = False,
    overwrite: bool = False,
) -> EngineBuild:
    """Build the plan's engine with the TensorRT Python API (device side).

    Args:
        plan: the plan folder, its ``build_plan.json``, or a loaded :class:`TensorRtPlan`.
        out_engine: the engine to write; default ``<plan dir>/model.engine``. Its fingerprint goes to
            ``<out_engine>.json``.
        device: CUDA device index.
        allow_other_device: build even if this is not the device family the plan is for.
        overwrite: replace an existing engine.

    Raises:
        ToolError: TensorRT or a CUDA device is missing here, the installed TensorRT is outside the plan's
            range, the ONNX does not parse (with the parser's messages) or the build fails.
        ModelError / InputError: a bad or tampered plan. OutputExistsError: the engine exists.
    """
    started = time.perf_counter()
    plan = plan if isinstance(plan, TensorRtPlan) else TensorRtPlan.load(plan)
    out = Path(out_engine) if out_engine is not None else plan.directory / ENGINE_NAME
    check_output(out, overwrite, "--out")
    trt = _import_tensorrt()
    version = str(trt.__version__)
    if not version_satisfies(version, plan.tensorrt_version):
        raise ToolError(
            f"this device has TensorRT {version}, the plan is for {plan.tensorrt_version!r} "
            f"(profile {plan.data['profile']['name']}); use a profile whose tensorrt.version includes {version}"
        )
    major = int(version.split(".", 1)[0])
    if major < 10:
        raise ToolError(
            f"TensorRT {version} is too old: edge-lora builds and runs engines with TensorRT >= 10 "
            f"(JetPack 6.1 or newer on a Jetson)"
        )
    fingerprint = _device_fingerprint(device)
    warnings = _check_device(plan, fingerprint, allow_other_device)

    build = plan.build
    flags = build_settings(
        plan.precision,
        has_qdq=plan.data["onnx"]["has_qdq"],
        float_type=plan.data["onnx"]["float_type"],
        dla_core=build["dla_core"],
        tensorrt_major=major,
        strongly_typed=True if major >= 11 else build["strongly_typed"],
    )
    serialized, pinned, messages = _build_serialized(trt, plan, flags)
    warnings += messages

    metadata = plan.data["engine"]["metadata"]
    header = json.dumps(metadata).encode("utf-8")
    blob = len(header).to_bytes(4, byteorder="little") + header + serialized
    atomic_write_bytes(out, blob)
    engine_sha = sha256_bytes(blob)
    seconds = round(time.perf_counter() - started, 3)
    names = [name for name in ("fp16", "int8") if flags[name]]
    sidecar = {
        "fingerprint": fingerprint,
        "plan_sha256": plan.sha256,
        "onnx_sha256": plan.data["onnx"]["sha256"],
        "engine_sha256": engine_sha,
        "precision": plan.precision,
        "profile": plan.data["profile"]["name"],
        "strongly_typed": flags["strongly_typed"],
        "builder_flags": names,
        "dla_core": build["dla_core"],
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": seconds,
        "edge_lora_version": edge_lora_version(),
    }
    fp_path = fingerprint_path(out)
    atomic_write_json(fp_path, sidecar)
    return EngineBuild(
        engine=out,
        fingerprint_path=fp_path,
        fingerprint=fingerprint,
        precision=plan.precision,
        plan_sha256=plan.sha256,
        onnx_sha256=plan.data["onnx"]["sha256"],
        engine_sha256=engine_sha,
        strongly_typed=flags["strongly_typed"],
        flags=names,
        fp32_layers_pinned=pinned,
        seconds=seconds,
        warnings=warnings,
    )


def _build_serialized(trt: Any, plan: TensorRtPlan, flags: dict[str, Any]) -> tuple[bytes, int, list[str]]:
    """Parse the plan's ONNX and build; returns (engine bytes, layers pinned to FP32, builder warnings)."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, severity, msg):  # noqa: ANN001 - TensorRT's callback signature
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                self.warnings.append(str(msg))
                log.warning("TensorRT: %s", msg)

    logger = _Logger()
    build = plan.build
    builder = trt.Builder(logger)
    creation = 0
    if flags["strongly_typed"] and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        creation |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(creation)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors
        raise ToolError(
            f"TensorRT {trt.__version__} cannot parse {plan.onnx_path}: "
            + " | ".join(errors or ["no message"])
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(build["workspace_mib"]) << 20)
    config.builder_optimization_level = int(build["builder_optimization_level"])
    if flags["fp16"]:
        config.set_flag(trt.BuilderFlag.FP16)
    if flags["int8"]:
        config.set_flag(trt.BuilderFlag.INT8)
    pinned = 0
    if not flags["strongly_typed"] and (flags["fp16"] or flags["int8"]) and build["fp32_layers"]:
        keep, keep_outputs = set(build["fp32_layers"]), set(build.get("fp32_output_layers", ()))
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.name not in keep:
                continue
            layer.precision = trt.float32
            if layer.name in keep_outputs:
                for j in range(layer.num_outputs):
                    if layer.get_output(j).dtype in (trt.float32, trt.float16):
                        layer.set_output_type(j, trt.float32)
            pinned += 1
        if pinned:
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    if build["dla_core"] is not None:
        available = int(getattr(builder, "num_DLA_cores", 0))
        if build["dla_core"] >= available:
            raise ToolError(
                f"the plan asks for DLA core {build['dla_core']}; this device has {available} DLA cores"
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(build["dla_core"])
        if build["allow_gpu_fallback"]:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if plan.data["onnx"].get("dynamic_input"):
        shape = tuple(plan.data["onnx"]["input"]["shape"])
        profile = builder.create_optimization_profile()
        profile.set_shape(network.get_input(0).name, shape, shape, shape)
        config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        detail = " | ".join(logger.errors[-5:]) or "no message"
        raise ToolError(f"TensorRT {trt.__version__} failed to build the engine: {detail}")
    return bytes(serialized), pinned, logger.warnings[-20:]
