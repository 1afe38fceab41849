"""Status page, JSON status API and Prometheus endpoint (issue 11 item 6): a running lab
node with ``[status]`` on; the page and JSON list the zones, the metrics parse with
``prometheus_client``'s own text parser, and nothing is served without credentials."""

from __future__ import annotations

import base64
import shutil
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeway.config import ConfigError, parse_config
from support.harness import LabUp

STATUS = "127.0.0.3:8090"
TOKEN = "status-token-for-tests"


def test_status_is_never_unprotected() -> None:
    base = {"role": "core", "name": "c", "sip": {"listen_ip": "192.0.2.1"}}
    with pytest.raises(ConfigError) as e:
        parse_config({**base, "status": {"listen": "127.0.0.1:8090"}})
    assert "status.listen" in str(e.value) and "never served unauthenticated" in str(e.value)
    assert parse_config({**base, "status": {"listen": "127.0.0.1:8090", "token": "t"}}).status.token == "t"


@pytest.fixture(scope="module")
def lab_status(tmp_path_factory):
    up = LabUp(tmp_path_factory.mktemp("status") / "lab", ["--status-token", TOKEN])
    up.start()
    yield up
    up.stop()


def _get(path: str, auth: str | None) -> tuple[int, bytes, str]:
    req = urllib.request.Request(f"http://{STATUS}{path}", headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), ""


def test_status_json_metrics_and_page(lab_status: LabUp) -> None:
    assert _get("/status.json", None)[0] == 401
    assert _get("/status.json", "Bearer wrong")[0] == 401
    assert _get("/metrics", "Basic " + base64.b64encode(b"admin:nope").decode())[0] == 401
    bearer = f"Bearer {TOKEN}"
    code, body, _ = _get("/status.json", bearer)
    st = json.loads(body)
    assert code == 200 and st["role"] == "core"
    zones = {z["name"]: z for z in st["zones"]}
    assert zones["Traversal Zone"]["state"] == "active" and zones["Call Control"]["type"] == "neighbour"
    # A call through the core shows up in the calls list.
    subprocess.run([sys.executable, "-m", "edgeway", "call", "sip:nobody@nowhere.edgeway.test", "--via", "127.0.0.3:5060",
                    "--transport", "tcp", "--bind", "127.0.0.4", "--duration", "1"], capture_output=True, timeout=60)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        st = json.loads(_get("/status.json", bearer)[1])
        if any(c["dst_alias"] == "sip:nobody@nowhere.edgeway.test" for c in st["calls"]):
            break
        time.sleep(0.2)
    assert any(c["dst_alias"] == "sip:nobody@nowhere.edgeway.test" for c in st["calls"]), st["calls"]
    code, body, ctype = _get("/metrics", bearer)
    assert code == 200 and ctype.startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert {"edgeway_calls", "edgeway_zone_up", "edgeway_transactions", "edgeway_relay_packets",
            "edgeway_tls_handshake_failures", "edgeway_traversal_connects"} <= set(fams), sorted(fams)
    up = {s.labels["zone"]: s.value for s in fams["edgeway_zone_up"].samples}
    assert up == {"Traversal Zone": 1.0}
    attempted = [s.value for s in fams["edgeway_calls"].samples if s.labels.get("outcome") == "attempted"]
    assert attempted and attempted[0] >= 1
    code, page, ctype = _get("/", bearer)
    assert code == 200 and ctype.startswith("text/html") and b"status.json" in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium (Debian chromium) is not installed")
def test_status_page_in_headless_chromium(lab_status: LabUp, tmp_path) -> None:
    """The page, loaded in headless Chromium with Basic credentials, lists the lab's zones
    and a call in progress (SIPp inside → core → edge → SIPp outside, held 6 s)."""
    from support.harness import PCAP, SIPP_DIR, sipp_available, sipp_result, start_sipp

    if not sipp_available():
        pytest.skip("sipp (Debian sip-tester) is not installed")
    uas = start_sipp(["-sf", str(SIPP_DIR / "uas_echo.xml"), "-i", "127.0.0.5", "-p", "5060", "-t", "u1",
                      "-mi", "127.0.0.5", "-mp", "20000", "-rtp_echo", "-m", "1"], tmp_path, "uas")
    try:
        uac = start_sipp(["-sf", str(SIPP_DIR / "uac_pcap.xml"), "-i", "127.0.0.4", "-p", "5070", "-t", "t1",
                          "-s", "bob", "-key", "domain", "partner.edgeway.test", "-key", "pcap", str(PCAP),
                          "-mi", "127.0.0.4", "-mp", "30000", "-d", "6000", "-m", "1", "-timeout", "30",
                          "127.0.0.3:5060"], tmp_path, "uac")
        time.sleep(2.0)
        page = subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
                               f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=3000", "--dump-dom",
                               f"http://admin:{TOKEN}@{STATUS}/"], capture_output=True, text=True, timeout=60)
        res = sipp_result(uac, tmp_path, "uac", timeout_s=30)
    finally:
        sipp_result(uas, tmp_path, "uas", timeout_s=15)
    dom = page.stdout
    assert res.successful == 1, res.log
    assert "<td>Traversal Zone</td><td>traversal_client</td><td class=\"active\">active</td>" in dom, dom[-2000:]
    assert "1 active call(s)" in dom and "sip:bob@partner.edgeway.test" in dom and "<td>connected</td>" in dom, dom[-2000:]
