"""Quantization-aware LoRA training: the adapted convs see the INT8 arithmetic their target will apply.

``edge-lora train --quant-aware SCHEME|TARGET`` trains the adapter through a fake quantizer, so that the merged
INT8 model is the model that was trained. For every adapted conv the forward pass becomes

    y = act(conv(FQ_act(x), FQ_w(fold_bn(W + scale * B·A)), b_folded))

* ``FQ_w``: per output channel, symmetric int8 in [-127, 127] with scale ``max|w_c| / 127`` (ONNX Runtime's
  ``WeightSymmetric`` per-channel weights, and TensorRT's), recomputed every step from the current weight;
* ``FQ_act``: one scale per conv input, from a MinMax calibration of the frozen, unadapted base on
  train images of the line (fixed; or the start of a learned one, ``--quant-scales learned``: :mod:`.lsq`) (ONNX Runtime's default ``CalibrationMethod.MinMax``: the min of the per-batch
  minima and the max of the maxima); ``u8s8``: asymmetric uint8 (the range widened to include 0),
  ``s8s8``: symmetric int8 (scale ``max|x| / 127``, zero point 0), both saturating like ``QuantizeLinear``;
* both are torch's own ``fake_quantize_per_*_affine`` ops, whose gradient is the straight-through estimator
  (1 inside the quantization range, 0 where a value saturates).

What the fake quantizer sees of BatchNorm: YOLO's ``Conv`` block is Conv -> BN -> SiLU, and the ONNX export
folds BN into the conv (``w * gamma / sqrt(var + eps)`` per output channel, plus a bias), so INT8 quantizes the
*folded* weight, whose per-channel ranges differ from the raw conv's. BN stays in eval mode during adapter
training (its running statistics are the frozen base's, :mod:`edge_lora.train.trainer`), so folding is exact
and the fake quantizer sees exactly what the exporter will quantize. An adapted conv outside a plain ``Conv``
block (a head's final 1x1 conv has no BN) is quantized as it is. The bias is left float (ONNX Runtime
quantizes it to int32 at ``x_scale * w_scale``, a rounding far below the weight's).

PEFT stays the LoRA layer: nothing is forked or replaced. The ``Conv`` block (or, without BN, the PEFT layer)
gets an instance ``forward`` that computes the merged weight with PEFT's own ``get_delta_weight``; the block's
state dict, the adapter's tensors and the frozen-base check are unchanged, and :func:`set_fake_quant`
switches back to the block's own (unmerged, float) forward. The scales live on a plain attribute, not in a
buffer, so a deep copy (Ultralytics' EMA) keeps them and no state dict sees them.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_lora.errors import InputError
from edge_lora.train.lsq import PARAM as LSQ_PARAM
from edge_lora.train.lsq import fake_quant_learned

SCHEMES = ("u8s8", "s8s8")
METHOD = "minmax-fixed"
METHOD_LEARNED = "lsq"  # MinMax-initialised, learned in training (edge_lora.train.lsq)
DEFAULT_CALIBRATION_IMAGES = 32
#: int8 weights, symmetric: ONNX Runtime's ``ONNX_INT_TYPE_SYMMETRIC_RANGE`` and TensorRT's narrow range.
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
_ATTR = "_edge_lora_quant"  # the per-conv settings, a plain attribute (never in a state dict)


@dataclass(frozen=True)
class ActivationQuant:
    """The fixed quantizer of one conv input: ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int
    dtype: str  # "uint8" | "int8"
    rmin: float  # calibrated range (before widening to include 0 / symmetrising)
    rmax: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the adapter package's ``quant_aware.scales`` entries)."""
        return asdict(self)


@dataclass
class _ConvQuant:
    """What an adapted conv's quant-aware forward needs; lives on the patched module."""

    name: str  # the conv's module name in the base model (``model.3.conv``)
    act: ActivationQuant
    fold_bn: bool
    enabled: bool = True
    grad_path: str = "low-rank"  # or "autograd" (same gradients, slower; see _quant_forward)
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # see _frozen_fold


