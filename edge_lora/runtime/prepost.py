"""Pre- and postprocessing for Ultralytics YOLO detectors in numpy and OpenCV (no torch).

One implementation serves the reference and the candidate alike, so a parity check compares models, not
pipelines. It reproduces Ultralytics' predict path (8.4.x):

* :func:`letterbox` is ``ultralytics.data.augment.LetterBox`` for inference: center padding, Python ``round``
  on the resized size and the ``-0.1/+0.1`` split of odd padding, ``cv2.INTER_LINEAR``, ``copyMakeBorder``
  with 114.
* :func:`preprocess` is ``BasePredictor.preprocess``: BGR->RGB, HWC->CHW, float32 / 255.
* :func:`postprocess` is ``ultralytics.utils.nms.non_max_suppression`` (predict defaults, class-aware,
  best class per box) followed by ``ultralytics.utils.ops.scale_boxes``; end-to-end outputs (YOLO26
  NMS-free head, or an export with embedded NMS) are filtered by confidence only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edge_lora.errors import InputError

__all__ = [
    "Detections",
    "LetterboxInfo",
    "letterbox",
    "nms",
    "postprocess",
    "preprocess",
    "scale_boxes",
]


@dataclass(frozen=True)
class LetterboxInfo:
    """How one image was letterboxed, enough to map boxes back to it.

    Attributes:
        orig_shape: (height, width) of the original image.
        input_shape: (height, width) of the letterboxed model input.
        ratio: (gain_w, gain_h) = resized size / original size per axis, from the rounded resized size,
            which is what ``ultralytics.utils.ops.scale_boxes`` reconstructs.
        pad: (left, top) padding in pixels.
    """

    orig_shape: tuple[int, int]
    input_shape: tuple[int, int]
    ratio: tuple[float, float]
    pad: tuple[int, int]


@dataclass(frozen=True)
class Detections:
    """Detections of one image in original-image pixels.

    Attributes:
        boxes: (K, 4) float32 xyxy, clipped to the image.
        scores: (K,) float32 confidences, highest first for NMS output, model order for end-to-end output.
        class_ids: (K,) int64 class indices.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def classes(self) -> np.ndarray:
        """Alias of ``class_ids`` (the name the evaluator's ``DetectionsLike`` protocol reads)."""
        return self.class_ids

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64))


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    if len(size) == 1:
        return int(size[0]), int(size[0])
    if len(size) != 2:
        raise InputError(f"image size must be an int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def letterbox(
    img_bgr: np.ndarray,
    new_shape: int | Sequence[int],
    stride: int = 32,
    auto: bool = False,
    scaleup: bool = True,
    pad_value: int = 114,
) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
    """Resize keeping the aspect ratio and pad to ``new_shape``, exactly as Ultralytics ``LetterBox``.

    Args:
        img_bgr: HxWxC uint8 image (C is 3 for BGR; other channel counts are padded the same way).
        new_shape: target (height, width), or an int for a square target.
        stride: model stride, used only with ``auto``.
        auto: pad only to the next multiple of ``stride`` (minimum rectangle) instead of to ``new_shape``.
        scaleup: allow enlarging images smaller than the target.
        pad_value: border value on every channel.

    Returns:
        ``(img, ratio, pad)``: the letterboxed image, ``ratio = (gain_w, gain_h)`` (resized / original size
        per axis after rounding) and ``pad = (left, top)`` in pixels.
    """
    h0, w0 = img_bgr.shape[:2]
    new_h, new_w = _hw(new_shape)
    r = min(new_h / h0, new_w / w0)
    if not scaleup:
        r = min(r, 1.0)
    # Python round() (half to even) on Python floats, as Ultralytics does; at least 1 px per side.
    unpad_w, unpad_h = max(round(w0 * r), 1), max(round(h0 * r), 1)
    dw, dh = new_w - unpad_w, new_h - unpad_h
    if auto:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    # An odd padding puts the extra pixel bottom/right: round(x - 0.1) / round(x + 0.1) as in Ultralytics.
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    img = img_bgr
    if (w0, h0) != (unpad_w, unpad_h):
        img = cv2.resize(img, (unpad_w, unpad_h), interpolation=cv2.INTER_LINEAR)
    if img.ndim == 2:
        img = img[..., None]
    c = img.shape[2]
    if c == 3:
        img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    else:
        h, w = img.shape[:2]
        out = np.full((h + top + bottom, w + left + right, c), pad_value, dtype=img.dtype)
        out[top : top + h, left : left + w] = img
        img = out
    return img, (unpad_w / w0, unpad_h / h0), (left, top)


