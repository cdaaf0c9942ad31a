"""The OpenVINO IR check: the IR, run by the device's runner, vs ONNX Runtime FP32 on a real image.

Judged by the project's one parity implementation (:mod:`edge_lora.validate.parity`): FP32 and FP16 by
:func:`~edge_lora.validate.parity.detection_parity` on the final output (tie-aware for end2end) within
:data:`DEFAULT_TOLERANCE`; INT8 and BF16 (reduced precision at run time) by the cosine similarity of the
decoded predictions before post-processing (boxes, and class scores on the anchors that could detect,
:func:`~edge_lora.validate.parity.score_cosine`), at least :data:`DEFAULT_INT8_MIN_COSINE`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edge_lora.errors import InputError, ModelError, ToolError
from edge_lora.export.openvino.ir import OnnxFacts, first_line, import_openvino, ultralytics_metadata
from edge_lora.export.openvino.quantize import as_batch
from edge_lora.validate.parity import cosine_similarity, detection_parity, score_cosine

__all__ = [
    "DEFAULT_INT8_MIN_COSINE",
    "DEFAULT_TOLERANCE",
    "REDUCED",
    "check_against_onnxruntime",
    "check_sample",
    "judge",
]

#: The parity check against ONNX Runtime FP32 on a real image. FP32 and FP16 (f16 weights, f32 compute on
#: the CPU) must reproduce the final output within this difference relative to the output's scale.
DEFAULT_TOLERANCE: dict[str, float] = {"fp32": 1e-3, "fp16": 2e-2}


#: INT8 is only checked for gross breakage here (its accuracy is gated on the device with mAP): the decoded
#: predictions before post-processing (boxes, class scores per anchor) must point the same way as FP32's,
#: cosine similarity at least this. Element-wise limits do not work for INT8: one anchor's box can move by
#: many pixels while the detections hardly change.
DEFAULT_INT8_MIN_COSINE = 0.9


#: Precisions computed in reduced precision at run time, checked by cosine similarity (not element-wise).
REDUCED = ("int8", "bf16")


def check_sample(
    sample: Any, calib_source: Iterable[Any] | None, shape: tuple[int, ...]
) -> tuple[np.ndarray, str]:
    """The input batch of the parity check, and where it came from."""
    if isinstance(sample, np.ndarray):
        return as_batch(sample, shape), "given batch"
    if sample is not None:
        return _image_batch(Path(sample), shape), str(sample)
    if calib_source is not None:
        for item in calib_source:
            return as_batch(item, shape), "first calibration batch"
    spec = importlib.util.find_spec("ultralytics")
    if spec is not None and spec.submodule_search_locations:
        bus = Path(next(iter(spec.submodule_search_locations))) / "assets" / "bus.jpg"
        if bus.is_file():
            return _image_batch(bus, shape), "ultralytics/assets/bus.jpg"
    raise InputError("the parity check needs a real image: pass sample=IMAGE or calibration images")


def _image_batch(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    import cv2

    from edge_lora.runtime.prepost import preprocess

    img = cv2.imread(str(path))
    if img is None:
        raise InputError(f"{path}: cannot decode the parity-check image")
    batch, _ = preprocess([img] * shape[0], (shape[2], shape[3]))
    return batch


def _run_ir(
    xml: Path, batch: np.ndarray, extra: str | None, work: Path, inference_precision: str = "f32"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the IR once on CPU with the device's own runner; also return tensor ``extra`` when the IR has it.

    The check runs :class:`~edge_lora.runtime.openvino_rt.OpenVinoRunner`, so it measures what the device
    compiles. The runner runs an IR as it is on disk, so to see ``extra`` (the decoded predictions before
    post-processing) a copy with that tensor added as an output is saved in ``work`` and run instead.
    """
    from edge_lora.runtime.openvino_rt import OpenVinoRunner

    ov = import_openvino()
    try:
        model = ov.Core().read_model(str(xml))
    except Exception as exc:
        raise ToolError(f"the exported IR {xml} cannot be read back: {first_line(exc)}") from exc
    n_outputs = len(model.outputs)
    if n_outputs != 1:
        raise ToolError(f"{xml}: {n_outputs} outputs; a YOLO detection export has one")
    run_xml = xml
    if extra is not None:
        try:
            model.add_outputs([extra])
        except RuntimeError:  # the tensor was fused away: compare the final output only
            extra = None
        else:
            run_xml = work / "parity_check.xml"
            try:  # compress_to_fp16=False: the copy keeps the weights exactly as the artifact stores them
                ov.save_model(model, str(run_xml), compress_to_fp16=False)
            except Exception as exc:
                raise ToolError(f"cannot save the parity-check copy of {xml}: {first_line(exc)}") from exc
    # f32 unless the artifact is bf16: the check measures the IR, not the CPU's bf16 default on
    # AMX/AVX512-BF16 machines.
    runner = OpenVinoRunner(run_xml, device="CPU", inference_precision=inference_precision)
    try:
        with runner:
            outputs = list(runner.infer(batch).values())
    except (ToolError, ModelError) as exc:
        raise ToolError(f"the exported IR {xml} does not compile or run on CPU: {exc}") from exc
    return outputs[0], (outputs[1] if extra is not None else None)


