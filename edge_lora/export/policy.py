"""The INT8 quantization policy: which ops get QuantizeLinear/DequantizeLinear, which nodes stay float.

Kept out of the exporters on purpose (the Ultralytics exporter buries this inside its format methods, where it
cannot be tested alone). A :class:`QuantPolicy` is plain data taken from a target profile's ``quantization``
section; :func:`plan` applies it to an ONNX graph and says, node by node, what stays float. The exporters
(``onnx.qdq``, ``tensorrt.prepare``) only translate the policy into their tool's options.

What stays float, and why:

* **The post-processing of the YOLO Detect head.** Ultralytics' ``Detect.forward_head`` flattens each level's
  last box/class Conv (``Conv -> Reshape``) and concatenates the levels (``Concat``). Everything downstream
  of those Concats is decoding, not learned compute: DFL (Softmax + a fixed Conv on YOLOv8/11), dist2bbox
  (Slice/Sub/Add/Mul/Div/Concat), score Sigmoid and, for YOLO26's NMS-free head, ReduceMax/TopK/
  GatherElements/Mod/Div. 8-bit ranges there cost box precision (pixels) and reorder near-tied scores, and
  it is a negligible share of the compute. :func:`find_detect_head` locates it structurally, not by node
  name, so it survives onnxslim renames and works for YOLO26, YOLO11 and YOLOv8 heads alike.
* **The head's final prediction convs** (``float_head_outputs``, default on): the 1x1 convs whose outputs
  are box distances and class logits. Quantizing their outputs to 8 bits rounds every box by up to
  ``range/255`` grid cells; they are a handful of tiny 1x1 convs.
* **The stem** (``float_stem``, default on): the conv(s) reading the image input. Measured on the DeepPCB
  YOLO26n (benchmarks/export_bench.py): a u8s8 Conv-only QDQ lost 0.75 mAP50-95 points with the stem
  quantized and 0.04 with it float (vs FP32); latency was within the host's noise (one conv, 3 input channels).
* Every node of an op type in ``keep_float_op_types`` and every node whose name matches a
  ``keep_float_nodes`` regex (the profile's escape hatch for a sensitive layer).

Schemes (measured on an x86 CPU by a peer: a naive S8S8 QDQ YOLO26n ran ~1.7x slower than FP32 in ONNX
Runtime, a Conv-only U8S8 one about as fast as FP32):

* ``u8s8`` (CPU ONNX Runtime default): uint8 asymmetric activations, int8 symmetric per-channel weights,
  Conv only, ONNX Runtime's QDQ defaults (Conv outputs quantized so the CPU provider can fuse QLinearConv,
  int32 bias).
* ``s8s8``: int8 symmetric activations and weights (every zero point 0). On the ``tensorrt`` backend the
  graph follows TensorRT's explicit-quantization placement rules: Q/DQ on Conv *inputs* and weights only
  (a Q on a Conv output would split Conv+SiLU fusion), a dedicated Q/DQ pair per consumer, FP32 weights
  behind a Q/DQ pair (TensorRT 8.x only accepts that form; 10.x folds it), float bias (TensorRT has no
  int32 DequantizeLinear).

Torch-free; imports onnx only to read a model from a path.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edge_lora.errors import InputError, ModelError, ProfileError
from edge_lora.fileio import sha256_json

if TYPE_CHECKING:
    import onnx

    from edge_lora.profiles import QuantizationSettings, TargetProfile

__all__ = [
    "DEFAULT_KEEP_FLOAT_OP_TYPES",
    "DetectHead",
    "QuantPlan",
    "QuantPolicy",
    "find_detect_head",
    "find_stem",
    "nodes_to_keep_float",
    "plan",
]

Scheme = Literal["u8s8", "s8s8"]
QdqBackend = Literal["onnxruntime", "tensorrt"]
CalibrateMethod = Literal["minmax", "entropy", "percentile"]

DEFAULT_KEEP_FLOAT_OP_TYPES: tuple[str, ...] = ("Sigmoid", "TopK", "GatherElements", "ReduceMax")
_OP_TYPE_RE = re.compile(r"^[A-Z][A-Za-z0-9]*$")
# Ops Ultralytics' head uses to flatten a level's (N, C, H, W) map to (N, C, H*W) before the level Concat.
_FLATTEN_OPS = frozenset({"Reshape", "Flatten", "View"})


@dataclass(frozen=True)
class QuantPolicy:
    """How an ONNX graph is quantized to INT8 QDQ. Plain data; see the module docstring for the defaults.

    Attributes:
        scheme: ``"u8s8"`` (uint8 asymmetric activations, int8 weights) or ``"s8s8"`` (int8 symmetric both).
        backend: the runtime the QDQ graph is for, ``"onnxruntime"`` or ``"tensorrt"``; decides Q/DQ
            placement (see :meth:`ort_extra_options`). TensorRT requires ``s8s8``.
        per_channel: one weight scale per output channel.
        reduce_range: 7-bit weights (x86 without VNNI); onnxruntime only.
        op_types: op types that get Q/DQ (default Conv only).
        keep_float_op_types: op types that always stay float.
        keep_float_nodes: regular expressions (``re.search``) on node names that stay float.
        float_head_outputs: keep the Detect head's final box/class convs float too.
        float_stem: keep the convs that read the image input float.
        calibrate_method: ``"minmax"``, ``"entropy"`` or ``"percentile"``.
        float_nodes: exact node names kept float because the accuracy-aware search measured that they
            carry the INT8 drop (:mod:`edge_lora.export.onnx.mixed_precision`); not from the profile, which
            only turns the search on.
    """

    scheme: Scheme = "u8s8"
    backend: QdqBackend = "onnxruntime"
    per_channel: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] = ("Conv",)
    keep_float_op_types: tuple[str, ...] = DEFAULT_KEEP_FLOAT_OP_TYPES
    keep_float_nodes: tuple[str, ...] = ()
    float_head_outputs: bool = True
    float_stem: bool = True
    calibrate_method: CalibrateMethod = "minmax"
    float_nodes: tuple[str, ...] = ()
    _patterns: tuple[re.Pattern[str], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise sequences to tuples so the policy is hashable and JSON-stable.
        for name in ("op_types", "keep_float_op_types", "keep_float_nodes", "float_nodes"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise InputError(f"quantization policy: {name} must be a list of strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if self.scheme not in ("u8s8", "s8s8"):
            raise InputError(f"quantization policy: scheme must be 'u8s8' or 's8s8', got {self.scheme!r}")
        if self.backend not in ("onnxruntime", "tensorrt"):
            raise InputError(
                f"quantization policy: backend must be 'onnxruntime' or 'tensorrt', got {self.backend!r} "
                "(OpenVINO quantizes with NNCF, not with a QDQ policy)"
            )
        if self.calibrate_method not in ("minmax", "entropy", "percentile"):
            raise InputError(
                "quantization policy: calibrate_method must be 'minmax', 'entropy' or 'percentile', "
                f"got {self.calibrate_method!r}"
            )
        if self.backend == "tensorrt" and self.scheme != "s8s8":
            raise InputError(
                "quantization policy: TensorRT explicit quantization needs symmetric int8 (scheme s8s8), "
                f"got {self.scheme}"
            )
        if self.backend == "tensorrt" and self.reduce_range:
            raise InputError("quantization policy: reduce_range is an onnxruntime (x86 without VNNI) option")
        if not self.op_types:
            raise InputError("quantization policy: op_types is empty; nothing would be quantized")
        for op in (*self.op_types, *self.keep_float_op_types):
            if not isinstance(op, str) or not _OP_TYPE_RE.match(op):
                raise InputError(f"quantization policy: {op!r} is not an ONNX op type name such as 'Conv'")
        both = sorted(set(self.op_types) & set(self.keep_float_op_types))
        if both:
            raise InputError(f"quantization policy: {', '.join(both)} both quantized and kept float")
        patterns = []
        for pattern in self.keep_float_nodes:
            try:
                patterns.append(re.compile(pattern))
            except (re.error, TypeError) as exc:
                raise InputError(f"quantization policy: keep_float_nodes {pattern!r}: {exc}") from None
        object.__setattr__(self, "_patterns", tuple(patterns))

    # ---- construction ---------------------------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: QuantizationSettings, backend: str) -> QuantPolicy:
        """The policy a profile's ``quantization`` section describes, for ``backend``."""
        return cls(
            scheme=settings.scheme,
            backend=backend,  # type: ignore[arg-type]  # validated in __post_init__
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            op_types=tuple(settings.op_types),
            keep_float_op_types=tuple(settings.keep_float_op_types),
            keep_float_nodes=tuple(settings.keep_float_nodes),
            float_stem=settings.float_stem,
            calibrate_method=settings.calibrate_method,
        )

    @classmethod
    def from_profile(cls, profile: TargetProfile) -> QuantPolicy:
        """The policy of a target profile that builds a QDQ INT8 model (onnxruntime or tensorrt backend).

        Raises:
            ProfileError: the profile is for OpenVINO (NNCF quantizes there) or has no quantization section.
        """
        where = profile.source or profile.name
        if profile.backend == "openvino":
            raise ProfileError(
                f"{where}: backend openvino quantizes with NNCF (openvino.* settings), not with a QDQ policy"
            )
        if profile.quantization is None:
            raise ProfileError(f"{where}: no 'quantization' section, so this profile builds no INT8 model")
        return cls.from_settings(profile.quantization, profile.backend)

    @classmethod
    def default_for(cls, backend: str) -> QuantPolicy:
        """The recommended policy for a backend: u8s8 on onnxruntime (CPU), s8s8 on tensorrt."""
        return cls(scheme="s8s8" if backend == "tensorrt" else "u8s8", backend=backend)  # type: ignore[arg-type]

    # ---- derived views --------------------------------------------------------------------------------

    @property
    def activation_type(self) -> str:
        """ONNX Runtime ``QuantType`` name of activations: ``"QUInt8"`` (u8s8) or ``"QInt8"`` (s8s8)."""
        return "QUInt8" if self.scheme == "u8s8" else "QInt8"

    @property
    def weight_type(self) -> str:
        """ONNX Runtime ``QuantType`` name of weights (always ``"QInt8"``, symmetric)."""
        return "QInt8"

    @property
    def activation_symmetric(self) -> bool:
        """True for s8s8: activation zero points are 0."""
        return self.scheme == "s8s8"

    def ort_extra_options(self) -> dict[str, Any]:
        """``extra_options`` for ``onnxruntime.quantization.quantize_static`` (placement, symmetry).

        Calibration-only options (``CalibMaxIntermediateOutputs`` ...) are the quantizer's business.
        """
        options: dict[str, Any] = {
            "ActivationSymmetric": self.activation_symmetric,
            "WeightSymmetric": True,
        }
        if self.backend == "tensorrt":
            options.update(
                {
                    # Q/DQ on Conv inputs only: an output Q would sit between Conv and SiLU and block fusion.
                    "OpTypesToExcludeOutputQuantization": list(self.op_types),
                    # TensorRT cannot share one Q/DQ pair between consumers.
                    "DedicatedQDQPair": True,
                    # FP32 weight -> Q -> DQ (TensorRT 8.x needs it; 10.x folds it at build time).
                    "AddQDQPairToWeight": True,
                    # TensorRT has no int32 DequantizeLinear for bias; it fuses a float bias itself.
                    "QuantizeBias": False,
                    # Never drop a Relu/Clip into a Q range: TensorRT may remove the Q/DQ later.
                    "QDQKeepRemovableActivations": True,
                }
            )
        return options

    def matches_keep_float_name(self, node_name: str) -> bool:
        """True when ``node_name`` matches one of the ``keep_float_nodes`` regexes."""
        return any(p.search(node_name) for p in self._patterns)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (recorded in the artifact sidecar)."""
        d = asdict(self)
        d.pop("_patterns", None)
        if not d["float_nodes"]:  # absent unless the search chose some: older sidecars and keys stay equal
            d.pop("float_nodes")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(d.items())}

    def sha256(self) -> str:
        """Hex sha256 of :meth:`to_dict` in canonical JSON."""
        return sha256_json(self.to_dict())

    def nodes_to_keep_float(self, model: onnx.ModelProto | str | Path) -> list[str]:
        """Shorthand for :func:`nodes_to_keep_float` with this policy."""
        return nodes_to_keep_float(model, self)


# --------------------------------------------------------------------------------------------------------
# Graph analysis
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectHead:
    """Where the YOLO Detect head's learned part ends in an ONNX graph.

    Attributes:
        final_convs: the per-level last box/class Conv nodes (their outputs are box distances and logits).
        level_concats: the Concat nodes that join the flattened levels (start of the post-processing).
        postprocess: every node downstream of ``level_concats``, the Concats included, in graph order.
    """

    final_convs: tuple[str, ...]
    level_concats: tuple[str, ...]
    postprocess: tuple[str, ...]


@dataclass(frozen=True)
class QuantPlan:
    """What a policy does to one graph.

    Attributes:
        keep_float: node names passed to the quantizer as ``nodes_to_exclude``, in graph order.
        head: the Detect head found in the graph.
        quantizable: nodes of the policy's ``op_types`` that will be quantized (not kept float).
        reasons: why each kept-float node stays float (``postprocess``, ``head_output``, ``stem``,
            ``op_type``, ``name``, ``accuracy_aware``); the first reason found wins.
    """

    keep_float: tuple[str, ...]
    head: DetectHead
    quantizable: tuple[str, ...]
    reasons: Mapping[str, str]

    def summary(self) -> dict[str, int]:
        """Counts per reason plus the number of quantizable nodes."""
        counts: dict[str, int] = {}
        for reason in self.reasons.values():
            counts[reason] = counts.get(reason, 0) + 1
        counts["quantizable"] = len(self.quantizable)
        return counts


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    if isinstance(model, (str, Path)):
        import onnx

        path = Path(model)
        if not path.is_file():
            raise ModelError(f"ONNX model not found: {path}")
        # Weights are not needed to analyse the graph; skip external data.
        return onnx.load(str(path), load_external_data=False)
    if not hasattr(model, "graph"):
        raise InputError(f"expected an onnx.ModelProto or a path, got {type(model).__name__}")
    return model


def find_detect_head(model: onnx.ModelProto | str | Path) -> DetectHead:
    """Locate the YOLO Detect head's final convs and the post-processing after them.

    The pattern is Ultralytics' ``Detect.forward_head``: for every level ``Conv -> Reshape``, then one
    ``Concat`` over all levels (one for boxes, one for class scores). Matching is structural, so node names
    do not matter.

    Raises:
        ModelError: no such pattern (not an Ultralytics detection graph, or a graph already quantized).
    """
    graph = _load(model).graph
    nodes = list(graph.node)
    producer = {out: n for n in nodes for out in n.output if out}
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for inp in n.input:
            if inp:
                consumers.setdefault(inp, []).append(n)

    final_convs: list[str] = []
    concats: list[str] = []
    for n in nodes:
        if n.op_type != "Concat" or len(n.input) < 2:
            continue
        convs = []
        for inp in n.input:
            flat = producer.get(inp)
            conv = producer.get(flat.input[0]) if flat is not None and flat.op_type in _FLATTEN_OPS else None
            if conv is None or conv.op_type != "Conv":
                break
            convs.append(conv.name)
        else:
            concats.append(n.name)
            final_convs.extend(convs)
    if not concats:
        raise ModelError(
            "cannot find the YOLO Detect head in this ONNX graph (per-level Conv -> Reshape -> Concat); "
            "quantize the FP32 graph exported by edge-lora, not a graph that is already quantized or edited"
        )

    # Everything reachable from the level Concats is post-processing.
    by_name = {n.name: n for n in nodes}
    seen: set[str] = set()
    queue = deque(by_name[c] for c in concats)
    while queue:
        n = queue.popleft()
        if n.name in seen:
            continue
        seen.add(n.name)
        for out in n.output:
            queue.extend(c for c in consumers.get(out, ()) if c.name not in seen)
    post = tuple(n.name for n in nodes if n.name in seen)
    return DetectHead(tuple(dict.fromkeys(final_convs)), tuple(concats), post)


def find_stem(model: onnx.ModelProto | str | Path, op_types: Iterable[str] = ("Conv",)) -> list[str]:
    """Nodes of ``op_types`` that read a graph input directly (the stem conv of a YOLO), in graph order."""
    proto = _load(model)
    initializers = {t.name for t in proto.graph.initializer}
    inputs = {i.name for i in proto.graph.input} - initializers
    wanted = set(op_types)
    return [n.name for n in proto.graph.node if n.op_type in wanted and inputs.intersection(n.input)]


def plan(model: onnx.ModelProto | str | Path, policy: QuantPolicy | None = None) -> QuantPlan:
    """Apply ``policy`` (default: :meth:`QuantPolicy.default_for` onnxruntime) to a graph.

    Raises:
        ModelError: unnamed nodes (the quantizer excludes nodes by name) or no Detect head found.
    """
    policy = policy or QuantPolicy()
    proto = _load(model)
    nodes = list(proto.graph.node)
    unnamed = [i for i, n in enumerate(nodes) if not n.name]
    if unnamed:
        raise ModelError(
            f"{len(unnamed)} ONNX nodes have no name (first: #{unnamed[0]} {nodes[unnamed[0]].op_type}); "
            "the quantization policy excludes nodes by name; re-export the model with edge-lora"
        )
    head = find_detect_head(proto)
    post = set(head.postprocess)
    head_convs = set(head.final_convs) if policy.float_head_outputs else set()
    stem = set(find_stem(proto, policy.op_types)) if policy.float_stem else set()
    keep_float_types = set(policy.keep_float_op_types)
    accuracy_aware = set(policy.float_nodes)
    reasons: dict[str, str] = {}
    for n in nodes:
        if n.name in post:
            reasons[n.name] = "postprocess"
        elif n.name in head_convs:
            reasons[n.name] = "head_output"
        elif n.name in stem:
            reasons[n.name] = "stem"
        elif n.op_type in keep_float_types:
            reasons[n.name] = "op_type"
        elif policy.matches_keep_float_name(n.name):
            reasons[n.name] = "name"
        elif n.name in accuracy_aware:
            reasons[n.name] = "accuracy_aware"
    keep = tuple(n.name for n in nodes if n.name in reasons)
    quantizable = tuple(n.name for n in nodes if n.op_type in policy.op_types and n.name not in reasons)
    return QuantPlan(keep_float=keep, head=head, quantizable=quantizable, reasons=reasons)


def nodes_to_keep_float(model: onnx.ModelProto | str | Path, policy: QuantPolicy | None = None) -> list[str]:
    """Names of the nodes that must stay float under ``policy``, in graph order (see :func:`plan`)."""
    return list(plan(model, policy).keep_float)
