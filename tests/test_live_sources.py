"""Live sources of ``edge-lora run`` (issue 13.2): streams, reconnect with back-off, the drop-oldest queue.

Two tiers:

* the source layer on its own (``runtime/live.py``) with fake captures: which sources are live, the
  drop-oldest queue (deterministic: the test hands the reader its frames), back-off, giving up, stopping;
* real streams served on loopback by the test (a small MJPEG-over-HTTP server, ``tests/mjpeg_server.py``,
  run as a process so it can be killed like a camera losing power; and ffmpeg's HTTP server when ffmpeg is
  installed) read by :class:`LineRuntime` with the tiny bundle of ``tests/fixtures/bundle_v1``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_lora.cli.main import main
from edge_lora.errors import EXIT_SOURCE_LOST, InputError, SourceLostError
from edge_lora.runtime import live
from edge_lora.runtime.frames import describe_source, is_live, iter_frames
from edge_lora.runtime.line import LineRuntime
from edge_lora.runtime.live import LiveSource, redact

TESTS = Path(__file__).resolve().parent
FIXTURE = TESTS / "fixtures" / "bundle_v1"
FRAMES_GLOB = str(FIXTURE / "frames" / "*.png")
FIXTURE_PX = 64  # the fixture frames' size: boxes of a frame of the restarted (larger) stream reach past it
FAST_BACKOFF = (0.02, 0.08)


def _quiet(_msg: str) -> None:
    pass


def _wait_for(cond: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# --------------------------------------------------------------------------------------------------------
# The source layer, with fake captures
# --------------------------------------------------------------------------------------------------------


class GatedCapture:
    """A capture whose frames the test hands out one by one (``give(n)``); ``fail()`` ends it like a drop."""

    def __init__(self) -> None:
        self._gate = threading.Semaphore(0)
        self._failed = False
        self.served = 0
        self.released = False
        #: A real stream's read returns within its read timeout; this one when its source is closed.
        self.source: LiveSource | None = None

    def give(self, n: int = 1) -> None:
        for _ in range(n):
            self._gate.release()

    def fail(self) -> None:
        self._failed = True
        self._gate.release()

    def isOpened(self) -> bool:  # noqa: N802 - cv2's name
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        while not self._gate.acquire(timeout=0.02):
            if self.source is not None and self.source.closed:
                return False, None
        if self._failed:
            return False, None
        self.served += 1
        return True, np.full((4, 4, 3), self.served % 256, np.uint8)

    def release(self) -> None:
        self.released = True


def _source(open_fn, *caps: GatedCapture, **kw) -> LiveSource:
    kw.setdefault("backoff_s", FAST_BACKOFF)
    kw.setdefault("log", _quiet)
    src = LiveSource("rtsp://cam/x", label="cam", open=open_fn, **kw)
    for cap in caps:
        cap.source = src
    return src


def test_which_sources_are_live_and_what_is_logged(tmp_path):
    assert is_live(0) and is_live("1") and is_live("rtsp://10.0.0.5/stream") and is_live("HTTP://cam/mjpg")
    assert is_live("videotestsrc ! videoconvert ! appsink")
    weird = tmp_path / "a!b.png"  # an existing file with '!' in its name is a file, not a pipeline
    cv2.imwrite(str(weird), np.zeros((8, 8, 3), np.uint8))
    assert not is_live(str(weird)) and len(list(iter_frames(str(weird)))) == 1
    assert not is_live(str(tmp_path)) and not is_live("imgs/*.png")
    # Credentials never reach a log line, a frame id or the summary.
    assert redact("rtsp://admin:secret@10.0.0.5:554/h264?token=x") == "rtsp://10.0.0.5:554/h264"
    assert describe_source("http://u:p@cam:8080/video.mjpg") == "http://cam:8080/video.mjpg"
    pipeline = "rtspsrc location=rtsp://admin:secret@cam/x ! decodebin ! appsink"
    assert "secret" not in describe_source(pipeline) and describe_source(pipeline).startswith("gstreamer: ")
    assert describe_source("imgs/*.png") == "imgs/*.png"


@pytest.mark.skipif(live.gstreamer_available(), reason="this OpenCV has GStreamer")
def test_gstreamer_pipeline_without_gstreamer_is_a_clear_input_error():
    with pytest.raises(InputError, match="this OpenCV build lacks GStreamer") as err:
        iter_frames("videotestsrc ! videoconvert ! appsink")
    assert err.value.exit_code == 2


def test_gstreamer_pipeline_must_end_in_appsink(monkeypatch):
    monkeypatch.setattr(live, "gstreamer_available", lambda: True)
    with pytest.raises(InputError, match="must end in 'appsink'"):
        iter_frames("videotestsrc ! autovideosink")
    src = iter_frames("videotestsrc ! videoconvert ! appsink drop=1 max-buffers=1")
    assert isinstance(src, LiveSource) and src.label == "gstreamer"


def test_drop_oldest_queue_keeps_the_newest_frames_and_counts_every_drop():
    cap = GatedCapture()
    src = _source(lambda _t: cap, cap, queue_size=3)
    with src:
        cap.give(1)
        assert next(src)[0] == "cam#0"  # starts the reader; nothing behind yet
        # Inference falls behind: 10 frames arrive while none is taken. The 3 newest are kept.
        cap.give(10)
        _wait_for(lambda: src.stats.read == 11, what="10 frames read")
        assert src.stats.dropped == 7
        assert [next(src)[0] for _ in range(3)] == ["cam#8", "cam#9", "cam#10"]
        # Keeping up again: nothing more is dropped.
        for i in range(11, 16):
            cap.give(1)
            assert next(src)[0] == f"cam#{i}"
        assert src.stats.dropped == 7 and src.stats.read == 16 and src.stats.outages == 0
    assert cap.released


def test_reconnect_backs_off_doubling_to_a_bound_and_counts_the_outage():
    first, second = GatedCapture(), GatedCapture()
    attempts: list[float] = []

    def open_fn(_target):
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            return first
        if len(attempts) < 7:  # down for 5 attempts
            return None
        return second

    src = _source(open_fn, first, second, reconnect_timeout_s=10)
    with src:
        first.give(2)
        assert [next(src)[0], next(src)[0]] == ["cam#0", "cam#1"]
        first.fail()
        second.give(2)
        assert [next(src)[0], next(src)[0]] == ["cam#2", "cam#3"]  # ids go on across the outage
        assert src.stats.outages == 1 and src.stats.reconnects == 1 and src.stats.outage_s > 0
    waits = np.diff(attempts[1:])  # the first reopen is at once; then 0.02, 0.04, 0.08, 0.08, 0.08
    assert len(waits) == 5
    for got, want in zip(waits, [0.02, 0.04, 0.08, 0.08, 0.08], strict=True):
        assert want * 0.9 <= got < want + 0.5, waits


def test_gives_up_after_the_reconnect_timeout_with_a_clear_message():
    cap = GatedCapture()
    opened = []

    def open_fn(_target):
        opened.append(1)
        return cap if len(opened) == 1 else None

    src = _source(open_fn, cap, reconnect_timeout_s=0.3, queue_size=5)
    with src:
        src.start()
        cap.give(3)
        _wait_for(lambda: src.stats.read == 3, what="3 frames")
        cap.fail()
        t0 = time.monotonic()
        # The frames read before the loss are still handed out, then the error.
        assert [f for f, _ in [next(src) for _ in range(3)]] == ["cam#0", "cam#1", "cam#2"]
        with pytest.raises(
            SourceLostError, match=r"lost and not back after 0\.\d s \(reconnect timeout 0.3 s\)"
        ):
            next(src)
        assert 0.25 <= time.monotonic() - t0 < 3
    assert src.stats.outages == 1 and src.stats.reconnects == 0 and src.stats.outage_s >= 0.25
    assert SourceLostError("x").exit_code == EXIT_SOURCE_LOST == 5


def test_a_source_that_never_opens_says_so():
    src = _source(lambda _t: None, reconnect_timeout_s=0.2)
    with src, pytest.raises(SourceLostError, match="cannot open live source cam"):
        next(src)
    assert src.stats.outages == 0  # it never delivered frames: not an outage


def test_should_stop_ends_the_source_while_the_stream_is_down():
    stop = threading.Event()
    src = _source(lambda _t: None, reconnect_timeout_s=60, should_stop=stop.is_set)
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    with src:
        assert list(src) == []
    assert time.monotonic() - t0 < 3


# --------------------------------------------------------------------------------------------------------
# Real streams on loopback, read by the line runtime
# --------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MjpegServer:
    """``tests/mjpeg_server.py`` as a process on a fixed port: killed with SIGKILL, started again there."""

    def __init__(self, fps: float = 30.0) -> None:
        self.port = _free_port()
        self.fps = fps
        self.proc: subprocess.Popen | None = None

    def url(self, auth: str = "") -> str:
        return f"http://{auth}127.0.0.1:{self.port}/stream.mjpg"

    def start(self, size: int | None = None, stall_after: int | None = None) -> None:
        cmd = [sys.executable, str(TESTS / "mjpeg_server.py"), "--port", str(self.port)]
        cmd += ["--frames", FRAMES_GLOB, "--fps", str(self.fps)] + (["--size", str(size)] if size else [])
        cmd += ["--stall-after", str(stall_after)] if stall_after else []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("ready"), line

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def server():
    srv = MjpegServer()
    yield srv
    srv.kill()


@pytest.fixture
def line_bundle(tmp_path: Path) -> Path:
    """A private copy of the tiny compatibility bundle (64 px, ONNX Runtime): fast to load and run."""
    (src,) = [p for p in FIXTURE.iterdir() if (p / "manifest.json").is_file()]
    return Path(shutil.copytree(src, tmp_path / src.name))


def _records(path: Path) -> list[dict]:
    """The whole lines written so far (the run may be writing the next one while this reads)."""
    if not path.exists():
        return []
    *whole, _partial = path.read_text().split("\n")
    return [json.loads(line) for line in whole]


def _max_coord(record: dict) -> float:
    return max((max(d["box"]) for d in record["detections"]), default=0.0)


def _assert_restarted_frames_follow(records: list[dict], before: int) -> None:
    """The frames of the first server run (64 px), then only those of the restarted one (160 px).

    ``before`` records were written when the outage was seen; a few frames read before it may still have
    been queued then (at most the queue plus the frame in inference), so the boundary lies at or after it.
    """
    big = [_max_coord(r) > FIXTURE_PX for r in records]
    first_new = big.index(True)
    assert before <= first_new <= before + 3, (before, first_new)
    assert all(big[first_new:]), "only frames of the restarted stream after the reconnect"
    assert len(records) - first_new >= 7, "frames after the restart are processed"


class Background:
    """``LineRuntime.run`` in a thread; ``result()`` gives its summary or raises what it raised."""

    def __init__(self, line: LineRuntime, source: str, **kw) -> None:
        self.out: dict = {}
        self.thread = threading.Thread(target=self._go, args=(line, source), kwargs=kw, daemon=True)
        self.thread.start()

    def _go(self, line, source, **kw) -> None:
        try:
            self.out["summary"] = line.run(source, log=_quiet, **kw)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            self.out["error"] = e

    def result(self, timeout: float = 30.0):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "run did not return"
        if "error" in self.out:
            raise self.out["error"]
        return self.out["summary"]


def test_mjpeg_stream_killed_and_restarted_mid_run(server, line_bundle, tmp_path):
    out = tmp_path / "live.jsonl"
    server.start()
    with LineRuntime(line_bundle, conf=0.3) as line:
        run = Background(line, server.url("operator:secret@"), out_jsonl=out, reconnect_timeout_s=20)
        _wait_for(lambda: len(_records(out)) >= 10, what="frames before the kill")
        server.kill()  # the camera loses power
        _wait_for(lambda: line.live_stats is not None and line.live_stats.outages == 1, what="the outage")
        before = len(_records(out))
        server.start(size=160)  # back, with larger frames so its frames are told apart
        _wait_for(lambda: len(_records(out)) >= before + 10, what="frames after the restart")
        line.request_stop()
        summary = run.result()
    records = _records(out)
    assert summary.outages == 1 and summary.outage_s > 0 and summary.interrupted
    assert summary.images == len(records) and summary.unreadable == 0 and summary.source_lost is None
    ids = [int(r["frame"].rsplit("#", 1)[1]) for r in records]
    assert ids == sorted(set(ids)), "frame ids are unique and in order across the reconnect"
    _assert_restarted_frames_follow(records, before)
    text = out.read_text() + json.dumps(summary.to_dict())
    assert "secret" not in text and "operator" not in text
    assert summary.source == server.url()


def test_stream_that_never_comes_back_exits_5_with_the_summary(server, line_bundle, tmp_path):
    out, summary_json = tmp_path / "live.jsonl", tmp_path / "summary.json"
    server.start()

    def kill_after_some_frames():
        _wait_for(lambda: len(_records(out)) >= 5, what="frames before the kill")
        server.kill()

    killer = threading.Thread(target=kill_after_some_frames, daemon=True)
    killer.start()
    args = ["run", str(line_bundle), "--source", server.url(), "--out", str(out), "--json", str(summary_json)]
    t0 = time.monotonic()
    res = CliRunner().invoke(main, [*args, "--reconnect-timeout", "1"])
    killer.join(5)
    assert res.exit_code == 5, res.output
    assert "lost and not back after" in res.output and "reconnect timeout 1 s" in res.output
    assert "stream outages" in res.output  # the summary table of what was processed before the loss
    assert time.monotonic() - t0 < 20
    summary = json.loads(summary_json.read_text())
    assert summary["outages"] == 1 and summary["images"] == len(_records(out)) >= 5
    assert "not back" in summary["source_lost"]


def test_a_stream_that_stalls_with_its_socket_open_is_an_outage(server, line_bundle, tmp_path, monkeypatch):
    """A frozen camera sends nothing but keeps the connection: FFmpeg's read timeout makes it an outage."""
    monkeypatch.setattr(live, "READ_TIMEOUT_MS", 500)
    server.start(stall_after=6)  # every connection: 6 frames, then silence
    with LineRuntime(line_bundle, conf=0.3) as line:
        summary = line.run(server.url(), max_frames=10, reconnect_timeout_s=10, log=_quiet)
    assert summary.images == 10 and summary.outages == 1 and line.live_stats.reconnects == 1