def judge(
    ref: np.ndarray,
    got: np.ndarray,
    ref_decoded: np.ndarray | None,
    got_decoded: np.ndarray | None,
    *,
    end2end: bool,
    precision: str,
    limit: float,
) -> dict[str, Any]:
    """The IR check's report on one batch, from the outputs of both sides.

    ``final``: the output compared by :func:`~edge_lora.validate.parity.detection_parity` (tie-aware for
    end2end); ``decoded``: the predictions before post-processing (the final output when either side lacks
    them) position by position: ``max_rel``, ``cosine_boxes`` (:func:`~edge_lora.validate.parity.cosine_similarity`)
    and ``cosine_scores`` (:func:`~edge_lora.validate.parity.score_cosine`); the gate: ``criterion``
    (``max_rel`` within ``limit`` for fp32/fp16, ``min_cosine`` at least ``limit`` for int8/bf16), ``value``,
    ``limit``, ``passed``.
    """
    final = detection_parity(ref, got, end2end=end2end, tolerance=math.inf if precision in REDUCED else limit)
    report: dict[str, Any] = {"final": final.to_dict()}
    # Decoded (N, 4 + nc, anchors) predictions, position by position: no TopK ties to worry about.
    decoded = ref_decoded is not None and got_decoded is not None
    a, b = (ref_decoded, got_decoded) if decoded else (ref, got)
    # Boxes and scores are channels of (N, 4 + nc, anchors) but columns of end-to-end (N, K, 6) rows.
    rows = end2end and not decoded

    def boxes(x: np.ndarray) -> np.ndarray:
        return x[..., :4] if rows else x[:, :4]

    def scores(x: np.ndarray) -> np.ndarray:
        return x[..., 4] if rows else x[:, 4:]

    report["decoded"] = {
        "compared": "decoded" if decoded else "final",
        "max_rel": detection_parity(a, b, end2end=False, tolerance=limit).max_rel
        if decoded
        else final.max_rel,
        "cosine_boxes": cosine_similarity(*(boxes(x) for x in (a, b))),
        "cosine_scores": score_cosine(*(scores(x) for x in (a, b))),
    }
    if precision in REDUCED:
        worst = min(report["decoded"]["cosine_boxes"], report["decoded"]["cosine_scores"])
        report.update({"criterion": "min_cosine", "value": worst, "limit": limit, "passed": worst >= limit})
    else:
        report.update(
            {"criterion": "max_rel", "value": final.max_rel, "limit": limit, "passed": final.passed}
        )
    report["reference"] = "onnxruntime CPUExecutionProvider, FP32 ONNX"
    return report


def check_against_onnxruntime(
    xml: Path, facts: OnnxFacts, batch: np.ndarray, precision: str, limit: float, work: Path
) -> dict[str, Any]:
    """Compare the IR with ONNX Runtime FP32 on ``batch`` (see :func:`judge`); ``work`` holds scratch files.

    Raises:
        ToolError: the IR does not run, or its output is non-finite or shaped unlike ONNX Runtime's.
    """
    import onnx

    from edge_lora.export.onnx.graph import decoded_tensor_name, run_onnx

    proto = onnx.load(str(facts.path))
    ref, ref_decoded = run_onnx(proto, batch, decoded=True)
    hint = "bf16" if precision == "bf16" else "f32"
    got, got_decoded = _run_ir(xml, batch, decoded_tensor_name(proto), work, hint)
    if got.shape != ref.shape or not np.isfinite(got).all():
        raise ToolError(
            f"{xml}: the output is non-finite or shaped {tuple(got.shape)} instead of ONNX Runtime's "
            f"{tuple(ref.shape)}"
        )
    meta = ultralytics_metadata(facts.metadata)
    end2end = bool(meta["end2end"]) if "end2end" in meta else (ref.ndim == 3 and ref.shape[-1] == 6)
    report = judge(ref, got, ref_decoded, got_decoded, end2end=end2end, precision=precision, limit=limit)
    report["inference_precision"] = hint
    return report
