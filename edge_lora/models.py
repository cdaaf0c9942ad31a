"""Load, fingerprint and save Ultralytics detection models (host side: imports torch and ultralytics).

A base may be a checkpoint (``base.pt``) or a model YAML (``yolo26n.yaml``, random init: the offline demo
and the tests use that). Anything else fails with one line that says what to pass instead.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge_lora.errors import ModelError
from edge_lora.fileio import atomic_write_bytes, sha256_file, sha256_json

_YAML_SUFFIXES = {".yaml", ".yml"}


@dataclass
class LoadedModel:
    """A detection model in FP32 eval mode plus where it came from."""

    model: nn.Module
    source: str
    sha256: str | None  # None for a model built from YAML (nothing on disk to hash but the YAML)
    from_yaml: bool
    train_args: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)  # edge-lora's record in the checkpoint (merge's)
    # Ultralytics' final val metrics of the checkpoint's own training (its ``train_metrics``)
    train_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def names(self) -> dict[int, str]:
        """Class names as {id: name}."""
        return normalize_names(getattr(self.model, "names", {}))


def normalize_names(names: Any) -> dict[int, str]:
    """Ultralytics stores names as a dict or a list; return {int: str}."""
    if isinstance(names, (list, tuple)):
        return {i: str(n) for i, n in enumerate(names)}
    return {int(k): str(v) for k, v in dict(names or {}).items()}


@contextlib.contextmanager
def quiet_ultralytics() -> Iterator[None]:
    """Silence Ultralytics' INFO logs (it prints every layer when a model is built) inside the block."""
    logger = logging.getLogger("ultralytics")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _resolve_checkpoint(path: Path) -> Path:
    """Return an existing checkpoint path, or try Ultralytics' asset download for an official name."""
    if path.is_file():
        return path
    if path.exists():
        raise ModelError(f"base {path} is a directory, not a checkpoint; pass a .pt file or a model .yaml")
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES, attempt_download_asset

    if path.name in GITHUB_ASSETS_NAMES and path.parent == Path("."):
        # Online users get the official weights the usual way; offline users get a clear line, not a retry loop.
        try:
            downloaded = Path(attempt_download_asset(str(path)))
        except Exception as e:  # network errors surface as many types across versions
            downloaded = None
            reason = f"{type(e).__name__}: {e}".splitlines()[0]
        else:
            reason = "download produced no file"
        if downloaded is not None and downloaded.is_file():
            return downloaded
        raise ModelError(
            f"base {path} not found and could not be downloaded ({reason}); download it from "
            f"https://github.com/ultralytics/assets/releases on a machine with internet and pass its path, "
            f"or pass a model YAML such as {path.stem}.yaml for a randomly initialised model"
        )
    raise ModelError(
        f"base {path} not found; pass an Ultralytics detection checkpoint (.pt) or a model .yaml"
    )


def load_detection_model(source: str | Path, *, nc: int | None = None) -> LoadedModel:
    """Load an Ultralytics detection model from a checkpoint or build one from a model YAML.

    Args:
        source: path to a ``.pt`` checkpoint, an official asset name (downloaded when online), or a model YAML.
        nc: number of classes when building from YAML (ignored for checkpoints).

    Raises:
        ModelError: missing file, not a YOLO checkpoint, or not a detection model.
    """
    with quiet_ultralytics():
        return _load_detection_model(Path(source), nc)


def _load_detection_model(path: Path, nc: int | None) -> LoadedModel:
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    if path.suffix.lower() in _YAML_SUFFIXES:
        try:
            model = DetectionModel(str(path), nc=nc, verbose=False)
        except FileNotFoundError as e:
            raise ModelError(f"model YAML {path} not found: {e}") from None
        except Exception as e:
            raise ModelError(f"model YAML {path} could not be built: {type(e).__name__}: {e}") from None
        if nc is not None:
            model.names = {i: f"class{i}" for i in range(nc)}
        _freeze_eval(model)
        return LoadedModel(model, str(path), None, True, {})
    if path.suffix.lower() != ".pt":
        raise ModelError(
            f"base {path}: expected a .pt checkpoint or a model .yaml, got '{path.suffix or 'no suffix'}'"
        )
    path = _resolve_checkpoint(path)
    try:
        model, ckpt = load_checkpoint(str(path))
    except Exception as e:
        raise ModelError(
            f"{path} is not a YOLO checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        ) from None
    if not isinstance(model, DetectionModel) or getattr(model, "task", "detect") != "detect":
        raise ModelError(
            f"{path} holds a {type(model).__name__} ({getattr(model, 'task', '?')}); edge-lora needs a detection model"
        )
    _freeze_eval(model)
    return LoadedModel(
        model,
        str(path),
        sha256_file(path),
        False,
        dict(ckpt.get("train_args") or {}),
        dict(ckpt.get("edge_lora") or {}),
        {k: float(v) for k, v in (ckpt.get("train_metrics") or {}).items() if isinstance(v, (int, float))},
    )


def _freeze_eval(model: nn.Module) -> None:
    model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)


def structural_fingerprint(model: nn.Module) -> str:
    """sha256 over the (name, shape) list of the state dict: the same architecture gives the same value."""
    return sha256_json([[k, list(v.shape)] for k, v in model.state_dict().items()])


def model_yaml_name(model: nn.Module) -> str:
    """The YAML the model was built from, e.g. ``yolo26n.yaml``."""
    yaml = getattr(model, "yaml", {}) or {}
    return str(yaml.get("yaml_file", "")) or "unknown"


def versions() -> dict[str, str]:
    """Versions of the libraries that shape a model or an artifact (for provenance)."""
    import importlib.metadata as md

    out = {}
    for pkg in (
        "edge-lora",
        "torch",
        "ultralytics",
        "peft",
        "safetensors",
        "onnx",
        "onnxruntime",
        "openvino",
        "nncf",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    train_args: dict[str, Any] | None = None,
    provenance: dict[str, Any],
) -> Path:
    """Write ``model`` as a standard Ultralytics checkpoint that ``YOLO(path)`` loads with no edge-lora installed.

    The weights stay FP32 (Ultralytics saves FP16): a merged W + ΔW is generally not representable in FP16,
    and the merge parity promise is stated in FP32. Written atomically.
    """
    from copy import deepcopy

    from ultralytics import __version__ as ul_version

    snapshot = deepcopy(model).float().eval()
    for p in snapshot.parameters():
        p.requires_grad_(False)
    if hasattr(snapshot, "criterion"):
        snapshot.criterion = None
    args = dict(train_args or {})
    args.pop("data", None)  # a path on the training machine means nothing on the device
    buffer = io.BytesIO()
    torch.save(
        {
            "epoch": -1,
            "best_fitness": None,
            "model": snapshot,
            "ema": None,
            "updates": None,
            "optimizer": None,
            "train_args": args,
            "date": datetime.now(timezone.utc).isoformat(),
            "version": ul_version,
            "edge_lora": provenance,
        },
        buffer,
    )
    return atomic_write_bytes(path, buffer.getvalue())
