"""``edge-lora``: thin Click commands; each calls one public API function.

Host commands import torch/ultralytics inside their body, never at module level, so the device-side
commands stay usable where only the torch-free runtime is installed.
"""

from __future__ import annotations

import click

from edge_lora import __version__
from edge_lora.cli.errors import EdgeLoraGroup


@click.group(
    cls=EdgeLoraGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110}
)
@click.version_option(__version__, prog_name="edge-lora")
def main() -> None:
    """Fine-tune YOLO with LoRA, merge exactly, export per target, and verify it on the device."""


def _register() -> None:
    from edge_lora.cli import bundle_cmds, device_cmds, export_cmds, model_cmds, target_cmds

    for module in (model_cmds, export_cmds, target_cmds, device_cmds, bundle_cmds):
        for command in module.COMMANDS:
            main.add_command(command)


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
