"""``train()``: LoRA (or full) fine-tuning of a YOLO detector, the public API behind ``edge-lora train``."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from copy import deepcopy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from edge_lora.errors import InputError, ToolError
from edge_lora.fileio import atomic_output_dir, atomic_write_json, check_output, sha256_file
from edge_lora.models import (
    LoadedModel,
    load_detection_model,
    model_yaml_name,
    structural_fingerprint,
    versions,
)
from edge_lora.train.adapter_io import build_adapted_model, read_adapter, write_adapter
from edge_lora.train.config import TrainOptions
from edge_lora.train.inject import (
    frozen_changes,
    frozen_snapshot,
    inject_lora,
    lora_config,
    plan_targets,
    rebuild_for_classes,
    resolve_head_mode,
    set_trainable,
)
from edge_lora.train.recipe import Recipe, resolve_recipe

HEAD_INIT_SEED = 0


@dataclass
class TrainResult:
    """What a training run produced."""

    out: Path
    mode: str  # "lora" | "full"
    trainable_params: int
    total_params: int
    artifact_bytes: int  # adapter files (LoRA) or checkpoint (full)
    metrics: dict[str, float]
    seconds: float
    epochs: int
    peak_rss_mb: float
    excluded: dict[str, str] = field(default_factory=dict)
    head_mode: str = "frozen"
    frozen_tensors_verified: int = 0  # base tensors checked bit-identical after training (model and EMA)
    seconds_per_epoch: float = 0.0  # mean training-loop seconds per epoch (without validation)
    quant_scheme: str | None = None  # u8s8 | s8s8 when trained quant-aware
    history: list[dict[str, Any]] = field(default_factory=list)  # per epoch: epoch, map50_95, map50, seconds
    start_metrics: dict[str, Any] = field(
        default_factory=dict
    )  # what the base starts from (see train.health)
    warnings: list[str] = field(default_factory=list)  # the adapter is not learning, with the likely fix
    recipe: dict[str, Any] = field(default_factory=dict)  # resolved settings and their sources (train.recipe)

    @property
    def trainable_share(self) -> float:
        """Trainable parameters as a fraction of the model's parameters."""
        return self.trainable_params / max(self.total_params, 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        d = asdict(self)
        d["out"] = str(self.out)
        d["trainable_share"] = self.trainable_share
        return d


def _metrics(raw: dict[str, Any] | None) -> dict[str, float]:
    keys = {
        "metrics/mAP50-95(B)": "mAP50-95",
        "metrics/mAP50(B)": "mAP50",
        "metrics/precision(B)": "precision",
        "metrics/recall(B)": "recall",
    }
    return {short: round(float(raw[k]), 6) for k, short in keys.items() if raw and k in raw}


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _base_record(base: LoadedModel) -> dict[str, Any]:
    return {
        "path": base.source,
        "sha256": base.sha256,
        "fingerprint": structural_fingerprint(base.model),
        "yaml": model_yaml_name(base.model),
        "names": {str(k): v for k, v in base.names.items()},
    }


def _data_record(data_spec: Any) -> dict[str, Any]:
    return {"yaml": str(Path(data_spec.yaml_path).resolve()), "sha256": data_spec.sha256}


def merged_from_adapter(base_model: nn.Module, adapter_dir: Path) -> nn.Module:
    """Base + adapter merged into plain convs (used for validation during training and by ``merge``)."""
    model, tuner = build_adapted_model(base_model, read_adapter(adapter_dir))
    return tuner.merge_and_unload(safe_merge=True)


EpochCallback = Callable[[dict[str, Any]], None]


def _report_epochs(trainer: Any, on_epoch: EpochCallback | None) -> None:
    """Hand :func:`epoch_record` of every finished epoch (after validation) to ``on_epoch``."""
    if on_epoch is None:
        return
    from edge_lora.train.trainer import epoch_record

    trainer.add_callback("on_fit_epoch_end", lambda t: on_epoch(epoch_record(t)))


def _collect_history(trainer: Any) -> list[dict[str, Any]]:
    """Every finished epoch's val mAP (the curve the adapter metadata records and train.health reads)."""
    from edge_lora.train.trainer import epoch_record

    history: list[dict[str, Any]] = []

    def add(t: Any) -> None:
        r = epoch_record(t)
        if not r["final"]:
            history.append({k: r[k] for k in ("epoch", "map50_95", "map50", "seconds")})

    trainer.add_callback("on_fit_epoch_end", add)
    return history


def _start_metrics(base: LoadedModel, measured: dict[str, Any] | None, rebuilt: bool) -> dict[str, Any]:
    """What the base starts from: measured on this line's val images (same classes), else the base's own
    final val metrics from its checkpoint (new classes: the base cannot score them)."""
    if not rebuilt and measured:
        return {**_metrics(measured), "source": "the base on this data's val images, before training"}
    if rebuilt and base.train_metrics:
        return {**_metrics(base.train_metrics), "source": "the base's own val metrics (its checkpoint)"}
    return {}


def train(
    options: TrainOptions,
    on_epoch: EpochCallback | None = None,
    on_start: Callable[[Recipe], None] | None = None,
) -> TrainResult:
    """Fine-tune ``options.base`` on ``options.data`` with LoRA adapters (or every weight with ``full``).

    Settings left to the recipe (targets, norm, optimizer, lr, warm-up) are resolved for the situation (the
    base's classes, or new classes with the head rebuilt: :mod:`edge_lora.train.recipe`); ``on_start``
    receives the resolved :class:`~edge_lora.train.recipe.Recipe` before training starts, and the adapter
    metadata records it. ``on_epoch`` receives one record per finished epoch (epoch, epochs, losses, val
    mAP, seconds), so a caller without a terminal (a log file, CI) can show progress.

    Returns a :class:`TrainResult`; the adapter package (or ``model.pt`` with ``full``) is in ``options.out``,
    written atomically: a failed run leaves no output directory behind.
    """
    from edge_lora.data.checks import load_data_yaml

    check_output(options.out, options.overwrite)
    data = load_data_yaml(options.data, check_images=True)
    if options.full:
        return _train_full(options, data, on_epoch)
    if Path(options.base).suffix.lower() in (".yaml", ".yml"):
        raise InputError(
            f"--base {options.base}: LoRA adapts trained weights, a model YAML has none; "
            "train a base first with --full, then pass its model.pt"
        )
    base = load_detection_model(options.base)
    head_mode = resolve_head_mode(options.lora.head, base.names, data.names)
    rebuilt = base.names != data.names
    recipe = resolve_recipe(options, new_classes=rebuilt)
    options, settings = recipe.options, recipe.options.lora
    if on_start is not None:
        on_start(recipe)
    model = (
        rebuild_for_classes(base.model, data.names, seed=HEAD_INIT_SEED) if rebuilt else deepcopy(base.model)
    )
    plan = plan_targets(model, settings, head_mode)
    # Calibrated before injection: the activation scales are the frozen base's, as plain PTQ would see them.
    quant = _calibrate_quant_aware(model, plan.targets, data, options) if options.quant_scheme else None
    inject_lora(model, lora_config(settings, plan.targets, base.source))
    if quant is not None:
        from edge_lora.train.quant_aware import enable_quant_aware

        quant["scales_folded"] = enable_quant_aware(model, quant["scales"])
    elif not settings.dropout:  # one conv with W + s*B*A per adapted layer: full fine-tuning's cost per step
        from edge_lora.train.merged_forward import enable_merged_forward

        enable_merged_forward(model)
    trainable = set_trainable(model, plan.dense_prefixes)
    learned_names = _learned_scales(model, trainable, quant) if options.quant_scales == "learned" else []
    # Dense head tensors and learned scales are trained on purpose; everything else (base weights, every BN
    # buffer) must stay.
    snapshot = frozen_snapshot(
        model,
        [k for k in model.state_dict() if any(k.startswith(p + ".") for p in plan.dense_prefixes)]
        + learned_names,
    )
    n_trainable = sum(p.numel() for n, p in model.named_parameters() if n in set(trainable))
    n_total = sum(p.numel() for n, p in base.model.named_parameters())

    meta: dict[str, Any] = {
        **_run_record(base, data, options),
        "nc": len(data.names),
        "lora": {
            **settings.to_dict(),
            "target_modules": plan.targets,
            "scale": settings.scale,
            # how training computed the adapted convs (edge_lora.train.merged_forward); PEFT's form elsewhere
            "train_forward": "quant-aware"
            if quant
            else "lora-branch"
            if settings.dropout
            else "merged-weight",
        },
        "recipe": recipe.record(),
        "norm": {"mode": settings.norm, "modules": plan.norm_modules},
        "excluded": plan.excluded,
        "head": {
            "requested": settings.head,
            "mode": head_mode,
            "rebuilt": rebuilt,
            "init_seed": HEAD_INIT_SEED,
        },
        "trainable_modules": sorted(
            {n.rsplit(".", 2)[0] if "lora_" in n else n.rsplit(".", 1)[0] for n in trainable}
        ),
        "trainable_params": n_trainable,
        "total_params": n_total,
    }
    if quant is not None:
        meta["quant_aware"] = _quant_record(quant, options)

    def write(ema_model: nn.Module, where: Path) -> None:
        record = meta
        if learned_names:  # the scales this (EMA) model has learned so far go into its package
            record = {**meta, "quant_aware": _quant_record(quant, options, ema_model)}
        with atomic_output_dir(where, overwrite=True) as tmp:
            write_adapter(tmp, ema_model, plan.dense_prefixes, record)

    def evaluate(adapter_dir: Path) -> nn.Module:
        return merged_from_adapter(base.model, adapter_dir)

    from edge_lora.train.trainer import LoraDetectionTrainer

    start = time.perf_counter()
    with atomic_output_dir(options.out, options.overwrite) as tmp:
        overrides = {
            **options.ultralytics_overrides(),
            "model": str(base.source),
            "project": str(Path(tmp).resolve()),  # Ultralytics puts a relative project under runs/<task>/
            "name": "training",
        }
        trainer = LoraDetectionTrainer(
            model,
            trainable,
            write,
            evaluate,
            overrides,
            validate_first=None if rebuilt else deepcopy(base.model),
            train_norms=plan.norm_modules,
        )
        _report_epochs(trainer, on_epoch)
        epoch_seconds = _time_epochs(trainer)
        history = _collect_history(trainer)
        trainer.train()
        seconds = time.perf_counter() - start
        for label, trained in (("model", trainer.model), ("EMA model", trainer.ema.ema)):
            changed = frozen_changes(trained, snapshot)
            if changed:
                raise ToolError(
                    f"the frozen base changed during training ({label}: {changed[0]} and {len(changed) - 1} more)"
                )
        final = getattr(trainer, "final_adapter", None)
        if final is None:
            raise InputError(f"training on {options.data} produced no adapter (every epoch had NaN weights?)")
        metrics = _metrics(trainer.metrics)
        from edge_lora.train.health import diagnose

        start_metrics = _start_metrics(base, trainer.start_metrics, rebuilt)
        warnings = diagnose(
            [h["map50_95"] for h in history],
            base_map=start_metrics.get("mAP50-95"),
            head_rebuilt=rebuilt,
            rank=settings.rank,
        )
        if learned_names:  # the chosen adapter's learned scales, as its package recorded them
            meta["quant_aware"] = json.loads((final / "edge_lora.json").read_text())["quant_aware"]
        final_meta = {
            **meta,
            "frozen_tensors_verified": len(snapshot),
            "metrics": metrics,
            "epochs_run": trainer.epoch + 1,
            "train_seconds": round(seconds, 2),
            "epoch_seconds": [round(t, 2) for t in epoch_seconds],
            "seconds_per_epoch": round(_mean(epoch_seconds), 2),
            "history": history,
            "start_metrics": start_metrics,
            "warnings": [w.to_dict() for w in warnings],
        }
        write_adapter(tmp, _load_into(model, final), plan.dense_prefixes, final_meta)
        shutil.rmtree(
            tmp / "training" / "weights", ignore_errors=True
        )  # the chosen adapter is at the top level
        size = sum(
            f.stat().st_size for f in tmp.iterdir() if f.is_file() and f.suffix in (".safetensors", ".json")
        )
    return TrainResult(
        out=options.out,
        mode="lora",
        trainable_params=n_trainable,
        total_params=n_total,
        artifact_bytes=size,
        metrics=metrics,
        seconds=seconds,
        epochs=trainer.epoch + 1,
        peak_rss_mb=_peak_rss_mb(),
        excluded=plan.excluded,
        head_mode=head_mode,
        frozen_tensors_verified=len(snapshot),
        seconds_per_epoch=_mean(epoch_seconds),
        quant_scheme=options.quant_scheme,
        history=history,
        start_metrics=start_metrics,
        warnings=[str(w) for w in warnings],
        recipe=recipe.record(),
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _time_epochs(trainer: Any) -> list[float]:
    """Seconds of each epoch's training loop (the optimizer steps, without the per-epoch validation).

    This is the number quant-aware training's cost is compared on (the issue's 1.5x budget): validation
    and checkpoint writing are the same for both.
    """
    times: list[float] = []
    started: list[float] = []
    trainer.add_callback("on_train_epoch_start", lambda _t: started.append(time.perf_counter()))
    trainer.add_callback("on_train_epoch_end", lambda _t: times.append(time.perf_counter() - started[-1]))
    return times


def _calibrate_quant_aware(
    model: nn.Module, targets: list[str], data: Any, options: TrainOptions
) -> dict[str, Any]:
    """MinMax ranges of the adapted convs' inputs on train images -> fixed activation quantizers."""
    from edge_lora.train.quant_aware import (
        activation_quant,
        calibrate,
        calibration_images,
        float_stem_for,
        stem_convs,
    )

    start = time.perf_counter()
    # The export keeps the stem float (policy float_stem): train it float too, or the shipped model differs.
    floats = sorted(set(targets) & stem_convs(model)) if float_stem_for(options.quant_target) else []
    quantized = [t for t in targets if t not in floats]
    images = calibration_images(data.splits["train"], options.quant_calibration_images)
    ranges = calibrate(model, quantized, images, options.imgsz)
    scales = {n: activation_quant(lo, hi, str(options.quant_scheme)) for n, (lo, hi) in ranges.items()}
    shared: list[list[str]] = []
    if options.quant_scales == "learned":  # convs reading one tensor must learn one scale (one quantizer)
        from edge_lora.train.lsq import shared_input_groups

        shared = shared_input_groups(model, quantized, images[0], options.imgsz)
    return {
        "scales": scales,
        "shared_inputs": shared,
        "float_convs": floats,
        "images": len(images),
        "seconds": time.perf_counter() - start,
    }


def _learned_scales(model: nn.Module, trainable: list[str], quant: dict[str, Any] | None) -> list[str]:
    """Register LSQ's learned activation scales (``--quant-scales learned``) and make them trainable."""
    from edge_lora.train.lsq import add_learned_scales

    names = add_learned_scales(model, quant["shared_inputs"] if quant else ())
    # A shared parameter is listed once by named_parameters (what the optimizer and EMA see), under each
    # module by the state dict (what the frozen-base check must skip).
    wanted = set(names)
    trainable += [n for n, _ in model.named_parameters() if n in wanted]
    return names


def _quant_record(
    quant: dict[str, Any], options: TrainOptions, learned_from: nn.Module | None = None
) -> dict[str, Any]:
    from edge_lora.train.lsq import learned_scales
    from edge_lora.train.quant_aware import quant_aware_record

    return quant_aware_record(
        str(options.quant_scheme),
        options.quant_target,
        quant["scales"],
        quant["scales_folded"],
        quant["images"],
        options.imgsz,
        quant["seconds"],
        quant["float_convs"],
        learned_scales(learned_from) if learned_from is not None else None,
    )


def _run_record(base: Any, data: Any, options: TrainOptions) -> dict[str, Any]:
    """What a training run started from, recorded the same way for adapters and full fine-tunes."""
    return {
        "base": _base_record(base),
        "names": {str(k): v for k, v in data.names.items()},
        "imgsz": options.imgsz,
        "data": _data_record(data),
        "train": {k: v for k, v in options.ultralytics_overrides().items() if k != "data"},
        "versions": versions(),
    }


def _load_into(model: nn.Module, adapter_dir: Path) -> nn.Module:
    """A copy of the training model holding the tensors of ``adapter_dir`` (to rewrite it with final metadata)."""
    from peft.utils import set_peft_model_state_dict

    package = read_adapter(adapter_dir)
    copy = deepcopy(model)
    if package.dense_state:
        copy.load_state_dict(package.dense_state, strict=False)
    set_peft_model_state_dict(copy, package.lora_state, adapter_name="default")
    return copy


def _train_full(options: TrainOptions, data: Any, on_epoch: EpochCallback | None = None) -> TrainResult:
    """Plain Ultralytics fine-tuning of every weight (the demo's base, the benchmark's baseline)."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    is_yaml = Path(options.base).suffix.lower() in (".yaml", ".yml")
    base = load_detection_model(options.base, nc=len(data.names) if is_yaml else None)
    start = time.perf_counter()
    with atomic_output_dir(options.out, options.overwrite) as tmp:
        overrides = {
            **options.ultralytics_overrides(),
            "model": str(base.source),
            "pretrained": not is_yaml,
            "project": str(Path(tmp).resolve()),  # Ultralytics puts a relative project under runs/<task>/
            "name": "training",
        }
        trainer = DetectionTrainer(overrides=overrides)
        _report_epochs(trainer, on_epoch)
        trainer.train()
        seconds = time.perf_counter() - start
        best = trainer.best if trainer.best.exists() else trainer.last
        shutil.copy2(best, tmp / "model.pt")
        shutil.rmtree(tmp / "training" / "weights", ignore_errors=True)
        n_total = sum(p.numel() for p in base.model.parameters())
        metrics = _metrics(trainer.metrics)
        atomic_write_json(
            tmp / "edge_lora.json",
            {
                "kind": "edge-lora-model",
                "schema_version": 1,
                "mode": "full",
                **_run_record(base, data, options),
                "metrics": metrics,
                "train_seconds": round(seconds, 2),
                "files": {"model.pt": sha256_file(tmp / "model.pt")},
            },
        )
        size = (tmp / "model.pt").stat().st_size
    return TrainResult(
        out=options.out,
        mode="full",
        trainable_params=n_total,
        total_params=n_total,
        artifact_bytes=size,
        metrics=metrics,
        seconds=seconds,
        epochs=trainer.epoch + 1,
        peak_rss_mb=_peak_rss_mb(),
        head_mode="train",
    )
