"""Detector-output parity: :func:`detection_parity` compares one YOLO output tensor with a reference, and
:func:`paired_detection_rows` pairs end-to-end rows for the tensor parity ``validate`` accumulates.

Raw ``(N, 4 + nc, anchors)`` outputs are compared position by position; end-to-end ``(N, K, 6)`` rows
(x1, y1, x2, y2, score, class) first row by row, then, if that fails, tie-aware: TopK orders near-equal
scores differently across runtimes and picks arbitrarily among scores tied at the cut-off, so rows are
re-matched by class, score and box. The export checks (ONNX Runtime vs PyTorch, OpenVINO IR vs ONNX Runtime,
TensorRT) judge with it. ``validate`` compares two artifacts that may differ by far more than a tolerance
(an INT8 candidate), so it pairs rows by class and IoU instead (:func:`paired_detection_rows`) and feeds the
pairs to :class:`~edge_lora.validate.parity.tensor.ParityAccumulator`. Device side: numpy; the tie-aware
match needs scipy (a host-side dependency; the device line's ``validate`` pairs by IoU and never reaches it).
"""

from __future__ import annotations

import numpy as np

from edge_lora.validate.matching import box_iou
from edge_lora.validate.parity.result import ParityResult

__all__ = ["detection_parity", "paired_detection_rows"]


def _box_scale(boxes: np.ndarray) -> float:
    # Boxes are in pixels; at least 1 so that a degenerate reference does not blow the ratio up.
    return max(1.0, float(np.abs(boxes).max(initial=0.0)))


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max(initial=0.0))


def _raw(ref: np.ndarray, got: np.ndarray, tolerance: float, images: int) -> ParityResult:
    box_scale = _box_scale(ref[:, :4])
    d_box = _max_abs(ref[:, :4], got[:, :4])
    d_cls = _max_abs(ref[:, 4:], got[:, 4:])
    return ParityResult(
        max(d_box, d_cls),
        max(d_box / box_scale, d_cls),
        tolerance,
        end2end=False,
        matching="position",
        unmatched=0,
        images=images,
    )


