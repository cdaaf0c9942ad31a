"""Deploy bundles: manifest schema, atomic writing, verification, and the factory-line runtime.

One tiny YOLO26n (random init, NMS-free head) is exported to ONNX at 64 px once for the module. A random
model scores every box around 0.004, so tests that need detections use a threshold below that.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_lora.bundle.manifest import (
    MANIFEST_NAME,
    BundleError,
    build_manifest,
    parse_manifest,
    read_manifest,
)
from edge_lora.bundle.pack import (
    mark_bundle_failed,
    verify_bundle,
    write_bundle,
    write_failed_bundle,
)
from edge_lora.errors import InputError, OutputExistsError
from edge_lora.fileio import sha256_file
from edge_lora.profiles import load_profile
from edge_lora.runtime.line import LineRuntime, iter_frames

REPO = Path(__file__).resolve().parents[1]
IMGSZ = 64
NAMES = {0: "scratch", 1: "hole", 2: "short"}
LOW = 0.0001  # below every score of the random model: every decoded box counts


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def onnx_model(base_ckpt, tmp_path_factory) -> Path:
    from ultralytics import YOLO

    d = tmp_path_factory.mktemp("bundle_model")
    ckpt = shutil.copy(base_ckpt, d / "base.pt")  # the export lands beside the checkpoint: keep it ours
    return Path(YOLO(ckpt).export(format="onnx", imgsz=IMGSZ, nms=False, verbose=False))


def _fields(onnx: Path, **over) -> dict:
    profile = load_profile("cpu-onnxruntime")
    fields = {
        "target": profile,
        "classes": NAMES,
        "imgsz": IMGSZ,
        "postprocessing": {"end2end": True, "iou": 0.7, "max_det": 300},
        "artifacts": [
            {
                "path": "model/model.onnx",
                "backend": "onnxruntime",
                "precision": "fp32",
                "role": "primary",
                "runner_settings": {"intra_op_threads": 1},
            }
        ],
        "provenance": {
            "base": {"path": str(onnx.with_suffix(".pt")), "sha256": "a" * 64},
            "adapter": {"path": "adapters/line_b", "files": {"adapter_model.safetensors": "b" * 64}},
            "merged": {"sha256": "c" * 64},
            "calibration": None,
            "toolchain": {"edge-lora": "0.1.0"},
        },
        "validation": {
            "passed": True,
            "gates": [
                {"name": "max_map_drop", "value": 0.2, "threshold": 1.0, "comparator": "<=", "passed": True},
            ],
            "summary": {"map50_95": 0.5, "agreement_f1": 0.97},
            "latency_is_proxy": True,
            "proxy_reason": "host CPU",
        },
    }
    fields.update(over)
    return fields


def _files(onnx: Path) -> dict:
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    return {
        "model/model.onnx": onnx,
        "report.md": b"# Validation\nPASS\n",
        "plots/pr.png": png,
        "validation.json": b'{"passed": true}\n',
        "README.md": b"edge-lora run . --source DIR\n",
    }


@pytest.fixture(scope="module")
def bundle(onnx_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "line_b-cpu-onnxruntime"
    return write_bundle(out, _files(onnx_model), _fields(onnx_model), archive=True)


@pytest.fixture
def bundle_copy(bundle, tmp_path) -> Path:
    """A private copy to tamper with."""
    return Path(shutil.copytree(bundle, tmp_path / bundle.name))


@pytest.fixture(scope="module")
def frames_dir(demo_data, tmp_path_factory) -> Path:
    """The four line-B val images and one corrupt file that sorts last."""
    d = tmp_path_factory.mktemp("frames")
    for p in sorted((demo_data.root / "line_b" / "images" / "val").iterdir()):
        shutil.copy(p, d / p.name)
    (d / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return d


def _readable(frames_dir: Path) -> list[str]:
    return sorted(p.name for p in frames_dir.iterdir() if p.name != "zz_corrupt.png")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------------------------- manifest
def test_manifest_round_trip_and_defaults(bundle, onnx_model):
    m = read_manifest(bundle)
    assert m.schema_version == 1 and m.kind == "edge-lora-bundle" and m.status == "complete"
    assert m.name == bundle.name and m.imgsz == [IMGSZ, IMGSZ] and m.classes == NAMES
    profile = load_profile("cpu-onnxruntime")
    assert m.target.name == profile.name and m.target.sha256 == profile.sha256()
    # Defaults: every class a defect at the profile's agreement_conf, which is also the decode floor.
    conf = profile.gates.agreement_conf
    assert m.thresholds.conf == dict.fromkeys(NAMES, conf) and m.thresholds.defect_classes == [0, 1, 2]
    assert m.postprocessing.conf == conf
    assert m.preprocessing.pad_value == 114 and m.preprocessing.stride == 32 and not m.preprocessing.auto
    art = m.primary
    assert art.sha256 == sha256_file(onnx_model) and art.bytes == onnx_model.stat().st_size
    assert set(m.files) == {"model/model.onnx", "report.md", "plots/pr.png", "validation.json", "README.md"}
    assert parse_manifest(m.to_json()) == m
    assert (bundle / MANIFEST_NAME).read_text() == m.to_json()  # stable, sorted JSON


@pytest.mark.parametrize(
    ("edit", "expect"),
    [
        (lambda d: d.update(colour="red"), "field 'colour': unknown key"),
        (lambda d: d.update(postprocesing=d.pop("postprocessing")), "did you mean 'postprocessing'"),
        (lambda d: d.update(imgsz="64x64"), "field 'imgsz'"),
        (lambda d: d["postprocessing"].update(conf="high"), "field 'postprocessing.conf'"),
        (
            lambda d: d["thresholds"]["conf"].pop("2"),
            "field 'thresholds.conf': no threshold for class ids [2]",
        ),
        (lambda d: d["artifacts"][0].update(sha256="0" * 64), "field 'artifacts[0].sha256'"),
        (lambda d: d["artifacts"][0].update(backend="openvino"), "field 'artifacts[0].path'"),
        (lambda d: d["files"].update({"../escape": "0" * 64}), "field 'files'"),
        (lambda d: d["validation"].update(passed=False), "field 'status': validation did not pass"),
        (lambda d: d.update(status="failed"), "field 'failure_reason'"),
        (lambda d: d["target"]["profile"].update(imgsz=320), "field 'target.sha256'"),
        (lambda d: d.update(schema_version=2), "newer edge-lora"),
        (lambda d: d.update(kind="something"), "not an edge-lora bundle manifest"),
    ],
)
def test_manifest_schema_errors_name_file_and_field(bundle, tmp_path, edit, expect):
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    edit(data)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError) as exc:
        read_manifest(tmp_path)
    msg = str(exc.value)
    assert expect in msg and str(tmp_path / MANIFEST_NAME) in msg and "\n" not in msg


def test_manifest_unreadable_or_missing(tmp_path):
    with pytest.raises(BundleError, match="has no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text('{"kind": "edge-lora-bundle", ')
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_build_manifest_reports_missing_field(bundle):
    fields = read_manifest(bundle).to_dict()
    assert build_manifest(**fields) == read_manifest(bundle)
    del fields["postprocessing"]
    with pytest.raises(BundleError, match="^manifest: field 'postprocessing': required but missing$"):
        build_manifest(**fields)


# --------------------------------------------------------------------------------------------- writing
def test_write_bundle_is_verified_complete_and_archived(bundle):
    result = verify_bundle(bundle)
    assert result and result.passed and not result.tampered and not result.problems
    assert [c.status for c in result.checks] == ["PASS"] * len(result.checks)
    assert {c.name for c in result.checks} >= {"manifest", "files", "unlisted files", "artifacts", "status"}
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    archive = bundle.with_name(bundle.name + ".tar.gz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert f"{bundle.name}/{MANIFEST_NAME}" in names and f"{bundle.name}/model/model.onnx" in names
    with pytest.raises(OutputExistsError):
        write_bundle(bundle, {"a.txt": b"x"}, {})


def test_invalid_manifest_writes_nothing(onnx_model, tmp_path):
    out = tmp_path / "b"
    bad = _fields(onnx_model, validation={"passed": False, "gates": []})  # a failed validation, "complete"
    with pytest.raises(BundleError, match="field 'status'"):
        write_bundle(out, _files(onnx_model), bad)
    assert list(tmp_path.iterdir()) == []


def test_failed_bundle_is_refused_unless_allowed(onnx_model, tmp_path, frames_dir):
    fields = _fields(onnx_model, validation={"passed": False, "gates": []})
    out = write_failed_bundle(
        tmp_path / "b", _files(onnx_model), fields, "gate max_map_drop failed: 3.1 > 1.0"
    )
    result = verify_bundle(out)
    assert not result and not result.tampered and "max_map_drop" in result.problems[0]
    assert verify_bundle(out, allow_failed=True)
    with pytest.raises(BundleError, match="--allow-failed"):
        LineRuntime(out)
    with LineRuntime(out, allow_failed=True) as line:
        summary = line.run(frames_dir, out_jsonl=tmp_path / "r.jsonl", max_frames=1)
    assert summary.images == 1


def test_mark_bundle_failed(bundle_copy):
    m = mark_bundle_failed(bundle_copy, "on-device p99 28 ms > 25 ms")
    assert m.status == "failed" and read_manifest(bundle_copy).failure_reason == "on-device p99 28 ms > 25 ms"
    assert verify_bundle(bundle_copy, allow_failed=True)


def _flip_byte(b: Path) -> str:
    p = b / "model" / "model.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    return "model/model.onnx"


def _add_file(b: Path) -> str:
    (b / "plots" / "extra.png").write_bytes(b"x")
    return "plots/extra.png"


def _remove_file(b: Path) -> str:
    (b / "report.md").unlink()
    return "report.md"


def _link_file(b: Path) -> str:
    (b / "validation.json").unlink()
    (b / "validation.json").symlink_to(b / "README.md")
    return "validation.json"


@pytest.mark.parametrize("tamper", [_flip_byte, _add_file, _remove_file, _link_file])
def test_tampered_bundle_is_refused(bundle_copy, tamper):
    name = tamper(bundle_copy)
    result = verify_bundle(bundle_copy)
    assert not result and result.tampered
    assert name in result.problems[0]
    with pytest.raises(BundleError, match=name.replace(".", r"\.")):
        LineRuntime(bundle_copy)


def test_tensorrt_layout_engine_built_on_device(onnx_model, tmp_path):
    """A folder source is staged whole; the engine the device builds is allowed, not hashed, and required to run."""
    src = tmp_path / "trt"
    src.mkdir()
    shutil.copy(onnx_model, src / "model.onnx")
    (src / "build_plan.json").write_text("{}")
    (src / "trtexec.sh").write_text("trtexec --onnx=model.onnx --saveEngine=model.engine\n")
    step = "edge-lora engine build model/tensorrt"
    art = {
        "path": "model/tensorrt/model.onnx",
        "backend": "tensorrt",
        "precision": "fp16",
        "role": "primary",
        "device_outputs": ["model/tensorrt/model.engine", "model/tensorrt/model.engine.json"],
    }
    b = write_bundle(
        tmp_path / "b",
        {"model/tensorrt": src, "report.md": b"r"},
        _fields(onnx_model, artifacts=[art], on_device_steps=[step]),
    )
    m = read_manifest(b)
    assert set(m.files) == {
        "model/tensorrt/model.onnx",
        "model/tensorrt/build_plan.json",
        "model/tensorrt/trtexec.sh",
        "report.md",
    }
    result = verify_bundle(b)
    assert result and [c.status for c in result.checks if c.name == "device build"] == ["WARN"]
    with pytest.raises(BundleError, match=f"model.engine is not built yet; on this device run first: {step}"):
        LineRuntime(b)
    (b / "model" / "tensorrt" / "model.engine").write_bytes(b"engine")
    (b / "model" / "tensorrt" / "model.engine.json").write_text("{}")
    assert verify_bundle(b) and not verify_bundle(b).warnings
    bad = dict(art, device_outputs=[])
    with pytest.raises(
        BundleError, match=r"field 'artifacts\[0\]\.device_outputs': a TensorRT artifact shipped as ONNX"
    ):
        write_bundle(tmp_path / "c", {"model/tensorrt": src}, _fields(onnx_model, artifacts=[bad]))


# --------------------------------------------------------------------------------------------- runtime
def test_run_dir_writes_a_line_per_readable_frame(bundle, frames_dir, tmp_path):
    logs: list[str] = []
    out, ann = tmp_path / "results.jsonl", tmp_path / "annotated"
    with LineRuntime(bundle, conf=LOW) as line:
        summary = line.run(frames_dir, out_jsonl=out, save_annotated=ann, log=logs.append)
    lines = _lines(out)
    assert [r["frame"] for r in lines] == _readable(frames_dir)
    assert summary.images == 4 and summary.unreadable == 1 and summary.frames == 5
    assert any("zz_corrupt.png" in m for m in logs)
    for r in lines:
        assert set(r) == {"frame", "detections", "verdict", "reasons", "latency_ms"}
        assert set(r["latency_ms"]) == {"pre", "infer", "post", "total"}
        assert r["detections"] and r["verdict"] == "reject"
        d = r["detections"][0]
        assert set(d) == {"class", "name", "score", "box"} and len(d["box"]) == 4 and d["score"] > LOW
    assert sorted(p.name for p in ann.iterdir()) == _readable(frames_dir)
    d = summary.to_dict()
    assert d["rejects"] == 4 and d["latency_ms"]["total"]["count"] == 4 and not d["interrupted"]


def test_verdict_follows_per_class_thresholds_and_defects(bundle, onnx_model, frames_dir, tmp_path):
    # Default thresholds (0.25): a random model's 0.004 scores count nowhere, every part passes.
    with LineRuntime(bundle) as line:
        summary = line.run(frames_dir, out_jsonl=tmp_path / "default.jsonl")
    assert summary.images == 4 and summary.rejects == 0
    assert all(r["verdict"] == "pass" and not r["detections"] for r in _lines(tmp_path / "default.jsonl"))
    # scratch counts and is a defect, hole counts but is not a defect, short never counts.
    fields = _fields(onnx_model, thresholds={"conf": {0: LOW, 1: LOW, 2: 1.0}, "defect_classes": [0]})
    b = write_bundle(tmp_path / "b", _files(onnx_model), fields)
    out = tmp_path / "r.jsonl"
    with LineRuntime(b) as line:
        assert line.decode_conf == LOW
        summary = line.run(frames_dir, out_jsonl=out)
    for r in _lines(out):
        classes = [d["class"] for d in r["detections"]]
        assert 2 not in classes and 0 in classes and 1 in classes
        assert r["verdict"] == "reject" and r["reasons"] == {"scratch": classes.count(0)}
    assert summary.rejects == 4 and set(summary.defects) == {"scratch"}
    assert set(summary.detections) == {"scratch", "hole"}


def test_watch_picks_up_new_files(bundle, frames_dir, tmp_path):
    watched = tmp_path / "drop"
    watched.mkdir()
    first, second = _readable(frames_dir)[:2]
    shutil.copy(frames_dir / first, watched / first)  # already there: skipped

    def arrive():
        time.sleep(0.3)
        shutil.copy(frames_dir / second, watched / f".{second}.part")
        os.replace(watched / f".{second}.part", watched / second)

    out = tmp_path / "w.jsonl"
    t = threading.Thread(target=arrive)
    with LineRuntime(bundle, conf=LOW) as line:
        t.start()
        summary = line.run(watched, out_jsonl=out, watch=True, poll_s=0.05, max_frames=1, idle_timeout_s=20)
    t.join()
    assert summary.images == 1 and [r["frame"] for r in _lines(out)] == [second]


def test_watch_idle_timeout(bundle, tmp_path):
    with LineRuntime(bundle) as line:
        summary = line.run(tmp_path, watch=True, poll_s=0.02, idle_timeout_s=0.1, log=lambda m: None)
    assert summary.frames == 0 and summary.latency == {}


def test_ctrl_c_finishes_the_frame_and_summarises(bundle, frames_dir, tmp_path):
    out = tmp_path / "i.jsonl"
    # What was installed before (default_int_handler, or SIG_IGN under nohup / a background job) comes back.
    before = signal.getsignal(signal.SIGINT)
    with LineRuntime(bundle, conf=LOW, latency_window=1) as line:
        infer, calls = line.runner.infer, []

        def infer_then_interrupt(batch, **kw):
            calls.append(1)
            if len(calls) == 2:
                signal.raise_signal(signal.SIGINT)  # arrives mid-frame
            return infer(batch, **kw)

        line.runner.infer = infer_then_interrupt
        # The sequential path stops after this frame; the pipelined one drains (tests/test_pipelined_run.py).
        summary = line.run(frames_dir, out_jsonl=out, log=lambda m: None, pipeline=False)
    assert summary.interrupted and summary.images == 2 and len(_lines(out)) == 2
    assert summary.latency_window == 1 and summary.latency["total"].count == 1  # bounded window
    assert signal.getsignal(signal.SIGINT) == before  # handler restored


def test_iter_frames_sources(frames_dir, tmp_path):
    names = _readable(frames_dir)
    assert [f for f, _ in iter_frames(str(frames_dir / "line_b_val_000[01].png"))] == [
        str(frames_dir / n) for n in names[:2]
    ]
    single = list(iter_frames(frames_dir / names[0]))
    assert len(single) == 1 and single[0][1].ndim == 3
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    frames = list(iter_frames(str(video)))
    assert [f for f, _ in frames] == ["clip.avi#0", "clip.avi#1", "clip.avi#2"]
    assert all(img is not None and img.shape == (48, 64, 3) for _, img in frames)
    with pytest.raises(InputError, match="not a folder, image, video, glob or camera index"):
        iter_frames(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        iter_frames(tmp_path / "empty")


def test_line_runtime_runs_without_torch(bundle, frames_dir):
    code = textwrap.dedent(
        """
        import importlib.abc, io, json, sys

        class _Blocked(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torch", "torchvision", "ultralytics", "onnx"}:
                    raise ImportError(f"{name} is blocked: the line side must not need it")
                return None

        sys.meta_path.insert(0, _Blocked())
        from edge_lora.runtime.line import LineRuntime
        from edge_lora.cli.bundle_cmds import COMMANDS
        out = io.StringIO()
        with LineRuntime(sys.argv[1], conf=0.0001) as line:
            summary = line.run(sys.argv[2], out_jsonl=out, log=lambda m: None)
        assert "torch" not in sys.modules and "ultralytics" not in sys.modules
        print(json.dumps({"images": summary.images, "lines": len(out.getvalue().splitlines())}))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(bundle), str(frames_dir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"images": 4, "lines": 4}


# --------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def cli():
    import click

    from edge_lora.cli.bundle_cmds import COMMANDS
    from edge_lora.cli.errors import EdgeLoraGroup

    @click.group(cls=EdgeLoraGroup)
    def group() -> None:
        pass

    for command in COMMANDS:
        group.add_command(command)
    return group


def test_cli_verify_exit_codes(cli, bundle, bundle_copy, onnx_model, tmp_path):
    ok = CliRunner().invoke(cli, ["verify", str(bundle), "--json", str(tmp_path / "v.json")])
    assert ok.exit_code == 0, ok.output
    assert "PASS" in ok.output and json.loads((tmp_path / "v.json").read_text())["passed"] is True
    _flip_byte(bundle_copy)
    bad = CliRunner().invoke(cli, ["verify", str(bundle_copy)])
    assert bad.exit_code == 2
    errors = [line for line in bad.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model/model.onnx" in errors[0] and "sha256" in errors[0]
    failed = write_failed_bundle(
        tmp_path / "f", _files(onnx_model), _fields(onnx_model, validation=None), "export failed"
    )
    res = CliRunner().invoke(cli, ["verify", str(failed)])
    assert res.exit_code == 1 and "export failed" in res.output
    res = CliRunner().invoke(cli, ["run", str(failed), "--source", "."])
    assert res.exit_code == 2 and "--allow-failed" in res.output


def test_cli_run(cli, bundle, frames_dir, tmp_path):
    out = tmp_path / "r.jsonl"
    res = CliRunner().invoke(
        cli, ["run", str(bundle), "--source", str(frames_dir), "--out", str(out), "--conf", "0.0001"]
    )
    assert res.exit_code == 0, res.output
    assert len(_lines(out)) == 4 and "rejects" in res.output and "unreadable" in res.output
    # JSON lines on stdout stay parseable: the summary goes to stderr.
    res = CliRunner().invoke(cli, ["run", str(bundle), "--source", str(frames_dir), "--max-frames", "2"])
    assert res.exit_code == 0, res.output
    assert [json.loads(line)["frame"] for line in res.stdout.splitlines()] == _readable(frames_dir)[:2]
    assert "images" in res.stderr


def test_cli_run_on_a_full_disk_keeps_whole_lines_and_images(cli, bundle, demo_data, tmp_path, tiny_fs):
    """The results folder fills up mid-run: exit 4 with one line naming the file, every JSON line that was
    written is whole, and no half-written annotated image or temp file is left."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(40):  # enough frames to overflow a 48 KiB folder with JSON lines and annotated PNGs
        shutil.copy(
            next((demo_data.root / "line_b" / "images" / "val").glob("*.png")), frames / f"f{i:03d}.png"
        )
    fs = tiny_fs(48)
    out = fs / "r.jsonl"
    res = CliRunner().invoke(
        cli,
        ["run", str(bundle), "--source", str(frames), "--out", str(out), "--save-annotated", str(fs / "ann")],
    )
    assert res.exit_code == 4, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "no space left" in errors[0] and str(fs) in errors[0], res.output
    lines = out.read_text().splitlines() if out.exists() else []
    assert all(json.loads(ln)["frame"] for ln in lines) and out.read_text().endswith("\n") if lines else True
    assert not [p for p in fs.rglob("*") if p.name.startswith(".")]  # no temp files
    assert len(lines) < 40
