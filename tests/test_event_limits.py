"""Bounded event logs (issue 7 item 4): rotation by size, a rate cap per event type with an
``events dropped`` counter, per-message events off by default and on in the lab.

The requirement: during 5,000 INVITEs/s from one source for 10 s, the event log grows by
less than 5 MB (it grew by 81 MB).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edgeway.config import LogConfig, parse_config
from edgeway.diag import events as ev
from edgeway.diag.events import DROPPED_EVENT, EventLog
from edgeway.lab.topology import LabTopology


class Clock:
    """Stands in for the monotonic clock of the event log (seconds)."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(ev, "_monotonic", c)
    return c


def lines_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def rotated_files(path: Path, backups: int) -> list[Path]:
    """Oldest first: path.N … path.1, path (those that exist)."""
    names = [path.with_name(f"{path.name}.{i}") for i in range(backups, 0, -1)] + [path]
    return [p for p in names if p.exists()]


# ---- rotation ----------------------------------------------------------------------------------

def test_rotation_at_the_size_keeps_whole_lines_and_backup_count_files(tmp_path):
    path = tmp_path / "edge.events.jsonl"
    max_bytes, backups = 4096, 3
    log = EventLog("edge", str(path), max_bytes=max_bytes, backup_count=backups)
    written = []
    for i in range(400):  # ~ 60 kB: many more rotations than backups; non-ASCII lines count in bytes
        text = ("é" * (i % 11)) + "x" * (i % 97)
        log.emit("call attempted", n=i, text=text)
        written.append(i)
    log.close()

    files = rotated_files(path, backups)
    assert [p.name for p in files] == [f"{path.name}.{i}" for i in (3, 2, 1)] + [path.name]
    assert not path.with_name(f"{path.name}.4").exists()
    per_file = [lines_of(p) for p in files]  # every line parses: none is split across files
    sizes = [p.stat().st_size for p in files]
    assert all(0 < s <= max_bytes for s in sizes), sizes
    # rotated at the size: each full file had no room for the first line of the next one
    raw = [p.read_bytes().splitlines(keepends=True) for p in files]
    for k in range(len(files) - 1):
        assert sizes[k] + len(raw[k + 1][0]) > max_bytes
    # no line lost between the kept files: they hold the newest lines, in order
    kept = [r["n"] for lines in per_file for r in lines]
    assert kept == written[-len(kept):]
    assert log.counts == {"call attempted": 400}


