"""OpenVINO IR export: FP32, FP16-compressed weights, or INT8 by NNCF post-training quantization.

Every precision starts from the FP32 ONNX graph (``openvino.convert_model``), so OpenVINO, ONNX Runtime and
TensorRT artifacts share one graph and one set of node names. The output folder holds exactly what
Ultralytics and :class:`edge_lora.runtime.openvino_rt.OpenVinoRunner` read::

    out_dir/model.xml  model.bin  metadata.yaml

It is written into a temp folder and renamed into place only after the IR compiled on the CPU and ran on a
real image next to ONNX Runtime's FP32 output, so a folder that exists is a folder that works.

INT8 (NNCF, what it leaves in float, accuracy-aware quantization) is :mod:`edge_lora.export.openvino.quantize`;
the IR's files and metadata :mod:`edge_lora.export.openvino.ir`; the check :mod:`edge_lora.export.openvino.check`.

Host side only (imports nncf, which imports torch); the device side reads the IR with the runtime package.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edge_lora.errors import InputError, ToolError
from edge_lora.export.openvino.check import (
    DEFAULT_INT8_MIN_COSINE,
    DEFAULT_TOLERANCE,
    REDUCED,
    check_against_onnxruntime,
    check_sample,
)
from edge_lora.export.openvino.ir import (
    BIN_NAME,
    METADATA_NAME,
    XML_NAME,
    first_line,
    import_openvino,
    onnx_facts,
    quantization_stats,
    ultralytics_metadata,
    versions,
    write_metadata,
)
from edge_lora.export.openvino.quantize import (
    DEFAULT_SUBSET,
    AccuracyControl,
    IgnoredOps,
    as_batch,
    calibration_source,
    ignored_scope,
    import_nncf,
    quantize,
)
from edge_lora.fileio import atomic_output_dir, sha256_file

if TYPE_CHECKING:
    from edge_lora.profiles import OpenVinoSettings, TargetProfile

__all__ = ["DEFAULT_INT8_MIN_COSINE", "DEFAULT_TOLERANCE", "OpenVinoExport", "Precision", "export_openvino"]

Precision = Literal["fp32", "fp16", "bf16", "int8"]


@dataclass
class OpenVinoExport:
    """The outcome of :func:`export_openvino`; truthy when the parity check passed.

    Attributes:
        out_dir, xml, bin, metadata_yaml: the written files.
        precision: fp32, fp16 or int8.
        source: the FP32 ONNX (or checkpoint) given; onnx_sha256: hash of the ONNX the IR was converted from.
        xml_sha256, bin_sha256: hashes of the written IR.
        parity: comparison with ONNX Runtime FP32 on the check image: ``final`` (the output, tie-aware for
            end2end), ``decoded`` (the predictions before post-processing: ``max_rel``, ``cosine_boxes``,
            ``cosine_scores``), and the gate: ``criterion`` (``max_rel`` for fp32/fp16, ``min_cosine`` for
            int8), ``value``, ``limit``, ``passed``; ``sample`` names the image.
        quantization: INT8 only: FakeQuantize/FakeConvert counts, quantized and float weighted ops, the ops
            left float by the ignored scope (see :func:`quantization_stats`), calibration facts.
        accuracy: accuracy-aware INT8 only: the metric of the FP32 and INT8 IR and the drop.
        versions: openvino, nncf, onnxruntime versions.
        seconds: wall time of the export.
    """

    out_dir: Path
    xml: Path
    bin: Path
    metadata_yaml: Path
    precision: Precision
    source: Path
    onnx_sha256: str
    xml_sha256: str
    bin_sha256: str
    parity: dict[str, Any]
    quantization: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.parity.get("passed"))

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (paths as strings)."""
        d = asdict(self)
        for key in ("out_dir", "xml", "bin", "metadata_yaml", "source"):
            d[key] = str(d[key])
        return d


def _resolve_settings(
    profile_settings: OpenVinoSettings | TargetProfile | None,
) -> tuple[OpenVinoSettings, TargetProfile | None]:
    from edge_lora.profiles import OpenVinoSettings, TargetProfile

    if profile_settings is None:
        return OpenVinoSettings(), None
    if isinstance(profile_settings, TargetProfile):
        if profile_settings.backend != "openvino" or profile_settings.openvino is None:
            raise InputError(
                f"profile {profile_settings.name} is for backend {profile_settings.backend}, not openvino"
            )
        return profile_settings.openvino, profile_settings
    if isinstance(profile_settings, OpenVinoSettings):
        return profile_settings, None
    raise InputError(
        f"profile_settings must be OpenVinoSettings or a TargetProfile, not {type(profile_settings)}"
    )


