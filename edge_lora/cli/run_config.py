"""``edge-lora run --config line.yaml``: a station's run options in one file instead of a long command line.

The file maps option names (``source``, ``out``, ``mqtt``, ``metrics-port``, ... and ``bundle``) to values;
they become the command's defaults, so an option given on the command line still wins. An unknown key, or a
file that is not a mapping, exits 2 naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml


def _load(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is None:
        return None
    try:
        doc = yaml.safe_load(value.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise click.BadParameter(f"cannot read {value}: {e}", ctx=ctx, param=param) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise click.BadParameter(
            f"{value}: expected a mapping of option names to values", ctx=ctx, param=param
        )
    names = {p.name for p in ctx.command.params if p.name and p.name != param.name}
    defaults: dict[str, Any] = {}
    for key, v in doc.items():
        name = str(key).replace("-", "_")
        # The YAML says what the command line says: `out: results.jsonl` for --out, `json:` for --json.
        name = {"out": "out_path", "json": "json_path", "spool": "spool_dir"}.get(name, name)
        if name not in names:
            raise click.BadParameter(f"{value}: unknown key {key!r}", ctx=ctx, param=param)
        defaults[name] = str(v) if isinstance(v, Path) else v
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    is_eager=True,  # read before the other options, so it can supply their defaults
    expose_value=False,
    callback=_load,
    help="YAML file of run options (bundle, source, out, mqtt, metrics-port, ...); the command line wins.",
)
