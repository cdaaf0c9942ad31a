"""Export-side commands: calib, export (host) and engine build (on the TensorRT device)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from edge_lora.cli import options
from edge_lora.cli.console import console, human_bytes
from edge_lora.fileio import atomic_write_json


@click.command("calib")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Data YAML to draw images from.")
@click.option(
    "--recipe", default="default", show_default=True, help="Recipe name (calib/*.yaml) or a YAML file."
)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@options.overwrite
def calib_cmd(data: Path, recipe: str, out: Path, overwrite: bool) -> None:
    """Select a calibration set (class-stratified, de-duplicated) and record it with hashes."""
    from edge_lora.export.calibration import select_calibration

    cs = select_calibration(data, recipe, out, overwrite=overwrite)
    console.print(f"calibration set: {out} ({len(cs)} images, sha256 {cs.sha256[:16]}…)")
    coverage = getattr(cs, "coverage", None)
    if coverage:
        console.print("images per class: " + ", ".join(f"{k}: {v}" for k, v in dict(coverage).items()))


@click.command("export")
@click.option("--model", required=True, type=click.Path(path_type=Path), help="Merged checkpoint (.pt).")
@click.option("--target", required=True, help="Target profile name, family or YAML file.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option(
    "--data", type=click.Path(path_type=Path), help="Data YAML: checks each export; INT8 calibrates on it."
)
@click.option(
    "--calib", type=click.Path(path_type=Path), help="Calibration set from 'edge-lora calib' (INT8)."
)
@click.option(
    "--precision", "precision_list", help="Comma list overriding the profile's precisions, e.g. fp32,int8."
)
@options.overwrite
@options.json_out
def export_cmd(
    model: Path,
    target: str,
    out: Path,
    data: Path | None,
    calib: Path | None,
    precision_list: str | None,
    overwrite: bool,
    json_path: Path | None,
) -> None:
    """Export a merged checkpoint for a target profile (ONNX / OpenVINO / TensorRT plan; FP32/FP16/INT8)."""
    from edge_lora.export.api import export
    from edge_lora.profiles import resolve_target

    _, message = resolve_target(target)
    if message:
        console.print(message, style="dim")
    precisions = [p.strip() for p in precision_list.split(",")] if precision_list else None
    with console.status(f"exporting for {target}..."):
        result = export(
            model, target, out, data=data, calib=calib, precisions=precisions, overwrite=overwrite
        )
    table = Table(title=f"artifacts for {result.target}", title_justify="left")
    for c in ("backend", "precision", "path", "size", "seconds"):
        table.add_column(c)
    for a in result.artifacts:
        table.add_row(a.backend, a.precision, str(a.path), human_bytes(a.bytes), f"{a.seconds:.1f}")
    console.print(table)
    for precision, why in result.failures.items():
        console.print(f"[yellow]{precision} not built[/yellow]: {why}")
    if json_path:
        atomic_write_json(json_path, result.to_dict())


@click.group("engine")
def engine_cmd() -> None:
    """TensorRT engines (run these on the device)."""


@engine_cmd.command("build")
@click.argument("plan", type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Engine file (default: PLAN/model.engine)."
)
@click.option("--device", type=int, default=0, show_default=True, help="CUDA device index.")
@click.option(
    "--allow-other-device", is_flag=True, help="Build even if the device is not the plan's target family."
)
@options.overwrite
def engine_build_cmd(
    plan: Path, out: Path | None, device: int, allow_other_device: bool, overwrite: bool
) -> None:
    """Build the TensorRT engine from a plan folder written by export/build (needs tensorrt + a GPU)."""
    from edge_lora.export.tensorrt_export import build_engine

    result = build_engine(
        plan, out, device=device, allow_other_device=allow_other_device, overwrite=overwrite
    )
    console.print(f"engine: {getattr(result, 'engine', result)}")


COMMANDS = [calib_cmd, export_cmd, engine_cmd]
