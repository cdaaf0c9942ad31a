"""Options shared by several commands (one definition, the same help everywhere)."""

from __future__ import annotations

from pathlib import Path

import click

overwrite = click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
json_out = click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the result as JSON here.",
)
data = click.option(
    "--data", type=click.Path(dir_okay=False, path_type=Path), help="Ultralytics data YAML (train/val/names)."
)
imgsz = click.option("--imgsz", type=int, default=640, show_default=True, help="Image size (multiple of 32).")