def resolve_scheme(value: str) -> tuple[str, str | None]:
    """``--quant-aware`` -> ``(scheme, target profile name or None)``.

    ``value`` is a scheme (``u8s8``, ``s8s8``) or a target profile name, path or family alias whose
    ``quantization.scheme`` gives it. OpenVINO targets are refused: NNCF's scheme is not emulated yet.
    """
    from edge_lora.errors import ProfileError
    from edge_lora.profiles.device import resolve_target

    if value in SCHEMES:
        return value, None
    try:
        profile, _ = resolve_target(value)
    except ProfileError as e:
        raise InputError(
            f"--quant-aware {value!r}: not a scheme ({', '.join(SCHEMES)}) nor a target profile ({e})"
        ) from None
    if profile.backend == "openvino":
        raise InputError(
            f"--quant-aware {value!r}: target {profile.name!r} quantizes with OpenVINO NNCF, whose scheme "
            f"quant-aware training does not support yet; give a scheme ({', '.join(SCHEMES)}) instead"
        )
    if profile.quantization is None:
        raise InputError(
            f"--quant-aware {value!r}: target {profile.name!r} builds no INT8 (no quantization section); "
            f"give a scheme ({', '.join(SCHEMES)}) or an INT8 target"
        )
    return profile.quantization.scheme, profile.name


def float_stem_for(target: str | None) -> bool:
    """Whether the export keeps the stem conv float: the target's ``quantization.float_stem``, else the
    policy's default (on; :mod:`edge_lora.export.policy`)."""
    if target is None:
        return True
    from edge_lora.profiles.device import resolve_target

    profile, _ = resolve_target(target)
    return profile.quantization is None or bool(profile.quantization.float_stem)


def stem_convs(model: nn.Module) -> set[str]:
    """The convs that read the image: those of the model's first layer with 3 input channels.

    The QDQ export keeps them float by default (``float_stem``), so quant-aware training must not round
    them either: the trained model would otherwise differ from the one that ships.
    """
    return {
        name
        for name, m in model.named_modules()
        if name.startswith("model.0.") and isinstance(m, nn.Conv2d) and m.in_channels == 3
    }