def _as_bgr(img: np.ndarray, index: int) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        kind = img.dtype if isinstance(img, np.ndarray) else type(img).__name__
        raise InputError(f"image {index}: expected a uint8 numpy array (as cv2.imread gives), got {kind}")
    if img.size == 0:
        raise InputError(f"image {index} is empty (shape {img.shape})")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    raise InputError(f"image {index}: expected HxW, HxWx3 (BGR) or HxWx4 (BGRA), got shape {img.shape}")


def preprocess(
    images_bgr: Sequence[np.ndarray],
    imgsz: int | Sequence[int],
    *,
    fp16: bool = False,
) -> tuple[np.ndarray, list[LetterboxInfo]]:
    """Letterbox BGR images into one NCHW RGB batch scaled to [0, 1].

    Args:
        images_bgr: uint8 images as ``cv2.imread`` gives them (gray and BGRA are converted to BGR first).
        imgsz: model input size, int or (height, width); use the export's ``metadata["imgsz"]``.
        fp16: return float16 (for FP16-input engines) instead of float32.

    Returns:
        ``(batch, infos)``: a C-contiguous ``(N, 3, H, W)`` array and one :class:`LetterboxInfo` per image.
    """
    if len(images_bgr) == 0:
        raise InputError("preprocess needs at least one image")
    h, w = _hw(imgsz)
    hwc = np.empty((len(images_bgr), h, w, 3), dtype=np.uint8)
    infos: list[LetterboxInfo] = []
    for i, img in enumerate(images_bgr):
        img = _as_bgr(img, i)
        hwc[i], ratio, pad = letterbox(img, (h, w))
        infos.append(LetterboxInfo((int(img.shape[0]), int(img.shape[1])), (h, w), ratio, pad))
    chw_rgb = hwc.transpose(0, 3, 1, 2)[:, ::-1]  # a view: BHWC->BCHW, then BGR->RGB
    batch = np.empty((len(images_bgr), 3, h, w), dtype=np.float32)
    np.divide(chw_rgb, np.float32(255), out=batch, dtype=np.float32)
    return (batch.astype(np.float16) if fp16 else batch), infos


