"""``edge-lora run``'s outputs beside the JSON lines: ``--mqtt`` and ``--metrics-port`` (options and wiring only).

The sinks themselves are device-side modules (:mod:`edge_lora.runtime.mqtt_sink`,
:mod:`edge_lora.runtime.metrics`); this module turns the options into them, starts them before the model is
loaded (a busy port fails at once) and closes them after the run (the MQTT sink flushes, the rest spools).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from edge_lora.errors import InputError


def _check_mqtt_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from edge_lora.runtime.mqtt_sink import parse_mqtt_url

    try:
        parse_mqtt_url(value)
    except InputError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None
    return value


_OPTIONS = [
    click.option(
        "--mqtt",
        callback=_check_mqtt_url,
        metavar="mqtt[s]://HOST[:PORT]/TOPIC",
        help="Also publish each verdict (its JSON line) to this broker topic, QoS 1; while the broker is "
        'unreachable verdicts spool on disk and are replayed in order, marked "replay": true. '
        "mqtts:// is TLS (port 8883), verified against the system CAs or --mqtt-ca.",
    ),
    click.option(
        "--mqtt-ca",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="mqtts://: CA certificate file (PEM) to verify the broker with. [default: the system's CAs]",
    ),
    click.option(
        "--mqtt-cert",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="mqtts://: client certificate (PEM), for a broker that requires one; with --mqtt-key.",
    ),
    click.option(
        "--mqtt-key",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="mqtts://: the client certificate's private key (PEM, unencrypted).",
    ),
    click.option(
        "--station", help="This station's name; the MQTT client id is edge-lora-NAME. [default: host name]"
    ),
    click.option(
        "--spool",
        "spool_dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="--mqtt spool folder (file mqtt-spool-STATION.jsonl). [default: the --out folder, else .]",
    ),
    click.option(
        "--spool-max",
        type=click.IntRange(min=1),
        default=100_000,
        show_default=True,
        help="--mqtt: verdicts the spool keeps at most; beyond, the oldest are dropped (and counted).",
    ),
    click.option(
        "--spool-max-mb",
        type=click.FloatRange(min=0.001),
        default=64.0,
        show_default=True,
        help="--mqtt: spool size bound in MiB.",
    ),
    click.option(
        "--metrics-port",
        type=click.IntRange(0, 65535),
        help="Serve Prometheus /metrics and a /healthz probe on this port (0: any free one).",
    ),
    click.option(
        "--metrics-addr", default="0.0.0.0", show_default=True, help="--metrics-port: address to listen on."
    ),
    click.option(
        "--healthz-max-age",
        type=click.FloatRange(min=0.001),
        default=30.0,
        show_default=True,
        help="/healthz answers 503 when no frame came for longer than this (s).",
    ),
]


def options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The output options of ``run``; the command receives them as keyword arguments (see :func:`open_outputs`)."""
    for opt in reversed(_OPTIONS):
        f = opt(f)
    return f


@dataclass
class Outputs:
    """The open sinks of one run, and what they add to its summary."""

    sinks: list[Any] = field(default_factory=list)
    mqtt: Any = None
    metrics: Any = None
    metrics_port: int | None = None
    mqtt_stats: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """What the summary JSON gains (``mqtt`` counters, the metrics port)."""
        doc: dict[str, Any] = {}
        if self.mqtt_stats is not None:
            doc["mqtt"] = self.mqtt_stats
        if self.metrics_port is not None:
            doc["metrics_port"] = self.metrics_port
        return doc

    def rows(self) -> list[tuple[str, str]]:
        """Rows for the summary table."""
        out = []
        if self.mqtt_stats is not None:
            s = self.mqtt_stats
            out.append(("mqtt published (replayed)", f"{s['published']} ({s['replayed']})"))
            out.append(
                ("mqtt spooled / dropped / pending", f"{s['spooled']} / {s['dropped']} / {s['pending']}")
            )
            if s["pending"]:
                out.append(("mqtt spool (replayed next run)", s["spool"]))
        return out


@contextlib.contextmanager
def open_outputs(
    line: Any,
    *,
    out_path: Path | None,
    mqtt: str | None,
    mqtt_ca: Path | None,
    mqtt_cert: Path | None,
    mqtt_key: Path | None,
    station: str | None,
    spool_dir: Path | None,
    spool_max: int,
    spool_max_mb: float,
    metrics_port: int | None,
    metrics_addr: str,
    healthz_max_age: float,
    log: Callable[[str], None],
) -> Iterator[Outputs]:
    """Start the sinks the options ask for around ``line`` (a :class:`~edge_lora.runtime.line.LineRuntime`).

    Raises:
        InputError: ``--metrics-port`` is in use; a TLS option without ``mqtts://`` or a bad TLS file.
    """
    if mqtt is None and any((mqtt_ca, mqtt_cert, mqtt_key)):
        raise InputError("--mqtt-ca/--mqtt-cert/--mqtt-key apply to --mqtt mqtts://...; no --mqtt is given")
    outputs = Outputs()
    with contextlib.ExitStack() as stack:
        if metrics_port is not None:
            from edge_lora.fileio import sha256_file
            from edge_lora.runtime.metrics import LineMetrics

            m = line.manifest

            def extra() -> dict[str, float]:
                values: dict[str, float] = {}
                live = getattr(line, "live_stats", None)  # the live source's counters, while one runs
                if live is not None:
                    values["queue_drops"], values["stream_outages"] = live.dropped, live.outages
                if outputs.mqtt is not None:
                    s = outputs.mqtt.stats()
                    values.update(
                        mqtt_published=s.published,
                        mqtt_spooled=s.spooled,
                        mqtt_dropped=s.dropped,
                        mqtt_pending=s.pending,
                        mqtt_connected=float(s.connected),
                    )
                return values

            metrics = LineMetrics(
                bundle=m.name,
                sha256=sha256_file(Path(line.bundle_dir) / "manifest.json"),
                backend=line.artifact.backend,
                precision=line.artifact.precision,
                model_loaded=lambda: bool(line.runner.is_active),
                extra=extra,
                max_frame_age_s=healthz_max_age,
            )
            try:
                outputs.metrics_port = metrics.serve(metrics_port, metrics_addr)
            except InputError as e:
                raise InputError(f"--metrics-port {metrics_port}: {e}") from None
            stack.callback(metrics.close)
            log(f"metrics: http://{metrics_addr}:{outputs.metrics_port}/metrics and /healthz")
            outputs.metrics = metrics
            outputs.sinks.append(metrics)
        if mqtt is not None:
            from edge_lora.runtime.mqtt_sink import MqttSink, MqttTls, default_spool_path

            name = station or socket.gethostname()
            folder = (
                spool_dir if spool_dir is not None else (out_path.parent if out_path is not None else None)
            )
            spool = default_spool_path(folder, name)
            try:
                sink = MqttSink(
                    mqtt,
                    station=name,
                    spool_path=spool,
                    tls=MqttTls(ca_file=mqtt_ca, cert_file=mqtt_cert, key_file=mqtt_key),
                    spool_max_messages=spool_max,
                    spool_max_bytes=max(1, int(spool_max_mb * (1 << 20))),
                    log=log,
                )
            except OSError as e:
                raise InputError(f"--spool: cannot open the MQTT spool {spool}: {e.strerror or e}") from None

            def close_mqtt() -> None:
                outputs.mqtt_stats = sink.close().to_dict()

            stack.callback(close_mqtt)
            outputs.mqtt = sink
            outputs.sinks.insert(0, sink)
        yield outputs
