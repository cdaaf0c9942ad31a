"""Accuracy-aware mixed precision for the QDQ path: keep the fewest convs float that bring INT8 within target.

The counterpart, for ONNX Runtime and TensorRT QDQ graphs, of NNCF's ``quantize_with_accuracy_control``
(which serves the OpenVINO path). Given the FP32 graph and its plain INT8 QDQ graph:

1. score both with the one evaluator (mAP50-95) on labelled images of the calibration recipe's
   ``validation_split`` (train by default: the val images that gate the build stay unseen); stop if the
   drop is already within the target;
2. rank: revert each top-level block (``/model.N/``), then each conv of the blocks that helped most, and
   measure how far the result is from FP32 on a few of those images (detection agreement: mAP50-95 of the
   trial against FP32's own confident detections, which varies far less with few images than mAP against
   labels does);
3. greedy: add convs float in rank order, scoring mAP50-95 against labels after each, until the drop is
   within ``target_points`` or ``max_float_layers`` are float. The best prefix is kept (fewest convs among
   the best scores), so a search that cannot reach the target still returns what helped.

Trials rewire the QDQ graph (:mod:`~edge_lora.export.onnx.float_revert`); the shipped graph is quantized
once by ONNX Runtime with the chosen convs excluded.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_lora.export.onnx.float_revert import quantized_nodes, revert_to_float

if TYPE_CHECKING:
    import onnx

__all__ = ["AccuracyAwareResult", "FloatStep", "OnnxMapScorer", "search_float_nodes"]

#: FP32 detections at or above this score are the agreement pseudo-labels of the ranking pass.
PSEUDO_LABEL_CONF = 0.25
_BLOCK = re.compile(r"^/model\.(\d+)/")


@dataclass(frozen=True)
class FloatStep:
    """One greedy step: ``node`` made float on top of the steps before it."""

    node: str
    map50_95: float
    drop_points: float
    saved_points: float  # mAP50-95 points recovered by this node (vs the step before)
    agreement_gain: float  # its ranking score: agreement mAP gained when reverted alone
    latency_ms: float  # median ONNX Runtime run per image on this host with the nodes so far float


@dataclass(frozen=True)
class AccuracyAwareResult:
    """What the search measured and chose. mAP values on the 0-1 scale; drops and savings in points."""

    target_points: float
    max_float_layers: int
    images: int
    split: str
    fp32_map: float
    int8_map: float
    final_map: float
    float_nodes: tuple[str, ...]
    steps: tuple[FloatStep, ...] = ()
    blocks: dict[str, float] = field(default_factory=dict)  # block -> agreement gain when reverted whole
    layers: dict[str, float] = field(default_factory=dict)  # conv -> agreement gain when reverted alone
    trials: int = 0
    seconds: float = 0.0
    int8_latency_ms: float = 0.0  # plain INT8, median run per image on this host (same images)
    final_latency_ms: float = 0.0

    @property
    def int8_drop_points(self) -> float:
        """Plain INT8 minus FP32 on the search images, in points (positive = a loss)."""
        return 100.0 * (self.fp32_map - self.int8_map)

    @property
    def drop_points(self) -> float:
        """Drop with :attr:`float_nodes` float, in points."""
        return 100.0 * (self.fp32_map - self.final_map)

    @property
    def within_target(self) -> bool:
        """Whether the chosen graph is within the target on the search images."""
        return self.drop_points <= self.target_points + 1e-9

    def to_dict(self) -> dict[str, Any]:
        """JSON form (for the artifact's sidecar and the bundle report)."""
        data = asdict(self)
        data["float_nodes"] = list(self.float_nodes)
        data["steps"] = [asdict(s) for s in self.steps]
        data.update(
            int8_drop_points=round(self.int8_drop_points, 4),
            drop_points=round(self.drop_points, 4),
            within_target=self.within_target,
        )
        return data


def _spread(items: Sequence[Any], n: int) -> list[Any]:
    if len(items) <= n:
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


class OnnxMapScorer:
    """Runs an ONNX graph (in memory) over labelled images and scores it with the one evaluator (the
    preprocessing of :func:`~edge_lora.export.labelled.labelled_images`, the runtime's decode)."""

    def __init__(self, names: dict[int, str], end2end: bool, threads: int = 0) -> None:
        self.names, self.end2end, self.threads = names, end2end, threads
        self.runs = 0
        self.last_ms = 0.0

    def detect(self, model: onnx.ModelProto, items: Sequence[Any]) -> list[Any]:
        import onnxruntime as ort

        from edge_lora.runtime.prepost import postprocess

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        self.runs += 1
        dets, times = [], []
        for item in items:
            t0 = time.perf_counter()
            out = session.run(None, {name: item.batch})[0]
            times.append(time.perf_counter() - t0)
            dets.extend(
                postprocess(
                    np.asarray(out), [item.info], end2end=self.end2end, conf=0.001, nc=len(self.names)
                )
            )
        self.last_ms = 1000.0 * float(np.median(times)) if times else 0.0
        return dets

    def score(self, items: Sequence[Any], dets: Sequence[Any], truths: Sequence[Any] | None = None) -> float:
        """mAP50-95 (0-1) of ``dets`` on ``items``, against ``truths`` when given (the ranking's pseudo-labels)."""
        from edge_lora.export.labelled import score_map

        return score_map(items, dets, self.names, truths)


def search_float_nodes(
    fp32: onnx.ModelProto,
    qdq: onnx.ModelProto,
    items: Sequence[Any],
    names: dict[int, str],
    *,
    end2end: bool,
    target_points: float = 0.2,
    max_float_layers: int = 8,
    rank_images: int = 32,
    split: str = "train",
    candidates: Sequence[str] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> AccuracyAwareResult:
    """Choose the convs of ``qdq`` to keep float (see the module docstring).

    Args:
        fp32 / qdq: the FP32 graph and its plain INT8 QDQ graph (same node names).
        items: labelled images (:func:`edge_lora.export.labelled.labelled_images`), preprocessed
            at the graph's input size; never the val images that gate the build.
        names: class names. end2end: the graphs' output form.
        target_points: stop when the drop vs FP32 on ``items`` is at most this (mAP50-95 points).
        max_float_layers: at most this many convs made float.
        rank_images: images the ranking pass runs (spread over ``items``).
        candidates: quantized nodes that may be made float (default: every quantized Conv).
    """
    from edge_lora.validate.labels import GroundTruth

    t0 = time.perf_counter()
    say = on_progress or (lambda _m: None)
    scorer = OnnxMapScorer(names, end2end)
    fp32_map = scorer.score(items, scorer.detect(fp32, items))
    int8_map = scorer.score(items, scorer.detect(qdq, items))
    int8_ms = scorer.last_ms
    base = dict(
        target_points=target_points, max_float_layers=max_float_layers, images=len(items), split=split,
        fp32_map=fp32_map, int8_map=int8_map, int8_latency_ms=int8_ms,
    )  # fmt: skip
    say(f"INT8 {100 * (fp32_map - int8_map):+.2f} points vs FP32 on {len(items)} {split} images")
    if 100.0 * (fp32_map - int8_map) <= target_points or max_float_layers <= 0:
        return AccuracyAwareResult(**base, final_map=int8_map, float_nodes=(), trials=scorer.runs,
                                   seconds=time.perf_counter() - t0, final_latency_ms=int8_ms)  # fmt: skip

    rank = _spread(items, rank_images)
    pseudo = []
    for d in scorer.detect(fp32, rank):
        keep = d.scores >= PSEUDO_LABEL_CONF
        pseudo.append(GroundTruth(d.boxes[keep], d.class_ids[keep]))

    def agreement(model: onnx.ModelProto) -> float:
        return scorer.score(rank, scorer.detect(model, rank), pseudo)

    pool = list(candidates) if candidates is not None else quantized_nodes(qdq)
    int8_agreement = agreement(qdq)
    blocks: dict[str, list[str]] = {}
    for node in pool:
        m = _BLOCK.match(node)
        blocks.setdefault(m.group(0) if m else node, []).append(node)
    block_gain = {b: agreement(revert_to_float(qdq, fp32, ns)) - int8_agreement for b, ns in blocks.items()}
    say(f"ranked {len(blocks)} blocks; most sensitive: {max(block_gain, key=block_gain.__getitem__)}")
    # Rank single convs inside the blocks that helped, best first, until there are enough to choose from.
    layer_gain: dict[str, float] = {}
    for b in sorted(block_gain, key=lambda k: -block_gain[k]):
        if block_gain[b] <= 0 or len(layer_gain) >= 2 * max_float_layers:
            break
        for node in blocks[b]:
            layer_gain[node] = agreement(revert_to_float(qdq, fp32, [node])) - int8_agreement
    order = [n for n in sorted(layer_gain, key=lambda k: -layer_gain[k]) if layer_gain[n] > 0]

    steps: list[FloatStep] = []
    chosen: list[str] = []
    previous = int8_map
    for node in order[:max_float_layers]:
        chosen.append(node)
        value = scorer.score(items, scorer.detect(revert_to_float(qdq, fp32, chosen), items))
        drop = 100 * (fp32_map - value)
        steps.append(FloatStep(node, value, drop, 100 * (value - previous), layer_gain[node], scorer.last_ms))
        say(f"{len(chosen)} float: {steps[-1].drop_points:+.2f} points ({node})")
        previous = value
        if steps[-1].drop_points <= target_points:
            break
    best = max(range(len(steps) + 1), key=lambda k: (steps[k - 1].map50_95 if k else int8_map, -k))
    return AccuracyAwareResult(
        **base,
        final_map=steps[best - 1].map50_95 if best else int8_map,
        float_nodes=tuple(chosen[:best]),
        steps=tuple(steps),
        blocks={b: round(g, 6) for b, g in block_gain.items()},
        layers={n: round(g, 6) for n, g in layer_gain.items()},
        trials=scorer.runs,
        seconds=time.perf_counter() - t0,
        final_latency_ms=steps[best - 1].latency_ms if best else int8_ms,
    )
