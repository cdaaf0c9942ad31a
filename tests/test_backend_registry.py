"""The backend registry (issue 10): what a backend is, said once in :mod:`edge_lora.backends`.

The shipped backends keep their layout, precisions, runner settings and messages; and adding one is a spec
and a ``register()`` call: the toy backend ``toy`` (tests/toy_backend.py: a runner over ``.toy`` files
wrapping ONNX Runtime, an exporter copying the FP32 ONNX to ``model.toy``, a ``toy:`` profile section) is
named in a profile that validates, exported by ``export()``, laid out in a bundle whose manifest loads and
run by the runtime loader, without an edge_lora file knowing its name.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
from conftest import IMGSZ, REPO, make_base
from toy_backend import TOY, ToyRunner, ToySettings

from edge_lora import backends
from edge_lora.errors import InputError, ProfileError

# ---------------------------------------------------------------------------------------- the toy backend


@pytest.fixture
def toy():
    backends.register(TOY)
    try:
        yield TOY
    finally:
        backends.unregister("toy")


TOY_PROFILE = f"""\
    extends: cpu-onnxruntime
    name: line-pc-toy
    description: The toy backend on a line PC.
    backend: toy
    precision: fp32
    fallbacks: []
    imgsz: {IMGSZ}
    calibration: null
    quantization: null
    onnxruntime: null
    toy:
      threads: 2
    """


def _write(tmp_path, text, name="line-pc-toy.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _load_error(path) -> str:
    from edge_lora.profiles import load_profile

    with pytest.raises(ProfileError) as e:
        load_profile(path)
    return str(e.value)


def test_a_profile_names_the_toy_backend_and_its_section(toy, tmp_path):
    from edge_lora.profiles import TargetProfile, load_profile

    profile = load_profile(_write(tmp_path, TOY_PROFILE))
    assert (profile.backend, profile.family) == ("toy", "cpu")
    assert profile.backend_settings == ToySettings(threads=2) and profile.settings_for("onnxruntime") is None
    assert profile.precision_chain() == ["fp32"] and profile.buildable_precisions() == {"fp32"}
    # The section is part of the profile: dumped, hashed, shown and read back as it is.
    assert profile.resolved_dict()["toy"] == {"threads": 2}
    again = load_profile(_write(tmp_path, profile.to_yaml(), "shown.yaml"))
    assert again == profile and again.sha256() == profile.sha256()
    assert TargetProfile.model_validate(profile.resolved_dict()) == profile
    assert profile.with_overrides({"toy.threads": 3}).backend_settings.threads == 3
    # Left out, the active backend's section is its defaults, as for the shipped ones.
    bare = load_profile(
        _write(tmp_path, TOY_PROFILE.replace("    toy:\n      threads: 2\n", ""), "bare.yaml")
    )
    assert bare.backend_settings == ToySettings()
    assert "toy" in TargetProfile.model_json_schema()["properties"]["backend"]["enum"]


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (
            lambda t: t.replace("threads: 2", "thread: 2"),
            "field 'toy.thread': unknown key; did you mean 'threads'?",
        ),
        (
            lambda t: t.replace("threads: 2", "threads: 0"),
            "field 'toy.threads': Input should be greater than",
        ),
        (
            lambda t: t.replace("backend: toy", "backend: onnxruntime"),
            "field 'toy': toy settings, but backend is onnxruntime",
        ),
        (
            lambda t: t.replace("extends: cpu-onnxruntime", "extends: jetson-orin-nano").replace(
                "onnxruntime: null", "tensorrt: null"
            ),
            "field 'backend': toy cannot run on family jetson",
        ),
        (lambda t: t.replace("precision: fp32", "precision: int8"), "int8 is not built for toy"),
        (lambda t: t.replace("toy:", "toi:"), "field 'toi': unknown key; did you mean 'toy'?"),
    ],
    ids=["section-typo", "section-range", "section-on-other-backend", "family", "precision", "key-typo"],
)
def test_toy_profile_problems_name_the_field(toy, tmp_path, edit, fragment):
    msg = _load_error(_write(tmp_path, edit(TOY_PROFILE)))
    assert fragment in msg, msg


def test_an_unregistered_backend_is_a_schema_error_listing_the_registered(tmp_path):
    # Its section is an unknown key then (reported first), and the backend is not one.
    assert "field 'toy': unknown key; allowed here: " in _load_error(_write(tmp_path, TOY_PROFILE))
    msg = _load_error(_write(tmp_path, TOY_PROFILE.replace("    toy:\n      threads: 2\n", "")))
    assert (
        "field 'backend': Input should be a registered backend, 'onnxruntime', 'openvino' or 'tensorrt', "
        "got 'toy'" in msg
    ), msg
    from edge_lora.bundle.manifest import Artifact

    with pytest.raises(Exception, match="Input should be a registered backend, .* got 'toy'"):
        Artifact.model_validate(_toy_artifact())


def _toy_artifact(**over):
    return {
        "path": "model/model.toy",
        "sha256": "0" * 64,
        "bytes": 1,
        "backend": "toy",
        "precision": "fp32",
        "role": "primary",
        **over,
    }


def test_a_manifest_names_the_toy_backend(toy):
    from edge_lora.bundle.manifest import Artifact

    assert Artifact.model_validate(_toy_artifact()).run_path == "model/model.toy"
    with pytest.raises(Exception, match=r"a toy artifact is a \.toy file, got '\.onnx'"):
        Artifact.model_validate(_toy_artifact(path="model/model.onnx"))


@pytest.mark.slow
def test_a_toy_backend_exports_bundles_and_runs_from_one_test_file(toy, tmp_path):
    from edge_lora.build import _bundle_files_for
    from edge_lora.bundle.manifest import read_manifest
    from edge_lora.bundle.pack import write_bundle
    from edge_lora.export.api import export
    from edge_lora.profiles import load_profile
    from edge_lora.runtime.line import LineRuntime
    from edge_lora.runtime.loader import load_runner, runner_class
    from edge_lora.validate.compare import artifact_backend, runner_settings

    profile = load_profile(_write(tmp_path, TOY_PROFILE))
    base = make_base(tmp_path / "base.pt", {0: "open", 1: "short"})

    result = export(base, profile, tmp_path / "out")

    assert not result.failures
    [art] = result.artifacts
    assert (art.backend, art.precision) == ("toy", "fp32")
    assert art.path == tmp_path / "out" / "toy-fp32" / "model.toy" and art.path.is_file()
    assert art.details["copied_from"] == str(result.fp32_onnx) and art.bytes == art.path.stat().st_size

    assert runner_class(art.path) is ToyRunner
    assert artifact_backend(art.path) == "toy"
    settings = runner_settings(profile, art.path)
    assert settings == {"providers": ["CPUExecutionProvider"], "intra_op_threads": 2}
    x = np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    with load_runner(art.path, **settings) as toy_runner, load_runner(result.fp32_onnx) as ort:
        assert isinstance(toy_runner, ToyRunner) and toy_runner.metadata["imgsz"] == ort.metadata["imgsz"]
        [a], [b] = toy_runner.infer(x).values(), ort.infer(x).values()
        np.testing.assert_array_equal(a, b)

    files, run_path, outputs = _bundle_files_for(art.to_dict())
    assert files == {"model/model.toy": art.path} and run_path == "model/model.toy" and outputs == []
    assert backends.ARTIFACT_SUFFIXES["toy"] == (".toy",)
    bundle = write_bundle(
        tmp_path / "dist" / "line-pc-toy",
        files,
        {
            "target": profile,
            "classes": {0: "open", 1: "short"},
            "imgsz": IMGSZ,
            "postprocessing": {"end2end": True, "iou": 0.7, "max_det": 300},
            "artifacts": [
                {
                    "path": run_path,
                    "backend": "toy",
                    "precision": "fp32",
                    "role": "primary",
                    "runner_settings": settings,
                    "device_outputs": outputs,
                }
            ],
            "provenance": {
                "base": {"path": str(base), "sha256": "a" * 64},
                "adapter": None,
                "merged": {"sha256": "c" * 64},
                "calibration": None,
                "toolchain": {"edge-lora": "0.1.0"},
            },
        },
    )
    manifest = read_manifest(bundle)
    assert manifest.primary.backend == "toy" and manifest.target.profile["toy"] == {"threads": 2}
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "a.png"), np.full((48, 80, 3), 127, np.uint8))
    with LineRuntime(bundle) as line:
        assert isinstance(line.runner, ToyRunner)
        summary = line.run(frames, out_jsonl=tmp_path / "out.jsonl")
    assert summary.images == 1


def test_the_toy_backend_joins_messages_and_leaves_cleanly(toy, tmp_path):
    from edge_lora.runtime.loader import runner_class

    (tmp_path / "m.tflite").write_bytes(b"x")
    with pytest.raises(InputError, match=r"expected .onnx, .*\.engine or \.plan, a \.toy$"):
        runner_class(tmp_path / "m.tflite")
    backends.unregister("toy")
    assert "toy" not in backends.names() and "toy" not in backends.ARTIFACT_SUFFIXES
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
    clash = backends.BackendSpec(**{**TOY.__dict__, "name": "clash", "suffixes": (".onnx",)})
    with pytest.raises(ValueError, match=r"\['.onnx'\] already load with 'onnxruntime'"):
        backends.register(clash)
    lazy = backends.BackendSpec(**{**TOY.__dict__, "runner": "ToyRunner"})
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


def test_shipped_sections_are_the_profile_fields_their_specs_name(tmp_path):
    from edge_lora.export.api import Artifact
    from edge_lora.profiles import TargetProfile
    from edge_lora.schema import model_in

    for spec in backends.specs():
        field = TargetProfile.model_fields[spec.name]
        assert model_in(field.annotation) is spec.settings_model(), spec.name
    # An OpenVINO IR's size counts its .bin (BackendSpec.companions); the others are one file.
    (tmp_path / "model.xml").write_bytes(b"x" * 3)
    (tmp_path / "model.bin").write_bytes(b"x" * 5)
    (tmp_path / "model.onnx").write_bytes(b"x" * 7)
    assert Artifact("openvino", "fp32", tmp_path / "model.xml", 0.0).bytes == 8
    assert Artifact("onnxruntime", "fp32", tmp_path / "model.onnx", 0.0).bytes == 7


def test_a_backend_reads_its_own_section_while_the_profile_validates(tmp_path):
    import dataclasses

    from edge_lora.profiles import load_profile

    # fp16 only with several threads: the section is in place when precisions() is asked.
    backends.register(
        dataclasses.replace(
            TOY, precisions=lambda p: ("fp32", "fp16") if p.backend_settings.threads > 1 else ("fp32",)
        )
    )
    try:
        fp16 = TOY_PROFILE.replace("precision: fp32", "precision: fp16")
        assert load_profile(_write(tmp_path, fp16)).precision_chain() == ["fp16"]
        msg = _load_error(_write(tmp_path, fp16.replace("threads: 2", "threads: 1")))
        assert "field 'precision': fp16 is not built for toy: toy does not build it; use fp32" in msg, msg
    finally:
        backends.unregister("toy")


def test_sidecar_files_are_the_artifact_and_its_spec_companions(tmp_path):
    """``artifact_files`` reads ``BackendSpec.companions``: a toy backend's weights file is hashed and checked."""
    import dataclasses

    from edge_lora.errors import ModelError
    from edge_lora.export.artifact import artifact_files, verify_sidecar, write_sidecar

    # The shipped ones are unchanged: an IR brings its .bin, the others are one file (also a folder).
    for name in ("model.xml", "model.onnx", "model.engine", "model.plan", "model.toy"):
        (tmp_path / name).write_bytes(b"x")
    assert artifact_files(tmp_path / "model.xml") == [tmp_path / "model.xml", tmp_path / "model.bin"]
    assert artifact_files(tmp_path / "model.XML") == [tmp_path / "model.XML", tmp_path / "model.bin"]
    for name in ("model.onnx", "model.engine", "model.plan", "model.toy"):
        assert artifact_files(tmp_path / name) == [tmp_path / name]
    assert artifact_files(tmp_path) == [tmp_path]

    backends.register(dataclasses.replace(TOY, companions=(".weights",)))
    try:
        (tmp_path / "model.weights").write_bytes(b"w" * 4)
        assert artifact_files(tmp_path / "model.toy") == [tmp_path / "model.toy", tmp_path / "model.weights"]
        write_sidecar(
            tmp_path / "model.toy",
            kind="toy",
            source_checkpoint=None,
            source_sha256=None,
            profile=None,
            precision="fp32",
            calibration=None,
        )
        listed = [f["name"] for f in verify_sidecar(tmp_path / "model.toy")["files"]]
        assert listed == ["model.toy", "model.weights"]
        (tmp_path / "model.weights").write_bytes(b"w")
        with pytest.raises(ModelError, match="model.weights is 1 bytes but was exported as 4 bytes"):
            verify_sidecar(tmp_path / "model.toy")
    finally:
        backends.unregister("toy")


