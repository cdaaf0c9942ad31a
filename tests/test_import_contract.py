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


def test_the_device_line_has_no_exceptions():
    """Issue 10 removed the last ``ignore_imports``: validate() takes the PyTorch reference from the caller."""
    config = configparser.ConfigParser()
    config.read(REPO / ".importlinter")
    assert not [s for s in config.sections() if config.has_option(s, "ignore_imports")]


def test_the_contract_sees_lazy_imports(tmp_path):
    """The PyTorch reference imports torch only inside functions; put it on the device side and the contract
    breaks on exactly that, so the contract reads every import statement, not only module-level ones."""
    config = configparser.ConfigParser()
    config.read(REPO / ".importlinter")
    section = "importlinter:contract:device-no-torch"
    sources = config.get(section, "source_modules")
    config.set(section, "source_modules", sources + "\nedge_lora.validate.reference")
    path = tmp_path / "strict.ini"
    with path.open("w") as f:
        config.write(f)
    proc = _lint(path)
    assert proc.returncode != 0 and "edge_lora.validate.reference -> torch" in proc.stdout, proc.stdout[
        -3000:
    ]
