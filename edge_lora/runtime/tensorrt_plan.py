"""The TensorRT build plan format: what the build host writes and the device builds from.

One job: define the plan folder both sides agree on, so neither needs the other's code. The host
(:func:`edge_lora.export.tensorrt.prepare.prepare_tensorrt`) writes it, the device
(:func:`edge_lora.runtime.tensorrt_engine.build_engine`) reads it::

    plan_dir/model.onnx        the graph the engine is built from (FP16/FP32: the FP32 ONNX; INT8: the
                               S8S8 QDQ ONNX)
    plan_dir/build_plan.json   every build setting (precision, typing, flags, workspace, DLA, versions,
                               input shape, the ONNX sha256, the device it is meant for)
    plan_dir/trtexec.sh        the equivalent trtexec command line (debugging and benchmarking)
    plan_dir/README.md         how to build it

Here: the file names and schema version, :class:`TensorRtPlan` (reads a plan folder back and checks the
ONNX is the one planned), :func:`build_settings` (the typing rules, applied by the host when it plans and
again by the device for the TensorRT it actually has) and :func:`trtexec_command`.

Why under ``runtime/``: the device side (runtime, bundle verify/run, validate/bench, engine build) imports
no torch, Ultralytics, PEFT or NNCF and nothing from the host side (train, merge, export). The device must
read this format, so it lives on the device side; the host may import device-side modules, never the
reverse. This module imports only the standard library and ``edge_lora.errors`` / ``edge_lora.fileio``.

Precision and typing (decided by :func:`build_settings`, recorded in the plan):

* INT8 is *explicit* quantization: the S8S8 QDQ ONNX carries every scale and keeps the YOLO head's
  post-processing float (:mod:`edge_lora.export.policy`). It is built as a **strongly typed** network with
  no precision flags, so TensorRT runs exactly what the graph says (TensorRT's recommendation for Q/DQ
  graphs). Implicit INT8 calibration is not offered: it is deprecated in TensorRT 10 and gone in 11.
* FP16 from the FP32 ONNX on TensorRT 10 is **weakly typed** with the FP16 builder flag; the head's
  post-processing layers are pinned to FP32 with precision constraints (an FP16 score Sigmoid shifts
  confidences, Ultralytics issue 24668). An ONNX whose weights are already FP16 is built strongly typed.
* TensorRT >= 11 only builds strongly typed networks (no FP16/INT8 flags, no calibrator): INT8 QDQ works
  unchanged, FP16 needs an FP16 ONNX.
* DLA on TensorRT 10 (JetPack 6) is configured the documented way, weakly typed with precision flags
  (``--useDLACore --int8 --fp16 --allowGPUFallback``); strongly typed DLA builds are documented only from
  TensorRT 11.4.
"""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edge_lora.errors import InputError, ModelError
from edge_lora.fileio import sha256_bytes, sha256_file

__all__ = [
    "ENGINE_NAME",
    "ONNX_NAME",
    "PLAN_KIND",
    "PLAN_NAME",
    "PLAN_SCHEMA_VERSION",
    "README_NAME",
    "TRTEXEC_ENGINE_NAME",
    "TRTEXEC_NAME",
    "Precision",
    "TensorRtPlan",
    "build_settings",
    "edge_lora_version",
    "trtexec_command",
]

PLAN_SCHEMA_VERSION = 1
PLAN_KIND = "edge-lora-tensorrt-plan"
PLAN_NAME = "build_plan.json"
ONNX_NAME = "model.onnx"
ENGINE_NAME = "model.engine"
TRTEXEC_NAME = "trtexec.sh"
README_NAME = "README.md"
TRTEXEC_ENGINE_NAME = "model.trtexec.engine"

Precision = Literal["fp32", "fp16", "int8"]


