"""The backend registry (issue 10, step 1): what a backend is, said once in :mod:`edge_lora.backends`.

The shipped backends keep their layout, precisions, runner settings and messages; and adding one is a spec
and a ``register()`` call: the toy backend "toyrt" below (a runner over ``.toy`` files wrapping ONNX
Runtime, an exporter copying the FP32 ONNX to ``model.toy``) lives in this file only, and ``export``,
``load_runner`` and the bundle layout work for it without an edge_lora file knowing its name.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import IMGSZ, REPO, make_base

from edge_lora import backends
from edge_lora.errors import InputError
from edge_lora.runtime.onnxrt import OnnxRuntimeRunner

# ---------------------------------------------------------------------------------------- the toy backend


class ToyRunner(OnnxRuntimeRunner):
    """A ``.toy`` file is an ONNX model under another name."""

    prefix = "toyrt"


def export_toy(job):
    """The host side of toyrt: the FP32 ONNX, copied to ``toyrt-<precision>/model.toy``."""
    dest = job.out / f"toyrt-{job.precision}" / "model.toy"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(job.fp32_onnx, dest)
    return job.artifact("toyrt", dest, {"copied_from": str(job.fp32_onnx)})


TOYRT = backends.BackendSpec(
    name="toyrt",
    runner=f"{__name__}:ToyRunner",
    exporter=f"{__name__}:export_toy",
    suffixes=(".toy",),
    loads="a .toy",
    bundle=backends.BundleLayout("model/model.toy"),
    precisions=lambda profile: ("fp32",),
    auto_precisions=lambda profile: ("fp32",),
    runner_settings=lambda profile, artifact: {"providers": ["CPUExecutionProvider"], "intra_op_threads": 1},
)


@pytest.fixture
def toyrt():
    backends.register(TOYRT)
    try:
        yield TOYRT
    finally:
        backends.unregister("toyrt")


def _toy_profile():
    from edge_lora.profiles import load_profile

    # A profile's backend field names the shipped backends (its schema is a file format); model_copy sets
    # toyrt without re-validating, as a profile schema that read the registry would.
    return load_profile("cpu-onnxruntime").model_copy(
        update={
            "backend": "toyrt",
            "precision": "fp32",
            "fallbacks": [],
            "imgsz": IMGSZ,
            "calibration": None,
            "quantization": None,
        }
    )


@pytest.mark.slow
def test_a_toy_backend_exports_loads_and_lays_out_from_one_test_file(toyrt, tmp_path, monkeypatch):
    from edge_lora import profiles
    from edge_lora.build import _bundle_files_for
    from edge_lora.export.api import export
    from edge_lora.runtime.loader import load_runner, runner_class
    from edge_lora.validate.compare import artifact_backend, runner_settings

    profile = _toy_profile()
    assert profile.precision_chain() == ["fp32"] and profile.buildable_precisions() == {"fp32"}
    monkeypatch.setattr(profiles, "resolve_target", lambda target: (profile, None))
    base = make_base(tmp_path / "base.pt", {0: "open", 1: "short"})

    result = export(base, "toy", tmp_path / "out")

    assert not result.failures
    [art] = result.artifacts
    assert (art.backend, art.precision) == ("toyrt", "fp32")
    assert art.path == tmp_path / "out" / "toyrt-fp32" / "model.toy" and art.path.is_file()
    assert art.details["copied_from"] == str(result.fp32_onnx)

    assert runner_class(art.path) is ToyRunner
    assert artifact_backend(art.path) == "toyrt"
    settings = runner_settings(profile, art.path)
    assert settings == {"providers": ["CPUExecutionProvider"], "intra_op_threads": 1}
    x = np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    with load_runner(art.path, **settings) as toy, load_runner(result.fp32_onnx) as ort:
        assert isinstance(toy, ToyRunner) and toy.metadata["imgsz"] == ort.metadata["imgsz"]
        [a], [b] = toy.infer(x).values(), ort.infer(x).values()
        np.testing.assert_array_equal(a, b)

    files, run_path, outputs = _bundle_files_for(art.to_dict())
    assert files == {"model/model.toy": art.path} and run_path == "model/model.toy" and outputs == []
    assert backends.ARTIFACT_SUFFIXES["toyrt"] == (".toy",)


def test_the_toy_backend_joins_messages_and_leaves_cleanly(toyrt, tmp_path):
    from edge_lora.runtime.loader import runner_class

    (tmp_path / "m.tflite").write_bytes(b"x")
    with pytest.raises(InputError, match=r"expected .onnx, .*\.engine or \.plan, a \.toy$"):
        runner_class(tmp_path / "m.tflite")
    backends.unregister("toyrt")
    assert "toyrt" not in backends.names() and "toyrt" not in backends.ARTIFACT_SUFFIXES
    (tmp_path / "m.toy").write_bytes(b"x")
    with pytest.raises(InputError, match="unknown model type '.toy'"):
        runner_class(tmp_path / "m.toy")


# ------------------------------------------------------------------------------------ the shipped backends


def test_shipped_backends_are_registered_lazily():
    assert backends.names() == ("onnxruntime", "openvino", "tensorrt")
    for spec in backends.specs():
        for ref in (spec.runner, spec.exporter):
            module, _, attr = ref.partition(":")
            assert module.startswith("edge_lora.") and attr, ref
    # Importing the registry (and the loader reading it) imports no runtime and nothing of the host side.
    code = (
        "import sys, edge_lora.backends, edge_lora.runtime.loader, edge_lora.profiles, edge_lora.bundle.manifest\n"
        "heavy = ('torch', 'ultralytics', 'onnx', 'onnxruntime', 'openvino', 'tensorrt', 'edge_lora.export',\n"
        "         'edge_lora.build', 'edge_lora.train', 'edge_lora.cli', 'edge_lora.runtime.onnxrt',\n"
        "         'edge_lora.runtime.openvino_rt', 'edge_lora.runtime.tensorrt_rt')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_register_refuses_a_taken_name_or_suffix():
    with pytest.raises(ValueError, match="already registered"):
        backends.register(backends.ONNXRUNTIME)
    clash = backends.BackendSpec(**{**TOYRT.__dict__, "name": "clash", "suffixes": (".onnx",)})
    with pytest.raises(ValueError, match=r"\['.onnx'\] already load with 'onnxruntime'"):
        backends.register(clash)
    lazy = backends.BackendSpec(**{**TOYRT.__dict__, "runner": "ToyRunner"})
    with pytest.raises(ValueError, match="not a 'module:attribute'"):
        backends.register(lazy)
    assert backends.names() == ("onnxruntime", "openvino", "tensorrt")
    with pytest.raises(InputError, match="unknown backend 'nope'; registered: onnxruntime, openvino"):
        backends.get("nope")


def test_shipped_bundle_layouts_and_suffixes_are_unchanged(tmp_path):
    from edge_lora.build import _bundle_files_for

    onnx = tmp_path / "onnx" / "model.onnx"
    xml = tmp_path / "openvino-int8" / "model.xml"
    plan = tmp_path / "tensorrt-fp16" / "model.onnx"
    assert _bundle_files_for({"backend": "onnxruntime", "path": str(onnx)}) == (
        {"model/model.onnx": onnx},
        "model/model.onnx",
        [],
    )
    assert _bundle_files_for({"backend": "openvino", "path": str(xml)}) == (
        {"model/model_openvino_model": xml.parent},
        "model/model_openvino_model/model.xml",
        [],
    )
    assert _bundle_files_for({"backend": "tensorrt", "path": str(plan)}) == (
        {"model/tensorrt": plan.parent},
        "model/tensorrt/model.onnx",
        ["model/tensorrt/model.engine", "model/tensorrt/model.engine.json"],
    )
    assert dict(backends.ARTIFACT_SUFFIXES) == {
        "onnxruntime": (".onnx",),
        "openvino": (".xml",),
        "tensorrt": (".onnx", ".engine", ".plan"),
    }


@pytest.mark.parametrize(
    ("backend", "path", "outputs"),
    [
        ("openvino", "model/openvino/model.xml", []),  # bundles from before model_openvino_model
        ("openvino", "model/model_openvino_model/model.xml", []),
        ("onnxruntime", "model/model.onnx", []),
        ("tensorrt", "model/tensorrt/model.onnx", ["model/tensorrt/model.engine"]),
        ("tensorrt", "model/tensorrt/model.plan", []),
    ],
)
def test_manifest_accepts_old_and_new_artifact_paths(backend, path, outputs):
    from edge_lora.bundle.manifest import Artifact

    art = Artifact.model_validate(
        {
            "path": path,
            "sha256": "0" * 64,
            "bytes": 1,
            "backend": backend,
            "precision": "fp16",
            "role": "primary",
            "device_outputs": outputs,
        }
    )
    assert art.run_path == (outputs[0] if outputs else path)


def test_manifest_refuses_a_suffix_its_backend_does_not_ship():
    from edge_lora.bundle.manifest import Artifact

    with pytest.raises(Exception, match=r"a openvino artifact is a \.xml file, got '\.onnx'"):
        Artifact.model_validate(
            {
                "path": "model/model.onnx",
                "sha256": "0" * 64,
                "bytes": 1,
                "backend": "openvino",
                "precision": "fp32",
                "role": "primary",
            }
        )


def test_shipped_precisions_and_auto_chains_are_unchanged():
    from edge_lora.profiles import load_profile

    def auto(name, **update):
        return load_profile(name).model_copy(update={"precision": "auto", "fallbacks": [], **update})

    ort, ov, trt = (load_profile(n) for n in ("cpu-onnxruntime", "intel-openvino", "nvidia-gpu"))
    assert ort.buildable_precisions() == {"fp32", "int8"}
    assert ov.buildable_precisions() == {"fp32", "fp16", "int8", "bf16"}
    assert load_profile("intel-igpu-openvino").buildable_precisions() == {"fp32", "fp16", "int8"}
    assert trt.buildable_precisions() == {"fp32", "fp16", "int8"}
    assert auto("cpu-onnxruntime").precision_chain() == ["int8", "fp32"]
    assert auto("intel-openvino").precision_chain() == ["int8", "bf16", "fp32"]
    assert auto("intel-igpu-openvino").precision_chain() == ["int8", "fp16"]
    assert auto("nvidia-gpu").precision_chain() == ["int8", "fp16"]


def test_runner_settings_follow_the_runner_that_loads_the_artifact(tmp_path):
    from edge_lora.profiles import load_profile
    from edge_lora.validate.compare import artifact_backend, runner_settings

    ort, trt = load_profile("cpu-onnxruntime"), load_profile("nvidia-gpu")
    onnx, engine = tmp_path / "model.onnx", tmp_path / "model.engine"
    assert runner_settings(ort, onnx) == {
        "providers": list(ort.onnxruntime.execution_providers),
        "intra_op_threads": ort.onnxruntime.intra_op_threads,
        "graph_optimization": ort.onnxruntime.graph_optimization_level,
    }
    # A TensorRT profile's ONNX is measured on this host's CPU; its engine takes no settings.
    assert runner_settings(trt, onnx) == {"providers": ["CPUExecutionProvider"]}
    assert runner_settings(trt, engine) == {}
    assert runner_settings(ort, tmp_path / "model.xml") == {}  # no openvino section
    assert [artifact_backend(p) for p in (onnx, engine, tmp_path / "m.plan", tmp_path / "m.xml")] == [
        "onnxruntime",
        "tensorrt",
        "tensorrt",
        "openvino",
    ]


def test_unknown_artifact_messages_are_unchanged(tmp_path):
    from edge_lora.runtime.loader import runner_class

    (tmp_path / "m.tflite").write_bytes(b"x")
    with pytest.raises(InputError) as e:
        runner_class(tmp_path / "m.tflite")
    assert str(e.value).endswith(
        "unknown model type '.tflite'; expected .onnx, an OpenVINO .xml (or its folder), .engine or .plan"
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as e:
        runner_class(tmp_path / "empty")
    assert str(e.value).endswith(
        "is a folder without an OpenVINO IR; pass a .onnx, .xml, .engine or .plan file"
    )
