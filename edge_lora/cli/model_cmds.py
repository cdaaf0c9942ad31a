"""Host-side commands: demo-data, train, merge, info."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import yaml
from rich.markup import escape

from edge_lora.cli import options
from edge_lora.cli.console import console, human_bytes, kv_table
from edge_lora.errors import InputError
from edge_lora.fileio import atomic_write_json


def _write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        atomic_write_json(path, payload)
        console.print(f"wrote {path}")


def _parse_set(values: tuple[str, ...]) -> dict[str, Any]:
    extra = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(
                f"--set {item!r}: expected KEY=VALUE (an Ultralytics train argument, e.g. mosaic=0.5)"
            )
        extra[key.strip()] = yaml.safe_load(raw)
    return extra


@click.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
# Defaults equal edge_lora.data.synth.DEFAULT_* (tests/test_data.py checks): 160 train images per line is
# enough for the default calibration recipe (min_images 100), so `demo-data` then `build` works as is.
@click.option(
    "--train", "n_train", type=int, default=160, show_default=True, help="Training images per line."
)
@click.option("--val", "n_val", type=int, default=16, show_default=True, help="Validation images per line.")
@click.option("--imgsz", type=int, default=160, show_default=True, help="Image side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same bytes).")
@options.overwrite
def demo_data(out: Path, n_train: int, n_val: int, imgsz: int, seed: int, overwrite: bool) -> None:
    """Write a synthetic two-line PCB defect dataset (line A: base, line B: new product) to OUT."""
    from edge_lora.data.synth import generate_demo_dataset

    ds = generate_demo_dataset(out, n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed, overwrite=overwrite)
    console.print(f"dataset: {ds.root}\n  line A: {ds.line_a_yaml}\n  line B: {ds.line_b_yaml}")


@click.command("train")
@click.option(
    "--base",
    required=True,
    type=click.Path(path_type=Path),
    help="Base checkpoint (.pt), or a model YAML with --full.",
)
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Data YAML of the product line.")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Output adapter directory (model directory with --full).",
)
@click.option("--rank", type=int, default=8, show_default=True, help="LoRA rank r.")
@click.option(
    "--alpha", type=float, default=16.0, show_default=True, help="LoRA alpha (update scaled by alpha/r)."
)
@click.option("--dropout", type=float, default=0.0, show_default=True, help="Dropout on the LoRA branch.")
@click.option("--rslora", is_flag=True, help="Rank-stabilised LoRA: scale the update by alpha/sqrt(r).")
@click.option(
    "--targets",
    default=None,
    help="Comma list: backbone, neck, head, all, a layer index, or a regex over module names "
    "[default: backbone,neck; all when the head is rebuilt for new classes].",
)
@click.option(
    "--head",
    type=click.Choice(["auto", "frozen", "train", "lora"]),
    default="auto",
    show_default=True,
    help="auto: frozen if the classes match the base, else rebuild the class branch and train it densely; "
    "lora: rebuild only the final class convs (dense), adapt the rest of the class branch with LoRA.",
)
@click.option(
    "--norm",
    type=click.Choice(["auto", "frozen", "train"]),
    default="auto",
    show_default=True,
    help="BatchNorm layers: train their scale, shift and statistics (saved with the adapter) or keep the "
    "base's; auto: train when the head is rebuilt for new classes.",
)
@click.option("--full", is_flag=True, help="Train every weight instead (plain Ultralytics fine-tuning).")
@click.option("--epochs", type=int, default=10, show_default=True)
@options.imgsz
@click.option("--batch", type=int, default=16, show_default=True)
@click.option(
    "--lr",
    type=float,
    default=None,
    help="Initial learning rate [default: 0.005 with AdamW for new classes, else Ultralytics' auto].",
)
@click.option(
    "--optimizer", default="auto", show_default=True, help="Ultralytics optimizer name (auto: the recipe's)."
)
@click.option(
    "--warmup-epochs",
    type=float,
    default=None,
    help="Warm-up epochs [default: Ultralytics' 3.0].",
)
@click.option("--workers", type=int, default=2, show_default=True, help="Dataloader workers.")
@click.option("--device", default="cpu", show_default=True, help="Torch device: cpu, 0, 0,1 ...")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--patience", type=int, default=100, show_default=True, help="Early-stopping patience (epochs)."
)
@click.option("--plots", is_flag=True, help="Let Ultralytics write training plots.")
@click.option(
    "--set", "set_args", multiple=True, metavar="KEY=VALUE", help="Any other Ultralytics train argument."
)
@click.option(
    "--quant-aware",
    "quant_aware",
    metavar="SCHEME|TARGET",
    default=None,
    help="Train through INT8 fake quantization: u8s8, s8s8, or a target whose scheme to use "
    "(cpu-onnxruntime: u8s8, jetson: s8s8). Activation scales are calibrated on the base and recorded.",
)
@click.option(
    "--quant-calibration-images",
    type=int,
    default=32,
    show_default=True,
    help="Train images for the MinMax activation ranges (--quant-aware).",
)
@click.option(
    "--quant-scales",
    type=click.Choice(["fixed", "learned"]),
    default="fixed",
    show_default=True,
    help="--quant-aware activation scales: fixed (MinMax of the base) or learned (LSQ, from MinMax).",
)
@options.overwrite
@options.json_out
def train_cmd(
    base: Path,
    data: Path,
    out: Path,
    rank: int,
    alpha: float,
    dropout: float,
    rslora: bool,
    targets: str | None,
    head: str,
    norm: str,
    full: bool,
    epochs: int,
    imgsz: int,
    batch: int,
    lr: float | None,
    optimizer: str,
    warmup_epochs: float | None,
    workers: int,
    device: str,
    seed: int,
    patience: int,
    plots: bool,
    set_args: tuple[str, ...],
    quant_aware: str | None,
    quant_calibration_images: int,
    quant_scales: str,
    overwrite: bool,
    json_path: Path | None,
) -> None:
    """Fine-tune a YOLO detector with LoRA adapters (frozen base) and write an adapter package."""
    from edge_lora.train.api import train
    from edge_lora.train.config import LoraSettings, TrainOptions

    settings = LoraSettings(
        rank=rank,
        alpha=alpha,
        dropout=dropout,
        rslora=rslora,
        targets=None if targets is None else tuple(targets.split(",")),
        head=head,  # type: ignore[arg-type]
        norm=norm,  # type: ignore[arg-type]
    )
    opts = TrainOptions(
        base=base,
        data=data,
        out=out,
        lora=settings,
        full=full,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        lr=lr,
        optimizer=optimizer,
        warmup_epochs=warmup_epochs,
        workers=workers,
        device=device,
        seed=seed,
        patience=patience,
        plots=plots,
        overwrite=overwrite,
        extra=_parse_set(set_args),
        quant_aware=quant_aware,
        quant_calibration_images=quant_calibration_images,
        quant_scales=quant_scales,
    )
    if not full:
        console.print(
            f"LoRA r={rank} alpha={alpha:g}{' (rsLoRA)' if rslora else ''} scale={settings.scale:g} head={head}"
        )
    if opts.quant_scheme:
        via = f" (target {opts.quant_target})" if opts.quant_target else ""
        console.print(
            f"quant-aware: {opts.quant_scheme}{via}; activation scales {quant_scales}, from up to "
            f"{quant_calibration_images} train images"
        )
    result = train(
        opts,
        on_epoch=None if sys.stdout.isatty() else _print_epoch,
        on_start=lambda recipe: console.print(escape(recipe.summary()), highlight=False),
    )
    console.print(
        f"trainable parameters: {result.trainable_params:,} of {result.total_params:,} "
        f"({100 * result.trainable_share:.2f}%)"
    )
    if result.excluded:
        console.print(f"not adapted: {len(result.excluded)} layers (see edge_lora.json 'excluded')")
    metrics = " ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    what = "model" if full else "adapter"
    console.print(
        f"{what}: {result.out} ({human_bytes(result.artifact_bytes)}) in {result.seconds:.0f}s; val {metrics}"
    )
    if result.seconds_per_epoch:
        console.print(f"training loop: {result.seconds_per_epoch:.1f}s per epoch (without validation)")
    if result.start_metrics.get("mAP50-95") is not None:
        console.print(
            f"started from: val mAP50-95 {result.start_metrics['mAP50-95']:.4f} ({result.start_metrics['source']})"
        )
    for w in result.warnings:
        console.print(f"[yellow]warning[/yellow]: {escape(w)}", highlight=False)
    _write_json(json_path, result.to_dict())


def _print_epoch(r: dict) -> None:
    """One line per epoch for logs and CI (on a terminal Ultralytics' progress bars already show it)."""
    if r.get("final"):
        console.print(f"best weights: val mAP50-95 {r['map50_95']:.4f} mAP50 {r['map50']:.4f}")
        sys.stdout.flush()
        return
    losses = " ".join(f"{k.replace('_loss', '')} {v:.3f}" for k, v in r["losses"].items())
    console.print(
        f"epoch {r['epoch']}/{r['epochs']}  loss {losses}  val mAP50-95 {r['map50_95']:.4f} "
        f"mAP50 {r['map50']:.4f}  {r['seconds']:.0f}s"
    )
    sys.stdout.flush()  # a log file sees the line now, not at exit


@click.command("merge")
@click.option(
    "--base",
    required=True,
    type=click.Path(path_type=Path),
    help="The base checkpoint the adapter was trained on.",
)
@click.option(
    "--adapter",
    required=True,
    type=click.Path(path_type=Path),
    help="Adapter directory from 'edge-lora train'.",
)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Merged checkpoint (.pt)."
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="Data YAML whose val images prove parity (default: the adapter's).",
)
@click.option("--images", type=click.Path(path_type=Path), help="Or a folder of images for the parity check.")
@click.option(
    "--num-images", type=int, default=8, show_default=True, help="Images used for the parity check."
)
@click.option(
    "--tolerance", type=float, default=1e-4, show_default=True, help="Max relative difference (FP32)."
)
@click.option(
    "--force", is_flag=True, help="Merge even if the adapter was trained on another base (says so)."
)
@options.overwrite
@options.json_out
def merge_cmd(
    base: Path,
    adapter: Path,
    out: Path,
    data: Path | None,
    images: Path | None,
    num_images: int,
    tolerance: float,
    force: bool,
    overwrite: bool,
    json_path: Path | None,
) -> None:
    """Fold the adapter into the base weights, prove parity, write a standard Ultralytics checkpoint."""
    from edge_lora.merge import merge

    report = merge(
        base,
        adapter,
        out,
        data=data,
        images=images,
        num_images=num_images,
        tolerance=tolerance,
        force=force,
        overwrite=overwrite,
    )
    for w in report.warnings:
        console.print(f"[yellow]warning[/yellow] {w}")
    p = report.parity
    console.print(
        f"merged {report.merged_layers} LoRA layers; parity on {p.images} images: max abs {p.max_abs:.2e}, "
        f"max rel {p.max_rel:.2e} (tolerance {p.tolerance:.0e}) "
        f"detections {'identical' if p.detections_identical else 'DIFFERENT'} ({p.detections_compared} compared)"
    )
    console.print(f"checkpoint: {report.out} (sha256 {report.out_sha256[:16]}…)")
    _write_json(json_path, report.to_dict())


@click.command("info")
@click.argument("path", type=click.Path(path_type=Path))
@options.json_out
def info_cmd(path: Path, json_path: Path | None) -> None:
    """Summarise an adapter package, a model directory or a checkpoint (and verify adapter hashes)."""
    from edge_lora.info import describe

    summary = describe(path)
    rows = dict(summary)
    if "bytes" in rows:
        rows["bytes"] = f"{rows['bytes']:,} ({human_bytes(rows['bytes'])})"
    if "trainable_share" in rows:
        rows["trainable_share"] = f"{100 * rows['trainable_share']:.2f}%"
    console.print(kv_table(f"{summary['kind']}: {path}", rows))
    _write_json(json_path, summary)


COMMANDS = [demo_data, train_cmd, merge_cmd, info_cmd]
