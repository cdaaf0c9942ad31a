"""``describe()``: a summary of an adapter package, a checkpoint or a model directory (``edge-lora info``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge_lora.errors import InputError


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def describe(path: str | Path) -> dict[str, Any]:
    """Return a JSON-able summary of ``path`` (adapter dir, model dir with edge_lora.json, or a .pt checkpoint)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} not found")
    if p.is_dir():
        meta_path = p / "edge_lora.json"
        if not meta_path.is_file():
            raise InputError(
                f"{p}: no edge_lora.json; expected an adapter or model directory written by edge-lora"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("kind") == "edge-lora-adapter":
            from edge_lora.train.adapter_io import read_adapter

            read_adapter(p)  # verifies every file hash: 'info' doubles as an integrity check
            lora = meta.get("lora", {})
            return {
                "kind": "adapter",
                "path": str(p),
                "base": meta["base"],
                "classes": list(meta["names"].values()),
                "imgsz": meta.get("imgsz"),
                "rank": lora.get("rank"),
                "alpha": lora.get("alpha"),
                "targets": lora.get("targets"),
                "adapted_layers": len(lora.get("target_modules", [])),
                "excluded": meta.get("excluded", {}),
                "head": meta.get("head", {}),
                "norm": meta.get("norm", {}).get("mode", "frozen"),  # adapters before the recipe: frozen BN
                "recipe": meta.get("recipe", {}),
                "trainable_params": meta.get("trainable_params"),
                "total_params": meta.get("total_params"),
                "trainable_share": (meta.get("trainable_params") or 0)
                / max(meta.get("total_params") or 1, 1),
                "bytes": _dir_bytes(p),
                "metrics": meta.get("metrics", {}),
                "data": meta.get("data", {}),
                "versions": meta.get("versions", {}),
            }
        summary = {
            "kind": meta.get("kind", "unknown"),
            "path": str(p),
            **{k: meta[k] for k in ("mode", "names", "imgsz", "metrics", "base") if k in meta},
        }
        if (p / "model.pt").is_file():
            summary["checkpoint"] = describe(p / "model.pt")
        return summary
    if p.suffix == ".pt":
        from edge_lora.models import load_detection_model, model_yaml_name

        loaded = load_detection_model(p)
        import torch

        ckpt_meta = {}
        try:
            ckpt_meta = torch.load(str(p), map_location="cpu", weights_only=False).get("edge_lora") or {}
        except Exception:  # already loaded once above; provenance is optional
            ckpt_meta = {}
        return {
            "kind": "checkpoint",
            "path": str(p),
            "sha256": loaded.sha256,
            "bytes": p.stat().st_size,
            "yaml": model_yaml_name(loaded.model),
            "classes": list(loaded.names.values()),
            "params": sum(t.numel() for t in loaded.model.parameters()),
            "imgsz": loaded.train_args.get("imgsz"),
            "edge_lora": {k: ckpt_meta[k] for k in ("kind", "base", "imgsz", "forced") if k in ckpt_meta},
            "merge_parity_max_rel": (ckpt_meta.get("parity") or {}).get("max_rel"),
        }
    raise InputError(f"{p}: not an adapter directory or a .pt checkpoint")
