"""Explicit INT8 (QDQ) quantization of an exported FP32 ONNX graph with ``onnxruntime.quantization``.

:func:`quantize_qdq` validates its inputs, then: ONNX shape inference (``quant_pre_process`` without ORT's
graph optimizations, so node names and the graph stay those of the FP32 export), the policy's plan
(:mod:`edge_lora.export.policy`: which nodes stay float), ``quantize_static`` in QDQ format fed by the
calibration set's streaming reader, and checks on the result: ``onnx.checker``, the policy's promises (no
kept-float node fed by a DequantizeLinear; every zero point 0 for s8s8), one ONNX Runtime run compared with
the FP32 graph. Only then is the file moved to ``out_path``, with a sidecar that records the calibration
key (merged weights x calibration set x profile), so a later build can tell the artifact is stale.

The same QDQ graph serves ONNX Runtime (u8s8 or s8s8) and TensorRT (s8s8, placed per TensorRT's rules);
the policy's ``backend`` decides the placement.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_lora.errors import EdgeLoraError, InputError, ModelError, ToolError
from edge_lora.export.artifact import sidecar_path
from edge_lora.export.calibration import CalibrationSet, OrtCalibrationReader, calibration_record
from edge_lora.export.onnx.adapter_scales import AdapterScales, adapter_overrides, check_scales_in_graph
from edge_lora.export.onnx.float_revert import float_readers
from edge_lora.export.policy import QuantPlan, QuantPolicy, plan
from edge_lora.fileio import check_output, sha256_file
from edge_lora.validate.parity import cosine_similarity

if TYPE_CHECKING:
    import onnx

    from edge_lora.profiles import TargetProfile

__all__ = ["QdqResult", "qdq_stats", "quantize_qdq"]

_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class QdqResult:
    """What :func:`quantize_qdq` produced.

    Attributes:
        path / sidecar: the QDQ ``.onnx`` and its ``.json`` sidecar (None when not written).
        calibration: the calibration record (model, calibration set and profile sha256, and their key).
        quantize_nodes / dequantize_nodes: QuantizeLinear / DequantizeLinear counts.
        quantized_convs / float_convs: Conv nodes whose weight is dequantized from int8 / left float.
        kept_float: nodes passed as ``nodes_to_exclude`` (by reason in ``kept_float_by_reason``).
        activation_dtype: ``"uint8"`` or ``"int8"``.
        agreement: cosine similarity with the FP32 graph on the first calibration batch: the final output
            (``"output"``; for end-to-end graphs it is sensitive to TopK reordering near-equal scores), the
            decoded ``(N, 4 + nc, anchors)`` predictions before TopK (``"decoded"``) and their class scores
            alone (``"scores"``). Informational: the accuracy gates are measured on the device.
    """

    path: Path
    sidecar: Path | None
    policy: QuantPolicy
    calibrate_method: str
    calibration: dict[str, str]
    calibration_images: int
    fp32_path: Path
    fp32_sha256: str
    sha256: str
    quantize_nodes: int
    dequantize_nodes: int
    quantized_convs: int
    float_convs: int
    kept_float: int
    kept_float_by_reason: dict[str, int]
    activation_dtype: str
    agreement: dict[str, float]
    seconds: float
    quant_aware: dict[str, Any] | None = None  # the adapter's scales used for its convs (adapter_scales)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["policy"] = self.policy.to_dict()
        for key in ("path", "sidecar", "fp32_path"):
            d[key] = None if d[key] is None else str(d[key])
        return d


def qdq_stats(model: onnx.ModelProto) -> dict[str, Any]:
    """Counts of a QDQ graph: Q/DQ nodes, quantized/float convs, zero points.

    Returns a dict with ``quantize_nodes``, ``dequantize_nodes``, ``quantized_convs`` (Conv whose weight comes
    from a DequantizeLinear), ``float_convs``, ``activation_dtypes`` / ``weight_dtypes`` / ``bias_dtypes``
    (zero-point dtypes of Q/DQ on activations, on constant weights, and int32 biases) and ``zero_points``
    (zero-point initializer name -> largest absolute value).
    """
    from onnx import numpy_helper

    nodes = list(model.graph.node)
    inits = {i.name: i for i in model.graph.initializer}
    producer = {out: n for n in nodes for out in n.output}
    zero_points: dict[str, int] = {}
    dtypes: dict[str, set[str]] = {"activation": set(), "weight": set(), "bias": set()}
    for n in nodes:
        if n.op_type not in _QDQ_OPS or len(n.input) < 3 or n.input[2] not in inits:
            continue
        arr = numpy_helper.to_array(inits[n.input[2]])
        zero_points[n.input[2]] = int(np.abs(arr.astype(np.int64)).max(initial=0))
        if arr.dtype == np.int32:
            dtypes["bias"].add(str(arr.dtype))
        elif _from_initializer(n, producer, set(inits)):
            dtypes["weight"].add(str(arr.dtype))
        else:
            dtypes["activation"].add(str(arr.dtype))
    convs = [n for n in nodes if n.op_type == "Conv"]
    quantized = [
        n
        for n in convs
        if len(n.input) > 1 and getattr(producer.get(n.input[1]), "op_type", "") == "DequantizeLinear"
    ]
    return {
        "quantize_nodes": sum(n.op_type == "QuantizeLinear" for n in nodes),
        "dequantize_nodes": sum(n.op_type == "DequantizeLinear" for n in nodes),
        "quantized_convs": len(quantized),
        "float_convs": len(convs) - len(quantized),
        "activation_dtypes": sorted(dtypes["activation"]),
        "weight_dtypes": sorted(dtypes["weight"]),
        "bias_dtypes": sorted(dtypes["bias"]),
        "zero_points": zero_points,
    }


def _calibrate_method(value: str | None, policy: QuantPolicy) -> str:
    key = (value or policy.calibrate_method).lower()
    if key not in _METHODS:
        raise InputError(f"calibrate_method must be one of MinMax, Entropy, Percentile, got {value!r}")
    return _METHODS[key]


def _model_io(proto: onnx.ModelProto) -> tuple[str, tuple[int | None, ...]]:
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelError(f"expected one image input, got {[i.name for i in inputs]}")
    dims = tuple(
        d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim
    )
    if len(dims) != 4:
        raise ModelError(f"expected an NCHW image input, got shape {dims} for '{inputs[0].name}'")
    return inputs[0].name, dims


def _resolve_imgsz(imgsz: int | Sequence[int] | None, dims: tuple[int | None, ...], meta: Mapping[str, str]):
    from edge_lora.runtime.base import normalize_metadata

    fixed = (dims[2], dims[3]) if dims[2] and dims[3] else None
    if imgsz is None:
        meta_size = normalize_metadata(meta).get("imgsz")
        hw = fixed or (tuple(meta_size) if meta_size else None)
        if hw is None:
            raise InputError("the model has a dynamic input size and no imgsz metadata; pass imgsz")
        return (int(hw[0]), int(hw[1]))
    hw = (int(imgsz), int(imgsz)) if isinstance(imgsz, (int, np.integer)) else (int(imgsz[0]), int(imgsz[1]))
    if fixed and hw != fixed:
        raise InputError(
            f"imgsz {hw[0]}x{hw[1]} does not match the model's fixed input {fixed[0]}x{fixed[1]}"
        )
    return hw


def _source_of(fp32: Path) -> tuple[str | None, str | None]:
    """(checkpoint, sha256) of the merged weights, from the FP32 export's verified sidecar when present."""
    from edge_lora.export.artifact import verify_sidecar

    if not sidecar_path(fp32).is_file():
        return None, None
    sidecar = verify_sidecar(fp32)  # a sidecar that does not match the file means the file was replaced
    source = sidecar.get("source") or {}
    return source.get("checkpoint"), source.get("sha256")


