"""TURN server (RFC 8656): sans-IO unit tests of :class:`TurnCore`, and interop with
coturn's ``turnutils_uclient`` + ``turnutils_peer`` on loopback (127.0.31.x)."""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
import subprocess

import pytest
from aioice import stun as A

from edgeway.turn import stun as S
from edgeway.turn.allocations import FreeRelay, NeedRelay, Reply, ToPeer, TurnCore
from edgeway.turn.stun import Auth

NOW = 1_800_000_000.0
KEY = ("udp", ("192.0.2.7", 40000), ("127.0.31.1", 3478))
PEER = ("198.51.100.9", 5000)
RELAYED = ("127.0.31.1", 41000)


class Client:
    """A minimal TURN client on the sans-IO core (long-term credentials, 401 dance)."""

    def __init__(self, core: TurnCore, user: str = "alice", password: str = "pw", key=KEY):
        self.core, self.user, self.password, self.key = core, user, password, key
        self.nonce = None
        self.realm = core.auth.realm
        self.needs = []

    def request(self, method: int, attrs: dict | None = None, raw_attrs=(), now=NOW, sha256=False, sign=True):
        m = A.Message(A.Method(method), A.Class.REQUEST, attributes=dict(attrs or {}))
        if sign and self.nonce is not None:
            m.attributes.update({"USERNAME": self.user, "REALM": self.realm, "NONCE": self.nonce})
        raw = bytes(m)
        for t, v in raw_attrs:
            raw = S.append_attr(raw, t, v)
        if sign and self.nonce is not None:
            raw = S.finish(raw, S.long_term_key(self.user, self.realm, self.password), sha256=sha256)
        acts = self.core.handle(raw, self.key, now)
        out = []
        for a in acts:
            if isinstance(a, NeedRelay):
                self.needs.append(a.request)
                port = RELAYED[1] + (1 if a.request.reserved is not None else 0)
                out += self.core.relay_ready(a.request, (RELAYED[0], port), ctx="relay",
                                             reservation=f"held:{RELAYED[1] + 1}" if a.request.reserve else None)
            else:
                out.append(a)
        return out, m.transaction_id

    def call(self, method: int, attrs=None, **kw):
        """Request; on 401/438 take REALM/NONCE and retry once. Returns (parsed reply, other actions)."""
        acts, _ = self.request(method, attrs, **kw)
        reply = [a for a in acts if isinstance(a, Reply)]
        msg = A.parse_message(reply[0].data)
        if msg.error_code in (401, 438) and kw.get("sign", True):
            self.nonce = msg.attributes["NONCE"]
            self.realm = msg.attributes["REALM"]
            acts, _ = self.request(method, attrs, **kw)
            reply = [a for a in acts if isinstance(a, Reply)]
            msg = A.parse_message(reply[0].data)
        return msg, [a for a in acts if not isinstance(a, Reply)]

    def allocate(self, **kw):
        return self.call(3, {"REQUESTED-TRANSPORT": 17 << 24}, **kw)


def core(**kw) -> TurnCore:
    kw.setdefault("denied_peers", ())  # the interop peers are on loopback
    return TurnCore(Auth("edgeway.test", {"alice": "pw", "bob": "pw2"}, shared_secret="s3cret", nonce_secret=b"k"), **kw)


def xpeer(peer=PEER, tid=None):
    return {"XOR-PEER-ADDRESS": peer}


def test_allocate_401_then_success_with_relayed_and_mapped_address():
    c = Client(core())
    first, _ = c.request(3, {"REQUESTED-TRANSPORT": 17 << 24})
    err = A.parse_message(first[0].data)
    assert err.error_code == 401 and err.attributes["REALM"] == "edgeway.test" and err.attributes["NONCE"]
    msg, _ = c.allocate()
    assert msg.message_class == A.Class.RESPONSE
    assert msg.attributes["XOR-RELAYED-ADDRESS"] == RELAYED
    assert msg.attributes["XOR-MAPPED-ADDRESS"] == KEY[1]
    assert msg.attributes["LIFETIME"] == 600
    assert msg.check_message_integrity(S.long_term_key("alice", "edgeway.test", "pw"))
    assert c.core.stats()["allocations"] == 1


