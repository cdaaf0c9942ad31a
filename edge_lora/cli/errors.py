"""Map edge-lora's error classes to one-line messages and exit codes (no traceback for user errors)."""

from __future__ import annotations

from typing import Any

import click

from edge_lora.errors import EdgeLoraError
from edge_lora.fileio import is_no_space, no_space_error


class EdgeLoraGroup(click.Group):
    """A Click group whose commands turn :class:`EdgeLoraError` into ``error: ...`` and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; print user errors on one line, exit with their code."""
        argv = list(ctx.args)  # the subcommand's arguments; its own context is gone once it raised
        try:
            return super().invoke(ctx)
        except EdgeLoraError as e:
            click.secho(f"error: {e}", err=True, fg="red")
            ctx.exit(e.exit_code)
        except Exception as e:
            # A full disk inside a library's own writer (Ultralytics' exporter, onnx.save, matplotlib) that no
            # edge-lora writer wrapped: still one line and its own exit code, never "a gate failed".
            # Libraries with C++ writers raise RuntimeError carrying strerror's text instead of OSError.
            if not (is_no_space(e) or "No space left on device" in str(e)):
                raise
            err = no_space_error(e if isinstance(e, OSError) else OSError(28, str(e)), _out_path(argv))
            click.secho(f"error: {err}", err=True, fg="red")
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            click.secho("interrupted", err=True, fg="yellow")
            ctx.exit(130)


def _out_path(argv: list[str]) -> str:
    """The command's ``--out`` (where the user can free space), else the working folder."""
    for i, arg in enumerate(argv[:-1]):
        if arg == "--out":
            return argv[i + 1]
        if arg.startswith("--out="):
            return arg.split("=", 1)[1]
    return "."
