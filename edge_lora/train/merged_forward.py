"""Training-time forward of the adapted convs through the merged weight: ``conv(x, W + s·B·A)``.

PEFT's LoRA ``Conv2d`` computes ``conv(x, W) + s·B(A(x))``: two more convolutions per layer over the full
activation, forward and backward. On YOLO's early, high-resolution layers the rank is not small next to the
channel count (r=8 on 16-64 channels), and the extra kernels cost far more than their arithmetic suggests:
one training step of YOLO26n (batch 16, 256 px, new-class recipe) took 3.3 s against 2.2 s for full
fine-tuning on one core. A conv is linear in its weight, so the same output (up to float rounding) comes
from one convolution with ``W + s·B·A``; its backward forms the weight gradient that full fine-tuning also
forms, and autograd takes A's and B's from it. The cost per step is then that of full fine-tuning.

Only while training (module in train mode, gradients on, no dropout): validation, export and the unmerged
reference keep PEFT's own forward, so what is measured is exactly PEFT's model. The patch is an instance
attribute (``deepcopy`` binds it to the copy), like :mod:`edge_lora.train.quant_aware`'s, which replaces it
for quant-aware training.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

_ATTR = "_edge_lora_merged_forward"


def _merged_forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``conv(x, W + Σ s·B·A)`` while training; PEFT's own forward otherwise."""
    if (
        args
        or kwargs
        or not self.training
        or not torch.is_grad_enabled()
        or self.merged
        or self.disable_adapters
    ):
        return type(self).forward(self, x, *args, **kwargs)
    adapters = [a for a in self.active_adapters if a in self.lora_A]
    if any(not isinstance(self.lora_dropout[a], nn.Identity) for a in adapters):
        return type(self).forward(
            self, x, *args, **kwargs
        )  # dropout acts on the branch input: no merged form
    base = self.get_base_layer()
    weight = base.weight
    for adapter in adapters:
        weight = weight + self.get_delta_weight(adapter).to(weight.dtype)  # PEFT's own ΔW, differentiable
    return base._conv_forward(x.to(weight.dtype), weight, base.bias)


def enable_merged_forward(model: nn.Module) -> list[str]:
    """Patch every PEFT LoRA ``Conv2d`` of ``model`` (without dropout); return the patched module names."""
    from peft.tuners.lora.layer import Conv2d as LoraConv2d

    patched = []
    for name, module in model.named_modules():
        if type(module) is LoraConv2d and not getattr(module, "use_dora", {}).get("default", False):
            module.forward = types.MethodType(_merged_forward, module)
            setattr(module, _ATTR, True)
            patched.append(name)
    return patched
