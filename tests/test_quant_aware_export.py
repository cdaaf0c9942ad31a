"""Quant-aware adapters at export (issue 11.3): the scales the adapter was trained with go into the QDQ graph.

A real quant-aware adapter (``train --quant-aware jetson``, s8s8, on a BN-recalibrated tiny base) is merged with
``merge()``; ``export()`` must then quantize the input of every adapted conv with exactly the recorded scale
and zero point, the QDQ graph must compute what the fake-quant PyTorch forward computed, and a target of
another scheme must say that the scales are not used.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import IMGSZ, lively_checkpoint, train_line_b
from onnx import numpy_helper

from edge_lora.export.api import export
from edge_lora.export.onnx.adapter_scales import AdapterScales, module_of_node
from edge_lora.export.onnx.exporter import export_onnx
from edge_lora.export.onnx.qdq import quantize_qdq
from edge_lora.export.policy import QuantPolicy
from edge_lora.merge import merge
from edge_lora.models import load_detection_model
from edge_lora.profiles import load_profile
from edge_lora.report import _quant_aware_lines
from edge_lora.runtime.frames import read_image
from edge_lora.runtime.prepost import preprocess

pytestmark = pytest.mark.slow  # trains an adapter and exports tiny models


@pytest.mark.parametrize(
    ("node", "module"),
    [
        ("/model.0/conv/Conv", "model.0.conv"),
        ("/model.2/m.0/cv1/conv/Conv", "model.2.m.0.cv1.conv"),
        ("/model.22/m.0/m.0.1/ffn/ffn.1/conv/Conv", "model.22.m.0.1.ffn.1.conv"),
        (
            "/model.23/one2one_cv3.2/one2one_cv3.2.0/one2one_cv3.2.0.0/conv/Conv",
            "model.23.one2one_cv3.2.0.0.conv",
        ),
        ("/model.23/one2one_cv2.2/one2one_cv2.2.2/Conv", "model.23.one2one_cv2.2.2"),
        ("Conv_12", None),
    ],
)
def test_onnx_node_names_map_to_module_names(node, module):
    assert module_of_node(node) == module


def test_every_conv_of_a_yolo26_export_maps_to_a_real_module(base_ckpt, tmp_path):
    """The scope-name rule holds for the whole graph, not only the examples above."""
    fp32 = export_onnx(base_ckpt, tmp_path / "m.onnx", imgsz=IMGSZ).path
    modules = {
        n for n, m in load_detection_model(base_ckpt).model.named_modules() if isinstance(m, torch.nn.Conv2d)
    }
    convs = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv"]
    mapped = {module_of_node(n) for n in convs}
    assert None not in mapped and mapped <= modules and len(mapped) == len(convs)


@pytest.fixture(scope="module")
def lively_base(base_ckpt, demo_data, tmp_path_factory):
    """The tiny base with BatchNorm recalibrated on line B (conftest.lively_checkpoint): its features depend
    on the image, so quantizing them changes them measurably (the random base's are ~1e-5 everywhere)."""
    import cv2

    train = sorted((demo_data.root / "line_b" / "images" / "train").glob("*.png"))
    model = load_detection_model(base_ckpt).model
    return lively_checkpoint(
        model, [cv2.imread(str(p)) for p in train], tmp_path_factory.mktemp("lively") / "base.pt", imgsz=IMGSZ
    )


@pytest.fixture(scope="module")
def qat_adapter(lively_base, demo_data, tmp_path_factory):
    """``train --quant-aware jetson`` (s8s8) on the lively base: ``(TrainResult, AdapterPackage)``."""
    from edge_lora.train.adapter_io import read_adapter

    out = tmp_path_factory.mktemp("qat") / "line_b_s8s8"
    result = train_line_b(lively_base, demo_data.line_b_yaml, out, quant_aware="jetson")
    return result, read_adapter(out)


@pytest.fixture(scope="module")
def merged_qat(qat_adapter, lively_base, demo_data, tmp_path_factory):
    _, package = qat_adapter
    out = tmp_path_factory.mktemp("merged") / "merged.pt"
    merge(lively_base, package.path, out, data=demo_data.line_b_yaml)
    return out


@pytest.fixture(scope="module")
def calib_dir(demo_data, tmp_path_factory):
    from edge_lora.export.calibration import select_calibration
    from edge_lora.profiles import CalibRecipe

    recipe = CalibRecipe.model_validate(
        {"schema_version": 1, "name": "tiny", "description": "test", "num_images": 4, "min_images": 2}
    )
    folder = tmp_path_factory.mktemp("calib")
    select_calibration(demo_data.line_b_yaml, recipe, folder)
    return folder


def _quantizers(path) -> dict[str, tuple[float, int, str]]:
    """Activation tensor -> (scale, zero point, dtype) of every QuantizeLinear on a non-initializer input."""
    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    out = {}
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            scale, zp = inits[node.input[1]], inits[node.input[2]]
            out[node.input[0]] = (scale.item(), zp.item(), str(zp.dtype))
    return out


def _conv_inputs(path) -> dict[str, str]:
    """Module name -> the tensor its Conv reads through a DequantizeLinear (the quantized activation)."""
    proto = onnx.load(str(path))
    dq_of = {n.output[0]: n for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    q_of = {n.output[0]: n for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    out = {}
    for node in proto.graph.node:
        if node.op_type == "Conv" and node.input[0] in dq_of:
            q = q_of.get(dq_of[node.input[0]].input[0])
            if q is not None:
                out[module_of_node(node.name)] = q.input[0]
    return out


def test_merge_carries_the_adapters_quant_aware_record(merged_qat, qat_adapter):
    _, package = qat_adapter
    provenance = load_detection_model(merged_qat).provenance
    assert provenance["adapter"]["quant_aware"] == package.meta["quant_aware"]
    assert (
        json.loads(merged_qat.with_suffix(".json").read_text())["adapter"]["quant_aware"]["scheme"] == "s8s8"
    )


def test_export_puts_the_adapters_scales_into_the_qdq_graph(merged_qat, qat_adapter, calib_dir, tmp_path):
    """jetson (s8s8, as trained): each adapted conv's input quantizer holds the recorded scale, exactly."""
    _, package = qat_adapter
    recorded = package.meta["quant_aware"]["scales"]
    profile = load_profile("jetson-orin-nano").with_overrides(
        {"quantization.accuracy_aware": False, "imgsz": IMGSZ}
    )
    result = export(merged_qat, profile, tmp_path / "exp", calib=calib_dir, precisions=["int8"])
    (artifact,) = result.artifacts
    record = artifact.details["quant_aware"]
    assert record["source"] == "adapter" and record["scheme"] == "s8s8" and record["unmatched"] == []
    assert record["convs"] == len(recorded) and record["quantized"] + record["float"] == record["tensors"]
    qdq = tmp_path / "exp" / "tensorrt-int8-qdq" / "model.onnx"
    quantizers, inputs = _quantizers(qdq), _conv_inputs(qdq)
    checked = [m for m in recorded if m in inputs]
    assert checked == list(recorded) and record["float"] == 0  # the stem (float) has no recorded scale
    assert len({inputs[m] for m in checked}) == record["quantized"]
    for module in checked:
        scale, zero_point, dtype = quantizers[inputs[module]]
        assert scale == np.float32(recorded[module]["scale"]), module
        assert zero_point == recorded[module]["zero_point"] == 0 and dtype == "int8", module
    # the residual Adds / Concats that read an adapted conv's input read it float, as in training
    proto = onnx.load(str(qdq))
    dq_outputs = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    inits = {t.name for t in proto.graph.initializer}
    rounded = [
        n.name
        for n in proto.graph.node
        if n.op_type not in ("Conv", "QuantizeLinear", "DequantizeLinear")
        and any(i in dq_outputs and i not in inits for i in n.input)
    ]
    assert record["float_readers"] > 0 and rounded == []
    sidecar = json.loads(qdq.with_name("model.onnx.json").read_text())
    assert sidecar["extra"]["quant_aware"]["convs"] == len(recorded)
    assert not result.notes
    # the bundle report says where the scales came from (the section build writes for this artifact)
    lines = _quant_aware_lines([{"backend": "tensorrt", "precision": "int8", "details": artifact.details}])
    assert (
        lines[1] == "## Quant-aware adapter"
        and "trained with (s8s8" in lines[3]
        and "not re-calibrated" in lines[3]
    )


def test_another_scheme_calibrates_and_says_so(merged_qat, qat_adapter, calib_dir, tmp_path):
    """cpu-onnxruntime (u8s8) with an adapter trained for s8s8: a note, calibrated scales, honest INT8."""
    profile = load_profile("cpu-onnxruntime").with_overrides(
        {"quantization.accuracy_aware": False, "imgsz": IMGSZ}
    )
    result = export(merged_qat, profile, tmp_path / "exp", calib=calib_dir, precisions=["int8"])
    (artifact,) = result.artifacts
    record = artifact.details["quant_aware"]
    assert record["used"] is False and record["adapter_scheme"] == "s8s8"
    assert len(result.notes) == 1 and "trained quant-aware for s8s8" in result.notes[0]
    assert "--quant-aware cpu-onnxruntime" in result.notes[0]
    quantizers = _quantizers(artifact.path)
    assert quantizers and {d for _, _, d in quantizers.values()} == {"uint8"}
    lines = _quant_aware_lines([{"backend": "onnxruntime", "precision": "int8", "details": artifact.details}])
    assert "its scales are not used" in lines[3]


def test_qdq_graph_reproduces_the_fake_quant_forward(
    merged_qat, qat_adapter, lively_base, demo_data, calib_dir, tmp_path
):
    """Every quantized conv of the QDQ graph computes what the quant-aware training computed.

    The PyTorch side is each adapted ``Conv`` block of the unmerged PEFT model with the adapter's fake
    quantizers on (the training forward); the ONNX side is the same block in the merged export, QDQ with
    the adapter's scales (only the adapted convs quantized). Both get the same float input, the one ONNX
    Runtime computed, so what is compared is the arithmetic: scale, zero point, weight rounding of the
    BN-folded merged weight. They agree to 3e-3 of the block's output range (float summation order; a
    weight on a rounding boundary may round the other way; measured: 8e-4 at worst over 75 blocks), while
    the float block differs far more (median 2.8%).
    (End to end, one-step rounding flips compound through ~80 quantized convs of this tiny, quantization-
    fragile model, so the whole forward is no sharp test of the arithmetic.)
    """
    import onnxruntime as ort

    from edge_lora.train.adapter_io import build_adapted_model
    from edge_lora.train.quant_aware import enable_quant_aware, fake_quant_disabled, scales_from_record

    _, package = qat_adapter
    record = package.meta["quant_aware"]
    fp32 = export_onnx(merged_qat, tmp_path / "fp32.onnx", imgsz=IMGSZ, end2end=False).path
    adapted = set(record["scales"])
    others = tuple(
        n.name
        for n in onnx.load(str(fp32)).graph.node
        if n.op_type == "Conv" and module_of_node(n.name) not in adapted
    )
    policy = QuantPolicy(scheme="s8s8", backend="tensorrt", float_nodes=others)
    qdq = quantize_qdq(
        fp32,
        tmp_path / "qdq.onnx",
        calib_dir,
        policy,
        imgsz=IMGSZ,
        adapter_scales=AdapterScales.from_record(record),
    )

    proto = onnx.load(str(qdq.path))
    producer = {o: n for n in proto.graph.node for o in n.output}
    by_name = {n.name: n for n in proto.graph.node}
    blocks: dict[str, tuple[str, str]] = {}  # block module -> (its float input, its output) in the graph
    for node in proto.graph.node:
        module = module_of_node(node.name)
        if node.op_type != "Conv" or module not in adapted or not record["scales"][module]["bn_folded"]:
            continue
        tensor = node.input[0]
        while producer[tensor].op_type in ("DequantizeLinear", "QuantizeLinear"):
            tensor = producer[tensor].input[0]
        act = by_name.get(node.name.removesuffix("/conv/Conv") + "/act/Mul")  # None: a block without SiLU
        blocks[module.removesuffix(".conv")] = (tensor, (act or node).output[0])
    assert len(blocks) >= 0.9 * len(adapted)  # YOLO26n: every adapted conv but none sits in a Conv block

    paths = sorted((demo_data.root / "line_b" / "images" / "val").glob("*.png"))[:1]
    x = preprocess([read_image(p) for p in paths], IMGSZ)[0]
    names = sorted({t for pair in blocks.values() for t in pair})
    proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip(names, session.run(names, {session.get_inputs()[0].name: x}), strict=True))

    model, _ = build_adapted_model(load_detection_model(lively_base).model, package)
    enable_quant_aware(model, scales_from_record(record))
    modules = dict(model.named_modules())
    worst, float_gap = 0.0, []
    with torch.no_grad():
        for block, (inp, out) in blocks.items():
            x_in = torch.from_numpy(values[inp])
            fq = modules[block](x_in).numpy()
            with fake_quant_disabled(model):
                fl = modules[block](x_in).numpy()
            span = float(np.abs(fq).max()) or 1.0
            worst = max(worst, float(np.abs(values[out] - fq).max()) / span)
            float_gap.append(float(np.abs(values[out] - fl).max()) / span)
    assert worst <= 3e-3, worst
    assert np.median(float_gap) > 5 * max(worst, 1e-4)  # the float block is measurably different


def _mean_rel(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference relative to the mean magnitude of ``b``."""
    return float(np.abs(a - b).mean() / np.abs(b).mean())


def _head_inputs_torch(model: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    """The feature maps the detection head reads (one per stride), from the PyTorch forward."""
    seen: list[list[torch.Tensor]] = []
    head = [m for m in model.modules() if type(m).__name__ in ("Detect", "YOLOEDetect", "v10Detect")][0]
    hook = head.register_forward_pre_hook(lambda _m, args: seen.append([t.clone() for t in args[0]]))
    try:
        with torch.no_grad():
            model(torch.from_numpy(x))
    finally:
        hook.remove()
    return [t.numpy() for t in seen[0]]


def _head_inputs_onnx(path, x: np.ndarray) -> list[np.ndarray]:
    """The same feature maps from ONNX Runtime: the float tensor each head branch's first conv reads
    (behind its QuantizeLinear/DequantizeLinear pair when that conv is quantized)."""
    import onnxruntime as ort

    proto = onnx.load(str(path))
    producer = {o: n for n in proto.graph.node for o in n.output}
    names = []
    for node in proto.graph.node:
        module = module_of_node(node.name) or ""
        if (
            node.op_type == "Conv"
            and module.endswith(".0.conv")
            and ".cv2." in module
            and "one2one" not in module
        ):
            tensor = node.input[0]
            while tensor in producer and producer[tensor].op_type in ("DequantizeLinear", "QuantizeLinear"):
                tensor = producer[tensor].input[0]
            names.append(tensor)
    assert len(names) == 3, names
    proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    runs = [session.run(names, {session.get_inputs()[0].name: x[i : i + 1]}) for i in range(len(x))]
    return [np.concatenate([r[level] for r in runs]) for level in range(len(names))]


@pytest.fixture(scope="module")
def lsq_adapter(lively_base, demo_data, tmp_path_factory):
    """``train --quant-aware jetson --quant-scales learned`` on the lively base."""
    from edge_lora.train.adapter_io import read_adapter

    out = tmp_path_factory.mktemp("lsq") / "line_b_s8s8_lsq"
    result = train_line_b(
        lively_base, demo_data.line_b_yaml, out, quant_aware="jetson", quant_scales="learned"
    )
    return result, read_adapter(out)


def test_learned_scales_are_trained_recorded_and_put_into_the_graph(
    lsq_adapter, lively_base, demo_data, calib_dir, tmp_path
):
    """LSQ: the scales move from their MinMax start during training, the adapter records the learned ones
    (not its PEFT tensors: they are no LoRA weights), and the export puts exactly those into the graph."""
    from safetensors.numpy import load_file

    from edge_lora.train.lsq import PARAM

    result, package = lsq_adapter
    record = package.meta["quant_aware"]
    assert record["method"] == "lsq" and result.frozen_tensors_verified > 0
    entries = record["scales"]
    moved = [n for n, e in entries.items() if abs(e["scale"] / e["calibrated_scale"] - 1) > 1e-3]
    assert len(moved) > len(entries) // 2, f"only {len(moved)} of {len(entries)} scales moved"
    assert not any(PARAM in k for k in load_file(str(package.path / "adapter_model.safetensors")))
    merged = tmp_path / "merged.pt"
    merge(lively_base, package.path, merged, data=demo_data.line_b_yaml)
    profile = load_profile("jetson-orin-nano").with_overrides(
        {"quantization.accuracy_aware": False, "imgsz": IMGSZ}
    )
    (artifact,) = export(merged, profile, tmp_path / "exp", calib=calib_dir, precisions=["int8"]).artifacts
    assert artifact.details["quant_aware"]["method"] == "lsq"
    qdq = tmp_path / "exp" / "tensorrt-int8-qdq" / "model.onnx"
    quantizers, inputs = _quantizers(qdq), _conv_inputs(qdq)
    for module, entry in entries.items():
        assert quantizers[inputs[module]][0] == np.float32(entry["scale"]), module
