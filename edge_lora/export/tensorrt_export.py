"""TensorRT engines: a build plan made on the host, the engine built on the device it will run on.

A TensorRT engine only runs on the GPU model and TensorRT release that built it, so export stops at a
*plan* and the device finishes the job:

* Host (here, torch-free): :func:`prepare_tensorrt` checks the ONNX against the profile and writes a plan
  folder::

      plan_dir/model.onnx        the graph the engine is built from (FP16/FP32: the FP32 ONNX; INT8: the
                                 S8S8 QDQ ONNX)
      plan_dir/build_plan.json   every build setting (precision, typing, flags, workspace, DLA, versions,
                                 input shape, the ONNX sha256, the device it is meant for)
      plan_dir/trtexec.sh        the equivalent trtexec command line (debugging and benchmarking)
      plan_dir/README.md         how to build it

* Device: :func:`build_engine` (``edge-lora engine build <plan dir>``) builds ``model.engine`` with the
  ``tensorrt`` Python API (imported only there) and writes ``model.engine.json``: the device fingerprint
  :class:`~edge_lora.runtime.tensorrt_rt.TensorRtRunner` checks before loading, and the plan's sha256.

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

import contextlib
import importlib.metadata
import json
import logging
import os
import re
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edge_lora.errors import InputError, ModelError, ProfileError, ToolError
from edge_lora.fileio import (
    atomic_output_dir,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_output,
    dumps_json,
    sha256_bytes,
    sha256_file,
)
from edge_lora.profiles import version_satisfies

if TYPE_CHECKING:
    from edge_lora.profiles import TargetProfile

__all__ = [
    "ENGINE_NAME",
    "PLAN_NAME",
    "EngineBuild",
    "TensorRtPlan",
    "build_engine",
    "build_settings",
    "jetpack_release",
    "prepare_tensorrt",
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

NO_TENSORRT = (
    "TensorRT is not installed here; build the engine on the device: edge-lora engine build <plan dir> "
    "(JetPack ships TensorRT; on other NVIDIA machines pip install tensorrt)"
)

Precision = Literal["fp32", "fp16", "int8"]

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


# ------------------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class TensorRtPlan:
    """A plan folder written by :func:`prepare_tensorrt` (or read back with :meth:`load`).

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


# ------------------------------------------------------------------------------------------ ONNX facts
@dataclass(frozen=True)
class _OnnxInfo:
    input_name: str
    input_shape: tuple[int | None, ...]
    outputs: list[dict[str, Any]]
    opset: int
    has_qdq: bool
    qdq_problem: str | None
    float_type: str
    metadata: dict[str, str]
    keep_fp32: list[str]
    keep_fp32_outputs: list[str]
    keep_fp32_note: str | None


def _float_nodes(model: Any, names: set[str]) -> tuple[list[str], list[str]]:
    """Of the nodes ``names``: those that touch a float tensor (worth pinning to FP32), and those whose
    outputs are all float (their output type can be pinned too; TopK's indices, Mod or Cast cannot)."""
    import onnx

    try:
        typed = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is a refinement; without it pin compute precision only
        typed = model
    graph = typed.graph
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    types.update({i.name: i.data_type for i in graph.initializer})
    touch, outputs = [], []
    for node in graph.node:
        if node.name not in names:
            continue
        outs = [types.get(o) for o in node.output if o]
        if any(types.get(t) in floats for t in (*node.input, *node.output) if t):
            touch.append(node.name)
            if outs and all(t in floats for t in outs):
                outputs.append(node.name)
    return touch, outputs


