"""``edge-lora run --mqtt``: verdicts to a real broker (amqtt on loopback), with a spool across broker outages.

The broker is a separate process the test starts, SIGKILLs and restarts mid-run; the station reaches it through
a TCP relay the test opens only once its own subscriber is back (see ``line_helpers.Relay``).
"""

from __future__ import annotations

import json
import signal

import pytest
from click.testing import CliRunner
from line_helpers import Broker, Relay, Subscriber, WatchRun, bundle_copy, free_port, wait_for

from edge_lora.cli.main import main
from edge_lora.runtime.mqtt_sink import MqttSink, parse_mqtt_url
from edge_lora.runtime.spool import Spool

TOPIC = "line1/verdicts"


def _first_occurrences(messages: list[dict]) -> list[dict]:
    seen, first = set(), []
    for m in messages:
        if m["frame"] not in seen:
            seen.add(m["frame"])
            first.append(m)
    return first


def _assert_delivered(messages: list[dict], records: list[dict]) -> None:
    """Every verdict arrived, in order, as the JSON line says; a message seen twice is marked a replay."""
    first = _first_occurrences(messages)
    assert [m["frame"] for m in first] == [r["frame"] for r in records]
    by_frame = {r["frame"]: r for r in records}
    for m in messages:
        assert {k: v for k, v in m.items() if k != "replay"} == by_frame[m["frame"]]
    seen = set()
    for m in messages:
        if m["frame"] in seen:
            assert m.get("replay") is True, f"{m['frame']} arrived twice without the replay mark"
        seen.add(m["frame"])


def test_broker_down_at_start_then_killed_and_restarted_mid_run_loses_nothing(tmp_path):
    bundle = bundle_copy(tmp_path)
    broker = Broker(tmp_path)
    relay = Relay(broker.port)
    relay.open = False  # the broker is down at start
    messages: list[dict] = []
    run = WatchRun(
        tmp_path,
        bundle,
        *("--mqtt", f"mqtt://127.0.0.1:{relay.port}/{TOPIC}", "--station", "press-3"),
        *("--spool", str(tmp_path / "spool")),
        max_frames=12,
    )
    subs = []
    try:
        run.feed(3)  # spooled: no broker
        assert run.text().count("unreachable") == 1, run.text()  # one clear line, not a crash
        broker.start()
        subs.append(Subscriber(broker.port, TOPIC, messages))
        relay.open = True
        wait_for(lambda: len(messages) >= 3, 60, "the 3 spooled verdicts")
        run.feed(3)  # live
        wait_for(lambda: len(_first_occurrences(messages)) >= 6, 30, "6 verdicts")

        broker.kill()  # mid-run, everything so far delivered
        relay.open = False
        subs.pop().stop()
        run.feed(3)  # spooled: broker gone
        broker.start()
        subs.append(Subscriber(broker.port, TOPIC, messages))
        relay.open = True
        wait_for(lambda: len(_first_occurrences(messages)) >= 9, 60, "the verdicts spooled while it was down")
        run.feed(3)
        summary = run.finish()
    finally:
        run.kill()
        for s in subs:
            s.stop()
        broker.kill()
        relay.close()

    records = run.records()
    assert len(records) == 12
    _assert_delivered(messages, records)
    first = _first_occurrences(messages)
    # Those spooled while the broker was away arrive marked as replays; the first 3 live ones do not.
    assert all(m.get("replay") is True for m in first[:3] + first[6:9])
    assert not any(m.get("replay") for m in first[3:6])
    mq = summary["mqtt"]
    assert mq["client_id"] == "edge-lora-press-3"
    assert mq["dropped"] == 0 and mq["pending"] == 0 and mq["outages"] == 2
    assert mq["spooled"] >= 6 and mq["replayed"] >= 6
    assert mq["published"] - mq["replayed"] + mq["spooled"] == 12  # each verdict either live or spooled
    assert mq["spooled"] == mq["replayed"] + mq["dropped"] + mq["pending"]
    assert "mqtt published (replayed)" in run.text()


def test_sigterm_ends_the_run_with_its_summary_and_every_verdict_published(tmp_path):
    broker = Broker(tmp_path).start()
    messages: list[dict] = []
    sub = Subscriber(broker.port, TOPIC, messages)
    run = WatchRun(
        tmp_path,
        bundle_copy(tmp_path),
        *("--mqtt", f"mqtt://127.0.0.1:{broker.port}/{TOPIC}", "--station", "s2"),
        max_frames=100,
    )
    try:
        run.feed(3)
        run.proc.send_signal(signal.SIGTERM)
        summary = run.finish()
        wait_for(lambda: len(messages) >= 3, 30, "3 verdicts")
    finally:
        run.kill()
        sub.stop()
        broker.kill()
    assert summary["interrupted"] is True and summary["images"] == 3
    assert summary["mqtt"]["pending"] == 0 and summary["mqtt"]["published"] == 3
    _assert_delivered(messages, run.records())
    assert (tmp_path / "mqtt-spool-s2.jsonl").read_text() == ""  # next to --out, empty


