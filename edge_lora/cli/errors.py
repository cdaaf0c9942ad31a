"""Map edge-lora's error classes to one-line messages and exit codes (no traceback for user errors)."""

from __future__ import annotations

from typing import Any

import click

from edge_lora.errors import EdgeLoraError


class EdgeLoraGroup(click.Group):
    """A Click group whose commands turn :class:`EdgeLoraError` into ``error: ...`` and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; print user errors on one line, exit with their code."""
        try:
            return super().invoke(ctx)
        except EdgeLoraError as e:
            click.secho(f"error: {e}", err=True, fg="red")
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.secho("interrupted", err=True, fg="yellow")
            ctx.exit(130)