# ------------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class TensorRtPlan:
    """A plan folder written by :func:`~edge_lora.export.tensorrt.prepare.prepare_tensorrt` (or read back
    with :meth:`load`).

    Attributes:
        directory: the plan folder.
        data: the content of ``build_plan.json``.
        sha256: hash of ``build_plan.json`` as written (recorded in the engine's fingerprint sidecar).
    """

    directory: Path
    data: dict[str, Any]
    sha256: str

    @property
    def plan_path(self) -> Path:
        return self.directory / PLAN_NAME

    @property
    def onnx_path(self) -> Path:
        return self.directory / self.data["onnx"]["file"]

    @property
    def trtexec_path(self) -> Path:
        return self.directory / TRTEXEC_NAME

    @property
    def readme_path(self) -> Path:
        return self.directory / README_NAME

    @property
    def precision(self) -> Precision:
        return self.data["precision"]

    @property
    def build(self) -> dict[str, Any]:
        """Builder settings: strongly_typed, fp16, int8, fp32_layers, workspace_mib, … (see the plan)."""
        return self.data["build"]

    @property
    def strongly_typed(self) -> bool:
        return bool(self.build["strongly_typed"])

    @property
    def tensorrt_version(self) -> str:
        """The TensorRT version range the plan is written for, e.g. ``">=10.0,<11"``."""
        return self.data["device"]["tensorrt_version"]

    def trtexec_command(self) -> list[str]:
        """The equivalent trtexec argument list (see :func:`trtexec_command`)."""
        return trtexec_command(self.data)

    @classmethod
    def load(cls, path: str | Path) -> TensorRtPlan:
        """Read a plan folder (or its ``build_plan.json``) and check the ONNX is the one planned.

        Raises:
            InputError: no plan there, or not an edge-lora TensorRT plan of this schema.
            ModelError: the ONNX is missing or its sha256 differs from the plan's.
        """
        path = Path(path)
        plan_file = path if path.suffix == ".json" else path / PLAN_NAME
        if not plan_file.is_file():
            raise InputError(
                f"no TensorRT build plan at {path} ({plan_file.name} not found); make one on the host with "
                f"edge-lora export --target <jetson/gpu profile>"
            )
        raw = plan_file.read_bytes()
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{plan_file} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("kind") != PLAN_KIND:
            raise InputError(f"{plan_file} is not an edge-lora TensorRT build plan")
        if data.get("schema_version") != PLAN_SCHEMA_VERSION:
            raise InputError(
                f"{plan_file} has schema_version {data.get('schema_version')!r}; this edge-lora reads "
                f"{PLAN_SCHEMA_VERSION}: prepare the plan again with this version"
            )
        plan = cls(plan_file.parent, data, sha256_bytes(raw))
        onnx = plan.onnx_path
        if not onnx.is_file():
            raise ModelError(f"{onnx} is missing from the plan folder {plan.directory}")
        actual = sha256_file(onnx)
        if actual != data["onnx"]["sha256"]:
            raise ModelError(
                f"{onnx} changed after the plan was made (sha256 {actual[:12]}…, plan says "
                f"{data['onnx']['sha256'][:12]}…); prepare the plan again"
            )
        return plan


