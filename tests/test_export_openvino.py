"""OpenVINO IR export: FP32 / FP16 / INT8 (NNCF) compile and run on CPU, parity with ONNX Runtime, the INT8
ignored scope, metadata.yaml, accuracy-aware quantization.

Real exports of a tiny YOLO26n at 64 px, no mocks. A random-init YOLO26n is "dead" (every anchor scores the
same), so the checkpoint fixture recalibrates BatchNorm on the demo images and zeroes the class biases first;
outputs then depend on the input and parity means something. Exports are made once per module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import yaml
from conftest import lively_checkpoint

from edge_lora.errors import InputError, OutputExistsError
from edge_lora.export.calibration import select_calibration
from edge_lora.export.onnx.exporter import export_onnx
from edge_lora.export.onnx.graph import run_onnx
from edge_lora.export.openvino.exporter import export_openvino
from edge_lora.export.openvino.ir import quantization_stats
from edge_lora.export.openvino.quantize import AccuracyControl, IgnoredOps, head_postprocess_ops
from edge_lora.profiles import CalibRecipe, OpenVinoSettings, load_profile
from edge_lora.runtime.openvino_rt import OpenVinoRunner
from edge_lora.runtime.prepost import preprocess
from edge_lora.validate.parity import detection_parity

pytestmark = pytest.mark.slow  # end to end: trains, exports or builds tiny models

IMGSZ = 64


@pytest.fixture(scope="module")
def images(demo_data) -> dict[str, list[Path]]:
    root = demo_data.root / "line_b" / "images"
    return {split: sorted((root / split).glob("*.png")) for split in ("train", "val")}


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory, base_ckpt, images) -> Path:
    import cv2

    from edge_lora.models import load_detection_model

    model = load_detection_model(base_ckpt).model
    folder = tmp_path_factory.mktemp("ov_src")
    ckpt = lively_checkpoint(
        model, [cv2.imread(str(p)) for p in images["train"]], folder / "merged.pt", imgsz=IMGSZ
    )
    # end2end: YOLO26's NMS-free graph, so the INT8 test sees TopK/GatherElements post-processing too.
    return export_onnx(
        ckpt, folder / "model.onnx", imgsz=IMGSZ, end2end=True, check_images=images["val"][:1]
    ).path


@pytest.fixture(scope="module")
def calib(tmp_path_factory, demo_data):
    recipe = CalibRecipe.model_validate(
        {"schema_version": 1, "name": "tiny", "description": "test", "num_images": 4, "min_images": 2}
    )
    return select_calibration(demo_data.line_b_yaml, recipe, tmp_path_factory.mktemp("ov_calib"))


@pytest.fixture(scope="module")
def exports(tmp_path_factory, fp32_onnx, calib, images):
    """One export per precision, made on first use."""
    cache = {}
    root = tmp_path_factory.mktemp("ov_out")

    def get(precision: str):
        if precision not in cache:
            cache[precision] = export_openvino(
                fp32_onnx,
                root / precision,
                precision=precision,
                calib=calib if precision == "int8" else None,
                sample=images["val"][0],
            )
        return cache[precision]

    return get


def _feeds(paths: list[Path]) -> list[np.ndarray]:
    import cv2

    return [preprocess([cv2.imread(str(p))], IMGSZ)[0] for p in paths]


def _run(xml: Path, batch: np.ndarray) -> np.ndarray:
    with OpenVinoRunner(xml, inference_precision="f32") as runner:
        return next(iter(runner.infer(batch).values())).copy()


def _fed_by_fake_quantize(op) -> bool:
    return any(v.get_node().get_type_name() in ("FakeQuantize", "FakeConvert") for v in op.input_values())


# ------------------------------------------------------------------------------------------------ FP32
def test_fp32_ir_matches_onnxruntime(exports, fp32_onnx, images):
    result = exports("fp32")
    assert result and result.parity["criterion"] == "max_rel" and result.parity["value"] <= 1e-3
    assert result.parity["decoded"]["compared"] == "decoded" and result.parity["decoded"]["max_rel"] <= 1e-3
    assert sorted(p.name for p in result.out_dir.iterdir()) == ["metadata.yaml", "model.bin", "model.xml"]
    assert result.onnx_sha256 and result.xml_sha256 and result.quantization is None
    # Independently of the exporter's own check: every val image, through the runtime's OpenVINO runner.
    for batch in _feeds(images["val"]):
        ref, _ = run_onnx(fp32_onnx, batch)
        parity = detection_parity(ref, _run(result.xml, batch), end2end=True, tolerance=1e-3)
        assert parity.passed, parity


def test_metadata_yaml_is_ultralytics_compatible(exports, fp32_onnx):
    from edge_lora.runtime.onnxrt import read_onnx_metadata

    result = exports("fp32")
    meta = yaml.safe_load(result.metadata_yaml.read_text())
    assert meta["names"] == {0: "scratch", 1: "hole", 2: "short"}
    assert meta["imgsz"] == [IMGSZ, IMGSZ]
    assert meta["stride"] == 32 and meta["batch"] == 1 and meta["task"] == "detect"
    assert meta["end2end"] is True
    assert set(read_onnx_metadata(fp32_onnx)) <= set(meta)  # every key of the ONNX, nothing invented
    runner = OpenVinoRunner(result.out_dir)  # what the device side reads
    assert runner.metadata["names"][1] == "hole" and runner.metadata["end2end"] is True
    model = ov.Core().read_model(str(result.xml))
    assert model.get_rt_info(["model_info", "model_type"]).astype(str) == "YOLO"


# ------------------------------------------------------------------------------------------------ FP16
def test_fp16_ir_has_half_weights_and_runs(exports, images):
    fp32, fp16 = exports("fp32"), exports("fp16")
    assert fp16 and fp16.parity["value"] <= 2e-2
    assert fp16.bin.stat().st_size < 0.6 * fp32.bin.stat().st_size
    model = ov.Core().read_model(str(fp16.xml))
    consts = {str(op.get_element_type()) for op in model.get_ops() if op.get_type_name() == "Constant"}
    assert any("16" in t for t in consts)
    assert _run(fp16.xml, _feeds(images["val"][:1])[0]).shape == (1, 84, 6)  # max_det capped by 84 anchors


# ------------------------------------------------------------------------------------------------ INT8
# ------------------------------------------------------------------------------------------------ BF16
def test_bf16_ir_records_its_precision_and_runs_in_it(exports, fp32_onnx, images):
    from edge_lora.profiles import load_profile
    from edge_lora.runtime.openvino_rt import recorded_inference_precision
    from edge_lora.validate.compare import runner_settings

    fp32, bf16 = exports("fp32"), exports("bf16")
    assert bf16.precision == "bf16" and bf16.parity["criterion"] == "min_cosine"
    assert bf16.parity["inference_precision"] == "bf16" and bf16.parity["value"] >= 0.9
    # The IR itself is FP32 (no double rounding through f16); the precision travels in metadata.yaml ...
    assert bf16.bin.stat().st_size == fp32.bin.stat().st_size
    assert yaml.safe_load(bf16.metadata_yaml.read_text())["inference_precision"] == "bf16"
    assert (
        recorded_inference_precision(bf16.out_dir) == "bf16"
        and recorded_inference_precision(fp32.xml) is None
    )
    # ... and wins over a profile's f32 hint, so the artifact always runs the way it was validated.
    settings = runner_settings(load_profile(Path("targets/intel-openvino.yaml")), bf16.xml)
    assert settings["inference_precision"] == "bf16"
    runner = OpenVinoRunner(bf16.xml, inference_precision="f32")
    assert runner.compile_config()["INFERENCE_PRECISION_HINT"] == "bf16"
    assert (
        OpenVinoRunner(fp32.xml, inference_precision="f32").compile_config()["INFERENCE_PRECISION_HINT"]
        == "f32"
    )
    with runner:
        for batch in _feeds(images["val"][:2]):
            got = next(iter(runner.infer(batch).values()))
            ref, _ = run_onnx(fp32_onnx, batch)
            assert got.shape == ref.shape and np.isfinite(got).all()


def test_int8_quantizes_backbone_keeps_postprocess_float(exports, fp32_onnx):
    result = exports("int8")
    assert result and result.parity["criterion"] == "min_cosine" and result.parity["value"] >= 0.9
    stats = result.quantization
    assert stats["fake_quantize_nodes"] > 0 and stats["quantized_ops"] > 50
    assert stats["preset"] == "mixed" and stats["subset_size"] == 4 and stats["calibration_sha256"]

    model = ov.Core().read_model(str(result.xml))
    ops = model.get_ordered_ops()
    assert sum(op.get_type_name() == "FakeQuantize" for op in ops) == stats["fake_quantize_nodes"]
    post = set(head_postprocess_ops(ov.convert_model(str(fp32_onnx))))
    kinds = {op.get_type_name() for op in ops if op.get_friendly_name() in post}
    assert {"Sigmoid", "TopK", "GatherElements", "Concat"} <= kinds
    checked = 0
    for op in ops:
        if op.get_type_name() in ("Sigmoid", "TopK") or op.get_friendly_name() in post:
            assert not _fed_by_fake_quantize(op), f"{op.get_friendly_name()} reads a quantized tensor"
            checked += 1
    assert checked >= len(post)
    # The report lists what stayed float: the whole post-processing, Sigmoid and TopK included.
    assert post <= set(stats["ignored_ops"]) and stats["float_ops_count"] >= len(post)


def test_int8_ir_runs_on_cpu(exports, images):
    result = exports("int8")
    out = _run(result.xml, _feeds(images["val"][:1])[0])
    assert out.shape == (1, 84, 6) and np.isfinite(out).all()
    assert ((out[..., 4] >= 0) & (out[..., 4] <= 1)).all()  # scores stayed a float sigmoid


def test_ignored_scope_options_reach_nncf(tmp_path, fp32_onnx, calib):
    # Everything in the last head block ignored by pattern: its convs are then float weighted ops.
    result = export_openvino(
        fp32_onnx,
        tmp_path / "ov",
        precision="int8",
        calib=calib,
        ignored=IgnoredOps(types=("Sigmoid",), patterns=(r"/model\.23/.*",)),
        subset_size=2,
    )
    stats = result.quantization
    assert stats["ignored_types"] == ["Sigmoid"] and stats["subset_size"] == 2
    assert any(name.startswith("/model.23/") for name in stats["float_weighted_ops"])
    assert not any(name.startswith("/model.23/") for name in _quantized_names(result.xml))


def test_profile_keep_float_nodes_pin_layers_float(tmp_path, fp32_onnx, calib):
    """openvino.keep_float_nodes pins layers (e.g. those an accuracy-aware run reverted) without NNCF's loop."""
    settings = OpenVinoSettings(keep_float_nodes=[r"/model\.1/conv/"])
    result = export_openvino(
        fp32_onnx, tmp_path / "ov", precision="int8", calib=calib, profile_settings=settings, subset_size=2
    )
    stats = result.quantization
    assert stats["ignored_patterns"] == [r"/model\.1/conv/"]
    assert [n for n in stats["float_weighted_ops"] if n.startswith("/model.1/")]
    assert not any(n.startswith("/model.1/") for n in _quantized_names(result.xml))
    assert any(n.startswith("/model.2/") for n in _quantized_names(result.xml))  # the rest stays INT8
    with pytest.raises(ValueError, match="not a valid regular expression"):
        OpenVinoSettings(keep_float_nodes=["(unclosed"])


