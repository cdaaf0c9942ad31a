"""Ground truth: the labelled objects of an image (:class:`GroundTruth`) and the YOLO label-file reader.

One job: turn a YOLO ``.txt`` label file into ``xyxy`` pixel boxes the evaluator scores against. Device side:
numpy and the standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_lora.errors import DataError

__all__ = ["GroundTruth", "read_yolo_labels"]


@dataclass(frozen=True)
class GroundTruth:
    """Ground-truth objects of one image.

    Attributes:
        boxes: float32 (N, 4) ``xyxy`` boxes in original-image pixels.
        classes: int64 (N,) class ids.
    """

    boxes: np.ndarray
    classes: np.ndarray

    def __post_init__(self) -> None:
        # Coerce here so that callers may pass lists and so that an empty label file yields (0, 4).
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        if len(boxes) != len(classes):
            raise ValueError(f"GroundTruth has {len(boxes)} boxes but {len(classes)} classes")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "classes", classes)

    def __len__(self) -> int:
        return len(self.classes)

    @classmethod
    def empty(cls) -> GroundTruth:
        """An image without objects (a background image)."""
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))


def read_yolo_labels(label_path: str | Path, width: int, height: int) -> GroundTruth:
    """Read a YOLO label file (``cls cx cy w h`` normalized to 0..1, one object a line).

    Follows Ultralytics' reader where it matters for the numbers: a missing or empty file means a
    background image; rows with more than 6 values are segmentation polygons
    (``cls x1 y1 x2 y2 ...``) and become their bounding box; exact duplicate rows are dropped.
    Coordinates may exceed [0, 1] by 1e-3 (rounding in converters) and are clipped to the image.

    Args:
        label_path: path of the ``.txt`` label file.
        width: width of the original image in pixels.
        height: height of the original image in pixels.

    Returns:
        The objects with ``xyxy`` pixel boxes.

    Raises:
        DataError: a row is malformed (wrong column count, not a number, negative class,
            coordinates outside the image).
    """
    path = Path(label_path)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got width={width} height={height}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return GroundTruth.empty()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read label file {path}: {exc}") from exc

    rows: list[tuple[int, float, float, float, float]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{lineno}"
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise DataError(f"{where}: label row is not numeric: {line.strip()!r}") from None
        cls_f = values[0]
        if cls_f < 0 or cls_f != int(cls_f):
            raise DataError(f"{where}: class id must be a non-negative integer, got {parts[0]!r}")
        coords = values[1:]
        if len(coords) == 4:
            cx, cy, w, h = coords
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        elif len(coords) > 5 and len(coords) % 2 == 0:
            xs, ys = coords[0::2], coords[1::2]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
        else:
            raise DataError(
                f"{where}: expected 'cls cx cy w h' or a polygon 'cls x1 y1 x2 y2 ...', "
                f"got {len(parts)} values"
            )
        if not all(math.isfinite(v) and -1e-3 <= v <= 1 + 1e-3 for v in coords):
            raise DataError(f"{where}: coordinates must be normalized to 0..1: {line.strip()!r}")
        rows.append((int(cls_f), x1, y1, x2, y2))

    if not rows:
        return GroundTruth.empty()
    # Ultralytics removes duplicate label rows (a common annotation-tool glitch); counting them twice
    # would cap recall at 50 % for those objects.
    unique_rows = list(dict.fromkeys(rows))
    arr = np.asarray([r[1:] for r in unique_rows], dtype=np.float64)
    arr[:, [0, 2]] = np.clip(arr[:, [0, 2]], 0.0, 1.0) * width
    arr[:, [1, 3]] = np.clip(arr[:, [1, 3]], 0.0, 1.0) * height
    classes = np.asarray([r[0] for r in unique_rows], dtype=np.int64)
    return GroundTruth(arr.astype(np.float32), classes)
