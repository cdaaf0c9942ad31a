"""``merge()``: fold LoRA adapters into the base weights, prove it, write a plain Ultralytics checkpoint.

Order of work (PEFT's safe-merge habit): check the merge is allowed (base hash and fingerprint), build the
unmerged model, merge into a copy (NaN-checked), compare both on real images, and only then write.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_lora.errors import AdapterError, InputError, MergeParityError
from edge_lora.fileio import atomic_write_json, check_output, sha256_file
from edge_lora.models import load_detection_model, save_checkpoint, structural_fingerprint, versions
from edge_lora.train.adapter_io import AdapterPackage, build_adapted_model, read_adapter
from edge_lora.validate.parity import ParityResult, tensor_parity

DEFAULT_TOLERANCE = 1e-4  # max relative difference of raw head outputs, FP32
_IMAGE_SUFFIXES = {".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp"}


@dataclass
class MergeReport:
    """The outcome of ``merge``."""

    out: Path
    parity: ParityResult
    merged_layers: int
    forced: bool
    warnings: list[str]
    out_sha256: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        d = asdict(self)
        d["out"] = str(self.out)
        d["parity"] = self.parity.to_dict()
        return d


def check_compatible(
    package: AdapterPackage, base_sha256: str | None, base_fingerprint: str, force: bool
) -> list[str]:
    """Refuse an adapter trained on another base; with ``force`` return the mismatches as warnings."""
    recorded = package.meta.get("base", {})
    problems = []
    if recorded.get("sha256") and base_sha256 and recorded["sha256"] != base_sha256:
        problems.append(
            f"base sha256 {base_sha256[:12]}… differs from the adapter's base {recorded['sha256'][:12]}…"
        )
    if recorded.get("fingerprint") and recorded["fingerprint"] != base_fingerprint:
        problems.append("base architecture (module names/shapes) differs from the adapter's base")
    if problems and not force:
        raise AdapterError(
            f"adapter {package.path} was trained on another base ({'; '.join(problems)}); "
            "pass the base it was trained on, or --force to merge anyway"
        )
    return [f"--force: {p}" for p in problems]


def parity_images(data: str | Path | None, images: str | Path | None, limit: int) -> list[Path]:
    """Real images for the parity check: an image folder, or the data YAML's val split."""
    if images is not None:
        root = Path(images)
        if not root.exists():
            raise InputError(f"--images {root} not found")
        found = sorted(
            p for p in (root.rglob("*") if root.is_dir() else [root]) if p.suffix.lower() in _IMAGE_SUFFIXES
        )
    elif data is not None:
        from edge_lora.data.checks import load_data_yaml

        spec = load_data_yaml(data, splits=("val",), check_labels=False)
        found = sorted(spec.splits["val"])
    else:
        raise InputError("merge needs real images to prove parity: pass --data DATA.yaml or --images DIR")
    if not found:
        raise InputError(f"no images found for the parity check in {images or data}")
    return found[:limit]


