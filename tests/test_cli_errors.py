"""Bad input: one clear line naming the file or option, exit code 2, nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import IMGSZ

from edge_lora.cli.main import main


def _invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def _assert_clean_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def _train(base, data, out, *extra):
    return _invoke(
        "train",
        "--base",
        base,
        "--data",
        data,
        "--out",
        out,
        "--epochs",
        "1",
        "--imgsz",
        IMGSZ,
        "--batch",
        "4",
        "--workers",
        "0",
        *extra,
    )


def _dataset_copy(demo_data, tmp_path: Path) -> Path:
    root = tmp_path / "d"
    shutil.copytree(demo_data.root / "line_b", root)
    cfg = yaml.safe_load(demo_data.line_b_yaml.read_text()) | {"path": str(root)}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(cfg))
    return root


def test_missing_data_yaml(tmp_path, base_ckpt):
    r = _train(base_ckpt, tmp_path / "nope.yaml", tmp_path / "out")
    _assert_clean_error(r, "nope.yaml")
    assert not (tmp_path / "out").exists()


def test_invalid_data_yaml(tmp_path, base_ckpt):
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    _assert_clean_error(_train(base_ckpt, tmp_path / "bad.yaml", tmp_path / "out"), "bad.yaml")


def test_empty_image_folder(tmp_path, base_ckpt, demo_data):
    root = _dataset_copy(demo_data, tmp_path)
    for f in (root / "images" / "train").iterdir():
        f.unlink()
    _assert_clean_error(_train(base_ckpt, tmp_path / "d.yaml", tmp_path / "out"), "train")
    assert not (tmp_path / "out").exists()


def test_class_id_out_of_range(tmp_path, base_ckpt, demo_data):
    root = _dataset_copy(demo_data, tmp_path)
    label = sorted((root / "labels" / "train").glob("*.txt"))[0]
    label.write_text("7 0.5 0.5 0.1 0.1\n")
    _assert_clean_error(_train(base_ckpt, tmp_path / "d.yaml", tmp_path / "out"), label.name)


def test_corrupt_image(tmp_path, base_ckpt, demo_data):
    root = _dataset_copy(demo_data, tmp_path)
    img = sorted((root / "images" / "train").glob("*.png"))[0]
    img.write_bytes(b"garbage")
    _assert_clean_error(_train(base_ckpt, tmp_path / "d.yaml", tmp_path / "out"), img.name)


def test_base_that_is_not_a_checkpoint(tmp_path, demo_data):
    fake = tmp_path / "fake.pt"
    fake.write_text("not a model")
    _assert_clean_error(
        _train(fake, demo_data.line_b_yaml, tmp_path / "out"), "fake.pt", "not a YOLO checkpoint"
    )


def test_missing_base_file(tmp_path, demo_data):
    _assert_clean_error(
        _train(tmp_path / "absent.pt", demo_data.line_b_yaml, tmp_path / "out"), "absent.pt", "not found"
    )


def test_rank_must_be_positive(tmp_path, base_ckpt, demo_data):
    _assert_clean_error(_train(base_ckpt, demo_data.line_b_yaml, tmp_path / "out", "--rank", "0"), "--rank")


def test_output_exists_without_overwrite(tmp_path, base_ckpt, demo_data):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    _assert_clean_error(_train(base_ckpt, demo_data.line_b_yaml, tmp_path / "out"), "--out", "--overwrite")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("damage", ["missing", "tampered"])
def test_adapter_missing_or_tampered_file(tmp_path, base_ckpt, trained_adapter, demo_data, damage):
    adapter = tmp_path / "a"
    shutil.copytree(trained_adapter.out, adapter)
    weights = adapter / "adapter_model.safetensors"
    if damage == "missing":
        weights.unlink()
    else:
        data = bytearray(weights.read_bytes())
        data[-10] ^= 0x01
        weights.write_bytes(bytes(data))
    r = _invoke(
        "merge",
        "--base",
        base_ckpt,
        "--adapter",
        adapter,
        "--out",
        tmp_path / "m.pt",
        "--data",
        demo_data.line_b_yaml,
    )
    _assert_clean_error(r, "adapter_model.safetensors")
    assert not (tmp_path / "m.pt").exists()


def test_unknown_target_lists_valid_names():
    r = _invoke("targets", "show", "jetson-orin-nanoo")
    _assert_clean_error(r, "cpu-onnxruntime")


def test_info_reports_adapter(trained_adapter, tmp_path):
    r = _invoke("info", trained_adapter.out, "--json", tmp_path / "i.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "i.json").read_text())["kind"] == "adapter"
