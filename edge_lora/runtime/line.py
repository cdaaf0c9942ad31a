"""The factory-line runtime behind ``edge-lora run``: a verified bundle, frames in, one JSON line per frame out.

Torch- and Ultralytics-free (numpy, OpenCV, pydantic and the bundle's backend only), so it runs on a line PC
or a Jetson with the ``runtime`` extra::

    from edge_lora.runtime.line import LineRuntime

    with LineRuntime("dist/line_b-cpu-onnxruntime") as line:
        summary = line.run("/data/camera_drop", out_jsonl="results.jsonl", watch=True)
    print(summary.to_dict())

What it guarantees:

* the bundle is verified first (schema, every file's sha256, no stray files); a tampered bundle is refused,
  and a bundle whose build failed is refused unless ``allow_failed``;
* the model runs exactly as validated: the manifest's runner settings, input size, letterbox and decoding;
* one JSON line per readable frame, flushed as it is written::

      {"frame": "img_0001.png", "detections": [{"class": 0, "name": "scratch", "score": 0.91,
       "box": [x1, y1, x2, y2]}], "verdict": "reject", "reasons": {"scratch": 1},
       "latency_ms": {"pre": 0.4, "infer": 3.1, "post": 0.1, "total": 3.6}}

  ``detections`` are those above their class's deployment threshold; the verdict is ``reject`` when one of
  them is of a defect class, and ``reasons`` counts them per class name;
* an unreadable frame is logged to stderr, counted and skipped, never a crash;
* memory stays flat on a run of any length: running counters and a bounded latency window (the last
  ``latency_window`` frames) instead of per-frame results;
* Ctrl-C (or SIGTERM) takes no more frames from the source and finishes those already taken (the current
  frame, or with the pipeline the few in flight), then :meth:`LineRuntime.run` returns the summary; a second
  Ctrl-C stops at once;
* pipelined by default (:mod:`edge_lora.runtime.pipeline`): the next frames are decoded and letterboxed, and
  the model runs, in their own threads while this one decodes and writes, in order; a model with a fixed
  batch above 1 gets consecutive frames batched. ``run(pipeline=False)`` takes one frame at a time; both give
  the same records.

The frame sources (folder, glob, video, watched folder, and the live ones: camera, RTSP/HTTP stream, GStreamer
pipeline) are in :mod:`edge_lora.runtime.frames`; their names are re-exported here. A live source is read by a
thread into a bounded queue that drops the oldest frame when inference falls behind, and reconnects after an
outage; the summary counts the drops and outages (``dropped``, ``outages``, ``outage_s``), and a source that
does not come back within ``reconnect_timeout_s`` raises :class:`~edge_lora.errors.SourceLostError` with the
run's summary attached (``err.summary``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from edge_lora.bundle.manifest import BundleError, Manifest
from edge_lora.bundle.pack import load_verified
from edge_lora.errors import InputError, SourceLostError
from edge_lora.fileio import atomic_write_bytes

# The frame sources moved to runtime/frames.py; `from edge_lora.runtime.line import iter_frames` still works.
from edge_lora.runtime.frames import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    StreamStats,
    _stderr,
    describe_source,
    iter_frames,
    read_image,
    watch_frames,
)
from edge_lora.runtime.loader import load_runner
from edge_lora.runtime.pipeline import FramePipeline
from edge_lora.runtime.prepost import Detections, LetterboxInfo, postprocess, preprocess
from edge_lora.runtime.sinks import JsonlSink
from edge_lora.runtime.timing import LatencyStats

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "LineRuntime",
    "RunSummary",
    "iter_frames",
    "read_image",
    "watch_frames",
]

# --------------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """Counters of one run; nothing per frame is kept.

    Attributes:
        bundle: bundle folder. source: what was read.
        images: readable frames processed. unreadable: frames skipped because they could not be decoded.
        rejects: frames with a verdict of ``reject``.
        defects: counted detections of defect classes, per class name.
        detections: counted detections of every class, per class name.
        latency: ``{"total": LatencyStats, "infer": LatencyStats}`` over the last ``latency_window`` frames
            (``total`` = preprocess + inference + decoding; image decoding excluded, as in validation).
        interrupted: stopped by Ctrl-C/SIGTERM. elapsed_s: wall time of the run.
        dropped: live source only: frames dropped (oldest first) because inference fell behind.
        outages: live source only: times the stream was lost. outage_s: seconds without the stream.
        source_lost: the message of the live source given up on, else None.
    """

    bundle: str
    source: str
    images: int = 0
    unreadable: int = 0
    rejects: int = 0
    defects: dict[str, int] = field(default_factory=dict)
    detections: dict[str, int] = field(default_factory=dict)
    latency: dict[str, LatencyStats] = field(default_factory=dict)
    latency_window: int = 0
    interrupted: bool = False
    elapsed_s: float = 0.0
    dropped: int = 0
    outages: int = 0
    outage_s: float = 0.0
    source_lost: str | None = None

    @property
    def passes(self) -> int:
        return self.images - self.rejects

    @property
    def frames(self) -> int:
        """Frames taken from the source, readable or not."""
        return self.images + self.unreadable

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "source": self.source,
            "frames": self.frames,
            "images": self.images,
            "unreadable": self.unreadable,
            "rejects": self.rejects,
            "passes": self.passes,
            "reject_rate": self.rejects / self.images if self.images else 0.0,
            "defects": dict(self.defects),
            "detections": dict(self.detections),
            "latency_ms": {k: v.to_dict() for k, v in self.latency.items()},
            "latency_window": self.latency_window,
            "interrupted": self.interrupted,
            "elapsed_s": self.elapsed_s,
            "fps": self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0,
            "dropped": self.dropped,
            "outages": self.outages,
            "outage_s": round(self.outage_s, 3),
            "source_lost": self.source_lost,
        }


# --------------------------------------------------------------------------------------------------------
# Runtime
# --------------------------------------------------------------------------------------------------------


def _annotated_name(frame_id: str) -> str:
    name = frame_id.replace("\\", "/").strip("/").replace("/", "__").replace("#", "_").replace(":", "_")
    return name if Path(name).suffix.lower() in IMAGE_SUFFIXES else f"{name}.jpg"


class LineRuntime:
    """Run a verified deploy bundle on frames.

    Args:
        bundle_dir: the bundle folder.
        allow_failed: run a bundle whose build marked it failed (its integrity is still checked).
        settings_override: runner settings replacing the manifest's (e.g. ``{"intra_op_threads": 2}``).
        conf: one deployment threshold for every class instead of the manifest's per-class ones.
        latency_window: how many recent frames the latency percentiles cover.

    Raises:
        BundleError: the bundle is missing, tampered with, failed (without ``allow_failed``), has no primary
            artifact, or its engine is not built yet. ModelError/ToolError: the runner cannot load.
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        *,
        allow_failed: bool = False,
        settings_override: Mapping[str, Any] | None = None,
        conf: float | None = None,
        latency_window: int = 10_000,
    ):
        self.bundle_dir = Path(bundle_dir)
        self.manifest: Manifest = load_verified(self.bundle_dir, allow_failed=allow_failed)
        primary = self.manifest.primary
        if primary is None:
            raise BundleError(f"bundle {self.bundle_dir} has no primary artifact to run")
        self.artifact = primary
        run_path = self.bundle_dir / primary.run_path
        if not run_path.exists():
            steps = " && ".join(self.manifest.on_device_steps) or "(the manifest lists no steps)"
            raise BundleError(f"{run_path} is not built yet; on this device run first: {steps}")
        if conf is not None and not 0 <= conf <= 1:
            raise InputError(f"conf must lie in [0, 1], got {conf}")
        if latency_window < 1:
            raise InputError(f"latency_window must be >= 1, got {latency_window}")
        self.settings = {**primary.runner_settings, **(settings_override or {})}
        self.runner = load_runner(run_path, **self.settings)
        self.latency_window = int(latency_window)

        m = self.manifest
        self.names: dict[int, str] = dict(m.classes)
        self.nc = max(self.names) + 1
        thresholds = {c: (conf if conf is not None else t) for c, t in m.thresholds.conf.items()}
        # Per class id: the threshold (unknown ids never count) and whether it is a defect.
        self._thr = np.full(self.nc, np.inf, dtype=np.float32)
        for c, t in thresholds.items():
            self._thr[c] = t
        self._defect = np.zeros(self.nc, dtype=bool)
        self._defect[m.thresholds.defect_classes] = True
        self.thresholds = thresholds
        # Decode at the lowest threshold in use, then apply each class's own.
        self.decode_conf = float(min(m.postprocessing.conf, *thresholds.values()))
        self._fp16 = False
        self._batch = 1
        self._stop = False
        #: The live source's counters while :meth:`run` reads one (drops, outages), else None.
        self.live_stats: StreamStats | None = None

    # ---------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> LineRuntime:
        self.activate()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def activate(self) -> None:
        """Load the model into its backend and check its input fits the manifest. Idempotent."""
        if self.runner.is_active:
            return
        self.runner.activate()
        try:
            inputs = self.runner.input_metadata()
            if len(inputs) != 1:
                raise BundleError(f"{self.runner.path}: expected one model input, found {list(inputs)}")
            dtype, shape = next(iter(inputs.values()))
            h, w = self.manifest.imgsz
            if len(shape) != 4 or any(
                d is not None and d != want for d, want in zip(shape[2:], (h, w), strict=True)
            ):
                raise BundleError(
                    f"{self.runner.path}: model input {shape} does not fit the manifest's imgsz {[h, w]}"
                )
            self._fp16 = dtype == np.float16
            self._batch = shape[0] if isinstance(shape[0], int) and shape[0] > 1 else 1
        except BaseException:
            self.runner.deactivate()
            raise

    def close(self) -> None:
        """Release the backend. Idempotent."""
        self.runner.deactivate()

    # ------------------------------------------------------------------------------------------ a frame
    def detect(self, image_bgr: np.ndarray) -> tuple[Detections, dict[str, float]]:
        """Counted detections of one BGR image (above their class's threshold) and the stage latencies (s)."""
        self.activate()
        t0 = time.perf_counter()
        batch, infos = self._prepare([image_bgr])
        t1 = time.perf_counter()
        outputs = self.runner.infer(batch)
        t2 = time.perf_counter()
        det = self._decode(outputs, infos, 1)[0]
        t3 = time.perf_counter()
        return det, {"pre": t1 - t0, "infer": t2 - t1, "post": t3 - t2, "total": t3 - t0}

    def _prepare(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[LetterboxInfo]]:
        """Letterbox ``images`` (at most the model's batch) into one input batch of the model's batch size."""
        batch, infos = preprocess(images, self.manifest.imgsz, fp16=self._fp16)
        pad = self._batch - len(images)
        # A fixed-batch export: fill the batch with copies of the last frame; their outputs are dropped.
        if pad > 0:
            batch = np.ascontiguousarray(np.concatenate([batch, np.repeat(batch[-1:], pad, axis=0)]))
            infos = infos + [infos[-1]] * pad
        return batch, infos

    def _decode(
        self, outputs: Mapping[str, np.ndarray], infos: list[LetterboxInfo], n: int
    ) -> list[Detections]:
        """Counted detections of the first ``n`` rows of a batch's outputs (the rest are padding)."""
        post = self.manifest.postprocessing
        first = next(iter(outputs.values()))
        dets = postprocess(
            first[:n],
            infos[:n],
            end2end=post.end2end,
            conf=self.decode_conf,
            iou=post.iou,
            max_det=post.max_det,
            nc=None if post.end2end else self.nc,
        )
        out = []
        for det in dets:
            known = det.class_ids < self.nc
            thr = np.full(len(det), np.inf, dtype=np.float32)
            thr[known] = self._thr[det.class_ids[known]]
            keep = det.scores > thr
            out.append(Detections(det.boxes[keep], det.scores[keep], det.class_ids[keep]))
        return out

    def process(self, image_bgr: np.ndarray, frame_id: str = "") -> dict[str, Any]:
        """The JSON record of one frame: detections, verdict, reasons, latency in ms."""
        return self._process(image_bgr, frame_id)[0]

    def _process(self, image_bgr: np.ndarray, frame_id: str) -> tuple[dict[str, Any], dict[str, float]]:
        det, lat = self.detect(image_bgr)
        return self._record(frame_id, det, lat), lat

    def _record(self, frame_id: str, det: Detections, lat: Mapping[str, float]) -> dict[str, Any]:
        detections, reasons = [], {}
        for box, score, cls in zip(
            det.boxes.tolist(), det.scores.tolist(), det.class_ids.tolist(), strict=True
        ):
            name = self.names.get(cls, f"class_{cls}")
            detections.append(
                {"class": cls, "name": name, "score": round(score, 4), "box": [round(v, 1) for v in box]}
            )
            if cls < self.nc and self._defect[cls]:
                reasons[name] = reasons.get(name, 0) + 1
        return {
            "frame": frame_id,
            "detections": detections,
            "verdict": "reject" if reasons else "pass",
            "reasons": reasons,
            "latency_ms": {k: round(v * 1e3, 3) for k, v in lat.items()},
        }

    def annotate(self, image_bgr: np.ndarray, record: Mapping[str, Any]) -> np.ndarray:
        """A copy of the frame with boxes and ``name score`` labels (defects red, others green)."""
        img = image_bgr.copy()
        scale = max(img.shape[:2]) / 640
        thick = max(1, round(2 * scale))
        defect_names = set(self.manifest.defect_names)
        for d in record["detections"]:
            x1, y1, x2, y2 = (round(v) for v in d["box"])
            color = (0, 0, 255) if d["name"] in defect_names else (0, 200, 0)
            cv2.rectangle(img, (x1, y1), (x2, y2), color, thick)
            label = f"{d['name']} {d['score']:.2f}"
            font = max(0.35, 0.5 * scale)
            (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
            ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + 2
            cv2.rectangle(img, (x1, ty - th - base), (x1 + tw, ty + base - 1), color, -1)
            cv2.putText(
                img, label, (x1, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 1, cv2.LINE_AA
            )
        banner = record["verdict"].upper()
        cv2.putText(
            img,
            banner,
            (4, 4 + round(16 * max(scale, 0.5))),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.6 * max(scale, 0.5),
            (0, 0, 255) if banner == "REJECT" else (0, 200, 0),
            thick,
            cv2.LINE_AA,
        )
        return img

    # ------------------------------------------------------------------------------------------- a run
    def request_stop(self) -> None:
        """Ask a running :meth:`run` to stop after the current frame (thread-safe)."""
        self._stop = True

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self._stop = True

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def run(
        self,
        source: str | int | Path,
        *,
        out_jsonl: str | Path | IO[str] | None = None,
        save_annotated: str | Path | None = None,
        watch: bool = False,
        poll_s: float = 0.5,
        max_frames: int | None = None,
        idle_timeout_s: float | None = None,
        queue_size: int = 2,
        reconnect_timeout_s: float = 30.0,
        log: Callable[[str], None] = _stderr,
        sinks: Sequence[Any] = (),
        pipeline: bool = True,
    ) -> RunSummary:
        """Process every frame of ``source`` and return the summary.

        Args:
            source: see :func:`iter_frames`; with ``watch`` a folder whose new images are processed as they
                arrive (see :func:`watch_frames`).
            out_jsonl: file to append JSON lines to, or an open text stream; None writes to stdout.
            save_annotated: folder for annotated copies of the frames (created).
            watch: keep watching the folder until Ctrl-C, ``max_frames`` or ``idle_timeout_s``.
            poll_s: watch poll interval in seconds.
            max_frames: stop after this many frames (readable or not).
            idle_timeout_s: with ``watch``, stop after this many seconds without a new file.
            queue_size: live source: frames waiting for inference; when full the oldest is dropped.
            reconnect_timeout_s: live source: give up after failing to reconnect for this many seconds.
            log: where messages (unreadable frames, outages, stopping) go; stderr by default.
            sinks: more sinks fed every record after its JSON line (objects with ``write(record)``, e.g.
                :class:`~edge_lora.runtime.mqtt_sink.MqttSink`, :class:`~edge_lora.runtime.metrics.LineMetrics`);
                the caller opens and closes them.
            pipeline: decode + letterbox the next frames in one thread and run the model in another,
                overlapped with decoding and writing, and batch consecutive frames when the model's batch
                is fixed above 1 (see :mod:`edge_lora.runtime.pipeline`); the records, their order and
                verdicts are those of the sequential path (False), which takes one frame at a time.
                A stop lets the frames already taken from the source finish (at most a few batches).

        Raises:
            SourceLostError: the live source did not come back within ``reconnect_timeout_s``; the frames
                read before are processed and written, and ``err.summary`` is the run's summary.
        """
        if max_frames is not None and max_frames < 1:
            raise InputError(f"max_frames must be >= 1, got {max_frames}")
        self._stop = False
        halt = threading.Event()  # set when the run ends for any reason (the pipeline's threads stop too)

        def should_stop() -> bool:
            return self._stop or halt.is_set()

        frames = (
            watch_frames(
                source, poll_s=poll_s, idle_timeout_s=idle_timeout_s, should_stop=should_stop, log=log
            )
            if watch
            else iter_frames(
                source,
                queue_size=queue_size,
                reconnect_timeout_s=reconnect_timeout_s,
                should_stop=should_stop,
                log=log,
            )
        )
        self.live_stats = getattr(frames, "stats", None)
        annotated_dir = Path(save_annotated) if save_annotated is not None else None
        if annotated_dir is not None:
            annotated_dir.mkdir(parents=True, exist_ok=True)
        summary = RunSummary(bundle=str(self.bundle_dir), source=describe_source(source))
        total_s: deque[float] = deque(maxlen=self.latency_window)
        infer_s: deque[float] = deque(maxlen=self.latency_window)
        self.activate()
        sink = JsonlSink(out_jsonl)
        start = time.perf_counter()

        def emit(
            frame_id: str, image: np.ndarray | None, record: dict | None, lat: Mapping[str, float]
        ) -> None:
            """Write and count one frame's record, or count it unreadable (both paths share this)."""
            if record is None:
                summary.unreadable += 1
                log(f"skipped unreadable frame {frame_id}")
                return
            sink.write(record)
            for extra in sinks:  # MQTT, metrics (issue 13.4): after the JSON line
                extra.write(record)
            summary.images += 1
            if record["verdict"] == "reject":
                summary.rejects += 1
            for name, n in record["reasons"].items():
                summary.defects[name] = summary.defects.get(name, 0) + n
            for d in record["detections"]:
                summary.detections[d["name"]] = summary.detections.get(d["name"], 0) + 1
            total_s.append(lat["total"])
            infer_s.append(lat["infer"])
            if annotated_dir is not None and image is not None:
                self._save_annotated(annotated_dir, image, record)

        try:
            with self._signals():
                try:
                    if pipeline:
                        self._run_pipelined(frames, emit, max_frames, should_stop, halt)
                    else:
                        self._run_sequential(frames, emit, summary, max_frames)
                except KeyboardInterrupt:
                    summary.interrupted = True
                summary.interrupted = summary.interrupted or self._stop  # also when stopped between frames
        except SourceLostError as e:
            summary.source_lost = str(e)
            lost = e
        else:
            lost = None
        finally:
            halt.set()  # a source waiting for a frame gives up now
            close = getattr(frames, "close", None)
            if close is not None:
                close()
            sink.close()
            if self.live_stats is not None:
                summary.dropped = self.live_stats.dropped
                summary.outages = self.live_stats.outages
                summary.outage_s = self.live_stats.outage_s
        if summary.interrupted:
            log(f"interrupted after {summary.frames} frames")
        summary.elapsed_s = time.perf_counter() - start
        if total_s:
            summary.latency = {
                "total": LatencyStats.from_samples(np.fromiter(total_s, float)),
                "infer": LatencyStats.from_samples(np.fromiter(infer_s, float)),
            }
        summary.latency_window = len(total_s)
        if lost is not None:
            lost.summary = summary  # type: ignore[attr-defined]
            raise lost
        return summary

    def _run_sequential(self, frames, emit, summary: RunSummary, max_frames: int | None) -> None:
        """One frame at a time: decode, letterbox, infer, decode, write."""
        for frame_id, image in frames:
            if image is None:
                emit(frame_id, None, None, {})
            else:
                record, lat = self._process(image, frame_id)
                emit(frame_id, image, record, lat)
            if max_frames is not None and summary.frames >= max_frames:
                break
            if self._stop:
                break

    def _run_pipelined(
        self, frames, emit, max_frames: int | None, should_stop, halt: threading.Event
    ) -> None:
        """Frames through :class:`FramePipeline`: the next batch is prepared and inferred while this one is
        decoded and written; each frame's latency is its batch's letterbox and inference time plus its own
        decoding."""
        with FramePipeline(
            frames,
            prepare=self._prepare,
            infer=self.runner.infer,
            infer_context=getattr(self.runner, "thread_context", contextlib.nullcontext),
            batch_size=self._batch,
            max_frames=max_frames,
            should_stop=should_stop,
        ) as pipe:
            try:
                for chunk in pipe:
                    t0 = time.perf_counter()
                    dets = self._decode(chunk.outputs, chunk.infos, chunk.rows) if chunk.rows else []
                    post = (time.perf_counter() - t0) / max(chunk.rows, 1)  # decoding is per row: share it
                    lat = {"pre": chunk.pre_s, "infer": chunk.infer_s, "post": post}
                    lat["total"] = chunk.pre_s + chunk.infer_s + post
                    for frame_id, image, row in chunk.entries:
                        if row is None:
                            emit(frame_id, None, None, {})
                        else:
                            emit(frame_id, image, self._record(frame_id, dets[row], lat), lat)
            finally:
                halt.set()  # before the pipeline joins its threads: a source waiting for a frame gives up

    def _save_annotated(self, folder: Path, image: np.ndarray, record: Mapping[str, Any]) -> None:
        name = _annotated_name(str(record["frame"]))
        ok, buf = cv2.imencode(Path(name).suffix, self.annotate(image, record))
        if not ok:
            name = f"{name}.jpg"
            ok, buf = cv2.imencode(".jpg", self.annotate(image, record))
        # Atomic: a consumer watching the folder never sees half an image, and a full disk leaves none.
        atomic_write_bytes(folder / name, buf.tobytes())
