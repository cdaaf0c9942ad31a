"""Export the *unmerged* model (base + adapter, LoRA branches as separate convs) to ONNX.

The reference side of a validation must run where the candidate runs. On a Jetson or a line PC there is no
torch, so the bundle carries the unmerged model as an FP32 ONNX: every adapted conv appears as
``W x + scale · B(A x)`` (three convs and an add), nothing folded. ONNX Runtime then scores reference and
candidate with the same pre/post-processing and evaluator.

We export with ``torch.onnx.export`` directly: Ultralytics' exporter fuses Conv+BN first, which would silently
drop PEFT's LoRA branch (its fuse reads only the base weight).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from edge_lora.errors import ToolError
from edge_lora.fileio import atomic_write_bytes, check_output


def export_unmerged_onnx(
    base: str | Path,
    adapter: str | Path,
    out_path: str | Path,
    *,
    imgsz: int,
    opset: int = 17,
    end2end: bool | None = None,
    max_det: int = 300,
    overwrite: bool = False,
) -> Path:
    """Write ``base`` + ``adapter`` (unmerged) as ONNX with Ultralytics-style metadata; return the path."""
    import onnx
    import torch

    from edge_lora.validate.reference import TorchReferenceRunner

    out_path = check_output(out_path, overwrite)
    runner = TorchReferenceRunner(base, adapter, imgsz=imgsz, end2end=end2end, max_det=max_det)
    runner.activate()
    model, meta = runner.model, runner.metadata
    x = torch.zeros(1, 3, imgsz, imgsz)
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "unmerged.onnx"
        try:
            torch.onnx.export(
                model,
                x,
                str(f),
                opset_version=opset,
                input_names=["images"],
                output_names=["output0"],
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as e:
            raise ToolError(
                f"ONNX export of the unmerged model failed: {type(e).__name__}: {e}".splitlines()[0]
            ) from e
        proto = onnx.load(str(f))
    stamps = {
        "description": "edge-lora unmerged reference (base + LoRA branches)",
        "task": "detect",
        "stride": str(meta["stride"]),
        "batch": "1",
        "imgsz": str([imgsz, imgsz]),
        "names": str(dict(meta["names"])),
        "end2end": str(bool(meta["end2end"])),
        "edge_lora": json.dumps({"base": str(base), "adapter": str(adapter), "kind": "unmerged-reference"}),
    }
    del proto.metadata_props[:]
    for k, v in stamps.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(proto)
    atomic_write_bytes(out_path, proto.SerializeToString())
    runner.deactivate()
    return Path(out_path)
