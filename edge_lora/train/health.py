"""Is the adapter learning? Warnings from a run's validation curve, each naming the most likely fix.

An adapter that ends far below what its base starts from is the failure users meet on a new product: with new
defect classes the head is rebuilt and learns from scratch, and a short run stops long before the curve
flattens. What "starts from" means:

* same classes (head kept): the base's own mAP50-95 on this line's val images, measured before training (LoRA's
  ``B`` starts at zero, so this is exactly the model at step 0). An adapter below it made the base worse.
* new classes (head rebuilt): the base cannot score the new classes, so the reference is the quality the base
  reached on its own data (``train_metrics`` in its checkpoint). An adapter below :data:`FAR_BELOW` of it has
  not learned the new classes yet.

The curve then says which fix is likely: still rising at the last epoch -> more epochs; flat for the last
epochs -> a higher learning rate, a larger rank, or full fine-tuning. The thresholds are named constants so a
reader sees what "far" and "flat" mean; they are heuristics, and the warning says what it measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: New classes: an adapter whose best mAP50-95 is under this share of the base's own is "far below".
FAR_BELOW = 0.5
#: Same classes: an adapter this many mAP50-95 points (0-1 scale: 0.01 = one point) under the base made it worse.
BELOW_BASE = 0.01
#: "Still rising": the last epoch is the best and beat the earlier best by this share of it.
RISING = 0.03
#: "Flat": no epoch among the last ``max(2, epochs // 3)`` beat the earlier best by this share of it.
FLAT = 0.01


@dataclass(frozen=True)
class TrainingWarning:
    """One finding: a stable ``code``, what was measured, and the most likely fix."""

    code: str  # "below-base" | "far-below-base"
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.message}; {self.fix}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the adapter metadata's ``warnings``)."""
        return asdict(self)


def curve_shape(history: Sequence[float]) -> str:
    """``rising`` (the last epoch is the best, by :data:`RISING`), ``flat`` (no gain in the last epochs, by
    :data:`FLAT`), or ``unclear`` (too few epochs, or neither)."""
    h = [float(x) for x in history]
    if len(h) >= 2:
        earlier = max(h[:-1])
        if h[-1] >= earlier and h[-1] - earlier > RISING * max(h[-1], 1e-9):
            return "rising"
    k = max(2, len(h) // 3)
    if len(h) >= k + 2:
        before, last = max(h[:-k]), max(h[-k:])
        if last - before <= FLAT * max(before, 1e-9):
            return "flat"
    return "unclear"


def diagnose(
    history: Sequence[float], *, base_map: float | None, head_rebuilt: bool, rank: int
) -> list[TrainingWarning]:
    """Warnings for a LoRA run's per-epoch val mAP50-95 ``history`` (0-1 scale).

    Args:
        history: the validation mAP50-95 after each epoch, in order.
        base_map: what the base starts from (see the module docstring); None when unknown: no warning.
        head_rebuilt: the classes differ from the base's (the head was rebuilt).
        rank: the adapter's rank (the fix suggests a larger one).
    """
    if not history or base_map is None or base_map <= 0:
        return []
    best = max(float(x) for x in history)
    shape = curve_shape(history)
    epochs = len(history)
    if shape == "rising":
        fix = f"the curve is still rising at epoch {epochs}: train more epochs (--epochs {2 * epochs})"
    elif shape == "flat":
        fix = f"the curve flattened: try a higher --lr, a larger adapter (--rank {2 * rank}), " + (
            "or --full (new classes: the rebuilt head learns from scratch)" if head_rebuilt else "or --full"
        )
    else:
        fix = f"train more epochs (--epochs {2 * epochs}) or try --full"
    if head_rebuilt and best < FAR_BELOW * base_map:
        return [
            TrainingWarning(
                "far-below-base",
                f"the adapter's best val mAP50-95 {best:.4f} is under {FAR_BELOW:.0%} of the base's own "
                f"{base_map:.4f} (on the data the base was trained on): the new classes are not learned yet",
                fix,
            )
        ]
    if not head_rebuilt and best < base_map - BELOW_BASE:
        if shape != "rising":
            fix = "lower the learning rate (--lr), or check that the labels use the base's class ids"
        return [
            TrainingWarning(
                "below-base",
                f"the adapter's best val mAP50-95 {best:.4f} is below the base's own {base_map:.4f} on these "
                "val images: training made the base worse",
                fix,
            )
        ]
    return []
