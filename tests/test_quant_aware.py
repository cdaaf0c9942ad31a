"""Quantization-aware LoRA training (``train --quant-aware``): fake quantizers, recorded scales, frozen base."""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import IMGSZ

from edge_lora.cli.main import main
from edge_lora.errors import InputError
from edge_lora.fileio import sha256_file
from edge_lora.models import load_detection_model
from edge_lora.runtime.frames import read_image
from edge_lora.runtime.prepost import preprocess
from edge_lora.train.adapter_io import build_adapted_model
from edge_lora.train.config import LoraSettings, TrainOptions
from edge_lora.train.inject import inject_lora, lora_config, plan_targets
from edge_lora.train.quant_aware import (
    activation_quant,
    calibrate,
    enable_quant_aware,
    fake_quant_disabled,
    fake_quant_weight,
    folded_conv,
    remove_quant_aware,
    resolve_scheme,
    scales_from_record,
    set_fake_quant,
    set_grad_path,
)


def _batch(ds, split: str = "val", line: str = "line_b") -> torch.Tensor:
    paths = sorted((ds.root / line / "images" / split).glob("*.png"))
    return torch.from_numpy(preprocess([read_image(p) for p in paths], IMGSZ)[0])


def _flat(out) -> torch.Tensor:
    """Every tensor of a detection model's eval output, flattened into one vector."""
    if isinstance(out, torch.Tensor):
        return out.flatten()
    if isinstance(out, dict):
        out = list(out.values())
    return torch.cat([_flat(o) for o in out if isinstance(o, (torch.Tensor, list, tuple, dict))])


def _randomize_lora(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


# --- the quantizer's arithmetic ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["u8s8", "s8s8"])
def test_activation_scales_are_onnxruntime_minmax(scheme):
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    symmetric = scheme == "s8s8"
    qtype = TensorProto.INT8 if symmetric else TensorProto.UINT8
    qmin, qmax = get_qmin_qmax_for_qType(qtype, symmetric=symmetric)
    for lo, hi in ((-0.7, 3.2), (0.1, 5.0), (-4.0, -0.5)):
        zp, scale = compute_scale_zp(np.float32(lo), np.float32(hi), qmin, qmax, symmetric=symmetric)
        q = activation_quant(float(np.float32(lo)), float(np.float32(hi)), scheme)
        assert q.scale == pytest.approx(float(scale), rel=1e-6)
        assert q.zero_point == int(zp)
        assert q.dtype == ("int8" if symmetric else "uint8")


def test_weight_quantizer_is_torch_per_channel_symmetric_int8():
    g = torch.Generator().manual_seed(0)
    w = torch.randn((32, 16, 3, 3), generator=g) * 0.1
    w[3] = 0  # an all-zero channel keeps scale 1 (ONNX Runtime's fallback) and stays zero
    absmax = w.abs().amax(dim=(1, 2, 3))
    scale = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax))
    ref = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(32, dtype=torch.int32), 0, -127, 127)
    assert torch.equal(fake_quant_weight(w), ref)  # no grad: the three-op form
    assert torch.equal(fake_quant_weight(w.clone().requires_grad_()).detach(), ref)
    levels = (ref / scale.reshape(-1, 1, 1, 1)).round()
    assert levels.abs().max() == 127 and len(levels[0].unique()) > 10


def test_resolve_scheme_from_scheme_or_target():
    assert resolve_scheme("u8s8") == ("u8s8", None)
    assert resolve_scheme("cpu-onnxruntime") == ("u8s8", "cpu-onnxruntime")
    scheme, target = resolve_scheme("jetson")
    assert scheme == "s8s8" and target.startswith("jetson")
    with pytest.raises(InputError, match="NNCF"):
        resolve_scheme("intel-openvino")
    with pytest.raises(InputError, match="--quant-aware"):
        resolve_scheme("u9s9")


def test_options_refuse_quant_aware_with_dropout_or_full(tmp_path):
    common = {"base": tmp_path / "b.pt", "data": tmp_path / "d.yaml", "out": tmp_path / "o"}
    with pytest.raises(InputError, match="--dropout"):
        TrainOptions(**common, lora=LoraSettings(dropout=0.1), quant_aware="u8s8")
    with pytest.raises(InputError, match="--full"):
        TrainOptions(**common, full=True, quant_aware="u8s8")
    assert TrainOptions(**common, quant_aware="jetson").quant_scheme == "s8s8"


