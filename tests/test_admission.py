"""Connection admission on stream listeners (issue 7 item 1), over real loopback sockets.

Every address here is in 127.0.22.0/24 and every port >= 22000 is picked by the kernel
(port 0), so these tests share nothing with the lab (127.0.0.2-127.0.0.9)."""

from __future__ import annotations

import asyncio
import resource
import socket
import ssl
import time

import pytest
import uvloop

from edgeway.config import LimitsConfig, parse_config
from edgeway.security import pki, tls
from edgeway.sip.message import Request, make_response
from edgeway.transport.admission import ConnectionLimits, plan_fds, source_key
from edgeway.transport.layer import TransportLayer

NODE = "127.0.22.1"
LOOPS = pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])


def options(n: int = 1) -> bytes:
    return (
        f"OPTIONS sip:{NODE} SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.22.9:5999;branch=z9hG4bKadm{n}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:a@{NODE}>;tag={n}\r\nTo: <sip:b@{NODE}>\r\n"
        f"Call-ID: adm{n}@127.0.22.9\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


class Events:
    """Records what the layer emits (stands in for an EventLog)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def emit(self, event: str, **fields) -> None:
        self.lines.append((event, fields))

    def named(self, event: str) -> list[dict]:
        return [f for e, f in self.lines if e == event]


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict:
    paths = pki.write_lab_pki(tmp_path_factory.mktemp("adm-pki"),
                              {"edge": {"common_name": "edge.adm.edgeway.test", "ip_sans": [NODE]}})
    e = paths["edge"]
    return {"server": tls.server_context(e["cert"], e["key"]), "ca": str(e["ca"])}


def client_ctx(certs: dict) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs["ca"])
    ctx.check_hostname = False
    return ctx


async def layer(limits: ConnectionLimits) -> tuple[TransportLayer, Events]:
    events = Events()
    tl = TransportLayer(events, limits)  # type: ignore[arg-type]

    def answer(msg, src) -> None:
        if type(msg) is Request:
            src.conn.send(make_response(msg, 200).to_bytes())

    tl.on_message = answer
    return tl, events


async def ask(src_ip: str, port: int, ctx: ssl.SSLContext | None = None, timeout: float = 3.0):
    """Connect from ``src_ip`` and send OPTIONS: ("ok", reader, writer) on a 200,
    ("refused", None, None) when the node resets or closes the connection instead."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            NODE, port, local_addr=(src_ip, 0), ssl=ctx, server_hostname=NODE if ctx else None), timeout)
        writer.write(options())
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError):
        return "refused", None, None
    if not line:
        return "refused", None, None
    assert line.startswith(b"SIP/2.0 200"), line
    await reader.readuntil(b"\r\n\r\n")
    return "ok", reader, writer


