"""build(): end to end on a tiny model for the CPU target; cache reuse; gate failure; unmerged reference."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import IMGSZ

from edge_lora.bundle.pack import verify_bundle
from edge_lora.cli.main import main


def _profile(tmp_path: Path, name: str = "cpu-tiny", **gates) -> Path:
    (tmp_path / "tiny-calib.yaml").write_text(
        "schema_version: 1\nname: tiny\ndescription: test recipe\nnum_images: 8\nmin_images: 4\nsplit: train\n"
        "selection: stratified\ndedupe: true\nseed: 0\nvalidation_images: 4\n"
    )
    lines = [
        "extends: cpu-onnxruntime",
        f"name: {name}",
        f"imgsz: {IMGSZ}",
        "calibration: tiny-calib.yaml",
        "bench:",
        "  warmup_runs: 1",
        "  timed_runs: 10",
    ]
    if gates:
        lines += ["gates:"] + [f"  {k}: {v}" for k, v in gates.items()]
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def build_cli(base_ckpt, trained_adapter, demo_data):
    """Arguments of one `edge-lora build` of the test adapter on line B, with short latency settings."""

    def make(profile: Path, out: Path, *extra, cache: Path | None = None) -> list[str]:
        args = ["build", "--base", base_ckpt, "--adapter", trained_adapter.out, "--target", profile]
        args += ["--data", demo_data.line_b_yaml, "--out", out, "--runs", "10", "--warmup", "1", *extra]
        return [str(a) for a in args + (["--cache", cache] if cache else [])]

    return make


@pytest.fixture(scope="module")
def built(tmp_path_factory, build_cli):
    work = tmp_path_factory.mktemp("build")
    profile = _profile(work)
    args = build_cli(profile, work / "dist", "--json", work / "build.json")
    first = CliRunner().invoke(main, args)
    second = CliRunner().invoke(main, args)
    return work, first, second, args


def test_build_produces_a_verified_runnable_bundle(built, demo_data):
    work, first, _, _ = built
    assert first.exit_code == 0, first.output
    summary = json.loads((work / "build.json").read_text())
    bundle = Path(summary["bundles"][0]["bundle"])
    assert summary["passed"] and summary["bundles"][0]["chosen"] in ("int8", "fp32")
    assert verify_bundle(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["provenance"]["merged"]["sha256"] and manifest["validation"]["passed"]
    assert (bundle / "reference" / "unmerged.onnx").is_file() and (bundle / "report.md").is_file()
    assert len(list((bundle / "plots").glob("*.png"))) == 3
    # the line runtime executes it, surviving a corrupt image in the stream
    src = work / "frames"
    shutil.copytree(demo_data.root / "line_b" / "images" / "val", src)
    (src / "zz_corrupt.png").write_bytes(b"\x89PNG broken")
    out = work / "run.jsonl"
    res = CliRunner().invoke(main, ["run", str(bundle), "--source", str(src), "--out", str(out)])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 4 and all("verdict" in x for x in lines)


def test_second_build_reuses_every_stage(built):
    _, first, second, _ = built
    assert second.exit_code == 0, second.output
    for stage in ("merge:", "reference", "export:", "validate:"):
        line = next(ln for ln in second.output.splitlines() if stage in ln)
        assert "cached" in line, second.output


def test_gate_failure_exits_1_and_leaves_a_failed_bundle(tmp_path, build_cli, demo_data, built):
    work = built[0]
    profile = _profile(tmp_path, name="cpu-impossible", min_speedup=1000.0)
    args = build_cli(profile, tmp_path / "dist", cache=work / "dist" / ".cache")
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1, res.output
    bundle = next((tmp_path / "dist").glob("*-cpu-impossible"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "no precision passed" in manifest["failure_reason"]
    assert not verify_bundle(bundle)  # failed bundles never look complete
    run = CliRunner().invoke(
        main, ["run", str(bundle), "--source", str(demo_data.root / "line_b" / "images" / "val")]
    )
    assert run.exit_code != 0


def test_tampered_bundle_is_refused(built, tmp_path):
    work = built[0]
    bundle = next((work / "dist").glob("*-cpu-tiny"))
    copy = tmp_path / bundle.name
    shutil.copytree(bundle, copy)
    model = copy / "model" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    res = CliRunner().invoke(main, ["verify", str(copy)])
    assert res.exit_code == 2 and "model/model.onnx" in res.output


def test_unmerged_onnx_reference_matches_pytorch(tmp_path, base_ckpt, trained_adapter):
    import numpy as np

    from edge_lora.export.unmerged import export_unmerged_onnx
    from edge_lora.runtime.onnxrt import OnnxRuntimeRunner
    from edge_lora.validate.reference import TorchReferenceRunner

    # Raw head output (no TopK): a random-init base has tied scores, which TopK may order either way.
    path = export_unmerged_onnx(
        base_ckpt, trained_adapter.out, tmp_path / "u.onnx", imgsz=IMGSZ, end2end=False
    )
    x = np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    with (
        OnnxRuntimeRunner(path) as ort,
        TorchReferenceRunner(base_ckpt, trained_adapter.out, imgsz=IMGSZ, end2end=False) as ref,
    ):
        a, b = ort.infer(x)["output0"], ref.infer(x)["output0"]
        assert ort.metadata["names"] == ref.metadata["names"]
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1e-3 * max(np.abs(b).max(), 1.0)


_BLOCKER = """
import importlib.abc, sys

class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "torchvision", "ultralytics"}:
            raise ImportError(f"{name} is blocked: the device side must not need it")
        return None