def test_cli_refuses_an_unknown_scheme(tmp_path):
    res = CliRunner().invoke(
        main,
        ["train", "--base", str(tmp_path / "b.pt"), "--data", str(tmp_path / "d.yaml")]
        + ["--out", str(tmp_path / "o"), "--quant-aware", "u9s9"],
    )
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.strip().splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "--quant-aware" in errors[0], res.output
    assert "Traceback" not in res.output and not (tmp_path / "o").exists()


# --- the fake-quant forward (no training) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def qat_model(base_ckpt, demo_data):
    """(base, quant-aware PEFT model with random LoRA B, plan, val batch), u8s8 scales from line B."""
    base = load_detection_model(base_ckpt)
    model = deepcopy(base.model).eval()
    settings = LoraSettings(rank=4, alpha=8)
    plan = plan_targets(model, settings, "frozen")
    train_imgs = sorted((demo_data.root / "line_b" / "images" / "train").glob("*.png"))
    ranges = calibrate(model, plan.targets, train_imgs, IMGSZ)
    inject_lora(model, lora_config(settings, plan.targets, str(base_ckpt)))
    _randomize_lora(model)
    reference = deepcopy(model)  # the same LoRA, plain PEFT forward
    folded = enable_quant_aware(model, {n: activation_quant(*ranges[n], "u8s8") for n in plan.targets})
    assert set(folded) == set(plan.targets) and all(folded.values())  # YOLO26n's targets are Conv blocks
    return base, model, reference, _batch(demo_data)


def test_fake_quant_forward_differs_but_is_close(qat_model):
    _, model, reference, x = qat_model
    with torch.no_grad():
        fq, ref = _flat(model(x)), _flat(reference(x))
    assert not torch.equal(fq, ref)  # quantization really happens
    assert (fq - ref).abs().max() <= 0.1 * ref.abs().max()


def test_fake_quant_disabled_is_the_plain_peft_forward(qat_model):
    _, model, reference, x = qat_model
    with torch.no_grad(), fake_quant_disabled(model):
        assert torch.equal(_flat(model(x)), _flat(reference(x)))


def test_the_quantized_weight_is_the_bn_folded_merged_conv(qat_model):
    """What the fake quantizer rounds is what the ONNX export quantizes: the merged conv with BN fused."""
    from ultralytics.utils.torch_utils import fuse_conv_and_bn

    _, model, reference, _ = qat_model
    modules, ref_modules = dict(model.named_modules()), dict(deepcopy(reference).named_modules())
    block = next(n for n, m in modules.items() if "_edge_lora_quant" in m.__dict__)
    w, b = folded_conv(modules[block])
    target = ref_modules[block]
    target.conv.merge(safe_merge=True)  # PEFT's own merge: W + scale * B·A into the base conv
    fused = fuse_conv_and_bn(target.conv.get_base_layer(), target.bn)
    torch.testing.assert_close(w.detach(), fused.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.detach(), fused.bias, rtol=1e-5, atol=1e-6)


