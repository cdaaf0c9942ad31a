"""Accuracy-aware mixed precision for the QDQ path (issue 11.2): the trial graphs the search measures, the
search itself, and the graph that ships.

Real tiny YOLO26 exports (a BatchNorm-recalibrated random model, as in test_export_onnx.py). Such a model
detects nothing real, so the search's labelled images take the FP32 graph's own confident detections as
ground truth: FP32 then scores high by construction and INT8 loses measurably, which is what the search
needs to have something to recover.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import lively_checkpoint

from edge_lora.export.calibration import select_calibration
from edge_lora.export.labelled import LabelledImage, labelled_images
from edge_lora.export.onnx.exporter import export_onnx
from edge_lora.export.onnx.float_revert import quantized_nodes, revert_to_float
from edge_lora.export.onnx.mixed_precision import OnnxMapScorer, search_float_nodes
from edge_lora.export.onnx.qdq import quantize_qdq
from edge_lora.export.policy import QuantPolicy, plan
from edge_lora.profiles import CalibRecipe, load_profile
from edge_lora.validate.labels import GroundTruth

pytestmark = pytest.mark.slow  # exports tiny models

IMGSZ = 128


@pytest.fixture(scope="module")
def fp32(tmp_path_factory, base_ckpt, demo_data) -> Path:
    import cv2

    from edge_lora.models import load_detection_model

    train = sorted((demo_data.root / "line_b" / "images" / "train").glob("*.png"))
    model = load_detection_model(base_ckpt).model
    ckpt = lively_checkpoint(
        model, [cv2.imread(str(p)) for p in train], tmp_path_factory.mktemp("ckpt") / "m.pt", imgsz=IMGSZ
    )
    return export_onnx(ckpt, tmp_path_factory.mktemp("onnx") / "model.onnx", imgsz=IMGSZ).path


@pytest.fixture(scope="module")
def calib(tmp_path_factory, demo_data):
    r = CalibRecipe.model_validate(
        {"schema_version": 1, "name": "tiny", "description": "test", "num_images": 4, "min_images": 2}
    )
    return select_calibration(demo_data.line_b_yaml, r, tmp_path_factory.mktemp("calib"))


@pytest.fixture(scope="module")
def plain(tmp_path_factory, fp32, calib):
    folder = tmp_path_factory.mktemp("qdq")
    profile = load_profile("cpu-onnxruntime")
    res = quantize_qdq(
        fp32, folder / "plain.onnx", calib, QuantPolicy.from_profile(profile), profile=profile,
        calibration_cache=folder / "ranges.json",
    )  # fmt: skip
    return res, folder / "ranges.json"


def _run(model: onnx.ModelProto | Path, batch: np.ndarray) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


@pytest.fixture(scope="module")
def items(fp32, demo_data) -> list[LabelledImage]:
    """Demo train images whose ground truth is the FP32 graph's confident detections (see module doc)."""
    from edge_lora.runtime.prepost import postprocess

    out = []
    for item in labelled_images(demo_data.line_b_yaml, IMGSZ, 12, "train"):
        det = postprocess(_run(fp32, item.batch), [item.info], end2end=True, conf=0.001, nc=3)[0]
        keep = np.argsort(-det.scores)[:10]
        out.append(dataclasses.replace(item, gt=GroundTruth(det.boxes[keep], det.class_ids[keep])))
    return out


def test_reverting_every_quantized_conv_gives_back_the_fp32_graph(fp32, plain, items):
    qdq, fp = onnx.load(str(plain[0].path)), onnx.load(str(fp32))
    convs = quantized_nodes(qdq)
    assert len(convs) > 10
    batch = items[0].batch
    reverted = revert_to_float(qdq, fp, convs)
    assert not quantized_nodes(reverted)
    np.testing.assert_allclose(_run(reverted, batch), _run(fp32, batch), rtol=0, atol=1e-4)
    assert np.abs(_run(qdq, batch) - _run(fp32, batch)).max() > 1e-3  # INT8 itself does differ
    with pytest.raises(KeyError):
        revert_to_float(qdq, fp, ["/no/such/Conv"])