def activation_quant(rmin: float, rmax: float, scheme: str) -> ActivationQuant:
    """The scale and zero point ONNX Runtime's ``compute_scale_zp`` gives a calibrated range, per scheme."""
    if scheme not in SCHEMES:
        raise InputError(f"--quant-aware: unknown scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    lo, hi = min(float(rmin), 0.0), max(float(rmax), 0.0)  # zero must be exactly representable
    if scheme == "s8s8":
        absmax = max(-lo, hi)
        scale, zero_point, qmin, qmax, dtype = 2 * absmax / 254.0, 0, -128, 127, "int8"
    else:
        scale, qmin, qmax, dtype = (hi - lo) / 255.0, 0, 255, "uint8"
        zero_point = int(np.round(-lo / scale)) if scale > 0 else 0
    scale = float(np.float32(scale))  # the graph stores float32 scales
    if scale < np.finfo(np.float32).tiny:  # a constant-zero input: ONNX Runtime's fallback
        scale, zero_point = 1.0, 0
    return ActivationQuant(scale, zero_point, qmin, qmax, dtype, float(rmin), float(rmax))


def calibration_images(train_images: Sequence[Path], n: int = DEFAULT_CALIBRATION_IMAGES) -> list[Path]:
    """``n`` train images spread evenly over the sorted list (deterministic, the whole line represented)."""
    ordered = sorted(train_images)
    if not ordered:
        raise InputError("--quant-aware: the data has no train images to calibrate activation ranges on")
    if len(ordered) <= n:
        return ordered
    idx = np.linspace(0, len(ordered) - 1, n).round().astype(int)
    return [ordered[i] for i in sorted(set(idx.tolist()))]


def conv_input_pass(
    model: nn.Module,
    conv_names: Sequence[str],
    images: Sequence[Path],
    imgsz: int,
    on_input: Callable[[str, torch.Tensor], None],
    batch: int = 8,
) -> None:
    """Run ``model`` over ``images`` (preprocessed as the exports are) and hand every named conv's input to
    ``on_input(name, tensor)`` (the MinMax calibration, LSQ's shared-input search).

    ``model`` is the frozen base before LoRA is injected; it is run in eval mode without gradients and is
    not modified (its hooks are removed afterwards).
    """
    from edge_lora.runtime.frames import read_image
    from edge_lora.runtime.prepost import preprocess

    modules = dict(model.named_modules())

    def hook(name: str) -> Any:
        def seen(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            on_input(name, inputs[0])  # returns None: a pre-hook's return value would replace the input

        return seen

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in conv_names]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            for i in range(0, len(images), batch):
                frames = [read_image(p) for p in images[i : i + batch]]
                bad = [str(p) for p, f in zip(images[i : i + batch], frames, strict=True) if f is None]
                if bad:
                    raise InputError(f"--quant-aware calibration: cannot read image {bad[0]}")
                x, _ = preprocess(frames, imgsz)
                model(torch.from_numpy(x).to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def calibrate(
    model: nn.Module, conv_names: Sequence[str], images: Sequence[Path], imgsz: int, batch: int = 8
) -> dict[str, tuple[float, float]]:
    """Running min/max of the input of each named conv over ``images`` (see :func:`conv_input_pass`)."""
    ranges: dict[str, list[float]] = {}

    def record(name: str, x: torch.Tensor) -> None:
        lo, hi = float(x.min()), float(x.max())
        seen = ranges.setdefault(name, [lo, hi])
        seen[0], seen[1] = min(seen[0], lo), max(seen[1], hi)

    conv_input_pass(model, conv_names, images, imgsz, record, batch)
    missing = [n for n in conv_names if n not in ranges]
    if missing:
        raise InputError(f"--quant-aware calibration: conv {missing[0]} was never run by the model's forward")
    return {n: (ranges[n][0], ranges[n][1]) for n in conv_names}


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 fake quantization of a conv weight, straight-through gradient.

    With gradients on it is torch's ``fake_quantize_per_channel_affine``; without (the low-rank path computes
    the weight under ``no_grad``) the same arithmetic, ``(clamp(round(w * (1/scale))) * scale``, in three
    plain ops, which skips the op's gradient mask (the tests check both give the same tensor).
    """
    w = w.float()
    absmax = w.detach().abs().amax(dim=tuple(range(1, w.dim())))
    scale = torch.where(absmax > 0, absmax / WEIGHT_QMAX, torch.ones_like(absmax))
    if not (torch.is_grad_enabled() and w.requires_grad):
        shape = (-1, *([1] * (w.dim() - 1)))
        inv = (1.0 / scale).reshape(shape)
        return torch.round(w * inv).clamp_(WEIGHT_QMIN, WEIGHT_QMAX).mul_(scale.reshape(shape))
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, WEIGHT_QMIN, WEIGHT_QMAX)


def fake_quant_activation(x: torch.Tensor, q: ActivationQuant) -> torch.Tensor:
    """Per-tensor fake quantization with a fixed scale and zero point (straight-through gradient)."""
    return torch.fake_quantize_per_tensor_affine(x.float(), q.scale, q.zero_point, q.qmin, q.qmax).to(x.dtype)


def _delta_weight(layer: nn.Module) -> torch.Tensor | None:
    """``scale * B·A`` summed over the active adapters (PEFT's own ``get_delta_weight``); None when off."""
    from peft.tuners.lora import LoraLayer

    if not isinstance(layer, LoraLayer) or layer.merged or layer.disable_adapters:
        return None
    delta = None
    for adapter in layer.active_adapters:
        if adapter in layer.lora_A:
            d = layer.get_delta_weight(adapter)
            delta = d if delta is None else delta + d
    return delta


def merged_weight(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``W + scale * B·A`` of a PEFT LoRA conv, and its bias (a plain conv's own weight and bias)."""
    base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
    delta = _delta_weight(layer)
    return (base.weight if delta is None else base.weight + delta), base.bias


def _bn_factor(bn: nn.BatchNorm2d) -> torch.Tensor:
    return bn.weight / torch.sqrt(bn.running_var + bn.eps)


def fold_bn(w: torch.Tensor, b: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The conv weight and bias with an eval-mode BatchNorm folded in, as the ONNX export fuses them."""
    factor = _bn_factor(bn)
    bias = bn.bias - bn.running_mean * factor
    if b is not None:
        bias = bias + b * factor
    return w * factor.reshape(-1, *([1] * (w.dim() - 1))), bias


def _frozen_fold(
    q: _ConvQuant | None, base: nn.Conv2d, bn: nn.BatchNorm2d | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(W * f, f, b_fold)`` of the frozen base conv (``f`` the BN factor, None without BN).

    They only depend on frozen tensors, so a quant-aware conv computes them once per device and dtype (keyed
    on the tensors' identity and version, so an in-place change or a move is noticed) instead of each step.
    """
    tensors = [base.weight] + (
        [bn.weight, bn.bias, bn.running_mean, bn.running_var] if bn is not None else []
    )
    cacheable = q is not None and not any(t.requires_grad for t in tensors)
    key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
    if cacheable and q.cache.get("key") == key:
        return q.cache["value"]
    with torch.no_grad() if cacheable else contextlib.nullcontext():
        if bn is None:
            value = (base.weight, None, base.bias)
        else:
            w0, b0 = fold_bn(base.weight, base.bias, bn)
            value = (w0, _bn_factor(bn), b0)
    if cacheable:  # holding the keyed storages keeps their addresses from being reused by other tensors
        q.cache.update(key=key, value=value, keep=[t.detach() for t in tensors])
    return value


def _effective_weight(
    q: _ConvQuant | None, layer: nn.Module, bn: nn.BatchNorm2d | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(f * (W + s*B·A), f, b_fold)``: the weight and bias INT8 quantizes (one formula for every path)."""
    base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
    w0, factor, bias = _frozen_fold(q, base, bn)
    delta = _delta_weight(layer)
    if delta is None:
        return w0, factor, bias
    if factor is not None:
        delta = delta * factor.reshape(-1, *([1] * (delta.dim() - 1)))
    return w0 + delta, factor, bias


def folded_conv(block: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The BN-folded merged weight and bias of a ``Conv`` block with LoRA (what INT8 quantizes)."""
    w, _, b = _effective_weight(None, block.conv, block.bn)
    assert b is not None  # a BN fold always has a bias
    return w, b


def _lora_branch(layer: nn.Module, x: torch.Tensor, factor: torch.Tensor | None) -> torch.Tensor | None:
    """``f * s * B(A(x))`` summed over the active adapters (PEFT's modules; dropout is refused with QAT).

    ``f`` and ``s`` are folded into B's (small) weight instead of multiplying the activation-sized output.
    """
    from peft.tuners.lora import LoraLayer

    if not isinstance(layer, LoraLayer) or layer.merged or layer.disable_adapters:
        return None
    out = None
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        a = layer.lora_A[adapter](x)
        lora_b, scaling = layer.lora_B[adapter], layer.scaling[adapter]
        if isinstance(lora_b, nn.Conv2d) and lora_b.bias is None:
            mult = (
                scaling if factor is None else scaling * factor.reshape(-1, 1, 1, 1).to(lora_b.weight.dtype)
            )
            term = F.conv2d(a, lora_b.weight * mult, None, lora_b.stride, lora_b.padding, lora_b.dilation)
        else:
            term = lora_b(a) * scaling
            if factor is not None:
                term = term * factor.reshape(1, -1, 1, 1).to(term.dtype)
        out = term if out is None else out + term
    return out


class _BiasAndBranchGradient(torch.autograd.Function):
    """``y + bias``; in the backward pass ``branch`` also receives the output's gradient.

    The same as ``y + bias + (branch - branch.detach())`` with one activation-sized operation instead of
    three: the conv's own bias addition moves here, and the branch's value is not added (it is already
    inside the quantized weight); only its gradient path is.
    """

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, bias: torch.Tensor | None, branch: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.branch_dtype = branch.dtype
        return y.clone() if bias is None else y + bias.reshape(1, -1, 1, 1).to(y.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor]:  # noqa: D102
        return grad, None, grad.to(ctx.branch_dtype)


def _quant_forward(
    q: _ConvQuant, layer: nn.Module, bn: nn.BatchNorm2d | None, x: torch.Tensor, owner: nn.Module
) -> torch.Tensor:
    """The fake-quantized conv (BN folded when ``bn`` is given), before the block's activation.

    The value is always ``conv(FQ_act(x), FQ_w(f * (W + s*B·A))) + b_fold``. Its gradient is the
    straight-through one, computed along the cheaper of two equal paths:

    * ``autograd``: through ``FQ_w(f * (W + s*B·A))``, which makes autograd form the full-size weight
      gradient of every adapted conv (one more conv-sized product per layer in the backward pass);
    * ``low-rank`` (the default): the weight quantizer is per-channel symmetric with the channel's own max,
      so no weight saturates and its straight-through gradient is the identity; and a conv is linear in its
      weight, so ``conv(x, f*(W + s*B·A)) = conv(x, f*W) + f*s*B(A(x))``. The LoRA branch on the quantized
      input therefore only lends its gradient path (:class:`_BiasAndBranchGradient`, its value is not added again):
      the gradients of A and B are those of the autograd path, at the cost of plain LoRA's branch. ``tests/test_quant_aware.py`` checks
      that both paths give the same values and gradients.
    """
    base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
    frozen = not base.weight.requires_grad and (bn is None or not bn.weight.requires_grad)
    log_scale = owner._parameters.get(LSQ_PARAM)  # learned scale (edge_lora.train.lsq), else the fixed one
    if log_scale is not None:
        xq = fake_quant_learned(x, log_scale, q.act.zero_point, q.act.qmin, q.act.qmax)
    else:
        xq = fake_quant_activation(x, q.act)
    dtype = xq.dtype
    low_rank = q.grad_path == "low-rank" and frozen and torch.is_grad_enabled()
    with torch.no_grad() if low_rank else contextlib.nullcontext():
        w, factor, b = _effective_weight(q, layer, bn)
        wq = fake_quant_weight(w).to(dtype)
    branch = _lora_branch(layer, xq.detach(), factor) if low_rank else None  # x's gradient: via the conv
    bias = None if b is None else b.to(dtype)
    y = F.conv2d(
        xq, wq, None if branch is not None else bias, base.stride, base.padding, base.dilation, base.groups
    )
    if branch is not None:
        y = _BiasAndBranchGradient.apply(y, bias, branch)
    return y


def _block_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Quant-aware ``Conv`` block: act(conv(FQ(x), FQ(fold_bn(W + ΔW)))), or the block's own forward when off."""
    q: _ConvQuant = getattr(self, _ATTR)
    if not q.enabled:
        return type(self).forward(self, x)
    return self.act(_quant_forward(q, self.conv, self.bn, x, self))


def _layer_forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Quant-aware PEFT conv without BN: conv(FQ(x), FQ(W + ΔW)) + bias, or PEFT's own forward when off."""
    q: _ConvQuant = getattr(self, _ATTR)
    if not q.enabled or args or kwargs:
        return type(self).forward(self, x, *args, **kwargs)
    return _quant_forward(q, self, None, x, self)


def _foldable_block(parent: nn.Module | None, child: str) -> bool:
    """True for an Ultralytics ``Conv`` (Conv -> BN -> act, its own forward) whose ``conv`` is ``child``."""
    from ultralytics.nn.modules.conv import Conv

    return (
        child == "conv"
        and isinstance(parent, Conv)
        and type(parent).forward is Conv.forward
        and isinstance(getattr(parent, "bn", None), nn.BatchNorm2d)
    )


def enable_quant_aware(model: nn.Module, scales: dict[str, ActivationQuant]) -> dict[str, bool]:
    """Patch the forward of every adapted conv named in ``scales``; return name -> whether BN was folded.

    ``model`` holds the PEFT LoRA layers (:func:`~edge_lora.train.inject.inject_lora`); the names are the
    convs' module names, the same as the adapter's ``target_modules``.
    """
    modules = dict(model.named_modules())
    folded: dict[str, bool] = {}
    for name, act in scales.items():
        parent_name, _, child = name.rpartition(".")
        parent = modules.get(parent_name)
        layer = modules.get(name)
        if layer is None:
            raise InputError(f"--quant-aware: conv {name} is not in the model")
        fold = _foldable_block(parent, child)
        target = parent if fold else layer
        setattr(target, _ATTR, _ConvQuant(name, act, fold))
        target.forward = types.MethodType(_block_forward if fold else _layer_forward, target)
        folded[name] = fold
    return folded


def patched_modules(model: nn.Module) -> Iterator[tuple[nn.Module, _ConvQuant]]:
    """Every module :func:`enable_quant_aware` patched, with its settings (conv name, quantizer, ...)."""
    for m in model.modules():
        q = m.__dict__.get(_ATTR)
        if q is not None:
            yield m, q


def set_grad_path(model: nn.Module, path: str) -> int:
    """Choose how the straight-through gradient is computed: ``low-rank`` (default) or ``autograd``."""
    if path not in ("low-rank", "autograd"):
        raise ValueError(f"grad path must be 'low-rank' or 'autograd', got {path!r}")
    n = 0
    for _, q in patched_modules(model):
        q.grad_path = path
        n += 1
    return n


def set_fake_quant(model: nn.Module, enabled: bool) -> int:
    """Turn the fake quantizers of a quant-aware model on or off; return how many convs were switched.

    Off, every patched module runs its own forward: the float, unmerged PEFT model, exactly.
    """
    n = 0
    for _, q in patched_modules(model):
        q.enabled = enabled
        n += 1
    return n


@contextmanager
def fake_quant_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in float for the duration (the fake quantizers come back on afterwards)."""
    set_fake_quant(model, False)
    try:
        yield model
    finally:
        set_fake_quant(model, True)


def remove_quant_aware(model: nn.Module) -> int:
    """Undo :func:`enable_quant_aware`: every patched module gets its class's forward back."""
    n = 0
    for m, _ in list(patched_modules(model)):
        m.__dict__.pop("forward", None)
        m.__dict__.pop(_ATTR, None)
        m._parameters.pop(LSQ_PARAM, None)
        n += 1
    return n


def quant_aware_record(
    scheme: str,
    target: str | None,
    scales: dict[str, ActivationQuant],
    folded: dict[str, bool],
    images: int,
    imgsz: int,
    seconds: float,
    float_convs: Sequence[str] = (),
    learned: dict[str, ActivationQuant] | None = None,
) -> dict[str, Any]:
    """The adapter package's ``quant_aware`` section: scheme, method and one input quantizer per conv
    (``float_convs``: adapted convs trained in float because the export keeps them float, the stem;
    ``learned``: the scales LSQ learned, which replace the calibrated ones, kept as ``calibrated_scale``)."""
    learned = learned or {}
    entries = {}
    for n in scales:
        entry = {**(learned[n] if n in learned else scales[n]).to_dict(), "bn_folded": folded[n]}
        if n in learned:
            entry["calibrated_scale"] = scales[n].scale
        entries[n] = entry
    return {
        "scheme": scheme,
        "target": target,
        "method": METHOD_LEARNED if learned else METHOD,
        "calibration_images": images,
        "calibration_imgsz": imgsz,
        "calibration_seconds": round(seconds, 2),
        "calibrated_on": "the frozen base (no adapter), train images of the line, letterboxed as exported",
        "weights": f"per output channel, symmetric int8 [{WEIGHT_QMIN}, {WEIGHT_QMAX}], BN folded",
        "activations": f"per tensor, {'learned (LSQ, zero point fixed)' if learned else 'fixed'}: "
        + ("asymmetric uint8" if scheme == "u8s8" else "symmetric int8"),
        "scales": entries,
        "float_convs": sorted(float_convs),
    }


def scales_from_record(record: dict[str, Any]) -> dict[str, ActivationQuant]:
    """The activation quantizers of an adapter package's ``quant_aware`` section, by conv name."""
    fields = set(ActivationQuant.__dataclass_fields__)
    return {
        name: ActivationQuant(**{k: v for k, v in entry.items() if k in fields})
        for name, entry in record.get("scales", {}).items()
    }