def _source_onnx(
    source: Path,
    work: Path,
    profile: TargetProfile | None,
    imgsz: int | None,
    opset: int | None,
    sample: Any,
) -> Path:
    """The FP32 ONNX to convert: ``source`` itself, or ``source`` (a ``.pt``) exported into ``work``."""
    if not source.exists():
        raise InputError(f"{source} not found")
    if source.suffix.lower() == ".onnx":
        return source
    if source.suffix.lower() != ".pt":
        raise InputError(f"{source}: give the FP32 .onnx or a merged .pt checkpoint")
    from edge_lora.export.onnx.exporter import export_onnx

    imgsz = imgsz or (profile.imgsz if profile else None)
    if imgsz is None:
        raise InputError(f"exporting {source} to ONNX first needs imgsz (or a TargetProfile)")
    shape: dict[str, Any] = {}
    if profile is not None:
        shape = {"end2end": profile.output == "end2end", "batch": profile.batch, "max_det": profile.max_det}
    out = work / "source.onnx"
    opset = opset or (profile.opset if profile else 17)
    if isinstance(sample, (str, Path)):
        shape["check_images"] = [sample]  # prove the ONNX on the same real image as the IR
    export_onnx(source, out, imgsz=imgsz, opset=opset, half=False, write_sidecar=False, **shape)
    return out


