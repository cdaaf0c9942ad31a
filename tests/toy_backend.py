"""A toy backend, ``toy``, in one file: what adding a backend takes (issue 10).

Its runner loads ``.toy`` files (an ONNX model under another name, run by ONNX Runtime); its exporter copies
the FP32 ONNX to ``toy-<precision>/model.toy``; its profile section ``toy:`` is :class:`ToySettings`. The
spec below is all edge-lora is told: ``register(TOY)`` makes it a backend a profile, ``export()``, a bundle
manifest and the runtime loader accept, without an edge_lora file naming it (tests/test_backend_registry.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edge_lora import backends
from edge_lora.runtime.onnxrt import OnnxRuntimeRunner


class ToyRunner(OnnxRuntimeRunner):
    """A ``.toy`` file is an ONNX model under another name."""

    prefix = "toy"


class ToySettings(BaseModel):
    """The ``toy:`` section of a profile."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    threads: int = Field(1, ge=1, description="ONNX Runtime intra-op threads.")


def export_toy(job: Any) -> Any:
    """The host side of toy: the FP32 ONNX, copied to ``toy-<precision>/model.toy``."""
    dest = job.out / f"toy-{job.precision}" / "model.toy"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(job.fp32_onnx, dest)
    return job.artifact("toy", dest, {"copied_from": str(job.fp32_onnx)})


def toy_settings(profile: Any, artifact: Path) -> dict[str, Any]:
    """Runner settings: the profile's ``toy.threads`` (1 for a profile of another backend)."""
    section = profile.settings_for("toy")
    return {"providers": ["CPUExecutionProvider"], "intra_op_threads": section.threads if section else 1}


TOY = backends.BackendSpec(
    name="toy",
    runner=f"{__name__}:ToyRunner",
    exporter=f"{__name__}:export_toy",
    suffixes=(".toy",),
    loads="a .toy",
    bundle=backends.BundleLayout("model/model.toy"),
    precisions=lambda profile: ("fp32",),
    auto_precisions=lambda profile: ("fp32",),
    runner_settings=toy_settings,
    families=("cpu", "rpi"),
    settings=f"{__name__}:ToySettings",
)
