"""TensorRT build plans (host side) and engine builds (device side).

The plans are real: a tiny YOLO26n exported to ONNX at 64 px, its S8S8 QDQ INT8 graph made by ONNX Runtime
with the Jetson profile's policy, then planned for the shipped profiles. Engine builds need TensorRT and a
CUDA device: the one real build test is skipped here; the build logic (typing, flags, DLA, FP32 pinning,
parser errors, the engine header and fingerprint the runtime reads) runs against a small stand-in for the
``tensorrt`` module that records what it is asked to do.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edge_lora.errors import InputError, ModelError, OutputExistsError, ProfileError, ToolError
from edge_lora.export.tensorrt.prepare import prepare_tensorrt
from edge_lora.fileio import sha256_file
from edge_lora.profiles import CalibRecipe, load_profile
from edge_lora.runtime.tensorrt_engine import NO_TENSORRT, build_engine, jetpack_release
from edge_lora.runtime.tensorrt_plan import TensorRtPlan, build_settings

pytestmark = pytest.mark.slow  # end to end: trains, exports or builds tiny models

IMGSZ = 64
SKIP_DEVICE = "no CUDA device / tensorrt not installed: engine builds run on the device"


def _profile(name: str, **overrides):
    return load_profile(name).with_overrides({"imgsz": IMGSZ, **overrides})


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory, base_ckpt) -> Path:
    from edge_lora.export.onnx.exporter import export_onnx

    out = tmp_path_factory.mktemp("trt_src") / "model.onnx"
    return export_onnx(base_ckpt, out, imgsz=IMGSZ, end2end=True).path


@pytest.fixture(scope="module")
def qdq_onnx(tmp_path_factory, fp32_onnx, demo_data) -> Path:
    from edge_lora.export.calibration import select_calibration
    from edge_lora.export.onnx.qdq import quantize_qdq
    from edge_lora.export.policy import QuantPolicy

    recipe = CalibRecipe.model_validate(
        {"schema_version": 1, "name": "tiny", "description": "test", "num_images": 2, "min_images": 2}
    )
    folder = tmp_path_factory.mktemp("trt_qdq")
    calib = select_calibration(demo_data.line_b_yaml, recipe, folder / "calib")
    profile = _profile("jetson-orin-nano")
    return quantize_qdq(
        fp32_onnx, folder / "s8s8.onnx", calib, QuantPolicy.from_profile(profile), profile=profile
    ).path


@pytest.fixture(scope="module")
def plans(tmp_path_factory, fp32_onnx, qdq_onnx):
    root = tmp_path_factory.mktemp("trt_plans")
    return {
        "nano_int8": prepare_tensorrt(qdq_onnx, root / "nano_int8", _profile("jetson-orin-nano")),
        "agx_dla_int8": prepare_tensorrt(
            qdq_onnx, root / "agx_dla_int8", _profile("jetson-agx-orin", **{"tensorrt.dla_core": 0})
        ),
        "agx_dla_fp16": prepare_tensorrt(
            fp32_onnx,
            root / "agx_dla_fp16",
            _profile("jetson-agx-orin", **{"tensorrt.dla_core": 1, "tensorrt.allow_gpu_fallback": False}),
            precision="fp16",
        ),
        "gpu_fp16": prepare_tensorrt(fp32_onnx, root / "gpu_fp16", _profile("nvidia-gpu")),
        "gpu_fp32": prepare_tensorrt(fp32_onnx, root / "gpu_fp32", _profile("nvidia-gpu"), precision="fp32"),
    }


def _flags(plan: TensorRtPlan) -> list[str]:
    return shlex.split(plan.data["trtexec"])


def _script_args(plan: TensorRtPlan) -> list[str]:
    """The trtexec arguments as the shell script would pass them."""
    text = plan.trtexec_path.read_text()
    body = text[text.index('"$TRTEXEC"') :].replace("\\\n", " ")
    return shlex.split(body)[1:-1]  # drop "$TRTEXEC" and "$@"


# ------------------------------------------------------------------------------------------- host side
def test_orin_nano_int8_plan(plans, qdq_onnx):
    plan = plans["nano_int8"]
    data, build = plan.data, plan.build
    assert sorted(p.name for p in plan.directory.iterdir()) == [
        "README.md",
        "build_plan.json",
        "model.onnx",
        "trtexec.sh",
    ]
    assert data["precision"] == "int8" and data["onnx"]["has_qdq"]
    assert data["onnx"]["sha256"] == sha256_file(qdq_onnx) == sha256_file(plan.onnx_path)
    assert data["onnx"]["input"] == {"name": "images", "shape": [1, 3, IMGSZ, IMGSZ]}
    # QDQ: strongly typed, no precision flags (the graph says what is int8; the head stays float).
    assert build["strongly_typed"] is True and not build["fp16"] and not build["int8"]
    assert build["fp32_layers"] == [] and build["rules"] == "tensorrt10"
    assert build["workspace_mib"] == 2048 and build["builder_optimization_level"] == 3
    assert build["dla_core"] is None and build["allow_gpu_fallback"] is None
    device = data["device"]
    assert device == {
        "family": "jetson",
        "model_match": ["Orin Nano"],
        "dla_cores": 0,
        "tensorrt_version": ">=10.0,<11",
        "jetpack": "6.2",
    }
    assert data["engine"]["metadata"]["names"] == {"0": "scratch", "1": "hole", "2": "short"}
    flags = _flags(plan)
    assert flags[:3] == ["trtexec", "--onnx=model.onnx", "--saveEngine=model.trtexec.engine"]
    assert "--stronglyTyped" in flags and "--fp16" not in flags and "--int8" not in flags
    assert "--memPoolSize=workspace:2048M" in flags and "--builderOptimizationLevel=3" in flags
    assert not any(f.startswith("--useDLACore") for f in flags)
    assert _script_args(plan) == flags[1:]
    assert os.access(plan.trtexec_path, os.X_OK)
    assert "edge-lora engine build" in plan.readme_path.read_text()
    # The plan reads back, and its hash is the file's.
    loaded = TensorRtPlan.load(plan.directory)
    assert loaded.data == plan.data == json.loads(plan.plan_path.read_text()) and loaded.sha256 == plan.sha256
    assert loaded.sha256 == sha256_file(plan.plan_path)


def test_agx_orin_dla_plans(plans):
    int8 = plans["agx_dla_int8"]
    # TensorRT 10 configures DLA with precision flags: weakly typed INT8 + FP16 (unquantized layers FP16).
    assert int8.build["strongly_typed"] is False and int8.build["int8"] and int8.build["fp16"]
    assert int8.build["dla_core"] == 0 and int8.build["allow_gpu_fallback"] is True
    assert int8.build["workspace_mib"] == 8192 and int8.data["device"]["dla_cores"] == 2
    assert int8.data["engine"]["metadata"]["dla"] == "0"  # the runtime sets the DLA core from it
    flags = _flags(int8)
    for flag in ("--int8", "--fp16", "--useDLACore=0", "--allowGPUFallback", "--memPoolSize=workspace:8192M"):
        assert flag in flags
    assert "--stronglyTyped" not in flags
    # The head's post-processing is pinned to FP32 (compute, and output types where every output is float).
    pinned = int8.build["fp32_layers"]
    assert "/model.23/Sigmoid" in pinned and "/model.23/TopK" in pinned
    assert "/model.23/TopK" not in int8.build["fp32_output_layers"]  # its indices are integers
    assert "/model.23/Sigmoid" in int8.build["fp32_output_layers"]
    assert any(f.startswith("--layerPrecisions=/model.23/") for f in flags)
    assert "--precisionConstraints=prefer" in flags
    assert _script_args(int8) == flags[1:]

    fp16 = plans["agx_dla_fp16"]
    flags = _flags(fp16)
    assert "--fp16" in flags and "--int8" not in flags and "--useDLACore=1" in flags
    assert "--allowGPUFallback" not in flags and fp16.build["allow_gpu_fallback"] is False


def test_nvidia_gpu_plans(plans, fp32_onnx):
    fp16 = plans["gpu_fp16"]
    assert fp16.precision == "fp16" and fp16.data["device"]["jetpack"] is None
    assert fp16.data["device"]["family"] == "gpu" and fp16.data["onnx"]["sha256"] == sha256_file(fp32_onnx)
    assert fp16.build["strongly_typed"] is False and fp16.build["fp16"] and not fp16.build["int8"]
    flags = _flags(fp16)
    assert "--fp16" in flags and "--stronglyTyped" not in flags and "--memPoolSize=workspace:4096M" in flags
    assert "/model.23/Sigmoid" in fp16.build["fp32_layers"]

    fp32 = plans["gpu_fp32"]
    assert not fp32.build["fp16"] and fp32.build["fp32_layers"] == []
    flags = _flags(fp32)
    assert "--fp16" not in flags and "--int8" not in flags and "--stronglyTyped" not in flags
    assert not any(f.startswith("--layerPrecisions") for f in flags)


def test_plan_for_a_range_spanning_tensorrt_11(tmp_path, fp32_onnx):
    plan = prepare_tensorrt(
        fp32_onnx, tmp_path / "p", _profile("nvidia-gpu", **{"tensorrt.version": ">=10.0"})
    )
    assert plan.build["rules"] == "tensorrt10" and plan.build["fp16"]
    assert any("TensorRT 11" in note and "FP16 ONNX" in note for note in plan.build["notes"])


def test_build_settings_rules():
    # TensorRT 10.
    assert build_settings("int8", has_qdq=True, float_type="float32", dla_core=None, tensorrt_major=10) == {
        "strongly_typed": True,
        "fp16": False,
        "int8": False,
    }
    assert build_settings("fp16", has_qdq=False, float_type="float16", dla_core=None, tensorrt_major=10)[
        "strongly_typed"
    ]
    qdq = {"has_qdq": True, "float_type": "float32", "dla_core": None}
    weak = build_settings("int8", **qdq, tensorrt_major=10, strongly_typed=False)
    assert weak == {"strongly_typed": False, "fp16": True, "int8": True}
    # TensorRT 11: strongly typed only, no flags; an FP32 graph cannot become an fp16 engine.
    assert build_settings("int8", has_qdq=True, float_type="float32", dla_core=0, tensorrt_major=11) == {
        "strongly_typed": True,
        "fp16": False,
        "int8": False,
    }
    with pytest.raises(InputError, match="FP16 ONNX"):
        build_settings("fp16", has_qdq=False, float_type="float32", dla_core=None, tensorrt_major=11)
    with pytest.raises(InputError, match="only builds strongly typed"):
        build_settings("int8", **qdq, tensorrt_major=11, strongly_typed=False)
    with pytest.raises(InputError, match="QDQ"):
        build_settings("int8", has_qdq=False, float_type="float32", dla_core=None, tensorrt_major=10)
    with pytest.raises(InputError, match="Q/DQ"):
        build_settings("fp16", has_qdq=True, float_type="float32", dla_core=None, tensorrt_major=10)


def _u8_qdq_onnx(path: Path) -> Path:
    """A one-node-pair QDQ graph with uint8 (asymmetric) activations: what TensorRT refuses."""
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.02])
    zp = helper.make_tensor("zp", TensorProto.UINT8, [], [128])
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["images", "scale", "zp"], ["q"], name="q"),
            helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["output0"], name="dq"),
        ],
        "u8",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, IMGSZ, IMGSZ])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 3, IMGSZ, IMGSZ])],
        [scale, zp],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_prepare_refusals(tmp_path, fp32_onnx, qdq_onnx, plans):
    nano = _profile("jetson-orin-nano")
    with pytest.raises(InputError, match="QDQ ONNX"):
        prepare_tensorrt(fp32_onnx, tmp_path / "a", nano)  # int8 needs the QDQ graph
    with pytest.raises(InputError, match="Q/DQ"):
        prepare_tensorrt(qdq_onnx, tmp_path / "b", nano, precision="fp16")
    with pytest.raises(InputError, match="1x3x640x640"):
        prepare_tensorrt(qdq_onnx, tmp_path / "c", load_profile("jetson-orin-nano"))  # profile imgsz 640
    with pytest.raises(InputError, match="symmetric int8"):
        prepare_tensorrt(_u8_qdq_onnx(tmp_path / "u8.onnx"), tmp_path / "d", nano)
    with pytest.raises(InputError, match="DLA runs fp16/int8 only"):
        dla = _profile("jetson-agx-orin", **{"tensorrt.dla_core": 0})
        prepare_tensorrt(fp32_onnx, tmp_path / "e", dla, precision="fp32")
    with pytest.raises(InputError, match="FP16 ONNX"):
        prepare_tensorrt(fp32_onnx, tmp_path / "f", _profile("nvidia-gpu", **{"tensorrt.version": ">=11.0"}))
    with pytest.raises(ProfileError, match="not tensorrt"):
        prepare_tensorrt(fp32_onnx, tmp_path / "g", "intel-openvino")
    with pytest.raises(OutputExistsError):
        prepare_tensorrt(qdq_onnx, plans["nano_int8"].directory, nano)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u8.onnx"]  # nothing half-written


def test_jetpack_release(tmp_path):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n")
    assert jetpack_release(release) == {"l4t": "36.4.3", "jetpack": "6.2"}
    release.write_text("# R36 (release), REVISION: 4.0, GCID: 1\n")
    assert jetpack_release(release) == {"l4t": "36.4.0", "jetpack": "6.1"}
    assert jetpack_release(tmp_path / "missing") == {"l4t": None, "jetpack": None}


# ----------------------------------------------------------------------------------------- device side
def test_build_engine_without_tensorrt(monkeypatch, plans):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, installed or not
    with pytest.raises(ToolError) as err:
        build_engine(plans["gpu_fp16"].directory)
    assert str(err.value) == NO_TENSORRT
    assert (
        "TensorRT is not installed here; build the engine on the device: edge-lora engine build"
        in NO_TENSORRT
    )
    assert not (plans["gpu_fp16"].directory / "model.engine").exists()


def test_build_engine_refuses_tampered_plan(tmp_path, plans, fp32_onnx):
    import shutil

    copy = tmp_path / "plan"
    shutil.copytree(plans["gpu_fp16"].directory, copy)
    (copy / "model.onnx").write_bytes(fp32_onnx.read_bytes() + b"\0")
    with pytest.raises(ModelError, match="changed after the plan was made"):
        build_engine(copy)
    with pytest.raises(InputError, match="no TensorRT build plan"):
        build_engine(tmp_path)


class _FakeTensorRT(types.ModuleType):
    """Just enough of the ``tensorrt`` module for build_engine, recording what it is asked to do."""

    def __init__(self, version: str = "10.3.0", dla_cores: int = 2, parse_ok: bool = True):
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: dict = {"flags": [], "pinned": {}, "output_types": {}}
        fake = self

        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        class ILogger:
            def __init__(self):
                pass

        ILogger.Severity = Severity
        self.ILogger = ILogger
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        self.BuilderFlag = types.SimpleNamespace(
            FP16="FP16", INT8="INT8", GPU_FALLBACK="GPU_FALLBACK", PREFER_PRECISION_CONSTRAINTS="PREFER"
        )
        self.DeviceType = types.SimpleNamespace(GPU="GPU", DLA="DLA")
        self.float32, self.float16, self.int32 = "float32", "float16", "int32"

        class Tensor:
            def __init__(self, dtype):
                self.dtype = dtype

        class Layer:
            def __init__(self, name, n_out, dtypes):
                self.name, self.num_outputs, self._outs, self.precision = name, n_out, dtypes, None

            def get_output(self, j):
                return Tensor(self._outs[j])

            def set_output_type(self, j, dtype):
                fake.calls["output_types"].setdefault(self.name, []).append((j, dtype))

        class Network:
            def __init__(self, flags):
                fake.calls["network_flags"] = flags
                self.layers = []

            @property
            def num_layers(self):
                return len(self.layers)

            def get_layer(self, i):
                return self.layers[i]

            def get_input(self, i):
                return types.SimpleNamespace(name="images")

        class ParserError:
            def __str__(self):
                return "In node 7 (importFoo): UNSUPPORTED_NODE: no importer for op Foo"

        class OnnxParser:
            def __init__(self, network, logger):
                self.network, self.num_errors = network, 0

            def parse_from_file(self, path):
                fake.calls["parsed"] = path
                if not parse_ok:
                    self.num_errors = 1
                    return False
                for node in onnx.load(path).graph.node:
                    dtypes = ["int32" if node.op_type in ("Mod", "Cast") else "float32"] * len(node.output)
                    if node.op_type == "TopK":
                        dtypes = ["float32", "int32"]
                    self.network.layers.append(Layer(node.name, len(node.output), dtypes))
                return True

            def get_error(self, i):
                return ParserError()

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls["workspace"] = (pool, size)

            def set_flag(self, flag):
                fake.calls["flags"].append(flag)

            def __setattr__(self, name, value):
                fake.calls[name] = value

        class Builder:
            num_DLA_cores = dla_cores

            def __init__(self, logger):
                self.logger = logger

            def create_network(self, flags):
                return Network(flags)

            def create_builder_config(self):
                return Config()

            def build_serialized_network(self, network, config):
                for layer in network.layers:
                    if layer.precision is not None:
                        fake.calls["pinned"][layer.name] = layer.precision
                self.logger.log(Severity.WARNING, "fake builder warning")
                return b"FAKE-ENGINE-BYTES"

        self.Builder, self.OnnxParser = Builder, OnnxParser


@pytest.fixture()
def fake_device(monkeypatch, tmp_path):
    """A fake tensorrt module, a fake CUDA fingerprint and (opt-in) a fake Jetson."""
    import edge_lora.profiles as profiles
    import edge_lora.runtime.tensorrt_engine as tensorrt_engine
    import edge_lora.runtime.tensorrt_rt as tensorrt_rt

    def install(jetson: str | None = None, **kw) -> _FakeTensorRT:
        trt = _FakeTensorRT(**kw)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        gpu = "Orin" if jetson else "NVIDIA RTX A2000"
        monkeypatch.setattr(
            tensorrt_rt,
            "current_device_fingerprint",
            lambda device=0: {
                "gpu_name": gpu,
                "compute_capability": "8.7",
                "tensorrt_version": trt.__version__,
            },
        )
        release = tmp_path / "nv_tegra_release"
        model = tmp_path / "device-tree-model"
        if jetson:
            release.write_text("# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic, EABI: aarch64\n")
            model.write_text(jetson + "\0")
        monkeypatch.setattr(tensorrt_engine, "_NV_TEGRA_RELEASE", release)
        monkeypatch.setattr(profiles, "device_model_path", lambda: model)
        return trt

    return install


def _copy_plan(plan: TensorRtPlan, dest: Path) -> Path:
    import shutil

    shutil.copytree(plan.directory, dest)
    return dest


def test_build_engine_strongly_typed_int8(fake_device, plans, tmp_path):
    from edge_lora.runtime.tensorrt_rt import (
        check_engine_fingerprint,
        read_engine_fingerprint,
        read_engine_header,
    )

    trt = fake_device(jetson="NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super")
    plan_dir = _copy_plan(plans["nano_int8"], tmp_path / "plan")
    result = build_engine(plan_dir)
    assert trt.calls["network_flags"] == 1 << 1  # STRONGLY_TYPED
    assert trt.calls["flags"] == [] and trt.calls["pinned"] == {}
    assert (
        trt.calls["workspace"] == ("workspace", 2048 << 20) and trt.calls["builder_optimization_level"] == 3
    )
    assert trt.calls["parsed"] == str(plan_dir / "model.onnx")
    assert result.engine == plan_dir / "model.engine" and result.strongly_typed and result.flags == []
    assert "fake builder warning" in result.warnings
    # The engine carries Ultralytics' metadata header; the sidecar is the fingerprint the runtime checks.
    offset, meta = read_engine_header(result.engine)
    assert result.engine.read_bytes()[offset:] == b"FAKE-ENGINE-BYTES"
    assert meta["names"]["1"] == "hole" and meta["imgsz"] == [IMGSZ, IMGSZ]
    sidecar = json.loads(result.fingerprint_path.read_text())
    assert sidecar["plan_sha256"] == plans["nano_int8"].sha256 and sidecar["precision"] == "int8"
    assert sidecar["engine_sha256"] == sha256_file(result.engine)
    fingerprint = read_engine_fingerprint(result.engine)
    assert fingerprint["jetpack"] == "6.2" and fingerprint["l4t"] == "36.4.3"
    here = {k: fingerprint[k] for k in ("gpu_name", "compute_capability", "tensorrt_version")}
    assert check_engine_fingerprint(result.engine, current=here) == fingerprint
    with pytest.raises(OutputExistsError):
        build_engine(plan_dir)
    assert build_engine(plan_dir, tmp_path / "other.engine").engine.is_file()


def test_build_engine_dla_weakly_typed(fake_device, plans, tmp_path):
    trt = fake_device(jetson="NVIDIA Jetson AGX Orin Developer Kit")
    result = build_engine(_copy_plan(plans["agx_dla_int8"], tmp_path / "plan"))
    assert trt.calls["network_flags"] == 0
    assert trt.calls["flags"][:2] == ["FP16", "INT8"] and "GPU_FALLBACK" in trt.calls["flags"]
    assert "PREFER" in trt.calls["flags"]
    assert trt.calls["default_device_type"] == "DLA" and trt.calls["DLA_core"] == 0
    assert trt.calls["pinned"]["/model.23/Sigmoid"] == "float32" and "/model.23/TopK" in trt.calls["pinned"]
    assert "/model.23/TopK" not in trt.calls["output_types"]  # integer indices keep their type
    assert result.fp32_layers_pinned == len(plans["agx_dla_int8"].build["fp32_layers"])
    assert result.flags == ["fp16", "int8"] and not result.strongly_typed
    assert result.warnings == ["fake builder warning"]  # AGX Orin matches the profile's model_match


def test_build_engine_device_checks(fake_device, plans, tmp_path):
    # A Jetson plan on a desktop GPU: refused unless asked for.
    fake_device(jetson=None)
    plan_dir = _copy_plan(plans["nano_int8"], tmp_path / "plan")
    with pytest.raises(ToolError, match="is for a Jetson"):
        build_engine(plan_dir)
    result = build_engine(plan_dir, allow_other_device=True)
    assert any("built anyway" in w for w in result.warnings)
    # A DLA core the device does not have.
    fake_device(jetson="NVIDIA Jetson AGX Orin", dla_cores=1)
    with pytest.raises(ToolError, match="DLA core 1"):
        build_engine(_copy_plan(plans["agx_dla_fp16"], tmp_path / "dla"))
    # Another module than the profile's: built, with a warning.
    fake_device(jetson="NVIDIA Jetson Orin NX Engineering Reference Developer Kit")
    result = build_engine(_copy_plan(plans["nano_int8"], tmp_path / "nx"))
    assert any("Orin Nano" in w for w in result.warnings)


def test_build_engine_version_and_parser_errors(fake_device, plans, tmp_path):
    fake_device(version="8.6.2")
    with pytest.raises(ToolError, match=r"TensorRT 8\.6\.2, the plan is for '>=10.0,<11'"):
        build_engine(_copy_plan(plans["gpu_fp16"], tmp_path / "a"))
    fake_device(parse_ok=False)
    with pytest.raises(ToolError, match="cannot parse .*no importer for op Foo"):
        build_engine(_copy_plan(plans["gpu_fp16"], tmp_path / "b"))
    assert not (tmp_path / "b" / "model.engine").exists()
    # TensorRT 11 on a plan admitting it: strongly typed even for the fp16 plan -> refused (FP32 graph).
    plan_dir = _copy_plan(plans["gpu_fp16"], tmp_path / "c")
    data = json.loads((plan_dir / "build_plan.json").read_text())
    data["device"]["tensorrt_version"] = ">=10.0"
    (plan_dir / "build_plan.json").write_text(json.dumps(data))
    fake_device(version="11.1.0")
    with pytest.raises(InputError, match="FP16 ONNX"):
        build_engine(plan_dir)
    # A range that admits TensorRT 8.6: still refused, edge-lora builds and runs with TensorRT >= 10.
    data["device"]["tensorrt_version"] = ">=8.6"
    (plan_dir / "build_plan.json").write_text(json.dumps(data))
    fake_device(version="8.6.2")
    with pytest.raises(ToolError, match="too old"):
        build_engine(plan_dir)


def _has_cuda_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401

        from edge_lora.runtime.tensorrt_rt import current_device_fingerprint

        current_device_fingerprint()
    except Exception:  # noqa: BLE001 - any failure means: not a device
        return False
    return True


@pytest.mark.skipif(not _has_cuda_tensorrt(), reason=SKIP_DEVICE)
def test_build_and_run_engine_on_device(plans, tmp_path, demo_data):
    import cv2

    from edge_lora.export.onnx.graph import run_onnx
    from edge_lora.runtime.prepost import preprocess
    from edge_lora.runtime.tensorrt_rt import TensorRtRunner
    from edge_lora.validate.parity import detection_parity

    plan = plans["gpu_fp32"]
    result = build_engine(plan.directory, tmp_path / "model.engine", allow_other_device=True)
    image = sorted((demo_data.root / "line_b" / "images" / "val").glob("*.png"))[0]
    batch, _ = preprocess([cv2.imread(str(image))], IMGSZ)
    ref, _ = run_onnx(plan.onnx_path, batch)
    with TensorRtRunner(result.engine) as runner:
        out = next(iter(runner.infer(batch).values()))
    assert detection_parity(ref, np.asarray(out), end2end=True, tolerance=1e-2).passed


HOST = ("edge_lora.export", "edge_lora.train", "edge_lora.merge", "edge_lora.cli", "edge_lora.build")
HEAVY = ("torch", "torchvision", "ultralytics", "peft", "nncf", "onnx", "onnxruntime", "openvino")


def test_host_and_device_sides_stay_light(tmp_path, fp32_onnx, plans):
    """prepare_tensorrt imports no torch/Ultralytics/TensorRT. The device side (plan format, engine build)
    loads a plan and builds (no TensorRT: the clear error) with the host side, torch, Ultralytics, PEFT,
    NNCF and onnx unimportable, and no import statement in it (lazy ones too) names them."""
    host = f"""
