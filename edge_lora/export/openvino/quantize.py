"""INT8 by NNCF post-training quantization of the OpenVINO model, and what it leaves in float.

What INT8 leaves in float. NNCF gets an ignored scope made of

* the YOLO head's post-processing, found *structurally in the OpenVINO graph*: every op reachable backwards
  from the model outputs before the head's last weighted layer (Convolution/MatMul and its bias Add) is hit.
  That is the box decoding (anchor Add/Subtract, stride Multiply, Concat), the score Sigmoid, the end2end
  TopK/GatherElements/ReduceMax and a DFL block if the head has one. Working on the OpenVINO graph rather
  than on ONNX node names matters: OpenVINO fuses and renames while converting (ONNX ``Sigmoid``+``Mul``
  becomes ``Swish``, ``Div`` by a constant becomes ``Multiply``), so a list of ONNX names silently misses ops;
* the profile's ``openvino.ignored_op_types`` (default Sigmoid, TopK) anywhere in the graph. After
  conversion YOLO's SiLU is ``Swish``, so ``Sigmoid`` only names the head's score activation;
* any extra names/patterns the caller passes in :class:`IgnoredOps`.

Accuracy-aware INT8 (``openvino.accuracy_aware``) runs ``nncf.quantize_with_accuracy_control`` with the
caller's validation function (an mAP function in production); NNCF then reverts the most harmful layers to
float until the drop is within ``max_drop``.

Host side only (imports nncf, which imports torch).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edge_lora.errors import InputError, ToolError
from edge_lora.export.openvino.ir import WEIGHTED_OPS, first_line, import_openvino

if TYPE_CHECKING:
    from edge_lora.profiles import OpenVinoSettings

__all__ = [
    "import_nncf",
    "DEFAULT_SUBSET",
    "AccuracyControl",
    "IgnoredOps",
    "as_batch",
    "calibration_source",
    "head_postprocess_ops",
    "ignored_scope",
    "quantize",
]

_PRESETS = {"mixed": "MIXED", "performance": "PERFORMANCE"}


DEFAULT_SUBSET = 300  # nncf's default when the calibration size is unknown


@dataclass(frozen=True)
class IgnoredOps:
    """What NNCF must leave in float, in OpenVINO terms (``nncf.IgnoredScope``).

    Attributes:
        types: OpenVINO op types, e.g. ``("Sigmoid", "TopK")``; None = the profile's
            ``openvino.ignored_op_types`` (or that field's default without a profile).
        names: exact OpenVINO op (friendly) names.
        patterns: regular expressions on OpenVINO op names, e.g. ``r"/model\\.23/one2one_cv3.*"``.
        head_postprocess: add the YOLO head's post-processing found by :func:`head_postprocess_ops`.
    """

    types: tuple[str, ...] | None = None
    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    head_postprocess: bool = True


@dataclass(frozen=True)
class AccuracyControl:
    """Accuracy-aware INT8 quantization (``nncf.quantize_with_accuracy_control``).

    Attributes:
        validation_data: items ``validation_fn`` understands (e.g. ``(batch, labels)`` pairs); iterated many
            times, so a list or a re-iterable object, not a generator.
        validation_fn: ``validation_fn(compiled_model, items) -> float``, higher is better (e.g. mAP50-95 on
            the 0-1 scale). NNCF calls it on the whole set and on single-item lists while ranking layers.
        max_drop: largest allowed drop of that metric, in its own units (a profile's ``gates.max_map_drop``
            of 1.0 mAP *points* is 0.01 for an mAP on the 0-1 scale).
        drop_type: ``"absolute"`` (metric units) or ``"relative"`` (fraction of the FP32 value).
        max_num_iterations: most layers NNCF may revert to float; None = no limit.
        ranking_subset_size: items used to rank layers; None = NNCF's choice.
        tune_hyperparams: let NNCF tune quantization parameters before reverting layers (slower).
    """

    validation_data: Any
    validation_fn: Callable[[Any, Iterable[Any]], float]
    max_drop: float
    drop_type: Literal["absolute", "relative"] = "absolute"
    max_num_iterations: int | None = None
    ranking_subset_size: int | None = None
    tune_hyperparams: bool = False

    def __post_init__(self) -> None:
        if not callable(self.validation_fn):
            raise InputError("AccuracyControl.validation_fn must be callable(compiled_model, items) -> float")
        if not (self.max_drop >= 0 and math.isfinite(self.max_drop)):
            raise InputError(f"AccuracyControl.max_drop must be a finite number >= 0, got {self.max_drop}")
        if self.drop_type not in ("absolute", "relative"):
            raise InputError(
                f"AccuracyControl.drop_type must be 'absolute' or 'relative', got {self.drop_type!r}"
            )
        if self.max_num_iterations is not None and self.max_num_iterations < 1:
            raise InputError("AccuracyControl.max_num_iterations must be >= 1 or None")


def import_nncf():
    """The ``nncf`` module; ToolError when it is not installed."""
    try:
        import nncf
    except ImportError as exc:
        raise ToolError(
            "NNCF is needed for OpenVINO INT8 and is not installed here: pip install nncf"
        ) from exc
    return nncf


def head_postprocess_ops(ov_model: Any) -> list[str]:
    """Names of the ops after the detection head's last weighted layers: YOLO's post-processing.

    Walks backwards from every model output and stops at weighted ops (Convolution, GroupConvolution,
    MatMul, …) and at the bias ``Add`` that follows them; Constants and Parameters are not listed. A DFL
    Convolution (fixed weights, name containing ``dfl``) is post-processing and is walked through.
    """
    found: list[str] = []
    seen: set[str] = set()
    stack = [result.input_value(0).get_node() for result in ov_model.get_results()]
    while stack:
        node = stack.pop()
        if node.get_name() in seen:  # get_name() is unique per node; friendly names need not be
            continue
        seen.add(node.get_name())
        name = node.get_friendly_name()
        kind = node.get_type_name()
        if kind in ("Constant", "Parameter"):
            continue
        is_dfl = "dfl" in name.lower()
        if kind in WEIGHTED_OPS and not is_dfl:
            continue
        sources = [value.get_node() for value in node.input_values()]
        if (
            kind == "Add"
            and any(s.get_type_name() in WEIGHTED_OPS for s in sources)
            and any(s.get_type_name() == "Constant" for s in sources)
        ):
            continue  # the bias of the head's last conv: part of the conv, quantized with it
        found.append(name)
        stack.extend(sources)
    return sorted(found)


def ignored_scope(
    nncf: Any, ov_model: Any, ignored: IgnoredOps, types: Sequence[str]
) -> tuple[Any, list[str]]:
    """The ``nncf.IgnoredScope`` for ``ov_model`` (see :class:`IgnoredOps`) and the op names it keeps float."""
    names = set(ignored.names)
    if ignored.head_postprocess:
        names.update(head_postprocess_ops(ov_model))
    present = {op.get_friendly_name() for op in ov_model.get_ops()}
    # validate=False: a type such as TopK only exists in end2end graphs; absence is not an error.
    scope = nncf.IgnoredScope(
        names=sorted(names & present), patterns=list(ignored.patterns), types=list(types), validate=False
    )
    return scope, sorted(names & present)


def calibration_source(calib: Any, shape: tuple[int, ...]) -> tuple[Any, int | None, str | None]:
    """A re-iterable source of calibration batches shaped like the model input.

    Takes a :class:`~edge_lora.export.calibration.CalibrationSet` (its sized, re-iterable ``iterable()``
    view; full batches only when the model's batch is fixed above 1), or a re-iterable of NCHW arrays.
    Returns (source, number of batches if known, calibration sha256 if known).
    """
    batch, hw = shape[0], (shape[2], shape[3])
    sha = getattr(calib, "sha256", None)
    sha = str(sha) if isinstance(sha, str) else None
    if hasattr(calib, "iterable"):
        source = calib.iterable(hw, batch, drop_last=batch > 1)
        return source, len(source), sha
    if isinstance(calib, np.ndarray):
        calib = [calib]
    if isinstance(calib, Iterator):
        raise InputError("calib must be re-iterable (a list or a CalibrationSet), not a one-shot iterator")
    if not isinstance(calib, Iterable):
        raise InputError(
            f"calib must be a CalibrationSet or a list of NCHW batches, not {type(calib).__name__}"
        )
    length = len(calib) if isinstance(calib, Sized) else None
    return calib, length, sha


def as_batch(item: Any, shape: tuple[int, ...]) -> np.ndarray:
    """One calibration item as the model's float32 NCHW input (tuples: their first element)."""
    if isinstance(item, (tuple, list)) and item:
        item = item[0]
    arr = np.asarray(item)
    if arr.ndim == 3:
        arr = arr[None]
    if tuple(arr.shape) != tuple(shape):
        raise InputError(f"calibration batch has shape {tuple(arr.shape)}, the model input is {tuple(shape)}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _target_device(nncf: Any, device: str) -> Any:
    if device == "CPU":
        return nncf.TargetDevice.CPU
    if device.startswith("GPU"):
        return nncf.TargetDevice.GPU
    if device == "NPU":
        return nncf.TargetDevice.NPU
    return nncf.TargetDevice.ANY


@contextlib.contextmanager
def _quiet_nncf(nncf: Any) -> Iterator[None]:
    """NNCF logs one INFO line per node it skips; keep warnings only while it runs."""
    logger = logging.getLogger("nncf")
    level = logger.level
    nncf.set_log_level(logging.WARNING)
    try:
        yield
    finally:
        nncf.set_log_level(level or logging.INFO)


def quantize(
    model: Any,
    calib_source: Iterable[Any],
    shape: tuple[int, ...],
    subset: int,
    settings: OpenVinoSettings,
    scope: Any,
    control: AccuracyControl | None,
) -> tuple[Any, dict[str, Any] | None]:
    """Quantize ``model`` with NNCF (accuracy-aware when ``control`` is given); returns the INT8 model and,
    with ``control``, the metric of both models (else None). Raises ToolError when NNCF fails."""
    nncf = import_nncf()
    dataset = nncf.Dataset(calib_source, lambda item: as_batch(item, shape))
    common = {
        "preset": getattr(nncf.QuantizationPreset, _PRESETS[settings.nncf_preset]),
        "target_device": _target_device(nncf, settings.device),
        "subset_size": subset,
        "model_type": None,
        "ignored_scope": scope,
    }
    with _quiet_nncf(nncf):
        try:
            if control is None:
                return nncf.quantize(model, dataset, **common), None
            from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

            restorer = AdvancedAccuracyRestorerParameters(
                tune_hyperparams=control.tune_hyperparams, ranking_subset_size=control.ranking_subset_size
            )
            if control.max_num_iterations is not None:
                restorer.max_num_iterations = control.max_num_iterations
            quantized = nncf.quantize_with_accuracy_control(
                model,
                dataset,
                nncf.Dataset(control.validation_data),
                control.validation_fn,
                max_drop=control.max_drop,
                drop_type=getattr(nncf.DropType, control.drop_type.upper()),
                advanced_accuracy_restorer_parameters=restorer,
                **common,
            )
        except (InputError, ToolError):
            raise
        except Exception as exc:
            raise ToolError(f"NNCF quantization failed: {first_line(exc)}") from exc
    return quantized, _measure_accuracy(model, quantized, control)


def _measure_accuracy(fp32: Any, int8: Any, control: AccuracyControl) -> dict[str, Any]:
    """The caller's metric on the FP32 and the final INT8 model, for the report."""
    ov = import_openvino()
    core = ov.Core()
    values = {}
    for label, model in (("fp32", fp32), ("int8", int8)):
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        values[label] = float(control.validation_fn(compiled, control.validation_data))
    drop = values["fp32"] - values["int8"]
    if control.drop_type == "relative":
        drop = drop / abs(values["fp32"]) if values["fp32"] else math.inf
    return {
        "metric_fp32": values["fp32"],
        "metric_int8": values["int8"],
        "drop": drop,
        "drop_type": control.drop_type,
        "max_drop": control.max_drop,
        "within_max_drop": drop <= control.max_drop,
    }
