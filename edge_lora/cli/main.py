"""``edge-lora``: thin Click commands; each calls one public API function.

Host commands import torch/ultralytics inside their body, never at module level, so the device-side
commands stay usable where only the torch-free runtime is installed.

Two distributions install this CLI (see README "Install"): the full ``edge-lora`` (every command) and the
device-only ``edge-lora-runtime``, which ships the device modules but not the host ones (train, merge,
export, build). On such an install the device commands are registered as usual, ``build`` keeps only its
``--on-device`` form, and each host command is a hidden stub that says in one line that it needs the full
distribution (exit 2), instead of a traceback about a missing module.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import click

from edge_lora import __version__
from edge_lora.cli.errors import EdgeLoraGroup
from edge_lora.errors import InputError

#: Packages only the full ``edge-lora`` distribution ships; all present = a host install.
HOST_PACKAGES = ("edge_lora.train", "edge_lora.merge", "edge_lora.export", "edge_lora.build")
#: Commands of model_cmds (not shipped in edge-lora-runtime) and the host commands of export_cmds.
HOST_COMMANDS = ("demo-data", "train", "merge", "info", "calib", "export")
#: Commands of export_cmds that run on the device (``build`` only with ``--on-device``).
DEVICE_COMMANDS_OF_EXPORT = ("engine", "build")
#: Missing modules that mean "this needs the host side", not "this install is broken".
_HOST_ONLY_IMPORTS = ("torch", "torchvision", "ultralytics", "peft", "nncf", "safetensors", "onnx", "scipy")
FULL_INSTALL = "pip install edge-lora"
#: What to do instead, on the device, where a host module is missing.
_HINTS = {
    "edge_lora.validate.reference": "; on a device, validate against the bundle's reference/unmerged.onnx",
}


def host_installed() -> bool:
    """True when the host modules are importable (the full ``edge-lora`` distribution or a source checkout)."""
    # find_spec on a submodule imports only its parent (edge_lora, already loaded), never torch.
    return all(importlib.util.find_spec(name) is not None for name in HOST_PACKAGES)


def _needs_host_message(what: str) -> str:
    return f"{what} needs the full edge-lora distribution ({FULL_INSTALL}); this is edge-lora-runtime, the device side only"


class MainGroup(EdgeLoraGroup):
    """The top-level group; on a device-only install a missing host module is a one-line error, exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; turn an import of a host-only module on a device install into a usage error."""
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as e:
            # e.g. `validate --reference base.pt` builds the PyTorch reference (edge_lora.validate.reference).
            name = e.name or ""
            host_module = name.startswith("edge_lora.") or name.split(".")[0] in _HOST_ONLY_IMPORTS
            if not host_module or host_installed():
                raise
            what = f"'edge-lora {ctx.invoked_subcommand}' with these arguments ({name})"
            hint = _HINTS.get(name, "")
            click.secho(f"error: {_needs_host_message(what)}{hint}", err=True, fg="red")
            ctx.exit(InputError.exit_code)


@click.group(
    cls=MainGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110}
)
@click.version_option(__version__, prog_name="edge-lora")
def main() -> None:
    """Fine-tune YOLO with LoRA, merge exactly, export per target, and verify it on the device."""
    if both_distributions_installed():
        click.secho(
            "warning: edge-lora and edge-lora-runtime are both installed and write the same edge_lora/ "
            "files; keep one (on a host: pip uninstall edge-lora-runtime, then pip install --force-reinstall "
            "--no-deps edge-lora)",
            err=True,
            fg="yellow",
        )


def both_distributions_installed() -> bool:
    """True when the full and the device distribution are both installed where ``edge_lora`` is imported from.

    Both would have written the same ``edge_lora/`` files, so their ``.dist-info`` folders sit next to it; a
    look there costs a directory listing, not the scan of every path entry ``importlib.metadata`` does.
    """
    import edge_lora

    site = Path(edge_lora.__file__).resolve().parent.parent
    found = {p.name.split("-")[0].lower() for p in site.glob("edge_lora*.dist-info")}
    return {"edge_lora", "edge_lora_runtime"} <= found


def _host_stub(name: str) -> click.Command:
    """A hidden command standing for host command ``name``: one line naming the full distribution, exit 2."""

    def callback(args: tuple[str, ...]) -> None:
        raise InputError(_needs_host_message(f"'edge-lora {name}'"))

    return click.Command(
        name,
        callback=callback,
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
        hidden=True,
        add_help_option=False,
    )


def _on_device_only(build: click.Command) -> click.Command:
    """``build`` as the device has it: ``--on-device BUNDLE`` works; a host build says what to install."""
    original = build.callback
    assert original is not None

    @functools.wraps(original)
    def callback(**kwargs: Any) -> Any:
        if kwargs.get("on_device") is None:
            raise InputError(
                _needs_host_message("'edge-lora build'")
                + "; here: edge-lora build --on-device BUNDLE --data DATA.yaml"
            )
        return original(**kwargs)

    device_build = click.Command(
        build.name,
        callback=callback,
        params=build.params,
        help="Finish a bundle on its device: engine build (TensorRT), validate vs the bundled unmerged "
        f"reference, bench (--on-device BUNDLE). Building bundles needs the full edge-lora ({FULL_INSTALL}).",
        context_settings=build.context_settings,
    )
    return device_build


def _register() -> None:
    from edge_lora.cli import bundle_cmds, device_cmds, export_cmds, target_cmds

    device_modules = (target_cmds, device_cmds, bundle_cmds)
    if host_installed():
        from edge_lora.cli import model_cmds

        for module in (model_cmds, export_cmds, *device_modules):
            for command in module.COMMANDS:
                main.add_command(command)
        return
    for module in device_modules:
        for command in module.COMMANDS:
            main.add_command(command)
    for command in export_cmds.COMMANDS:
        if command.name == "build":
            main.add_command(_on_device_only(command))
        elif command.name in DEVICE_COMMANDS_OF_EXPORT:
            main.add_command(command)
    for name in (*HOST_COMMANDS, *(c.name for c in export_cmds.COMMANDS)):
        if name and name not in main.commands:
            main.add_command(_host_stub(name))
    main.epilog = (
        "This is edge-lora-runtime (the device side). Host commands (train, merge, calib, export, build) "
        f"need the full distribution: {FULL_INSTALL}."
    )


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