def scale_boxes(boxes: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Map xyxy boxes from the model input back to the original image in place: remove the padding,
    divide by the per-axis gain, clip to the image (``ultralytics.utils.ops.scale_boxes``)."""
    left, top = info.pad
    gain_w, gain_h = info.ratio
    h0, w0 = info.orig_shape
    xs, ys = boxes[:, 0::2], boxes[:, 1::2]  # views on (x1, x2) and (y1, y2)
    xs -= np.float32(left)
    ys -= np.float32(top)
    xs /= np.float32(gain_w)
    ys /= np.float32(gain_h)
    np.clip(xs, 0, w0, out=xs)
    np.clip(ys, 0, h0, out=ys)
    return boxes


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thres: float) -> np.ndarray:
    """Greedy NMS over xyxy boxes, like ``torchvision.ops.nms``: indices of kept boxes, highest score first.

    A box is suppressed when its IoU with a kept, higher-scoring box is greater than ``iou_thres``.
    Arithmetic stays in the boxes' dtype (float32 for model outputs), as torchvision's CPU kernel does.
    """
    if boxes.shape[0] == 0:
        return np.zeros((0,), dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    with np.errstate(divide="ignore", invalid="ignore"):
        while order.size:
            i = order[0]
            keep.append(i)
            rest = order[1:]
            if rest.size == 0:
                break
            w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
            h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
            inter = w * h
            iou = inter / (areas[i] + areas[rest] - inter)
            order = rest[~(iou > iou_thres)]  # NaN (two empty boxes) is kept, as in torchvision
    return np.asarray(keep, dtype=np.int64)


def _first_output(outputs: Mapping[str, np.ndarray] | Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    if isinstance(outputs, np.ndarray):
        return outputs
    if isinstance(outputs, Mapping):
        if not outputs:
            raise InputError("postprocess got no model outputs")
        return next(iter(outputs.values()))
    if isinstance(outputs, (list, tuple)) and outputs:
        return np.asarray(outputs[0])
    raise InputError(
        f"postprocess expects an array, a list or a dict of arrays, got {type(outputs).__name__}"
    )


def _is_end2end(pred: np.ndarray, nc: int | None) -> bool:
    """Guess the output layout: ``(N, K, 6)`` end-to-end rows or ``(N, 4 + nc, anchors)`` raw predictions."""
    rows_of_6 = pred.shape[-1] == 6
    raw = pred.shape[1] == 4 + nc if nc else pred.shape[1] > 4
    if rows_of_6 and not raw:
        return True
    if raw and not rows_of_6:
        return False
    if rows_of_6 and raw:
        raise InputError(
            f"cannot tell an end-to-end output from a raw one for shape {pred.shape}; pass end2end explicitly"
        )
    raise InputError(
        f"output shape {pred.shape} is neither (N, K, 6) end-to-end nor (N, 4 + nc, anchors) raw"
    )


def postprocess(
    outputs: Mapping[str, np.ndarray] | Sequence[np.ndarray] | np.ndarray,
    infos: Sequence[LetterboxInfo],
    *,
    end2end: bool | None = None,
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    nc: int | None = None,
    max_nms: int = 30000,
    max_wh: int = 7680,
) -> list[Detections]:
    """Decode detector outputs into per-image :class:`Detections` in original-image pixels.

    Args:
        outputs: the detection output, or a runner's output dict / a list whose first entry it is.
        infos: the :class:`LetterboxInfo` list :func:`preprocess` returned, one per batch row.
        end2end: True for ``(N, K, 6)`` rows ``[x1, y1, x2, y2, score, class]`` (YOLO26 NMS-free head or an
            export with embedded NMS), False for raw ``(N, 4 + nc, anchors)`` xywh + class scores (YOLO11/v8),
            None to decide from the shape (pass ``runner.metadata["end2end"]`` when it is known).
        conf: keep detections scoring strictly above this (Ultralytics predict default 0.25).
        iou: NMS IoU threshold (raw outputs only; Ultralytics default 0.7).
        max_det: at most this many detections per image.
        nc: number of classes; raw channels after ``4 + nc`` are ignored. None: ``channels - 4``.
        max_nms: at most this many boxes, highest scores first, enter NMS (Ultralytics' ``max_nms``).
        max_wh: per-class coordinate offset that keeps classes apart in one NMS pass (Ultralytics' value).

    Raises:
        InputError: the output shape or the number of ``infos`` does not fit.
    """
    pred = np.asarray(_first_output(outputs))
    if pred.ndim != 3:
        raise InputError(f"expected a 3-D detection output (batch first), got shape {pred.shape}")
    if pred.shape[0] != len(infos):
        raise InputError(f"output batch {pred.shape[0]} does not match {len(infos)} letterbox infos")
    if not 0.0 <= conf <= 1.0 or not 0.0 <= iou <= 1.0:
        raise InputError(f"conf and iou must lie in [0, 1], got conf={conf}, iou={iou}")
    if pred.dtype != np.float32:
        pred = pred.astype(np.float32)  # half outputs are decoded in float32, as Ultralytics does
    if end2end is None:
        end2end = _is_end2end(pred, nc)
    decode = _decode_end2end if end2end else _decode_raw
    return [
        decode(p, info, conf, iou, max_det, nc, max_nms, max_wh) for p, info in zip(pred, infos, strict=True)
    ]


def _decode_end2end(p, info, conf, iou, max_det, nc, max_nms, max_wh) -> Detections:
    if p.shape[-1] < 6:
        raise InputError(f"end-to-end rows need 6 values [x1, y1, x2, y2, score, class], got {p.shape[-1]}")
    keep = np.flatnonzero(p[:, 4] > conf)[:max_det]
    rows = p[keep]
    return Detections(scale_boxes(rows[:, :4].copy(), info), rows[:, 4].copy(), rows[:, 5].astype(np.int64))


def _decode_raw(p, info, conf, iou, max_det, nc, max_nms, max_wh) -> Detections:
    nc = nc or p.shape[0] - 4
    if p.shape[0] < 4 + nc:
        raise InputError(f"raw output has {p.shape[0]} channels, fewer than 4 + nc = {4 + nc}")
    cls_scores = p[4 : 4 + nc]  # (nc, anchors)
    best = cls_scores.argmax(0)
    score = np.take_along_axis(cls_scores, best[None], 0)[0]
    cand = np.flatnonzero(score > conf)
    if cand.size == 0:
        return Detections.empty()
    score, best = score[cand], best[cand]
    if cand.size > max_nms:
        top = np.argsort(-score, kind="stable")[:max_nms]
        cand, score, best = cand[top], score[top], best[top]
    xywh = p[:4, cand].T
    half = xywh[:, 2:] / np.float32(2)
    boxes = np.concatenate((xywh[:, :2] - half, xywh[:, :2] + half), axis=1)
    # One NMS pass for all classes: offset each class far apart. Done in float32 like Ultralytics, whose
    # rounding of the offset boxes can decide near-threshold overlaps; matching it keeps parity exact.
    offset = (best.astype(np.float32) * np.float32(max_wh))[:, None]
    keep = nms(boxes + offset, score, iou)[:max_det]
    return Detections(scale_boxes(boxes[keep], info), score[keep], best[keep].astype(np.int64))
