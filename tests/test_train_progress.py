"""Training progress without a terminal (a log file, CI) and the Ultralytics hooks the trainer relies on."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from conftest import IMGSZ, fast_train_args

from edge_lora.cli.main import main
from edge_lora.errors import ToolError


@pytest.mark.slow
def test_train_prints_one_line_per_epoch_without_a_terminal(tmp_path, base_ckpt, demo_data, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --out, as users type it
    extra = [f"--set={k}={v}" for k, v in fast_train_args().items()]
    args = ["train", "--base", base_ckpt, "--data", demo_data.line_b_yaml, "--out", "a"]
    args += ["--epochs", "2", "--imgsz", IMGSZ, "--batch", "4", "--workers", "0", *extra]
    res = CliRunner().invoke(main, [str(a) for a in args])  # CliRunner's stdout is not a TTY
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in lines] == ["1/2", "2/2"], res.output  # not "3/2" for the final check
    # Ultralytics' run log lands inside the adapter package (a relative --out is not moved under runs/)
    assert (tmp_path / "a" / "training").is_dir()
    for ln in lines:
        assert re.search(r"loss box \d+\.\d{3} cls \d+\.\d{3}", ln), ln
        assert re.search(r"val mAP50-95 \d\.\d{4} mAP50 \d\.\d{4}\s+\d+s$", ln), ln


def test_missing_ultralytics_hook_is_refused_up_front(monkeypatch):
    from ultralytics.models.yolo.detect import DetectionTrainer

    from edge_lora.train.trainer import check_trainer_hooks

    check_trainer_hooks()  # the installed, tested Ultralytics has every hook
    monkeypatch.setattr(DetectionTrainer, "_build_train_pipeline", None)
    with pytest.raises(ToolError, match=r"_build_train_pipeline.*ultralytics>=8\.4\.190,<8\.5"):
        check_trainer_hooks()
