"""A calibration set on disk: ``calibration.json`` read back and re-hashed, images streamed as batches.

:meth:`CalibrationSet.load` reads the record :func:`~edge_lora.export.calibration.select.select_calibration`
wrote and re-hashes every image, so a set that no longer matches its images is refused instead of silently
calibrating on something else; :meth:`CalibrationSet.batches` streams NCHW float32 batches through the one
runtime preprocessing (:func:`edge_lora.runtime.prepost.preprocess`), one batch of images at a time.
Torch-free (numpy, OpenCV).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_lora.errors import DataError, InputError
from edge_lora.export.calibration.readers import CalibrationBatches
from edge_lora.fileio import sha256_bytes, sha256_file, sha256_json

__all__ = [
    "CALIBRATION_FILE",
    "CALIBRATION_KIND",
    "CALIBRATION_SCHEMA_VERSION",
    "CalibImage",
    "CalibrationSet",
    "changed_message",
    "set_identity",
]

CALIBRATION_SCHEMA_VERSION = 1


CALIBRATION_FILE = "calibration.json"


CALIBRATION_KIND = "edge-lora-calibration"


@dataclass(frozen=True)
class CalibImage:
    """One calibration image: where it is, its content hash and the class ids its label holds."""

    path: Path
    sha256: str
    classes: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path.as_posix(), "sha256": self.sha256, "classes": list(self.classes)}


class CalibrationSet:
    """A selected, hash-recorded list of calibration images (the content of ``calibration.json``).

    Build one with :func:`select_calibration` or :meth:`load`; do not construct it directly.

    Attributes:
        directory: the folder holding ``calibration.json``.
        images: the images, sorted by path.
        record: the full ``calibration.json`` content.
        sha256: identity of the set: hash of the image content hashes (in order) and the recipe hash. It
            does not depend on where the dataset lies, so a moved dataset is the same set.
    """

    def __init__(self, directory: Path, record: dict[str, Any]):
        self.directory = Path(directory)
        self.record = record
        self.images: tuple[CalibImage, ...] = tuple(
            CalibImage(Path(d["path"]), str(d["sha256"]), tuple(int(c) for c in d["classes"]))
            for d in record["images"]
        )
        self.sha256: str = record["sha256"]

    # ---- basic views ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return f"CalibrationSet({len(self)} images, sha256={self.sha256[:12]}…, {self.directory})"

    @property
    def paths(self) -> list[Path]:
        """Image paths in calibration order."""
        return [im.path for im in self.images]

    @property
    def recipe(self) -> dict[str, Any]:
        """The resolved recipe the set was drawn with."""
        return dict(self.record["recipe"]["resolved"])

    @property
    def recipe_sha256(self) -> str:
        return str(self.record["recipe"]["sha256"])

    @property
    def coverage(self) -> dict[str, int]:
        """Selected images per class name (plus ``background``: images without boxes)."""
        return dict(self.record["coverage"])

    @property
    def json_path(self) -> Path:
        return self.directory / CALIBRATION_FILE

    # ---- load / verify --------------------------------------------------------------------------------

    @classmethod
    def load(cls, directory: str | Path, *, verify: bool = True) -> CalibrationSet:
        """Read ``directory/calibration.json`` (or the JSON file itself) and re-check every image's sha256.

        Raises:
            DataError: the record is missing, malformed, of another schema, tampered with (its identity hash
                does not match its content), or an image is missing or changed since selection.
        """
        path = Path(directory)
        json_path = path if path.suffix == ".json" else path / CALIBRATION_FILE
        if not json_path.is_file():
            raise DataError(
                f"no calibration set at {path}: {json_path.name} not found; create one with edge-lora calib"
            )
        try:
            record = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{json_path} is not readable JSON: {exc}") from None
        if not isinstance(record, dict) or record.get("kind") != CALIBRATION_KIND:
            raise DataError(f"{json_path} is not an edge-lora calibration record")
        if record.get("schema_version") != CALIBRATION_SCHEMA_VERSION:
            raise DataError(
                f"{json_path} has schema_version {record.get('schema_version')!r}; this edge-lora reads "
                f"{CALIBRATION_SCHEMA_VERSION}; re-create it with edge-lora calib"
            )
        try:
            calib = cls(json_path.parent, record)
            expected = set_identity(calib.images, calib.recipe_sha256)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{json_path} is malformed ({type(exc).__name__}: {exc})") from None
        if expected != calib.sha256:
            raise DataError(
                f"{json_path} was edited after it was written (its sha256 does not match its image list); "
                "re-create it with edge-lora calib"
            )
        if verify:
            calib.verify()
        return calib

    def verify(self) -> None:
        """Re-hash every image; raise :class:`DataError` naming the first missing or changed one."""
        for im in self.images:
            if not im.path.is_file():
                raise DataError(
                    f"calibration image {im.path} is missing (recorded in {self.json_path}); restore it or "
                    "re-create the calibration set with edge-lora calib --overwrite"
                )
            actual = sha256_file(im.path)
            if actual != im.sha256:
                raise DataError(changed_message(im, actual, self.json_path))

    # ---- streaming ------------------------------------------------------------------------------------

    def batches(
        self,
        imgsz: int | Sequence[int],
        batch: int = 1,
        *,
        drop_last: bool = False,
        start: int = 0,
        stop: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield ``(B, 3, H, W)`` float32 RGB batches scaled to [0, 1], letterboxed like the runtime does.

        Images are read one batch at a time and each read is checked against its recorded sha256, so what
        calibrates is exactly the recorded set. The last batch is smaller unless ``drop_last``; use
        ``drop_last=True`` for a model with a fixed batch dimension above 1. ``start``/``stop`` select
        batches by index (only those images are read).

        Raises:
            InputError: ``batch`` < 1. DataError: an image is missing, changed or undecodable.
        """
        from edge_lora.runtime.prepost import preprocess

        if batch < 1:
            raise InputError(f"calibration batch must be >= 1, got {batch}")
        first = start * batch
        end = len(self.images) if stop is None else min(len(self.images), stop * batch)
        for offset in range(first, end, batch):
            chunk = self.images[offset : offset + batch]
            if drop_last and len(chunk) < batch:
                return
            arrays, _ = preprocess([self._read(im) for im in chunk], imgsz)
            yield arrays

    def num_batches(self, batch: int = 1, *, drop_last: bool = False) -> int:
        """How many batches :meth:`batches` yields."""
        return len(self.images) // batch if drop_last else -(-len(self.images) // batch)

    def iterable(
        self, imgsz: int | Sequence[int], batch: int = 1, *, drop_last: bool = False
    ) -> CalibrationBatches:
        """A re-iterable, sized view of :meth:`batches` (each ``iter()`` restarts; for ``nncf.Dataset``)::

        nncf.Dataset(calib.iterable(imgsz))  # items are (1, 3, H, W) float32 arrays
        """
        return CalibrationBatches(self, imgsz, batch, drop_last)

    def _read(self, im: CalibImage) -> np.ndarray:
        try:
            data = im.path.read_bytes()
        except OSError as exc:
            raise DataError(f"calibration image {im.path} cannot be read ({exc.strerror or exc})") from None
        actual = sha256_bytes(data)
        if actual != im.sha256:
            raise DataError(changed_message(im, actual, self.json_path))
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(f"calibration image {im.path} cannot be decoded by OpenCV")
        return img


def set_identity(images: Sequence[CalibImage], recipe_sha256: str) -> str:
    """The set's sha256: its images' hashes in order and the recipe's hash."""
    return sha256_json({"images": [im.sha256 for im in images], "recipe": recipe_sha256})


def changed_message(im: CalibImage, actual: str, json_path: Path) -> str:
    """The error message for a calibration image whose content no longer matches its record."""
    return (
        f"calibration image {im.path} changed since the set was selected (sha256 {actual[:12]}…, recorded "
        f"{im.sha256[:12]}… in {json_path}); re-create the set with edge-lora calib --overwrite"
    )
