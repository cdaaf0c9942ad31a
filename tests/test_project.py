"""Housekeeping a user notices: the fast test tier, the packaging metadata."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def test_fast_tier_leaves_out_the_end_to_end_tests():
    """`make test-fast` (-m "not slow") must run fewer tests than `make test`, and none that builds."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    selected = [ln for ln in proc.stdout.splitlines() if "::" in ln]
    assert selected, proc.stdout[-2000:]
    assert not [t for t in selected if t.startswith(("tests/test_build.py", "tests/test_export_"))]
    assert not [t for t in selected if "train_prints_one_line_per_epoch" in t]
    assert "deselected" in proc.stdout  # some tests are slow: the tier differs from the full suite


def test_packaging_metadata_is_current():
    text = (REPO / "pyproject.toml").read_text()  # (tomllib is 3.11+; the project supports 3.10)
    assert re.search(r'^license = "[A-Za-z0-9.+-]+"$', text, re.M)  # SPDX; TOML tables stop building in 2027
    assert re.search(r'"ultralytics>=[\d.]+,<[\d.]+"', text)  # private trainer hooks: tested range pinned
