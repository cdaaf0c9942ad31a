"""Target profiles and calibration recipes: shipped files, loader, error messages, aliases, hashing."""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from edge_lora import profiles as P
from edge_lora.errors import ProfileError
from edge_lora.fileio import sha256_json
from edge_lora.profiles import loader, sections

REPO = Path(__file__).resolve().parents[1]
REQUIRED = {
    "cpu-onnxruntime",
    "intel-openvino",
    "jetson-orin-nano",
    "jetson-orin-nx",
    "jetson-agx-orin",
    "nvidia-gpu",
    "rpi5",
}


def base_profile() -> dict[str, Any]:
    """A minimal valid standalone profile (a Jetson, so TensorRT-specific rules apply)."""
    return {
        "schema_version": 1,
        "name": "my-jetson",
        "description": "test profile",
        "family": "jetson",
        "backend": "tensorrt",
        "precision": "int8",
        "fallbacks": ["fp16"],
        "calibration": "default",
        "quantization": {"scheme": "s8s8"},
        "tensorrt": {"jetpack": "6.2"},
        "gates": {"max_map_drop": 1.0, "min_agreement_f1": 0.9, "max_p99_ms": 25},
    }


def cpu_profile() -> dict[str, Any]:
    return {
        "schema_version": 1,
        "name": "my-cpu",
        "description": "test profile",
        "family": "cpu",
        "backend": "onnxruntime",
        "precision": "fp32",
        "gates": {"max_map_drop": 1.0, "min_agreement_f1": 0.9},
    }


def write(tmp_path: Path, data: dict[str, Any] | str, name: str = "my-profile.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def shown(path: Path) -> str:
    """How messages name a file: relative to the working directory when inside it, else as given."""
    return loader._display(path)


def load_error(path: Path) -> str:
    with pytest.raises(ProfileError) as info:
        P.load_profile(path)
    msg = str(info.value)
    assert "\n" not in msg, "errors are one line"
    assert msg.startswith(f"{shown(path)}: "), msg
    return msg


@pytest.fixture
def no_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(P, "device_model_path", lambda: tmp_path / "no-such-model")


def fake_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model: str) -> Path:
    path = tmp_path / "model"
    path.write_bytes(model.encode() + b"\x00")  # the kernel NUL-terminates the string
    monkeypatch.setattr(P, "device_model_path", lambda: path)
    return path


# ---- shipped files --------------------------------------------------------------------------------------


def test_required_profiles_are_shipped() -> None:
    assert set(P.list_profiles()) >= REQUIRED
    assert set(P.list_recipes()) >= {"default", "fast", "thorough"}
    for family, name in P.FAMILY_DEFAULTS.items():
        assert P.load_profile(name).family == family


@pytest.mark.parametrize("name", P.list_profiles())
def test_shipped_profile_validates(name: str) -> None:
    profile = P.load_profile(name)
    assert profile.name == name, "shipped profiles are named after their file"
    assert profile.schema_version == P.SCHEMA_VERSION
    assert profile.backend_settings is getattr(profile, profile.backend)
    assert profile.precision_chain()[0] in ("fp32", "fp16", "int8")
    recipe = profile.load_calibration()
    assert (recipe is None) == ("int8" not in profile.precision_chain())
    # The resolved form is itself a valid profile and hashes the same: `targets show` output can be copied.
    again = P.TargetProfile.model_validate(profile.resolved_dict())
    assert again == profile and again.sha256() == profile.sha256()
    assert yaml.safe_load(profile.to_yaml()) == profile.resolved_dict()


@pytest.mark.parametrize("name", P.list_recipes())
def test_shipped_recipe_validates(name: str) -> None:
    recipe = P.load_recipe(name)
    assert recipe.name == name
    assert recipe.min_images <= recipe.num_images
    assert len(recipe.sha256()) == 64


