"""``edge-lora run --metrics-port``: Prometheus ``/metrics`` and ``/healthz`` scraped over HTTP during a run."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

from click.testing import CliRunner
from line_helpers import WatchRun, bundle_copy, free_port, wait_for
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edge_lora.cli.main import main
from edge_lora.fileio import sha256_file
from edge_lora.runtime.metrics import LineMetrics


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_and_healthz_are_served_during_a_run(tmp_path):
    bundle = bundle_copy(tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    run = WatchRun(
        tmp_path,
        bundle,
        *("--metrics-port", str(port), "--metrics-addr", "127.0.0.1", "--healthz-max-age", "2"),
        max_frames=4,
    )
    try:
        run.feed(2)
        code, body = _get(f"{base}/healthz")
        health = json.loads(body)
        assert code == 200, health
        assert health["model_loaded"] is True and health["frames"] == 2
        assert 0 <= health["last_frame_age_s"] < 2

        samples = _samples(_get(f"{base}/metrics")[1])
        records = run.records()
        assert samples[("edge_lora_frames_total", ())] == 2
        rejects = sum(r["verdict"] == "reject" for r in records)
        assert samples[("edge_lora_verdicts_total", (("verdict", "reject"),))] == rejects
        for name in {n for r in records for n in r["reasons"]}:
            want = sum(name in r["reasons"] for r in records)
            assert samples[("edge_lora_rejects_total", (("class", name),))] == want
        assert samples[("edge_lora_latency_seconds_count", (("stage", "total"),))] == 2
        assert samples[("edge_lora_model_loaded", ())] == 1
        info = {k: v for (n, labels), v in samples.items() if n == "edge_lora_bundle_info" for k, v in labels}
        assert info["sha256"] == sha256_file(bundle / "manifest.json")
        assert info["bundle"] == json.loads((bundle / "manifest.json").read_text())["name"]

        # No frame for longer than the threshold: unhealthy, and it says why.
        wait_for(lambda: _get(f"{base}/healthz")[0] == 503, 30, "/healthz to turn 503")
        health = json.loads(_get(f"{base}/healthz")[1])
        assert health["status"] == "no recent frame" and health["last_frame_age_s"] > 2
        run.feed(1)
        assert _get(f"{base}/healthz")[0] == 200
        run.feed(1)  # the last one: the run ends
        summary = run.finish()
    finally:
        run.kill()
    assert summary["metrics_port"] == port and summary["images"] == 4


def test_busy_metrics_port_exits_2_naming_the_option(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        r = CliRunner().invoke(
            main,
            [
                *("run", str(bundle_copy(tmp_path)), "--source", str(tmp_path)),
                *("--metrics-port", str(port), "--metrics-addr", "127.0.0.1"),
            ],
        )
    assert r.exit_code == 2, r.output
    assert "--metrics-port" in r.output and "in use" in r.output


def test_runtime_counters_and_health_without_a_server():
    loaded = {"v": False}
    m = LineMetrics(
        bundle="b",
        sha256="0" * 64,
        model_loaded=lambda: loaded["v"],
        extra=lambda: {"queue_drops": 3, "stream_outages": 1, "mqtt_pending": 7, "mqtt_connected": 0},
        max_frame_age_s=0.2,
    )
    samples = _samples(generate_latest(m.registry).decode())
    assert samples[("edge_lora_queue_drops_total", ())] == 3
    assert samples[("edge_lora_stream_outages_total", ())] == 1
    assert samples[("edge_lora_mqtt_pending", ())] == 7
    assert m.health()[0] == 503 and m.health()[1]["status"] == "model not loaded"
    loaded["v"] = True
    m.write({"verdict": "pass", "reasons": {}, "detections": [], "latency_ms": {"total": 3.0, "infer": 2.0}})
    assert m.health()[0] == 200
    time.sleep(0.3)
    assert m.health()[0] == 503