def test_allocate_with_message_integrity_sha256():
    c = Client(core())
    msg, _ = c.allocate(sha256=True)
    assert msg.message_class == A.Class.RESPONSE


def test_bad_password_401_and_counted():
    c = Client(core(), password="wrong")
    msg, _ = c.allocate()
    assert msg.error_code == 401 and c.core.auth_failures == 1


def test_stale_nonce_438():
    c = Client(core())
    c.allocate()
    c2 = Client(c.core, key=("udp", ("192.0.2.7", 40001), KEY[2]))
    c2.nonce = c.nonce
    acts, _ = c2.request(3, {"REQUESTED-TRANSPORT": 17 << 24}, now=NOW + 10_000)
    msg = A.parse_message(acts[0].data)
    assert msg.error_code == 438 and msg.attributes["NONCE"] != c.nonce


def test_allocation_mismatch_437_and_retransmission():
    c = Client(core())
    c.allocate()
    msg, _ = c.allocate()
    assert msg.error_code == 437
    # Refresh/permission on a 5-tuple without allocation: 437
    other = Client(c.core, key=("udp", ("192.0.2.7", 1), KEY[2]))
    msg, _ = other.call(4, {"LIFETIME": 600})
    assert msg.error_code == 437


def test_allocate_retransmission_gets_same_answer():
    cr = core()
    c = Client(cr)
    c.allocate()  # learn the nonce
    cr.delete(KEY, "test")
    m = A.Message(A.Method.ALLOCATE, A.Class.REQUEST, attributes={
        "REQUESTED-TRANSPORT": 17 << 24, "USERNAME": "alice", "REALM": c.realm, "NONCE": c.nonce})
    raw = S.finish(bytes(m), S.long_term_key("alice", c.realm, "pw"))
    [need] = cr.handle(raw, KEY, NOW)
    [first] = cr.relay_ready(need.request, RELAYED, "ctx")
    [again] = cr.handle(raw, KEY, NOW)
    assert again.data == first.data


def test_quota_486_total_and_per_user():
    cr = core(max_allocations_per_user=1, max_allocations=2)
    assert Client(cr).allocate()[0].message_class == A.Class.RESPONSE
    msg, _ = Client(cr, key=("udp", ("192.0.2.7", 2), KEY[2])).allocate()
    assert msg.error_code == 486
    assert Client(cr, "bob", "pw2", key=("udp", ("192.0.2.7", 3), KEY[2])).allocate()[0].message_class == A.Class.RESPONSE
    rest_user = f"{int(NOW) + 60}:carol"
    c = Client(cr, rest_user, S.rest_password("s3cret", rest_user), key=("udp", ("192.0.2.7", 4), KEY[2]))
    assert c.allocate()[0].error_code == 486
    assert cr.quota_rejections == 2


def test_rest_names_of_one_user_share_a_quota():
    cr = core(max_allocations_per_user=1)
    a, b = f"{int(NOW) + 60}:dave", f"{int(NOW) + 120}:dave"
    assert Client(cr, a, S.rest_password("s3cret", a)).allocate()[0].message_class == A.Class.RESPONSE
    c = Client(cr, b, S.rest_password("s3cret", b), key=("udp", ("192.0.2.7", 9), KEY[2]))
    assert c.allocate()[0].error_code == 486
    assert cr.per_user == {"dave": 1}
    cr.delete(KEY, "test")
    assert cr.per_user == {}


def test_rest_credentials_allocate_and_expired():
    cr = core()
    user = f"{int(NOW) + 60}:carol"
    assert Client(cr, user, S.rest_password("s3cret", user)).allocate()[0].message_class == A.Class.RESPONSE
    old = f"{int(NOW) - 1}:carol"
    c = Client(cr, old, S.rest_password("s3cret", old), key=("udp", ("192.0.2.7", 5), KEY[2]))
    assert c.allocate()[0].error_code == 401


