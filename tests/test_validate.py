"""validate(): candidate vs unmerged reference, one evaluator, gates and exit codes (tiny model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import IMGSZ

from edge_lora.cli.main import main
from edge_lora.errors import InputError
from edge_lora.profiles import resolve_target
from edge_lora.validate.compare import validate
from edge_lora.validate.reference import torch_reference

pytestmark = pytest.mark.slow  # end to end: trains, exports or builds tiny models


@pytest.fixture(scope="module")
def merged_onnx(tmp_path_factory, trained_adapter, base_ckpt, demo_data) -> Path:
    """The trained adapter merged and exported to ONNX (end-to-end YOLO26 head) by Ultralytics."""
    from ultralytics import YOLO

    from edge_lora.merge import merge

    work = tmp_path_factory.mktemp("validate")
    merge(base_ckpt, trained_adapter.out, work / "merged.pt", data=demo_data.line_b_yaml)
    return Path(YOLO(str(work / "merged.pt")).export(format="onnx", imgsz=IMGSZ, nms=False, simplify=False))


def _profile(tmp_path: Path, **gates) -> Path:
    lines = [
        "extends: cpu-onnxruntime",
        "name: cpu-test",
        f"imgsz: {IMGSZ}",
        "bench:",
        "  warmup_runs: 2",
        "  timed_runs: 10",
    ]
    if gates:
        lines.append("gates:")
        lines += [f"  {k}: {v}" for k, v in gates.items()]
    path = tmp_path / "profile.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def against_unmerged(tmp_path, base_ckpt, trained_adapter, demo_data) -> dict:
    """validate() keyword arguments: line B val, the unmerged base + adapter as reference, 5 timed runs."""
    return dict(
        data=demo_data.line_b_yaml,
        **_unmerged(_profile(tmp_path), base_ckpt, trained_adapter),
        warmup=1,
        runs=5,
    )


def _unmerged(profile: Path, base_ckpt: Path, trained_adapter) -> dict:
    """``target`` and ``reference``: the resolved profile and the PyTorch base + adapter the host side builds."""
    target, _ = resolve_target(profile)
    return {"target": target, "reference": torch_reference(base_ckpt, trained_adapter.out, target=target)}


def test_merged_fp32_agrees_with_unmerged_reference(merged_onnx, against_unmerged):
    report = validate(merged_onnx, **against_unmerged)
    assert report.images == 4 and not report.skipped_images
    assert report.agreement.f1 == pytest.approx(1.0)
    assert abs(report.map_delta_points) < 1e-6
    assert report.passed and report.return_code == 0
    lat = report.candidate.latency["e2e"]
    assert lat.count == 5 and lat.p50_ms <= lat.p90_ms <= lat.p99_ms <= lat.max_ms
    written = json.loads(json.dumps(report.to_dict()))  # serialisable, and read back whole
    from edge_lora.validate.compare import ValidationReport

    back = ValidationReport.from_dict(written)
    assert json.loads(json.dumps(back.to_dict())) == written and back.passed == report.passed


def test_reference_pass_is_reused_from_the_cache(merged_onnx, against_unmerged):
    cache: dict = {}
    kwargs = {**against_unmerged, "reference_cache": cache}
    first = validate(merged_onnx, **kwargs)
    assert len(cache) == 1
    (entry,) = cache.values()
    second = validate(merged_onnx, **kwargs)
    assert len(cache) == 1 and next(iter(cache.values())) is entry  # the reference did not run again
    assert second.reference.latency["e2e"] == first.reference.latency["e2e"]
    assert second.reference.accuracy == first.reference.accuracy
    assert second.agreement.f1 == pytest.approx(1.0) and second.parity == first.parity
    # other settings (here: fewer images) are another reference pass
    validate(merged_onnx, **kwargs, max_images=2)
    assert len(cache) == 2


def test_gate_failure_exits_1(tmp_path, merged_onnx, base_ckpt, trained_adapter, demo_data):
    profile = _profile(tmp_path, min_speedup=1000.0)
    result = CliRunner().invoke(
        main,
        [
            "validate",
            "--candidate",
            str(merged_onnx),
            "--reference",
            str(base_ckpt),
            "--adapter",
            str(trained_adapter.out),
            "--data",
            str(demo_data.line_b_yaml),
            "--target",
            str(profile),
            "--runs",
            "3",
            "--warmup",
            "1",
            "--json",
            str(tmp_path / "v.json"),
        ],
    )
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output
    assert "mAP50-95 COCO" in result.output and "mAP50-95 Ultralytics" in result.output  # both figures
    assert json.loads((tmp_path / "v.json").read_text())["passed"] is False


def test_undecodable_image_is_skipped_and_counted(
    tmp_path, merged_onnx, base_ckpt, trained_adapter, demo_data
):
    import yaml

    root = tmp_path / "data"
    shutil.copytree(demo_data.root / "line_b", root)
    broken = sorted((root / "images" / "val").glob("*.png"))[0]
    broken.write_bytes(b"not an image")
    cfg = yaml.safe_load(demo_data.line_b_yaml.read_text()) | {"path": str(root)}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(cfg))
    report = validate(
        merged_onnx,
        data=tmp_path / "d.yaml",
        **_unmerged(_profile(tmp_path), base_ckpt, trained_adapter),
        warmup=1,
        runs=3,
    )
    assert report.images == 3 and report.skipped_images == [str(broken)]


def test_class_names_must_match_the_data(tmp_path, merged_onnx, base_ckpt, trained_adapter, demo_data):
    import yaml

    cfg = yaml.safe_load(demo_data.line_b_yaml.read_text())
    cfg["names"] = {0: "scratch", 1: "hole", 2: "bridge"}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(InputError, match="class names"):
        validate(
            merged_onnx,
            data=tmp_path / "d.yaml",
            **_unmerged(_profile(tmp_path), base_ckpt, trained_adapter),
            warmup=1,
            runs=3,
        )


def test_end2end_parity_pairs_rows_not_positions():
    """TopK may swap near-tied rows: parity pairs rows by class and IoU instead of comparing positions."""
    import numpy as np

    from edge_lora.validate.compare import paired_detection_rows

    a = [10, 10, 50, 50, 0.90, 1]
    b = [60, 60, 90, 90, 0.90, 2]
    low = [0, 0, 5, 5, 0.01, 0]
    ref = np.array([[a, b, low]], np.float32)
    cand = np.array([[b, a, low]], np.float32)  # same detections, other order
    r, c = paired_detection_rows(ref, cand, conf=0.25)
    assert r.shape == (2, 6) and np.array_equal(r, c)  # both paired exactly; the low row is below conf
    moved = cand.copy()
    moved[0, 1, :4] += 2.0  # box a moved by 2 px: still paired, and the difference is visible
    r, c = paired_detection_rows(ref, moved, conf=0.25)
    assert np.abs(r - c).max() == pytest.approx(2.0)
    other_class = cand.copy()
    other_class[0, 1, 5] = 0  # a different class never pairs
    r, _ = paired_detection_rows(ref, other_class, conf=0.25)
    assert r.shape == (1, 6)


def test_validate_takes_exactly_one_reference(tmp_path, demo_data):
    """The comparator builds no reference itself: the caller passes a runner or an exported artifact."""
    from edge_lora.validate.reference import TorchReferenceRunner

    kwargs = {"data": demo_data.line_b_yaml, "target": _profile(tmp_path)}
    with pytest.raises(InputError, match="needs one reference"):
        validate(tmp_path / "model.onnx", **kwargs)
    with pytest.raises(InputError, match="needs one reference"):
        validate(
            tmp_path / "model.onnx",
            **kwargs,
            reference=TorchReferenceRunner(tmp_path / "base.pt"),  # loads nothing until activated
            reference_artifact=tmp_path / "ref.onnx",
        )
