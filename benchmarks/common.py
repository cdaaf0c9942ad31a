"""What the benchmark scripts share: where the DeepPCB data, the base model and the default adapter live, and
how a shipped profile with overrides becomes the ``TargetProfile`` that ``export``/``validate`` take (and a
YAML file, for the record and for ``build``/the CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # never committed: see ../shared/README.md
BASE = SHARED / "models" / "deeppcb-base-yolo26n.pt"
BASE_DATA = SHARED / "datasets" / "deeppcb" / "base.yaml"  # boards the base model saw
NEWBOARDS = SHARED / "datasets" / "deeppcb" / "newboards.yaml"  # the new product line
LORA8 = REPO / "benchmarks" / "work" / "lora_vs_full" / "lora8"  # trained by lora_vs_full.py


def target_profile(profile: str, overrides: dict[str, Any], origin: str) -> Any:
    """``profile`` (a shipped name) with dotted-key ``overrides``: the ``TargetProfile`` that ``export`` and
    ``validate`` take as it is (a relative calibration recipe still resolves against ``targets/``)."""
    from edge_lora.profiles import resolve_target

    resolved, _ = resolve_target(profile)
    return resolved.with_overrides(overrides, origin=origin) if overrides else resolved


def profile_file(folder: Path, key: str, profile: str, overrides: dict[str, Any]) -> tuple[Path, str]:
    """Write ``profile`` (a shipped name) with dotted-key ``overrides`` to ``folder/key.yaml``.

    Returns the path and the resolved profile's sha256. A calibration recipe given as a relative file is
    made absolute, so the written profile resolves from anywhere.
    """
    import yaml

    resolved = target_profile(profile, overrides, folder.name)
    doc = yaml.safe_load(resolved.to_yaml())
    calib = doc.get("calibration")
    if calib and calib.endswith((".yaml", ".yml")) and not Path(calib).is_absolute():
        doc["calibration"] = str((REPO / "targets" / calib).resolve())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, resolved.sha256()


def validate_merged(artifact: Path, profile: Any, data: Path, args: Any, reference_cache: dict) -> Any:
    """``validate()`` of a merged artifact (``profile``: a ``TargetProfile``, or a name or YAML file) against the unmerged base + ``args.adapter`` in PyTorch, with the
    benchmark's ``--max-images/--runs/--warmup``; the reference runs once per ``reference_cache``."""
    from edge_lora.profiles import resolve_target
    from edge_lora.validate.compare import validate
    from edge_lora.validate.reference import torch_reference

    profile, _ = resolve_target(profile)
    return validate(
        artifact,
        data=data,
        target=profile,
        reference=torch_reference(BASE, args.adapter, target=profile),
        max_images=args.max_images,
        runs=args.runs,
        warmup=args.warmup,
        reference_cache=reference_cache,
    )
