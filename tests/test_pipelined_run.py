"""``edge-lora run``'s pipelined path (issue 13.3) against its sequential path, frame by frame.

The tiny bundle of ``tests/fixtures/bundle_v1`` runs both ways on the same frames; a batch-2 and a batch-4
variant of it (its ONNX model wrapped with ``onnx.helper``: a Split into rows, one copy of the graph per row,
a Concat; bit-identical per row) checks real batching of consecutive frames and the padded final batch.
Also: a failure in either worker thread is one error, not a hang; a stop drains the frames already taken.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_lora.cli.main import main
from edge_lora.errors import InputError, ToolError
from edge_lora.fileio import sha256_file
from edge_lora.runtime.line import LineRuntime
from edge_lora.runtime.pipeline import FramePipeline

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "bundle_v1"
FRAMES = sorted((FIXTURE / "frames").glob("*.png"))
CONF = 0.3


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (src,) = [p for p in FIXTURE.iterdir() if (p / "manifest.json").is_file()]
    return Path(shutil.copytree(src, tmp_path / src.name))


def _batched_bundle(bundle: Path, n: int) -> Path:
    """The fixture bundle with its model taking a fixed batch of ``n`` (manifest hashes updated)."""
    import onnx
    from onnx import TensorProto, compose, helper

    path = bundle / "model" / "model.onnx"
    model = onnx.load(str(path))
    inp, out = model.graph.input[0], model.graph.output[0]
    in_dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_value for d in out.type.tensor_type.shape.dim]
    rows = [f"b{i}_{inp.name}" for i in range(n)]
    nodes = [helper.make_node("Split", [inp.name, "rows"], rows, axis=0)]
    inits = [helper.make_tensor("rows", TensorProto.INT64, [n], [1] * n)]
    for i in range(n):
        copy = compose.add_prefix(model, f"b{i}_")
        nodes += list(copy.graph.node)
        inits += list(copy.graph.initializer)
    nodes.append(helper.make_node("Concat", [f"b{i}_{out.name}" for i in range(n)], [out.name], axis=0))
    graph = helper.make_graph(
        nodes,
        "batched",
        [helper.make_tensor_value_info(inp.name, TensorProto.FLOAT, [n, *in_dims[1:]])],
        [helper.make_tensor_value_info(out.name, TensorProto.FLOAT, [n, *out_dims[1:]])],
        inits,
    )
    batched = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    for p in model.metadata_props:
        batched.metadata_props.add(key=p.key, value=str(n) if p.key == "batch" else p.value)
    onnx.save(batched, str(path))
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    digest = sha256_file(path)
    manifest["files"]["model/model.onnx"] = digest
    (art,) = [a for a in manifest["artifacts"] if a["path"] == "model/model.onnx"]
    art["sha256"], art["bytes"] = digest, path.stat().st_size
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return bundle


def _frames_folder(tmp_path: Path, copies: int, unreadable_at: int | None = None) -> Path:
    """``copies`` x the fixture frames, distinct names in source order, and optionally one unreadable file."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(copies * len(FRAMES)):
        shutil.copy(FRAMES[i % len(FRAMES)], folder / f"f{i:03d}.png")
    if unreadable_at is not None:
        (folder / f"f{unreadable_at:03d}b.png").write_bytes(b"not a png")
    return folder


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _verdicts(records: list[dict]) -> list[dict]:
    """Records without their latencies: what must not differ between the two paths."""
    return [{k: v for k, v in r.items() if k != "latency_ms"} for r in records]


def _run(line: LineRuntime, source, out: Path, **kw) -> tuple[object, list[dict]]:
    summary = line.run(source, out_jsonl=out, log=_quiet, **kw)
    return summary, _records(out)


def _same_summaries(a, b) -> None:
    for key in ("frames", "images", "unreadable", "rejects", "defects", "detections", "interrupted"):
        assert a.to_dict()[key] == b.to_dict()[key], key


