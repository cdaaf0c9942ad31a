"""One parity implementation (issue 10): merge, the export checks and validate give the same numbers.

The same pair of output tensors goes through every caller's own entry point -- ``merge.compare_models`` (two
torch modules that return them), the ONNX export check's verdict, the QDQ sanity check, the OpenVINO IR
check's verdict and validate's accumulator -- and each must report what
:mod:`edge_lora.validate.parity` computes for it. Old JSON (export sidecars, merge reports, validation
parity) still loads into the one :class:`ParityResult`.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from edge_lora.validate.parity import (
    ParityAccumulator,
    ParityResult,
    cosine_similarity,
    detection_parity,
    score_cosine,
    tensor_parity,
)

NC, ANCHORS = 3, 64


def _raw_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A raw ``(1, 4 + nc, anchors)`` detector output (pixel boxes, 0..1 scores) and a slightly off copy."""
    rng = np.random.default_rng(seed)
    ref = np.concatenate(
        [rng.uniform(0, 64, (1, 4, ANCHORS)), rng.uniform(0, 1, (1, NC, ANCHORS))], axis=1
    ).astype(np.float32)
    cand = (ref + rng.normal(0, 1e-4, ref.shape)).astype(np.float32)
    return ref, cand


def _e2e_pair() -> tuple[np.ndarray, np.ndarray]:
    """End-to-end ``(1, K, 6)`` rows whose candidate swaps two tied rows (TopK order is arbitrary)."""
    rows = np.array(
        [[10, 10, 40, 40, 0.9, 1], [12, 12, 44, 44, 0.9, 2], [0, 0, 8, 8, 0.2, 0]], dtype=np.float32
    )
    return rows[None], rows[[1, 0, 2]][None]


def test_merge_onnx_check_qdq_openvino_and_validate_agree_on_one_pair(tmp_path, monkeypatch):
    import torch
    from torch import nn

    from edge_lora.export.onnx import check as onnx_check
    from edge_lora.export.onnx import graph, qdq
    from edge_lora.export.openvino import check as ov_check
    from edge_lora.merge import compare_models

    ref, cand = _raw_pair()
    expected = tensor_parity(ref, cand)
    assert 0 < expected.max_abs < 1e-3 and expected.cosine > 0.999

    # validate: the accumulator over one batch is the tensor parity of that batch.
    acc = ParityAccumulator()
    assert acc.update(ref, cand) == expected
    summary = acc.result()
    assert (summary.max_abs, summary.max_rel, summary.cosine_min) == (
        expected.max_abs,
        expected.max_rel,
        expected.cosine,
    )

    # merge: two modules returning the pair; compare_models converts to numpy and uses the same function.
    class Fixed(nn.Module):
        def __init__(self, out: np.ndarray):
            super().__init__()
            self.out = torch.from_numpy(out)

        def forward(self, x):
            return (self.out.expand(x.shape[0], -1, -1),)

    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.full((32, 32, 3), 127, np.uint8))
    merged = compare_models(Fixed(ref), Fixed(cand), [image], imgsz=32, tolerance=1e-3)
    assert merged.max_abs == pytest.approx(expected.max_abs, rel=0, abs=0)
    assert merged.max_rel == expected.max_rel and merged.passed is (expected.max_rel <= 1e-3)
    assert merged.per_output == {"0": {"max_abs": expected.max_abs, "max_rel": expected.max_rel}}

    # ONNX export check: its max_abs is the tensor's; its max_rel is boxes relative to the largest box
    # coordinate and scores absolute, each built from the same tensor parity of the slices.
    onnx = onnx_check.judge(ref, cand, None, None, end2end=False, tolerance=1e-3)
    boxes = tensor_parity(ref[:, :4], cand[:, :4])
    scores = tensor_parity(ref[:, 4:], cand[:, 4:])
    box_scale = max(1.0, float(np.abs(ref[:, :4]).max()))
    assert onnx.max_abs == expected.max_abs == max(boxes.max_abs, scores.max_abs)
    assert onnx.max_rel == max(boxes.max_abs / box_scale, scores.max_abs) and onnx.passed
    assert onnx == detection_parity(ref, cand, end2end=False, tolerance=1e-3)

    # QDQ sanity check: its cosine agreement is the tensor parity's cosine.
    def fake_run_onnx(model, feed, *, decoded=False):
        return (ref, ref) if model == "fp32" else (cand, cand)

    monkeypatch.setattr(graph, "run_onnx", fake_run_onnx)

    class OneBatch:
        def batches(self, hw, batch, drop_last=False):
            return iter([np.zeros((1, 3, *hw), np.float32)])

    agreement = qdq._agreement("fp32", "qdq", OneBatch(), (32, 32), 1)
    assert agreement["output"] == agreement["decoded"] == round(expected.cosine, 6)
    assert agreement["scores"] == round(scores.cosine, 6)

    # OpenVINO IR check: the same detection parity for the final output, the same cosine for the boxes.
    fp32 = ov_check.judge(ref, cand, ref, cand, end2end=False, precision="fp32", limit=1e-3)
    assert fp32["final"] == onnx.to_dict() and fp32["value"] == onnx.max_rel and fp32["passed"]
    assert fp32["decoded"]["max_rel"] == onnx.max_rel
    int8 = ov_check.judge(ref, cand, ref, cand, end2end=False, precision="int8", limit=0.9)
    assert int8["decoded"]["cosine_boxes"] == boxes.cosine == cosine_similarity(ref[:, :4], cand[:, :4])
    assert int8["decoded"]["cosine_scores"] == score_cosine(ref[:, 4:], cand[:, 4:])
    assert int8["criterion"] == "min_cosine" and int8["passed"]