def test_rotation_counts_an_existing_file_and_gives_a_long_line_its_own_file(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text("x" * 4000 + "\n", encoding="utf-8")  # a previous run's log
    log = EventLog("edge", str(path), max_bytes=4096, backup_count=3)
    log.emit("a", pad="y" * 200)  # 4001 + ~250 bytes > 4096: the old file is rotated first
    log.emit("b", pad="z" * 5000)  # longer than max_bytes: a file of its own
    log.emit("c")
    log.close()
    assert path.with_name("e.jsonl.3").read_text() == "x" * 4000 + "\n"
    got = [[r["event"] for r in lines_of(path.with_name(n))] for n in ("e.jsonl.2", "e.jsonl.1", "e.jsonl")]
    assert got == [["a"], ["b"], ["c"]]


def test_no_backups_empties_the_file_and_zero_never_rotates(tmp_path):
    path = tmp_path / "e.jsonl"
    log = EventLog("edge", str(path), max_bytes=4096, backup_count=0)
    for i in range(200):
        log.emit("call attempted", n=i)
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.jsonl"]
    assert 0 < path.stat().st_size <= 4096 and lines_of(path)[-1]["n"] == 199

    path2 = tmp_path / "f.jsonl"
    log = EventLog("edge", str(path2), max_bytes=0, backup_count=5)
    for i in range(200):
        log.emit("call attempted", n=i)
    log.close()
    assert len(lines_of(path2)) == 200 and not path2.with_name("f.jsonl.1").exists()


# ---- rate cap ----------------------------------------------------------------------------------

def test_rate_cap_drops_the_excess_and_says_how_many(tmp_path, clock):
    path = tmp_path / "e.jsonl"
    log = EventLog("edge", str(path), max_events_per_s=10)
    for i in range(25):  # a burst: the bucket holds 10 lines
        log.emit("call rejected", n=i)
    log.emit("call attempted", n=0)  # another event type has its own bucket
    log.sip_message("in", "udp", "192.0.2.1:5060", "c1", "INVITE sip:x@y SIP/2.0", "1 INVITE")
    clock.t += 0.5  # 5 lines' worth refilled; the report is not due yet
    for i in range(25, 31):
        log.emit("call rejected", n=i)
    clock.t += 0.5  # 1 s since the first drop: the next line of the type reports first
    log.emit("call rejected", n=31)
    log.flush()
    got = lines_of(path)
    rejected = [r["n"] for r in got if r["event"] == "call rejected"]
    assert rejected == list(range(10)) + list(range(25, 30)) + [31]
    drops = [r for r in got if r["event"] == DROPPED_EVENT]
    assert [(r["dropped_event"], r["count"], r["node"]) for r in drops] == [("call rejected", 16, "edge")]
    assert got.index(drops[0]) == len(got) - 2  # written just before the line that found it due
    assert log.counts == {"call rejected": 32, "call attempted": 1, "sip message": 1, DROPPED_EVENT: 1}
    log.close()


def test_dropped_counter_is_written_by_flush_when_due_and_by_close(tmp_path, clock):
    path = tmp_path / "e.jsonl"
    log = EventLog("edge", str(path), max_events_per_s=5)
    for _ in range(8):
        log.sip_message("in", "udp", "192.0.2.1:5060", "c1", "INVITE sip:x@y SIP/2.0", "1 INVITE")
    log.flush()
    assert [r["event"] for r in lines_of(path)] == ["sip message"] * 5  # 3 dropped, report not due
    clock.t += 1.0
    log.flush()  # the node calls this every FLUSH_INTERVAL_S, also while the flood has stopped
    last = lines_of(path)[-1]
    assert (last["event"], last["dropped_event"], last["count"]) == (DROPPED_EVENT, "sip message", 3)
    for _ in range(10):  # burst of 5 (refilled), 5 dropped; close reports them at once
        log.emit("bad message")
    log.close()
    last = lines_of(path)[-1]
    assert (last["event"], last["dropped_event"], last["count"]) == (DROPPED_EVENT, "bad message", 5)
    assert log.counts["sip message"] == 8 and log.counts["bad message"] == 10


def test_sustained_rate_is_the_cap(tmp_path, clock):
    path = tmp_path / "e.jsonl"
    log = EventLog("edge", str(path), max_events_per_s=100)
    for _ in range(10_000):  # 1,000 lines/s for 10 s
        log.emit("call rejected")
        clock.t += 0.001
    log.close()
    got = lines_of(path)
    written = sum(r["event"] == "call rejected" for r in got)
    dropped = sum(r["count"] for r in got if r["event"] == DROPPED_EVENT)
    assert 100 + 10 * 100 - 2 <= written <= 100 + 10 * 100 + 1  # burst + 10 s of refill
    assert written + dropped == 10_000 == log.counts["call rejected"]
    assert 9 <= sum(r["event"] == DROPPED_EVENT for r in got) <= 11  # about one a second


def test_no_cap_writes_everything(tmp_path):
    path = tmp_path / "e.jsonl"
    log = EventLog("edge", str(path))  # the EventLog default: unbounded (direct users, tests)
    for _ in range(2000):
        log.sip_message("in", "udp", "192.0.2.1:5060", "c1", "INVITE sip:x@y SIP/2.0", "1 INVITE")
    log.close()
    assert len(lines_of(path)) == 2000


# ---- the flood ---------------------------------------------------------------------------------

def _product_log(path: Path, **over) -> EventLog:
    """An event log with the product's [log] bounds, built as Node builds it."""
    cfg = LogConfig(file=str(path), **over)
    return EventLog("edge", cfg.file, sip_messages=cfg.sip_messages, max_bytes=cfg.max_bytes,
                    backup_count=cfg.backup_count, max_events_per_s=cfg.max_events_per_s)


SIP = ("in", "udp", "192.0.2.66:5060", "flood-1234567890@192.0.2.66",
       "INVITE sip:alice@corp.edgeway.test SIP/2.0", "1 INVITE")


def test_flood_spread_over_10_s_stays_under_the_requirement(tmp_path, clock):
    """100k ``sip message`` + 100k ``call rejected`` over 10 s (10,000 INVITEs/s, twice
    the requirement's 5,000/s), with the per-message events switched on: < 1.5 MB
    (the requirement: < 5 MB)."""
    path = tmp_path / "e.jsonl"
    log = _product_log(path, sip_messages=True)
    for i in range(100_000):
        log.sip_message(*SIP)
        log.emit("call rejected", call_id=SIP[3], status=503, reason="Service Unavailable", zone="DefaultZone")
        clock.t += 0.0001
    log.close()
    size = path.stat().st_size
    assert size < 1_500_000, size
    got = lines_of(path)
    assert sum(r["event"] == "sip message" for r in got) <= 200 + 10 * 200 + 1
    assert log.counts["sip message"] == log.counts["call rejected"] == 100_000


def test_flood_in_real_time_is_fast_and_small(tmp_path):
    """The same flood as fast as it can be logged: well under 5 s, < 256 KiB written."""
    path = tmp_path / "e.jsonl"
    log = _product_log(path, sip_messages=True)
    t0 = time.perf_counter()
    for i in range(100_000):
        log.sip_message(*SIP)
        log.emit("call rejected", call_id=SIP[3], status=503, reason="Service Unavailable", zone="DefaultZone")
    elapsed = time.perf_counter() - t0
    log.close()
    size = path.stat().st_size
    # 200-line bursts plus 200 lines/s per type while it runs, plus the dropped counters
    assert size < 256 * 1024, (size, elapsed)
    assert elapsed < 5.0, elapsed
    assert log.counts["sip message"] == log.counts["call rejected"] == 100_000


# ---- config: off by default, on in the lab ----------------------------------------------------

def test_sip_messages_off_by_default_and_on_in_the_lab_configs(tmp_path):
    assert LogConfig().sip_messages is False
    assert (LogConfig().max_bytes, LogConfig().backup_count, LogConfig().max_events_per_s) == (50 << 20, 5, 200)
    lab = LabTopology()
    certs = {"cert": tmp_path / "c.pem", "key": tmp_path / "k.pem", "ca": tmp_path / "ca.pem"}  # not read
    for data in (lab.edge_config_data(tmp_path, certs, "pw"), lab.core_config_data(tmp_path, certs, "pw")):
        assert data["log"]["sip_messages"] is True and data["log"]["max_events_per_s"] == 0
        cfg = parse_config(data, "lab.toml")
        assert cfg.log.sip_messages is True and cfg.log.max_events_per_s == 0
        assert cfg.log.max_bytes == 50 << 20  # rotation as in the product
    quiet = LabTopology(sip_messages=False, max_events_per_s=200).edge_config_data(tmp_path, certs, "pw")
    assert parse_config(quiet, "lab.toml").log.sip_messages is False


def test_node_builds_its_log_from_the_config(tmp_path):
    from edgeway.node import Node

    data = LabTopology().edge_config_data(tmp_path, {"cert": tmp_path / "c", "key": tmp_path / "k", "ca": tmp_path / "a"},
                                          "pw")
    data["log"].update(file=str(tmp_path / "n.jsonl"), sip_messages=False, max_bytes=8192, backup_count=2,
                       max_events_per_s=7)
    node = Node(parse_config(data, "edge.toml"))  # not started: no socket is opened
    try:
        log = node.events
        assert (log.sip_messages, log._max_bytes, log._backup_count, log._rate) == (False, 8192, 2, 7)
    finally:
        node.events.close()


def test_lab_build_removes_old_logs_and_their_backups(tmp_path):
    for name in ("edge.events.jsonl", "edge.events.jsonl.1", "core.events.jsonl.3", "edge.events.jsonl.keep"):
        (tmp_path / name).write_text("{}\n")
    LabTopology().build(tmp_path)  # writes files only (PKI, configs, zone): no node is started
    assert not any(tmp_path.glob("*.events.jsonl*[0-9]")) and not (tmp_path / "edge.events.jsonl").exists()
    assert (tmp_path / "edge.events.jsonl.keep").exists()