def test_even_port_reservation_token():
    """RFC 8656 §7.2, §14.6, §14.9: EVEN-PORT with R reserves the next port; an Allocate
    with the RESERVATION-TOKEN gets it; a token with EVEN-PORT is 400, an unknown one 508."""
    from edgeway.turn.allocations import ReleaseReservation

    cr = core()
    c = Client(cr)
    msg, _ = c.call(3, {"REQUESTED-TRANSPORT": 17 << 24}, raw_attrs=[(S.EVEN_PORT, b"\x80")])
    token = next(a.value for a in S.scan(c.core.allocations[KEY].allocate_response) if a.type == S.RESERVATION_TOKEN)
    assert msg.attributes["XOR-RELAYED-ADDRESS"] == RELAYED and len(token) == 8
    c2 = Client(cr, key=("udp", ("192.0.2.7", 40001), KEY[2]))
    both = c2.call(3, {"REQUESTED-TRANSPORT": 17 << 24}, raw_attrs=[(S.RESERVATION_TOKEN, token), (S.EVEN_PORT, b"\x00")])
    assert both[0].error_code == 400
    assert c2.call(3, {"REQUESTED-TRANSPORT": 17 << 24}, raw_attrs=[(S.RESERVATION_TOKEN, b"x" * 8)])[0].error_code == 508
    msg, _ = c2.call(3, {"REQUESTED-TRANSPORT": 17 << 24}, raw_attrs=[(S.RESERVATION_TOKEN, token)])
    assert msg.attributes["XOR-RELAYED-ADDRESS"] == (RELAYED[0], RELAYED[1] + 1)
    assert c2.needs[-1].reserved == f"held:{RELAYED[1] + 1}" and not cr.reservations
    # an unredeemed reservation is released after ~30 s
    c3 = Client(cr, key=("udp", ("192.0.2.7", 40002), KEY[2]))
    c3.call(3, {"REQUESTED-TRANSPORT": 17 << 24}, raw_attrs=[(S.EVEN_PORT, b"\x80")])
    assert cr.expire(NOW + 10) == []
    assert [type(a) for a in cr.expire(NOW + 31)] == [ReleaseReservation]


def test_requested_transport_checks():
    c = Client(core())
    assert c.call(3, {})[0].error_code == 400
    assert c.call(3, {"REQUESTED-TRANSPORT": 6 << 24})[0].error_code == 442


def test_wrong_credentials_441_on_existing_allocation():
    cr = core()
    Client(cr).allocate()
    bob = Client(cr, "bob", "pw2")
    assert bob.call(4, {"LIFETIME": 600})[0].error_code == 441


def test_refresh_extends_and_lifetime_zero_deletes():
    cr = core(max_lifetime_s=3600)
    c = Client(cr)
    c.allocate()
    msg, _ = c.call(4, {"LIFETIME": 99999})
    assert msg.attributes["LIFETIME"] == 3600 and cr.allocations[KEY].expires == NOW + 3600
    msg, acts = c.call(4, {"LIFETIME": 0})
    assert msg.attributes["LIFETIME"] == 0
    assert [type(a) for a in acts] == [FreeRelay] and acts[0].reason == "refresh"
    assert KEY not in cr.allocations and cr.per_user == {}


def test_expiry_frees_relay():
    cr = core()
    Client(cr).allocate()
    assert cr.expire(NOW + 599) == []
    [free] = cr.expire(NOW + 601)
    assert free.reason == "expired" and not cr.allocations