def test_end2end_verdicts_of_the_onnx_and_openvino_checks_are_one():
    """Tied rows in another order: both export checks re-match them the same way and pass."""
    from edge_lora.export.onnx import check as onnx_check
    from edge_lora.export.openvino import check as ov_check

    ref, got = _e2e_pair()
    onnx = onnx_check.judge(ref, got, None, None, end2end=True, tolerance=1e-3)
    assert onnx.matching == "tie-aware" and onnx.unmatched == 0 and onnx.passed
    ov = ov_check.judge(ref, got, None, None, end2end=True, precision="fp32", limit=1e-3)
    assert ov["final"] == onnx.to_dict() and ov["passed"] and ov["decoded"]["compared"] == "final"
    moved = got.copy()
    moved[0, 0, :4] += 5.0  # a detection without a counterpart fails both
    assert not onnx_check.judge(ref, moved, None, None, end2end=True, tolerance=1e-3).passed
    assert not ov_check.judge(ref, moved, None, None, end2end=True, precision="fp32", limit=1e-3)["passed"]


def test_verdict_against_a_tolerance():
    ref, cand = _raw_pair()
    plain = tensor_parity(ref, cand)
    assert plain.passed is None and plain.tolerance is None  # no limit, no verdict
    assert tensor_parity(ref, cand, tolerance=1.0).passed
    assert not tensor_parity(ref, cand, tolerance=0.0).passed
    broken = cand.copy()
    broken[0, 0, 0] = np.nan
    assert not tensor_parity(ref, broken, tolerance=math.inf).passed  # NaN fails every limit
    assert not detection_parity(ref, broken, end2end=False, tolerance=math.inf).passed


def test_old_json_loads_and_keeps_its_keys():
    """Export sidecars, merge reports and validation tensor parity written before the merge still load,
    and a result writes the same keys it always did."""
    sidecar = {
        "max_abs": 2e-5,
        "max_rel": 1e-6,
        "tolerance": 1e-3,
        "end2end": False,
        "decoded_max_rel": None,
        "matching": "position",
        "unmatched": 0,
        "images": 1,
        "passed": True,
    }
    loaded = ParityResult.from_dict(json.loads(json.dumps(sidecar)))
    assert loaded.passed and loaded.to_dict() == sidecar
    ref, cand = _raw_pair()
    assert detection_parity(ref, cand, end2end=False, tolerance=1e-3).to_dict().keys() == sidecar.keys()

    merge_report = {
        "images": 8,
        "max_abs": 1e-6,
        "max_rel": 1e-7,
        "tolerance": 1e-4,
        "detections_identical": True,
        "detections_compared": 12,
        "per_output": {"0": {"max_abs": 1e-6, "max_rel": 1e-7}},
        "passed": True,
    }
    assert ParityResult.from_dict(merge_report).to_dict() == merge_report

    tensor = tensor_parity(ref, cand).to_dict()
    assert set(tensor) == {"shape", "max_abs", "mean_abs", "max_rel", "cosine", "psnr_db", "n_nonfinite"}
    assert ParityResult.from_dict(json.loads(json.dumps(tensor))) == tensor_parity(ref, cand)
    with pytest.raises(ValueError, match="unknown keys"):
        ParityResult.from_dict({**sidecar, "bogus": 1})


def test_validate_pairs_end2end_rows_with_the_parity_package():
    """validate's row pairing is the parity package's (compare.py re-exports it): rows TopK swapped pair up
    exactly, so the accumulated parity is zero; a row below the deploy threshold is not compared."""
    from edge_lora.validate import compare
    from edge_lora.validate.parity import paired_detection_rows

    assert compare.paired_detection_rows is paired_detection_rows
    ref, cand = _e2e_pair()
    r, c = paired_detection_rows(ref, cand, conf=0.25)
    assert r.shape == c.shape == (2, 6) and r.dtype == np.float32
    acc = ParityAccumulator()
    acc.update(r, c)
    assert acc.result().max_abs == 0.0
    empty = paired_detection_rows(ref, cand, conf=0.95)
    assert empty[0].shape == empty[1].shape == (0, 6)
