"""The adapter package: a directory of safetensors + JSON, no pickle.

adapter_config.json        PEFT LoraConfig (exact target module names)
adapter_model.safetensors  LoRA A/B matrices, PEFT key names (as ``get_peft_model_state_dict`` gives them
                           for a model with injected adapters; ``set_peft_model_state_dict`` loads them)
head.safetensors           densely trained head tensors, when the head was trained (optional)
edge_lora.json             provenance: base sha256 + structural fingerprint, classes, imgsz, LoRA settings,
                           excluded layers and why, trained modules, data hash, metrics, versions, and the
                           sha256 of every file above (a tampered tensor file is refused on load)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge_lora.errors import AdapterError
from edge_lora.fileio import atomic_write_json, atomic_write_text, sha256_file
from edge_lora.train.inject import ADAPTER_NAME, dense_state, inject_lora, rebuild_for_classes

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
HEAD_FILE = "head.safetensors"
META_FILE = "edge_lora.json"
SCHEMA_VERSION = 1
KIND = "edge-lora-adapter"


@dataclass
class AdapterPackage:
    """An adapter read from disk and verified against its recorded hashes."""

    path: Path
    config: Any  # peft.LoraConfig
    lora_state: dict[str, torch.Tensor]
    dense_state: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def names(self) -> dict[int, str]:
        """Class names the adapted model predicts."""
        return {int(k): v for k, v in self.meta["names"].items()}


def write_adapter(
    out_dir: str | Path, model: nn.Module, dense_prefixes: list[str], meta: dict[str, Any]
) -> Path:
    """Write the adapter of ``model`` (with injected LoRA layers) into ``out_dir`` (created if needed).

    ``meta`` is completed with file hashes and written last, so a package with a valid ``edge_lora.json``
    always has every file it lists.
    """
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model.peft_config[ADAPTER_NAME]
    lora = {
        k: v.detach().float().contiguous().clone()
        for k, v in get_peft_model_state_dict(
            model, adapter_name=ADAPTER_NAME, save_embedding_layers=False
        ).items()
    }
    save_file(lora, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    files = [WEIGHTS_FILE, CONFIG_FILE]
    dense = {k: v.float() for k, v in dense_state(model, dense_prefixes).items()}
    if dense:
        save_file(dense, str(out / HEAD_FILE), metadata={"format": "pt"})
        files.append(HEAD_FILE)
    elif (out / HEAD_FILE).exists():
        (out / HEAD_FILE).unlink()
    atomic_write_text(
        out / CONFIG_FILE, json.dumps(config.to_dict(), indent=2, sort_keys=True, default=_jsonable) + "\n"
    )
    full_meta = {
        **meta,
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "dense_prefixes": list(dense_prefixes),
        "dense_tensors": sorted(dense),
        "adapter_params": int(sum(v.numel() for v in lora.values())),
        "dense_params": int(sum(v.numel() for v in dense.values() if v.is_floating_point())),
        "files": {f: sha256_file(out / f) for f in files},
    }
    atomic_write_json(out / META_FILE, full_meta)
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, set):
        return sorted(obj)
    return str(obj)


def read_adapter(path: str | Path) -> AdapterPackage:
    """Read and verify an adapter package; every problem is one line naming the file."""
    from peft import LoraConfig
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(path)
    if not root.is_dir():
        raise AdapterError(f"adapter {root} not found (expected a directory written by 'edge-lora train')")
    meta_path = root / META_FILE
    if not meta_path.is_file():
        raise AdapterError(
            f"adapter {root}: {META_FILE} is missing; this is not an edge-lora adapter package"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{meta_path}: invalid JSON ({e})") from None
    if meta.get("kind") != KIND or meta.get("schema_version") != SCHEMA_VERSION:
        raise AdapterError(f"{meta_path}: not an edge-lora adapter of schema {SCHEMA_VERSION}")
    for name, digest in meta.get("files", {}).items():
        f = root / name
        if not f.is_file():
            raise AdapterError(f"adapter {root}: {name} is missing; re-copy the whole adapter directory")
        if sha256_file(f) != digest:
            raise AdapterError(
                f"{f}: sha256 differs from the one recorded in {META_FILE}; the file was modified"
            )
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if required not in meta.get("files", {}):
            raise AdapterError(f"{meta_path}: does not list {required}")
    try:
        config_dict = json.loads((root / CONFIG_FILE).read_text())
        config_dict.pop("peft_type", None)
        known = set(LoraConfig.__dataclass_fields__)
        config = LoraConfig(**{k: v for k, v in config_dict.items() if k in known})
    except Exception as e:
        raise AdapterError(f"{root / CONFIG_FILE}: not a valid PEFT LoraConfig ({e})") from None
    try:
        lora_state = load_file(str(root / WEIGHTS_FILE))
        dense = load_file(str(root / HEAD_FILE)) if (root / HEAD_FILE).is_file() else {}
    except (SafetensorError, OSError) as e:
        raise AdapterError(f"adapter {root}: cannot read tensors ({e})") from None
    return AdapterPackage(root, config, lora_state, dense, meta)


def build_adapted_model(base: nn.Module, package: AdapterPackage) -> tuple[nn.Module, Any]:
    """The unmerged model: a copy of ``base`` (rebuilt for the adapter's classes if needed) with LoRA loaded.

    Returns the model (FP32, eval) and its PEFT tuner (``merge_and_unload`` merges it).
    """
    from copy import deepcopy

    from peft.utils import set_peft_model_state_dict

    meta = package.meta
    if meta.get("head", {}).get("rebuilt"):
        model = rebuild_for_classes(base, package.names, seed=int(meta["head"].get("init_seed", 0)))
    else:
        model = deepcopy(base).float().eval()
    if package.dense_state:
        current = model.state_dict()
        bad = [k for k, v in package.dense_state.items() if k not in current or current[k].shape != v.shape]
        if bad:
            raise AdapterError(
                f"{package.path / HEAD_FILE}: tensors do not fit the base model (e.g. {bad[0]})"
            )
        model.load_state_dict(package.dense_state, strict=False)
    tuner = inject_lora(model, package.config)
    result = set_peft_model_state_dict(model, package.lora_state, adapter_name=ADAPTER_NAME)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        what = missing[0] if missing else result.unexpected_keys[0]
        raise AdapterError(
            f"{package.path / WEIGHTS_FILE}: LoRA tensors do not match the target layers (e.g. {what})"
        )
    model.names = package.names
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tuner
