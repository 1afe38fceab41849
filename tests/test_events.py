"""EventLog: one JSON line per event, same text as json.dumps, thread-safe, never raises."""

from __future__ import annotations

import io
import logging
import json
import math
import pathlib
import threading
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from edgeway.diag import events as ev
from edgeway.diag.events import NULL_LOG, EventLog, event_class

TS = 1763700000.123456


class _PinnedTime:
    """Stands in for the time module inside events: lines become reproducible."""

    @staticmethod
    def time() -> float:
        return TS


def pinned_time():
    return mock.patch.object(ev, "time", _PinnedTime)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(alphabet=st.characters(codec="utf-8")),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
odd_values = st.sampled_from([pathlib.Path("/x"), b"bytes", {1, 2}, (1, "t"), {3: "int key"}, 1.5e300, -0.0,
                              math.inf, math.nan, "é\u2028\x00\"\\"])
field_names = st.sampled_from(["dir", "call_id", "line", "status", "node", "ts", "reason", "zone"])


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["sip message", "call attempted", "bad message", "tls handshake failed"]),
       st.dictionaries(field_names, json_values | odd_values, max_size=5))
def test_line_is_json_dumps_of_the_record(event, fields):
    out = io.StringIO()
    log = EventLog("edge", stream=out)
    with pinned_time():
        log.emit(event, **fields)
    module, level = event_class(event)
    rec = {"ts": TS, "node": "edge", "event": event, "module": module, "level": logging.getLevelName(level)}
    rec.update(fields)
    assert out.getvalue() == json.dumps(rec, default=str, ensure_ascii=False) + "\n"
    assert log.counts == {event: 1}


class _BadStr:
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_never_raises_and_still_counts():
    out = io.StringIO()
    log = EventLog("edge", stream=out)
    loop: list = []
    loop.append(loop)
    log.emit("a", x=_BadStr())
    log.emit("a", x=loop)
    log.emit("a", x={(1, 2): "tuple key"})
    assert out.getvalue() == "" and log.counts == {"a": 3}
    with pinned_time():
        log.emit("b", ok=1)
    assert json.loads(out.getvalue()) == {"ts": TS, "node": "edge", "event": "b", "module": "node", "level": "INFO", "ok": 1}

    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError("disk full")

    broken = EventLog("edge", stream=Broken())
    broken.emit("c")
    assert broken.counts == {"c": 1}


def test_file_lines_threads_and_close(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog("core", str(path))
    n_threads, per = 8, 300

    def work(i: int) -> None:
        for j in range(per):
            log.emit("sip message", thread=i, n=j, line="INVITE sip:x@y" * (j % 7))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.flush()
    lines = path.read_text(encoding="utf-8").splitlines()  # readable while open once flushed
    assert len(lines) == n_threads * per and log.counts == {"sip message": n_threads * per}
    seen = {(r["thread"], r["n"]) for r in map(json.loads, lines)}
    assert len(seen) == n_threads * per
    log.close()
    log.emit("after close")
    log.close()
    assert log.counts["after close"] == 1 and len(path.read_text().splitlines()) == n_threads * per


def test_null_log_counts_only():
    before = NULL_LOG.counts.get("x", 0)
    NULL_LOG.emit("x", a=1)
    assert NULL_LOG.counts["x"] == before + 1


def test_sip_message_line_is_the_generic_one_and_buffered_lines_reach_the_file(tmp_path):
    import time

    from edgeway.diag.events import FLUSH_INTERVAL_S

    path = tmp_path / "events.jsonl"
    log = EventLog("edge", str(path))
    log.sip_message("in", "udp", "192.0.2.1:5060", 'c"1@x', "INVITE sip:bob@é.test", "1 INVITE")
    log.emit("sip message", dir="out", transport="tls", peer="192.0.2.2:7001", call_id="c2", line="SIP/2.0 200 OK", cseq=None)
    time.sleep(FLUSH_INTERVAL_S + 0.02)
    log.emit("flush me")  # the period passed: this write flushes everything
    got = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert [{k: v for k, v in r.items() if k != "ts"} for r in got[:2]] == [
        {"node": "edge", "event": "sip message", "module": "sip", "level": "INFO", "dir": "in", "transport": "udp",
         "peer": "192.0.2.1:5060", "call_id": 'c"1@x', "line": "INVITE sip:bob@é.test", "cseq": "1 INVITE"},
        {"node": "edge", "event": "sip message", "module": "sip", "level": "INFO", "dir": "out", "transport": "tls",
         "peer": "192.0.2.2:7001",
         "call_id": "c2", "line": "SIP/2.0 200 OK", "cseq": None}]
    assert isinstance(got[0]["ts"], float) and log.counts["sip message"] == 2
    log.close()