def detection_parity(
    reference: np.ndarray, candidate: np.ndarray, *, end2end: bool, tolerance: float
) -> ParityResult:
    """Compare one detector output tensor with a reference, relative to the output's scale.

    Raw ``(N, 4 + nc, A)``: position by position. End-to-end ``(N, K, 6)``: row by row first; if that fails,
    rows scoring above the top-K cut-off (the lowest score, plus tolerance) must each find a reference row of
    the same class with score and box within tolerance, and the sorted score columns must agree (TopK orders
    near-equal scores differently across runtimes, and picks arbitrarily among scores tied at the cut-off).
    A shape mismatch or a non-finite candidate fails with ``max_rel`` inf.

    Returns:
        a :class:`ParityResult` with ``end2end``, ``matching``, ``unmatched``, ``images`` (the batch size) and
        the verdict against ``tolerance``.
    """
    ref = np.asarray(reference, dtype=np.float32)
    got = np.asarray(candidate, dtype=np.float32)
    images = int(ref.shape[0]) if ref.ndim else 1
    inf = float("inf")
    if ref.shape != got.shape or ref.ndim != 3:
        return ParityResult(
            inf, inf, tolerance, end2end=end2end, matching="shape", unmatched=1, images=images
        )
    n_nonfinite = int(np.count_nonzero(~np.isfinite(got)))
    if n_nonfinite:  # counted, so that even an infinite tolerance fails it
        return ParityResult(
            inf,
            inf,
            tolerance,
            n_nonfinite=n_nonfinite,
            end2end=end2end,
            matching="position",
            unmatched=0,
            images=images,
        )
    if not end2end:
        return _raw(ref, got, tolerance, images)

    box_scale = _box_scale(ref[..., :4])

    def row_diff(r: np.ndarray, g: np.ndarray) -> tuple[float, float]:
        d_box = _max_abs(r[..., :4], g[..., :4])
        d_score = _max_abs(r[..., 4], g[..., 4])
        d_cls = _max_abs(r[..., 5], g[..., 5])
        return max(d_box, d_score, d_cls), max(d_box / box_scale, d_score, np.inf if d_cls > 0 else 0.0)

    max_abs, max_rel = row_diff(ref, got)
    if max_rel <= tolerance:
        return ParityResult(
            max_abs, max_rel, tolerance, end2end=True, matching="position", unmatched=0, images=images
        )

    max_abs = max_rel = 0.0
    unmatched = 0
    for r, g in zip(ref, got, strict=True):
        d_sorted = _max_abs(np.sort(r[:, 4]), np.sort(g[:, 4]))
        max_abs, max_rel = max(max_abs, d_sorted), max(max_rel, d_sorted)
        # The top-K cut-off is the lowest *selected* score; a row scoring more than tolerance above it is
        # selected by both runtimes whatever their tie-breaking, so only such rows must find a counterpart.
        # (An early-training model scores every anchor about the same, say 0.0041 +- 1e-7: then no row is
        # above the cut, and the sorted scores above plus the decoded tensor compared position by position
        # carry the proof.)
        cut = float(min(r[:, 4].min(initial=np.inf), g[:, 4].min(initial=np.inf))) + tolerance
        rows = g[g[:, 4] > cut]
        # Candidate row i may stand for reference row j when class, score and box agree within tolerance;
        # an optimal one-to-one assignment (not greedy: near-duplicate boxes must not steal each other's
        # counterpart) leaves unmatched only rows that have no counterpart at all.
        d_box = np.abs(rows[:, None, :4] - r[None, :, :4]).max(axis=2) / box_scale
        d_score = np.abs(rows[:, None, 4] - r[None, :, 4])
        ok = (rows[:, None, 5] == r[None, :, 5]) & (d_score <= tolerance) & (d_box <= tolerance)
        cost = np.where(ok, d_box + d_score, 1e9)
        from scipy.optimize import linear_sum_assignment  # host-side dependency (see the module docstring)

        gi, rj = linear_sum_assignment(cost) if rows.size else (np.empty(0, int), np.empty(0, int))
        feasible = ok[gi, rj]
        unmatched += len(rows) - int(feasible.sum())
        for i, j in zip(gi[feasible], rj[feasible], strict=True):
            a, rel = row_diff(r[j], rows[i])
            max_abs, max_rel = max(max_abs, a), max(max_rel, rel)
    return ParityResult(
        max_abs,
        max_rel,
        tolerance,
        end2end=True,
        decoded_max_rel=None,
        matching="tie-aware",
        unmatched=unmatched,
        images=images,
    )


def paired_detection_rows(
    reference: np.ndarray, candidate: np.ndarray, *, conf: float, min_iou: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of two end-to-end outputs ``(N, K, 6)`` (x1, y1, x2, y2, score, class) paired for tensor parity.

    TopK orders near-tied scores arbitrarily, so comparing end-to-end outputs position by position mostly
    measures ordering. Instead every reference row scoring >= ``conf`` (highest first) is paired with the
    unused candidate row of the same class that overlaps it most (IoU >= ``min_iou``); returns the paired
    rows stacked as two ``(M, 6)`` float32 arrays. Unpaired rows are the agreement metric's business.
    """
    ref_rows, cand_rows = [], []
    for r, c in zip(np.asarray(reference, np.float32), np.asarray(candidate, np.float32), strict=True):
        r = r[r[:, 4] >= conf]
        r = r[np.argsort(-r[:, 4], kind="stable")]
        if not len(r) or not len(c):
            continue
        iou = box_iou(r[:, :4], c[:, :4])
        iou[r[:, None, 5] != c[None, :, 5]] = -1.0
        free = np.ones(len(c), dtype=bool)
        for i in range(len(r)):
            row = np.where(free, iou[i], -1.0)
            j = int(row.argmax())
            if row[j] >= min_iou:
                free[j] = False
                ref_rows.append(r[i])
                cand_rows.append(c[j])
    if not ref_rows:
        return np.zeros((0, 6), np.float32), np.zeros((0, 6), np.float32)
    return np.stack(ref_rows), np.stack(cand_rows)