def test_slow_inference_drops_the_oldest_frames_of_a_real_stream(line_bundle, tmp_path):
    srv = MjpegServer(fps=200)
    srv.start()
    try:
        out = tmp_path / "slow.jsonl"
        with LineRuntime(line_bundle, conf=0.3) as line:
            infer = line.runner.infer

            def slow_infer(batch, **kw):
                time.sleep(0.05)  # ~20 frames/s of inference against a 200 frames/s camera
                return infer(batch, **kw)

            line.runner.infer = slow_infer
            summary = line.run(srv.url(), out_jsonl=out, max_frames=15, queue_size=2, log=_quiet)
            stats = line.live_stats
    finally:
        srv.kill()
    ids = [int(r["frame"].rsplit("#", 1)[1]) for r in _records(out)]
    assert summary.images == 15 and summary.outages == 0
    assert summary.dropped > 15 and summary.dropped == stats.dropped
    # The queue never held more than 2: every frame read was processed, dropped, or still queued at the stop.
    assert stats.read - summary.dropped - summary.images <= 2
    gaps = np.diff(ids)
    assert (gaps >= 1).all() and gaps.max() > 1, "newest frames taken, the backlog skipped"


def test_file_sources_still_process_every_frame_however_slow(line_bundle, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 64))
    for p in sorted((FIXTURE / "frames").glob("*.png")) * 3:
        writer.write(cv2.imread(str(p)))
    writer.release()
    with LineRuntime(line_bundle, conf=0.3) as line:
        infer = line.runner.infer
        line.runner.infer = lambda batch, **kw: (time.sleep(0.02), infer(batch, **kw))[1]
        for source, n in [(FIXTURE / "frames", 4), (FRAMES_GLOB, 4), (video, 12)]:
            out = tmp_path / f"{Path(str(source)).stem}.jsonl"
            summary = line.run(source, out_jsonl=out, log=_quiet)
            assert summary.images == len(_records(out)) == n, source
            assert summary.dropped == summary.outages == 0 and line.live_stats is None


