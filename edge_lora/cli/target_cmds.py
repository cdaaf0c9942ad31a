"""``edge-lora targets``: list, show and check target profiles (torch-free)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from edge_lora.cli.console import console


@click.group("targets", invoke_without_command=True)
@click.pass_context
def targets_cmd(ctx: click.Context) -> None:
    """List the shipped target profiles (or use a subcommand)."""
    if ctx.invoked_subcommand is not None:
        return
    from edge_lora.profiles import profiles_table_rows

    rows = profiles_table_rows()
    table = Table(title="target profiles (edge-lora targets show NAME)", title_justify="left")
    columns = ("name", "backend", "precision", "fallbacks", "imgsz", "gates")
    for col in columns:
        table.add_column(col, no_wrap=col != "gates", overflow="fold")
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    console.print(table)


@targets_cmd.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the resolved profile as JSON instead of YAML.")
def show_cmd(name: str, as_json: bool) -> None:
    """Print one profile, resolved (extends applied, defaults filled). NAME may be a family or a file."""
    from edge_lora.profiles import resolve_target

    profile, message = resolve_target(name)
    if message:
        console.print(f"# {message}", style="dim")
    if as_json:
        click.echo(json.dumps(profile.resolved_dict(), indent=2, sort_keys=True))
    else:
        click.echo(f"# source: {profile.source}\n# sha256: {profile.sha256()}")
        click.echo(profile.to_yaml())


@targets_cmd.command("check")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def check_cmd(path: Path) -> None:
    """Validate a profile file; exit 2 with the bad field named if it is invalid."""
    from edge_lora.profiles import load_profile

    profile = load_profile(path)
    console.print(f"{path}: valid ({profile.backend}, {' -> '.join(profile.precision_chain())})")


COMMANDS = [targets_cmd]