def test_shipped_values() -> None:
    cpu = P.load_profile("cpu-onnxruntime")
    assert cpu.precision_chain() == ["int8", "fp32"]
    # precision auto on an OpenVINO CPU tries bf16 too (AVX512-BF16/AMX); the measurement decides.
    ov_auto = P.load_profile("intel-openvino").with_overrides({"precision": "auto", "fallbacks": []})
    assert ov_auto.precision_chain() == ["int8", "bf16", "fp32"]
    assert cpu.quantization is not None and cpu.quantization.scheme == "u8s8"
    assert cpu.quantization.op_types == ["Conv"]
    assert cpu.onnxruntime is not None and cpu.onnxruntime.intra_op_threads == 0
    assert cpu.gates.min_speedup == 1.0 and cpu.gates.max_p99_ms is None
    for name in ("jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin"):
        jetson = P.load_profile(name)
        assert jetson.quantization is not None and jetson.quantization.scheme == "s8s8"
        assert jetson.tensorrt is not None and jetson.tensorrt.jetpack is not None
        assert P.version_satisfies("10.3.0.30", jetson.tensorrt.version)
        assert jetson.tensorrt.dla_core is None
        assert jetson.gates.max_p99_ms is not None
    assert P.load_profile("jetson-orin-nano").gates.max_p99_ms == 25


# ---- extends --------------------------------------------------------------------------------------------


def test_extends_resolves_jetson_family() -> None:
    nano = P.load_profile("jetson-orin-nano")
    nx = P.load_profile("jetson-orin-nx")
    agx = P.load_profile("jetson-agx-orin")
    # inherited
    assert nx.quantization == nano.quantization and agx.calibration == nano.calibration
    assert nx.tensorrt.version == nano.tensorrt.version == ">=10.0,<11"  # type: ignore[union-attr]
    # overridden
    assert nx.tensorrt.workspace_mib == 4096 and agx.tensorrt.workspace_mib == 8192  # type: ignore[union-attr]
    assert nx.hardware.model_match == ["Orin NX"] and agx.hardware.dla_cores == 2
    assert agx.gates.max_p99_ms == 10 and agx.gates.max_map_drop == nano.gates.max_map_drop
    assert len({nano.sha256(), nx.sha256(), agx.sha256()}) == 3


def test_agx_dla_can_be_enabled(tmp_path: Path) -> None:
    path = write(tmp_path, {"extends": "jetson-agx-orin", "name": "agx-dla", "tensorrt": {"dla_core": 1}})
    assert P.load_profile(path).tensorrt.dla_core == 1  # type: ignore[union-attr]
    path = write(tmp_path, {"extends": "jetson-agx-orin", "name": "agx-dla", "tensorrt": {"dla_core": 2}})
    assert "field 'tensorrt.dla_core': core 2 does not exist" in load_error(path)


def test_user_profile_extends_shipped_name_and_null_resets(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "extends": "cpu-onnxruntime",
            "name": "line3-pc",
            "description": "Line 3 PC",
            "onnxruntime": {"intra_op_threads": 4},
            "gates": {"max_p99_ms": 60, "min_speedup": None},
        },
    )
    profile = P.load_profile(path)
    assert profile.name == "line3-pc" and profile.source == shown(path)
    assert profile.onnxruntime.intra_op_threads == 4  # type: ignore[union-attr]
    assert profile.onnxruntime.execution_providers == ["CPUExecutionProvider"]  # type: ignore[union-attr]
    assert profile.gates.max_p99_ms == 60 and profile.gates.min_speedup is None
    assert profile.quantization.scheme == "u8s8"  # type: ignore[union-attr]


def test_extends_relative_path_chain_and_float_only_child(tmp_path: Path) -> None:
    (tmp_path / "bases").mkdir()
    write(tmp_path / "bases", base_profile(), "base.yaml")
    mid = {"extends": "base.yaml", "name": "mid", "tensorrt": {"workspace_mib": 1024}}
    write(tmp_path / "bases", mid, "mid.yaml")
    # A child that turns int8 off must null the int8-only settings it inherited.
    leaf = {
        "extends": "bases/mid.yaml",
        "name": "leaf",
        "precision": "fp16",
        "fallbacks": None,
        "calibration": None,
        "quantization": None,
    }
    profile = P.load_profile(write(tmp_path, leaf, "leaf.yaml"))
    assert profile.precision_chain() == ["fp16"]
    assert profile.tensorrt.workspace_mib == 1024 and profile.tensorrt.jetpack == "6.2"  # type: ignore[union-attr]
    assert profile.calibration is None and profile.quantization is None


