"""scripts/gpu_check.py, the GPU check's steps, as far as a CPU goes: timeouts, dependencies between steps,
the time budget, the summary, the polars stand-in, and the trainer probe on a real (1-epoch, CPU) LoRA run."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _checker(gc, tmp_path: Path, budget: float = 120.0):
    args = argparse.Namespace(
        work=str(tmp_path / "work"),
        out=str(tmp_path / "out"),
        budget=budget,
        elapsed=0.0,
        python=sys.executable,
        device="cpu",
    )
    c = gc.Checker(args)
    c.logs.mkdir(parents=True)
    return c


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_timeout_kills_the_step_and_its_children(gc, tmp_path):
    c = _checker(gc, tmp_path)
    pidfile = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(120)\n"
    )
    start = time.monotonic()
    rec = c.step("sleeper", [sys.executable, "-c", code], timeout=2, log="t")
    assert rec["status"] == "fail" and "timed out" in rec["reason"]
    assert time.monotonic() - start < 30
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(child), "the step's child process outlived the timeout"


def test_needs_budget_checks_and_summary(gc, tmp_path):
    c = _checker(gc, tmp_path)
    ok = c.step(
        "ok",
        [sys.executable, "-c", "print('GPU 42')"],
        timeout=30,
        log="t",
        check=lambda rc, out: {"seen": "GPU 42" in out},
    )
    assert ok["status"] == "pass" and ok["seen"] is True and ok["rc"] == 0
    bad = c.step(
        "bad", [sys.executable, "-c", "import sys; print('error: broken'); sys.exit(2)"], timeout=30, log="t"
    )
    assert bad["status"] == "fail" and "exit code 2" in bad["reason"] and "error: broken" in bad["reason"]
    dep = c.step("dependent", [sys.executable, "-c", "pass"], timeout=30, log="t", needs=("ok", "bad"))
    assert dep["status"] == "skip" and dep["reason"] == "needs bad"

    def refuse(rc, out):
        raise gc.Skip("no binding here")

    skipped = c.step("maybe", None, timeout=1, log="t", check=refuse)
    assert skipped["status"] == "skip" and skipped["counts"] is False
    failed_check = c.step("checked", None, timeout=1, log="t", check=lambda rc, out: gc._fail("numbers off"))
    assert failed_check["status"] == "fail" and failed_check["reason"] == "numbers off"

    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [s["name"] for s in summary["steps"]] == ["ok", "bad", "dependent", "maybe", "checked"]
    assert summary["ok"] is False and summary["failed"] == 2 and summary["skipped"] == 2

    spent = _checker(gc, tmp_path / "spent", budget=0.0)
    late = spent.step("late", [sys.executable, "-c", "pass"], timeout=30, log="t")
    assert late["status"] == "skip" and "time budget" in late["reason"]


def test_uncounted_skips_do_not_fail_the_check(gc, tmp_path):
    c = _checker(gc, tmp_path)
    c.step("ok", None, timeout=1, log="t")
    c.step("trt", None, timeout=1, log="t", skip="tensorrt does not import here", counts=False)
    summary = c.finish()
    assert summary["ok"] is True and summary["final"] is True
    assert (tmp_path / "out" / "records.tar.gz").is_file()


def test_polars_stub_fails_the_way_ultralytics_expects(gc, tmp_path):
    (tmp_path / "polars").mkdir()
    (tmp_path / "polars" / "__init__.py").write_text(gc.POLARS_STUB)
    code = (
        "import polars as pl\n"
        "try:\n"
        "    pl.read_csv(b'a\\n1\\n')\n"  # what Ultralytics' read_results_csv does, inside try/except Exception
        "except Exception as e:\n"
        "    print(type(e).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "ImportError", out.stderr


def test_cli_wrapper_passes_the_exit_code(tmp_path):
    ok = subprocess.run(
        [sys.executable, str(SCRIPT), "cli", "--", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0 and "edge-lora" in ok.stdout
    bad = subprocess.run(
        [sys.executable, str(SCRIPT), "cli", "--", "info", str(tmp_path / "missing")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0


@pytest.mark.slow
def test_probe_records_amp_and_the_frozen_base(tmp_path, demo_data, base_ckpt):
    """One CPU epoch through the wrapper: the probe sees AMP off, float32 convs and an untouched base."""
    probe = tmp_path / "probe.json"
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    cmd = [
        sys.executable,
        str(SCRIPT),
        "cli",
        "--probe",
        str(probe),
        "--",
        "train",
        "--base",
        str(base_ckpt),
        "--data",
        str(demo_data.line_b_yaml),
        "--out",
        str(tmp_path / "ad"),
        "--rank",
        "4",
        "--alpha",
        "8",
        "--epochs",
        "1",
        "--imgsz",
        "64",
        "--batch",
        "4",
        "--workers",
        "0",
        "--set",
        "nbs=4",
        "--set",
        "warmup_epochs=0",
        "--set",
        "mosaic=0.0",
        "--set",
        "lr0=0.01",
        "--set",
        "optimizer=AdamW",
    ]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rec = json.loads(probe.read_text())
    assert rec["amp"] is False and rec["scaler_enabled"] is False and rec["device"] == "cpu"
    assert rec["first_step_dtypes"] == {"conv": "torch.float32", "lora_layer": "torch.float32"}
    frozen = rec["frozen_identical"]
    assert frozen["tensors"] > 100 and frozen["model_changed"] == 0 and frozen["ema_changed"] == 0
    assert rec["trainable_tensors"] > 0 and len(rec["epochs"]) == 1