def test_the_trial_the_search_measures_is_the_graph_that_ships(tmp_path, fp32, plain, calib, items):
    """A trial (QDQ rewired) equals ONNX Runtime's own quantization with those convs excluded, scales read
    from the same calibration cache: what the search scored is what is exported."""
    res, cache = plain
    qdq, fp = onnx.load(str(res.path)), onnx.load(str(fp32))
    chosen = quantized_nodes(qdq)[1:4]
    profile = load_profile("cpu-onnxruntime")
    policy = dataclasses.replace(QuantPolicy.from_profile(profile), float_nodes=tuple(chosen))
    assert plan(fp32, policy).reasons[chosen[0]] == "accuracy_aware"
    shipped = quantize_qdq(
        fp32, tmp_path / "mixed.onnx", calib, policy, profile=profile, calibration_cache=cache,
        record_extra={"accuracy_aware": {"float_nodes": chosen}},
    )  # fmt: skip
    shipped_proto = onnx.load(str(shipped.path))
    assert set(quantized_nodes(qdq)) - set(quantized_nodes(shipped_proto)) == set(chosen)
    for item in items[:3]:
        np.testing.assert_allclose(
            _run(shipped_proto, item.batch), _run(revert_to_float(qdq, fp, chosen), item.batch), atol=1e-4
        )
    sidecar = json.loads(Path(str(shipped.sidecar)).read_text()) if shipped.sidecar else {}
    assert "accuracy_aware" in json.dumps(sidecar)


def test_search_recovers_accuracy_with_few_float_convs(fp32, plain, items):
    qdq, fp = onnx.load(str(plain[0].path)), onnx.load(str(fp32))
    names = {0: "a", 1: "b", 2: "c"}
    result = search_float_nodes(fp, qdq, items, names, end2end=True, target_points=0.0, max_float_layers=3)
    assert result.int8_drop_points > 0.5, "the fixture must give INT8 something to lose"
    assert 1 <= len(result.float_nodes) <= 3
    assert len(result.steps) <= 3
    # The chosen prefix is the best one measured, and its score is reproducible from the graph alone.
    assert result.final_map == max([result.int8_map, *(s.map50_95 for s in result.steps)])
    assert result.final_map > result.int8_map
    scorer = OnnxMapScorer(names, end2end=True)
    again = scorer.score(items, scorer.detect(revert_to_float(qdq, fp, result.float_nodes), items))
    assert again == pytest.approx(result.final_map, abs=1e-9)
    record = json.loads(json.dumps(result.to_dict()))
    assert record["float_nodes"] == list(result.float_nodes)
    assert all(s["latency_ms"] > 0 for s in record["steps"])
    assert record["drop_points"] < record["int8_drop_points"]


def test_search_stops_at_once_when_int8_is_within_target(fp32, plain, items):
    qdq, fp = onnx.load(str(plain[0].path)), onnx.load(str(fp32))
    result = search_float_nodes(fp, qdq, items, {0: "a", 1: "b", 2: "c"}, end2end=True, target_points=100.0)
    assert result.float_nodes == () and result.steps == () and result.trials == 2
    assert result.within_target


def test_profile_field_is_schema_validated():
    from edge_lora.errors import ProfileError

    p = load_profile("cpu-onnxruntime")
    on = p.with_overrides(
        {"quantization.accuracy_aware": True, "quantization.max_float_layers": 4}, origin="t"
    )
    assert on.quantization.accuracy_aware and on.quantization.target_map_drop == 0.2
    assert on.sha256() != p.sha256()
    with pytest.raises(ProfileError, match="max_float_layers"):
        p.with_overrides({"quantization.max_float_layers": -1}, origin="t")
    with pytest.raises(ProfileError, match="target_map_drop"):
        p.with_overrides({"quantization.target_map_drop": "a lot"}, origin="t")
