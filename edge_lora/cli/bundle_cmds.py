"""Line-side commands for deploy bundles (torch-free): verify, run."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from edge_lora.cli import options, run_config, run_outputs
from edge_lora.cli.console import console
from edge_lora.fileio import atomic_write_json


def _checks_table(result) -> Table:
    table = Table(title=f"bundle {result.bundle}", title_justify="left")
    for c in ("check", "status", "detail"):
        table.add_column(c, overflow="fold")
    for check in result.checks:
        style = {"PASS": "green", "FAIL": "red", "WARN": "yellow"}[check.status]
        table.add_row(check.name, check.status, check.detail, style=style)
    return table


def _summary_table(summary, extra_rows: list[tuple[str, str]] = ()) -> Table:
    d = summary.to_dict()
    title = f"{Path(summary.bundle).name}: {summary.source}" + (
        " (interrupted)" if summary.interrupted else ""
    )
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("images", str(d["images"]))
    table.add_row("unreadable (skipped)", str(d["unreadable"]))
    table.add_row("rejects", f"{d['rejects']} ({100 * d['reject_rate']:.1f} %)")
    table.add_row("passes", str(d["passes"]))
    for name, n in sorted(d["defects"].items()):
        table.add_row(f"defects: {name}", str(n))
    for key in ("total", "infer"):
        stats = summary.latency.get(key)
        if stats is not None:
            table.add_row(
                f"{key} latency p50 / p90 / p99",
                f"{stats.p50_ms:.2f} / {stats.p90_ms:.2f} / {stats.p99_ms:.2f} ms",
            )
    if summary.latency:
        table.add_row("latency window", f"last {summary.latency_window} frames")
    if d["dropped"] or d["outages"]:  # a live source
        table.add_row("dropped (inference behind)", str(d["dropped"]))
        table.add_row("stream outages", f"{d['outages']} ({d['outage_s']:.1f} s without stream)")
    table.add_row("elapsed", f"{d['elapsed_s']:.1f} s ({d['fps']:.1f} frames/s)")
    for row in extra_rows:  # --mqtt counters
        table.add_row(*row)
    return table


@click.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@options.json_out
def verify_cmd(bundle: Path, json_path: Path | None) -> None:
    """Check a deploy bundle: schema, every file's sha256, no stray files, status.

    Exits 0 when it may run, 2 when it is damaged or tampered with, 1 when its build marked it failed.
    """
    from edge_lora.bundle.pack import verify_bundle

    result = verify_bundle(bundle)
    console.print(_checks_table(result))
    if json_path:
        atomic_write_json(json_path, result.to_dict())
    result.raise_for_problems()
    console.print(f"[green]OK[/green]: {result.manifest.name} may run")


@click.command("run")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--source",
    required=True,
    help="Image folder, glob ('imgs/*.png', quoted), video file, camera index (0, 1, ...), rtsp:// or "
    "http(s):// (MJPEG) stream URL, or a GStreamer pipeline ending in appsink (quoted).",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append one JSON line per frame here (default: stdout, and the summary goes to stderr).",
)
@click.option(
    "--save-annotated",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write each frame with its boxes and verdict to this folder.",
)
@click.option(
    "--watch", is_flag=True, help="Keep processing new images as they arrive in the --source folder."
)
@click.option(
    "--poll", type=click.FloatRange(min=0.01), default=0.5, show_default=True, help="--watch poll s."
)
@click.option(
    "--idle-timeout", type=click.FloatRange(min=0), help="--watch: stop after this many idle seconds."
)
@click.option(
    "--conf",
    type=click.FloatRange(0, 1),
    help="One deployment threshold for every class (default: the bundle's per-class thresholds).",
)
@click.option("--max-frames", type=click.IntRange(min=1), help="Stop after N frames.")
@click.option(
    "--queue-size",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Live source: frames waiting for inference; when full the oldest is dropped (and counted).",
)
@click.option(
    "--reconnect-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Live source: after a drop, reconnect with back-off; give up (exit 5) after this many seconds.",
)
@click.option("--allow-failed", is_flag=True, help="Run a bundle whose build was marked failed.")
@click.option(
    "--pipeline/--no-pipeline",
    default=True,
    show_default=True,
    help="Decode + letterbox the next frames and run the model in their own threads, overlapped, and batch "
    "consecutive frames for a fixed-batch model; --no-pipeline takes one frame at a time (same verdicts).",
)
@run_outputs.options
@options.json_out
@run_config.config_option
def run_cmd(
    bundle: Path,
    source: str,
    out_path: Path | None,
    save_annotated: Path | None,
    watch: bool,
    poll: float,
    idle_timeout: float | None,
    conf: float | None,
    max_frames: int | None,
    queue_size: int,
    reconnect_timeout: float,
    allow_failed: bool,
    pipeline: bool,
    json_path: Path | None,
    **outputs_kw,
) -> None:
    """Run a verified bundle on the line: one JSON line per frame with its verdict, then a summary.

    Ctrl-C finishes the current frame and prints the summary. A live source that drops is reconnected; one
    that does not come back within --reconnect-timeout ends the run with its summary and exit code 5.
    """
    from edge_lora.errors import SourceLostError
    from edge_lora.runtime.line import LineRuntime

    # With the JSON lines on stdout, keep stdout machine-readable: the summary goes to stderr.
    out_console = console if out_path is not None else Console(stderr=True, highlight=False)
    line = LineRuntime(bundle, allow_failed=allow_failed, conf=conf)
    log = lambda msg: out_console.print(msg, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    # --mqtt/--metrics-port start before the model loads (a busy port fails at once), close after the run.
    with run_outputs.open_outputs(line, out_path=out_path, log=log, **outputs_kw) as outputs, line:
        if line.manifest.status == "failed":
            out_console.print(f"[yellow]running a failed bundle[/yellow]: {line.manifest.failure_reason}")
        try:
            summary = line.run(
                source,
                out_jsonl=out_path,
                save_annotated=save_annotated,
                watch=watch,
                poll_s=poll,
                max_frames=max_frames,
                idle_timeout_s=idle_timeout,
                queue_size=queue_size,
                reconnect_timeout_s=reconnect_timeout,
                sinks=outputs.sinks,
                pipeline=pipeline,
            )
        except SourceLostError as e:  # the frames before the loss were processed: show their summary too
            out_console.print(_summary_table(e.summary))
            if json_path:
                atomic_write_json(json_path, e.summary.to_dict())
            raise
    out_console.print(_summary_table(summary, outputs.rows()))
    if json_path:
        atomic_write_json(json_path, {**summary.to_dict(), **outputs.to_dict()})


COMMANDS = [verify_cmd, run_cmd]
