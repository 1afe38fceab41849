"""A running node fed every RFC 4475 message over UDP and TCP, in a fresh network
namespace with only loopback up: each gets the manifest's outcome and the node keeps
answering afterwards."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib

import pytest

from conftest import RFC4475, ROOT

MANIFEST = {m["name"]: m for m in tomllib.loads((RFC4475 / "MANIFEST.toml").read_text())["message"]}
SEMANTIC_STATUS = {"unkscm": "416", "novelsc": "416", "bext01": "420", "zeromf": "483"}


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def results() -> dict:
    if not _can_unshare():
        pytest.skip("unshare -n is not permitted here (needs root or user namespaces)")
    script = (
        f"ip link set lo up 2>/dev/null; exec {sys.executable} {ROOT / 'tests' / 'torture_node.py'} {RFC4475}"
    )
    proc = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _in_dialog(path) -> bool:
    """True when the torture message's To header carries a tag (an in-dialog request)."""
    from edgeway.sip.message import ParseError, parse_message

    try:
        return parse_message(path.read_bytes()).to_tag is not None
    except (ParseError, ValueError):
        return False


def _has_content_length(path) -> bool:
    """True when the message's header section has a Content-Length (or ``l``) field."""
    head = path.read_bytes().replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    return any(line.split(b":", 1)[0].strip().lower() in (b"content-length", b"l") for line in head.split(b"\n")[1:])


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_node_outcome(results: dict, name: str) -> None:
    entry, got = MANIFEST[name], results[name]
    for transport in ("udp", "tcp"):
        lines = got[transport]
        codes = [line.split(" ")[1] for line in lines]
        if transport == "tcp" and not _has_content_length(RFC4475 / entry["file"]):
            # inv2543 (RFC 2543 syntax) has none: Content-Length is mandatory on streams
            # (RFC 3261 §18.3), so the request is answered 400 and the connection closed.
            assert codes == ["400"] and got["tcp_closed"], (transport, lines)
            continue
        if entry["outcome"] == "reject":
            # Never forwarded: either a 400 or nothing at all (no response could be formed).
            assert all(c == "400" for c in codes), (transport, lines)
        elif name in SEMANTIC_STATUS:
            assert SEMANTIC_STATUS[name] in codes, (transport, lines)
        elif (RFC4475 / entry["file"]).read_bytes().startswith(b"SIP/2.0 "):
            assert lines == [], (transport, lines)  # a response is never answered
        else:
            # Routed (no rule: 404; preloaded Route to a dead port: 408), or, for an
            # in-dialog request (To tag) matching no dialog of the node, 481.
            in_dialog = _in_dialog(RFC4475 / entry["file"])
            allowed = ("100", "481") if in_dialog else ("100", "404", "408", "503")
            assert lines and all(c in allowed for c in codes), (transport, lines)
    if name == "mcl01":
        assert got["tcp_closed"], "framing is undefined: the connection must be closed"


def test_node_still_answers(results: dict) -> None:
    assert any(" 200 " in line for line in results["_alive_udp"]), results["_alive_udp"]
    assert any(" 200 " in line for line in results["_alive_tcp"]), results["_alive_tcp"]


def test_insuf_gets_400_when_possible(results: dict) -> None:
    # insuf lacks Call-ID/From/To: no valid response can be formed, so it is dropped;
    # badaspec has all of them and gets a 400 with a reason phrase.
    assert results["insuf"]["udp"] == []
    assert any(line.startswith("SIP/2.0 400 ") for line in results["badaspec"]["udp"])
