"""The training recipe: what ``edge-lora train`` uses when no tuning flag is given, and why.

Two situations need different settings (benchmarks/results/new_classes.md, lora_vs_full.md):

* the base's classes on a new line (``--head auto`` keeps the head frozen): LoRA on the backbone and neck with
  Ultralytics' own optimizer choice already matches full fine-tuning, so nothing changes there;
* new defect classes (the class branch is rebuilt and trained from scratch): the images usually come from
  another domain too, and the frozen-base recipe learns several times slower than full fine-tuning. There
  the defaults are LoRA on every conv including the head's box branch, trained BatchNorm (scale, shift and
  running statistics: the new domain's activation statistics, a few thousand tensors kept in the adapter),
  and AdamW at 5e-3 (Ultralytics' ``optimizer=auto`` picks about 1e-3, a full-fine-tuning rate).

Any flag the user gives wins over the recipe, and the adapter metadata records each value with its source.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from edge_lora.train.config import DEFAULT_TARGETS, TrainOptions

#: Defaults for a head rebuilt for new classes (chosen from benchmarks/new_classes.py; see the module doc).
NEW_CLASS_TARGETS = ("all",)
NEW_CLASS_NORM = "train"
NEW_CLASS_OPTIMIZER = "AdamW"
NEW_CLASS_LR = 5e-3
ULTRALYTICS_WARMUP_EPOCHS = 3.0  # Ultralytics' default.yaml; kept for both situations (warm-up 0 was worse)


@dataclass(frozen=True)
class Recipe:
    """The resolved training settings and where each came from."""

    options: TrainOptions  # with targets, norm, optimizer and lr resolved
    new_classes: bool
    sources: dict[str, str]  # setting -> "--flag" | "recipe: new classes" | "recipe" | "Ultralytics"

    def record(self) -> dict[str, Any]:
        """The adapter metadata's ``recipe`` entry: each setting's value and source."""
        o = self.options
        values = {
            "targets": list(o.lora.targets or ()),
            "norm": o.lora.norm,
            "optimizer": o.optimizer,
            "lr": o.lr,
            "warmup_epochs": float(
                o.extra.get("warmup_epochs", ULTRALYTICS_WARMUP_EPOCHS)
                if o.warmup_epochs is None
                else o.warmup_epochs
            ),
        }
        situation = "new classes (head rebuilt)" if self.new_classes else "the base's classes"
        return {
            "situation": situation,
            **{k: {"value": v, "source": self.sources[k]} for k, v in values.items()},
        }

    def summary(self) -> str:
        """One line for the start of training: every recipe setting, marking those the recipe chose."""
        r = self.record()
        parts = []
        for key in ("targets", "norm", "optimizer", "lr", "warmup_epochs"):
            value, source = r[key]["value"], r[key]["source"]
            if isinstance(value, list):
                shown = ",".join(value)
            elif isinstance(value, float):
                shown = f"{value:g}"
            else:
                shown = "auto" if value is None else str(value)
            parts.append(f"{key.replace('_', '-')} {shown} ({source})")
        return f"recipe for {r['situation']}: " + "; ".join(parts)


def resolve_recipe(options: TrainOptions, new_classes: bool) -> Recipe:
    """Fill every setting the user left to the recipe (``None`` / ``auto``) for this situation."""
    lora, sources = options.lora, {}
    tag = "recipe: new classes" if new_classes else "recipe"

    targets = lora.targets
    sources["targets"] = "--targets" if targets is not None else tag
    if targets is None:
        targets = NEW_CLASS_TARGETS if new_classes else DEFAULT_TARGETS

    norm = lora.norm
    sources["norm"] = "--norm" if norm != "auto" else tag
    if norm == "auto":
        # --quant-aware folds BN with the base's statistics (as the export does), so it trains them frozen.
        norm = NEW_CLASS_NORM if new_classes and options.quant_aware is None else "frozen"
        if new_classes and options.quant_aware is not None:
            sources["norm"] = "recipe: --quant-aware keeps BatchNorm frozen"

    optimizer, lr = options.optimizer, options.lr
    user_lr = options.lr is not None or "lr0" in options.extra or "optimizer" in options.extra
    if options.optimizer == "auto" and not user_lr and new_classes:
        optimizer, lr = NEW_CLASS_OPTIMIZER, NEW_CLASS_LR
        sources["optimizer"] = sources["lr"] = tag
    else:
        sources["optimizer"] = "--optimizer" if options.optimizer != "auto" else "Ultralytics"
        sources["lr"] = "--lr" if options.lr is not None else "Ultralytics"
        if options.lr is not None and options.optimizer == "auto":
            optimizer = "AdamW"  # Ultralytics' 'auto' ignores lr0 (TrainOptions.ultralytics_overrides)
            sources["optimizer"] = "--lr (AdamW)"
        if "optimizer" in options.extra:  # --set wins over both (it is applied last)
            optimizer, sources["optimizer"] = str(options.extra["optimizer"]), "--set"
        if "lr0" in options.extra:
            lr, sources["lr"] = float(options.extra["lr0"]), "--set"
    sources["warmup_epochs"] = (
        "--warmup-epochs"
        if options.warmup_epochs is not None
        else "--set"
        if "warmup_epochs" in options.extra
        else "Ultralytics"
    )

    resolved = replace(
        options, lora=replace(lora, targets=tuple(targets), norm=norm), optimizer=optimizer, lr=lr
    )
    return Recipe(options=resolved, new_classes=new_classes, sources=sources)
