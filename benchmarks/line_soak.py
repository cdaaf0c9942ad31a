"""Line soak (issue 13; not CI): ``edge-lora run`` on a looping MJPEG stream for 10,000 frames, publishing every
verdict to an MQTT broker that is restarted twice mid-run.

Everything runs on 127.0.0.1 and is stopped at the end:

* the stream: ``tests/mjpeg_server.py`` looping the DeepPCB new-board val images (``--images`` for another
  glob) at ``--fps``;
* the broker: amqtt (``tests/line_helpers.Broker``), reached by the station through ``line_helpers.Relay``.
  The relay stays closed while the broker is down and opens only once the soak's subscriber has subscribed
  to the restarted broker: an in-memory broker forgets subscriptions on a restart, and a verdict published
  before anyone subscribes again would be lost by the broker, not by the station (the same order as
  ``tests/test_line_mqtt.py``);
* a subscriber (paho, ``line_helpers.Subscriber``) keeping every message (payload, with its ``replay`` mark)
  in memory;
* ``edge-lora run BUNDLE --source http://... --max-frames N --mqtt ... --spool ... --metrics-port ...``
  as a subprocess; its RSS (``/proc/PID/status`` VmRSS) and ``/healthz`` (frames so far; it reports no
  memory) are sampled every second. The broker is SIGKILLed at ``--restart-at`` fractions of the frames
  (default 30 % and 65 %) and started again ``--down-s`` seconds later; the next restart waits until the
  station is connected again (``edge_lora_mqtt_connected`` on ``/metrics``), so each is its own outage.

At the end the JSON lines the run wrote are compared with what the subscriber received. Frame ids are
``http://HOST:PORT/#n``, ``n`` counting every frame the live source read (dropped ones too), so order, gaps
(queue drops) and loss are all checkable from the id; ``n`` modulo the number of looped images also names
the image, so the records of one image can be compared across loops.

    nice -n 15 .venv/bin/python benchmarks/line_soak.py                     # the fixture bundle, 10,000 frames
    nice -n 15 .venv/bin/python benchmarks/line_soak.py --bundle dist/B --frames 2000

Writes ``line_soak.json`` and ``line_soak.md`` into ``--results`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import NEWBOARDS, REPO  # noqa: E402
from machine import machine_details, markdown_details  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
from line_helpers import Broker, Relay, Subscriber, free_port, wait_for  # noqa: E402

TOPIC = "soak/verdicts"
FIXTURE_BUNDLE = REPO / "tests" / "fixtures" / "bundle_v1" / "line_b-cpu-fixture"
WORK = REPO / "benchmarks" / "work" / "line_soak"


def image_glob(folder: Path) -> str:
    """A folder of symlinks to the new-board val images (in the list's order); returns its glob."""
    root = NEWBOARDS.parent
    folder.mkdir(parents=True, exist_ok=True)
    for i, line in enumerate((root / "newboards_val.txt").read_text().split()):
        link = folder / f"{i:04d}_{Path(line).name}"
        if not link.exists():
            os.symlink((root / line).resolve(), link)
    return str(folder / "*.jpg")


class Sampler:
    """Samples a process's VmRSS, the run's ``/healthz`` and two MQTT gauges of its ``/metrics`` every
    ``period_s`` in a thread."""

    def __init__(self, pid: int, metrics_port: int, period_s: float = 1.0) -> None:
        self.pid, self.port, self.period_s = pid, metrics_port, period_s
        self.samples: list[dict[str, Any]] = []
        self.frames = 0  # the latest /healthz frame count
        self.mqtt = {"connected": 0.0, "pending": 0.0}  # the latest edge_lora_mqtt_* gauges
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _rss_kb(self) -> int | None:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None

    def _healthz(self) -> dict[str, Any] | None:
        url = f"http://127.0.0.1:{self.port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # 503 still carries the body
            return json.loads(e.read())
        except (OSError, ValueError):
            return None

    def _metrics(self) -> None:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(url, timeout=2) as r:
            for line in r.read().decode().splitlines():
                name, _, value = line.partition(" ")
                if name.removeprefix("edge_lora_mqtt_") in self.mqtt:
                    self.mqtt[name.removeprefix("edge_lora_mqtt_")] = float(value)

    def _loop(self) -> None:
        while not self._stop.is_set():
            rss, health = self._rss_kb(), self._healthz()
            self._metrics()
            if health is not None:
                self.frames = int(health["frames"])
            if rss is not None:
                self.samples.append(
                    {
                        "t": round(time.monotonic() - self._t0, 2),
                        "rss_kb": rss,
                        "frames": self.frames,
                        "mqtt_pending": int(self.mqtt["pending"]),
                        "serving": health is not None,  # False before /healthz is up and while closing
                        "load1": round(os.getloadavg()[0], 2),  # the host is shared: its load, for context
                    }
                )
            self._stop.wait(self.period_s)

    def stop(self) -> None:
        """Stop sampling (the last sample is kept)."""
        self._stop.set()
        self._thread.join(5)


def _spooled(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {json.loads(x)["frame"] for x in path.read_text().splitlines() if x.strip()}


def _shape(pattern: str) -> list[int]:
    import cv2

    return list(cv2.imread(sorted(glob.glob(pattern))[0]).shape)


def _frame_n(frame_id: str) -> int:
    return int(frame_id.rsplit("#", 1)[1])


def delivery(records: list[dict], messages: list[dict], n_images: int, spooled: set[str]) -> dict[str, Any]:
    """What the subscriber got against what the run wrote: lost, unmarked duplicates, order, payload.

    ``spooled``: the frame ids left in the spool file at the end (kept for the next run, not lost).
    """
    index = {r["frame"]: i for i, r in enumerate(records)}
    seen: set[str] = set()
    dup_marked = dup_unmarked = out_of_order = mismatched = unknown = 0
    replay_marked = sum(1 for m in messages if m.get("replay") is True)
    last = -1
    for m in messages:
        f = m.get("frame")
        if f not in index:
            unknown += 1
            continue
        if {k: v for k, v in m.items() if k != "replay"} != records[index[f]]:
            mismatched += 1
        if f in seen:
            dup_marked += m.get("replay") is True
            dup_unmarked += m.get("replay") is not True
            continue
        seen.add(f)
        out_of_order += index[f] < last  # a first arrival behind one already delivered
        last = max(last, index[f])
    lost = [r["frame"] for r in records if r["frame"] not in seen]
    ns = [_frame_n(r["frame"]) for r in records]
    steps = np.diff(ns) if len(ns) > 1 else np.array([], dtype=int)
    # The same looped image should give the same record (detections and verdict) every time round.
    per_image: dict[int, set[str]] = {}
    for n, r in zip(ns, records, strict=True):
        per_image.setdefault(n % n_images, set()).add(json.dumps([r["detections"], r["verdict"]]))
    return {
        "records": len(records),
        "messages": len(messages),
        "distinct_received": len(seen),
        "not_received": len(lost),
        "not_received_left_in_spool": sum(1 for f in lost if f in spooled),
        "lost": sum(1 for f in lost if f not in spooled),
        "lost_first": [f for f in lost if f not in spooled][:10],
        "duplicates_marked_replay": int(dup_marked),
        "duplicates_not_marked": int(dup_unmarked),
        "replay_marked_messages": replay_marked,
        "out_of_order": int(out_of_order),
        "payload_mismatch": mismatched,
        "unknown_frames": unknown,
        "ids_increasing": bool((steps > 0).all()),
        # Ids not processed before the last verdict (ids start at 0): each must be a counted drop.
        "id_gaps": int((steps - 1).clip(min=0).sum()) + (ns[0] if ns else 0),
        "images_with_differing_records": sum(1 for v in per_image.values() if len(v) > 1),
    }


def rss_stats(samples: list[dict], frames: int, warmup: float) -> dict[str, Any]:
    """RSS (MiB) after warm-up: the samples once ``warmup`` of the frames were done, while ``/healthz`` answers
    and before the last frame (after it the run is closing): min, max, first, last, flatness and the trend."""
    after = [s for s in samples if warmup * frames <= s["frames"] < frames and s["serving"]]
    if len(after) < 2:
        return {"samples": len(after)}
    mb = np.array([s["rss_kb"] for s in after]) / 1024
    fr = np.array([s["frames"] for s in after], dtype=float)
    slope = float(np.polyfit(fr, mb, 1)[0]) * 1000 if np.ptp(fr) > 0 else 0.0
    med = float(np.median(mb))
    return {
        "samples": len(after),
        "warmup_frames": int(warmup * frames),
        "first_mib": round(float(mb[0]), 2),
        "last_mib": round(float(mb[-1]), 2),
        "min_mib": round(float(mb.min()), 2),
        "max_mib": round(float(mb.max()), 2),
        "median_mib": round(med, 2),
        "flatness": round(float(mb.max() - mb.min()) / med, 4),
        "slope_mib_per_1000_frames": round(slope, 3),
        "all_samples": len(samples),
        "peak_mib_all_samples": round(max(s["rss_kb"] for s in samples) / 1024, 2),
    }


def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Run the soak; returns everything measured (the JSON document, less machine details)."""
    pattern = args.images or image_glob(work / "images")
    n_images = len(glob.glob(pattern))
    out, summary_path, log_path = work / "out.jsonl", work / "summary.json", work / "run.log"
    spool = work / "spool"
    for p in (out, summary_path, spool / "mqtt-spool-soak.jsonl"):
        p.unlink(missing_ok=True)
    py = sys.executable
    stream_port, metrics_port = free_port(), free_port()
    server = subprocess.Popen(
        [py, str(REPO / "tests" / "mjpeg_server.py"), "--port", str(stream_port), "--frames", pattern]
        + ["--fps", str(args.fps)],
        stdout=subprocess.PIPE,
        text=True,
    )
    broker = Broker(work)
    relay: Relay | None = None
    subs: list[Subscriber] = []
    messages: list[dict] = []
    run = sampler = None
    restarts: list[dict[str, Any]] = []
    try:
        assert server.stdout is not None and server.stdout.readline().startswith("ready"), "no MJPEG server"
        broker.start()
        relay = Relay(broker.port)
        subs.append(Subscriber(broker.port, TOPIC, messages))
        cmd = [
            str(Path(py).parent / "edge-lora"),
            *("run", str(args.bundle), "--source", f"http://127.0.0.1:{stream_port}/"),
            *("--max-frames", str(args.frames), "--out", str(out), "--json", str(summary_path)),
            *("--mqtt", f"mqtt://127.0.0.1:{relay.port}/{TOPIC}", "--station", "soak", "--spool", str(spool)),
            *("--metrics-port", str(metrics_port), "--metrics-addr", "127.0.0.1"),
        ]
        start = time.monotonic()
        with log_path.open("w") as log:
            run = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        sampler = Sampler(run.pid, metrics_port)
        limit = start + args.frames / args.fps * 4 + 300
        for frac in args.restart_at:
            at = int(frac * args.frames)
            wait_for(
                lambda at=at: sampler.frames >= at or run.poll() is not None,
                limit - time.monotonic(),
                f"frame {at}",
            )
            if run.poll() is not None:
                break
            rec: dict[str, Any] = {"at_fraction": frac, "frames_at_kill": sampler.frames}
            rec["t_kill_s"] = round(time.monotonic() - start, 2)
            broker.kill()
            relay.open = False  # the station sees the broker away until our subscriber is back
            subs.pop().stop()
            time.sleep(args.down_s)
            broker.start()
            subs.append(Subscriber(broker.port, TOPIC, messages))
            relay.open = True
            rec["t_back_s"] = round(time.monotonic() - start, 2)
            rec["frames_at_back"] = sampler.frames
            rec["down_s"] = round(rec["t_back_s"] - rec["t_kill_s"], 2)
            # The next restart only once the station is connected again (a separate outage); 1 s resolution.
            with contextlib.suppress(AssertionError):
                wait_for(lambda: sampler.mqtt["connected"] == 1 or run.poll() is not None, 120, "", poll=0.2)
            rec["t_station_connected_s"] = round(time.monotonic() - start, 2)
            rec["frames_at_station_connected"] = sampler.frames
            restarts.append(rec)
            print(f"broker restarted at frame {rec['frames_at_kill']} (down {rec['down_s']} s)", flush=True)
        try:
            run.wait(max(1.0, limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            run.send_signal(2)  # Ctrl-C: the run finishes its frame and writes its summary
            run.wait(60)
        wall_s = time.monotonic() - start
        sampler.stop()
        records = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
        # The run flushed what it could before exiting; give the last messages time to arrive.
        with contextlib.suppress(AssertionError):
            wait_for(lambda: len({m["frame"] for m in messages}) >= len(records), 30, "", poll=0.2)
        time.sleep(1)
    finally:
        if sampler is not None:
            sampler.stop()
        if run is not None and run.poll() is None:
            run.kill()
            run.wait(10)
        for s in subs:
            s.stop()
        broker.kill()
        if relay is not None:
            relay.close()
        server.kill()
        server.wait(10)
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    manifest = json.loads((Path(args.bundle) / "manifest.json").read_text())
    return {
        "bundle": {
            "path": str(args.bundle),
            "name": manifest.get("name"),
            "imgsz": manifest.get("imgsz"),
            "target": manifest.get("target"),
        },
        "stream": {"images": n_images, "pattern": pattern, "fps": args.fps, "frame_shape": _shape(pattern)},
        "run_command": shlex.join(cmd),
        "exit_code": run.returncode,
        "wall_s": round(wall_s, 2),
        "restarts": restarts,
        "summary": summary,
        "delivery": delivery(records, list(messages), n_images, _spooled(spool / "mqtt-spool-soak.jsonl")),
        "rss": rss_stats(sampler.samples, args.frames, args.warmup),
        "samples_t_frames_rsskb_pending_serving_load1": [
            [s["t"], s["frames"], s["rss_kb"], s["mqtt_pending"], s["serving"], s["load1"]]
            for s in sampler.samples
        ],
        "host_load1": {
            "mean": round(float(np.mean([s["load1"] for s in sampler.samples])), 2),
            "max": max(s["load1"] for s in sampler.samples),
        },
        "mqtt_pending_peak": max((s["mqtt_pending"] for s in sampler.samples), default=0),
        "run_log_tail": log_path.read_text().splitlines()[-25:],
    }


def goals(doc: dict[str, Any], frames: int, restarts: int) -> list[tuple[str, bool, str]]:
    """The issue's goals: (goal, met, the number)."""
    d, r, s = doc["delivery"], doc["rss"], doc["summary"]
    mq = s.get("mqtt", {})
    lost = d["lost"] + d["duplicates_not_marked"] + d["out_of_order"] + d["payload_mismatch"]
    return [
        (
            f"{frames} verdicts written",
            d["records"] == frames,
            f"{d['records']} records, exit {doc['exit_code']}",
        ),
        (
            "no verdict lost (nor duplicated unmarked, out of order, altered)",
            lost == 0,
            f"lost {d['lost']} (+{d['not_received_left_in_spool']} left in the spool), unmarked duplicates {d['duplicates_not_marked']}, out of order "
            f"{d['out_of_order']}, altered {d['payload_mismatch']}",
        ),
        (
            "RSS flat within 5 % after warm-up",
            r.get("flatness", 1.0) <= 0.05,
            f"(max-min)/median = {100 * r.get('flatness', float('nan')):.2f} %",
        ),
        (
            f"broker outages counted ({restarts} restarts)",
            mq.get("outages") == restarts,
            f"mqtt outages {mq.get('outages')}, spooled {mq.get('spooled')}, replayed {mq.get('replayed')}",
        ),
        (
            "stream drops counted (every id gap is a counted drop)",
            d["ids_increasing"] and d["id_gaps"] <= s.get("dropped", -1),
            f"id gaps {d['id_gaps']}, dropped {s.get('dropped')} ({s.get('dropped', 0) - d['id_gaps']} after "
            f"the last verdict), stream outages {s.get('outages')}",
        ),
    ]


def markdown(doc: dict[str, Any]) -> str:
    """The Markdown report."""
    b, d, r, s = doc["bundle"], doc["delivery"], doc["rss"], doc["summary"]
    mq = s.get("mqtt", {})
    rows = [
        ("frames (verdicts written)", f"{d['records']} (exit code {doc['exit_code']})"),
        ("frames/s (run's own figure; stream at)", f"{s.get('fps', 0):.2f} ({doc['stream']['fps']:g} fps)"),
        ("wall time", f"{doc['wall_s']:.0f} s"),
        (
            "host load average (1 min) during the run: mean / max",
            f"{doc['host_load1']['mean']} / {doc['host_load1']['max']} on {doc['machine']['cores']} cores",
        ),
        (
            "total latency p50 / p99 / max ms",
            " / ".join(
                f"{s.get('latency_ms', {}).get('total', {}).get(k, float('nan')):.1f}"
                for k in ("p50_ms", "p99_ms", "max_ms")
            ),
        ),
        (
            "broker restarts: frame at kill (broker down s, station connected again after s)",
            ", ".join(
                f"{x['frames_at_kill']} ({x['down_s']} s, {x['t_station_connected_s'] - x['t_kill_s']:.1f} s)"
                for x in doc["restarts"]
            ),
        ),
        ("verdicts waiting for the broker, peak (1 s samples)", str(doc["mqtt_pending_peak"])),
        ("messages received / distinct", f"{d['messages']} / {d['distinct_received']}"),
        (
            "not received / of those left in the spool",
            f"{d['not_received']} / {d['not_received_left_in_spool']}",
        ),
        ("lost (written, never received, not in the spool)", str(d["lost"])),
        (
            "duplicates marked replay / not marked",
            f"{d['duplicates_marked_replay']} / {d['duplicates_not_marked']}",
        ),
        ("out of order / payload altered", f"{d['out_of_order']} / {d['payload_mismatch']}"),
        ("messages marked replay", str(d["replay_marked_messages"])),
        (
            "mqtt published / replayed / spooled",
            f"{mq.get('published')} / {mq.get('replayed')} / {mq.get('spooled')}",
        ),
        (
            "mqtt spool dropped / pending / outages",
            f"{mq.get('dropped')} / {mq.get('pending')} / {mq.get('outages')}",
        ),
        (
            "stream: queue drops / outages / id gaps",
            f"{s.get('dropped')} / {s.get('outages')} / {d['id_gaps']}",
        ),
        (
            "looped images with differing records",
            f"{d['images_with_differing_records']} of {doc['stream']['images']}",
        ),
        ("RSS after warm-up: first / last MiB", f"{r.get('first_mib')} / {r.get('last_mib')}"),
        (
            "RSS after warm-up: min / max / median MiB",
            f"{r.get('min_mib')} / {r.get('max_mib')} / {r.get('median_mib')}",
        ),
        ("RSS flatness (max-min)/median", f"{100 * r.get('flatness', float('nan')):.2f} %"),
        ("RSS trend (least squares)", f"{r.get('slope_mib_per_1000_frames')} MiB per 1000 frames"),
        ("RSS peak, all samples", f"{r.get('peak_mib_all_samples')} MiB"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    notes = []
    if not s.get("dropped"):
        p50 = s.get("latency_ms", {}).get("total", {}).get("p50_ms", float("nan"))
        notes.append(
            f"No frame was dropped: this model keeps up with the stream (total latency p50 {p50:.1f} ms per "
            f"frame against {1e3 / doc['stream']['fps']:.1f} ms between frames), so the drop counter read 0 "
            "and its check (id gaps = counted drops) was not exercised by this run; a bundle slower than the "
            "stream would exercise it."
        )
    if not s.get("outages"):
        notes.append("The stream itself was never interrupted (only the broker was): stream outages 0.")
    if "min_mib" in r:
        h, w, c = doc["stream"]["frame_shape"]
        frame_mib = h * w * c / 2**20
        notes.append(
            f"RSS range after warm-up: {r['max_mib'] - r['min_mib']:.2f} MiB = "
            f"{(r['max_mib'] - r['min_mib']) / frame_mib:.1f} decoded {w}x{h} BGR frames ({frame_mib:.2f} MiB "
            "each; the live queue, the frames in flight in the pipeline and the decoder hold whole frames)."
        )
    if s.get("dropped", 0) > d["id_gaps"]:
        notes.append(
            f"{s['dropped'] - d['id_gaps']} counted drops have no gap among the verdicts: frames dropped after "
            "the last verdict (the reader keeps reading until the source is closed)."
        )
    if r.get("slope_mib_per_1000_frames") is not None:
        notes.append(
            f"RSS trend after warm-up: {r['slope_mib_per_1000_frames']:+.3f} MiB per 1000 frames (least "
            f"squares over {r['samples']} samples); {d['records']} frames cannot tell whether it levels off."
        )
    notes_md = "\n".join(f"* {n}" for n in notes)
    goal_rows = "\n".join(
        f"| {g} | {'met' if ok else '**NOT met**'} | {why} |" for g, ok, why in doc["goals"]
    )
    return f"""# Line soak: `edge-lora run` on a looping MJPEG stream, broker restarted twice

{doc["date"]}. Bundle `{b["name"]}` ({b["path"]}), model imgsz {b["imgsz"]}; stream: {doc["stream"]["images"]}
images looped by `tests/mjpeg_server.py` at {doc["stream"]["fps"]:g} fps; MQTT: amqtt on loopback behind
`tests/line_helpers.Relay`, SIGKILLed and restarted at {", ".join(f"{x['at_fraction']:.0%}" for x in doc["restarts"])}
of the frames.

{markdown_details(doc["machine"])}

Command: `{doc["command"]}`

The run: `{doc["run_command"]}`

| goal | | measured |
|---|---|---|
{goal_rows}

| figure | value |
|---|---|
{table}

{notes_md}

How it is measured: every message the subscriber got (payload with its `replay` mark) is compared with the
JSON lines the run wrote, by frame id (`URL#n`, `n` counting every frame the live source read, so a gap is a
queue drop). Lost: a written verdict never received. Out of order: a verdict whose first arrival comes after
that of a later one. RSS: `/proc/PID/status` VmRSS of the run every second, the samples before
{r.get("warmup_frames")} frames (warm-up) and those after the last frame or without a `/healthz` answer
(closing) left out; `/healthz` reports no memory, only the frame count used to
place the samples. While the broker is down the relay refuses the station, and it lets it in again only
after the subscriber has subscribed to the restarted broker (an in-memory broker forgets subscriptions, so a
verdict published before would be lost by the broker, not by the station). "Looped images with differing
records": `n` modulo the image count names the image; an image whose records differ between loops would
show a changed verdict (or a shifted id).
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=FIXTURE_BUNDLE)
    ap.add_argument("--images", help="glob of the images to loop (default: the DeepPCB new-board val images)")
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--fps", type=float, default=30.0, help="the stream's frame rate")
    ap.add_argument("--restart-at", type=float, nargs="+", default=[0.30, 0.65])
    ap.add_argument("--down-s", type=float, default=5.0, help="seconds the broker stays down each time")
    ap.add_argument("--warmup", type=float, default=0.10, help="fraction of the frames left out of the RSS")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    doc = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_details(),
        **soak(args, WORK),
    }
    doc["goals"] = goals(doc, args.frames, len(args.restart_at))
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "line_soak.json").write_text(json.dumps(doc, indent=1, default=str))
    md = markdown(doc)
    (args.results / "line_soak.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
