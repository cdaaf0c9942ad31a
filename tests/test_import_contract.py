"""The device line, by construction: import-linter's contracts in .importlinter hold (make test runs this)."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

from conftest import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_contracts_are_kept():
    proc = _lint(REPO / ".importlinter")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_the_contract_sees_lazy_imports(tmp_path):
    """Without its one listed exception the contract breaks on an import made inside a function body, so
    the contract reads every import statement, not only module-level ones."""
    config = configparser.ConfigParser()
    config.read(REPO / ".importlinter")
    section = "importlinter:contract:device-no-torch"
    config.remove_option(section, "ignore_imports")
    path = tmp_path / "strict.ini"
    with path.open("w") as f:
        config.write(f)
    proc = _lint(path)
    assert proc.returncode != 0 and "edge_lora.validate.reference -> torch" in proc.stdout, proc.stdout[
        -3000:
    ]
