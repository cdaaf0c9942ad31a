"""The adapter package: a directory of safetensors + JSON, no pickle, that is a valid PEFT adapter.

adapter_config.json        PEFT LoraConfig (exact target module names; ``modules_to_save`` lists the densely
                           trained head modules, if any)
adapter_model.safetensors  every trained tensor under PEFT's own key names, as ``PeftModel.save_pretrained``
                           writes them: the LoRA A/B matrices (``base_model.model.<module>.lora_A.weight``) and
                           the dense head tensors (``base_model.model.<module>.<tensor>``, PEFT's
                           ``modules_to_save`` convention)
edge_lora.json             provenance: base sha256 + structural fingerprint, classes, imgsz, LoRA settings,
                           excluded layers and why, trained modules, data hash, metrics, versions, and the
                           sha256 of every file above (a tampered tensor file is refused on load); an
                           adapter trained with ``--quant-aware`` also records ``quant_aware``: the scheme,
                           the calibration (``method: minmax-fixed``, image count) and, per adapted conv
                           (by module name), the fixed input scale and zero point it was trained with
                           (:func:`edge_lora.train.quant_aware.quant_aware_record`)

Loading it with PEFT instead of edge-lora::

    from peft import PeftModel
    from ultralytics import YOLO
    from edge_lora.train.adapter_io import peft_base_model

    base = YOLO("base.pt").model                           # the DetectionModel the adapter was trained on
    model = PeftModel.from_pretrained(peft_base_model(base, "adapter/"), "adapter/").eval()

``peft_base_model`` is only needed when the adapter was trained for other classes than the base's (its
``edge_lora.json`` says ``"head": {"rebuilt": true}``): the final class convs then have another shape, so the
head must be rebuilt for the adapter's classes before PEFT can load the dense head tensors into it (for an
adapter of the base's own classes it is a plain copy of ``base``). The PEFT model's outputs are edge-lora's
unmerged outputs (:func:`build_adapted_model`).

Schema 1 adapters (keys without PEFT's ``base_model.model.`` prefix, dense head tensors in a separate
``head.safetensors``) are still read by edge-lora; PEFT itself cannot load them.
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
from edge_lora.train.inject import (
    ADAPTER_NAME,
    dense_modules,
    dense_state,
    inject_lora,
    rebuild_for_classes,
)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
HEAD_FILE = "head.safetensors"  # schema 1 only: the dense head tensors, in base key names
META_FILE = "edge_lora.json"
SCHEMA_VERSION = 2  # 2: PEFT key names + modules_to_save; 1: unprefixed keys + head.safetensors
READABLE_SCHEMAS = (1, 2)
KIND = "edge-lora-adapter"
#: The key prefix of a ``PeftModel``'s state dict (PeftModel.base_model -> LoraModel.model -> the model).
PEFT_PREFIX = "base_model.model."


@dataclass
class AdapterPackage:
    """An adapter read from disk and verified against its recorded hashes."""

    path: Path
    #: peft.LoraConfig as written (``modules_to_save`` included; :func:`inject_lora` does not apply it)
    config: Any
    #: LoRA tensors keyed for the in-place model (``model.0.conv.lora_A.weight``), whatever the schema
    lora_state: dict[str, torch.Tensor]
    #: dense head tensors under the base model's key names (``model.23.cv3.0.2.weight``)
    dense_state: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def dense_file(self) -> Path:
        """The file the dense head tensors were read from (``head.safetensors`` in schema 1)."""
        return self.path / (HEAD_FILE if self.meta.get("schema_version") == 1 else WEIGHTS_FILE)

    @property
    def names(self) -> dict[int, str]:
        """Class names the adapted model predicts."""
        return {int(k): v for k, v in self.meta["names"].items()}


def write_adapter(
    out_dir: str | Path, model: nn.Module, dense_prefixes: list[str], meta: dict[str, Any]
) -> Path:
    """Write the adapter of ``model`` (with injected LoRA layers) into ``out_dir`` (created if needed).

    The tensors and the config follow PEFT's conventions, so ``PeftModel.from_pretrained`` loads the
    directory (see the module docstring): LoRA keys as ``get_peft_model_state_dict`` gives them for a
    ``PeftModel`` (``base_model.model.`` prefix, no adapter name), and the densely trained head as PEFT's
    ``modules_to_save``: each module of :func:`~edge_lora.train.inject.dense_modules` is listed in the config
    and its whole state dict (parameters and BN buffers) is stored under ``base_model.model.<module>.<key>``,
    which is the key a ``ModulesToSaveWrapper`` saves and loads. For a head rebuilt for new classes this fits
    as well: PEFT copies the module of the model it is given, so that model must have the rebuilt head
    (:func:`peft_base_model`); the shapes then match and every dense tensor is loaded over it.

    ``meta`` is completed with file hashes and written last, so a package with a valid ``edge_lora.json``
    always has every file it lists.
    """
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model.peft_config[ADAPTER_NAME]
    lora = {
        _peft_key(k): v.detach().float().contiguous().clone()
        for k, v in get_peft_model_state_dict(
            model, adapter_name=ADAPTER_NAME, save_embedding_layers=False
        ).items()
    }
    dense = {
        k: (v.float() if v.is_floating_point() else v).contiguous()
        for k, v in dense_state(model, dense_prefixes).items()
    }
    to_save = dense_modules(model, dense_prefixes)
    uncovered = [k for k in dense if not _under(k, to_save)]
    if uncovered:  # cannot happen for a Detect head; a safeguard so no trained tensor is silently dropped
        raise AdapterError(f"dense tensor {uncovered[0]} is outside the modules saved for PEFT ({to_save})")
    save_file(
        {**lora, **{_peft_key(k): v for k, v in dense.items()}},
        str(out / WEIGHTS_FILE),
        metadata={"format": "pt"},
    )
    files = [WEIGHTS_FILE, CONFIG_FILE]
    if (out / HEAD_FILE).exists():  # left by a schema-1 write into the same directory
        (out / HEAD_FILE).unlink()
    config_dict = config.to_dict()
    config_dict["modules_to_save"] = to_save or None
    atomic_write_text(
        out / CONFIG_FILE, json.dumps(config_dict, indent=2, sort_keys=True, default=_jsonable) + "\n"
    )
    full_meta = {
        **meta,
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "dense_prefixes": list(dense_prefixes),
        "dense_modules": to_save,
        "dense_tensors": sorted(dense),
        "adapter_params": int(sum(v.numel() for v in lora.values())),
        "dense_params": int(sum(v.numel() for v in dense.values() if v.is_floating_point())),
        "files": {f: sha256_file(out / f) for f in files},
    }
    atomic_write_json(out / META_FILE, full_meta)
    return out


def _peft_key(key: str) -> str:
    return key if key.startswith(PEFT_PREFIX) else PEFT_PREFIX + key


def _under(key: str, modules: list[str]) -> bool:
    return any(key.startswith(m + ".") for m in modules)


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
    version = meta.get("schema_version")
    if meta.get("kind") != KIND:
        raise AdapterError(f"{meta_path}: not an edge-lora adapter (kind {meta.get('kind')!r})")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise AdapterError(
            f"{meta_path}: adapter schema {version} is newer than this edge-lora reads "
            f"({SCHEMA_VERSION}); upgrade edge-lora"
        )
    if version not in READABLE_SCHEMAS:
        raise AdapterError(f"{meta_path}: unknown adapter schema {version!r} (this edge-lora reads 1 and 2)")
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
        tensors = load_file(str(root / WEIGHTS_FILE))
        if version == 1:
            lora_state = tensors
            dense = load_file(str(root / HEAD_FILE)) if HEAD_FILE in meta["files"] else {}
        else:
            lora_state, dense = _split_peft_state(root / WEIGHTS_FILE, tensors, config.modules_to_save or [])
    except (SafetensorError, OSError) as e:
        raise AdapterError(f"adapter {root}: cannot read tensors ({e})") from None
    return AdapterPackage(root, config, lora_state, dense, meta)


def _split_peft_state(
    path: Path, tensors: dict[str, torch.Tensor], modules_to_save: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """PEFT-keyed tensors -> (LoRA tensors, dense head tensors), both without the ``base_model.model.`` prefix."""
    unprefixed = [k for k in tensors if not k.startswith(PEFT_PREFIX)]
    if unprefixed:
        raise AdapterError(f"{path}: tensor {unprefixed[0]} lacks PEFT's '{PEFT_PREFIX}' key prefix")
    lora, dense = {}, {}
    for k, v in tensors.items():
        key = k[len(PEFT_PREFIX) :]
        (dense if _under(key, modules_to_save) else lora)[key] = v
    return lora, dense


def peft_base_model(base: nn.Module, adapter: str | Path | AdapterPackage) -> nn.Module:
    """The model to hand ``PeftModel.from_pretrained`` with this adapter: a copy of ``base`` (FP32, eval).

    When the adapter was trained for other classes (``head.rebuilt`` in its ``edge_lora.json``), the copy's
    head is rebuilt for the adapter's classes first (the same rebuild as training and ``merge``), because the
    final class convs of ``base`` have another number of output channels and PEFT loads the dense head
    (``modules_to_save``) into the modules of the model it is given::

        model = PeftModel.from_pretrained(peft_base_model(base, "adapter/"), "adapter/").eval()

    ``base`` itself is not modified (PEFT injects its layers into the model it is given, so pass a copy
    when ``base`` is needed afterwards).
    """
    from copy import deepcopy

    package = adapter if isinstance(adapter, AdapterPackage) else read_adapter(adapter)
    head = package.meta.get("head", {})
    if head.get("rebuilt"):
        model = rebuild_for_classes(base, package.names, seed=int(head.get("init_seed", 0)))
    else:
        model = deepcopy(base).float().eval()
    model.names = package.names
    return model


def build_adapted_model(base: nn.Module, package: AdapterPackage) -> tuple[nn.Module, Any]:
    """The unmerged model: a copy of ``base`` (rebuilt for the adapter's classes if needed) with LoRA loaded.

    Returns the model (FP32, eval) and its PEFT tuner (``merge_and_unload`` merges it). Reads schema 1 and
    schema 2 packages alike (:func:`read_adapter` gives both the same in-memory form).
    """
    from peft.utils import set_peft_model_state_dict

    model = peft_base_model(base, package)
    if package.dense_state:
        current = model.state_dict()
        bad = [k for k, v in package.dense_state.items() if k not in current or current[k].shape != v.shape]
        if bad:
            raise AdapterError(f"{package.dense_file}: tensors do not fit the base model (e.g. {bad[0]})")
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