def _prune_opsets(proto: onnx.ModelProto) -> None:
    # ORT tools declare every domain they know (com.microsoft, ...); keep only domains nodes use, so other
    # consumers (TensorRT's parser) see a plain ONNX graph.
    used = {n.domain or "" for n in proto.graph.node}
    keep = [o for o in proto.opset_import if (o.domain or "") in used or (o.domain or "") in ("", "ai.onnx")]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)


def _from_initializer(dq, producer: Mapping[str, Any], inits: set[str]) -> bool:
    """True when a DequantizeLinear dequantizes a constant (a weight), directly or through a QuantizeLinear."""
    src = dq.input[0]
    if src in inits:
        return True
    q = producer.get(src)
    return q is not None and q.op_type == "QuantizeLinear" and q.input[0] in inits


def _check_promises(proto: onnx.ModelProto, the_plan: QuantPlan, policy: QuantPolicy, stats: Mapping) -> None:
    """What the policy promised: the head's outputs and post-processing compute in float from float inputs
    (no DequantizeLinear feeds them); no kept-float node has a dequantized weight; s8s8 is symmetric."""
    inits = {i.name for i in proto.graph.initializer}
    producer = {out: n for n in proto.graph.node for out in n.output}
    by_name = {n.name: n for n in proto.graph.node}
    for name in the_plan.keep_float:
        node = by_name.get(name)
        if node is None:
            continue
        dq = [producer[i] for i in node.input if i in producer and producer[i].op_type == "DequantizeLinear"]
        # A backbone Sigmoid kept float may read a dequantized Conv output (ORT's placement); the head's
        # outputs and the post-processing may not, and no kept-float node may use a dequantized weight.
        strict = the_plan.reasons.get(name) in ("postprocess", "head_output")
        if strict and dq:
            raise ToolError(
                f"quantization broke the policy: node {name} ({node.op_type}) must stay float but is fed by "
                f"DequantizeLinear {dq[0].name}"
            )
        weights = [d for d in dq if _from_initializer(d, producer, inits)]
        if weights:
            raise ToolError(
                f"quantization broke the policy: node {name} ({node.op_type}) must stay float but its weight "
                f"is dequantized ({weights[0].name})"
            )
    if stats["quantize_nodes"] == 0 or stats["quantized_convs"] == 0:
        raise ToolError("quantization produced no quantized Conv; check the policy's op_types and exclusions")
    if policy.scheme == "s8s8":
        nonzero = sorted(k for k, v in stats["zero_points"].items() if v != 0)
        types = set(stats["activation_dtypes"]) | set(stats["weight_dtypes"])
        if nonzero or types != {"int8"}:
            raise ToolError(
                f"s8s8 needs symmetric int8 (zero point 0) everywhere; got {len(nonzero)} non-zero zero points "
                f"(first: {nonzero[:1]}) and activation/weight types {sorted(types)}"
            )