def _quantized_names(xml: Path) -> list[str]:
    model = ov.Core().read_model(str(xml))
    every = quantization_stats(model)
    weighted = [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul")
    ]
    return [n for n in weighted if n not in every["float_weighted_ops"]]


def test_accuracy_control_runs(tmp_path, fp32_onnx, calib, images):
    feeds = _feeds(images["val"][:2])
    reference = [run_onnx(fp32_onnx, x)[0] for x in feeds]

    def agreement(compiled, items) -> float:
        """1 - mean gap between sorted scores and FP32's; NNCF calls it on single items too."""
        gaps = []
        for x, ref in items:
            out = compiled(x)[0]
            gaps.append(float(np.abs(np.sort(out[..., 4], -1) - np.sort(ref[..., 4], -1)).mean()))
        return 1.0 - float(np.mean(gaps))

    control = AccuracyControl(
        validation_data=list(zip(feeds, reference, strict=True)),
        validation_fn=agreement,
        max_drop=0.5,
        max_num_iterations=1,
        ranking_subset_size=1,
    )
    settings = OpenVinoSettings(accuracy_aware=True)
    result = export_openvino(
        fp32_onnx,
        tmp_path / "aa",
        precision="int8",
        calib=calib,
        profile_settings=settings,
        accuracy_control=control,
        subset_size=2,
    )
    acc = result.accuracy
    assert acc["metric_fp32"] == pytest.approx(1.0, abs=1e-6)
    assert acc["within_max_drop"] and acc["drop"] == pytest.approx(acc["metric_fp32"] - acc["metric_int8"])
    assert result.quantization["accuracy_aware"] and result.quantization["fake_quantize_nodes"] > 0