def test_rtsp_url_goes_through_ffmpeg_and_a_dead_camera_is_reported(line_bundle):
    url = f"rtsp://admin:pw@127.0.0.1:{_free_port()}/cam"  # nothing listens there
    with LineRuntime(line_bundle) as line, pytest.raises(SourceLostError) as err:
        line.run(url, reconnect_timeout_s=0.5, log=_quiet)
    assert "cannot open live source rtsp://127.0.0.1:" in str(err.value) and "pw" not in str(err.value)
    assert err.value.summary.images == 0 and err.value.summary.source_lost == str(err.value)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_ffmpeg_http_stream_killed_and_restarted(line_bundle, tmp_path):
    """An MPEG-4 video in MPEG-TS served by ffmpeg's own HTTP server (one client per start, as a camera)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/cam.ts"

    def start(size: int) -> subprocess.Popen:
        cmd = [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-stream_loop",
            "-1",
            "-framerate",
            "25",
        ]
        cmd += ["-pattern_type", "glob", "-i", FRAMES_GLOB, "-vf", f"scale={size}:{size}", "-c:v", "mpeg4"]
        cmd += ["-q:v", "3", "-f", "mpegts", "-listen", "1", url]
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL)

    out = tmp_path / "ffmpeg.jsonl"
    proc = start(FIXTURE_PX)
    try:
        with LineRuntime(line_bundle, conf=0.3) as line:
            # ffmpeg listens a moment after it starts: the first open is retried like a reconnect.
            run = Background(line, url, out_jsonl=out, reconnect_timeout_s=20)
            _wait_for(lambda: len(_records(out)) >= 10, what="frames from ffmpeg")
            proc.kill()
            proc.wait()
            _wait_for(lambda: line.live_stats.outages == 1, what="the outage")
            before = len(_records(out))
            proc = start(160)
            _wait_for(lambda: len(_records(out)) >= before + 10, what="frames after the restart")
            line.request_stop()
            summary = run.result()
    finally:
        proc.kill()
        proc.wait()
    records = _records(out)
    assert summary.outages == 1 and summary.images == len(records)
    _assert_restarted_frames_follow(records, before)
