"""The ONNX export check: ONNX Runtime vs the PyTorch model on the same preprocessed images.

Judged by the project's one parity implementation, :func:`edge_lora.validate.parity.detection_parity`. For
end-to-end graphs the decoded predictions *before* TopK are compared too (exposed as an extra output on an
in-memory copy, see :func:`~edge_lora.export.onnx.graph.run_onnx`): TopK orders near-equal scores
arbitrarily, so the final rows alone prove little.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_lora.errors import DataError
from edge_lora.export.onnx.graph import run_onnx
from edge_lora.validate.parity import ParityResult, detection_parity

__all__ = ["check_against_torch", "judge", "parity_images"]


def parity_images(check_images: Sequence[str | Path] | None, hw: tuple[int, int]) -> list[np.ndarray]:
    """The BGR images of the check: ``check_images`` read with OpenCV, or one fixed synthetic image of size
    ``hw`` when none are given. Raises DataError for an image that cannot be read."""
    import cv2

    if not check_images:
        # No real image given: a fixed, smooth pseudo-image (noise alone under-exercises the conv stack).
        rng = np.random.default_rng(0)
        img = cv2.resize(rng.integers(0, 256, (hw[0] // 8 + 1, hw[1] // 8 + 1, 3), dtype=np.uint8), hw[::-1])
        return [img]
    images = []
    for p in check_images:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(f"parity check image {p} is missing or not an image OpenCV can read")
        images.append(img)
    return images


def _reference_outputs(
    model, batch: np.ndarray, end2end: bool, max_det: int
) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch (unfused, FP32) output and decoded pre-TopK predictions for ``batch``."""
    import torch

    head = model.model[-1]
    head.end2end = end2end
    head.max_det = max_det
    with torch.inference_mode():
        y, preds = model(torch.from_numpy(batch))
        # End-to-end: the decoded one-to-one predictions Detect.forward hands to postprocess (TopK).
        decoded = head._inference(preds["one2one"]) if end2end else y
    return y.float().cpu().numpy(), decoded.float().cpu().numpy()


def judge(
    ref: np.ndarray,
    got: np.ndarray,
    ref_decoded: np.ndarray | None,
    got_decoded: np.ndarray | None,
    *,
    end2end: bool,
    tolerance: float,
) -> ParityResult:
    """The verdict on one batch: the final output (:func:`~edge_lora.validate.parity.detection_parity`) and,
    for end-to-end graphs whose decoded predictions both sides expose, those compared position by position;
    ``max_abs``/``max_rel`` are the worse of the two, ``decoded_max_rel`` the latter's."""
    result = detection_parity(ref, got, end2end=end2end, tolerance=tolerance)
    if end2end and ref_decoded is not None and got_decoded is not None:
        dec = detection_parity(ref_decoded, got_decoded, end2end=False, tolerance=tolerance)
        result = dataclasses.replace(
            result,
            max_abs=max(result.max_abs, dec.max_abs),
            max_rel=max(result.max_rel, dec.max_rel),
            decoded_max_rel=dec.max_rel,
        )
    return result


def check_against_torch(
    path: Path, model, feeds: Sequence[np.ndarray], end2end: bool, max_det: int, tol: float, images: int
) -> ParityResult:
    """Worst ONNX Runtime vs PyTorch result over ``feeds``; end-to-end graphs are also compared before TopK."""
    import onnx

    proto = onnx.load(str(path))
    worst: ParityResult | None = None
    for feed in feeds:
        got, got_decoded = run_onnx(proto, feed, decoded=end2end)
        ref, ref_decoded = _reference_outputs(model, feed, end2end, max_det)
        result = judge(
            ref, got, ref_decoded if end2end else None, got_decoded, end2end=end2end, tolerance=tol
        )
        if worst is None or (not result.passed, result.max_rel) > (not worst.passed, worst.max_rel):
            worst = result
    assert worst is not None
    return dataclasses.replace(worst, images=images)