def test_checkpoint_source_is_exported_first(tmp_path, fp32_onnx, images):
    profile = load_profile("intel-openvino").with_overrides({"imgsz": IMGSZ})
    ckpt = fp32_onnx.parent / "merged.pt"
    result = export_openvino(
        ckpt, tmp_path / "ov", precision="fp32", profile_settings=profile, sample=images["val"][0]
    )
    assert result and result.source == ckpt and result.precision == "fp32"
    assert sorted(p.name for p in result.out_dir.iterdir()) == ["metadata.yaml", "model.bin", "model.xml"]
    assert yaml.safe_load(result.metadata_yaml.read_text())["end2end"] is True  # the profile's output form


# ----------------------------------------------------------------------------------------------- inputs
def test_refusals(tmp_path, fp32_onnx, exports, calib):
    with pytest.raises(InputError, match="calibration"):
        export_openvino(fp32_onnx, tmp_path / "a", precision="int8")
    with pytest.raises(InputError, match="accuracy_aware"):
        export_openvino(
            fp32_onnx,
            tmp_path / "b",
            precision="int8",
            calib=calib,
            profile_settings=OpenVinoSettings(accuracy_aware=True),
        )
    with pytest.raises(InputError, match="fp32, fp16, bf16 or int8"):
        export_openvino(fp32_onnx, tmp_path / "c", precision="fp8")
    with pytest.raises(InputError, match="backend"):
        export_openvino(
            fp32_onnx, tmp_path / "d", precision="fp32", profile_settings=load_profile("nvidia-gpu")
        )
    with pytest.raises(OutputExistsError):
        export_openvino(fp32_onnx, exports("fp32").out_dir, precision="fp32")
    with pytest.raises(InputError, match="shape"):
        export_openvino(
            fp32_onnx, tmp_path / "e", precision="int8", calib=[np.zeros((1, 3, 32, 32), np.float32)]
        )
    assert not any(tmp_path.iterdir())  # failed exports leave nothing behind