# ------------------------------------------------------------------------------------------------ batch 1
@pytest.mark.parametrize("kind", ["folder", "video"])
def test_pipelined_records_equal_the_sequential_ones_frame_by_frame(bundle, tmp_path, kind):
    if kind == "folder":
        source = _frames_folder(tmp_path, copies=3, unreadable_at=5)
    else:
        source = tmp_path / "clip.avi"
        writer = cv2.VideoWriter(str(source), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 64))
        for p in FRAMES * 3:
            writer.write(cv2.imread(str(p)))
        writer.release()
    with LineRuntime(bundle, conf=CONF) as line:
        seq, seq_records = _run(line, source, tmp_path / "seq.jsonl", pipeline=False)
        pip, pip_records = _run(line, source, tmp_path / "pip.jsonl", pipeline=True)
    assert len(seq_records) == 12 and any(r["detections"] for r in seq_records)
    assert [r["frame"] for r in pip_records] == [r["frame"] for r in seq_records]
    assert _verdicts(pip_records) == _verdicts(seq_records)
    _same_summaries(pip, seq)
    assert seq.unreadable == (1 if kind == "folder" else 0)
    assert set(pip_records[0]["latency_ms"]) == {"pre", "infer", "post", "total"}
    assert pip.latency["total"].count == 12


def test_max_frames_counts_the_same_in_both_paths(bundle, tmp_path):
    source = _frames_folder(tmp_path, copies=2, unreadable_at=1)
    with LineRuntime(bundle, conf=CONF) as line:
        seq, seq_records = _run(line, source, tmp_path / "seq.jsonl", pipeline=False, max_frames=5)
        pip, pip_records = _run(line, source, tmp_path / "pip.jsonl", pipeline=True, max_frames=5)
    assert seq.frames == pip.frames == 5 and seq.unreadable == pip.unreadable == 1
    assert _verdicts(pip_records) == _verdicts(seq_records)


def test_the_cli_switch_keeps_the_sequential_path(bundle, tmp_path):
    source = _frames_folder(tmp_path, copies=1)
    outs = {}
    for flag in ("--pipeline", "--no-pipeline"):
        out = tmp_path / f"{flag}.jsonl"
        args = ["run", str(bundle), "--source", str(source), "--out", str(out), "--conf", str(CONF), flag]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        outs[flag] = _verdicts(_records(out))
    assert outs["--pipeline"] == outs["--no-pipeline"] and len(outs["--pipeline"]) == 4
    config = tmp_path / "line.yaml"  # a station's config file says it too
    config.write_text(f"bundle: {bundle}\nsource: {source}\nout: {tmp_path / 'cfg.jsonl'}\npipeline: false\n")
    res = CliRunner().invoke(main, ["run", "--config", str(config), "--conf", str(CONF)])
    assert res.exit_code == 0, res.output
    assert _verdicts(_records(tmp_path / "cfg.jsonl")) == outs["--no-pipeline"]