def _inspect_onnx(path: Path) -> _OnnxInfo:
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{path} is not a readable ONNX model: {exc}") from exc
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    if any(i.data_location == onnx.TensorProto.EXTERNAL for i in graph.initializer):
        raise InputError(f"{path} keeps weights in external data files; export a single-file ONNX")
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelError(f"{path}: expected one image input, found {[i.name for i in inputs]}")
    dims = tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in inputs[0].type.tensor_type.shape.dim
    )
    outputs = [
        {
            "name": o.name,
            "shape": [
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in o.type.tensor_type.shape.dim
            ],
        }
        for o in graph.output
    ]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    quant = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    has_qdq = bool(quant) or any(n.op_type == "DequantizeLinear" for n in graph.node)
    constants = {
        n.output[0]: a.t
        for n in graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value"
    }
    problem = None
    for n in quant:
        name = n.input[2] if len(n.input) > 2 else ""
        zp = inits.get(name) or constants.get(name)
        if not name:
            problem = f"QuantizeLinear '{n.name}' has no zero point (ONNX then quantizes to uint8)"
        elif zp is None:
            continue  # computed at run time: cannot be checked here; TensorRT's parser will say
        elif zp.data_type != onnx.TensorProto.INT8:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(zp.data_type)
            problem = f"QuantizeLinear '{n.name}' quantizes to {dtype}"
        elif numpy_helper.to_array(zp).any():
            problem = f"QuantizeLinear '{n.name}' has a non-zero zero point (asymmetric)"
        if problem:
            break

    counts: dict[int, int] = {}
    for init in graph.initializer:
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            counts[init.data_type] = counts.get(init.data_type, 0) + 1
    float16 = counts.get(onnx.TensorProto.FLOAT16, 0) > counts.get(onnx.TensorProto.FLOAT, 0)

    keep, keep_outputs, note = [], [], None
    try:
        from edge_lora.export.policy import find_detect_head

        post = find_detect_head(model).postprocess
    except (ImportError, ModelError) as exc:
        post, note = (), f"no YOLO Detect head post-processing found to pin to FP32 ({exc})"
    if post:
        keep, keep_outputs = _float_nodes(model, set(post))
    return _OnnxInfo(
        input_name=inputs[0].name,
        input_shape=dims,
        outputs=outputs,
        opset=int(opset),
        has_qdq=has_qdq,
        qdq_problem=problem,
        float_type="float16" if float16 else "float32",
        metadata={p.key: p.value for p in model.metadata_props},
        keep_fp32=keep,
        keep_fp32_outputs=keep_outputs,
        keep_fp32_note=note,
    )


# ------------------------------------------------------------------------------------ build settings
def _admits_major(spec: str, major: int) -> bool:
    """True if some ``major.x`` release lies in the version range ``spec``."""
    return any(version_satisfies(f"{major}.{minor}.{patch}", spec) for minor in range(40) for patch in (0, 9))


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
            "int8 on TensorRT is built from the S8S8 QDQ ONNX (edge_lora.export.ort_qdq.quantize_qdq with the "
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


def _resolve_profile(profile: TargetProfile | str | Path) -> TargetProfile:
    from edge_lora.profiles import TargetProfile, load_profile

    if not isinstance(profile, TargetProfile):
        profile = load_profile(profile)
    if profile.backend != "tensorrt" or profile.tensorrt is None:
        raise ProfileError(f"profile {profile.name} is for backend {profile.backend}, not tensorrt")
    return profile


