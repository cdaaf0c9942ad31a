"""Learned activation scales for quant-aware LoRA (LSQ, Esser et al., ICLR 2020): ``--quant-scales learned``.

The fixed scales of :mod:`edge_lora.train.quant_aware` come from a MinMax pass of the base: one outlier widens a
conv input's range and coarsens the grid for every other value. LSQ makes each conv input's scale a trainable
parameter; its gradient is that of the quantizer's output with respect to the scale (straight-through for the
rounding), multiplied by ``1 / sqrt(N * qmax)`` so that it is commensurate with the weights' gradients. Here:

* the parameter is ``log(scale)``, registered on the patched module as :data:`PARAM` and initialised from the
  MinMax calibration; ``exp`` keeps the scale positive and makes an optimizer step a relative change;
* the zero point stays the calibrated one: ONNX Runtime's u8s8 zero point is an integer in the graph, and s8s8
  has none (learning it, as LSQ+ does, would need a rounding at export that training never saw);
* torch's own ``_fake_quantize_learnable_per_tensor_affine`` (the op behind ``torch.ao``'s
  ``_LearnableFakeQuantize``) computes the value and the LSQ gradients, with the same rounding as the fixed path;
* convs that read one tensor (the two branches of a C3k block read the same Split output) share one scale:
  the graph has one QuantizeLinear per tensor, so they must learn one (:func:`shared_input_groups` finds them);
* the scales are adapter data, not base weights: the frozen-base check skips them, Ultralytics' EMA averages
  them with the LoRA tensors, they get their own optimizer group (no weight decay, :data:`LR_FACTOR` x the
  learning rate), and the adapter record stores the EMA's values as float32, which is what the graph stores.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

#: The name of the log-scale parameter on a patched module (``model.3.edge_lora_log_act_scale``).
PARAM = "edge_lora_log_act_scale"
#: The scales' learning rate relative to the run's. Adam-type steps are about ``lr`` in log-scale, i.e. a
#: 0.2% change per step at Ultralytics' auto lr; x10 lets a scale move by tens of percent within a few epochs
#: of a small line's data. Chosen, not tuned (see benchmarks/int8_methods.py for what it gave).
LR_FACTOR = 10.0
GROUP = "edge_lora_lsq"


def shared_input_groups(
    model: nn.Module, conv_names: Sequence[str], image: Path, imgsz: int
) -> list[list[str]]:
    """Convs of ``conv_names`` that read the very same tensor, found by one forward pass of ``model`` (the
    plain base, before LoRA) on ``image``; each group has two or more names, in ``conv_names`` order.

    The inputs are held until the pass ends, so a tensor's ``id`` cannot be reused by a later one.
    """
    from edge_lora.train.quant_aware import conv_input_pass

    seen: dict[str, torch.Tensor] = {}
    conv_input_pass(model, conv_names, [image], imgsz, lambda name, x: seen.setdefault(name, x), batch=1)
    by_tensor: dict[int, list[str]] = {}
    for name in conv_names:
        if name in seen:
            by_tensor.setdefault(id(seen[name]), []).append(name)
    return [g for g in by_tensor.values() if len(g) > 1]


def add_learned_scales(model: nn.Module, groups: Sequence[Sequence[str]] = ()) -> list[str]:
    """Give every quant-aware conv of ``model`` a trainable log-scale initialised from its calibrated scale;
    the convs of one of ``groups`` (:func:`shared_input_groups`) share one parameter.

    Returns every state-dict name of the parameters (a shared one under each module), for the trainable
    list and the frozen-base check.
    """
    from edge_lora.train.quant_aware import patched_modules

    group_of = {name: i for i, g in enumerate(groups) for name in g}
    shared: dict[int, nn.Parameter] = {}
    for module, q in patched_modules(model):
        i = group_of.get(q.name)
        log_scale = shared.get(i) if i is not None else None
        if log_scale is None:
            log_scale = nn.Parameter(torch.tensor([math.log(q.act.scale)], dtype=torch.float32))
            if i is not None:
                shared[i] = log_scale
        module.register_parameter(PARAM, log_scale)
    return [k for k in model.state_dict(keep_vars=True) if k.endswith("." + PARAM)]


def fake_quant_learned(
    x: torch.Tensor, log_scale: torch.Tensor, zero_point: int, qmin: int, qmax: int
) -> torch.Tensor:
    """``x`` fake-quantized with scale ``exp(log_scale)`` (a fixed zero point), LSQ gradients for the scale."""
    scale = log_scale.exp()
    zp = torch.full_like(scale, float(zero_point))
    grad_factor = 1.0 / math.sqrt(max(x[0].numel(), 1) * qmax)
    return torch._fake_quantize_learnable_per_tensor_affine(x.float(), scale, zp, qmin, qmax, grad_factor).to(
        x.dtype
    )


def learned_scales(model: nn.Module) -> dict[str, Any]:
    """Conv name -> its :class:`~edge_lora.train.quant_aware.ActivationQuant` with the learned scale (float32)."""
    from edge_lora.train.quant_aware import patched_modules

    out = {}
    for module, q in patched_modules(model):
        log_scale = getattr(module, PARAM, None)
        if log_scale is None:
            continue
        scale = float(np.float32(math.exp(float(log_scale.detach().reshape(-1)[0]))))
        out[q.name] = dataclasses.replace(q.act, scale=scale)
    return out


def own_param_group(optimizer: torch.optim.Optimizer, model: nn.Module) -> int:
    """Move the learned scales out of the groups Ultralytics' ``build_optimizer`` put them in (by name it
    would weight-decay them towards zero) into one group without decay at :data:`LR_FACTOR` x the lr.

    Returns how many parameters moved (0 for a run without learned scales: nothing changes).
    """
    ids = {id(p) for name, p in model.named_parameters() if name.endswith("." + PARAM)}
    if not ids:
        return 0
    moved: dict[int, torch.Tensor] = {}  # by id: Ultralytics lists a shared scale under each of its modules
    for group in optimizer.param_groups:
        moved.update((id(p), p) for p in group["params"] if id(p) in ids)
        group["params"] = [p for p in group["params"] if id(p) not in ids]
    template = optimizer.param_groups[0]
    settings = {k: v for k, v in template.items() if k != "params"}
    settings.update(lr=template["lr"] * LR_FACTOR, weight_decay=0.0, param_group=GROUP)
    optimizer.add_param_group({"params": list(moved.values()), **settings})
    return len(moved)
