"""Configuration of a LoRA fine-tuning run: fields that explain themselves and fail early, naming the option."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from edge_lora.errors import InputError

HeadMode = Literal["auto", "frozen", "train", "lora"]
NormMode = Literal["auto", "frozen", "train"]
DEFAULT_TARGETS = ("backbone", "neck")


@dataclass
class LoraSettings:
    """Where the low-rank adapters go and how big they are (mirrors PEFT's ``LoraConfig``)."""

    rank: int = field(default=8, metadata={"help": "LoRA rank r (size of the low-rank bottleneck)."})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha; the update is scaled by alpha / rank."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch input while training."})
    rslora: bool = field(
        default=False,
        metadata={"help": "Rank-stabilised LoRA (PEFT's use_rslora): scale the update by alpha / sqrt(r)."},
    )
    targets: tuple[str, ...] | None = field(
        default=None,
        metadata={
            "help": "Where to put adapters: 'backbone', 'neck', 'head', 'all', a layer index ('9'), "
            "or a regex matched against module names ('model\\.(1|2)\\..*'). None: the recipe's choice "
            "(edge_lora.train.recipe: backbone,neck; all when the head is rebuilt for new classes)."
        },
    )
    head: HeadMode = field(
        default="auto",
        metadata={
            "help": "'frozen': head untouched; 'train': head trained densely and saved; 'auto': frozen when the "
            "data's class names equal the base's, else the class branch is rebuilt and trained densely; 'lora': "
            "only the final class convs rebuilt and trained densely (new classes), the class branch adapted "
            "with LoRA."
        },
    )

    norm: NormMode = field(
        default="auto",
        metadata={
            "help": "BatchNorm layers: 'train' trains their scale, shift and running statistics on the new data "
            "(saved with the adapter); 'frozen' keeps the base's; 'auto': the recipe's choice (train when the "
            "head is rebuilt for new classes, frozen otherwise)."
        },
    )

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise InputError(f"--rank must be a positive integer, got {self.rank}")
        if self.alpha <= 0:
            raise InputError(f"--alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.head not in ("auto", "frozen", "train", "lora"):
            raise InputError(f"--head must be auto, frozen, train or lora, got '{self.head}'")
        if self.norm not in ("auto", "frozen", "train"):
            raise InputError(f"--norm must be auto, frozen or train, got '{self.norm}'")
        if self.targets is not None:
            self.targets = tuple(t.strip() for t in self.targets if t.strip())
            if not self.targets:
                raise InputError("--targets is empty; use e.g. 'backbone,neck'")

    @property
    def scale(self) -> float:
        """The LoRA scaling factor applied to B·A: alpha / r (alpha / sqrt(r) with ``rslora``)."""
        return self.alpha / (self.rank**0.5 if self.rslora else self.rank)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        d = asdict(self)
        d["targets"] = None if self.targets is None else list(self.targets)
        return d


@dataclass
class TrainOptions:
    """Everything ``edge-lora train`` needs. Training hyper-parameters pass through to Ultralytics."""

    base: Path = field(metadata={"help": "Base checkpoint (.pt) or model YAML."})
    data: Path = field(metadata={"help": "Ultralytics data YAML of the new product line."})
    out: Path = field(metadata={"help": "Output adapter directory (or model directory with --full)."})
    lora: LoraSettings = field(default_factory=LoraSettings)
    full: bool = field(
        default=False, metadata={"help": "Train every weight (plain Ultralytics fine-tuning)."}
    )
    epochs: int = field(default=10, metadata={"help": "Training epochs."})
    imgsz: int = field(default=640, metadata={"help": "Training and validation image size."})
    batch: int = field(default=16, metadata={"help": "Batch size."})
    lr: float | None = field(
        default=None,
        metadata={"help": "Initial learning rate (None: the recipe's, see edge_lora.train.recipe)."},
    )
    optimizer: str = field(
        default="auto", metadata={"help": "Ultralytics optimizer name, or 'auto' (the recipe's)."}
    )
    warmup_epochs: float | None = field(
        default=None, metadata={"help": "Warm-up epochs (None: the recipe's, Ultralytics' 3.0 today)."}
    )
    workers: int = field(default=2, metadata={"help": "Dataloader workers."})
    device: str = field(default="cpu", metadata={"help": "Torch device, e.g. 'cpu' or '0'."})
    seed: int = field(default=0, metadata={"help": "Random seed (Ultralytics deterministic mode)."})
    patience: int = field(default=100, metadata={"help": "Early-stopping patience in epochs."})
    plots: bool = field(default=False, metadata={"help": "Let Ultralytics write training plots."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing --out."})
    extra: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Other Ultralytics train arguments."}
    )
    quant_aware: str | None = field(
        default=None,
        metadata={
            "help": "Train the adapter through INT8 fake quantization: a scheme (u8s8, s8s8) or a target "
            "profile/family whose quantization.scheme gives it (cpu-onnxruntime: u8s8, jetson: s8s8)."
        },
    )
    quant_calibration_images: int = field(
        default=32,
        metadata={"help": "Train images whose MinMax ranges fix the activation scales (--quant-aware)."},
    )
    quant_scales: str = field(
        default="fixed",
        metadata={
            "help": "Activation scales of --quant-aware: 'fixed' (the MinMax calibration) or 'learned' (LSQ, "
            "initialised from it; the adapter records the learned ones)."
        },
    )
    #: resolved from ``quant_aware`` (``edge_lora.train.quant_aware.resolve_scheme``)
    quant_scheme: str | None = field(default=None, init=False)
    quant_target: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.base, self.data, self.out = Path(self.base), Path(self.data), Path(self.out)
        for name, value, low in (
            ("--epochs", self.epochs, 1),
            ("--imgsz", self.imgsz, 32),
            ("--batch", self.batch, 1),
        ):
            if value < low:
                raise InputError(f"{name} must be >= {low}, got {value}")
        if self.imgsz % 32:
            raise InputError(
                f"--imgsz must be a multiple of 32 (the model's largest stride), got {self.imgsz}"
            )
        if self.lr is not None and self.lr <= 0:
            raise InputError(f"--lr must be positive, got {self.lr}")
        if self.warmup_epochs is not None and self.warmup_epochs < 0:
            raise InputError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
        if self.quant_aware is not None:
            self._check_quant_aware()
        elif self.quant_scales != "fixed":
            raise InputError(
                "--quant-scales applies to --quant-aware training; add --quant-aware SCHEME|TARGET"
            )

    def _check_quant_aware(self) -> None:
        from edge_lora.train.quant_aware import resolve_scheme

        if self.full:
            raise InputError("--quant-aware trains LoRA adapters; it does not apply to --full")
        if self.lora.dropout:
            raise InputError(
                "--quant-aware trains through the merged weight W + scale*B*A, which has no LoRA branch to "
                f"drop out; use --dropout 0 (got {self.lora.dropout})"
            )
        if self.lora.norm == "train":
            raise InputError(
                "--quant-aware folds each BatchNorm into its conv (as the export does), which needs the base's "
                "running statistics; use --norm frozen (or auto) with --quant-aware"
            )
        if self.quant_scales not in ("fixed", "learned"):
            raise InputError(f"--quant-scales must be fixed or learned, got {self.quant_scales!r}")
        if self.quant_calibration_images < 1:
            raise InputError(f"--quant-calibration-images must be >= 1, got {self.quant_calibration_images}")
        self.quant_scheme, self.quant_target = resolve_scheme(self.quant_aware)

    def ultralytics_overrides(self) -> dict[str, Any]:
        """The arguments handed to the Ultralytics trainer."""
        args: dict[str, Any] = {
            "data": str(self.data),
            "epochs": self.epochs,
            "imgsz": self.imgsz,
            "batch": self.batch,
            "optimizer": self.optimizer,
            "workers": self.workers,
            "device": self.device,
            "seed": self.seed,
            "deterministic": True,
            "patience": self.patience,
            "plots": self.plots,
            "amp": self.device != "cpu",
            "exist_ok": True,
        }
        if self.warmup_epochs is not None:
            args["warmup_epochs"] = self.warmup_epochs
        if self.lr is not None:
            args["lr0"] = self.lr
            if (
                self.optimizer == "auto"
            ):  # 'auto' ignores lr0 in Ultralytics; pick its small-run choice explicitly
                args["optimizer"] = "AdamW"
        args.update(self.extra)
        return args