def test_extends_cycle_and_missing_name(tmp_path: Path) -> None:
    write(tmp_path, {"extends": "./b.yaml", "name": "a"}, "a.yaml")
    write(tmp_path, {"extends": "./a.yaml", "name": "b"}, "b.yaml")
    with pytest.raises(ProfileError, match="cycle"):
        P.load_profile(tmp_path / "a.yaml")
    path = write(tmp_path, {"extends": "rpi5", "description": "no name"})
    assert "field 'name': required" in load_error(path)
    path = write(tmp_path, {"extends": "rpi-5", "name": "x"})
    msg = load_error(path)
    assert "field 'extends'" in msg and "did you mean 'rpi5'" in msg


def test_error_in_base_file_names_the_base(tmp_path: Path) -> None:
    base = base_profile()
    base["gates"]["max_map_drop"] = 150
    base_path = write(tmp_path, base, "base.yaml")
    child = write(tmp_path, {"extends": "./base.yaml", "name": "child"}, "child.yaml")
    with pytest.raises(ProfileError) as info:
        P.load_profile(child)
    assert str(info.value).startswith(f"{shown(base_path)}: field 'gates.max_map_drop'")


# ---- broken profiles ------------------------------------------------------------------------------------


def _rename(key: str, new: str):
    def edit(d: dict[str, Any]) -> None:
        d[new] = d.pop(key)

    return edit


