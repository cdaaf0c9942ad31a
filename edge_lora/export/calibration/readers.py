"""Adapters that feed a :class:`~edge_lora.export.calibration.record.CalibrationSet` to the quantizers.

:class:`OrtCalibrationReader` speaks ONNX Runtime's ``CalibrationDataReader`` protocol;
:class:`CalibrationBatches` is the re-iterable, sized view ``nncf.Dataset`` takes
(:meth:`CalibrationSet.iterable`). Neither tool is imported here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from edge_lora.errors import InputError

if TYPE_CHECKING:
    from edge_lora.export.calibration.record import CalibrationSet

__all__ = ["CalibrationBatches", "OrtCalibrationReader"]


class CalibrationBatches:
    """Re-iterable batches of a :class:`CalibrationSet` (see :meth:`CalibrationSet.iterable`)."""

    def __init__(self, calib: CalibrationSet, imgsz: int | Sequence[int], batch: int, drop_last: bool):
        if batch < 1:
            raise InputError(f"calibration batch must be >= 1, got {batch}")
        self.calib, self.imgsz, self.batch, self.drop_last = calib, imgsz, batch, drop_last

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.calib.batches(self.imgsz, self.batch, drop_last=self.drop_last)

    def __len__(self) -> int:
        return self.calib.num_batches(self.batch, drop_last=self.drop_last)


class OrtCalibrationReader:
    """ONNX Runtime calibration reader over a :class:`CalibrationSet` (``{input_name: batch}`` dicts).

    Satisfies ``onnxruntime.quantization.CalibrationDataReader`` structurally (ONNX Runtime checks for a
    callable ``get_next``), so onnxruntime is not imported here. Batches are produced lazily; ONNX Runtime's
    calibrators decide what to keep.

    Args:
        calib: the calibration set.
        input_name: the model's image input (``"images"`` for Ultralytics exports).
        imgsz: model input size (int or (h, w)).
        batch: images per feed; must equal the model's batch dimension when it is fixed (then a
            smaller last batch is dropped).
    """

    def __init__(self, calib: CalibrationSet, input_name: str, imgsz: int | Sequence[int], batch: int = 1):
        self.calib = calib
        self.input_name = input_name
        self.imgsz = imgsz
        self.batch = batch
        self._drop_last = batch > 1
        if calib.num_batches(batch, drop_last=self._drop_last) == 0:
            raise InputError(
                f"calibration set {calib.directory} has {len(calib)} images, fewer than one batch of {batch}"
            )
        self._it: Iterator[np.ndarray] | None = None
        self._range: tuple[int, int | None] = (0, None)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            start, stop = self._range
            self._it = self.calib.batches(
                self.imgsz, self.batch, drop_last=self._drop_last, start=start, stop=stop
            )
        arr = next(self._it, None)
        return None if arr is None else {self.input_name: arr}

    def rewind(self) -> None:
        """Start again from the first batch (of the range, if one is set)."""
        self._it = None

    def set_range(self, start_index: int, end_index: int) -> None:
        """Feed only batches ``start_index`` to ``end_index - 1`` from now on (ONNX Runtime's strided
        calibration calls this once per chunk)."""
        self._range = (start_index, end_index)
        self._it = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item

    def __len__(self) -> int:
        return self.calib.num_batches(self.batch, drop_last=self._drop_last)
