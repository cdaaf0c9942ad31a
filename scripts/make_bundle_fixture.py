"""Regenerate ``tests/fixtures/bundle_v1/``: a deploy bundle built by this checkout's ``build()``.

The bundle is the compatibility fixture of issue 10 ("bundles built before the change still verify and
run"): ``tests/test_bundle_compat.py`` verifies and runs it with the current code and compares the
detections with those this script recorded. Regenerate it only on purpose (a new bundle format): the point
of the fixture is that it was made by older code.

What it builds, all offline and small enough to commit (well under 3 MB): the synthetic line-B dataset at
64 px, a randomly initialised YOLO26 at a tiny width (made "alive" the way tests/conftest.py does it, so its
outputs depend on the input), a LoRA adapter trained for one epoch, and one ``cpu-onnxruntime`` bundle (INT8,
FP32 fallback).

Usage: ``.venv/bin/python scripts/make_bundle_fixture.py [--out tests/fixtures/bundle_v1]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="edge-lora-yolo-cfg-"))

REPO = Path(__file__).resolve().parents[1]
IMGSZ = 64
#: Width 1/16 of YOLO26's full size (channels floor at 8): the ONNX models stay a few hundred kB.
SCALE = [0.33, 0.0625, 256]
#: One deployment threshold for the recorded run (the CLI's --conf): every box of the tiny model clears it
#: by far (scores ~0.52-0.82), so the record is the whole output and no score sits on the threshold.
RUN_CONF = 0.3


def _tiny_base(path: Path, names: dict[int, str], images: list[Path]) -> Path:
    """A tiny random YOLO26 with recalibrated BatchNorm and zeroed class biases (see conftest.lively_checkpoint)."""
    import cv2
    import torch
    import yaml
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import ROOT

    from edge_lora.models import save_checkpoint
    from edge_lora.runtime.prepost import preprocess

    cfg = yaml.safe_load((ROOT / "cfg" / "models" / "26" / "yolo26.yaml").read_text())
    cfg["scales"] = {"n": SCALE}
    torch.manual_seed(0)
    model = DetectionModel(cfg, nc=len(names), verbose=False)
    model.names = dict(names)
    x = torch.from_numpy(preprocess([cv2.imread(str(p)) for p in images], IMGSZ)[0])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    head = model.model[-1]
    for branch in (head.cv3, getattr(head, "one2one_cv3", None)):
        for seq in branch or ():
            seq[-1].bias.data.zero_()
    return save_checkpoint(
        model, path, train_args={"imgsz": IMGSZ}, provenance={"kind": "bundle-fixture-base", "seed": 0}
    )


def _profile(work: Path) -> Path:
    """``cpu-onnxruntime`` (INT8, FP32 fallback), a recipe 8 train images satisfy, short bench, loose gate."""
    (work / "fixture-calib.yaml").write_text(
        "schema_version: 1\nname: fixture\ndescription: bundle fixture recipe\nnum_images: 8\n"
        "min_images: 4\nsplit: train\nselection: stratified\ndedupe: true\nseed: 0\nvalidation_images: 4\n"
    )
    path = work / "cpu-fixture.yaml"
    path.write_text(
        "extends: cpu-onnxruntime\nname: cpu-fixture\ncalibration: fixture-calib.yaml\n"
        "bench:\n  warmup_runs: 1\n  timed_runs: 10\n"
        # A random model's boxes are near-ties, so even FP32 agrees only ~0.8 with its reference: the gate
        # is loosened, the fixture is about the bundle format, not accuracy.
        "gates:\n  min_agreement_f1: 0.5\n"
    )
    return path


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "bundle_v1")
    parser.add_argument(
        "--commit",
        help="Commit the code was taken from, for the README (default: git HEAD of this checkout).",
    )
    args = parser.parse_args()

    from edge_lora import __version__
    from edge_lora.build import build
    from edge_lora.data.synth import NAMES, generate_demo_dataset
    from edge_lora.runtime.line import LineRuntime
    from edge_lora.train.api import train
    from edge_lora.train.config import LoraSettings, TrainOptions

    work = Path(tempfile.mkdtemp(prefix="edge-lora-fixture-"))
    try:
        demo = generate_demo_dataset(work / "demo", n_train=8, n_val=4, imgsz=IMGSZ, seed=0)
        train_imgs = sorted((demo.root / "line_b" / "images" / "train").glob("*.png"))
        base = _tiny_base(work / "base.pt", NAMES, train_imgs)
        adapter = train(
            TrainOptions(
                base=base,
                data=demo.line_b_yaml,
                out=work / "line_b",
                lora=LoraSettings(rank=4, alpha=8),
                epochs=1,
                imgsz=IMGSZ,
                batch=4,
                workers=0,
                extra={"nbs": 4, "warmup_epochs": 0, "mosaic": 0.0, "close_mosaic": 0, "lr0": 0.01},
            )
        )
        result = build(
            base=base,
            adapters=[adapter.out],
            targets=[str(_profile(work))],
            data=demo.line_b_yaml,
            out=work / "dist",
            runs=10,
            warmup=1,
        )
        if not result.passed:
            raise SystemExit(f"the fixture bundle failed its gates: {result.bundles[0].to_dict()}")
        built = result.bundles[0].bundle

        out: Path = args.out
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        bundle = Path(shutil.copytree(built, out / built.name))
        frames = out / "frames"
        frames.mkdir()
        for p in sorted((demo.root / "line_b" / "images" / "val").glob("*.png")):
            shutil.copy(p, frames / p.name)

        records = []
        with LineRuntime(bundle, conf=RUN_CONF) as line:
            import cv2

            for p in sorted(frames.glob("*.png")):
                rec = line.process(cv2.imread(str(p)), frame_id=p.name)
                records.append({k: rec[k] for k in ("frame", "detections", "verdict", "reasons")})
        commit = args.commit or _commit()
        expected = {"conf": RUN_CONF, "made_by_commit": commit, "frames": records}
        (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
        (out / "README.md").write_text(
            "# Bundle compatibility fixture\n\n"
            f"`{bundle.name}/` is a deploy bundle built by edge-lora {__version__} at commit `{commit}` "
            "(before issue 10's restructuring of `build()`), with `scripts/make_bundle_fixture.py`: a tiny "
            f"random YOLO26 (width {SCALE[1]}), a one-epoch LoRA adapter on the synthetic line B, target "
            f"`cpu-fixture` (`cpu-onnxruntime`, INT8 with FP32 fallback), {IMGSZ} px.\n\n"
            "`frames/` are the line-B validation images; `expected.json` holds the detections the bundle gave "
            f"on them when it was made (`conf={RUN_CONF}`). `tests/test_bundle_compat.py` checks that today's "
            "`verify` and `run` (Python API and CLI) still accept the bundle and give the same detections.\n\n"
            "Do not regenerate it to make a failing test pass: the fixture stands for bundles already "
            "deployed.\n"
        )
        n = sum(len(r["detections"]) for r in records)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(f"wrote {out} ({size / 1e6:.2f} MB, {n} detections on {len(records)} frames)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
