"""``--mqtt mqtts://``: verdicts over TLS to a real broker (amqtt with a TLS listener on loopback), with a CA and
client certificate made here by openssl; an untrusted broker certificate spools and says why; bad TLS options
exit 2 naming the option."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from line_helpers import Broker, Subscriber, bundle_copy, free_port, wait_for

from edge_lora.cli.main import main
from edge_lora.runtime.mqtt_sink import MqttSink, MqttTls, parse_mqtt_url

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl (to make test certificates)")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, a broker certificate for 127.0.0.1/localhost and a client certificate, all signed by the CA."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=edge-lora test CA",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn, ext in (("broker", "127.0.0.1", ["-extfile", "san.cnf"]), ("client", "station-7", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-out", f"{name}.pem", *ext, cwd=d)  # fmt: skip
    return {p.stem + p.suffix: p for p in d.iterdir()}


@pytest.fixture
def tls_broker(tmp_path, pki):
    broker = Broker(
        tmp_path, tls={"certfile": pki["broker.pem"], "keyfile": pki["broker.key"], "cafile": pki["ca.pem"]}
    ).start()
    yield broker
    broker.kill()


def _records(n: int) -> list[dict]:
    return [{"frame": i, "verdict": "ok" if i % 3 else "defect"} for i in range(n)]


def test_mqtts_delivers_every_verdict_in_order_offering_a_client_certificate(tmp_path, pki, tls_broker):
    ctx = ssl.create_default_context(cafile=pki["ca.pem"])
    received: list[dict] = []
    sub = Subscriber(tls_broker.port, "line/v", received, tls=ctx)
    logs: list[str] = []
    tls = MqttTls(ca_file=pki["ca.pem"], cert_file=pki["client.pem"], key_file=pki["client.key"])
    sink = MqttSink(
        f"mqtts://127.0.0.1:{tls_broker.port}/line/v", station="s7", spool_path=tmp_path / "sp", tls=tls,
        log=logs.append,
    )  # fmt: skip
    try:
        wait_for(lambda: sink.stats().connected, 10, "the TLS connection")  # else the first ones spool
        for r in _records(25):
            sink.write(r)
        stats = sink.close()
        wait_for(lambda: len(received) >= 25, 10, "25 messages over TLS")
    finally:
        sub.stop()
    assert received == _records(25)
    assert (stats.published, stats.spooled, stats.outages, stats.pending) == (25, 0, 0, 0)
    assert any(f"connected to mqtts://127.0.0.1:{tls_broker.port}/line/v" in m for m in logs), logs


def test_an_untrusted_broker_certificate_spools_and_says_why(tmp_path, tls_broker):
    logs: list[str] = []
    # No --mqtt-ca: the system's CAs, which never signed this test CA's broker certificate.
    sink = MqttSink(
        f"mqtts://127.0.0.1:{tls_broker.port}/line/v",
        station="s8",
        spool_path=tmp_path / "sp",
        log=logs.append,
    )
    for r in _records(5):
        sink.write(r)
    wait_for(lambda: sink.stats().outages >= 1, 10, "the failed TLS handshake")
    stats = sink.close(0.5)
    assert (stats.published, stats.spooled, stats.pending) == (0, 5, 5)
    line = next(m for m in logs if "unreachable" in m)
    assert "CERTIFICATE_VERIFY_FAILED" in line and "spooling verdicts" in line, line


def test_mqtts_url_defaults_to_port_8883_and_prints_its_scheme():
    t = parse_mqtt_url("mqtts://broker.local/line/v")
    assert (t.tls, t.port, str(t)) == (True, 8883, "mqtts://broker.local:8883/line/v")
    assert parse_mqtt_url("mqtt://broker.local/line/v").tls is False


@pytest.mark.parametrize(
    ("mqtt", "extra", "expected"),
    [
        ("mqtt://127.0.0.1:{port}/v", ["--mqtt-ca", "{ca}"], "use an mqtts:// URL"),
        (None, ["--mqtt-ca", "{ca}"], "no --mqtt is given"),
        ("mqtts://127.0.0.1:{port}/v", ["--mqtt-cert", "{cert}"], "--mqtt-cert and --mqtt-key go together"),
        ("mqtts://127.0.0.1:{port}/v", ["--mqtt-ca", "{key}"], "--mqtt-ca"),
    ],
)
def test_bad_tls_options_exit_2_naming_the_option(tmp_path, pki, mqtt, extra, expected):
    values = {"port": free_port(), "ca": pki["ca.pem"], "cert": pki["client.pem"], "key": pki["client.key"]}
    args = ["run", str(bundle_copy(tmp_path)), "--source", str(tmp_path), "--spool", str(tmp_path / "sp")]
    if mqtt:
        args += ["--mqtt", mqtt.format(**values)]
    r = CliRunner().invoke(main, args + [a.format(**values) for a in extra])
    assert r.exit_code == 2, r.output
    assert expected in r.output, r.output
    assert "Traceback" not in r.output
