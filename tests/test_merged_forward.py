"""Training through the merged weight (edge_lora.train.merged_forward) is PEFT's LoRA, computed with one conv."""

from __future__ import annotations

from copy import deepcopy

import torch
from conftest import IMGSZ

from edge_lora.models import load_detection_model
from edge_lora.train.config import LoraSettings
from edge_lora.train.inject import inject_lora, lora_config, plan_targets, set_trainable
from edge_lora.train.merged_forward import enable_merged_forward


def _flat(o):
    if torch.is_tensor(o):
        return [o]
    if isinstance(o, dict):
        return [t for v in o.values() for t in _flat(v)]
    if isinstance(o, (list, tuple)):
        return [t for v in o for t in _flat(v)]
    return []


def _adapted(base_ckpt):
    model = deepcopy(load_detection_model(base_ckpt).model)
    settings = LoraSettings(rank=4, alpha=8, targets=("all",))
    plan = plan_targets(model, settings, "frozen")
    inject_lora(model, lora_config(settings, plan.targets, str(base_ckpt)))
    trainable = set_trainable(model, plan.dense_prefixes)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero; give it values so the branch matters
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model, plan, trainable


def _step(model, x, trainable):
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()  # as the adapter trainer runs the frozen base
    model.zero_grad(set_to_none=True)
    outs = [o for o in _flat(model(x)) if o.requires_grad]
    sum(((o.float() * (i + 1)) ** 2).mean() for i, o in enumerate(outs)).backward()
    params = dict(model.named_parameters())
    return outs, {n: params[n].grad.clone() for n in trainable}


def test_merged_forward_gives_peft_lora_values_and_gradients(base_ckpt):
    model, plan, trainable = _adapted(base_ckpt)
    merged = deepcopy(model)
    patched = enable_merged_forward(merged)
    assert sorted(patched) == sorted(plan.targets)  # every adapted conv, and nothing else
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    want_out, want_grad = _step(model, x, trainable)
    got_out, got_grad = _step(merged, x, trainable)
    for w, g in zip(want_out, got_out, strict=True):
        assert (w - g).abs().max() <= 1e-5 * max(w.abs().max(), 1.0)
    assert want_grad.keys() == got_grad.keys() and any(".lora_A." in n for n in want_grad)
    for n, w in want_grad.items():
        assert (w - got_grad[n]).abs().max() <= 1e-4 * max(w.abs().max(), 1e-6), n
    # Validation (eval mode) and inference keep PEFT's own forward, bit for bit.
    model.eval(), merged.eval()
    with torch.inference_mode():
        assert torch.equal(model(x)[0], merged(x)[0])


def test_merged_forward_follows_the_copy_and_skips_dropout(base_ckpt):
    model, plan, _ = _adapted(base_ckpt)
    enable_merged_forward(model)
    copy = deepcopy(
        model
    )  # the EMA model is a deepcopy: its patched forward must compute with its own weights
    layer = copy.get_submodule(plan.targets[0])
    assert layer.forward.__self__ is layer
    dropped = deepcopy(load_detection_model(base_ckpt).model)
    settings = LoraSettings(rank=4, alpha=8, dropout=0.5)
    p = plan_targets(dropped, settings, "frozen")
    inject_lora(dropped, lora_config(settings, p.targets, str(base_ckpt)))
    with torch.no_grad():
        for name, t in dropped.named_parameters():
            if "lora_B" in name:
                t.fill_(0.05)
    assert enable_merged_forward(dropped)
    dropped.train()
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    a = _flat(dropped(x))[0]
    torch.manual_seed(1)
    b = _flat(dropped(x))[0]
    # PEFT's forward with its dropout (the merged form has none): other dropout masks, other values.
    assert not torch.equal(a, b)