# ----------------------------------------------------------------------------------------------- batching
@pytest.mark.parametrize("n", [2, 4])
def test_a_fixed_batch_model_batches_consecutive_frames_and_pads_the_last_batch(bundle, tmp_path, n):
    source = _frames_folder(tmp_path, copies=2, unreadable_at=2)  # 8 readable + 1 unreadable
    extra = tmp_path / "frames" / "f999.png"  # a 9th readable frame: the last batch is partial
    shutil.copy(FRAMES[1], extra)
    with LineRuntime(bundle, conf=CONF) as line:
        _, single = _run(line, source, tmp_path / "b1.jsonl", pipeline=False)
    batched = _batched_bundle(bundle, n)
    with LineRuntime(batched, conf=CONF) as line:
        assert line._batch == n
        seen: list[np.ndarray] = []
        infer = line.runner.infer

        def spy(batch, **kw):
            seen.append(batch.copy())
            return infer(batch, **kw)

        line.runner.infer = spy
        seq, seq_records = _run(line, source, tmp_path / "seq.jsonl", pipeline=False)
        seq_calls = len(seen)
        seen.clear()
        pip, pip_records = _run(line, source, tmp_path / "pip.jsonl", pipeline=True)
    # Identical verdicts: batch-1 model, batch-n model one frame at a time, batch-n model batched.
    assert _verdicts(pip_records) == _verdicts(seq_records) == _verdicts(single)
    assert len(pip_records) == 9 and pip.unreadable == seq.unreadable == 1
    _same_summaries(pip, seq)
    # Sequentially every frame fills a batch by itself; pipelined, consecutive frames share one.
    assert seq_calls == 9 and len(seen) == -(-9 // n)
    assert all(b.shape[0] == n for b in seen)
    first = seen[0]
    assert not np.array_equal(first[0], first[1]), "rows are distinct frames, not one frame repeated"
    last, real = seen[-1], 9 % n or n
    for row in range(real, n):  # the padding repeats the last real row; its outputs were dropped
        assert np.array_equal(last[row], last[real - 1])


# ------------------------------------------------------------------------------------------------- errors
def _no_pipeline_threads() -> bool:
    return not [t for t in threading.enumerate() if t.name.startswith("run:")]


def test_an_inference_error_in_the_worker_thread_is_one_clear_error(bundle, tmp_path):
    source = _frames_folder(tmp_path, copies=3)
    out = tmp_path / "err.jsonl"
    with LineRuntime(bundle, conf=CONF) as line:
        infer, calls = line.runner.infer, []

        def failing(batch, **kw):
            calls.append(1)
            if len(calls) == 3:
                raise ToolError("onnxruntime:model.onnx: inference failed: the device went away")
            return infer(batch, **kw)

        line.runner.infer = failing
        start = time.monotonic()
        with pytest.raises(ToolError, match="the device went away"):
            line.run(source, out_jsonl=out, log=_quiet)
        assert time.monotonic() - start < 20
    assert [r["frame"] for r in _records(out)] == ["f000.png", "f001.png"]  # the frames before it
    assert _no_pipeline_threads()


def test_a_letterbox_error_in_the_prepare_thread_surfaces_in_order(bundle, tmp_path):
    source = _frames_folder(tmp_path, copies=2)
    out = tmp_path / "err.jsonl"
    with LineRuntime(bundle, conf=CONF) as line:
        prepare, calls = line._prepare, []

        def failing(images):
            calls.append(1)
            if len(calls) == 4:
                raise InputError("image 0: a broken frame")
            return prepare(images)

        line._prepare = failing
        with pytest.raises(InputError, match="a broken frame"):
            line.run(source, out_jsonl=out, log=_quiet)
    assert len(_records(out)) == 3
    assert _no_pipeline_threads()


def test_a_worker_that_dies_without_a_word_does_not_hang():
    def frames():
        yield "a", np.zeros((8, 8, 3), np.uint8)

    pipe = FramePipeline(frames(), prepare=lambda imgs: (np.zeros((1,)), [None]), infer=lambda b: {})
    # An infer thread that ends at once, handing on nothing (a bug, or a backend that killed the thread).
    pipe._threads[1] = threading.Thread(target=lambda: None, name="run:infer")
    with pipe, pytest.raises(RuntimeError, match="run:infer thread ended without a result"):
        list(pipe)


# --------------------------------------------------------------------------------------------------- stop
def test_sigterm_drains_the_frames_already_taken_and_flushes_them(bundle, tmp_path):
    source = _frames_folder(tmp_path, copies=5)  # 20 frames
    out = tmp_path / "stop.jsonl"
    written: list[dict] = []

    class ListSink:
        def write(self, record: dict) -> None:
            written.append(record)

    before = signal.getsignal(signal.SIGTERM)
    with LineRuntime(bundle, conf=CONF) as line:
        infer, calls = line.runner.infer, []

        def infer_then_term(batch, **kw):
            calls.append(1)
            if len(calls) == 2:
                signal.raise_signal(signal.SIGTERM)  # arrives while frame 2 is inferred
            return infer(batch, **kw)

        line.runner.infer = infer_then_term
        summary = line.run(source, out_jsonl=out, sinks=[ListSink()], log=_quiet)
    records = _records(out)
    assert summary.interrupted and summary.images == len(records) == len(written) == len(calls)
    # Every frame taken from the source was inferred and written, in order, none skipped: a drain.
    assert [r["frame"] for r in records] == [f"f{i:03d}.png" for i in range(len(records))]
    assert written == records
    assert 2 <= summary.images <= 8, "at most a few batches are in flight when the stop arrives"
    assert signal.getsignal(signal.SIGTERM) == before
    assert _no_pipeline_threads()


def test_request_stop_ends_a_watched_folder_without_losing_a_taken_file(bundle, tmp_path):
    watched = tmp_path / "drop"
    watched.mkdir()
    out = tmp_path / "watch.jsonl"
    with LineRuntime(bundle, conf=CONF) as line:
        result: dict = {}
        run = threading.Thread(
            target=lambda: result.update(
                s=line.run(watched, out_jsonl=out, watch=True, poll_s=0.02, log=_quiet)
            )
        )
        run.start()
        time.sleep(0.2)
        for i, p in enumerate(FRAMES):
            shutil.copy(p, watched / f"w{i}.png")
        deadline = time.monotonic() + 20
        while (not out.exists() or len(_records(out)) < len(FRAMES)) and time.monotonic() < deadline:
            time.sleep(0.02)
        line.request_stop()
        run.join(timeout=20)
    assert not run.is_alive()
    assert result["s"].interrupted and result["s"].images == len(FRAMES) == len(_records(out))


def test_the_pipeline_runs_an_openvino_runner_in_its_thread_with_the_same_outputs(tmp_path):
    ov = pytest.importorskip("openvino")
    from edge_lora.runtime.openvino_rt import OpenVinoRunner
    from edge_lora.runtime.prepost import preprocess

    (src,) = [p for p in FIXTURE.iterdir() if (p / "manifest.json").is_file()]
    xml = tmp_path / "model.xml"
    ov.save_model(ov.convert_model(str(src / "model" / "model.onnx")), str(xml))
    images = [cv2.imread(str(p)) for p in FRAMES * 2]
    with OpenVinoRunner(xml, inference_precision="f32") as runner:
        want = [runner.infer(preprocess([img], 64)[0])["output0"] for img in images]
        frames = [(f"f{i}", img) for i, img in enumerate(images)]
        with FramePipeline(frames, prepare=lambda imgs: preprocess(imgs, 64), infer=runner.infer) as pipe:
            got = [(c.entries[0][0], next(iter(c.outputs.values()))) for c in pipe]
    assert [f for f, _ in got] == [f for f, _ in frames]
    for (_, out), ref in zip(got, want, strict=True):
        np.testing.assert_array_equal(out, ref)


def test_the_infer_thread_enters_the_runners_thread_context_around_its_calls(bundle, tmp_path):
    """TensorRT's CUDA context is current in one thread only: the infer thread binds it first."""
    source = _frames_folder(tmp_path, copies=1)
    events: list[tuple[str, str]] = []
    with LineRuntime(bundle, conf=CONF) as line:
        infer = line.runner.infer

        @contextlib.contextmanager
        def thread_context():
            events.append(("enter", threading.current_thread().name))
            yield
            events.append(("exit", threading.current_thread().name))

        def spy(batch, **kw):
            events.append(("infer", threading.current_thread().name))
            return infer(batch, **kw)

        line.runner.thread_context, line.runner.infer = thread_context, spy
        line.run(source, out_jsonl=tmp_path / "ctx.jsonl", log=_quiet)
    assert events == [("enter", "run:infer"), *[("infer", "run:infer")] * 4, ("exit", "run:infer")]
