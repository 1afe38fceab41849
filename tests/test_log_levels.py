"""Event log per-module levels (issue 11 item 1): every line names its module and level;
a module's level is set in ``[log] modules`` or at run time with ``edgeway log-level``."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from edgeway.config import ConfigError, parse_config
from edgeway.diag.events import LEVELS, EventLog, event_class
from support.harness import LabUp


def _lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(x) for x in buf.getvalue().splitlines()]


def test_lines_carry_module_and_level_and_modules_filter() -> None:
    buf = io.StringIO()
    log = EventLog("n", stream=buf)
    log.emit("media closed", call_id="c1")
    log.emit("tls handshake failed", cause="untrusted CA")
    log.sip_message("in", "udp", "192.0.2.1:5060", "c1", "INVITE sip:a@b SIP/2.0", "1 INVITE")
    assert [(e["event"], e["module"], e["level"]) for e in _lines(buf)] == [
        ("media closed", "media", "INFO"), ("tls handshake failed", "tls", "WARNING"), ("sip message", "sip", "INFO")]
    log.module_levels = {"media": LEVELS["WARNING"], "sip": LEVELS["WARNING"]}
    buf.truncate(0), buf.seek(0)
    log.emit("media closed", call_id="c2")  # INFO < WARNING: counted, not written
    log.emit("media ports exhausted", cause="x")
    log.sip_message("in", "udp", "192.0.2.1:5060", "c2", "BYE sip:a@b SIP/2.0", "2 BYE")
    log.emit("search completed", alias="a@b")  # other modules keep the default
    assert [e["event"] for e in _lines(buf)] == ["media ports exhausted", "search completed"]
    assert log.counts["media closed"] == 2 and log.counts["sip message"] == 2
    assert event_class("internal error") == ("node", 40) and event_class("mra request blocked")[0] == "http"


def test_config_names_unknown_modules() -> None:
    base = {"role": "core", "name": "c", "sip": {"listen_ip": "192.0.2.1"}}
    with pytest.raises(ConfigError) as e:
        parse_config({**base, "log": {"modules": {"sipp": "DEBUG"}}})
    assert "log.modules" in str(e.value) and "unknown module(s) sipp" in str(e.value)
    assert parse_config({**base, "log": {"modules": {"tls": "debug"}}}).log.modules == {"tls": "DEBUG"}


def test_log_level_at_run_time(lab: LabUp) -> None:
    run = [sys.executable, "-m", "edgeway", "log-level", "-c", str(lab.workdir / "core.toml")]
    out = subprocess.run([*run[:4], "search", "WARNING", *run[4:]], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "search=WARNING" in out.stdout, out
    bad = subprocess.run([*run[:4], "nosuch", "DEBUG", *run[4:]], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown module" in bad.stderr
    back = subprocess.run([*run[:4], "search", "default", *run[4:]], capture_output=True, text=True, timeout=30)
    assert back.returncode == 0 and "modules set: none" in back.stdout, back