def _load_batch(paths: list[Path], imgsz: int) -> torch.Tensor:
    import cv2
    from ultralytics.data.augment import LetterBox

    letterbox = LetterBox(new_shape=(imgsz, imgsz), auto=False, stride=32)
    batch = []
    for p in paths:
        img = cv2.imread(str(p))
        if img is None:
            raise InputError(f"{p}: cannot decode image")
        img = letterbox(image=img)[..., ::-1].transpose(2, 0, 1)  # BGR HWC -> RGB CHW
        batch.append(np.ascontiguousarray(img, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(batch))


def _flat_outputs(out: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return {prefix or "output": out}
    items = out.items() if isinstance(out, dict) else enumerate(out)
    flat: dict[str, torch.Tensor] = {}
    for k, v in items:
        flat.update(_flat_outputs(v, f"{prefix}.{k}" if prefix else str(k)))
    return flat


def _worst(values: list[float]) -> float:
    """The largest value, NaN winning (``max`` would drop a NaN that is not first), 0.0 for none."""
    return next((v for v in values if v != v), max(values, default=0.0))


def compare_models(
    reference: nn.Module,
    candidate: nn.Module,
    images: list[Path],
    imgsz: int,
    tolerance: float = DEFAULT_TOLERANCE,
    batch_size: int = 4,
    conf: float = 0.25,
) -> ParityResult:
    """Run both models on the same images; compare every raw output tensor and the final detections.

    Each output tensor is compared with :func:`edge_lora.validate.parity.tensor_parity` (``max_rel`` is
    relative to the tensor's largest reference value), worst over batches; the result's ``max_abs`` /
    ``max_rel`` are the worst over outputs, judged against ``tolerance``.
    """
    from ultralytics.utils.nms import non_max_suppression

    per: dict[str, dict[str, float]] = {}
    identical, compared = True, 0
    end2end = bool(getattr(reference, "end2end", False))
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = _load_batch(images[i : i + batch_size], imgsz)
            ref_out, cand_out = reference(x), candidate(x)
            ref_flat, cand_flat = _flat_outputs(ref_out), _flat_outputs(cand_out)
            for name, r in ref_flat.items():
                # The project's one parity implementation works on numpy (it is device-side code).
                res = tensor_parity(r.cpu().numpy(), cand_flat[name].cpu().numpy())
                entry = per.setdefault(name, {"max_abs": 0.0, "max_rel": 0.0})
                for key in ("max_abs", "max_rel"):
                    entry[key] = _worst([entry[key], getattr(res, key)])
            ref_det = non_max_suppression(ref_out[0], conf, 0.7, end2end=end2end)
            cand_det = non_max_suppression(cand_out[0], conf, 0.7, end2end=end2end)
            for r, c in zip(ref_det, cand_det, strict=True):
                compared += len(r)
                same = r.shape == c.shape and (
                    r.shape[0] == 0
                    or (
                        torch.equal(r[:, 5], c[:, 5])
                        and (r[:, :4] - c[:, :4]).abs().max().item() < 1e-2
                        and (r[:, 4] - c[:, 4]).abs().max().item() < 1e-4
                    )
                )
                identical &= bool(same)
    return ParityResult(
        images=len(images),
        max_abs=_worst([v["max_abs"] for v in per.values()]),
        max_rel=_worst([v["max_rel"] for v in per.values()]),
        tolerance=tolerance,
        detections_identical=identical,
        detections_compared=compared,
        per_output=per,
    )


def merge(
    base: str | Path,
    adapter: str | Path,
    out: str | Path,
    *,
    data: str | Path | None = None,
    images: str | Path | None = None,
    num_images: int = 8,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
    overwrite: bool = False,
) -> MergeReport:
    """Merge ``adapter`` into ``base`` and write a standard Ultralytics checkpoint at ``out``.

    The parity check runs before anything is written; a failure raises :class:`MergeParityError` and leaves
    no output. ``data`` defaults to the data YAML recorded in the adapter, when it still exists.
    """
    out = check_output(out, overwrite)
    if out.suffix != ".pt":
        raise InputError(f"--out {out}: the merged checkpoint must end in .pt")
    package = read_adapter(adapter)
    base_model = load_detection_model(base)
    warnings = check_compatible(package, base_model.sha256, structural_fingerprint(base_model.model), force)
    if data is None and images is None:
        recorded = package.meta.get("data", {}).get("yaml")
        if recorded and Path(recorded).is_file():
            data = recorded
    imgsz = int(package.meta.get("imgsz", 640))
    paths = parity_images(data, images, num_images)

    unmerged, tuner = build_adapted_model(base_model.model, package)
    n_layers = sum(
        1 for n, m in unmerged.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")
    )
    reference = deepcopy(unmerged).eval()
    merged = tuner.merge_and_unload(safe_merge=True).eval()
    leftover = [n for n, _ in merged.named_modules() if "lora_" in n]
    if leftover:
        raise MergeParityError(f"merge left LoRA modules behind (e.g. {leftover[0]})")
    parity = compare_models(reference, merged, paths, imgsz, tolerance)
    if not parity.passed:
        raise MergeParityError(
            f"merged model differs from base + adapter by {parity.max_rel:.2e} relative (> {tolerance:.0e}) "
            f"on {parity.images} images; nothing was written"
        )
    merged.names = package.names
    provenance = {
        "kind": "edge-lora-merged",
        "base": {"path": str(base), "sha256": base_model.sha256},
        "adapter": {
            "path": str(adapter),
            "files": package.meta.get("files", {}),
            "lora": package.meta.get("lora"),
            # a quant-aware adapter's scheme and activation scales: the QDQ export uses them as trained
            "quant_aware": package.meta.get("quant_aware"),
        },
        "names": package.meta["names"],
        "imgsz": imgsz,
        "parity": parity.to_dict(),
        "forced": force,
        "versions": versions(),
    }
    train_args = {**base_model.train_args, "imgsz": imgsz}
    save_checkpoint(merged, out, train_args=train_args, provenance=provenance)
    out_sha = sha256_file(out)
    report = MergeReport(
        out=out,
        parity=parity,
        merged_layers=n_layers,
        forced=force,
        warnings=warnings,
        out_sha256=out_sha,
    )
    atomic_write_json(out.with_suffix(".json"), {**provenance, "sha256": out_sha, "report": report.to_dict()})
    return report