def quantize_qdq(
    fp32_onnx: str | Path,
    out_path: str | Path,
    calib: CalibrationSet | str | Path,
    policy: QuantPolicy,
    *,
    imgsz: int | Sequence[int] | None = None,
    calibrate_method: str | None = None,
    overwrite: bool = False,
    profile: TargetProfile | Mapping[str, Any] | None = None,
    source_checkpoint: str | Path | None = None,
    source_sha256: str | None = None,
    write_sidecar: bool = True,
    calibration_cache: str | Path | None = None,
    record_extra: Mapping[str, Any] | None = None,
    adapter_scales: AdapterScales | None = None,
) -> QdqResult:
    """Quantize an FP32 ONNX detector to INT8 QDQ with ONNX Runtime, under ``policy``.

    Args:
        fp32_onnx: the FP32 graph from :func:`~edge_lora.export.onnx.exporter.export_onnx`.
        out_path: the ``.onnx`` to write.
        calib: a :class:`CalibrationSet` or its folder (loaded and hash-checked).
        policy: the quantization policy (``QuantPolicy.from_profile(profile)``).
        imgsz: input size; None takes the model's (fixed input or metadata). Must match a fixed input.
        calibrate_method: ``"MinMax"``, ``"Entropy"`` or ``"Percentile"`` (any case); None = the policy's.
        overwrite: replace an existing ``out_path``.
        profile: the target profile (recorded, and part of the calibration key; without one the policy's
            sha256 stands in for it).
        source_checkpoint / source_sha256: the merged checkpoint; default: from the FP32 graph's sidecar
            (verified), else the FP32 graph's own sha256 stands for the weights.
        write_sidecar: write ``<out_path>.json``.
        calibration_cache: a JSON file of activation ranges (ONNX Runtime's ``calibration_cache_path``):
            written by the first call, read instead of calibrating again by the next (same model, set and
            method; the accuracy-aware export quantizes the same graph twice).
        record_extra: more entries for the sidecar (e.g. the accuracy-aware search's record).
        adapter_scales: a quant-aware adapter's activation scales (same scheme as ``policy``): the inputs of
            its adapted convs get exactly those scales instead of calibrated ones (checked in the result).

    Raises:
        InputError / ModelError: bad arguments, an already quantized or non-YOLO graph.
        DataError: the calibration set does not match its images. OutputExistsError: ``out_path`` exists.
        ToolError: ONNX Runtime's quantizer failed, or the result breaks the policy or does not run.
    """
    import onnx

    t0 = time.perf_counter()
    fp32 = Path(fp32_onnx)
    out_path = Path(out_path)
    if not fp32.is_file():
        raise ModelError(f"FP32 ONNX model not found: {fp32}")
    if out_path.suffix.lower() != ".onnx":
        raise InputError(f"--out {out_path}: the QDQ model file name must end in .onnx")
    if out_path.resolve() == fp32.resolve():
        raise InputError(f"--out {out_path} is the FP32 input; write the INT8 model to another file")
    check_output(out_path, overwrite)
    if not isinstance(policy, QuantPolicy):
        raise InputError(f"policy must be a QuantPolicy, got {type(policy).__name__}")
    calib_set = calib if isinstance(calib, CalibrationSet) else CalibrationSet.load(calib)
    method = _calibrate_method(calibrate_method, policy)

    proto = onnx.load(str(fp32))
    if any(n.op_type in _QDQ_OPS for n in proto.graph.node):
        raise InputError(f"{fp32} already contains QuantizeLinear/DequantizeLinear; pass the FP32 export")
    input_name, dims = _model_io(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    hw = _resolve_imgsz(imgsz, dims, meta)
    batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else 1

    ckpt, model_sha = _source_of(fp32)
    source_checkpoint = source_checkpoint if source_checkpoint is not None else ckpt
    model_sha256 = source_sha256 or model_sha or sha256_file(fp32)
    if profile is None:
        profile_sha256 = policy.sha256()  # no profile: the policy is what shaped the quantization
    elif isinstance(profile, Mapping):
        profile_sha256 = str(profile["sha256"])
    else:
        # The calibration key names the profile; refuse a policy the profile does not describe.
        # The accuracy-aware search's float_nodes are measured, not configured: compare without them.
        described = dataclasses.replace(policy, float_nodes=())
        if profile.quantization is not None and QuantPolicy.from_profile(profile) != described:
            raise InputError(
                f"the quantization policy differs from profile '{profile.name}' (its quantization section); "
                "pass QuantPolicy.from_profile(profile), or apply overrides to the profile itself"
            )
        profile_sha256 = profile.sha256()
    record = calibration_record(model_sha256, calib_set.sha256, profile_sha256)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".partial", dir=out_path.parent))
    try:
        prepared = _prepare(fp32, workdir / "prepared.onnx")
        the_plan = plan(prepared, policy)
        _unshare_float_initializers(prepared, set(the_plan.keep_float))
        overrides, quant_aware = adapter_overrides(prepared, adapter_scales, policy.scheme)
        quantized = workdir / "quantized.onnx"
        _run_quantize_static(
            prepared, quantized, calib_set, policy, the_plan, input_name, hw, batch, method,
            calibration_cache, overrides,
        )  # fmt: skip

        qproto = onnx.load(str(quantized))
        if quant_aware is not None:  # the graph computes what the quant-aware adapter was trained with
            quant_aware["float_readers"] = float_readers(qproto, policy.op_types)
        _prune_opsets(qproto)
        present = {p.key for p in qproto.metadata_props}
        for key, value in meta.items():  # keep Ultralytics' metadata (names, imgsz, stride, end2end ...)
            if key not in present:
                entry = qproto.metadata_props.add()
                entry.key, entry.value = key, value
        onnx.save(qproto, str(quantized))
        try:
            onnx.checker.check_model(str(quantized))
        except Exception as exc:
            raise ToolError(f"the QDQ graph fails onnx.checker: {str(exc).splitlines()[0]}") from exc
        stats = qdq_stats(qproto)
        _check_promises(qproto, the_plan, policy, stats)
        if quant_aware is not None:
            quant_aware.update(check_scales_in_graph(qproto, overrides))
        agreement = _agreement(proto, qproto, calib_set, hw, batch)
        sidecar_path(out_path).unlink(missing_ok=True)  # an old sidecar would describe the replaced file
        os.replace(quantized, out_path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    act = stats["activation_dtypes"]
    result = QdqResult(
        path=out_path,
        sidecar=None,
        policy=policy,
        calibrate_method=method,
        calibration=record,
        calibration_images=len(calib_set),
        fp32_path=fp32,
        fp32_sha256=sha256_file(fp32),
        sha256=sha256_file(out_path),
        quantize_nodes=stats["quantize_nodes"],
        dequantize_nodes=stats["dequantize_nodes"],
        quantized_convs=stats["quantized_convs"],
        float_convs=stats["float_convs"],
        kept_float=len(the_plan.keep_float),
        kept_float_by_reason={k: v for k, v in the_plan.summary().items() if k != "quantizable"},
        activation_dtype=act[0] if len(act) == 1 else ",".join(act),
        agreement=agreement,
        seconds=round(time.perf_counter() - t0, 3),
        quant_aware=quant_aware,
    )
    if write_sidecar:
        from edge_lora.export.artifact import write_sidecar as _write

        extra = {
            k: v for k, v in result.to_dict().items() if k not in ("path", "sidecar", "calibration", "sha256")
        }
        extra["calibration_set"] = {
            "directory": str(calib_set.directory),
            "recipe": calib_set.recipe.get("name"),
        }
        extra.update(record_extra or {})
        extra["metadata"] = {
            k: meta[k] for k in ("imgsz", "end2end", "names", "stride", "batch") if k in meta
        }
        sidecar = _write(
            out_path,
            kind="onnx-qdq",
            source_checkpoint=source_checkpoint,
            source_sha256=model_sha256,
            profile=profile,
            precision="int8",
            calibration=record,
            extra=extra,
        )
        result = dataclasses.replace(result, sidecar=sidecar)
    return result


def _prepare(fp32: Path, out: Path) -> Path:
    """ONNX shape inference for the quantizer. ORT's graph optimizations are skipped on purpose: they rename
    and fuse nodes (the policy names nodes) and add ORT-only domains (TensorRT consumes this graph too)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(fp32), str(out), skip_optimization=True, skip_symbolic_shape=True)
    except Exception as exc:  # shape inference is an aid, not a requirement: quantize the graph as exported
        logging.getLogger(__name__).warning(
            "ONNX shape inference before quantization failed (%s); skipped", exc
        )
        shutil.copyfile(fp32, out)
    return out


def _unshare_float_initializers(path: Path, keep_float: set[str]) -> None:
    """Give float nodes their own copy of initializers they share with quantized nodes, in place.

    onnxslim de-duplicates equal initializers (e.g. identical BatchNorm-folded biases), so a float node can
    read the same tensor as a quantized one; ONNX Runtime then quantizes it for the quantized consumer and
    the float node would read it through a DequantizeLinear, breaking the policy.
    """
    import onnx

    proto = onnx.load(str(path))
    inits = {t.name: t for t in proto.graph.initializer}
    consumers: dict[str, set[str]] = {}
    for node in proto.graph.node:
        for name in node.input:
            if name in inits:
                consumers.setdefault(name, set()).add(node.name)
    changed = False
    for node in proto.graph.node:
        if node.name not in keep_float:
            continue
        for i, name in enumerate(node.input):
            if name in inits and consumers[name] - keep_float:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__float_{node.name.strip('/').replace('/', '_')}"
                proto.graph.initializer.append(copy)
                node.input[i] = copy.name
                changed = True
    if changed:
        onnx.save(proto, str(path))


#: Most calibration batches held at once by the histogram (entropy/percentile) calibrators.
HISTOGRAM_CHUNK = 16


def histogram_chunk(n_batches: int, limit: int | None = None) -> int:
    """The largest chunk size <= ``limit`` that divides ``n_batches`` (ONNX Runtime requires a divisor)."""
    limit = limit or HISTOGRAM_CHUNK
    return max(d for d in range(1, min(limit, n_batches) + 1) if n_batches % d == 0)


def _run_quantize_static(
    prepared: Path,
    out: Path,
    calib: CalibrationSet,
    policy: QuantPolicy,
    the_plan: QuantPlan,
    input_name: str,
    hw: tuple[int, int],
    batch: int,
    method: str,
    calibration_cache: str | Path | None = None,
    overrides: Mapping[str, list[dict[str, Any]]] | None = None,
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    extra = policy.ort_extra_options()
    if overrides:
        extra["TensorQuantOverrides"] = {k: [dict(e) for e in v] for k, v in overrides.items()}
    # No CalibMaxIntermediateOutputs: in onnxruntime 1.32 MinMaxCalibrater.collect_data() clears the collected
    # outputs every N batches without folding them into the ranges, so only the last partial chunk would
    # calibrate (and a set that is a multiple of N fails with "No data is collected"). MinMax keeps only
    # ReduceMin/ReduceMax scalars per tensor and batch, so holding them all is cheap.
    reader = OrtCalibrationReader(calib, input_name, hw, batch)
    if method != "MinMax":
        # Entropy/Percentile calibrators keep every activation tensor of every batch they are given before
        # building histograms: 300 images at 640 px exhaust 24 GB. ONNX Runtime's strided calibration (the
        # option is named for MinMax, but quantize_static applies it to any calibrator) calls collect_data
        # once per chunk, and the histogram collector merges chunks, so memory is bounded by one chunk.
        extra["CalibStridedMinMax"] = histogram_chunk(len(reader))
    try:
        quantize_static(
            str(prepared),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(policy.op_types),
            per_channel=policy.per_channel,
            reduce_range=policy.reduce_range,
            activation_type=getattr(QuantType, policy.activation_type),
            weight_type=getattr(QuantType, policy.weight_type),
            nodes_to_exclude=list(the_plan.keep_float),
            calibrate_method=getattr(CalibrationMethod, method),
            extra_options=extra,
            calibration_cache_path=str(calibration_cache) if calibration_cache is not None else None,
        )
    except EdgeLoraError:
        raise  # e.g. a calibration image changed while being read
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ToolError(f"ONNX Runtime quantize_static failed: {type(exc).__name__}: {first}") from exc
    if not out.is_file():
        raise ToolError("ONNX Runtime quantize_static wrote no model")


def _agreement(
    fp32: onnx.ModelProto, qdq: onnx.ModelProto, calib: CalibrationSet, hw: tuple[int, int], batch: int
) -> dict[str, float]:
    from edge_lora.export.onnx.graph import run_onnx

    feed = next(calib.batches(hw, batch, drop_last=batch > 1))
    ref, ref_dec = run_onnx(fp32, feed, decoded=True)
    got, got_dec = run_onnx(qdq, feed, decoded=True)
    if not np.isfinite(got).all():
        raise ToolError("the QDQ model produces NaN/inf on a calibration image")
    out = {"output": round(cosine_similarity(ref, got), 6)}
    if ref_dec is not None and got_dec is not None:
        out["decoded"] = round(cosine_similarity(ref_dec, got_dec), 6)
        out["scores"] = round(cosine_similarity(ref_dec[:, 4:], got_dec[:, 4:]), 6)
    return out
