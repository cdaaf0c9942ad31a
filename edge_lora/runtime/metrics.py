"""Prometheus ``/metrics`` and a ``/healthz`` probe for a running line (prometheus-client). Torch-free (device side).

:class:`LineMetrics` is a sink (``write(record)`` per verdict) that keeps Prometheus metrics in its own
registry, and :meth:`LineMetrics.serve` starts prometheus-client's WSGI app and threaded server in a daemon
thread, with ``/healthz`` beside ``/metrics``:

* ``edge_lora_frames_total``, ``edge_lora_verdicts_total{verdict}``, ``edge_lora_rejects_total{class}``
  (frames rejected because of that class), ``edge_lora_detections_total{class}``,
  ``edge_lora_latency_seconds{stage}`` (a histogram of ``total`` and ``infer``), ``edge_lora_last_frame_age_seconds``,
  ``edge_lora_model_loaded``, ``edge_lora_bundle_info{bundle, sha256, backend, precision}``;
* whatever the runtime exposes while it runs (``extra()``): a live source's ``edge_lora_queue_drops_total``
  and ``edge_lora_stream_outages_total``, the MQTT sink's counters;
* ``/healthz``: JSON ``{"status", "model_loaded", "last_frame_age_s", "frames", ...}``, 200 while the model is
  loaded and a frame came within ``max_frame_age_s`` (counted from the start before the first frame), else 503.
"""

from __future__ import annotations

import errno
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from edge_lora.errors import InputError

__all__ = ["LineMetrics"]

# From 1 ms to 2.5 s: a line detector's frame time on a CPU, a Jetson or a GPU.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

#: Counters read from ``extra()`` at scrape time: key -> (metric name, help).
EXTRA_COUNTERS = {
    "queue_drops": (
        "edge_lora_queue_drops_total",
        "Frames dropped from the live source's queue (oldest first).",
    ),
    "stream_outages": ("edge_lora_stream_outages_total", "Times the live source was lost."),
    "mqtt_published": ("edge_lora_mqtt_published_total", "Verdicts the MQTT broker acknowledged."),
    "mqtt_spooled": ("edge_lora_mqtt_spooled_total", "Verdicts written to the MQTT spool."),
    "mqtt_dropped": ("edge_lora_mqtt_dropped_total", "Spooled verdicts dropped because the spool was full."),
}
EXTRA_GAUGES = {
    "mqtt_pending": ("edge_lora_mqtt_pending", "Verdicts waiting for the MQTT broker."),
    "mqtt_connected": ("edge_lora_mqtt_connected", "1 while the MQTT broker is connected."),
}


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Scrapes every few seconds would flood the line's log."""


class _Extra(Collector):
    def __init__(self, extra: Callable[[], Mapping[str, float]]) -> None:
        self._extra = extra

    def collect(self) -> Iterator[Any]:
        values = self._extra() or {}
        for key, (name, doc) in EXTRA_COUNTERS.items():
            if key in values:
                m = CounterMetricFamily(name.removesuffix("_total"), doc)
                m.add_metric([], float(values[key]))
                yield m
        for key, (name, doc) in EXTRA_GAUGES.items():
            if key in values:
                yield GaugeMetricFamily(name, doc, value=float(values[key]))