def test_permissions_gate_send_and_data():
    cr = core()
    c = Client(cr)
    c.allocate()
    alloc = cr.allocations[KEY]
    send = A.Message(A.Method.SEND, A.Class.INDICATION, attributes={"XOR-PEER-ADDRESS": PEER, "DATA": b"hello"})
    assert cr.handle(bytes(send), KEY, NOW) == []  # no permission: dropped
    assert alloc.frame_to_client(PEER, b"x", NOW) is None
    msg, _ = c.call(8, xpeer())
    assert msg.message_class == A.Class.RESPONSE
    [act] = cr.handle(bytes(send), KEY, NOW)
    assert isinstance(act, ToPeer) and act.peer == PEER and act.data == b"hello"
    # data from the peer comes back as a Data indication
    data_ind = A.parse_message(alloc.frame_to_client(("198.51.100.9", 7777), b"back", NOW))
    assert data_ind.message_method == A.Method.DATA and data_ind.message_class == A.Class.INDICATION
    assert data_ind.attributes["XOR-PEER-ADDRESS"] == ("198.51.100.9", 7777) and data_ind.attributes["DATA"] == b"back"
    # permissions last 300 s (RFC 8656 §9)
    assert alloc.frame_to_client(PEER, b"x", NOW + 301) is None


def test_denied_peers_403():
    from edgeway.turn.allocations import DEFAULT_DENIED_PEERS

    c = Client(core(denied_peers=DEFAULT_DENIED_PEERS + ("10.0.0.0/8",)))
    c.allocate()
    for peer in (("127.0.0.1", 22), ("10.1.2.3", 5060), ("224.0.0.1", 9)):
        assert c.call(8, xpeer(peer))[0].error_code == 403
        assert c.call(9, {"CHANNEL-NUMBER": 0x4000, **xpeer(peer)})[0].error_code == 403
    assert c.call(8, xpeer())[0].message_class == A.Class.RESPONSE
    assert c.core.stats()["denied_peers"] == 6


def test_create_permission_needs_peer_address():
    c = Client(core())
    c.allocate()
    assert c.call(8, {})[0].error_code == 400


def test_channel_bind_rules_and_channel_data():
    cr = core()
    c = Client(cr)
    c.allocate()
    alloc = cr.allocations[KEY]
    for bad in (0x3FFF, 0x7FFF, 0x8000):  # RFC 8656 §12 (0x4000-0x4FFF; RFC 5766's range accepted)
        assert c.call(9, {"CHANNEL-NUMBER": bad, **xpeer()})[0].error_code == 400
    assert c.call(9, {"CHANNEL-NUMBER": 0x4000, **xpeer()})[0].message_class == A.Class.RESPONSE
    # the same number for another peer, or another number for the same peer: 400
    assert c.call(9, {"CHANNEL-NUMBER": 0x4000, **xpeer(("198.51.100.10", 1))})[0].error_code == 400
    assert c.call(9, {"CHANNEL-NUMBER": 0x4001, **xpeer()})[0].error_code == 400
    # rebinding the same pair refreshes it
    assert c.call(9, {"CHANNEL-NUMBER": 0x4000, **xpeer()})[0].message_class == A.Class.RESPONSE
    assert cr.channel_peer(KEY, 0x4000, NOW) == (alloc, PEER)
    assert cr.channel_peer(KEY, 0x4001, NOW) is None
    # data from the bound peer is ChannelData; the channel installed a permission
    assert alloc.frame_to_client(PEER, b"abc", NOW) == struct.pack("!HH", 0x4000, 3) + b"abc"
    alloc.stream = True  # over TCP/TLS ChannelData is padded to 4 bytes (RFC 8656 §12.5)
    assert alloc.frame_to_client(PEER, b"abc", NOW) == struct.pack("!HH", 0x4000, 3) + b"abc\x00"
    # channel bindings last 600 s
    assert cr.channel_peer(KEY, 0x4000, NOW + 601) is None


def test_binding_on_turn_port_and_unknown_attribute():
    cr = core()
    req = A.Message(A.Method.BINDING, A.Class.REQUEST)
    [rep] = cr.handle(bytes(req), KEY, NOW)
    assert A.parse_message(rep.data).attributes["XOR-MAPPED-ADDRESS"] == KEY[1]
    c = Client(cr)
    msg, _ = c.call(3, {"REQUESTED-TRANSPORT": 17 << 24}, raw_attrs=[(0x0030, b"\0\0\0\0")])
    assert msg.error_code == 420


