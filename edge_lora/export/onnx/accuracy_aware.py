"""Accuracy-aware INT8 QDQ export (``quantization.accuracy_aware``): plain INT8, the search, one final export.

1. ``quantize_qdq`` as usual, into a scratch folder, keeping ONNX Runtime's activation ranges in a cache file;
2. :func:`~edge_lora.export.onnx.mixed_precision.search_float_nodes` on labelled images of the calibration
   recipe's ``validation_split`` (the build's val images, which gate it, stay unseen);
3. ``quantize_qdq`` again with the chosen convs float (``QuantPolicy.float_nodes``), reading the cached
   ranges, so every other tensor has exactly the scales plain INT8 had.

The sidecar records the search (``accuracy_aware``): which convs stayed float, the mAP points each saved and
the latency each cost on this host, and plain INT8's figures next to the result's.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["quantize_accuracy_aware"]


def quantize_accuracy_aware(
    fp32_onnx: Path,
    out_path: Path,
    calib_set: Any,
    policy: Any,
    *,
    profile: Any,
    data: Path | None,
    on_progress: Any = None,
    **quantize_kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """Quantize ``fp32_onnx`` with the fewest float convs that meet ``profile.quantization.target_map_drop``.

    Returns the final :class:`~edge_lora.export.onnx.qdq.QdqResult` and the search record (also written
    into the sidecar). ``quantize_kwargs`` go to ``quantize_qdq`` (imgsz, source_checkpoint ...).

    Raises:
        InputError: no ``data`` (the search needs labelled images) or no decodable image in its split.
    """
    import onnx

    from edge_lora.export.labelled import validation_set
    from edge_lora.export.onnx.mixed_precision import search_float_nodes
    from edge_lora.export.onnx.qdq import quantize_qdq

    settings = profile.quantization
    items, names, split = validation_set(profile, data, "quantization.accuracy_aware")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".search", dir=out_path.parent))
    try:
        cache = scratch / "activation_ranges.json"
        plain = quantize_qdq(
            fp32_onnx, scratch / "plain.onnx", calib_set, policy, profile=profile,
            write_sidecar=False, calibration_cache=cache, **quantize_kwargs,
        )  # fmt: skip
        result = search_float_nodes(
            onnx.load(str(fp32_onnx)),
            onnx.load(str(plain.path)),
            items,
            names,
            end2end=profile.output == "end2end",
            target_points=settings.target_map_drop,
            max_float_layers=settings.max_float_layers,
            split=split,
            on_progress=on_progress,
        )
        record = result.to_dict()
        record["plain_int8_sha256"] = plain.sha256
        final_policy = dataclasses.replace(policy, float_nodes=result.float_nodes)
        final = quantize_qdq(
            fp32_onnx, out_path, calib_set, final_policy, profile=profile, calibration_cache=cache,
            record_extra={"accuracy_aware": record}, **quantize_kwargs,
        )  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final, record