class LineMetrics:
    """Prometheus metrics and health of one line run; feed it every record with :meth:`write`.

    Args:
        bundle: bundle name. sha256: the bundle's identity (the sha256 of its manifest).
        backend, precision: the primary artifact's, shown in ``edge_lora_bundle_info``.
        model_loaded: tells whether the model is loaded now (e.g. ``lambda: line.runner.is_active``).
        extra: counters the runtime exposes at scrape time (keys of ``EXTRA_COUNTERS``/``EXTRA_GAUGES``).
        max_frame_age_s: ``/healthz`` answers 503 when no frame came for longer than this.
    """

    def __init__(
        self,
        *,
        bundle: str,
        sha256: str,
        backend: str = "",
        precision: str = "",
        model_loaded: Callable[[], bool] = lambda: True,
        extra: Callable[[], Mapping[str, float]] | None = None,
        max_frame_age_s: float = 30.0,
    ) -> None:
        if max_frame_age_s <= 0:
            raise InputError(f"max_frame_age_s must be > 0, got {max_frame_age_s}")
        self.bundle, self.sha256 = bundle, sha256
        self.max_frame_age_s = float(max_frame_age_s)
        self._model_loaded = model_loaded
        self._started = time.monotonic()
        self._last_frame: float | None = None
        self._frames = 0
        self._lock = threading.Lock()
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

        r = self.registry = CollectorRegistry()
        self._frames_c = Counter("edge_lora_frames", "Frames processed (readable ones).", registry=r)
        self._verdicts = Counter("edge_lora_verdicts", "Verdicts per value.", ["verdict"], registry=r)
        self._rejects = Counter(
            "edge_lora_rejects", "Frames rejected because of a defect class.", ["class"], registry=r
        )
        self._detections = Counter(
            "edge_lora_detections", "Detections above their threshold per class.", ["class"], registry=r
        )
        self._latency = Histogram(
            "edge_lora_latency_seconds",
            "Per-frame latency (total: preprocess + inference + decoding; infer: the model alone).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        Gauge(
            "edge_lora_last_frame_age_seconds",
            "Seconds since the last frame (since start before one).",
            registry=r,
        ).set_function(self.last_frame_age)
        Gauge("edge_lora_model_loaded", "1 while the model is loaded.", registry=r).set_function(
            lambda: float(bool(self._model_loaded()))
        )
        Info("edge_lora_bundle", "The bundle this line runs.", registry=r).info(
            {"bundle": bundle, "sha256": sha256, "backend": backend, "precision": precision}
        )
        for verdict in ("pass", "reject"):  # present (0) before the first frame, so rate() has a start
            self._verdicts.labels(verdict)
        if extra is not None:
            r.register(_Extra(extra))

    # ------------------------------------------------------------------------------------------ sink
    def write(self, record: Mapping[str, Any]) -> None:
        """Count one verdict (the record the run writes as its JSON line)."""
        self._frames_c.inc()
        self._verdicts.labels(str(record.get("verdict", "unknown"))).inc()
        for name in record.get("reasons", {}):
            self._rejects.labels(name).inc()
        for d in record.get("detections", ()):
            self._detections.labels(str(d.get("name", d.get("class")))).inc()
        for stage in ("total", "infer"):
            ms = record.get("latency_ms", {}).get(stage)
            if ms is not None:
                self._latency.labels(stage).observe(ms / 1e3)
        with self._lock:
            self._frames += 1
            self._last_frame = time.monotonic()

    def close(self) -> None:
        """Stop the HTTP server (if serving). Idempotent."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ---------------------------------------------------------------------------------------- health
    def last_frame_age(self) -> float:
        """Seconds since the last frame, or since the start when none came yet."""
        with self._lock:
            since = self._last_frame if self._last_frame is not None else self._started
        return time.monotonic() - since

    def health(self) -> tuple[int, dict[str, Any]]:
        """The ``/healthz`` answer: HTTP status and its JSON body."""
        loaded = bool(self._model_loaded())
        age = self.last_frame_age()
        with self._lock:
            frames, seen = self._frames, self._last_frame is not None
        fresh = age <= self.max_frame_age_s
        status = "ok" if loaded and fresh else ("model not loaded" if not loaded else "no recent frame")
        body = {
            "status": status,
            "model_loaded": loaded,
            "last_frame_age_s": round(age, 3) if seen else None,
            "seconds_since_start": round(time.monotonic() - self._started, 3),
            "max_frame_age_s": self.max_frame_age_s,
            "frames": frames,
            "bundle": self.bundle,
            "sha256": self.sha256,
        }
        return (200 if status == "ok" else 503), body

    # ---------------------------------------------------------------------------------------- server
    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` and ``/healthz`` on ``addr:port`` from a daemon thread; returns the port bound.

        Raises:
            InputError: the port is in use (or may not be bound here).
        """
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            if environ.get("PATH_INFO", "").rstrip("/") == "/healthz":
                code, body = self.health()
                data = json.dumps(body).encode()
                reason = "OK" if code == 200 else "Service Unavailable"
                start_response(
                    f"{code} {reason}",
                    [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
                )
                return [data]
            return metrics_app(environ, start_response)

        try:
            server = make_server(addr, port, app, ThreadingWSGIServer, handler_class=_Quiet)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise InputError(f"port {port} on {addr} is already in use") from None
            raise InputError(f"cannot serve metrics on {addr}:{port}: {e.strerror or e}") from None
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="edge-lora-metrics", daemon=True)
        self._thread.start()
        return int(server.server_address[1])