def prepare_tensorrt(
    onnx_path: str | Path,
    out_dir: str | Path,
    profile: TargetProfile | str | Path,
    *,
    precision: Precision | None = None,
    strongly_typed: bool | None = None,
    overwrite: bool = False,
) -> TensorRtPlan:
    """Write the TensorRT build plan folder for ``profile`` (host side; needs onnx, not TensorRT).

    Args:
        onnx_path: FP16/FP32 engines: the FP32 ONNX (or an FP16 one); INT8: the S8S8 QDQ ONNX.
        out_dir: the plan folder to write (``model.onnx``, ``build_plan.json``, ``trtexec.sh``, ``README.md``).
        profile: a tensorrt TargetProfile, or its name/path.
        precision: fp32, fp16 or int8; default the first of the profile's precision chain.
        strongly_typed: override the typing rule of :func:`build_settings` (None = the rule).
        overwrite: replace an existing plan folder.

    Raises:
        ProfileError: not a tensorrt profile. InputError: the ONNX does not fit the profile or precision.
        ModelError: unreadable ONNX. OutputExistsError: ``out_dir`` exists.
    """
    profile = _resolve_profile(profile)
    trt = profile.tensorrt
    assert trt is not None  # _resolve_profile
    precision = precision or profile.precision_chain()[0]
    if precision not in ("fp32", "fp16", "int8"):
        raise InputError(f"precision must be fp32, fp16 or int8, got {precision!r}")
    if trt.dla_core is not None and precision == "fp32":
        raise InputError("DLA runs fp16/int8 only; build fp32 on the GPU (tensorrt.dla_core: null)")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputError(f"ONNX model {onnx_path} not found")
    info = _inspect_onnx(onnx_path)
    if info.has_qdq and info.qdq_problem:
        raise InputError(
            f"{onnx_path}: TensorRT explicit quantization needs symmetric int8 (s8s8) Q/DQ: {info.qdq_problem}"
        )

    want = (profile.batch, 3, profile.imgsz, profile.imgsz)
    if len(info.input_shape) != 4 or any(
        d is not None and d != w for d, w in zip(info.input_shape, want, strict=False)
    ):
        raise InputError(
            f"{onnx_path}: input '{info.input_name}' is {_fmt_shape(info.input_shape)}, profile {profile.name} "
            f"builds {_fmt_shape(want)} (batch x 3 x imgsz x imgsz); export the ONNX with the profile's settings"
        )
    dynamic = any(d is None for d in info.input_shape)
    if dynamic and trt.dla_core is not None:
        raise InputError("DLA needs static shapes; export the ONNX without dynamic axes")

    majors = [m for m in (10, 11, 12) if _admits_major(trt.version, m)]
    if not majors:
        raise ProfileError(
            f"profile {profile.name}: tensorrt.version {trt.version!r} admits no TensorRT 10+ release"
        )
    rules_major = majors[0]
    flags = build_settings(
        precision,
        has_qdq=info.has_qdq,
        float_type=info.float_type,
        dla_core=trt.dla_core,
        tensorrt_major=rules_major,
        strongly_typed=strongly_typed,
    )
    reduced_weak = not flags["strongly_typed"] and (flags["fp16"] or flags["int8"])
    notes = [info.keep_fp32_note] if reduced_weak and info.keep_fp32_note else []
    if len(majors) > 1 and not flags["strongly_typed"]:
        notes.append(
            f"settings follow TensorRT {rules_major} rules; TensorRT 11+ (also admitted by {trt.version!r}) "
            f"builds strongly typed only and ignores the precision flags"
            + (
                "; an fp16 engine there needs an FP16 ONNX"
                if precision == "fp16" and not info.has_qdq
                else ""
            )
        )
    onnx_sha = sha256_file(onnx_path)
    from edge_lora.runtime.base import normalize_metadata

    metadata = normalize_metadata(info.metadata)
    metadata.pop("dynamic", None)
    if trt.dla_core is not None:
        metadata["dla"] = str(trt.dla_core)  # Ultralytics' AutoBackend and our runner read it

    data: dict[str, Any] = {
        "kind": PLAN_KIND,
        "schema_version": PLAN_SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edge_lora_version": _version("edge-lora"),
        "profile": {"name": profile.name, "sha256": profile.sha256(), "source": profile.source},
        "precision": precision,
        "onnx": {
            "file": ONNX_NAME,
            "sha256": onnx_sha,
            "source": str(onnx_path),
            "has_qdq": info.has_qdq,
            "float_type": info.float_type,
            "opset": info.opset,
            "input": {"name": info.input_name, "shape": list(want)},
            "dynamic_input": dynamic,
            "outputs": info.outputs,
        },
        "build": {
            **flags,
            "rules": f"tensorrt{rules_major}" if rules_major < 11 else "tensorrt11",
            "fp32_layers": info.keep_fp32 if reduced_weak else [],
            "fp32_output_layers": info.keep_fp32_outputs if reduced_weak else [],
            "notes": notes,
            "precision_constraints": "prefer" if reduced_weak and info.keep_fp32 else None,
            "workspace_mib": trt.workspace_mib,
            "builder_optimization_level": trt.builder_optimization_level,
            "dla_core": trt.dla_core,
            "allow_gpu_fallback": trt.allow_gpu_fallback if trt.dla_core is not None else None,
        },
        "device": {
            "family": profile.family,
            "model_match": list(profile.hardware.model_match),
            "dla_cores": profile.hardware.dla_cores,
            "tensorrt_version": trt.version,
            "jetpack": trt.jetpack,
        },
        "engine": {"file": ENGINE_NAME, "metadata": metadata},
    }
    command = trtexec_command(data)
    data["trtexec"] = shlex.join(command)

    final = Path(out_dir)
    with atomic_output_dir(final, overwrite=overwrite) as tmp:
        shutil.copyfile(onnx_path, tmp / ONNX_NAME)
        if sha256_file(tmp / ONNX_NAME) != onnx_sha:
            raise ToolError(
                f"copying {onnx_path} into the plan changed its content (disk or concurrent write?)"
            )
        text = dumps_json(data)
        atomic_write_text(tmp / PLAN_NAME, text)
        atomic_write_text(tmp / TRTEXEC_NAME, _trtexec_script(data, command))
        os.chmod(tmp / TRTEXEC_NAME, 0o755)
        atomic_write_text(tmp / README_NAME, _readme(data))
    # What build_plan.json holds (JSON turns the metadata's int class ids into strings), as load() reads it.
    return TensorRtPlan(final, json.loads(text), sha256_bytes(text.encode("utf-8")))