async def closed_after(reader: asyncio.StreamReader, t0: float, limit_s: float) -> float | None:
    """Seconds from ``t0`` until the node closes the connection (None: still open at ``limit_s``)."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            left = t0 + limit_s - loop.time()
            if left <= 0:
                return None
            data = await asyncio.wait_for(reader.read(4096), left)
            if not data:
                break
    except asyncio.TimeoutError:
        return None
    except (ConnectionError, OSError):
        pass
    return loop.time() - t0


# ---------------------------------------------------------------------------- caps


@LOOPS
@pytest.mark.parametrize("use_tls", [False, True], ids=["tcp", "tls"])
def test_per_source_cap_refuses_only_that_source(run, use_tls, certs) -> None:
    async def scenario():
        tl, events = await layer(ConnectionLimits(max_connections=100, max_connections_per_source=3))
        ctx = client_ctx(certs) if use_tls else None
        _, port = await tl.listen_stream(NODE, 0, tls=certs["server"] if use_tls else None)
        try:
            held = [await ask("127.0.22.2", port, ctx) for _ in range(3)]
            assert [h[0] for h in held] == ["ok"] * 3
            over = await ask("127.0.22.2", port, ctx)
            other = await ask("127.0.22.3", port, ctx)
            # A refused source gets in again as soon as one of its connections ends.
            held[0][2].close()
            for _ in range(100):
                await asyncio.sleep(0.01)
                if tl.per_source.get("127.0.22.2") == 2:
                    break
            again = await ask("127.0.22.2", port, ctx)
            return over[0], other[0], again[0], tl.admission_status(), events
        finally:
            await tl.close()

    over, other, again, status, events = run(asyncio.wait_for(scenario(), 20))
    assert (over, other, again) == ("refused", "ok", "ok")
    assert status["refused_per_source"] == 1 and status["refused_total"] == 0
    refused = events.named("connection refused")
    assert len(refused) == 1 and refused[0]["cause"] == "per-source limit"
    assert refused[0]["source"] == "127.0.22.2" and refused[0]["limit"] == 3
    # Refused before TLS: the layer never saw a handshake for it.
    assert not events.named("tls handshake failed")


@LOOPS
def test_total_cap(run) -> None:
    async def scenario():
        tl, events = await layer(ConnectionLimits(max_connections=4, max_connections_per_source=100))
        _, port = await tl.listen_stream(NODE, 0)
        try:
            held = [await ask(src, port) for src in ("127.0.22.2", "127.0.22.2", "127.0.22.3", "127.0.22.4")]
            held.append(await ask("127.0.22.5", port))
            return [h[0] for h in held], tl.admission_status(), events
        finally:
            await tl.close()

    got, status, events = run(asyncio.wait_for(scenario(), 20))
    assert got == ["ok"] * 4 + ["refused"]
    assert status["refused_total"] == 1 and status["open"] == 4 and status["peak"] == 4
    assert [e["cause"] for e in events.named("connection refused")] == ["total limit"]


@LOOPS
def test_traversal_listener_is_not_capped(run, certs) -> None:
    async def scenario():
        tl, _ = await layer(ConnectionLimits(max_connections=2, max_connections_per_source=2))
        _, sip_port = await tl.listen_stream(NODE, 0)
        _, trav_port = await tl.listen_stream(NODE, 0, tls=certs["server"], listener="traversal", limited=False)
        try:
            full = [await ask("127.0.22.2", sip_port) for _ in range(2)]
            refused = (await ask("127.0.22.6", sip_port))[0]
            # Both caps are full, yet the core's connections (from the source that fills
            # the per-source cap, and beyond both caps) get in.
            trav = [await ask("127.0.22.2", trav_port, client_ctx(certs)) for _ in range(3)]
            return [h[0] for h in full], refused, [h[0] for h in trav], tl.admission_status()
        finally:
            await tl.close()

    full, refused, trav, status = run(asyncio.wait_for(scenario(), 20))
    assert full == ["ok", "ok"] and refused == "refused" and trav == ["ok"] * 3
    assert status["open"] == 2 and status["streams"] == 5


@LOOPS
def test_silent_connections_make_room_for_a_new_client_at_the_total_cap(run, certs) -> None:
    """The total cap is full of connections that never said anything (half still in their
    TLS handshake): a new client still gets in, ending the oldest silent one once it is
    EVICT_MIN_AGE_S old; before that, and when the cap holds flows, it is refused."""

    async def scenario():
        tl, _ = await layer(ConnectionLimits(max_connections=40, max_connections_per_source=100))
        _, tcp_port = await tl.listen_stream(NODE, 0)
        _, tls_port = await tl.listen_stream(NODE, 0, tls=certs["server"])
        loop = asyncio.get_running_loop()
        silent = []
        for i in range(40):
            s = socket.socket()
            s.setblocking(False)
            s.bind((f"127.0.22.{40 + i % 4}", 0))
            await loop.sock_connect(s, (NODE, tls_port if i % 2 else tcp_port))
            silent.append(s)
        while tl.open_limited < 40:
            await asyncio.sleep(0.01)
        too_early = (await ask("127.0.22.50", tls_port, client_ctx(certs)))[0]
        await asyncio.sleep(1.1)
        held = [await ask("127.0.22.50", tls_port, client_ctx(certs)) for _ in range(2)]
        held += [await ask("127.0.22.51", tcp_port)]
        status = tl.admission_status()
        for s in silent:
            s.close()
        await tl.close()
        return too_early, [h[0] for h in held], status

    too_early, held, status = run(asyncio.wait_for(scenario(), 20))
    assert too_early == "refused" and held == ["ok"] * 3
    assert status["evicted"] == 3 and status["open"] == 40 and status["refused_total"] == 1


def test_refusal_events_are_rate_limited_per_source() -> None:
    async def scenario():
        tl, events = await layer(ConnectionLimits(max_connections=100, max_connections_per_source=1))
        _, port = await tl.listen_stream(NODE, 0)
        try:
            keep = await ask("127.0.22.7", port)
            for _ in range(20):
                assert (await ask("127.0.22.7", port))[0] == "refused"
            await asyncio.sleep(1.3)  # the window closes: one summary for the 19 not logged
            assert keep[0] == "ok"
            return tl.admission_status(), events
        finally:
            await tl.close()

    status, events = uvloop.run(asyncio.wait_for(scenario(), 20))
    assert status["refused_per_source"] == 20
    refused = events.named("connection refused")
    assert len([e for e in refused if e["peer"] is not None]) == 1
    assert [e["count"] for e in refused if e["peer"] is None] == [19]


# ---------------------------------------------------------------------------- idle timeouts


def test_slowloris_closed_at_pre_message_timeout_flows_at_flow_timeout() -> None:
    """A connection trickling one byte every 0.5 s is closed 1.5 s after accept; one that
    completed a message stays until the flow timeout (3 s), which bytes of an unfinished
    message do not restart and CRLF keepalives do (RFC 5626 §3.5.1)."""

    async def scenario():
        tl, events = await layer(ConnectionLimits(pre_message_idle_s=1.5, flow_idle_s=3.0, tls_handshake_timeout_s=1.0))
        _, port = await tl.listen_stream(NODE, 0)
        loop = asyncio.get_running_loop()

        async def trickle(writer, data: bytes, every: float) -> None:
            try:
                for i in range(len(data)):
                    writer.write(data[i:i + 1])
                    await asyncio.sleep(every)
            except (ConnectionError, OSError):
                pass

        async def keepalive(writer) -> None:
            try:
                while True:
                    await asyncio.sleep(0.8)
                    writer.write(b"\r\n\r\n")
            except (ConnectionError, OSError):
                pass

        try:
            t0 = loop.time()
            r_slow, w_slow = await asyncio.open_connection(NODE, port, local_addr=("127.0.22.10", 0))
            _, r_flow, w_flow = await ask("127.0.22.11", port)
            _, r_flow_slow, w_flow_slow = await ask("127.0.22.12", port)
            _, r_ka, w_ka = await ask("127.0.22.13", port)
            tasks = [asyncio.ensure_future(trickle(w_slow, options(), 0.5)),
                     asyncio.ensure_future(trickle(w_flow_slow, options(2), 0.5)),
                     asyncio.ensure_future(keepalive(w_ka))]
            ends = await asyncio.gather(closed_after(r_slow, t0, 6), closed_after(r_flow, t0, 6),
                                        closed_after(r_flow_slow, t0, 6), closed_after(r_ka, t0, 4.5))
            for t in tasks:
                t.cancel()
            return ends, tl.admission_status(), events
        finally:
            await tl.close()

    (slow, flow, flow_slow, ka), status, events = uvloop.run(asyncio.wait_for(scenario(), 20))
    assert slow is not None and 1.4 <= slow <= 2.3, slow
    # flow timeout 3 s after the last message, scanned every 0.3 s
    assert flow is not None and 2.9 <= flow <= 4.2, flow
    assert flow_slow is not None and 2.9 <= flow_slow <= 4.2, flow_slow
    assert ka is None  # keepalives kept it open past 4.5 s
    assert status["closed_pre_message"] == 1 and status["closed_flow_idle"] == 2
    causes = {e["cause"] for e in events.named("idle connections closed")}
    assert causes == {"no complete message", "flow idle"}


@LOOPS
def test_tls_handshake_never_completed_is_closed_at_handshake_timeout(run, certs) -> None:
    async def scenario():
        tl, events = await layer(ConnectionLimits(tls_handshake_timeout_s=1.0, pre_message_idle_s=2.0))
        _, port = await tl.listen_stream(NODE, 0, tls=certs["server"])
        loop = asyncio.get_running_loop()
        try:
            t0 = loop.time()
            r_raw, w_raw = await asyncio.open_connection(NODE, port, local_addr=("127.0.22.20", 0))
            # Shakes hands, then says nothing: the pre-message timeout ends it.
            r_tls, w_tls = await asyncio.open_connection(NODE, port, local_addr=("127.0.22.21", 0), ssl=client_ctx(certs),
                                                     server_hostname=NODE)
            ends = await asyncio.gather(closed_after(r_raw, t0, 4), closed_after(r_tls, t0, 4))
            await asyncio.sleep(0.05)
            return ends, tl.admission_status(), events
        finally:
            await tl.close()

    (raw, quiet), status, events = run(asyncio.wait_for(scenario(), 20))
    assert raw is not None and 0.9 <= raw <= 1.9, raw
    assert quiet is not None and 1.9 <= quiet <= 2.9, quiet
    assert status["handshake_timeouts"] == 1 and status["closed_pre_message"] == 1
    assert status["open"] == 0 and not status["sources"]
    failed = events.named("tls handshake failed")
    assert len(failed) == 1 and failed[0]["cause"] == "handshake timed out", failed


# ---------------------------------------------------------------------------- stress


def test_flood_of_idle_connections_leaves_room_for_a_tls_client(certs) -> None:
    """3,000 idle connections from six addresses, three to the TCP port, three to the TLS
    port (the findings: three addresses held 21,000): the per-source cap holds them to
    6 x 256, a TLS client from elsewhere still shakes hands and gets its OPTIONS answered
    at once, and the idle ones are gone at the handshake timeout (TLS port) and the
    pre-message timeout (TCP port) while the client's flow stays. Their handshake
    timeouts make a handful of events, not 768."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 8000
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    sources = [f"127.0.22.{30 + i}" for i in range(6)]
    per = 500

    async def scenario():
        tl, events = await layer(ConnectionLimits(max_connections=2500, max_connections_per_source=256,
                                                  pre_message_idle_s=3.0, tls_handshake_timeout_s=2.0))
        _, port = await tl.listen_stream(NODE, 0, tls=certs["server"])
        _, tcp_port = await tl.listen_stream(NODE, 0)
        loop = asyncio.get_running_loop()
        socks: list[socket.socket] = []

        async def flood(src: str, port: int) -> None:
            for _ in range(per):
                s = socket.socket()
                s.setblocking(False)
                s.bind((src, 0))
                socks.append(s)
                try:
                    await loop.sock_connect(s, (NODE, port))
                except ConnectionResetError:
                    pass  # refused before the connect was seen to complete

        try:
            t0 = loop.time()
            await asyncio.gather(*(flood(src, port if i % 2 else tcp_port) for i, src in enumerate(sources)))
            while tl.stats["accepted"] + tl.stats["refused_per_source"] + tl.stats["refused_total"] < len(socks):
                await asyncio.sleep(0.01)
            flooded = loop.time() - t0
            at_flood = tl.admission_status()
            t1 = time.monotonic()
            got, reader, writer = await ask("127.0.22.99", port, client_ctx(certs), timeout=2.0)
            answered = time.monotonic() - t1
            # The last idle one was accepted at t0 + flooded: all are gone one sweep (0.3 s)
            # after its pre-message timeout (3 s).
            end = t0 + flooded + 3.0 + 0.3 + 0.2
            while loop.time() < end and tl.stats["closed_pre_message"] + tl.stats["handshake_timeouts"] < 6 * 256:
                await asyncio.sleep(0.05)
            after = tl.admission_status()
            writer.write(options(2))
            second = await asyncio.wait_for(reader.readline(), 2.0)
            return flooded, at_flood, got, answered, after, second, events
        finally:
            for s in socks:
                s.close()
            await tl.close()

    flooded, at_flood, got, answered, after, second, events = uvloop.run(asyncio.wait_for(scenario(), 30))
    assert at_flood["accepted"] == 6 * 256 and at_flood["refused_per_source"] == 6 * (per - 256)
    assert at_flood["open"] == 6 * 256
    assert got == "ok" and answered < 1.0, answered
    assert after["closed_pre_message"] == 3 * 256 and after["handshake_timeouts"] == 3 * 256
    assert after["open"] == 1
    assert second.startswith(b"SIP/2.0 200")
    assert flooded < 10
    timeouts = [e for e in events.named("tls handshake failed") if e["cause"] == "handshake timed out"]
    assert len([e for e in timeouts if e["peer"]]) == 3  # one per source
    assert sum(e["count"] for e in timeouts if e["peer"] is None) == 3 * 256 - 3


