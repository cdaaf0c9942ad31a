"""Verdicts to an MQTT broker (paho-mqtt), one message per frame, with an on-disk spool. Torch-free (device side).

``MqttSink("mqtt://broker:1883/line1/verdicts", station="press-3", spool_path=...)`` publishes every record it
is given (the same JSON object as the run's JSON line) with QoS 1 under the client id ``edge-lora-<station>``.
What it guarantees:

* the run loop never waits for the network: :meth:`MqttSink.write` queues the message and one sender thread
  does all the MQTT work (connect, publish, acks, keep-alive, reconnect with back-off);
* a message counts as published when the broker acknowledged it (PUBACK). While the broker is unreachable, and
  for every message sent but not acknowledged when the connection dropped, the message goes to a bounded
  on-disk spool (:class:`~edge_lora.runtime.spool.Spool`; when full, the oldest is dropped and counted);
* on reconnect the spool is replayed in order before any newer message, each replayed message carrying
  ``"replay": true`` (MQTT 3.1.1 has no user properties): a consumer sees every verdict in order, and a message
  it may have seen before (sent, then the connection dropped before the broker's ack) is marked as a replay;
* a broker down at start is not an error: one line says so, and the verdicts spool until it answers. What is
  still spooled at the end stays in the file and is replayed by the next run with the same spool.

``mqtts://`` (port 8883 by default) connects over TLS: the broker's certificate is verified against the system's
CA store, or against ``MqttTls(ca_file=...)``, and its host name checked; ``cert_file``/``key_file`` add a client
certificate for brokers that require one. The files are read when the sink is made, so a bad file is one error
line before the model loads; a broker whose certificate fails verification is reported (once per outage) like
any unreachable broker, and the verdicts spool.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import ssl
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_lora.errors import InputError
from edge_lora.runtime.spool import Spool

__all__ = ["MqttSink", "MqttStats", "MqttTarget", "MqttTls", "default_spool_path", "parse_mqtt_url"]

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class MqttTarget:
    """Where verdicts go: broker host and port, topic, optional credentials (never printed)."""

    host: str
    port: int
    topic: str
    username: str | None = None
    password: str | None = None
    tls: bool = False  # mqtts://

    def __str__(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}/{self.topic}"


@dataclass(frozen=True)
class MqttTls:
    """TLS settings of an ``mqtts://`` broker: a CA bundle to verify it with (default: the system's), and a
    client certificate and key for brokers that require one. Paths are named by ``options`` in errors."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    options: tuple[str, str, str] = ("--mqtt-ca", "--mqtt-cert", "--mqtt-key")

    def context(self) -> ssl.SSLContext:
        """A client context: certificate verification and host name check on (as a browser does).

        Raises:
            InputError: a file is missing or not a certificate/key, or only one of cert and key is given.
        """
        ca_opt, cert_opt, key_opt = self.options
        if (self.cert_file is None) != (self.key_file is None):
            raise InputError(f"{cert_opt} and {key_opt} go together (a client certificate and its key)")
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise InputError(f"{ca_opt} {self.ca_file}: not a readable CA certificate file ({e})") from None
        if self.cert_file is not None:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as e:
                raise InputError(
                    f"{cert_opt} {self.cert_file} / {key_opt} {self.key_file}: not a matching certificate and "
                    f"key ({e})"
                ) from None
        return ctx


def parse_mqtt_url(url: str) -> MqttTarget:
    """``mqtt[s]://[user[:password]@]host[:port]/topic`` as an :class:`MqttTarget` (port 1883, or 8883 for
    ``mqtts``, TLS, by default).

    Raises:
        InputError: another scheme, no host, a bad port, no topic, or a topic with MQTT wildcards.
    """
    form = "expected mqtt://host[:port]/topic or mqtts://host[:port]/topic"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise InputError(f"{url!r}: {e}; {form}") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise InputError(f"{url!r}: scheme {parts.scheme or '(none)'!r} is not supported; {form}")
    if not parts.hostname:
        raise InputError(f"{url!r} names no broker host; {form}")
    topic = unquote(parts.path.lstrip("/"))
    if not topic:
        raise InputError(f"{url!r} names no topic; {form}")
    if "+" in topic or "#" in url:  # '#' would otherwise be read as a URL fragment
        raise InputError(f"{url!r}: the topic has a wildcard (+ or #); a message needs a plain topic")
    if "?" in url:
        raise InputError(f"{url!r}: unexpected '?' or '#' part; {form}")
    return MqttTarget(
        host=parts.hostname,
        port=port or (DEFAULT_TLS_PORT if parts.scheme == "mqtts" else DEFAULT_PORT),
        topic=topic,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=parts.scheme == "mqtts",
    )