def _fmt_shape(shape: tuple[int | None, ...]) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------------------- trtexec
def trtexec_command(plan: dict[str, Any], trtexec: str = "trtexec") -> list[str]:
    """The trtexec arguments that build the same engine as :func:`build_engine` (without the metadata
    header and fingerprint, which only edge-lora writes)."""
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


def _trtexec_script(plan: dict[str, Any], command: list[str]) -> str:
    device = plan["device"]
    jetpack = f", JetPack {device['jetpack']}" if device["jetpack"] else ""
    args = " \\\n    ".join(shlex.quote(a) for a in command[1:])
    return (
        "#!/usr/bin/env bash\n"
        f"# trtexec equivalent of this plan ({plan['precision']}, TensorRT {device['tensorrt_version']}{jetpack}).\n"
        "# For debugging and benchmarking: the engine it writes has no metadata header and no fingerprint, so\n"
        "# the edge-lora runtime refuses it. Build the deployable engine with: edge-lora engine build <plan dir>\n"
        "set -euo pipefail\n"
        'cd "$(dirname "$0")"\n'
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"\n'
        f'"$TRTEXEC" {args} "$@"\n'
    )


def _readme(plan: dict[str, Any]) -> str:
    build, device = plan["build"], plan["device"]
    where = f"DLA core {build['dla_core']}" if build["dla_core"] is not None else "the GPU"
    typing = "strongly typed" if build["strongly_typed"] else "weakly typed (precision flags)"
    jetpack = f" / JetPack {device['jetpack']}" if device["jetpack"] else ""
    return (
        f"# TensorRT build plan: {plan['profile']['name']}, {plan['precision']}\n\n"
        f"Built on the device, never here: a TensorRT engine only runs on the GPU and TensorRT release that\n"
        f"built it. This plan is for family `{device['family']}`, TensorRT `{device['tensorrt_version']}`"
        f"{jetpack}, running on {where}, {typing}.\n\n"
        "On the device:\n\n"
        "    edge-lora engine build .\n\n"
        f"writes `{ENGINE_NAME}` and `{ENGINE_NAME}.json` (the GPU, compute capability and TensorRT version\n"
        "it was built with; the runtime refuses the engine on any other). `trtexec.sh` is the equivalent\n"
        "trtexec command line, for debugging and benchmarking only.\n\n"
        f"Files: `{ONNX_NAME}` (sha256 {plan['onnx']['sha256']}), `{PLAN_NAME}` (every setting).\n"
    )


# -------------------------------------------------------------------------------------- device facts
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


# ------------------------------------------------------------------------------------------- device
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
        "edge_lora_version": _version("edge-lora"),
    }
    fp_path = Path(f"{out}.json")
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