import sys
from edge_lora.export.tensorrt.prepare import prepare_tensorrt
from edge_lora.profiles import load_profile
profile = load_profile("nvidia-gpu").with_overrides({{"imgsz": {IMGSZ}}})
prepare_tensorrt({str(fp32_onnx)!r}, {str(tmp_path / "plan")!r}, profile)
assert not (heavy := {{"torch", "ultralytics", "tensorrt", "nncf", "openvino"}} & set(sys.modules)), heavy
"""
    device = f"""
import sys
sys.modules.update(dict.fromkeys({HEAVY + HOST + ("tensorrt",)!r}))  # None: importing them fails
from edge_lora.errors import ToolError
from edge_lora.runtime.tensorrt_engine import NO_TENSORRT, build_engine
from edge_lora.runtime.tensorrt_plan import TensorRtPlan
plan = TensorRtPlan.load({str(plans["gpu_fp16"].directory)!r})
try:
    build_engine(plan, {str(tmp_path / "model.engine")!r})
    raise SystemExit("built without TensorRT")
except ToolError as exc:
    assert str(exc) == NO_TENSORRT, exc
"""
    for code in (host, device):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    for module in ("edge_lora.runtime.tensorrt_plan", "edge_lora.runtime.tensorrt_engine"):
        tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
        imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        bad = [m for m in imported if m.startswith(HOST) or m.split(".")[0] in HEAVY]
        assert not bad, f"{module} imports {bad}"
