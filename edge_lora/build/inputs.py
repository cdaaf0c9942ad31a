"""A build's inputs, checked and hashed once: base, data, adapters, targets; and the checks on them.

Everything here fails early, before any stage runs: a missing base, an adapter of other classes, an unknown
target. The hashes are what the stage cache keys are made of.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_lora.errors import InputError, ReferenceAccuracyError
from edge_lora.fileio import sha256_file

if TYPE_CHECKING:
    from edge_lora.data.checks import DataSpec
    from edge_lora.profiles import TargetProfile

#: The unmerged reference must score at least this share of the mAP50-95 the adapter recorded at training
#: (Ultralytics' validator, same val split). A reference far below it is a misconfigured build (another
#: imgsz or data than the adapter's), and every gate would compare candidates with a model that detects
#: nothing. Generous on purpose: the adapter records Ultralytics' training figure (one-to-many head + NMS,
#: rect batches), which runs ~10% above edge-lora's COCO figure on the NMS-free head (map_alignment.md).
MIN_REFERENCE_SHARE = 0.5
#: Below this recorded mAP50-95 an adapter's own number is too small to judge the reference against.
MIN_RECORDED_MAP = 0.01


@dataclass(frozen=True)
class AdapterInput:
    """One adapter package: its folder, the hashes that key its stages, and its ``edge_lora.json``."""

    path: Path
    files: dict[str, str]
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        """The product line's name (the folder's), as bundles and stages are named."""
        return self.path.name


@dataclass(frozen=True)
class TargetInput:
    """One resolved target profile (``--set``/``--precision`` applied) and what resolving it said."""

    profile: TargetProfile
    message: str | None


@dataclass(frozen=True)
class BuildInputs:
    """Everything every stage of a build reads; ``data_hash`` and ``base_sha`` key the stage cache."""

    base: Path
    base_sha: str
    data: Path
    spec: DataSpec  # of the data YAML
    data_hash: dict[str, str]
    adapters: list[AdapterInput]
    targets: list[TargetInput]
    out: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    archive: bool = False
    max_images: int | None = None
    runs: int | None = None
    warmup: int | None = None


def resolve_inputs(
    *,
    base: str | Path,
    adapters: list[str | Path],
    targets: list[str],
    data: str | Path,
    out: str | Path,
    precision: str | None,
    overrides: dict[str, Any] | None,
    archive: bool,
    max_images: int | None,
    runs: int | None,
    warmup: int | None,
) -> BuildInputs:
    """Check and resolve ``build()``'s arguments; an :class:`InputError` says which one is wrong."""
    from edge_lora.data.checks import load_data_yaml
    from edge_lora.profiles import resolve_target

    base, data = Path(base), Path(data)
    if not base.is_file():
        raise InputError(f"--base {base} not found")
    if not adapters:
        raise InputError("--adapter is required (repeat it for several product lines)")
    if not targets:
        raise InputError("--target is required (a profile, a family such as 'jetson', or a YAML file)")
    resolved = []
    for t in targets:
        profile, message = resolve_target(t)
        if overrides:
            profile = profile.with_overrides(overrides, origin="--set")
        if precision:
            profile = profile.with_overrides({"precision": precision, "fallbacks": []}, origin="--precision")
        resolved.append(TargetInput(profile, message))
    spec = load_data_yaml(data)
    return BuildInputs(
        base=base,
        base_sha=sha256_file(base),
        data=data,
        spec=spec,
        data_hash={"yaml": spec.sha256, "val": spec.content_hash("val"), "train": spec.content_hash("train")},
        adapters=[_adapter(Path(a), spec.names, data) for a in adapters],
        targets=resolved,
        out=Path(out),
        overrides=dict(overrides or {}),
        archive=archive,
        max_images=max_images,
        runs=runs,
        warmup=warmup,
    )


def _adapter(adapter: Path, names: dict[int, str], data: Path) -> AdapterInput:
    meta_path = adapter / "edge_lora.json"
    if not meta_path.is_file():
        raise InputError(f"--adapter {adapter}: not an adapter package (no edge_lora.json)")
    meta = json.loads(meta_path.read_text())
    if {int(k): v for k, v in meta["names"].items()} != names:
        raise InputError(
            f"--adapter {adapter}: classes {list(meta['names'].values())} differ from {data}'s {list(names.values())}"
        )
    files = {**meta.get("files", {}), "edge_lora.json": sha256_file(meta_path)}
    return AdapterInput(adapter, files, meta)


def fit_imgsz(
    profile: TargetProfile, trained_imgsz: int | None, user_set: bool, adapter: str
) -> tuple[TargetProfile, str | None]:
    """The profile at the adapter's training size unless the user set one; and a note saying which and why.

    A model validated at another size than it was trained at is a different model (a 320 px adapter scored
    mAP50-95 0.0007 at 640 against 0.0115 at 320), so the training size wins over the profile's default.
    """
    if user_set:
        return profile, f"{adapter}: imgsz {profile.imgsz} (set with --set imgsz)"
    if not trained_imgsz or trained_imgsz == profile.imgsz:
        return profile, None
    fitted = profile.with_overrides({"imgsz": int(trained_imgsz)}, origin=f"adapter {adapter} imgsz")
    return fitted, (
        f"{adapter}: imgsz {trained_imgsz}, the adapter's training size (profile {profile.name} says "
        f"{profile.imgsz}; --set imgsz=N builds at another size)"
    )


def check_reference_accuracy(
    ref_map: float, adapter_meta: dict[str, Any], adapter: str, data: Path, imgsz: int
) -> str | None:
    """Stop a build whose unmerged reference scores far below what the adapter recorded; warn when ~zero.

    Returns a warning note, or None. Raises :class:`ReferenceAccuracyError` (exit 2).
    """
    recorded = (adapter_meta.get("metrics") or {}).get("mAP50-95")
    trained = adapter_meta.get("imgsz")
    if recorded is not None and recorded >= MIN_RECORDED_MAP and ref_map < MIN_REFERENCE_SHARE * recorded:
        raise ReferenceAccuracyError(
            f"--adapter {adapter}: the unmerged reference scores mAP50-95 {ref_map:.4f} on {data} val at imgsz "
            f"{imgsz}, far below the {recorded:.4f} the adapter recorded at training (imgsz {trained}); every "
            "gate would compare against a model that does not work here. Check that --data is the adapter's "
            f"line and build at its training size (--set imgsz={trained})"
        )
    if ref_map < MIN_RECORDED_MAP:
        return (
            f"{adapter}: the unmerged reference detects almost nothing here (mAP50-95 {ref_map:.4f}); a PASS "
            "only means the candidate matches it"
        )
    return None