def export_openvino(
    source: str | Path,
    out_dir: str | Path,
    *,
    precision: Precision,
    calib: Any = None,
    profile_settings: OpenVinoSettings | TargetProfile | None = None,
    ignored: IgnoredOps | None = None,
    accuracy_control: AccuracyControl | None = None,
    subset_size: int | None = None,
    sample: np.ndarray | str | Path | None = None,
    tolerance: float | None = None,
    min_cosine: float = DEFAULT_INT8_MIN_COSINE,
    imgsz: int | None = None,
    opset: int | None = None,
    overwrite: bool = False,
) -> OpenVinoExport:
    """Convert the FP32 ONNX (or a merged ``.pt``, exported to ONNX first) to an OpenVINO IR folder.

    Args:
        source: the FP32 ONNX, or a merged checkpoint (exported to ONNX first, in a temp folder, with
            ``imgsz``/``opset`` or the TargetProfile's imgsz, opset, batch, output form and max_det).
        out_dir: output folder; it will hold ``model.xml``, ``model.bin`` and ``metadata.yaml``.
        precision: ``fp32``; ``fp16`` (weights stored as f16, what ``inference_precision_hint`` computes in
            is the device's business); ``bf16`` (the FP32 IR, recorded in ``metadata.yaml`` as computed in
            bfloat16: CPUs with AVX512-BF16 or AMX run it much faster than f32; others run it as f32);
            ``int8`` (NNCF post-training quantization, needs ``calib``).
        calib: INT8 calibration data: a :class:`~edge_lora.export.calibration.CalibrationSet` (streamed
            through its re-iterable ``iterable()`` view) or a re-iterable of NCHW float32 batches shaped like
            the model input.
        profile_settings: the profile's ``openvino`` section, or the whole TargetProfile: NNCF preset,
            ignored op types, target device, whether accuracy control is required.
        ignored: what INT8 leaves float (see :class:`IgnoredOps`; default: head post-processing + the
            profile's ignored op types and keep_float_nodes patterns).
        accuracy_control: run accuracy-aware quantization with this validation function and data. Required
            when the profile sets ``openvino.accuracy_aware``.
        subset_size: calibration batches NNCF uses; default all of them (300 if their number is unknown).
        sample: the parity-check input: an NCHW batch or an image path; default the first calibration batch,
            else Ultralytics' bus.jpg.
        tolerance: fp32/fp16: largest ``max_rel`` difference of the final output from ONNX Runtime FP32
            (default :data:`DEFAULT_TOLERANCE`).
        min_cosine: int8, bf16: smallest cosine similarity of the decoded boxes and scores with FP32's.
        imgsz, opset: only for a ``.pt`` source.
        overwrite: replace an existing ``out_dir``.

    Raises:
        InputError: bad arguments, missing calibration/validation data.
        ToolError: conversion, quantization, compilation or the parity check failed (nothing is written).
    """
    started = time.perf_counter()
    if precision not in ("fp32", "fp16", "bf16", "int8"):
        raise InputError(f"precision must be fp32, fp16, bf16 or int8, got {precision!r}")
    settings, profile = _resolve_settings(profile_settings)
    if precision != "int8":
        if accuracy_control is not None:
            raise InputError("accuracy_control only applies to int8")
    elif calib is None:
        raise InputError("int8 needs calibration images (calib)")
    elif settings.accuracy_aware and accuracy_control is None:
        raise InputError(
            "the profile sets openvino.accuracy_aware: pass accuracy_control (validation data and function)"
        )
    if subset_size is not None and subset_size < 1:
        raise InputError(f"subset_size must be >= 1, got {subset_size}")
    if precision in REDUCED:
        limit = float(min_cosine)
    else:
        limit = DEFAULT_TOLERANCE[precision] if tolerance is None else float(tolerance)
    ov = import_openvino()

    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        work = tmp / ".work"
        work.mkdir()
        onnx_path = _source_onnx(Path(source), work, profile, imgsz, opset, sample)
        facts = onnx_facts(onnx_path)
        if facts.has_qdq:
            raise InputError(
                f"{onnx_path} already holds QuantizeLinear/DequantizeLinear nodes; OpenVINO starts from the "
                f"FP32 ONNX and quantizes with NNCF"
            )
        onnx_sha = sha256_file(onnx_path)
        try:
            model = ov.convert_model(str(onnx_path))
        except Exception as exc:
            raise ToolError(f"OpenVINO cannot convert {onnx_path}: {first_line(exc)}") from exc

        calib_source = None
        quant: dict[str, Any] | None = None
        accuracy: dict[str, Any] | None = None
        if precision == "int8":
            calib_source, n_batches, calib_sha = calibration_source(calib, facts.input_shape)
            first = next(iter(calib_source), None)
            if first is None:
                raise InputError("the calibration data is empty")
            as_batch(first, facts.input_shape)  # a wrong shape fails here, not deep inside NNCF
            subset = subset_size or n_batches or DEFAULT_SUBSET
            types = settings.ignored_op_types if ignored is None or ignored.types is None else ignored.types
            ignored = ignored or IgnoredOps(patterns=tuple(settings.keep_float_nodes))
            scope, float_ops = ignored_scope(import_nncf(), model, ignored, types)
            model, accuracy = quantize(
                model, calib_source, facts.input_shape, subset, settings, scope, accuracy_control
            )
            quant = quantization_stats(model, float_ops)
            quant.update(
                {
                    "preset": settings.nncf_preset,
                    "target_device": settings.device,
                    "ignored_types": list(types),
                    "ignored_patterns": list(scope.patterns),
                    "subset_size": subset,
                    "calibration_batches": n_batches,
                    "calibration_sha256": calib_sha,
                    "accuracy_aware": accuracy_control is not None,
                }
            )

        meta = ultralytics_metadata(facts.metadata)
        if precision == "bf16":  # runners compile it with INFERENCE_PRECISION_HINT bf16 (what was validated)
            meta["inference_precision"] = "bf16"
        xml = tmp / XML_NAME
        write_metadata(model, meta, tmp / METADATA_NAME)
        try:
            ov.save_model(model, str(xml), compress_to_fp16=precision == "fp16")
        except Exception as exc:
            raise ToolError(f"OpenVINO cannot save the IR: {first_line(exc)}") from exc

        batch, sample_source = check_sample(sample, calib_source, facts.input_shape)
        parity = check_against_onnxruntime(xml, facts, batch, precision, limit, work)
        parity["sample"] = sample_source
        if not parity["passed"]:
            what = (
                f"its decoded predictions have cosine similarity {parity['value']:.3g} with FP32's, below "
                f"{limit:g}"
                if precision in REDUCED
                else f"it differs by {parity['value']:.3g} relative to the output scale, above {limit:g}"
                f" ({parity['final']['unmatched']} detections without a counterpart)"
            )
            raise ToolError(
                f"the {precision} IR does not reproduce ONNX Runtime FP32 on {sample_source}: {what}"
            )
        result = OpenVinoExport(
            out_dir=Path(out_dir),
            xml=Path(out_dir) / XML_NAME,
            bin=Path(out_dir) / BIN_NAME,
            metadata_yaml=Path(out_dir) / METADATA_NAME,
            precision=precision,
            source=Path(source),
            onnx_sha256=onnx_sha,
            xml_sha256=sha256_file(xml),
            bin_sha256=sha256_file(tmp / BIN_NAME),
            parity=parity,
            quantization=quant,
            accuracy=accuracy,
            versions=versions(),
        )
        shutil.rmtree(work)
    result.seconds = round(time.perf_counter() - started, 3)
    return result
