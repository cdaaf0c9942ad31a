"""Is the adapter learning? The per-epoch curve and the start point are recorded, and an adapter far below what
its base starts from gets a warning naming the likely fix (edge_lora.train.health)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import IMGSZ, fast_train_args

from edge_lora.train.health import curve_shape, diagnose


@pytest.mark.parametrize(
    ("history", "shape"),
    [
        ([0.01, 0.05, 0.12], "rising"),
        ([0.30, 0.41, 0.42, 0.42, 0.419, 0.42], "flat"),
        ([0.30, 0.35, 0.33, 0.36, 0.40, 0.38], "unclear"),
        ([0.2], "unclear"),
    ],
)
def test_curve_shape(history, shape):
    assert curve_shape(history) == shape


def test_new_classes_far_below_the_base_name_the_fix_the_curve_points_to():
    rising = diagnose([0.01, 0.03, 0.06], base_map=0.48, head_rebuilt=True, rank=8)
    assert [w.code for w in rising] == ["far-below-base"]
    assert "--epochs 6" in rising[0].fix and "0.0600" in rising[0].message
    flat = diagnose([0.05, 0.08, 0.09, 0.09, 0.09, 0.09], base_map=0.48, head_rebuilt=True, rank=8)
    assert "--rank 16" in flat[0].fix and "--full" in flat[0].fix
    assert diagnose([0.1, 0.3, 0.45], base_map=0.48, head_rebuilt=True, rank=8) == []  # learned it


def test_same_classes_below_the_base_and_unknown_start():
    worse = diagnose([0.40, 0.41, 0.41, 0.40], base_map=0.45, head_rebuilt=False, rank=8)
    assert [w.code for w in worse] == ["below-base"] and "--lr" in worse[0].fix
    assert diagnose([0.44, 0.46], base_map=0.45, head_rebuilt=False, rank=8) == []
    assert diagnose([0.01], base_map=None, head_rebuilt=True, rank=8) == []


def test_same_class_run_records_its_curve_and_the_base_measured_before_training(trained_adapter):
    meta = json.loads((trained_adapter.out / "edge_lora.json").read_text())
    assert [h["epoch"] for h in meta["history"]] == [1, 2] == [h["epoch"] for h in trained_adapter.history]
    assert all(0.0 <= h["map50_95"] <= 1.0 for h in meta["history"])
    start = meta["start_metrics"]
    assert (
        start["source"].startswith("the base on this data's val images") and 0.0 <= start["mAP50-95"] <= 1.0
    )


def test_new_class_adapter_far_below_its_base_warns_on_the_command_line(tmp_path, base_ckpt, demo_data):
    """A real 2-epoch new-class run from a base that says (train_metrics) it reached 0.5 mAP50-95 on its own
    data: the tiny adapter is far below it, the CLI prints the warning and the metadata records it."""
    from click.testing import CliRunner

    from edge_lora.cli.main import main

    ckpt = torch.load(base_ckpt, map_location="cpu", weights_only=False)
    ckpt["train_metrics"] = {"metrics/mAP50-95(B)": 0.5, "metrics/mAP50(B)": 0.8}
    base = tmp_path / "base.pt"
    torch.save(ckpt, base)
    data = yaml.safe_load(demo_data.line_b_yaml.read_text())
    data["names"] = {0: "crack", 1: "void", 2: "burr"}  # new class names: the head is rebuilt
    root = Path(shutil.copytree(Path(data["path"]), tmp_path / "new"))
    data["path"] = str(root)
    (tmp_path / "new.yaml").write_text(yaml.safe_dump(data))
    sets = [
        a
        for k, v in fast_train_args().items()
        if k not in ("lr0", "optimizer")
        for a in ("--set", f"{k}={v}")
    ]
    r = CliRunner().invoke(
        main,
        ["train", "--base", str(base), "--data", str(tmp_path / "new.yaml"), "--out", str(tmp_path / "ad"),
         "--epochs", "2", "--imgsz", str(IMGSZ), "--batch", "4", "--workers", "0", "--rank", "4",
         "--optimizer", "AdamW", "--lr", "0.01", *sets],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    # The recipe is printed before training: the new-class defaults, and the flags given winning over them.
    assert (
        "recipe for new classes (head rebuilt): targets all (recipe: new classes); norm train (recipe: new "
        "classes); optimizer AdamW (--optimizer); lr 0.01 (--lr)" in " ".join(r.output.split())
    )
    meta = json.loads((tmp_path / "ad" / "edge_lora.json").read_text())
    assert meta["start_metrics"]["mAP50-95"] == 0.5 and "checkpoint" in meta["start_metrics"]["source"]
    (warning,) = meta["warnings"]
    assert warning["code"] == "far-below-base"
    assert "warning: the adapter's best val mAP50-95" in r.output and warning["fix"] in " ".join(
        r.output.split()
    )
