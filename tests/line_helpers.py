"""Test helpers for `edge-lora run`'s outputs: a real MQTT broker (amqtt) on loopback, a TCP relay in front of
it, an MQTT subscriber, and a `run --watch` process fed frame by frame (tests/test_line_mqtt.py, _metrics.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "bundle_v1"
FRAMES = sorted((FIXTURE / "frames").glob("*.png"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout: float, what: str, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def bundle_copy(tmp_path: Path) -> Path:
    (src,) = [p for p in FIXTURE.iterdir() if (p / "manifest.json").is_file()]
    return Path(shutil.copytree(src, tmp_path / src.name))


class Broker:
    """amqtt (a pip-installed MQTT 3.1.1 broker) in its own process on 127.0.0.1:port; kill() is SIGKILL."""

    def __init__(self, folder: Path, port: int | None = None, tls: dict[str, Path] | None = None) -> None:
        exe = Path(sys.executable).parent / "amqtt"
        if not exe.exists():
            pytest.skip("amqtt is not installed (pip install -e '.[dev]')")
        self.exe, self.port = exe, port or free_port()
        self.config = folder / "amqtt.yaml"
        # tls: {certfile, keyfile[, cafile]}: a TLS listener (with cafile it also verifies client certificates)
        ssl_lines = (
            "    ssl: true\n" + "".join(f"    {k}: {v}\n" for k, v in (tls or {}).items()) if tls else ""
        )
        self.config.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: 127.0.0.1:{self.port}\n"
            f"{ssl_lines}"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen(
            [str(self.exe), "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def accepts() -> bool:
            assert self.proc.poll() is None, "the broker exited"
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return True
            return False

        wait_for(accepts, 30, f"the broker on port {self.port}", poll=0.1)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


class Relay:
    """A TCP relay 127.0.0.1:port -> the broker. Closed, it accepts and hangs up at once (as if the broker
    were away), so a test decides when the station may reconnect: after its own subscriber is back on a
    restarted broker (an in-memory broker forgets subscriptions, and a message no one subscribes to is lost).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.open = True
        self.mute = False  # True: what the broker sends (CONNACK, PUBACK) is swallowed
        self._conns: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream), timeout=2)
            except OSError:
                client.close()
                continue
            self._conns.append(client)
            threading.Thread(target=self._pipe, args=(client, up), daemon=True).start()

    def drop(self) -> None:
        """Cut the connections open now (the station sees its broker connection lost)."""
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        self._conns.clear()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        with a, b:
            while True:
                r, _, _ = select.select([a, b], [], [], 1.0)
                for s in r:
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        return
                    if s is b and self.mute:
                        continue
                    with contextlib.suppress(OSError):
                        (b if s is a else a).sendall(data)

    def close(self) -> None:
        self._stop = True
        self._server.close()


class Subscriber:
    """An MQTT subscriber (paho) collecting the payloads of one topic into ``messages`` (shared list)."""

    def __init__(self, port: int, topic: str, messages: list[dict], tls: Any = None) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages = messages
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}-{time.time_ns()}")
        self.client.on_message = lambda c, u, msg: self.messages.append(json.loads(msg.payload))
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        if tls is not None:  # an ssl.SSLContext
            self.client.tls_set_context(tls)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(10), "no SUBACK"

    def stop(self) -> None:
        self.client.loop_stop()
        with contextlib.suppress(Exception):
            self.client.disconnect()


class WatchRun:
    """``edge-lora run BUNDLE --source DIR --watch`` in a subprocess; frames are dropped in one at a time."""

    def __init__(self, tmp_path: Path, bundle: Path, *args: str, max_frames: int) -> None:
        self.dir = tmp_path / "incoming"
        self.dir.mkdir()
        # One image already there: the watcher says it skips it once it watches, so frames dropped after
        # that line are new ones (a frame dropped before would count as already there and be skipped).
        shutil.copyfile(FRAMES[0], self.dir / "0-already-there.png")
        self.out = tmp_path / "out.jsonl"
        self.summary = tmp_path / "summary.json"
        self.n = 0
        cmd = [
            *(str(Path(sys.executable).parent / "edge-lora"), "run", str(bundle)),
            *("--source", str(self.dir), "--watch", "--poll", "0.05", "--max-frames", str(max_frames)),
            *("--out", str(self.out), "--json", str(self.summary), *args),
        ]
        env = {**os.environ, "COLUMNS": "200"}
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)

    def text(self) -> str:
        return "".join(self.output)

    def records(self) -> list[dict]:
        if not self.out.exists():
            return []
        return [json.loads(x) for x in self.out.read_text().splitlines() if x.strip()]

    def wait_output(self, needle: str, timeout: float = 60) -> None:
        wait_for(lambda: needle in self.text() or self.proc.poll() is not None, timeout, repr(needle))
        assert needle in self.text(), self.text()

    def feed(self, count: int, timeout: float = 60) -> None:
        """Drop ``count`` frames, one at a time, each once the previous one has its JSON line."""
        self.wait_output("already there are skipped", timeout)
        for _ in range(count):
            src = FRAMES[self.n % len(FRAMES)]
            tmp = self.dir / f".f{self.n:04d}.png"  # hidden until renamed: never read half-written
            shutil.copyfile(src, tmp)
            tmp.rename(self.dir / f"f{self.n:04d}.png")
            self.n += 1
            want = self.n
            wait_for(
                lambda want=want: len(self.records()) >= want or self.proc.poll() is not None,
                timeout,
                f"JSON line {want}",
            )
            assert len(self.records()) >= want, self.text()

    def finish(self, timeout: float = 60) -> dict:
        self.proc.wait(timeout)
        assert self.proc.returncode == 0, self.text()
        return json.loads(self.summary.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
