"""Atomic writers on a real full disk: one clear error naming the path and the space, nothing half-written."""

from __future__ import annotations

import pytest

from edge_lora.errors import EXIT_GATE_FAILED, NoSpaceError
from edge_lora.fileio import atomic_output_dir, atomic_write_bytes


def test_atomic_write_on_a_full_disk_names_path_and_space_and_leaves_nothing(tiny_fs):
    fs = tiny_fs(64)
    target = fs / "model.onnx"
    with pytest.raises(NoSpaceError) as info:
        atomic_write_bytes(target, b"x" * (1 << 20))
    message = str(info.value)
    assert str(target) in message and "needs 1.0 MiB" in message and "free there" in message
    assert info.value.exit_code not in (0, EXIT_GATE_FAILED)
    assert list(fs.iterdir()) == []  # the temp file is gone, and no target appeared


def test_atomic_output_dir_on_a_full_disk_removes_the_partial_folder(tiny_fs):
    fs = tiny_fs(64)
    with pytest.raises(NoSpaceError) as info, atomic_output_dir(fs / "bundle") as tmp:
        (tmp / "big.bin").write_bytes(b"x" * (1 << 20))  # any writer inside, not only edge-lora's
    assert str(fs / "bundle") in str(info.value)
    assert list(fs.iterdir()) == []
    # with space, the same call succeeds
    fs = tiny_fs(4096)
    with atomic_output_dir(fs / "bundle") as tmp:
        (tmp / "big.bin").write_bytes(b"x" * (1 << 20))
    assert (fs / "bundle" / "big.bin").stat().st_size == 1 << 20