def test_accuracy_aware_images_come_from_train_by_default(demo_data):
    """The val split gates the build, so accuracy-aware INT8 tunes on other images unless told otherwise."""
    from edge_lora.export.labelled import labelled_images
    from edge_lora.profiles import load_recipe

    assert load_recipe("default").validation_split == "train"
    train = labelled_images(demo_data.line_b_yaml, IMGSZ, 3)
    val = labelled_images(demo_data.line_b_yaml, IMGSZ, 3, "val")
    assert len(train) == len(val) == 3 and train[0].batch.shape == (1, 3, IMGSZ, IMGSZ)
    # spread over the 8 train images (0, 2, 5), not the first three
    all_train = labelled_images(demo_data.line_b_yaml, IMGSZ, 100)
    assert len(all_train) == 8
    picked = [next(i for i, a in enumerate(all_train) if np.array_equal(a.batch, t.batch)) for t in train]
    assert picked == [0, 2, 5]
    assert not any(np.array_equal(t.batch, v.batch) for t in train for v in val)


def test_int8_score_check_looks_at_anchors_that_could_detect():
    """Background anchors near 1e-3 carry INT8 noise that says nothing about detections (it pulled a good
    demo IR's plain score cosine to 0.84); the check compares the anchors either side scores >= 0.05."""
    from edge_lora.validate.parity import cosine_similarity, score_cosine

    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 0.04, (1, 3, 8400)).astype(np.float32)  # 640 px: 8400 anchors of background
    ref[0, 1, :5] = [0.9, 0.8, 0.7, 0.6, 0.5]  # five objects
    noise = rng.uniform(0.0, 3.0, ref.shape).astype(np.float32)
    got = np.minimum(ref * noise, 0.049)  # background scores x0..x3, all below the floor
    got[0, 1, :5] = ref[0, 1, :5] + 0.01  # detections barely move
    assert cosine_similarity(ref, got) < 0.91 and score_cosine(ref, got) > 0.999
    broken = got.copy()
    broken[0, 1, :5] = 0.0
    broken[0, 2, 100:105] = 0.9  # the objects went elsewhere: gross breakage still fails
    assert score_cosine(ref, broken) < 0.5
    assert score_cosine(ref * 0, got * 0) == 1.0