def test_a_verdict_sent_but_not_acknowledged_when_the_connection_drops_is_resent_marked(tmp_path):
    broker = Broker(tmp_path).start()
    relay = Relay(broker.port)
    messages: list[dict] = []
    sub = Subscriber(broker.port, TOPIC, messages)
    sink = MqttSink(
        f"mqtt://127.0.0.1:{relay.port}/{TOPIC}",
        station="s3",
        spool_path=tmp_path / "spool.jsonl",
        retry_min_s=0.1,
        retry_max_s=0.2,
        log=lambda m: None,
    )
    records = [{"frame": f"f{i}", "verdict": "pass"} for i in range(5)]
    try:
        wait_for(lambda: sink.stats().connected, 30, "the connection")
        for r in records[:2]:
            sink.write(r)
        wait_for(lambda: sink.stats().published == 2, 30, "2 acknowledged")
        relay.mute = True  # the broker gets and forwards f2, f3; its acks never reach the station
        for r in records[2:4]:
            sink.write(r)
        wait_for(lambda: len(messages) == 4, 30, "f2 and f3 delivered")
        assert sink.stats().published == 2
        relay.mute = False
        relay.drop()
        wait_for(lambda: len(messages) == 6, 30, "f2 and f3 sent again")
        wait_for(lambda: sink.stats().connected, 30, "the connection")
        sink.write(records[4])
        wait_for(lambda: len(messages) == 7, 30, "f4")
        stats = sink.close()
    finally:
        sink.close(0)
        sub.stop()
        broker.kill()
        relay.close()
    assert [m["frame"] for m in messages] == ["f0", "f1", "f2", "f3", "f2", "f3", "f4"]
    assert [bool(m.get("replay")) for m in messages] == [False] * 4 + [True, True, False]
    _assert_delivered(messages, records)
    assert (stats.published, stats.replayed, stats.spooled, stats.pending) == (5, 2, 2, 0)


def test_spool_bound_drops_the_oldest_and_the_next_run_replays_the_rest(tmp_path):
    spool = tmp_path / "spool.jsonl"
    dead = free_port()  # nothing listens there
    sink = MqttSink(
        f"mqtt://127.0.0.1:{dead}/{TOPIC}",
        station="s1",
        spool_path=spool,
        spool_max_messages=5,
        retry_min_s=0.05,
        retry_max_s=0.1,
        log=lambda m: None,
    )
    for i in range(12):
        sink.write({"frame": f"f{i}", "verdict": "pass"})
    stats = sink.close()
    assert (stats.spooled, stats.dropped, stats.pending, stats.published) == (12, 7, 5, 0)
    assert [json.loads(x)["frame"] for x in spool.read_text().splitlines()] == [f"f{i}" for i in range(7, 12)]

    broker = Broker(tmp_path).start()
    messages: list[dict] = []
    sub = Subscriber(broker.port, TOPIC, messages)
    try:
        with MqttSink(
            f"mqtt://127.0.0.1:{broker.port}/{TOPIC}", station="s1", spool_path=spool, log=lambda m: None
        ) as sink2:
            assert sink2.stats().carried == 5
            wait_for(lambda: len(messages) >= 5, 30, "the verdicts carried over")
            wait_for(lambda: sink2.stats().connected, 30, "the connection")
            sink2.write({"frame": "f12", "verdict": "pass"})
            wait_for(lambda: len(messages) >= 6, 30, "the carried verdicts and the new one")
        final = sink2.stats()
    finally:
        sub.stop()
        broker.kill()
    assert [m["frame"] for m in messages] == [f"f{i}" for i in range(7, 13)]
    assert all(m.get("replay") is True for m in messages[:5]) and "replay" not in messages[5]
    assert (final.carried, final.replayed, final.published, final.pending) == (5, 5, 6, 0)
    assert spool.read_text() == ""


def test_spool_bytes_bound_partial_line_and_rewind(tmp_path):
    path = tmp_path / "s.jsonl"
    s = Spool(path, max_messages=100, max_bytes=30)
    for i in range(5):
        s.append(b'{"frame":"%d"}' % i)  # 14 bytes with its newline: two fit in 30
    assert len(s) == 2 and s.dropped == 3 and s.bytes == 28
    a = s.next_unsent()
    b = s.next_unsent()
    assert (a[1], b[1]) == (b'{"frame":"3"}', b'{"frame":"4"}') and s.next_unsent() is None
    s.rewind()  # the connection dropped before the acks: both go out again, in order
    assert s.next_unsent() == a and s.ack(a[0]) and len(s) == 1
    s.close()
    with path.open("ab") as f:
        f.write(b'{"frame":"cut')  # a crash in the middle of a line
    s2 = Spool(path, max_messages=100, max_bytes=30)
    assert s2.carried == 1 and s2.next_unsent()[1] == b'{"frame":"4"}'
    assert path.read_bytes() == b'{"frame":"4"}\n'
    s2.close()


@pytest.mark.parametrize(
    "url",
    [
        "http://broker/topic",
        "mqtt://broker",
        "mqtt://broker:99999/t",
        "mqtt:///t",
        "mqtt://broker/a/#",
        "broker",
    ],
)
def test_bad_mqtt_url_exits_2_naming_the_option(tmp_path, url):
    r = CliRunner().invoke(
        main, ["run", str(bundle_copy(tmp_path)), "--source", str(tmp_path), "--mqtt", url]
    )
    assert r.exit_code == 2, r.output
    assert "--mqtt" in r.output


def test_parse_mqtt_url():
    t = parse_mqtt_url("mqtt://user:secret@broker.local/line%201/verdicts")
    assert (t.host, t.port, t.topic, t.username, t.password) == (
        "broker.local",
        1883,
        "line 1/verdicts",
        "user",
        "secret",
    )
    assert "secret" not in str(t)


def test_station_defaults_to_the_host_name(tmp_path):
    import socket

    sink = MqttSink(f"mqtt://127.0.0.1:{free_port()}/t", spool_path=tmp_path / "s", log=lambda m: None)
    try:
        assert sink.client_id == f"edge-lora-{socket.gethostname()}"
    finally:
        sink.close(0)
    assert (tmp_path / "s").exists()