def test_gradients_reach_lora_through_the_quantizer(qat_model):
    _, model, _, x = qat_model
    trial = deepcopy(model).train()
    for n, p in trial.named_parameters():
        p.requires_grad_("lora_" in n)
    out = trial(x)
    _flat(out).square().mean().backward()
    grads = [p.grad for n, p in trial.named_parameters() if "lora_" in n]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def _lora_grads(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
        p.grad = None
    _flat(model(x)).square().mean().backward()
    return {n: p.grad for n, p in model.named_parameters() if "lora_" in n}


def test_low_rank_gradient_path_equals_straight_through_autograd(qat_model):
    """The default gradient path (LoRA branch on the quantized input) gives autograd's STE gradients."""
    _, model, _, x = qat_model
    fast, exact = deepcopy(model), deepcopy(model)
    assert set_grad_path(exact, "autograd") > 0
    with torch.no_grad():
        assert torch.equal(_flat(fast(x)), _flat(exact(x)))  # same values, whichever path
    g_fast, g_exact = _lora_grads(fast, x), _lora_grads(exact, x)
    assert g_fast.keys() == g_exact.keys()
    scale = max(g.abs().max() for g in g_exact.values())
    for name, g in g_exact.items():
        torch.testing.assert_close(g_fast[name], g, rtol=1e-3, atol=1e-4 * float(scale), msg=name)


def test_switching_off_and_removing(qat_model):
    _, model, reference, x = qat_model
    trial = deepcopy(model)  # the patches survive a deep copy (Ultralytics' EMA is one)
    from peft.tuners.lora import LoraLayer

    patched = [m for m in trial.modules() if "_edge_lora_quant" in m.__dict__]
    assert all(m.forward.__self__ is m for m in patched)  # bound to the copy, not to the original
    assert set_fake_quant(trial, False) == len([m for m in trial.modules() if isinstance(m, LoraLayer)])
    set_fake_quant(trial, True)
    assert remove_quant_aware(trial) > 0
    with torch.no_grad():
        assert torch.equal(_flat(trial(x)), _flat(reference(x)))


# --- training ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_quant_aware_training_keeps_the_base_bit_exact(qat_adapter, base_ckpt):
    result, package = qat_adapter
    # train() compares every frozen tensor of the model and its EMA after training (raises otherwise)
    assert result.frozen_tensors_verified > 0
    assert package.meta["frozen_tensors_verified"] == result.frozen_tensors_verified
    assert any(v.abs().sum() > 0 for k, v in package.lora_state.items() if "lora_B" in k)  # it trained
    assert package.meta["base"]["sha256"] == sha256_file(base_ckpt)  # and the checkpoint is untouched


@pytest.mark.slow
def test_package_records_scheme_and_one_scale_per_adapted_conv(qat_adapter, trained_adapter):
    result, package = qat_adapter
    record = package.meta["quant_aware"]
    assert record["scheme"] == "s8s8" and record["target"].startswith("jetson")
    assert record["method"] == "minmax-fixed" and record["calibration_images"] > 0
    # every adapted conv but the stem, which the export keeps float (float_stem) and so is trained float
    assert record["float_convs"] == ["model.0.conv"]
    assert set(record["scales"]) == set(package.meta["lora"]["target_modules"]) - {"model.0.conv"}
    for entry in record["scales"].values():
        assert entry["scale"] > 0 and entry["zero_point"] == 0 and entry["dtype"] == "int8"
    assert result.quant_scheme == "s8s8"
    assert package.meta["seconds_per_epoch"] > 0 and len(package.meta["epoch_seconds"]) == result.epochs
    plain = json.loads((Path(trained_adapter.out) / "edge_lora.json").read_text())
    assert "quant_aware" not in plain and plain["seconds_per_epoch"] > 0


@pytest.mark.slow
def test_trained_quant_aware_forward_is_close_to_float_and_off_is_merged(qat_adapter, base_ckpt, demo_data):
    from edge_lora.train.api import merged_from_adapter

    _, package = qat_adapter
    base = load_detection_model(base_ckpt).model
    model, _ = build_adapted_model(base, package)
    float_out = _flat(model(_batch(demo_data)))
    enable_quant_aware(model, scales_from_record(package.meta["quant_aware"]))
    x = _batch(demo_data)
    with torch.no_grad():
        fq = _flat(model(x))
        with fake_quant_disabled(model):
            off = _flat(model(x))
        merged = _flat(merged_from_adapter(base, package.path)(x))
    assert not torch.equal(fq, float_out)
    assert (fq - float_out).abs().max() <= 0.1 * float_out.abs().max()
    torch.testing.assert_close(off, merged, rtol=1e-4, atol=1e-4)


def test_learned_scales_get_one_optimizer_group_each_scale_once():
    """A scale shared by two convs (one input tensor) is listed under both modules by Ultralytics'
    build_optimizer; own_param_group leaves it once, in its own group without decay at LR_FACTOR x lr."""
    from edge_lora.train.lsq import GROUP, LR_FACTOR, PARAM, own_param_group

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.Conv2d(1, 1, 1))
    shared = torch.nn.Parameter(torch.zeros(1))
    for m in model:
        m.register_parameter(PARAM, shared)
    weights = [m.weight for m in model]
    listed = [p for _, m in model.named_modules() for _, p in m.named_parameters(recurse=False)]
    decayed = [p for p in listed if p is shared or any(p is w for w in weights)]
    optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": 0.05, "lr": 0.002}])
    assert own_param_group(optimizer, model) == 1
    rest, lsq = optimizer.param_groups
    assert all(p is not shared for p in rest["params"]) and len(rest["params"]) == 2
    assert lsq["params"] == [shared] and lsq["param_group"] == GROUP
    assert lsq["weight_decay"] == 0.0 and lsq["lr"] == pytest.approx(0.002 * LR_FACTOR)