# --------------------------------------------------------------------------------------- build settings
def build_settings(
    precision: Precision,
    *,
    has_qdq: bool,
    float_type: str,
    dla_core: int | None,
    tensorrt_major: int,
    strongly_typed: bool | None = None,
) -> dict[str, Any]:
    """Typing and builder flags for one build (see the module docstring for the rules).

    Args:
        precision: what the engine should compute in.
        has_qdq: the ONNX carries Q/DQ nodes (explicit INT8).
        float_type: ``"float32"`` or ``"float16"``: the type of the ONNX's float weights.
        dla_core: DLA core, or None for the GPU.
        tensorrt_major: the TensorRT major version the rules are for (10, or 11+).
        strongly_typed: force the choice (refused where it cannot give the requested precision).

    Returns:
        ``{"strongly_typed", "fp16", "int8"}`` (the flags are only ever set on weakly typed TensorRT 10 builds).

    Raises:
        InputError: the combination cannot build the requested precision.
    """
    if precision == "int8" and not has_qdq:
        raise InputError(
            "int8 on TensorRT is built from the S8S8 QDQ ONNX (edge_lora.export.onnx.qdq.quantize_qdq with the "
            "profile's quantization policy); implicit INT8 calibration is not supported (removed in TensorRT 11)"
        )
    if precision != "int8" and has_qdq:
        raise InputError(f"{precision} is built from the FP32 ONNX, but this ONNX holds Q/DQ (INT8) nodes")
    if precision == "fp32" and float_type == "float16":
        raise InputError("fp32 needs the FP32 ONNX; this one has FP16 weights")
    typed_graph = has_qdq or float_type == "float16"  # the graph itself says what runs in low precision
    if tensorrt_major >= 11:
        if strongly_typed is False:
            raise InputError("TensorRT >= 11 only builds strongly typed networks")
        if precision == "fp16" and not typed_graph:
            raise InputError(
                "TensorRT >= 11 builds strongly typed networks only, so the FP32 ONNX gives an FP32 engine: "
                "export the FP16 ONNX (half) for an fp16 engine"
            )
        return {"strongly_typed": True, "fp16": False, "int8": False}
    if strongly_typed is None:
        strongly_typed = typed_graph and dla_core is None
    if strongly_typed and not typed_graph and precision == "fp16":
        raise InputError(
            "a strongly typed build of the FP32 ONNX is an FP32 engine; fp16 needs weak typing here"
        )
    if strongly_typed:
        return {"strongly_typed": True, "fp16": False, "int8": False}
    reduced = precision != "fp32"
    return {"strongly_typed": False, "fp16": reduced, "int8": precision == "int8"}


# ---------------------------------------------------------------------------------------------- trtexec
def trtexec_command(plan: dict[str, Any], trtexec: str = "trtexec") -> list[str]:
    """The trtexec arguments that build the same engine as
    :func:`~edge_lora.runtime.tensorrt_engine.build_engine` (without the metadata header and fingerprint,
    which only edge-lora writes)."""
    build, onnx = plan["build"], plan["onnx"]
    cmd = [trtexec, f"--onnx={onnx['file']}", f"--saveEngine={TRTEXEC_ENGINE_NAME}"]
    if build["strongly_typed"] and build["rules"] != "tensorrt11":
        cmd.append("--stronglyTyped")  # the default (and a no-op) on TensorRT 11
    if build["fp16"]:
        cmd.append("--fp16")
    if build["int8"]:
        cmd.append("--int8")
    if build["fp32_layers"]:
        cmd.append("--layerPrecisions=" + ",".join(f"{name}:fp32" for name in build["fp32_layers"]))
        if build["fp32_output_layers"]:
            cmd.append(
                "--layerOutputTypes=" + ",".join(f"{name}:fp32" for name in build["fp32_output_layers"])
            )
        cmd.append(f"--precisionConstraints={build['precision_constraints'] or 'prefer'}")
    cmd.append(f"--memPoolSize=workspace:{build['workspace_mib']}M")
    cmd.append(f"--builderOptimizationLevel={build['builder_optimization_level']}")
    if build["dla_core"] is not None:
        cmd.append(f"--useDLACore={build['dla_core']}")
        if build["allow_gpu_fallback"]:
            cmd.append("--allowGPUFallback")
    if onnx.get("dynamic_input"):
        shape = "x".join(str(d) for d in onnx["input"]["shape"])
        spec = f"{onnx['input']['name']}:{shape}"
        cmd += [f"--minShapes={spec}", f"--optShapes={spec}", f"--maxShapes={spec}"]
    return cmd


def edge_lora_version() -> str | None:
    """The installed edge-lora version (recorded in plans and engine sidecars); None if not installed."""
    try:
        return importlib.metadata.version("edge-lora")
    except importlib.metadata.PackageNotFoundError:
        return None
