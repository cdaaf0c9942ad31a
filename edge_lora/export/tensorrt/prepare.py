"""TensorRT export on the build host: the plan folder the device builds its engine from.

One job: :func:`prepare_tensorrt` checks an ONNX against a tensorrt target profile and writes the plan
folder (torch-free; needs ``onnx``, not TensorRT)::

    plan_dir/model.onnx        the graph the engine is built from (FP16/FP32: the FP32 ONNX; INT8: the
                               S8S8 QDQ ONNX)
    plan_dir/build_plan.json   every build setting (precision, typing, flags, workspace, DLA, versions,
                               input shape, the ONNX sha256, the device it is meant for)
    plan_dir/trtexec.sh        the equivalent trtexec command line (debugging and benchmarking)
    plan_dir/README.md         how to build it

A TensorRT engine only runs on the GPU model and TensorRT release that built it, so export stops at the
plan and the device finishes the job. The two sides share only the plan format, which lives on the device
side: :mod:`edge_lora.runtime.tensorrt_plan` (file names, schema, :class:`TensorRtPlan`, the typing rules of
:func:`build_settings`, :func:`trtexec_command`). The engine build is
:func:`edge_lora.runtime.tensorrt_engine.build_engine` (``edge-lora engine build <plan dir>``). The host may
import device-side modules; nothing on the device side imports this one.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_lora.errors import InputError, ModelError, ProfileError, ToolError
from edge_lora.fileio import (
    atomic_output_dir,
    atomic_write_text,
    dumps_json,
    sha256_bytes,
    sha256_file,
)
from edge_lora.profiles import version_satisfies
from edge_lora.runtime.tensorrt_plan import (
    ENGINE_NAME,
    ONNX_NAME,
    PLAN_KIND,
    PLAN_NAME,
    PLAN_SCHEMA_VERSION,
    README_NAME,
    TRTEXEC_NAME,
    Precision,
    TensorRtPlan,
    build_settings,
    edge_lora_version,
    trtexec_command,
)

if TYPE_CHECKING:
    from edge_lora.profiles import TargetProfile

__all__ = ["prepare_tensorrt"]


# ------------------------------------------------------------------------------------------- ONNX facts
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


# ------------------------------------------------------------------------------------------------- plan
def _admits_major(spec: str, major: int) -> bool:
    """True if some ``major.x`` release lies in the version range ``spec``."""
    return any(version_satisfies(f"{major}.{minor}.{patch}", spec) for minor in range(40) for patch in (0, 9))


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
        "edge_lora_version": edge_lora_version(),
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


# ------------------------------------------------------------------------------------ plan folder files
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
