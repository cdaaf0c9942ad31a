"""LoRA training, the adapter package and the exact merge, on a tiny real YOLO26n."""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMGSZ, fast_train_args, make_base
from safetensors.torch import load_file

from edge_lora.errors import AdapterError, InputError, MergeParityError
from edge_lora.merge import compare_models, merge
from edge_lora.models import load_detection_model
from edge_lora.train.adapter_io import build_adapted_model, read_adapter, write_adapter
from edge_lora.train.config import LoraSettings
from edge_lora.train.inject import (
    frozen_changes,
    frozen_snapshot,
    inject_lora,
    lora_config,
    plan_targets,
    rebuild_for_classes,
    set_trainable,
)


def _images(ds, line: str = "line_b", split: str = "val") -> list[Path]:
    return sorted((ds.root / line / "images" / split).glob("*.png"))


def _randomize_lora(model: torch.nn.Module, seed: int = 0) -> None:
    """Give LoRA B non-zero values so the adapter really changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _adapted(base_ckpt: Path, settings: LoraSettings | None = None, head: str = "frozen"):
    base = load_detection_model(base_ckpt)
    model = deepcopy(base.model)
    settings = settings or LoraSettings(rank=4, alpha=8)
    plan = plan_targets(model, settings, head)
    inject_lora(model, lora_config(settings, plan.targets, str(base_ckpt)))
    return base, model, plan


# --- target selection -------------------------------------------------------------------------------------


def test_default_targets_are_ungrouped_backbone_and_neck_convs(base_ckpt):
    base = load_detection_model(base_ckpt)
    plan = plan_targets(base.model, LoraSettings(), "frozen")
    head = f"model.{len(base.model.model) - 1}."
    modules = dict(base.model.named_modules())
    assert plan.targets, "no targets selected"
    assert not any(t.startswith(head) for t in plan.targets)
    assert all(modules[t].groups == 1 for t in plan.targets)
    # YOLO26n's attention blocks carry depthwise positional convs: they must be listed as excluded, with a reason.
    assert plan.excluded and all("groups=" in why for why in plan.excluded.values())


def test_only_lora_parameters_are_trainable(base_ckpt):
    _, model, plan = _adapted(base_ckpt)
    trainable = set_trainable(model, plan.dense_prefixes)
    assert trainable and all("lora_" in n for n in trainable)
    requires = {n for n, p in model.named_parameters() if p.requires_grad}
    assert requires == set(trainable)
    # one A and one B per target
    assert len(trainable) == 2 * len(plan.targets)


def test_head_train_mode_trains_head_densely(base_ckpt):
    _, model, plan = _adapted(base_ckpt, head="train")
    trainable = set_trainable(model, plan.dense_prefixes)
    head = plan.dense_prefixes[0]
    dense = [n for n in trainable if "lora_" not in n]
    assert dense and all(n.startswith(head + ".") for n in dense)
    assert not any(".dfl." in n for n in trainable)


def test_bad_targets_are_rejected(base_ckpt):
    base = load_detection_model(base_ckpt)
    with pytest.raises(InputError, match="--targets: nothing_like_this matched no Conv2d"):
        plan_targets(base.model, LoraSettings(targets=("nothing_like_this",)), "frozen")
    with pytest.raises(InputError, match="--rank must be a positive integer"):
        LoraSettings(rank=0)


# --- training ---------------------------------------------------------------------------------------------


def test_train_keeps_base_bit_exact_and_changes_adapter(trained_adapter, base_ckpt):
    result = trained_adapter
    assert result.mode == "lora"
    assert result.frozen_tensors_verified > 100  # every base weight and BN buffer, in the model and its EMA
    lora = load_file(str(result.out / "adapter_model.safetensors"))
    b = [v for k, v in lora.items() if "lora_B" in k]
    assert b and any(v.abs().max() > 0 for v in b), "LoRA B is still zero: the adapter did not train"
    meta = json.loads((result.out / "edge_lora.json").read_text())
    assert meta["base"]["sha256"] == load_detection_model(base_ckpt).sha256
    assert meta["frozen_tensors_verified"] == result.frozen_tensors_verified
    assert 0 < result.trainable_share < 0.10
    assert set(meta["metrics"]) >= {"mAP50-95", "mAP50"}
    assert not (result.out / "training" / "weights").exists()


def test_frozen_check_detects_a_changed_bn_buffer(base_ckpt):
    _, model, plan = _adapted(base_ckpt)
    trainable = set_trainable(model, plan.dense_prefixes)
    snap = frozen_snapshot(model, trainable)
    assert frozen_changes(model, snap) == []
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.train()
    bn(torch.randn(2, bn.num_features, 4, 4))  # one step in train mode moves running stats
    assert frozen_changes(model, snap), "a moved BN buffer was not detected"


def test_adapter_package_lists_and_hashes_files(trained_adapter):
    meta = json.loads((trained_adapter.out / "edge_lora.json").read_text())
    assert set(meta["files"]) == {"adapter_model.safetensors", "adapter_config.json"}
    assert meta["schema_version"] == 2
    config = json.loads((trained_adapter.out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert config["modules_to_save"] is None  # frozen head: LoRA only
    keys = load_file(str(trained_adapter.out / "adapter_model.safetensors"))
    assert keys and all(k.startswith("base_model.model.model.") for k in keys)  # PEFT's key names
    assert not list(trained_adapter.out.glob("*.pt")), "an adapter package must not contain pickles"


def test_adapter_round_trip_gives_same_outputs(tmp_path, base_ckpt):
    base, model, plan = _adapted(base_ckpt)
    _randomize_lora(model)
    model.eval()
    write_adapter(
        tmp_path / "a",
        model,
        plan.dense_prefixes,
        {"names": {"0": "scratch", "1": "hole", "2": "short"}, "base": {}, "imgsz": IMGSZ, "head": {}},
    )
    rebuilt, _ = build_adapted_model(base.model, read_adapter(tmp_path / "a"))
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    with torch.inference_mode():
        assert torch.equal(model(x)[0], rebuilt(x)[0])


def test_rslora_scales_by_sqrt_rank_and_survives_the_package(tmp_path, base_ckpt):
    """--rslora is PEFT's use_rslora: the layers scale B·A by alpha/sqrt(r), and a written adapter reloads
    with that scaling (PEFT reads it from adapter_config.json), giving the same outputs."""
    settings = LoraSettings(rank=4, alpha=8, rslora=True)
    assert settings.scale == 4.0
    base, model, plan = _adapted(base_ckpt, settings)
    layer = model.get_submodule(plan.targets[0])
    assert layer.scaling["default"] == 4.0
    _randomize_lora(model)
    model.eval()
    meta = {"names": {"0": "scratch", "1": "hole", "2": "short"}, "base": {}, "imgsz": IMGSZ, "head": {}}
    write_adapter(tmp_path / "a", model, plan.dense_prefixes, meta)
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["use_rslora"] is True
    rebuilt, _ = build_adapted_model(base.model, read_adapter(tmp_path / "a"))
    assert rebuilt.get_submodule(plan.targets[0]).scaling["default"] == 4.0
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    with torch.inference_mode():
        assert torch.equal(model(x)[0], rebuilt(x)[0])


# --- merge --------------------------------------------------------------------------------------------------


def test_merge_parity_and_plain_ultralytics_load(tmp_path, trained_adapter, base_ckpt, demo_data):
    out = tmp_path / "merged.pt"
    report = merge(base_ckpt, trained_adapter.out, out, data=demo_data.line_b_yaml)
    assert report.parity.passed and report.parity.max_rel <= 1e-4
    assert report.merged_layers > 10 and out.is_file() and out.with_suffix(".json").is_file()

    # The adapter really changes the model, so parity is not trivially about a zero update.
    base = load_detection_model(base_ckpt).model
    unmerged, _ = build_adapted_model(base, read_adapter(trained_adapter.out))
    assert compare_models(base, unmerged, _images(demo_data), IMGSZ).max_abs > 0

    # A plain Ultralytics load predicts what base + adapter predicts.
    import cv2
    from ultralytics import YOLO
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils import ops
    from ultralytics.utils.nms import non_max_suppression

    yolo = YOLO(str(out))
    assert yolo.names == {0: "scratch", 1: "hole", 2: "short"}
    for path in _images(demo_data)[:2]:
        got = yolo.predict(str(path), imgsz=IMGSZ, conf=0.001, verbose=False)[0].boxes.data
        img = cv2.imread(str(path))
        x = LetterBox((IMGSZ, IMGSZ), auto=False, stride=32)(image=img)[..., ::-1].transpose(2, 0, 1)
        x = torch.from_numpy(np.ascontiguousarray(x)).float()[None] / 255
        with torch.inference_mode():
            pred = unmerged(x)[0]
        want = non_max_suppression(
            pred, 0.001, 0.7, max_det=300, end2end=bool(getattr(unmerged, "end2end", False))
        )[0]
        want[:, :4] = ops.scale_boxes((IMGSZ, IMGSZ), want[:, :4], img.shape)
        assert got.shape == want.shape and got.shape[0] > 0
        assert torch.equal(got[:, 5], want[:, 5])
        assert (got[:, :4] - want[:, :4]).abs().max() < 1.0  # px
        assert (got[:, 4] - want[:, 4]).abs().max() < 1e-3


def test_merge_refuses_other_base_unless_forced(tmp_path, trained_adapter, demo_data):
    from edge_lora.data.synth import NAMES

    other = make_base(tmp_path / "other.pt", NAMES, seed=1)
    with pytest.raises(AdapterError, match="trained on another base"):
        merge(other, trained_adapter.out, tmp_path / "m.pt", data=demo_data.line_b_yaml)
    assert not (tmp_path / "m.pt").exists()
    report = merge(other, trained_adapter.out, tmp_path / "m.pt", data=demo_data.line_b_yaml, force=True)
    assert report.forced and report.warnings and "sha256" in report.warnings[0]


def test_merge_parity_failure_writes_nothing(tmp_path, trained_adapter, base_ckpt, demo_data):
    # W x + B(A x) and (W + BA) x differ by FP32 rounding, so a 1e-12 tolerance must fail, and write nothing.
    with pytest.raises(MergeParityError, match="nothing was written"):
        merge(base_ckpt, trained_adapter.out, tmp_path / "m.pt", data=demo_data.line_b_yaml, tolerance=1e-12)
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "m.json").exists()


@pytest.mark.parametrize(("norm", "head"), [("auto", "auto"), ("frozen", "auto"), ("auto", "lora")])
def test_rebuilt_head_for_new_classes(tmp_path, base_ckpt, demo_data, norm, head):
    """Data with other class names: the class branch is rebuilt, trained densely, and merges exactly.

    With the new-class recipe (norm auto -> train) every BatchNorm is trained too and saved with the adapter:
    PEFT still loads it, the merge is still exact, and the base checkpoint's BN statistics are untouched."""
    import shutil

    import yaml

    from edge_lora.train.api import train
    from edge_lora.train.config import LoraSettings, TrainOptions

    data = yaml.safe_load(demo_data.line_b_yaml.read_text())
    data["names"] = {0: "crack", 1: "void"}
    root = tmp_path / "two"
    shutil.copytree(Path(data["path"]), root)
    for lbl in root.rglob("*.txt"):  # fold class 2 into 1
        lbl.write_text(
            "".join(
                ("1" + ln[1:] if ln.startswith("2") else ln) + "\n"
                for ln in lbl.read_text().split("\n")
                if ln
            )
        )
    data["path"] = str(root)
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(data))
    result = train(
        TrainOptions(
            base=base_ckpt,
            data=tmp_path / "two.yaml",
            out=tmp_path / "ad",
            lora=LoraSettings(norm=norm, head=head),
            epochs=1,
            imgsz=IMGSZ,
            batch=4,
            workers=0,
            extra=fast_train_args(),
        )
    )
    assert result.head_mode == ("rebuild" if head == "auto" else "rebuild-lora")
    meta = json.loads((result.out / "edge_lora.json").read_text())
    trained_norm = norm == "auto"
    assert meta["recipe"]["norm"] == {
        "value": "train" if trained_norm else "frozen",
        "source": "recipe: new classes" if trained_norm else "--norm",
    }
    assert meta["recipe"]["targets"]["value"] == ["all"]  # the new-class recipe adapts the head's box branch
    assert any(".cv2." in t for t in meta["lora"]["target_modules"])
    # The dense class branches are PEFT modules_to_save, in adapter_model.safetensors (no head.safetensors).
    assert not (result.out / "head.safetensors").exists()
    config = json.loads((result.out / "adapter_config.json").read_text())
    base_model = load_detection_model(base_ckpt).model
    detect = f"model.{len(base_model.model) - 1}"
    branches = [
        m for m in config["modules_to_save"] if m.startswith((f"{detect}.cv3.", f"{detect}.one2one_cv3."))
    ]
    norms = [m for m in config["modules_to_save"] if m not in branches]
    assert branches and all(m.endswith(".bn") for m in norms) and (len(norms) > 50) == trained_norm
    pointwise = (
        f"{detect}.cv3.0.0.1.conv"  # a class-branch 1x1 conv of the base: dense, or LoRA with --head lora
    )
    if head == "lora":
        # Densely trained: only the new final class convs and the depthwise blocks LoRA cannot adapt.
        assert f"{detect}.cv3.0.2" in branches and f"{detect}.cv3.0.0.0" in branches
        assert f"{detect}.cv3.0" not in branches and pointwise in meta["lora"]["target_modules"]
    else:
        assert pointwise not in meta["lora"]["target_modules"] and f"{detect}.cv3.0" in branches
    saved = load_file(str(result.out / "adapter_model.safetensors"))
    assert any(k.startswith(f"base_model.model.{detect}.cv3.") for k in saved)
    base_sd = base_model.state_dict()
    stem_mean = "model.0.bn.running_mean"
    assert (f"base_model.model.{stem_mean}" in saved) == trained_norm
    if trained_norm:  # the new data's statistics, not the base's (whose checkpoint stays as it was)
        assert not torch.equal(saved[f"base_model.model.{stem_mean}"], base_sd[stem_mean].float())
        assert torch.equal(load_detection_model(base_ckpt).model.state_dict()[stem_mean], base_sd[stem_mean])
    report = merge(base_ckpt, result.out, tmp_path / "m.pt", data=tmp_path / "two.yaml")
    assert report.parity.passed

    # PEFT loads the trained adapter onto the base with its head rebuilt, and predicts what edge-lora does.
    from peft import PeftModel

    from edge_lora.train.adapter_io import peft_base_model

    base = load_detection_model(base_ckpt).model
    unmerged, _ = build_adapted_model(base, read_adapter(result.out))
    peft_model = PeftModel.from_pretrained(peft_base_model(base, result.out), str(result.out)).eval()
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want, got = unmerged(x)[0], peft_model(x)[0]
    assert got.shape == want.shape and (got - want).abs().max() <= 1e-5 * want.abs().max()
    from ultralytics import YOLO

    assert YOLO(str(tmp_path / "m.pt")).names == {0: "crack", 1: "void"}


