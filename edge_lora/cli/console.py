"""The shared rich console and small rendering helpers for the CLI."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

# Rich falls back to 80 columns when stdout is not a terminal (CI logs, `| tee`): tables would wrap badly.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def kv_table(title: str, rows: dict[str, Any]) -> Table:
    """A two-column key/value table."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows.items():
        if isinstance(v, (dict, list)):
            v = json.dumps(v, default=str) if len(json.dumps(v, default=str)) < 120 else f"{len(v)} entries"
        table.add_row(k, str(v))
    return table
