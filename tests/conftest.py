"""Shared fixtures: a tiny synthetic dataset, a tiny YOLO26n base checkpoint, a trained adapter.

Everything is built offline from ``yolo26n.yaml`` and the project's own synthetic generator, at 64 px,
once per test session.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")  # Ultralytics: no update checks or telemetry from tests
# Keep Ultralytics' settings.json out of the user's home: tests are hermetic in CI.
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="edge-lora-yolo-cfg-"))

IMGSZ = 64
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

#: Fixtures that train, export or build (seconds each, once per session or module). A test using one is
#: marked ``slow`` automatically, so ``make test-fast`` (``-m "not slow"``) stays the quick unit tier however
#: tests are added; whole modules of end-to-end tests also carry ``pytestmark = pytest.mark.slow``.
SLOW_FIXTURES = frozenset({"trained_adapter", "onnx_model", "detectors", "built", "bundle"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory):
    """The two-line synthetic dataset, 8 train / 4 val images per line at 96 px."""
    from edge_lora.data.synth import generate_demo_dataset

    return generate_demo_dataset(
        tmp_path_factory.mktemp("data") / "demo", n_train=8, n_val=4, imgsz=96, seed=0
    )


def make_base(path: Path, names: dict[int, str], seed: int = 0) -> Path:
    """A randomly initialised YOLO26n saved as a plain Ultralytics checkpoint (stands in for a trained base)."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from edge_lora.models import save_checkpoint

    torch.manual_seed(seed)
    model = DetectionModel("yolo26n.yaml", nc=len(names), verbose=False)
    model.names = dict(names)
    return save_checkpoint(
        model, path, train_args={"imgsz": IMGSZ}, provenance={"kind": "test-base", "seed": seed}
    )


def lively_checkpoint(model, images_bgr: list, path: Path, *, imgsz: int) -> Path:
    """Save ``model`` after making it "alive": a random-init YOLO scores every anchor the same, so BatchNorm
    is recalibrated on real images (at ``imgsz``) and the class biases are zeroed; outputs then depend on
    the input, and parity/agreement checks mean something."""
    import torch

    from edge_lora.models import save_checkpoint
    from edge_lora.runtime.prepost import preprocess

    x = torch.from_numpy(preprocess(images_bgr, imgsz)[0])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    head = model.model[-1]
    for branch in (head.cv3, getattr(head, "one2one_cv3", None)):
        for seq in branch or ():
            seq[-1].bias.data.zero_()
    return save_checkpoint(model, path, train_args={"imgsz": IMGSZ}, provenance={"kind": "test"})


@pytest.fixture(scope="session")
def base_ckpt(tmp_path_factory: pytest.TempPathFactory, demo_data) -> Path:
    from edge_lora.data.synth import NAMES

    return make_base(tmp_path_factory.mktemp("base") / "base.pt", NAMES)


def fast_train_args() -> dict:
    """Ultralytics settings that make a 2-epoch run on 8 images actually take optimizer steps."""
    return {"nbs": 4, "warmup_epochs": 0, "mosaic": 0.0, "close_mosaic": 0, "lr0": 0.01, "optimizer": "AdamW"}


def train_line_b(base: Path, data: Path, out: Path, **options):
    """``train()`` of a rank-4 LoRA adapter for 2 epochs on ``data`` at the tests' size (``options`` add to
    ``TrainOptions``, e.g. ``quant_aware``); returns the TrainResult."""
    from edge_lora.train.api import train
    from edge_lora.train.config import LoraSettings, TrainOptions

    return train(
        TrainOptions(
            base=base, data=data, out=out, lora=LoraSettings(rank=4, alpha=8), epochs=2, imgsz=IMGSZ,
            batch=4, workers=0, extra=fast_train_args(), **options,
        )
    )  # fmt: skip


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory: pytest.TempPathFactory, demo_data, base_ckpt):
    """A LoRA adapter trained for 2 epochs on line B (returns the TrainResult)."""
    return train_line_b(base_ckpt, demo_data.line_b_yaml, tmp_path_factory.mktemp("adapters") / "line_b")


@pytest.fixture
def tiny_fs(tmp_path: Path):
    """``mount(size_kib) -> folder``: a real, small tmpfs (a full disk to write into); unmounted afterwards.

    ``mount`` again on the same folder resizes it (``remount``), which is how a test "frees space". Needs
    root with mount rights (this project's CI has them); skipped with the reason elsewhere.
    """
    import subprocess

    mounted: list[Path] = []

    def mount(size_kib: int, name: str = "fs") -> Path:
        where = tmp_path / name
        where.mkdir(exist_ok=True)
        opts = f"size={size_kib}k" + (",remount" if where in mounted else "")
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'mount failed'}); needs root")
        if where not in mounted:
            mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture(scope="session")
def qat_adapter(tmp_path_factory: pytest.TempPathFactory, demo_data, base_ckpt):
    """A quant-aware LoRA adapter (``--quant-aware jetson``: s8s8) trained 2 epochs on line B:
    ``(TrainResult, AdapterPackage)``."""
    from edge_lora.train.adapter_io import read_adapter

    out = tmp_path_factory.mktemp("qat") / "line_b_s8s8"
    result = train_line_b(base_ckpt, demo_data.line_b_yaml, out, quant_aware="jetson")
    return result, read_adapter(out)
