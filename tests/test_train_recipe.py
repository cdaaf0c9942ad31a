"""The training recipe: defaults per situation (base's classes / new classes), flags win, all recorded."""

from __future__ import annotations

import pytest

from edge_lora.errors import InputError
from edge_lora.train.config import DEFAULT_TARGETS, LoraSettings, TrainOptions
from edge_lora.train.recipe import NEW_CLASS_LR, resolve_recipe


def _options(**kw) -> TrainOptions:
    return TrainOptions(base="b.pt", data="d.yaml", out="o", **kw)


def test_same_classes_keep_todays_settings():
    r = resolve_recipe(_options(), new_classes=False)
    o = r.options
    assert o.lora.targets == DEFAULT_TARGETS and o.lora.norm == "frozen"
    assert (o.optimizer, o.lr, o.warmup_epochs) == ("auto", None, None)
    overrides = o.ultralytics_overrides()
    assert overrides["optimizer"] == "auto" and "lr0" not in overrides and "warmup_epochs" not in overrides
    assert r.record()["norm"] == {"value": "frozen", "source": "recipe"}


def test_new_classes_get_the_new_class_recipe_printed_and_recorded():
    r = resolve_recipe(_options(), new_classes=True)
    o = r.options
    assert o.lora.targets == ("all",) and o.lora.norm == "train"
    overrides = o.ultralytics_overrides()
    assert overrides["optimizer"] == "AdamW" and overrides["lr0"] == NEW_CLASS_LR
    record = r.record()
    assert record["situation"] == "new classes (head rebuilt)"
    assert record["lr"] == {"value": NEW_CLASS_LR, "source": "recipe: new classes"}
    assert record["warmup_epochs"] == {"value": 3.0, "source": "Ultralytics"}
    line = r.summary()
    assert "targets all (recipe: new classes)" in line and "norm train" in line and "lr 0.005" in line


def test_every_flag_wins_over_the_recipe():
    opts = _options(lora=LoraSettings(targets=("backbone",), norm="frozen"), lr=1e-3, warmup_epochs=0.5)
    r = resolve_recipe(opts, new_classes=True)
    o = r.options
    assert o.lora.targets == ("backbone",) and o.lora.norm == "frozen"
    assert (o.optimizer, o.lr) == ("AdamW", 1e-3)  # --lr alone: AdamW, as before (auto ignores lr0)
    assert o.ultralytics_overrides()["warmup_epochs"] == 0.5
    rec = r.record()
    assert {k: rec[k]["source"] for k in ("targets", "norm", "lr", "warmup_epochs")} == {
        "targets": "--targets",
        "norm": "--norm",
        "lr": "--lr",
        "warmup_epochs": "--warmup-epochs",
    }
    # An explicit optimizer keeps its own learning rate (Ultralytics'), not the recipe's AdamW rate.
    sgd = resolve_recipe(_options(optimizer="SGD"), new_classes=True).options
    assert (sgd.optimizer, sgd.lr) == ("SGD", None)
    # --set lr0=/optimizer= count as the user's choice too, and are recorded as such.
    via_set = resolve_recipe(_options(extra={"lr0": 0.02, "optimizer": "SGD"}), new_classes=True)
    assert via_set.record()["lr"] == {"value": 0.02, "source": "--set"}
    assert via_set.options.ultralytics_overrides()["optimizer"] == "SGD"


def test_quant_aware_keeps_batchnorm_frozen():
    r = resolve_recipe(_options(quant_aware="u8s8"), new_classes=True)
    assert r.options.lora.norm == "frozen"
    assert "quant-aware" in r.record()["norm"]["source"]
    with pytest.raises(InputError, match="--norm frozen"):
        _options(quant_aware="u8s8", lora=LoraSettings(norm="train"))


def test_bad_recipe_values_name_the_option():
    with pytest.raises(InputError, match="--warmup-epochs"):
        _options(warmup_epochs=-1)
    with pytest.raises(InputError, match="--norm"):
        LoraSettings(norm="sometimes")  # type: ignore[arg-type]