def test_rebuild_keeps_everything_but_class_convs(base_ckpt):
    base = load_detection_model(base_ckpt).model
    new = rebuild_for_classes(base, {0: "a", 1: "b"})
    old_sd, new_sd = base.state_dict(), new.state_dict()
    differing = [k for k in new_sd if k not in old_sd or old_sd[k].shape != new_sd[k].shape]
    assert differing and all(".cv3." in k or "one2one_cv3" in k for k in differing)
    assert all(torch.equal(old_sd[k], new_sd[k]) for k in new_sd if k not in differing)


def test_head_lora_with_the_base_classes_adapts_the_class_branches_without_a_rebuild(base_ckpt):
    from edge_lora.train.inject import resolve_head_mode

    base = load_detection_model(base_ckpt)
    assert resolve_head_mode("lora", base.names, base.names) == "frozen-lora"
    assert resolve_head_mode("lora", base.names, {0: "crack"}) == "rebuild-lora"
    plan = plan_targets(deepcopy(base.model), LoraSettings(), "frozen-lora")  # --targets backbone,neck
    detect = f"model.{len(base.model.model) - 1}"
    assert f"{detect}.cv3.0.0.1.conv" in plan.targets and not plan.dense_prefixes
    assert not any(t.startswith(f"{detect}.cv2.") for t in plan.targets)  # the box branch follows --targets
