"""An Ultralytics ``DetectionTrainer`` that trains only the adapters.

Datasets, augmentation, loss, EMA, logging and the training loop stay Ultralytics'. Four hooks change:

* freezing: Ultralytics' ``_setup_train`` sets ``requires_grad=True`` on every parameter not named in
  ``freeze``; we re-apply the adapter's trainable set right after it (before the optimizer is built);
* BatchNorm: the trainer puts the model back in train mode each epoch; every BN goes back to eval so
  running statistics (and ``num_batches_tracked``) stay the base's, bit for bit, except the BN layers the
  recipe trains (``norm: train``), which stay in train mode and are saved with the adapter;
* EMA: Ultralytics averages every float tensor, which would nudge the frozen base by rounding
  (d·w + (1-d)·w != w in floating point); ``AdapterEMA`` averages only the trainable tensors;
* checkpoints: instead of pickled ``last.pt``/``best.pt`` it writes adapter packages (from the EMA model,
  FP32), and the final validation runs on the merged best adapter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils.torch_utils import ModelEMA, unwrap_model

from edge_lora.errors import ToolError

#: The private ``DetectionTrainer`` hooks this module overrides or relies on. They are not a public API, so
#: pyproject.toml pins the tested Ultralytics range and a release that renamed one is refused up front
#: (instead of training silently without the frozen-base guarantees).
OVERRIDDEN_HOOKS = ("_setup_train", "_build_train_pipeline", "_model_train", "save_model", "final_eval")


def check_trainer_hooks() -> None:
    """Raise :class:`ToolError` when the installed Ultralytics lacks a hook the adapter trainer overrides."""
    missing = [h for h in OVERRIDDEN_HOOKS if not callable(getattr(DetectionTrainer, h, None))]
    if missing:
        import ultralytics

        raise ToolError(
            f"ultralytics {ultralytics.__version__} has no DetectionTrainer.{', '.join(missing)}, which edge-lora's "
            "adapter trainer overrides; install the tested range (pip install 'ultralytics>=8.4.190,<8.5')"
        )


def epoch_record(trainer: DetectionTrainer) -> dict[str, Any]:
    """One epoch's progress as plain numbers: epoch (1-based), epochs, mean losses, val metrics, seconds.

    Read from the trainer after ``on_fit_epoch_end``; shared by LoRA and full training so a log shows the
    same line for both.
    """
    tloss = trainer.tloss
    if tloss is None:
        losses = {}
    elif hasattr(tloss, "items"):  # Ultralytics 8.4: a dict of mean losses by name
        losses = dict(tloss.items())
    else:  # older: a tensor in loss_names order
        losses = dict(zip(trainer.loss_names, torch.as_tensor(tloss).flatten().tolist(), strict=False))
    metrics = trainer.metrics or {}
    epoch = trainer.epoch + 1
    return {
        "epoch": epoch,
        "epochs": trainer.epochs,
        # Ultralytics runs on_fit_epoch_end once more after validating the best weights at the end.
        "final": epoch > trainer.epochs,
        "losses": {k: round(float(v), 4) for k, v in losses.items()},
        "map50_95": float(metrics.get("metrics/mAP50-95(B)", float("nan"))),
        "map50": float(metrics.get("metrics/mAP50(B)", float("nan"))),
        "seconds": round(float(getattr(trainer, "epoch_time", None) or 0.0), 1),
    }


class AdapterEMA(ModelEMA):
    """Ultralytics' EMA restricted to the trainable tensors; frozen tensors are never touched."""

    def __init__(
        self, model: nn.Module, trainable: list[str], trained_buffers: Sequence[str] = (), **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        ema_params = dict(self.ema.named_parameters())
        model_params = dict(unwrap_model(model).named_parameters())
        self._trainable_pairs = [(ema_params[n], model_params[n]) for n in trainable]
        # Running statistics of trained BatchNorm layers: averaged like Ultralytics' EMA averages every float
        # buffer; integer ones (num_batches_tracked) copied.
        ema_buffers = dict(self.ema.named_buffers())
        model_buffers = dict(unwrap_model(model).named_buffers())
        self._buffer_pairs = [(ema_buffers[n], model_buffers[n]) for n in trained_buffers]

    def update(self, model: nn.Module) -> None:
        """EMA step over the trainable tensors only (same decay schedule as Ultralytics)."""
        if not self.enabled:
            return
        self.updates += 1
        d = self.decay(self.updates)
        with torch.no_grad():
            for e, m in self._trainable_pairs:
                e.mul_(d).add_(m.detach(), alpha=1.0 - d)
            for e, m in self._buffer_pairs:
                if e.is_floating_point():
                    e.mul_(d).add_(m.detach(), alpha=1.0 - d)
                else:
                    e.copy_(m)


class LoraDetectionTrainer(DetectionTrainer):
    """Trains the LoRA matrices (and a densely trained head, if any) of a prepared model."""

    def __init__(
        self,
        prepared_model: nn.Module,
        trainable: list[str],
        write_adapter: Callable[[nn.Module, Path], None],
        evaluate_adapter: Callable[[Path], nn.Module],
        overrides: dict[str, Any],
        validate_first: nn.Module | None = None,
        train_norms: Sequence[str] = (),
    ) -> None:
        check_trainer_hooks()
        super().__init__(overrides=overrides)
        self.model = prepared_model  # setup_model() then keeps it instead of building one
        self.trainable = list(trainable)
        self._write_adapter = write_adapter
        self._merged_from_adapter = evaluate_adapter
        self.best_adapter = self.wdir / "best_adapter"
        self.last_adapter = self.wdir / "last_adapter"
        # Validated once before the first epoch, by the validator the epochs use (same images, same settings):
        # with LoRA's B at zero this is the model at step 0, i.e. what the base starts from on this line.
        self._validate_first = validate_first
        self.start_metrics: dict[str, float] | None = None
        self.train_norms = set(train_norms)  # BatchNorm layers trained in train mode (norm: train)

    def _apply_freeze(self) -> None:
        wanted = set(self.trainable)
        for name, p in self.model.named_parameters():
            p.requires_grad_(name in wanted)

    def _build_train_pipeline(self) -> None:
        # Runs right after Ultralytics' freeze loop re-enabled every parameter, and before the optimizer exists.
        self._apply_freeze()
        super()._build_train_pipeline()

    def _setup_train(self) -> None:
        # Ultralytics warns once per frozen parameter when it re-enables it; enable first to keep the log
        # readable, the adapter's trainable set is re-applied in _build_train_pipeline() before any step.
        for p in self.model.parameters():
            p.requires_grad_(p.is_floating_point())
        super()._setup_train()
        self._apply_freeze()
        buffers = [n for n, _ in self.model.named_buffers() if n.rsplit(".", 1)[0] in self.train_norms]
        self.ema = AdapterEMA(self.model, self.trainable, buffers)
        if self._validate_first is not None:
            validator = self.get_validator()  # its own instance: the epochs' validator keeps its state
            validator.args.plots = False
            validator.args.compile = False
            self.start_metrics = validator(model=self._validate_first)
            self._validate_first = None

    def build_optimizer(self, model: nn.Module, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        """Ultralytics' optimizer, with LSQ's learned activation scales (if any) in a group of their own."""
        from edge_lora.train.lsq import own_param_group

        optimizer = super().build_optimizer(model, *args, **kwargs)
        own_param_group(optimizer, model)
        return optimizer

    def _model_train(self) -> None:
        self.model.train()
        for name, m in self.model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and name not in self.train_norms:
                m.eval()

    def save_model(self) -> bool:
        """Write the EMA adapter as ``last_adapter`` (and ``best_adapter`` on a new best fitness)."""
        ema = self.ema.ema
        if not all(torch.isfinite(p).all() for _, p in ema.named_parameters() if p.is_floating_point()):
            return False  # never write a NaN adapter; Ultralytics' NaN recovery redoes the epoch
        self._write_adapter(ema, self.last_adapter)
        if (
            self.best_fitness is not None
            and self.fitness is not None
            and math.isclose(self.best_fitness, self.fitness)
        ):
            self._write_adapter(ema, self.best_adapter)
        return True

    def final_eval(self) -> None:
        """Validate the best adapter, merged, with Ultralytics' validator (the numbers the adapter records)."""
        source = self.best_adapter if self.best_adapter.is_dir() else self.last_adapter
        if not source.is_dir():
            return
        merged = self._merged_from_adapter(source)
        self.validator.args.plots = self.args.plots
        self.validator.args.compile = False
        self.metrics = self.validator(model=merged)
        self.metrics.pop("fitness", None)
        self.final_adapter = source