@dataclass
class MqttStats:
    """Counters of one sink.

    Attributes:
        published: messages the broker acknowledged (replays included). replayed: of those, from the spool.
        spooled: messages written to the spool (broker unreachable, or sent and not acknowledged when the
            connection dropped). dropped: spooled messages dropped because the spool was full (or its disk).
        pending: messages still in the spool (replayed by the next run). carried: messages an earlier run left
            in the spool. outages: times the broker was unreachable (at start or after a connection).
    """

    broker: str
    client_id: str
    spool: str
    published: int = 0
    replayed: int = 0
    spooled: int = 0
    dropped: int = 0
    pending: int = 0
    carried: int = 0
    outages: int = 0
    connected: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mark_replay(line: bytes) -> bytes:
    """The JSON object ``line`` with ``"replay": true`` added."""
    if line.endswith(b"}") and line.rstrip() != b"{}":
        return line[:-1] + b',"replay":true}'
    return json.dumps({**json.loads(line), "replay": True}, separators=(",", ":")).encode()


class MqttSink:
    """Publish each record to ``target`` (QoS 1), spooling on disk while the broker is unreachable.

    Args:
        target: an ``mqtt://host[:port]/topic`` URL or an :class:`MqttTarget`.
        station: this station's name; the client id is ``edge-lora-<station>`` (default: the host name).
        spool_path: the spool file (created with its folder; an existing one is replayed first).
        tls: CA bundle and client certificate of an ``mqtts://`` target (default: the system's CAs, no client
            certificate); refused for a plain ``mqtt://`` target.
        spool_max_messages, spool_max_bytes: the spool's bounds; the oldest message is dropped beyond them.
        keepalive_s: MQTT keep-alive. connect_timeout_s: TCP connect + CONNACK time limit.
        retry_min_s, retry_max_s: reconnect back-off (doubles from min to max while the broker stays away).
        inflight: messages sent and not acknowledged at most. flush_timeout_s: what :meth:`close` waits at
            most for the broker to acknowledge what is queued (the rest stays in the spool).
        log: where the connection messages go (stderr by default).
    """

    def __init__(
        self,
        target: str | MqttTarget,
        *,
        station: str | None = None,
        spool_path: str | os.PathLike,
        tls: MqttTls | None = None,
        spool_max_messages: int = 100_000,
        spool_max_bytes: int = 64 << 20,
        keepalive_s: int = 30,
        connect_timeout_s: float = 5.0,
        retry_min_s: float = 1.0,
        retry_max_s: float = 10.0,
        inflight: int = 64,
        flush_timeout_s: float = 10.0,
        log: Callable[[str], None] = _stderr,
    ) -> None:
        self.target = parse_mqtt_url(target) if isinstance(target, str) else target
        self.station = station or socket.gethostname()
        self.client_id = f"edge-lora-{self.station}"
        if tls is not None and not self.target.tls and any((tls.ca_file, tls.cert_file, tls.key_file)):
            raise InputError(
                f"{'/'.join(tls.options)} apply to a TLS broker: use an mqtts:// URL (got {self.target})"
            )
        # Built once, here: a bad CA or key file fails before the model loads, not in the sender thread.
        self._ssl = (tls or MqttTls()).context() if self.target.tls else None
        if not 0 < retry_min_s <= retry_max_s:
            raise InputError(
                f"reconnect back-off must satisfy 0 < min <= max, got {retry_min_s}, {retry_max_s}"
            )
        self.keepalive_s = int(keepalive_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.retry_min_s, self.retry_max_s = float(retry_min_s), float(retry_max_s)
        self.inflight = max(1, int(inflight))
        self.flush_timeout_s = float(flush_timeout_s)
        self.log = log
        self._spool = Spool(spool_path, max_messages=spool_max_messages, max_bytes=spool_max_bytes)
        self._lock = threading.RLock()
        self._live: deque[bytes] = deque()  # written while connected, not sent yet
        self._live_max = 4 * self.inflight  # beyond that (a slow broker) the queue spills to the spool
        self._inflight: OrderedDict[int, tuple[str, Any]] = (
            OrderedDict()
        )  # mid -> ("live", line) | ("spool", i)
        self._client: mqtt.Client | None = None
        self._connecting: mqtt.Client | None = None
        self._connack: Any = None
        self._lost: str | None = None
        self._delay = self.retry_min_s
        self._next_attempt = 0.0
        self._down_logged = False
        self._stats = MqttStats(
            broker=str(self.target),
            client_id=self.client_id,
            spool=str(self._spool.path),
            carried=self._spool.carried,
        )
        self._write_errors = 0
        self._closing = False
        self._deadline = 0.0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._main, name=f"mqtt-{self.client_id}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------- public API
    def write(self, record: Mapping[str, Any]) -> None:
        """Queue one record (never blocks on the network)."""
        line = json.dumps(record, separators=(",", ":")).encode("utf-8")
        with self._lock:
            if self._closing:
                raise RuntimeError("MqttSink.write after close()")
            if self._client is not None and self._lost is None:
                self._live.append(line)
                if len(self._live) > self._live_max:
                    self._spill_live()
            else:
                self._spool_append(line)
        self._wake()

    def stats(self) -> MqttStats:
        """A snapshot of the counters."""
        with self._lock:
            s = MqttStats(**asdict(self._stats))
            s.pending = len(self._spool) + len(self._live) + len(self._inflight)
            s.dropped = self._spool.dropped + self._write_errors
            s.connected = self._client is not None and self._lost is None
            return s

    def close(self, timeout_s: float | None = None) -> MqttStats:
        """Send what is queued while the broker answers (``flush_timeout_s`` at most), keep the rest spooled.

        Returns the final counters. Idempotent.
        """
        wait = self.flush_timeout_s if timeout_s is None else float(timeout_s)
        with self._lock:
            if not self._closing:
                self._closing = True
                self._deadline = time.monotonic() + wait
        self._wake()
        self._thread.join(wait + self.connect_timeout_s + 5)
        with self._lock:
            self._spool.close()  # compacted: what is left is what the next run replays
        return self.stats()

    def __enter__(self) -> MqttSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------- the sender thread
    def _main(self) -> None:
        try:
            while not self._finished():
                if self._client is None:
                    delay = self._next_attempt - time.monotonic()
                    if delay > 0:
                        self._wait([], delay)
                    else:
                        self._connect()
                else:
                    self._pump()
                    self._service()
        except Exception as e:  # noqa: BLE001 - a bug here must not kill the line; the spool keeps the rest
            self.log(f"mqtt: sender stopped ({type(e).__name__}: {e}); verdicts stay in {self._spool.path}")
        finally:
            self._shutdown()

    def _finished(self) -> bool:
        with self._lock:
            if not self._closing:
                return False
            if self._client is None or self._lost is not None:
                return True  # no broker now: what is queued stays in the spool for the next run
            drained = not self._live and not self._inflight and not self._spool.unsent
            return drained or time.monotonic() > self._deadline

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (BlockingIOError) or closed: the thread is awake anyway
            self._wake_w.send(b"x")

    def _wait(self, sockets: list[Any], timeout: float, write: list[Any] | None = None) -> tuple[list, list]:
        # TLS: bytes already decrypted in the SSL object are invisible to select(); paho's own loop makes
        # the same check (SSLSocket.pending) before it waits.
        ready = [s for s in sockets if isinstance(s, ssl.SSLSocket) and s.pending()]
        r, w, _ = select.select(
            [self._wake_r, *sockets], write or [], [], 0.0 if ready else max(0.0, timeout)
        )
        r = list({*r, *ready})
        if self._wake_r in r:
            with contextlib.suppress(OSError):  # drained (BlockingIOError)
                while self._wake_r.recv(4096):
                    pass
        return r, w

    def _connect(self) -> None:
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True, protocol=mqtt.MQTTv311
        )
        c.connect_timeout = self.connect_timeout_s
        c.max_inflight_messages_set(self.inflight)
        if self.target.username:
            c.username_pw_set(self.target.username, self.target.password)
        if self._ssl is not None:
            c.tls_set_context(self._ssl)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        self._connecting, self._connack = c, None
        try:
            c.connect(self.target.host, self.target.port, keepalive=self.keepalive_s)
            deadline = time.monotonic() + self.connect_timeout_s
            while self._connack is None:
                sock, remaining = c.socket(), deadline - time.monotonic()
                if sock is None:
                    raise ConnectionError("the broker closed the connection before CONNACK")
                if remaining <= 0:
                    raise TimeoutError(f"no CONNACK within {self.connect_timeout_s:g} s")
                r, w = self._wait([sock], min(remaining, 0.5), [sock] if c.want_write() else None)
                if sock in w:
                    c.loop_write()
                if sock in r and c.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS and self._connack is None:
                    raise ConnectionError("the broker closed the connection before CONNACK")
            if getattr(self._connack, "is_failure", False):
                raise ConnectionRefusedError(f"the broker refused the connection: {self._connack}")
        except (OSError, TimeoutError, ValueError) as e:
            self._connecting = None
            sock = c.socket()
            if sock is not None:
                sock.close()
            self._unreachable(f"{type(e).__name__}: {e}")
            return
        self._connecting = None
        with self._lock:
            self._client, self._lost = c, None
            self._delay = self.retry_min_s
            backlog = len(self._spool)
        if self._down_logged or backlog:
            self.log(
                f"mqtt: connected to {self.target} as {self.client_id}; replaying {backlog} spooled verdicts"
            )
        else:
            self.log(f"mqtt: connected to {self.target} as {self.client_id}")
        self._down_logged = False

    def _unreachable(self, reason: str) -> None:
        """A failed attempt: one line per outage, then retry after the back-off."""
        with self._lock:
            if not self._down_logged:
                self._stats.outages += 1
            self._next_attempt = time.monotonic() + self._delay
            self._delay = min(2 * self._delay, self.retry_max_s)
        if not self._down_logged:
            self.log(
                f"mqtt: broker {self.target} unreachable ({reason}); spooling verdicts to {self._spool.path} "
                "until it answers"
            )
            self._down_logged = True

    def _pump(self) -> None:
        """Publish, oldest first (the spool before newer verdicts), while the in-flight window has room."""
        with self._lock:
            c = self._client
            while c is not None and self._lost is None and len(self._inflight) < self.inflight:
                item = self._spool.next_unsent()
                if item is not None:
                    key, payload = ("spool", item[0]), _mark_replay(item[1])
                elif self._live:
                    line = self._live.popleft()
                    key, payload = ("live", line), line
                else:
                    return
                info = c.publish(self.target.topic, payload, qos=1)
                self._inflight[info.mid] = key  # even on failure: the loss handler spools it again
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._lost = self._lost or mqtt.error_string(info.rc)

    def _service(self) -> None:
        """One round of network I/O: acks in, pending bytes out, keep-alive."""
        c = self._client
        assert c is not None
        sock = c.socket()
        if sock is not None and self._lost is None:
            r, w = self._wait([sock], 1.0, [sock] if c.want_write() else None)
            if sock in r:
                c.loop_read(max_packets=self.inflight)
            if sock in w and c.socket() is not None:
                c.loop_write()
            if c.socket() is not None:
                c.loop_misc()
        if c.socket() is None and self._lost is None:
            self._lost = "connection closed"
        if self._lost is not None:
            self._handle_lost()

    def _handle_lost(self) -> None:
        with self._lock:
            reason, c = self._lost, self._client
            self._client, self._lost = None, None
            # Everything not acknowledged goes back in order: the spool's own messages are handed out again
            # from its head, then the live ones that were in flight, then the live queue (all newer).
            self._spool.rewind()
            for kind, value in self._inflight.values():
                if kind == "live":
                    self._spool_append(value)
            self._inflight.clear()
            self._spill_live()
            self._next_attempt = time.monotonic() + self._delay
            self._delay = min(2 * self._delay, self.retry_max_s)
            self._stats.outages += 1
        if c is not None and c.socket() is not None:
            c.socket().close()
        self.log(f"mqtt: lost the broker {self.target} ({reason}); spooling verdicts to {self._spool.path}")
        self._down_logged = True

    def _shutdown(self) -> None:
        with self._lock:
            c = self._client
            for kind, value in self._inflight.values():  # not acknowledged within the flush time
                if kind == "live":
                    self._spool_append(value)
            self._inflight.clear()
            self._spill_live()
            self._client = None  # from now on write() spools (also if this thread died of a bug)
        if c is not None and c.socket() is not None:
            try:
                c.disconnect()
                c.loop_write()
            except OSError:
                pass
            sock = c.socket()
            if sock is not None:
                sock.close()
        self._wake_r.close()
        self._wake_w.close()

    # --------------------------------------------------------------------------------------- helpers
    def _spill_live(self) -> None:
        while self._live:
            self._spool_append(self._live.popleft())

    def _spool_append(self, line: bytes) -> None:
        try:
            self._spool.append(line)
        except (OSError, ValueError) as e:  # a full disk (or a spool closed) must not stop the line
            self._write_errors += 1
            if self._write_errors == 1:
                self.log(f"mqtt: cannot write the spool {self._spool.path} ({e}); dropping verdicts")
            return
        self._stats.spooled += 1

    # ------------------------------------------------------------------------ paho callbacks (sender)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if client is self._connecting:
            self._connack = reason_code

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            if client is self._client and self._lost is None:
                self._lost = str(reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            if client is not self._client:
                return
            key = self._inflight.pop(mid, None)
            if key is None:
                return
            kind, value = key
            if kind == "live":
                self._stats.published += 1
            elif self._spool.ack(value):
                self._stats.published += 1
                self._stats.replayed += 1


def default_spool_path(folder: str | os.PathLike | None, station: str) -> Path:
    """``<folder>/mqtt-spool-<station>.jsonl`` (the working folder when ``folder`` is None)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in station)
    return Path(folder if folder is not None else ".") / f"mqtt-spool-{safe}.jsonl"