sys.meta_path.insert(0, _Blocked())
from edge_lora.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    sys.exit(e.code)
"""


def _device_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _BLOCKER, *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_device_commands_run_without_torch(built, demo_data, tmp_path):
    """verify, run, bench and build --on-device use only the torch-free runtime (torch/ultralytics blocked)."""
    work = built[0]
    bundle = next((work / "dist").glob("*-cpu-tiny"))
    images = demo_data.root / "line_b" / "images" / "val"
    for args in (
        ["verify", bundle],
        ["run", bundle, "--source", images, "--out", tmp_path / "r.jsonl"],
        ["bench", bundle / "model" / "model.onnx", "--runs", "5", "--warmup", "1"],
        ["build", "--on-device", bundle, "--data", demo_data.line_b_yaml, "--runs", "10", "--warmup", "1"],
    ):
        proc = _device_cli(*args)
        assert proc.returncode == 0, f"{args[0]}: {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    on_device = json.loads((bundle.with_name(bundle.name + ".on-device") / "validation.json").read_text())
    assert on_device["reference"]["name"].startswith("onnxruntime:unmerged")
    assert on_device["agreement"]["f1"] >= 0.9


def test_jetson_build_on_host_is_a_proxy_bundle(tmp_path, build_cli, built):
    """A Jetson target on this host: S8S8 QDQ validated in ONNX Runtime, latency gates skipped, plan shipped."""
    work = built[0]
    profile = _profile(tmp_path, name="jetson-tiny")
    text = profile.read_text().replace("extends: cpu-onnxruntime", "extends: jetson-orin-nano")
    text = text.replace("timed_runs: 10", "timed_runs: 100")  # the schema wants >= 100 runs behind a p99 gate
    profile.write_text(text)
    args = build_cli(profile, tmp_path / "dist", cache=work / "dist" / ".cache")
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    bundle = next((tmp_path / "dist").glob("*-jetson-tiny"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    primary = manifest["artifacts"][0]
    assert primary["backend"] == "tensorrt" and primary["precision"] == "int8"
    assert primary["device_outputs"] == ["model/tensorrt/model.engine", "model/tensorrt/model.engine.json"]
    assert (bundle / "model" / "tensorrt" / "trtexec.sh").is_file() and (
        bundle / "model" / "tensorrt" / "build_plan.json"
    ).is_file()
    assert manifest["validation"]["latency_is_proxy"]
    skipped = {g["name"] for g in manifest["validation"]["gates"] if g.get("skipped")}
    assert {"max_p99_ms", "min_speedup"} <= skipped
    assert any("engine build" in s for s in manifest["on_device_steps"])


def test_precision_auto_ships_the_fastest_passing(tmp_path, build_cli, built):
    work = built[0]
    profile = _profile(tmp_path, name="cpu-auto")
    args = build_cli(
        profile,
        tmp_path / "dist",
        "--precision",
        "auto",
        "--json",
        tmp_path / "b.json",
        cache=work / "dist" / ".cache",
    )
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    b = json.loads((tmp_path / "b.json").read_text())["bundles"][0]
    tried = {c["precision"]: c for c in b["candidates"]}
    assert set(tried) == {"int8", "fp32"}, res.output  # ONNX Runtime on a CPU offers both; each was validated
    passing = [c for c in tried.values() if c["passed"]]
    assert b["chosen"] == min(passing, key=lambda c: c["model_p50_ms"])["precision"]


def test_openvino_auto_tries_bf16_and_the_bundle_runs_it_as_validated(tmp_path, build_cli, built):
    """precision auto on an OpenVINO CPU target builds int8, bf16 and fp32; a bf16 artifact carries its
    inference precision into the manifest's runner settings, so the line runtime runs what was validated."""
    work = built[0]
    profile = _profile(tmp_path, name="ov-auto")
    text = profile.read_text().replace("extends: cpu-onnxruntime", "extends: intel-openvino")
    profile.write_text(text + "fallbacks: []\n")
    args = build_cli(profile, tmp_path / "dist", "--precision", "auto", "--json", tmp_path / "b.json")
    res = CliRunner().invoke(main, [*args, "--cache", str(work / "dist" / ".cache")])
    assert res.exit_code == 0, res.output
    b = json.loads((tmp_path / "b.json").read_text())["bundles"][0]
    assert {c["precision"] for c in b["candidates"]} == {"int8", "bf16", "fp32"}, res.output
    bundle = Path(b["bundle"])
    assert verify_bundle(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    primary = manifest["artifacts"][0]
    assert primary["precision"] == b["chosen"]
    expected = "bf16" if b["chosen"] == "bf16" else "f32"
    assert primary["runner_settings"]["inference_precision"] == expected


def test_report_says_what_to_try_when_int8_fails_the_map_gate():
    from types import SimpleNamespace

    from edge_lora.report import _int8_hints

    def candidate(precision: str, drop: float, passed: bool) -> dict:
        check = {"name": "max_map_drop", "value": drop, "threshold": 1.0, "passed": passed}
        return {"precision": precision, "report": {"gates": {"checks": [check]}}}

    failed = [candidate("int8", 1.25, False), candidate("fp32", 0.0, True)]
    (hint,) = [line for line in _int8_hints(SimpleNamespace(backend="openvino"), failed) if line]
    assert "INT8 lost 1.25" in hint and "openvino.accuracy_aware" in hint and "keep_float_nodes" in hint
    assert "calibrate_method" in _int8_hints(SimpleNamespace(backend="onnxruntime"), failed)[-1]
    assert _int8_hints(SimpleNamespace(backend="openvino"), [candidate("int8", 0.3, True)]) == []