def test_report_reads_the_device_step_and_int8_hint_from_the_spec():
    """The bundle README's device-build line and report.md's INT8 next step come from the backend spec."""
    import dataclasses
    from types import SimpleNamespace

    from edge_lora.report import _device_step_line, _int8_hints

    # The shipped README lines are unchanged: only TensorRT builds on the device.
    assert _device_step_line(backends.TENSORRT) == (
        "edge-lora engine build model/tensorrt   # builds the TensorRT engine for this exact device\n"
    )
    assert _device_step_line(backends.ONNXRUNTIME) == _device_step_line(backends.OPENVINO) == ""
    assert _device_step_line(None) == ""
    assert all(spec.int8_hint for spec in backends.specs())
    assert "FP16 fallback" in backends.TENSORRT.int8_hint

    failed = [{"precision": "int8", "report": {"gates": {"checks": [
        {"name": "max_map_drop", "value": 2.0, "threshold": 1.0, "passed": False}
    ]}}}]  # fmt: skip
    toy = SimpleNamespace(backend="toy")
    assert _int8_hints(toy, failed) == []  # not registered (or no hint): no line, no error
    backends.register(
        dataclasses.replace(TOY, device_step="edge-lora toy build model", title="Toy", int8_hint="use fp32")
    )
    try:
        assert _int8_hints(toy, failed)[-1].endswith("To keep INT8: use fp32.")
        line = _device_step_line(backends.get("toy"))
        assert line == "edge-lora toy build model   # builds the Toy engine for this exact device\n"
    finally:
        backends.unregister("toy")