# ---- interop: coturn's turnutils_uclient against the asyncio server ---------------------------

UCLIENT = shutil.which("turnutils_uclient")
PEER_BIN = shutil.which("turnutils_peer")


async def _run_uclient(args: list[str], timeout: float = 20.0) -> str:
    p = await asyncio.create_subprocess_exec(UCLIENT, *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(p.communicate(), timeout)
    finally:
        if p.returncode is None:
            p.kill()
            await p.wait()
    return out.decode(errors="replace")


def _received(out: str) -> tuple[int, int]:
    """(sent, received) packets from uclient's final statistics line."""
    sent = re.findall(r"tot_send_msgs=(\d+)", out)
    recv = re.findall(r"tot_recv_msgs=(\d+)", out)
    assert sent and recv, out[-2000:]
    return int(sent[-1]), int(recv[-1])


@pytest.mark.skipif(UCLIENT is None or PEER_BIN is None, reason="coturn tools not installed")
@pytest.mark.parametrize("mode", ["udp-channels", "udp-send", "tcp-channels", "tcp-unpadded-odd", "tcp-padded-odd",
                                  "rest-udp", "udp-client-to-client", "udp-rtcp-pairs"])
def test_interop_turnutils_uclient(mode):
    from edgeway.media.ports import PortAllocator
    from edgeway.turn.server import TurnServer

    async def main():
        cr = core()
        srv = TurnServer(cr.binding, cr, PortAllocator("127.0.31.1", 41000, 41199))
        peer = None
        try:
            _, port = await srv.listen_udp("127.0.31.1", 0)
            _, tport = await srv.listen_stream("127.0.31.1", 0)
            peer = await asyncio.create_subprocess_exec(PEER_BIN, "-L", "127.0.31.2", "-p", "3480",
                                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await asyncio.sleep(0.2)
            if mode == "udp-client-to-client":  # -y: two clients relay to each other's relayed address
                args = ["-y", "-n", "10", "-m", "1", "-z", "5", "-c", "-L", "127.0.31.3"]
            elif mode == "udp-rtcp-pairs":  # no -c: RTP+RTCP allocations (EVEN-PORT)
                args = ["-e", "127.0.31.2", "-r", "3480", "-n", "10", "-m", "1", "-z", "5", "-L", "127.0.31.3"]
            else:
                args = ["-e", "127.0.31.2", "-r", "3480", "-n", "10", "-m", "1", "-z", "5", "-c", "-L", "127.0.31.3"]
            if mode == "rest-udp":
                args += ["-u", "carol", "-W", "s3cret"]
            else:
                args += ["-u", "alice", "-w", "pw"]
            if mode == "udp-send":
                args += ["-s"]
            if mode == "tcp-unpadded-odd":
                args += ["-l", "101"]
            if mode == "tcp-padded-odd":
                args += ["-l", "101", "-D"]
            if mode.startswith("tcp"):
                args += ["-t", "-p", str(tport)]
            else:
                args += ["-p", str(port)]
            out = await _run_uclient(args + ["127.0.31.1"])
            return out, srv.stats()
        finally:
            if peer is not None:
                peer.terminate()
                await peer.wait()
            await srv.close()

    out, stats = asyncio.run(main())
    sent, recv = _received(out)
    # -y runs two clients (each sends 10) and without -c each client has an RTP and an
    # RTCP allocation, the RTCP one on the odd port reserved by EVEN-PORT's R bit.
    want = {"udp-client-to-client": 20, "udp-rtcp-pairs": 20}.get(mode, 10)
    assert sent == want and recv >= want - 1, out[-2000:]
    assert stats["allocations_created"] >= 1 and stats["to_peer_packets"] >= want - 1
    assert stats["to_client_packets"] >= want - 1


# ---- configuration -----------------------------------------------------------------------------

def _cfg(turn: dict, role: str = "edge", tls: bool = False):
    from edgeway.config.load import parse_config

    data = {"role": role, "name": "e", "sip": {"listen_ip": "127.0.31.1"}, "turn": turn}
    if tls:
        data["tls"] = {"cert_file": "c.pem", "key_file": "k.pem"}
    return parse_config(data)


def test_config_defaults_off():
    from edgeway.config.models import TurnConfig

    t = TurnConfig()
    assert not t.enabled and t.udp_ports == [3478] and t.tcp_ports == [3478] and t.tls_ports == [5349]
    assert (t.default_lifetime_s, t.max_lifetime_s) == (600, 3600)


def test_config_errors_name_key_value_rule():
    from edgeway.config.load import ConfigError

    with pytest.raises(ConfigError) as ei:
        _cfg({"enabled": True, "tls_ports": []})
    assert "turn.users" in str(ei.value) and "must hold a credential" in str(ei.value)
    with pytest.raises(ConfigError) as ei:
        _cfg({"enabled": True, "users": [{"username": "a", "password": "b"}]})
    assert "turn.tls_ports" in str(ei.value)
    with pytest.raises(ConfigError) as ei:
        _cfg({"enabled": True, "shared_secret": "s", "tls_ports": []}, role="core")
    assert "turn.enabled" in str(ei.value)
    with pytest.raises(ConfigError) as ei:
        _cfg({"udp_ports": [3478, 3478], "max_lifetime_s": 10})
    assert "turn.udp_ports" in str(ei.value) and "turn.max_lifetime_s = 10" in str(ei.value)
    cfg = _cfg({"enabled": True, "shared_secret": "s", "udp_ports": [3478, 5004], "tls_ports": [5349, 443]}, tls=True)
    assert cfg.turn.udp_ports == [3478, 5004]


@pytest.mark.skipif(UCLIENT is None or PEER_BIN is None, reason="coturn tools not installed")
def test_interop_node_tls_and_events(tmp_path):
    """An edge node with ``[turn]`` enabled: TURN over TLS with the node's certificate
    (``turnutils_uclient -t -S``), relay ports from the media range, events emitted."""
    import json

    from edgeway.config.load import parse_config
    from edgeway.diag.events import EventLog
    from edgeway.node import Node
    from edgeway.security.pki import write_lab_pki

    pki = write_lab_pki(tmp_path / "pki", {"edge": {"ip_sans": ["127.0.31.1"]}})["edge"]
    cfg = parse_config({
        "role": "edge", "name": "edge",
        "sip": {"listen_ip": "127.0.31.1", "udp_port": 0, "tcp_port": 0, "tls_port": 0},
        "tls": {"cert_file": str(pki["cert"]), "key_file": str(pki["key"])},
        "media": {"port_min": 42000, "port_max": 42199},
        "turn": {"enabled": True, "udp_ports": [34780], "tcp_ports": [], "tls_ports": [53490],
                 "users": [{"username": "alice", "password": "pw"}], "realm": "edgeway.test",
                 "denied_peer_ips": ["10.0.0.0/8"]},
    })
    log = tmp_path / "edge.jsonl"

    async def main():
        node = Node(cfg, EventLog("edge", str(log)))
        peer = None
        try:
            await node.start()
            peer = await asyncio.create_subprocess_exec(PEER_BIN, "-L", "127.0.31.2", "-p", "3481",
                                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await asyncio.sleep(0.2)
            out = await _run_uclient(["-t", "-S", "-u", "alice", "-w", "pw", "-e", "127.0.31.2", "-r", "3481",
                                      "-n", "10", "-m", "1", "-z", "5", "-c", "-L", "127.0.31.3", "-p", "53490",
                                      "127.0.31.1"])
            stats = node.turn.stats()
            return out, stats
        finally:
            if peer is not None:
                peer.terminate()
                await peer.wait()
            await node.close()

    out, stats = asyncio.run(main())
    sent, recv = _received(out)
    assert sent == 10 and recv >= 9, out[-2000:]
    assert stats["allocations_created"] >= 1 and ("tls", "127.0.31.1", 53490) in stats["listening"]
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert "turn started" in events and "turn allocation created" in events and "turn allocation deleted" in events


def test_dont_fragment_is_420():
    """RFC 8656 §7.2: relay sockets do not set DF, so DONT-FRAGMENT is unknown."""
    c = Client(core())
    msg, _ = c.call(3, {"REQUESTED-TRANSPORT": 17 << 24}, raw_attrs=[(S.DONT_FRAGMENT, b"")])
    assert msg.error_code == 420


def test_auth_failure_detail():
    cr = core()
    Client(cr, password="nope").allocate()
    assert cr.last_auth_failure == ("192.0.2.7", "alice", 401)


class _FakeSock:
    def __init__(self):
        self.sent = []

    def sendto(self, data, addr):
        self.sent.append((bytes(data), addr))


class _FakeTransport:
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
        return ("192.0.2.7", 40000)


@pytest.mark.parametrize("padded", [True, False])
def test_stream_framing_channeldata_with_and_without_padding(padded):
    """TCP/TLS: ChannelData and STUN back to back, split at every byte; the padding of
    RFC 8656 §12.5 is taken when present and not required (RFC 5766 clients)."""
    from edgeway.turn.server import TurnServer, _StreamConn

    cr = core()
    key = ("tcp", ("192.0.2.7", 40000), ("127.0.31.1", 3478))
    c = Client(cr, key=key)
    c.allocate()
    c.call(9, {"CHANNEL-NUMBER": 0x4001, **xpeer()})
    sock = _FakeSock()

    class Ctx:
        pass

    ctx = Ctx()
    ctx.sock = sock
    cr.allocations[key].ctx = ctx
    srv = TurnServer(cr.binding, cr, ports=object(), relay_ip="127.0.31.1", loop=object())
    conn = _StreamConn(srv, "tcp", key[2])
    t = _FakeTransport()
    conn.connection_made(t)

    def cd(payload):
        pad = b"\x00" * (-len(payload) & 3) if padded else b""
        return struct.pack("!HH", 0x4001, len(payload)) + payload + pad

    binding = bytes(A.Message(A.Method.BINDING, A.Class.REQUEST))
    stream = cd(b"a") + cd(b"bcdef") + binding + cd(b"\x00\x00") + cd(b"ghij") + cd(b"k")
    for i in range(len(stream)):  # one byte at a time: the worst split
        conn.data_received(stream[i:i + 1])
    assert [d for d, _ in sock.sent] == [b"a", b"bcdef", b"\x00\x00", b"ghij", b"k"]
    assert all(addr == PEER for _, addr in sock.sent)
    assert len(t.out) == 1 and A.parse_message(t.out[0]).attributes["XOR-MAPPED-ADDRESS"] == key[1]
    # whole stream at once, too
    sock.sent.clear()
    conn.data_received(stream)
    assert [d for d, _ in sock.sent] == [b"a", b"bcdef", b"\x00\x00", b"ghij", b"k"]


def test_fuzz_core_never_raises():
    """Arbitrary bytes (and mutated valid requests) in: actions or nothing out, never an exception."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    cr = core()
    Client(cr).allocate()
    valid = bytes(A.Message(A.Method.ALLOCATE, A.Class.REQUEST, attributes={"REQUESTED-TRANSPORT": 17 << 24}))

    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=200), st.integers(0, 200), st.binary(min_size=1, max_size=8))
    def check(data, at, patch):
        for msg in (data, valid[:at] + patch + valid[at + len(patch):], b"\x00\x01" + data[2:]):
            cr.handle(msg, KEY, NOW)
            cr.binding.respond(msg, KEY[1], KEY[2], NOW)
            cr.channel_peer(KEY, int.from_bytes(msg[:2].ljust(2, b"\0"), "big"), NOW)

    check()
