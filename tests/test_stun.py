"""STUN Binding responder (RFC 8489, RFC 3489 classic clients): sans-IO unit tests,
and interop with coturn's ``turnutils_stunclient`` on loopback (127.0.31.x)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import subprocess
import time

import pytest
from aioice import stun as A

from edgeway.turn import stun as S
from edgeway.turn.stun import Auth, BindingResponder

SRC = ("192.0.2.7", 40000)
LOCAL = ("127.0.31.1", 3478)
NOW = 1_800_000_000.0


def binding(fingerprint: bool = True, attrs: dict | None = None) -> tuple[bytes, bytes]:
    m = A.Message(A.Method.BINDING, A.Class.REQUEST, attributes=attrs or {})
    if fingerprint:
        m.add_fingerprint()
    return bytes(m), m.transaction_id


def test_fast_path_xor_mapped_address_and_fingerprint():
    r = BindingResponder()
    for fp in (True, False):
        raw, tid = binding(fp)
        out = r.respond(raw, SRC, LOCAL, NOW)
        msg = A.parse_message(out)  # aioice checks FINGERPRINT
        assert msg.message_class == A.Class.RESPONSE and msg.transaction_id == tid
        assert msg.attributes["XOR-MAPPED-ADDRESS"] == SRC
        assert "FINGERPRINT" in msg.attributes and msg.attributes["SOFTWARE"] == "Edgeway"
    assert r.requests == 2


def test_fast_and_general_paths_agree():
    r = BindingResponder()
    raw, _ = binding()
    assert r.respond(raw, SRC, LOCAL, NOW) == r.respond_general(raw, SRC, LOCAL, NOW)


def test_bad_fingerprint_dropped():
    r = BindingResponder()
    raw, _ = binding()
    bad = raw[:-1] + bytes([raw[-1] ^ 1])
    assert r.respond(bad, SRC, LOCAL, NOW) is None
    assert r.dropped == 1


def test_ipv6_source():
    r = BindingResponder()
    raw, _ = binding()
    out = r.respond(raw, ("2001:db8::1", 5000), LOCAL, NOW)
    assert A.parse_message(out).attributes["XOR-MAPPED-ADDRESS"] == ("2001:db8::1", 5000)


def test_not_a_request_ignored():
    r = BindingResponder()
    m = A.Message(A.Method.BINDING, A.Class.INDICATION)
    assert r.respond(bytes(m), SRC, LOCAL, NOW) is None
    assert r.respond(b"\x80" * 40, SRC, LOCAL, NOW) is None


def test_classic_rfc3489_request_gets_mapped_address():
    r = BindingResponder()
    tid16 = os.urandom(16)
    req = struct.pack("!HH", 0x0001, 0) + tid16  # no magic cookie: 16-byte transaction ID
    out = r.respond(req, SRC, LOCAL, NOW)
    assert out[:2] == b"\x01\x01" and out[4:20] == tid16
    attrs = {a.type: a.value for a in S.scan(out)}
    assert attrs[S.MAPPED_ADDRESS] == struct.pack("!BBH", 0, 1, SRC[1]) + socket.inet_aton(SRC[0])
    assert S.SOURCE_ADDRESS in attrs and S.FINGERPRINT not in attrs and S.XOR_MAPPED_ADDRESS not in attrs
    assert r.classic == 1
    # a classic CHANGE-REQUEST for another address gets no answer (no alternate address here)
    change = struct.pack("!HH", 0x0001, 8) + tid16 + struct.pack("!HHI", S.CHANGE_REQUEST, 4, 6)
    assert r.respond(change, SRC, LOCAL, NOW) is None
    same = struct.pack("!HH", 0x0001, 8) + tid16 + struct.pack("!HHI", S.CHANGE_REQUEST, 4, 0)
    assert r.respond(same, SRC, LOCAL, NOW) is not None


def test_unknown_comprehension_required_attribute_420():
    r = BindingResponder()
    raw, tid = binding(fingerprint=False)
    raw = S.append_attr(raw, 0x0033, b"\x00\x00\x00\x00")
    msg = A.parse_message(r.respond(raw, SRC, LOCAL, NOW))
    assert msg.message_class == A.Class.ERROR and msg.error_code == 420


def test_change_request_without_alternate_420():
    r = BindingResponder()
    raw, _ = binding(attrs={"CHANGE-REQUEST": 6})
    assert A.parse_message(r.respond(raw, SRC, LOCAL, NOW)).error_code == 420


def _signed(tid_msg: A.Message, key: bytes, sha256: bool) -> bytes:
    raw = bytes(tid_msg)
    return S.finish(raw, key, sha256=sha256)


@pytest.mark.parametrize("sha256", [False, True])
def test_long_term_credentials_401_then_signed_response(sha256):
    auth = Auth("edgeway.test", {"alice": "pw"}, nonce_secret=b"k")
    r = BindingResponder(auth=auth, require_auth=True)
    raw, _ = binding()
    err = A.parse_message(r.respond(raw, SRC, LOCAL, NOW))
    assert err.error_code == 401
    realm, nonce = err.attributes["REALM"], err.attributes["NONCE"]
    assert realm == "edgeway.test"
    key = S.long_term_key("alice", realm, "pw")
    m = A.Message(A.Method.BINDING, A.Class.REQUEST,
                  attributes={"USERNAME": "alice", "REALM": realm, "NONCE": nonce})
    out = r.respond(_signed(m, key, sha256), SRC, LOCAL, NOW)
    attrs = S.scan(out)
    assert S.check_integrity(out, attrs, key) is True
    assert any(a.type == (S.MESSAGE_INTEGRITY_SHA256 if sha256 else S.MESSAGE_INTEGRITY) for a in attrs)
    assert A.parse_message(out).attributes["XOR-MAPPED-ADDRESS"] == SRC
    # MESSAGE-INTEGRITY (SHA-1) responses are checked by aioice too
    if not sha256:
        assert A.parse_message(out).check_message_integrity(key)


def test_wrong_password_401_counted_and_stale_nonce_438():
    auth = Auth("r", {"alice": "pw"}, nonce_secret=b"k", nonce_lifetime_s=60)
    r = BindingResponder(auth=auth, require_auth=True)
    nonce = auth.nonce(SRC[0], NOW)
    m = A.Message(A.Method.BINDING, A.Class.REQUEST, attributes={"USERNAME": "alice", "REALM": "r", "NONCE": nonce})
    bad = _signed(m, S.long_term_key("alice", "r", "nope"), False)
    assert A.parse_message(r.respond(bad, SRC, LOCAL, NOW)).error_code == 401
    assert r.auth_failures == 1
    good = _signed(m, S.long_term_key("alice", "r", "pw"), False)
    stale = A.parse_message(r.respond(good, SRC, LOCAL, NOW + 61))
    assert stale.error_code == 438 and stale.attributes["NONCE"] != nonce
    # a nonce given to another client IP is not accepted
    assert A.parse_message(r.respond(good, ("192.0.2.8", 1), LOCAL, NOW)).error_code == 401


def test_rest_credentials_and_expiry():
    auth = Auth("r", shared_secret="s3cret", nonce_secret=b"k")
    user = f"{int(NOW) + 100}:bob"
    assert auth.key_for(user, NOW) == S.long_term_key(user, "r", S.rest_password("s3cret", user))
    assert auth.key_for(user, NOW + 101) is None
    assert auth.key_for("bob", NOW) is None


def test_fast_path_rate():
    """The hand-made fast path stays well under the 20 µs budget of 50,000/s."""
    r = BindingResponder()
    raw, _ = binding()
    t = time.perf_counter()
    for _ in range(20000):
        r.respond(raw, SRC, LOCAL, NOW)
    assert (time.perf_counter() - t) / 20000 < 20e-6


# ---- interop: coturn's turnutils_stunclient ----------------------------------------------------

STUNCLIENT = shutil.which("turnutils_stunclient")


@pytest.mark.skipif(STUNCLIENT is None, reason="coturn (turnutils_stunclient) not installed")
def test_interop_turnutils_stunclient():
    from edgeway.turn.server import TurnServer

    async def main():
        srv = TurnServer(BindingResponder())
        try:
            _, port = await srv.listen_udp("127.0.31.1", 0)
            p = await asyncio.create_subprocess_exec(STUNCLIENT, "-p", str(port), "-L", "127.0.31.9", "127.0.31.1",
                                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                out, _ = await asyncio.wait_for(p.communicate(), 10)
            finally:
                if p.returncode is None:
                    p.kill()
                    await p.wait()
            return out.decode(), srv.stats()
        finally:
            await srv.close()

    out, stats = asyncio.run(main())
    assert "127.0.31.9" in out, out  # the mapped address it reports is ours
    assert stats["binding_requests"] >= 1


def test_stun_only_server_over_a_stream_connection():
    """STUN over TCP/TLS (RFC 8489 §6.2.2): messages framed by their length, answered
    on the connection, several per segment and split across segments."""
    from edgeway.turn.server import TurnServer, _StreamConn

    class T:
        def __init__(self):
            self.out = []

        def write(self, data):
            self.out.append(bytes(data))

        def is_closing(self):
            return False

        def get_write_buffer_size(self):
            return 0

        def close(self):
            self.out.append(b"<closed>")

        def get_extra_info(self, name):
            return SRC

    srv = TurnServer(BindingResponder(), loop=object())
    conn = _StreamConn(srv, "tls", LOCAL)
    t = T()
    conn.connection_made(t)
    a, _ = binding()
    b, _ = binding(fingerprint=False)
    stream = a + b
    conn.data_received(stream[:7])
    conn.data_received(stream[7:30])
    conn.data_received(stream[30:])
    assert len(t.out) == 2
    assert all(A.parse_message(o).attributes["XOR-MAPPED-ADDRESS"] == SRC for o in t.out)
    conn.data_received(b"\xff\xff\xff\xff")  # neither STUN nor ChannelData: the connection is closed
    assert t.out[-1] == b"<closed>"


@pytest.mark.skipif(STUNCLIENT is None, reason="coturn (turnutils_stunclient) not installed")
def test_interop_node_stun_only(tmp_path):
    """An edge node with ``[turn] enabled, relay = false``: STUN Binding on two UDP ports
    (3478-style and a media-node 5004-style extra port) for turnutils_stunclient."""
    from edgeway.config.load import parse_config
    from edgeway.diag.events import EventLog
    from edgeway.node import Node

    cfg = parse_config({
        "role": "edge", "name": "edge",
        "sip": {"listen_ip": "127.0.31.1", "udp_port": 0, "tcp_port": 0, "tls_port": 0},
        "media": {"port_min": 42200, "port_max": 42299},
        "turn": {"enabled": True, "relay": False, "udp_ports": [34790, 50040], "tcp_ports": [34790],
                 "tls_ports": []},
    })

    async def main():
        node = Node(cfg, EventLog("edge", str(tmp_path / "edge.jsonl")))
        outs = []
        try:
            await node.start()
            for port in (34790, 50040):
                p = await asyncio.create_subprocess_exec(STUNCLIENT, "-p", str(port), "-L", "127.0.31.9",
                                                         "127.0.31.1", stdout=subprocess.PIPE,
                                                         stderr=subprocess.STDOUT)
                try:
                    out, _ = await asyncio.wait_for(p.communicate(), 10)
                finally:
                    if p.returncode is None:
                        p.kill()
                        await p.wait()
                outs.append(out.decode())
            return outs, node.turn.stats()
        finally:
            await node.close()

    outs, stats = asyncio.run(main())
    assert all("127.0.31.9" in o for o in outs), outs
    assert stats["binding_requests"] >= 2 and "allocations" not in stats