def _set(path: str, value: Any):
    def edit(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = d
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return edit


def _pop(key: str):
    return lambda d: d.pop(key)


BROKEN = [
    # (id, starting profile, edit, dotted field, message fragment)
    ("typo", base_profile, _rename("precision", "precison"), "precison", "did you mean 'precision'?"),
    (
        "nested-typo",
        base_profile,
        _set("gates.max_map_dorp", 1.0),
        "gates.max_map_dorp",
        "did you mean 'max_map_drop'?",
    ),
    ("wrong-type", base_profile, _set("imgsz", "640"), "imgsz", "valid integer, got the string '640'"),
    ("bool-type", base_profile, _set("quantization.per_channel", "no"), "quantization.per_channel", "bool"),
    ("p99-string", base_profile, _set("gates.max_p99_ms", "25"), "gates.max_p99_ms", "without quotes"),
    ("empty-match", base_profile, _set("hardware.model_match", [""]), "hardware.model_match", "empty"),
    ("not-stride", base_profile, _set("imgsz", 650), "imgsz", "multiple of 32"),
    ("trt-u8s8", base_profile, _set("quantization.scheme", "u8s8"), "quantization.scheme", "s8s8"),
    (
        "trt-reduce-range",
        base_profile,
        _set("quantization.reduce_range", True),
        "quantization.reduce_range",
        "",
    ),
    ("dla-on-nano", base_profile, _set("tensorrt.dla_core", 0), "tensorrt.dla_core", "no DLA"),
    ("int8-no-calib", base_profile, _pop("calibration"), "calibration", "required because int8"),
    ("int8-no-quant", base_profile, _pop("quantization"), "quantization", "required because int8"),
    ("calib-unknown", base_profile, _set("calibration", "defualt"), "calibration", "did you mean 'default'"),
    (
        "map-range",
        base_profile,
        _set("gates.max_map_drop", 150),
        "gates.max_map_drop",
        "less than or equal to 100",
    ),
    (
        "map-fraction",
        base_profile,
        _set("gates.max_map_drop", 0.005),
        "gates.max_map_drop",
        "did you mean 0.5?",
    ),
    (
        "f1-range",
        base_profile,
        _set("gates.min_agreement_f1", 1.5),
        "gates.min_agreement_f1",
        "less than or equal",
    ),
    ("p99-negative", base_profile, _set("gates.max_p99_ms", -3), "gates.max_p99_ms", "greater than 0"),
    ("gates-missing", base_profile, _pop("gates"), "gates", "required but missing"),
    ("ov-on-trt", base_profile, _set("openvino", {"device": "CPU"}), "openvino", "but backend is tensorrt"),
    ("fallback-order", base_profile, _set("fallbacks", ["fp32", "fp16"]), "fallbacks[1]", "more precise"),
    ("fallback-value", base_profile, _set("fallbacks", ["fp8"]), "fallbacks[0]", "'fp16', 'bf16' or 'int8'"),
    ("bf16-on-trt", base_profile, _set("fallbacks", ["bf16"]), "fallbacks", "OpenVINO CPU precision"),
    ("bf16-on-ort", cpu_profile, _set("precision", "bf16"), "precision", "OpenVINO CPU precision"),
    ("auto-fallbacks", base_profile, _set("precision", "auto"), "fallbacks", "precision auto"),
    ("jetpack-number", base_profile, _set("tensorrt.jetpack", 6.2), "tensorrt.jetpack", "quoted"),
    ("jetpack-trt", base_profile, _set("tensorrt.jetpack", "6.0"), "tensorrt.version", "TensorRT 8.6.2"),
    ("jetpack-missing", base_profile, _set("tensorrt", {}), "tensorrt.jetpack", "required on Jetson"),
    ("trt-range", base_profile, _set("tensorrt.version", "10"), "tensorrt.version", "bad version range"),
    (
        "opt-level",
        base_profile,
        _set("tensorrt.builder_optimization_level", 6),
        "tensorrt.builder_optimization_level",
        "",
    ),
    ("nms-end2end", base_profile, _set("nms_iou", 0.6), "nms_iou", "only used with output raw"),
    ("p99-few-runs", base_profile, _set("bench", {"timed_runs": 50}), "bench.timed_runs", "at least 100"),
    ("schema-version", base_profile, _set("schema_version", 2), "schema_version", "Input should be 1"),
    ("name-family", base_profile, _set("name", "jetson"), "name", "family alias"),
    (
        "op-type-name",
        base_profile,
        _set("quantization.op_types", ["conv"]),
        "quantization.op_types",
        "CamelCase",
    ),
    (
        "op-overlap",
        base_profile,
        _set("quantization.op_types", ["Conv", "Sigmoid"]),
        "quantization.keep_float_op_types",
        "",
    ),
    ("dla-on-cpu", cpu_profile, _set("tensorrt", {"dla_core": 0}), "tensorrt", "but backend is onnxruntime"),
    (
        "dla-on-gpu",
        lambda: {**base_profile(), "family": "gpu", "tensorrt": {"dla_core": 0}},
        None,
        "tensorrt.dla_core",
        "Jetson",
    ),
    (
        "trt-on-cpu",
        cpu_profile,
        lambda d: d.update(backend="tensorrt"),
        "backend",
        "cannot run on family cpu",
    ),
    (
        "backend-unregistered",
        cpu_profile,
        _set("backend", "tflite"),
        "backend",
        "Input should be a registered backend, 'onnxruntime', 'openvino' or 'tensorrt', got 'tflite'",
    ),
    ("ort-fp16-cpu", cpu_profile, _set("precision", "fp16"), "precision", "CPU kernels are fp32/int8"),
    (
        "ort-ep-typo",
        cpu_profile,
        _set("onnxruntime", {"execution_providers": ["CPUExecutionProvier"]}),
        "onnxruntime.execution_providers",
        "did you mean 'CPUExecutionProvider'",
    ),
    ("calib-without-int8", cpu_profile, _set("calibration", "default"), "calibration", "never builds int8"),
    (
        "ov-quant-section",
        lambda: {
            **cpu_profile(),
            "backend": "openvino",
            "precision": "int8",
            "calibration": "default",
            "quantization": {"scheme": "u8s8"},
        },
        None,
        "quantization",
        "NNCF",
    ),
    (
        "ov-bf16-gpu",
        lambda: {
            **cpu_profile(),
            "backend": "openvino",
            "precision": "fp16",
            "openvino": {"device": "GPU", "inference_precision_hint": "bf16"},
        },
        None,
        "openvino.inference_precision_hint",
        "only supported on CPU",
    ),
    (
        "ov-bf16-precision-gpu",
        lambda: {
            **cpu_profile(),
            "backend": "openvino",
            "precision": "bf16",
            "calibration": None,
            "quantization": None,
            "openvino": {"device": "GPU"},
        },
        None,
        "precision",
        "not built for openvino on GPU",
    ),
    (
        "ov-hint-fp32",
        lambda: {**cpu_profile(), "backend": "openvino", "openvino": {"inference_precision_hint": "f16"}},
        None,
        "openvino.inference_precision_hint",
        "fp32 attempt",
    ),
    (
        "ov-accuracy-aware-recipe",
        lambda: {
            **cpu_profile(),
            "backend": "openvino",
            "precision": "int8",
            "calibration": "fast",
            "openvino": {"accuracy_aware": True},
        },
        None,
        "openvino.accuracy_aware",
        "validation_images > 0",
    ),
]


@pytest.mark.parametrize(
    ("start", "edit", "field", "fragment"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN]
)
def test_broken_profile_names_file_and_field(tmp_path: Path, start, edit, field: str, fragment: str) -> None:
    data = copy.deepcopy(start())
    if edit is not None:
        edit(data)
    msg = load_error(write(tmp_path, data))
    assert f"field '{field}': " in msg, msg
    assert fragment in msg, msg


def test_several_errors_are_counted(tmp_path: Path) -> None:
    data = base_profile()
    data["precison"] = data.pop("precision")
    data["imgsz"] = "640"
    msg = load_error(write(tmp_path, data))
    # The unknown key comes first: it explains the "missing precision" error.
    assert "field 'precison': unknown key; did you mean 'precision'?" in msg
    assert msg.endswith("(+2 more)"), msg


def test_raw_output_gets_nms_default(tmp_path: Path) -> None:
    profile = P.load_profile(write(tmp_path, {**base_profile(), "output": "raw"}))
    assert profile.nms_iou == 0.7


def test_yaml_problems(tmp_path: Path) -> None:
    path = write(tmp_path, "schema_version: 1\nname: x\ngates:\n  max_map_drop: [1.0\n", "syntax.yaml")
    msg = load_error(path)
    assert "line 5" in msg and "YAML syntax error" in msg
    path = write(tmp_path, "schema_version: 1\nprecision: int8\nprecision: fp16\n", "dup.yaml")
    msg = load_error(path)
    assert "line 3" in msg and "duplicate key 'precision'" in msg
    assert "got an empty file" in load_error(write(tmp_path, "", "empty.yaml"))
    assert "got a list" in load_error(write(tmp_path, "- a\n- b\n", "list.yaml"))


def test_broken_recipe(tmp_path: Path) -> None:
    recipe = yaml.safe_load((REPO / "calib" / "default.yaml").read_text())
    recipe["min_images"] = recipe["num_images"] + 1
    path = write(tmp_path, recipe, "r.yaml")
    with pytest.raises(ProfileError, match=r"r\.yaml: field 'min_images': .* more than num_images"):
        P.load_recipe(path)
    recipe["min_images"] = 1
    recipe["selection"] = "balanced"
    with pytest.raises(ProfileError, match=r"field 'selection': Input should be 'stratified' or 'random'"):
        P.load_recipe(write(tmp_path, recipe, "r.yaml"))
    with pytest.raises(ProfileError, match="unknown calibration recipe 'slow'.*default, fast, thorough"):
        P.load_recipe("slow")


def test_profile_with_relative_recipe_path(tmp_path: Path) -> None:
    recipe = yaml.safe_load((REPO / "calib" / "fast.yaml").read_text()) | {"name": "mine", "num_images": 50}
    (tmp_path / "recipes").mkdir()
    write(tmp_path / "recipes", recipe, "mine.yaml")
    profile = P.load_profile(write(tmp_path, {**base_profile(), "calibration": "recipes/mine.yaml"}))
    assert profile.load_calibration().num_images == 50  # type: ignore[union-attr]


# ---- names, paths, aliases ------------------------------------------------------------------------------


def test_user_path_copy_hashes_like_the_shipped_profile(tmp_path: Path) -> None:
    copy_path = tmp_path / "cpu-onnxruntime.yaml"
    shutil.copy(REPO / "targets" / "cpu-onnxruntime.yaml", copy_path)
    assert P.load_profile(copy_path).sha256() == P.load_profile("cpu-onnxruntime").sha256()
    assert P.load_profile(str(copy_path)) == P.load_profile("cpu-onnxruntime")


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ProfileError) as info:
        P.load_profile("jetson-nano")
    msg = str(info.value)
    assert "unknown target profile 'jetson-nano'" in msg
    for name in [*REQUIRED, *P.FAMILIES]:
        assert name in msg
    with pytest.raises(ProfileError, match="is a family, not a profile"):
        P.load_profile("jetson")
    with pytest.raises(ProfileError, match="no such target profile file.*named without .yaml"):
        P.load_profile("rpi5.yaml")