# ---------------------------------------------------------------------------- config and arithmetic


def test_config_defaults_match_the_transport_defaults() -> None:
    cfg = LimitsConfig()
    lim = ConnectionLimits()
    assert (cfg.max_connections_per_source, cfg.tls_handshake_timeout_s, cfg.pre_message_idle_s, cfg.flow_idle_s) == (
        lim.max_connections_per_source, lim.tls_handshake_timeout_s, lim.pre_message_idle_s, lim.flow_idle_s)
    assert cfg.max_connections is None and cfg.reserved_fds is None


@pytest.mark.parametrize("limits,key,value,rule", [
    ({"max_connections": 0}, "limits.max_connections", 0, "must be greater than 0"),
    ({"max_connections_per_source": -1}, "limits.max_connections_per_source", -1, "must be greater than 0"),
    ({"reserved_fds": -1}, "limits.reserved_fds", -1, "must be 0 or greater"),
    ({"pre_message_idle_s": 0}, "limits.pre_message_idle_s", 0, "must be greater than 0"),
    ({"max_connections": 10, "max_connections_per_source": 20}, "limits.max_connections_per_source", 20,
     "must be <= max_connections (10)"),
    ({"tls_handshake_timeout_s": 20.0}, "limits.tls_handshake_timeout_s", 20.0, "must be less than pre_message_idle_s (15)"),
    ({"flow_idle_s": 10.0}, "limits.flow_idle_s", 10.0, "must be >= pre_message_idle_s (15)"),
    ({"max_conns": 1}, "limits.max_conns", 1, "is not a known key"),
])
def test_limits_errors_name_key_value_rule(limits, key, value, rule) -> None:
    from edgeway.config import ConfigError

    with pytest.raises(ConfigError) as ei:
        parse_config({"role": "edge", "name": "e", "sip": {"listen_ip": NODE}, "limits": limits}, "t.toml")
    assert len(ei.value.problems) == 1, ei.value.problems
    k, v, r = ei.value.problems[0]
    assert (k, v) == (key, value) and r.startswith(rule), (k, v, r)


def test_fd_plan_arithmetic() -> None:
    p = plan_fds(20_000, 24_000)
    assert (p.media_fds, p.reserved_fds, p.max_connections, p.clamped) == (5_000, 5_512, 14_488, False)
    p = plan_fds(1 << 20, 24_000)
    assert (p.media_fds, p.max_connections) == (24_000, 25_000)
    p = plan_fds(20_000, 24_000, reserved_fds=1_000, max_connections=30_000)
    assert (p.reserved_fds, p.max_connections, p.clamped, p.media_fds) == (1_000, 19_000, True, None)
    assert plan_fds(256, 24_000).max_connections == 16


def test_source_keys() -> None:
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
