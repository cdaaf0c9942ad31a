"""Device-side commands (torch-free unless a PyTorch reference is asked for): validate."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from edge_lora.cli import options
from edge_lora.cli.console import console
from edge_lora.fileio import atomic_write_json, atomic_write_text
from edge_lora.validate.report_md import render_markdown


def _gate_table(report) -> Table:
    table = Table(title=f"gates: {report.target}", title_justify="left")
    from edge_lora.validate.gates import TABLE_COLUMNS

    for c in TABLE_COLUMNS:
        table.add_column(c, overflow="fold")
    status_at = TABLE_COLUMNS.index("Status")
    for row in report.gates.table_rows():
        style = {"PASS": "green", "FAIL": "red", "SKIP": "yellow"}.get(row[status_at], "")
        table.add_row(*row, style=style)
    return table


def _summary_table(report) -> Table:
    t = Table(title="candidate vs reference", title_justify="left")
    columns = (
        "",
        "mAP50-95 COCO",
        "mAP50-95 Ultralytics",
        "mAP50",
        "F1@deploy",
        "infer p50 ms",
        "e2e p50 ms",
    )
    for c in (*columns, "e2e p99 ms", "load s"):
        t.add_column(c, justify="right")
    for label, side in (("reference", report.reference), ("candidate", report.candidate)):
        a, lat = side.accuracy, side.latency
        ultra = a.map50_95_ultralytics  # None in a report written before the figure existed
        t.add_row(
            f"{label} ({side.name})",
            f"{a.map50_95:.4f}",
            "-" if ultra is None else f"{ultra:.4f}",
            f"{a.map50:.4f}",
            f"{a.f1:.3f}",
            f"{lat['infer'].p50_ms:.2f}",
            f"{lat['e2e'].p50_ms:.2f}",
            f"{lat['e2e'].p99_ms:.2f}",
            f"{side.load_time_s or 0:.2f}",
        )
    return t


@click.command("validate")
@click.option(
    "--candidate",
    required=True,
    type=click.Path(path_type=Path),
    help="Exported artifact (.onnx, OpenVINO dir/.xml, .engine).",
)
@click.option(
    "--reference",
    required=True,
    type=click.Path(path_type=Path),
    help="Base checkpoint (with --adapter) or an exported unmerged model.",
)
@click.option(
    "--adapter",
    type=click.Path(path_type=Path),
    help="Adapter directory: the reference is base + adapter, unmerged.",
)
@click.option(
    "--data", required=True, type=click.Path(path_type=Path), help="Data YAML; its val split is used."
)
@click.option("--target", required=True, help="Target profile name, family or YAML file (its gates apply).")
@click.option("--max-images", type=int, help="Use only the first N val images.")
@click.option("--warmup", type=int, help="Warm-up runs (default: the profile's).")
@click.option("--runs", type=int, help="Timed runs (default: the profile's).")
@click.option(
    "--md", "md_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write a Markdown report."
)
@options.json_out
def validate_cmd(
    candidate: Path,
    reference: Path,
    adapter: Path | None,
    data: Path,
    target: str,
    max_images: int | None,
    warmup: int | None,
    runs: int | None,
    md_path: Path | None,
    json_path: Path | None,
) -> None:
    """Validate an exported artifact against the unmerged model; exit 1 when a gate fails."""
    from edge_lora.profiles import resolve_target
    from edge_lora.validate.compare import validate

    profile, _ = resolve_target(target)
    if reference.suffix == ".pt":
        # The PyTorch reference is built here, on the host side: validate() itself stays torch-free.
        from edge_lora.validate.reference import torch_reference

        ref_kwargs = {"reference": torch_reference(reference, adapter, target=profile)}
    else:
        ref_kwargs = {"reference_artifact": reference}
    with console.status("validating (accuracy, agreement, latency)..."):
        report = validate(
            candidate,
            data=data,
            target=profile,
            max_images=max_images,
            warmup=warmup,
            runs=runs,
            **ref_kwargs,
        )
    console.print(_summary_table(report))
    console.print(_gate_table(report))
    if report.latency_is_proxy:
        console.print(f"[yellow]latency is a host proxy[/yellow]: {report.proxy_reason}")
    if json_path:
        atomic_write_json(json_path, report.to_dict())
    if md_path:
        atomic_write_text(md_path, render_markdown(report))
    verdict = "[green]PASS[/green]" if report.passed else "[red]FAIL[/red]"
    console.print(f"verdict: {verdict}")
    raise SystemExit(report.return_code)


COMMANDS = [validate_cmd]


@click.command("bench")
@click.argument("artifact", required=False, type=click.Path(path_type=Path))
@click.option("--runs", type=int, default=500, show_default=True, help="Timed runs per batch size.")
@click.option("--warmup", type=int, default=50, show_default=True, help="Untimed warm-up runs.")
@click.option("--batch", "batch_list", default="1", show_default=True, help="Comma list of batch sizes.")
@click.option("--threads", type=int, help="ONNX Runtime intra-op threads (0: all cores).")
@click.option("--device", "ov_device", help="OpenVINO device (CPU, GPU, AUTO).")
@click.option(
    "--compare",
    "compare_files",
    nargs=2,
    type=click.Path(path_type=Path),
    help="Compare two bench JSON files instead.",
)
@options.json_out
def bench_cmd(
    artifact: Path | None,
    runs: int,
    warmup: int,
    batch_list: str,
    threads: int | None,
    ov_device: str | None,
    compare_files: tuple[Path, Path] | None,
    json_path: Path | None,
) -> None:
    """Latency percentiles, throughput, cold start and memory of an artifact (inference only)."""
    from rich.progress import Progress

    from edge_lora.errors import InputError
    from edge_lora.validate.bench import bench, compare_bench

    if compare_files:
        table = Table(title=f"{compare_files[0]} (a) vs {compare_files[1]} (b)", title_justify="left")
        rows = compare_bench(*compare_files)
        for c in ("batch", "a p50 ms", "b p50 ms", "a p99 ms", "b p99 ms", "b speedup"):
            table.add_column(c, justify="right")
        for r in rows:
            table.add_row(
                str(r["batch"]),
                f"{r['a_p50_ms']:.2f}",
                f"{r['b_p50_ms']:.2f}",
                f"{r['a_p99_ms']:.2f}",
                f"{r['b_p99_ms']:.2f}",
                f"{r['speedup_b_over_a']:.2f}x",
            )
        console.print(table)
        return
    if artifact is None:
        raise InputError("bench needs an ARTIFACT (or --compare A.json B.json)")
    try:
        batches = [int(b) for b in batch_list.split(",") if b.strip()]
    except ValueError:
        raise InputError(f"--batch {batch_list!r}: expected a comma list of integers, e.g. 1,4") from None
    settings: dict = {}
    if threads is not None:
        settings["intra_op_threads"] = threads
    if ov_device:
        settings["device"] = ov_device
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"bench {artifact.name}", total=len(batches) * (runs + warmup))
        report = bench(
            artifact,
            runs=runs,
            warmup=warmup,
            batches=batches,
            settings=settings,
            progress=lambda n: progress.advance(task, n),
        )
    table = Table(
        title=f"{report.runner} (load {report.load_time_s or 0:.2f}s, peak RSS {report.peak_rss_mb or 0:.0f} MB)",
        title_justify="left",
    )
    for c in ("batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "max ms", "images/s"):
        table.add_column(c, justify="right")
    for b, s in report.per_batch.items():
        table.add_row(
            str(b),
            f"{s.p50_ms:.2f}",
            f"{s.p90_ms:.2f}",
            f"{s.p99_ms:.2f}",
            f"{s.mean_ms:.2f}",
            f"{s.max_ms:.2f}",
            f"{s.throughput:.1f}",
        )
    console.print(table)
    for b, why in report.skipped_batches.items():
        console.print(f"[yellow]batch {b} skipped[/yellow]: {why}")
    d = report.device
    console.print(
        f"device: {d.get('cpu')} ({d.get('cores')} cores, {d.get('arch')})"
        + (f", {d['board']}" if "board" in d else "")
    )
    if json_path:
        atomic_write_json(json_path, report.to_dict())
        console.print(f"wrote {json_path}")


COMMANDS.append(bench_cmd)
