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
    for note in result.notes:
        console.print(f"[yellow]note[/yellow] {note}")
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
    from edge_lora.runtime.tensorrt_engine import build_engine

    result = build_engine(
        plan, out, device=device, allow_other_device=allow_other_device, overwrite=overwrite
    )
    fp = result.fingerprint
    console.print(
        f"engine: {result.engine} ({result.precision}, {'strongly typed' if result.strongly_typed else ' '.join(result.flags)}) "
        f"in {result.seconds:.0f}s\nfingerprint: {fp.get('gpu_name')} sm {fp.get('compute_capability')}, "
        f"TensorRT {fp.get('tensorrt_version')} -> {result.fingerprint_path}"
    )
    for w in result.warnings:
        console.print(f"[yellow]warning[/yellow] {w}")


COMMANDS = [calib_cmd, export_cmd, engine_cmd]


@click.command("build")
@click.option("--base", type=click.Path(path_type=Path), help="Base checkpoint the adapters were trained on.")
@click.option(
    "--adapter",
    "adapters",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Adapter folder (repeatable).",
)
@click.option(
    "--target",
    "targets",
    multiple=True,
    help="Profile, family (jetson, intel, cpu, rpi, gpu) or YAML (repeatable).",
)
@click.option(
    "--targets-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file listing targets, one per line.",
)
@click.option(
    "--data", type=click.Path(path_type=Path), help="Data YAML (val: validation, train: INT8 calibration)."
)
@click.option(
    "--out",
    default="dist",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Bundles folder.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16", "int8", "auto"]),
    help="Override the profile's precision.",
)
@click.option(
    "--set",
    "set_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a profile field on every target, e.g. imgsz=320 or gates.max_map_drop=0.5.",
)
@click.option(
    "--cache", type=click.Path(file_okay=False, path_type=Path), help="Stage cache (default OUT/.cache)."
)
@click.option("--clean", is_flag=True, help="Drop the stage cache and start over.")
@click.option("--archive", is_flag=True, help="Also write each bundle as .tar.gz.")
@click.option("--max-images", type=int, help="Validate on the first N val images only.")
@click.option("--runs", type=int, help="Timed latency runs (default: the profile's).")
@click.option("--warmup", type=int, help="Warm-up runs (default: the profile's).")
@click.option(
    "--on-device",
    "on_device",
    type=click.Path(file_okay=False, path_type=Path),
    help="Finish a bundle on its device instead: engine build (TensorRT), validate vs the bundled unmerged reference, bench.",
)
@options.json_out
def build_cmd(
    base,
    adapters,
    targets,
    targets_file,
    data,
    out,
    precision,
    set_args,
    cache,
    clean,
    archive,
    max_images,
    runs,
    warmup,
    on_device,
    json_path,
) -> None:
    """merge -> calibrate -> export/quantize -> validate vs the unmerged model -> deploy bundle, per (adapter, target)."""
    from edge_lora.errors import InputError

    if on_device is not None:
        from edge_lora.on_device import finish_on_device

        if data is None:
            raise InputError("--on-device needs --data DATA.yaml (labelled images from the line)")
        report = finish_on_device(on_device, data=data, runs=runs, warmup=warmup, max_images=max_images)
        console.print(
            f"on-device validation: {'PASS' if report['passed'] else 'FAIL'}; results in {report['out']}"
        )
        raise SystemExit(0 if report["passed"] else 1)
    from edge_lora.build import build

    targets = list(targets)
    if targets_file:
        targets += [
            ln.strip()
            for ln in targets_file.read_text().splitlines()
            if ln.strip() and not ln.startswith("#")
        ]
    if base is None or data is None:
        raise InputError("build needs --base, --adapter, --target and --data")
    status = console.status("building...")
    status.start()

    logging = not console.is_terminal  # a log file or CI: no spinner, so say when a long stage starts

    def on_event(kind: str, d: dict) -> None:
        if kind == "stage_start":
            status.update(f"{d['stage']} ...")
            if logging:
                console.print(f"  {d['stage']} ...")
        elif kind == "note":
            console.print(f"[yellow]note[/yellow]: {d['message']}")
        elif kind == "progress":  # inside a stage (the accuracy-aware INT8 search)
            status.update(d["message"])
            if logging:
                console.print(f"    {d['message']}")
        elif kind == "stage_end":
            tag = "[dim]cached[/dim]" if d["cached"] else f"{d['seconds']:.1f}s"
            console.print(f"  {d['name']:<40} {tag:>14}  {d['verdict']}")

    try:
        from edge_lora.profiles import parse_override

        overrides = dict(parse_override(s) for s in set_args)
        result = build(
            base=base,
            overrides=overrides,
            adapters=list(adapters),
            targets=targets,
            data=data,
            out=out,
            cache=cache,
            precision=precision,
            clean=clean,
            archive=archive,
            max_images=max_images,
            runs=runs,
            warmup=warmup,
            on_event=on_event,
        )
    finally:
        status.stop()
    table = Table(title="bundles", title_justify="left")
    for c in (
        "adapter",
        "target",
        "ships",
        "mAP50-95 ref -> cand",
        "agreement F1",
        "e2e p50 ms",
        "speedup",
        "verdict",
        "bundle",
    ):
        table.add_column(c, overflow="fold")
    for b in result.bundles:
        if b.target_message:
            console.print(b.target_message, style="dim")
        c = next(
            (x for x in b.candidates if x["precision"] == b.chosen),
            b.candidates[-1] if b.candidates else None,
        )
        table.add_row(
            b.adapter,
            b.target,
            b.chosen or "-",
            f"{c['ref_map50_95']:.4f} -> {c['map50_95']:.4f}" if c else "-",
            f"{c['agreement_f1']:.4f}" if c else "-",
            f"{c['e2e_p50_ms']:.1f}" if c else "-",
            f"{c['speedup'] or 0:.1f}x" if c else "-",
            "[green]PASS[/green]" if b.passed else "[red]FAIL[/red]",
            str(b.bundle),
        )
    console.print(table)
    if json_path:
        atomic_write_json(
            json_path, {"passed": result.passed, "bundles": [b.to_dict() for b in result.bundles]}
        )
    raise SystemExit(result.return_code)


COMMANDS.append(build_cmd)