@pytest.mark.usefixtures("no_device")
@pytest.mark.parametrize("family", P.FAMILIES)
def test_family_alias_defaults(family: str) -> None:
    profile, msg = P.resolve_target(family)
    assert profile.name == P.FAMILY_DEFAULTS[family] and profile.family == family
    assert msg is not None and "family default" in msg and "no device model" in msg


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super", "jetson-orin-nano"),
        ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", "jetson-orin-nx"),
        ("Jetson AGX Orin Developer Kit", "jetson-agx-orin"),
    ],
)
def test_jetson_detection(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model: str, expected: str) -> None:
    fake_device(monkeypatch, tmp_path, model)
    profile, msg = P.resolve_target("jetson")
    assert profile.name == expected
    assert msg is not None and model in msg and "matched" in msg


def test_detection_without_match_and_other_families(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_device(monkeypatch, tmp_path, "NVIDIA Jetson Xavier NX Developer Kit")
    profile, msg = P.resolve_target("jetson")
    assert profile.name == "jetson-orin-nano"
    assert msg is not None and "Xavier NX" in msg and "family default" in msg
    fake_device(monkeypatch, tmp_path, "Raspberry Pi 5 Model B Rev 1.0")
    assert P.resolve_target("rpi")[0].name == "rpi5"
    # A Jetson board string must not steer another family.
    fake_device(monkeypatch, tmp_path, "NVIDIA Jetson AGX Orin")
    assert P.resolve_target("gpu")[0].name == "nvidia-gpu"


def test_resolve_target_passes_names_and_paths_through(tmp_path: Path) -> None:
    assert P.resolve_target("jetson-orin-nx")[0].name == "jetson-orin-nx"
    assert P.resolve_target("jetson-orin-nx")[1] is None
    path = write(tmp_path, cpu_profile(), "jetson.yaml")  # a path named like a family is still a path
    assert P.resolve_target(str(path))[0].name == "my-cpu"


# ---- hashing, overrides, helpers ------------------------------------------------------------------------


def test_sha256_stable_and_sensitive(tmp_path: Path) -> None:
    profile = P.load_profile("rpi5")
    assert profile.sha256() == P.load_profile("rpi5").sha256() == sha256_json(profile.resolved_dict())
    assert list(profile.resolved_dict()) == sorted(profile.resolved_dict())
    # Key order and defaults written out do not matter ...
    data = base_profile()
    explicit = {**dict(reversed(list(data.items()))), "imgsz": 640, "batch": 1}
    a = P.load_profile(write(tmp_path, data, "a.yaml"))
    b = P.load_profile(write(tmp_path, explicit, "b.yaml"))
    assert a.sha256() == b.sha256()
    # ... any field value does.
    assert a.with_overrides({"imgsz": 320}).sha256() != a.sha256()
    assert a.with_overrides({"gates.max_map_drop": 0.5}).sha256() != a.sha256()
    assert a.with_overrides({"tensorrt.workspace_mib": 1024}).sha256() != a.sha256()


def test_with_overrides_and_parse_override() -> None:
    nano = P.load_profile("jetson-orin-nano")
    key, value = P.parse_override("gates.max_p99_ms=30")
    assert (key, value) == ("gates.max_p99_ms", 30)
    changed = nano.with_overrides(dict([P.parse_override("imgsz=320"), (key, value)]))
    assert changed.imgsz == 320 and changed.gates.max_p99_ms == 30 and changed.name == nano.name
    assert nano.with_overrides({"gates.max_p99_ms": None}).gates.max_p99_ms is None
    with pytest.raises(ProfileError, match="--set on .*field 'imgsz': .*multiple of 32"):
        nano.with_overrides({"imgsz": 300}, origin="--set")
    with pytest.raises(ProfileError, match="field 'gates.max_p99': unknown key; did you mean 'max_p99_ms'"):
        nano.with_overrides({"gates.max_p99": 30})
    with pytest.raises(ProfileError, match="expected KEY=VALUE"):
        P.parse_override("imgsz")


def test_version_satisfies() -> None:
    assert P.version_satisfies("10.3.0.30", ">=10.0,<11")
    assert not P.version_satisfies("8.6.2", ">=10.0,<11")
    assert not P.version_satisfies("11.0", ">=10.0,<11")
    assert P.version_satisfies("10.3", "==10.3.0")
    assert P.version_satisfies("10.3.0.post1", ">=10.3")
    # Only the numeric release part counts (packaging alone would order 10.3.0.post1 after 10.3, rc1 before).
    assert P.version_satisfies("10.3.0.post1", "<=10.3") and P.version_satisfies("10.3.0rc1", ">=10.3")
    assert P.version_satisfies("8.6.2-1+cuda12.2", "==8.6.2") and not P.version_satisfies("10.3", "!=10.3.0")
    # The range language stays the operators profiles always had; PEP 440's ~=, wildcards and === are refused.
    for spec in ("~10", "10", "~=10.0", "==10.*", "===10.3", ">=10,", ""):
        with pytest.raises(ValueError, match="bad version range"):
            P.version_satisfies("10.3", spec)
    with pytest.raises(ValueError, match="not a numeric version"):
        P.version_satisfies("v10", ">=10")


def test_module_is_torch_free() -> None:
    code = "import sys, edge_lora.profiles; print([m for m in ('torch', 'ultralytics') if m in sys.modules])"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_bundle_manifest_shares_error_plumbing_not_profiles() -> None:
    """The device-side manifest reads its errors through edge_lora.schema_errors, not the profile package."""
    code = (
        "import sys, edge_lora.bundle.manifest as M, edge_lora.schema_errors as E; "
        "print(sorted(m for m in ('torch', 'ultralytics', 'edge_lora.profiles') if m in sys.modules), "
        "M._raise_if is E.raise_if)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[] True"


def test_extends_is_file_only() -> None:
    with pytest.raises(ProfileError, match="field 'extends': extends only works in a profile file"):
        P.load_profile("rpi5").with_overrides({"extends": "cpu-onnxruntime"}, origin="--set")
    with pytest.raises(pydantic.ValidationError):
        P.TargetProfile.model_validate({**base_profile(), "extends": "rpi5"})


def test_known_execution_providers_cover_onnxruntime() -> None:
    ort = pytest.importorskip("onnxruntime")
    missing = set(ort.get_all_providers()) - set(sections._ORT_PROVIDERS)
    assert not missing, f"profiles would refuse valid providers: {sorted(missing)}"


def test_table_rows() -> None:
    rows = P.profiles_table_rows()
    assert [r["name"] for r in rows] == P.list_profiles()
    nano = next(r for r in rows if r["name"] == "jetson-orin-nano")
    assert set(nano) == {
        "name",
        "family",
        "backend",
        "precision",
        "fallbacks",
        "imgsz",
        "gates",
        "description",
    }
    assert nano["fallbacks"] == "fp16" and nano["imgsz"] == 640
    assert "p99<=25ms" in nano["gates"] and "mAP drop<=1pt" in nano["gates"]


def test_readme_documents_every_field() -> None:
    readme = (REPO / "targets" / "README.md").read_text()
    block = readme.split("<!-- fields:start -->\n", 1)[1].split("<!-- fields:end -->", 1)[0]
    assert block == P.fields_reference_markdown(), (
        "targets/README.md field reference is stale; regenerate the block between the fields markers with "
        "edge_lora.profiles.fields_reference_markdown()"
    )
    for model in (P.TargetProfile, P.CalibRecipe):
        for path, _type, _default, description in P.schema_fields(model):
            assert f"`{path}`" in readme
            assert description, f"{path} has no description"
    for name in P.list_profiles():
        assert f"`{name}`" in readme
    assert "extends" in readme


# ---- packaging: shipped files found from source and through importlib.resources -------------------------


def test_from_source_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(package: str):
        raise ModuleNotFoundError(package)

    monkeypatch.setattr(loader.resources, "files", not_installed)
    assert set(P.list_profiles()) >= REQUIRED
    assert P.load_profile("rpi5").name == "rpi5"


def test_importlib_resources_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Pretend edge_lora.targets/.calib are installed packages living elsewhere, and hide the source folders.
    for kind in ("targets", "calib"):
        pkg_dir = tmp_path / kind
        shutil.copytree(REPO / kind, pkg_dir)
        spec = importlib.util.spec_from_file_location(
            f"edge_lora.{kind}", pkg_dir / "__init__.py", submodule_search_locations=[str(pkg_dir)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        monkeypatch.setitem(sys.modules, f"edge_lora.{kind}", module)
    monkeypatch.setattr(loader, "_repo_dir", lambda kind: tmp_path / "nowhere" / kind)
    (tmp_path / "targets" / "rpi5.yaml").write_text(
        (REPO / "targets" / "rpi5.yaml").read_text().replace("min_speedup: 1.0", "min_speedup: 2.0")
    )
    assert set(P.list_profiles()) >= REQUIRED
    assert P.load_profile("rpi5").gates.min_speedup == 2.0  # read from the "installed" copy
    assert P.load_profile("jetson-agx-orin").load_calibration() is not None


def test_wheel_ships_profiles(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for item in ("pyproject.toml", "edge_lora", "targets", "calib"):
        copy_fn = shutil.copytree if (REPO / item).is_dir() else shutil.copy
        copy_fn(REPO / item, src / item)
    (src / "README.md").write_text("edge-lora\n")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    if build.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {build.stderr[-500:]}")
    (wheel,) = (tmp_path / "dist").glob("edge_lora-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(site)
    for name in P.list_profiles():
        assert f"edge_lora/targets/{name}.yaml" in names
    for name in P.list_recipes():
        assert f"edge_lora/calib/{name}.yaml" in names
    code = (
        "import edge_lora.profiles as P; import edge_lora; "
        "print(edge_lora.__file__); print(','.join(P.list_profiles())); "
        "print(P.load_profile('jetson-orin-nx').load_calibration().name)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    where, listed, recipe = run.stdout.split()
    assert where.startswith(str(site))
    assert set(listed.split(",")) == set(P.list_profiles()) and recipe == "default"


def test_buildable_precisions_are_what_export_accepts(tmp_path: Path) -> None:
    """One method says what can be built: the schema checks a profile's chain with it, export() a --precision."""
    from edge_lora.errors import InputError
    from edge_lora.export.api import export

    assert P.load_profile("cpu-onnxruntime").buildable_precisions() == {"fp32", "int8"}
    assert "bf16" in P.load_profile("intel-openvino").buildable_precisions()
    assert "bf16" not in P.load_profile("intel-igpu-openvino").buildable_precisions()
    for name in P.list_profiles():
        profile = P.load_profile(name)
        assert set(profile.precision_chain()) <= profile.buildable_precisions(), name
    with pytest.raises(InputError, match="--precision bf16: openvino .* builds fp16, fp32, int8"):
        export(tmp_path / "m.pt", "intel-igpu-openvino", tmp_path / "out", precisions=["bf16"])
