"""The asyncio side of media node discovery: send the Binding requests, drive the sans-IO parts.

* UDP: one connected datagram socket per (node, transport); each sample is a
  :class:`~edgeway.probe.stun.UdpTransaction` (RFC 8489 §6.2.1 retransmissions, bounded by
  ``timeout``). An ICMP port unreachable fails the sample at once ("port unreachable").
* TCP and TLS: one connection; each sample writes a request on the stream and reads the answer
  (RFC 8489 §6.2.2, no retransmission). TLS uses :mod:`ssl`, verifying the node's certificate
  against ``ca_file`` or the system store unless ``insecure`` (then every result says so).
* HTTP proxy: ``CONNECT node:port`` (RFC 9110 §9.3.6) with ``Proxy-Authorization: Basic``
  (RFC 7617) when the proxy URL has credentials, then TLS (``proxy-tls``) or plain STUN
  (``proxy-tcp``) through the tunnel.

The RTT of a sample is the time from writing the request (the last UDP copy) to reading its
answer; connection set-up (TCP, TLS, CONNECT) is not part of it.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from .choice import DIRECT, PROXY, Sample, TransportResult, needs_proxy
from .keepalive import DEFAULT_INTERVAL, Keepalive
from .stun import ProbeError, StreamFramer, UdpTransaction, binding_request, parse_binding_response

__all__ = ["Node", "ProbeConfig", "ProxyURL", "hold_flow", "local_address_toward", "parse_node",
           "parse_proxy", "probe_nodes"]

MAX_PROXY_HEADER = 8192
"""Octets of a proxy's CONNECT answer head we read at most (a 2xx head is a few dozen)."""
SAMPLE_GAP = 0.02
"""Seconds between two samples on the same (node, transport), so they do not queue behind each other."""


@dataclass(frozen=True, slots=True)
class Node:
    """A media node: ``name`` as the user wrote it, ``host`` to connect to, and its ports."""

    name: str
    host: str
    udp_port: int
    tcp_port: int
    tls_port: int


@dataclass(frozen=True, slots=True)
class ProxyURL:
    host: str
    port: int
    user: str | None = None
    password: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def authorization(self) -> str | None:
        if self.user is None:
            return None
        token = base64.b64encode(f"{self.user}:{self.password or ''}".encode()).decode("ascii")
        return f"Basic {token}"


def parse_proxy(url: str) -> ProxyURL:
    """``http://user:pass@host:port`` (credentials optional, percent-encoded; port default 8080).
    Raises ValueError naming what is wrong."""
    u = urlsplit(url if "://" in url else f"http://{url}")
    if u.scheme != "http":
        raise ValueError(f"proxy {url!r}: only http:// proxies are supported (CONNECT over plain HTTP)")
    if not u.hostname:
        raise ValueError(f"proxy {url!r}: no host")
    try:
        port = u.port or 8080
    except ValueError as exc:
        raise ValueError(f"proxy {url!r}: {exc}") from None
    user = unquote(u.username) if u.username is not None else None
    if user is not None and ":" in user:
        raise ValueError(f"proxy {url!r}: the user name must not contain ':' (RFC 7617 §2)")
    return ProxyURL(u.hostname, port, user, unquote(u.password) if u.password is not None else None)


def parse_node(text: str, udp_port: int, tcp_port: int, tls_port: int) -> Node:
    """``host`` or ``host:port`` or ``[v6]:port``. A port replaces the UDP and TCP media port
    (the seed's 5004); the TLS port stays ``tls_port``."""
    host, port = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"node {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"node {text!r}: junk after ']'")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host:
        raise ValueError(f"node {text!r}: no host")
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"node {text!r}: port must be 1-65535")
        udp_port = tcp_port = int(port)
    return Node(text, host, udp_port, tcp_port, tls_port)


@dataclass(slots=True)
class ProbeConfig:
    """``samples`` Binding transactions per (node, transport), each bounded by ``timeout``
    seconds (connection set-up gets its own ``timeout``). ``proxy_port``: the node port CONNECT
    asks for in ``proxy-tls`` (default: the node's TLS port)."""

    samples: int = 3
    timeout: float = 1.0
    ca_file: str | None = None
    insecure: bool = False
    proxy: ProxyURL | None = None
    proxy_port: int | None = None
    proxy_only: bool = False
    transports: tuple[str, ...] = field(default=DIRECT)

    def tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def tls_note(self) -> str:
        if self.insecure:
            return "TLS certificate NOT verified (--insecure)"
        return f"TLS certificate checked against {self.ca_file or 'the system CA store'}"


def local_address_toward(host: str, port: int) -> str:
    """The source address the kernel picks toward ``host`` (a connected UDP socket; no packet is
    sent). ``"unknown"`` when there is no route or the name does not resolve."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        fam, _, _, _, addr = info[0]
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            return s.getsockname()[0]
    except OSError:
        return "unknown"


def _why(exc: BaseException, what: str) -> str:
    """A short human reason for a connect/IO failure."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc.verify_message} (give --ca-file, or --insecure in a lab)"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return f"{what} timed out"
    if isinstance(exc, ConnectionRefusedError):
        return f"{what}: connection refused"
    if isinstance(exc, ConnectionResetError):
        return f"{what}: connection reset"
    if isinstance(exc, socket.gaierror):
        return f"{what}: name does not resolve ({exc.strerror})"
    if isinstance(exc, asyncio.IncompleteReadError):
        return f"{what}: connection closed"
    if isinstance(exc, OSError):
        return f"{what}: {exc.strerror or exc}"
    return f"{what}: {exc}"


# --- flows -------------------------------------------------------------------------------------

class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=256)

    def datagram_received(self, data: bytes, addr) -> None:
        if not self.queue.full():
            self.queue.put_nowait(("data", data, time.monotonic()))

    def error_received(self, exc: Exception) -> None:
        if not self.queue.full():
            self.queue.put_nowait(("error", exc, time.monotonic()))


async def _udp_sample(transport, proto: _UdpProtocol, timeout: float) -> Sample:
    tx = UdpTransaction(timeout)
    transport.sendto(tx.start(time.monotonic()))
    for _ in range(64):  # bounded: Rc sends plus stray datagrams
        if tx.done:
            break
        deadline = tx.next_deadline()
        if deadline is None:
            break
        try:
            kind, item, at = await asyncio.wait_for(proto.queue.get(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            out = tx.on_timer(time.monotonic())
            if out is not None:
                transport.sendto(out)
            continue
        if kind == "error":
            why = "port unreachable (ICMP)" if isinstance(item, ConnectionRefusedError) else _why(item, "send")
            return Sample(error=why, retransmits=tx.retransmits)
        tx.receive(item, at)
    if not tx.done:
        return Sample(error="no answer (too many stray datagrams)", retransmits=tx.retransmits)
    if tx.response is None or tx.response.error:
        return Sample(error=tx.error or "no answer", retransmits=tx.retransmits)
    mapped = tx.response.mapped
    return Sample(rtt=tx.rtt, mapped=f"{mapped[0]}:{mapped[1]}" if mapped else None, retransmits=tx.retransmits)


async def probe_udp(node: Node, cfg: ProbeConfig) -> TransportResult:
    result = TransportResult(node.name, "udp", node.udp_port)
    loop = asyncio.get_running_loop()
    try:
        transport, proto = await loop.create_datagram_endpoint(_UdpProtocol, remote_addr=(node.host, node.udp_port))
    except OSError as exc:
        result.samples.append(Sample(error=_why(exc, "udp socket")))
        return result
    try:
        for i in range(cfg.samples):
            if i:
                await asyncio.sleep(SAMPLE_GAP)
            result.samples.append(await _udp_sample(transport, proto, cfg.timeout))
    finally:
        transport.close()
    return result


async def _stream_sample(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, framer: StreamFramer,
                         timeout: float) -> Sample:
    req = binding_request()
    t0 = time.monotonic()
    writer.write(bytes(req))
    deadline = t0 + timeout
    try:
        await asyncio.wait_for(writer.drain(), timeout)
        for _ in range(64):  # bounded: each round reads at least one octet or ends
            left = deadline - time.monotonic()
            if left <= 0:
                break
            data = await asyncio.wait_for(reader.read(4096), left)
            at = time.monotonic()
            if not data:
                return Sample(error="connection closed by the node")
            for msg in framer.feed(data):
                resp = parse_binding_response(msg, req.transaction_id)
                if resp is None:
                    continue
                if resp.error:
                    return Sample(error=f"error response {resp.error[0]} {resp.error[1]}")
                m = resp.mapped
                return Sample(rtt=at - t0, mapped=f"{m[0]}:{m[1]}" if m else None)
    except ProbeError as exc:
        return Sample(error=str(exc))
    except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
        if isinstance(exc, asyncio.TimeoutError):
            return Sample(error=f"no answer in {timeout:g} s")
        return Sample(error=_why(exc, "read"))
    return Sample(error=f"no answer in {timeout:g} s")


async def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    except (OSError, asyncio.TimeoutError, ssl.SSLError):
        pass


async def _stream_samples(result: TransportResult, reader, writer, cfg: ProbeConfig) -> TransportResult:
    framer = StreamFramer()
    for i in range(cfg.samples):
        if i:
            await asyncio.sleep(SAMPLE_GAP)
        s = await _stream_sample(reader, writer, framer, cfg.timeout)
        result.samples.append(s)
        if s.error and ("closed" in s.error or "reset" in s.error or "STUN" in s.error):
            break  # the stream is unusable; further samples would only repeat the error
    return result


async def open_stream(node: Node, transport: str, cfg: ProbeConfig):
    """Open the stream flow of ``transport`` (tcp, tls, proxy-tls, proxy-tcp) to ``node``:
    ``(reader, writer)``. Raises :class:`ProbeError` with the reason on failure."""
    writer = None
    tls = transport in ("tls", "proxy-tls")
    try:
        if transport in ("tcp", "tls"):
            port = node.tcp_port if transport == "tcp" else node.tls_port
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                node.host, port, ssl=cfg.tls_context() if tls else None,
                server_hostname=node.host if tls else None), cfg.timeout)
            return reader, writer
        proxy = cfg.proxy
        if proxy is None:
            raise ProbeError("no proxy configured")
        port = (cfg.proxy_port or node.tls_port) if tls else node.tcp_port
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(proxy.host, proxy.port, limit=MAX_PROXY_HEADER), cfg.timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise ProbeError(_why(exc, f"proxy {proxy.address}")) from None
        target = f"[{node.host}]:{port}" if ":" in node.host else f"{node.host}:{port}"
        head = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", "User-Agent: edgeway-probe"]
        auth = proxy.authorization()
        if auth:
            head.append(f"Proxy-Authorization: {auth}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        try:
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), cfg.timeout)
        except asyncio.LimitOverrunError:
            raise ProbeError(f"proxy {proxy.address}: CONNECT answer head too long") from None
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            raise ProbeError(_why(exc, f"proxy {proxy.address} CONNECT answer")) from None
        status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ProbeError(f"proxy {proxy.address}: not an HTTP answer to CONNECT: {status_line[:80]!r}")
        code = int(parts[1])
        if not 200 <= code < 300:
            auth_hint = (" (credentials missing or wrong)" if auth
                         else " (the proxy wants credentials: http://user:pass@host:port)")
            # 401 instead of 407: tinyproxy answers a failed BasicAuth with 401 (RFC 9110 §15.5.8 says 407)
            unreachable = " (the proxy could not reach the node)"
            hint = {407: auth_hint, 401: auth_hint, 403: " (the proxy forbids this host or port)",
                    502: unreachable, 503: unreachable, 504: unreachable}.get(code, "")
            raise ProbeError(f"proxy {proxy.address} refused CONNECT {target}: {status_line[9:].strip()}{hint}")
        if tls:
            await asyncio.wait_for(writer.start_tls(cfg.tls_context(), server_hostname=node.host), cfg.timeout)
        return reader, writer
    except ProbeError:
        await _close(writer)
        raise
    except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
        await _close(writer)
        what = {"tcp": "tcp connect", "tls": "tls connect", "proxy-tls": "tls through the proxy",
                "proxy-tcp": "tcp through the proxy"}[transport]
        raise ProbeError(_why(exc, what)) from None


async def probe_stream(node: Node, transport: str, cfg: ProbeConfig) -> TransportResult:
    port = {"tcp": node.tcp_port, "tls": node.tls_port, "proxy-tcp": node.tcp_port,
            "proxy-tls": cfg.proxy_port or node.tls_port}[transport]
    result = TransportResult(node.name, transport, port)
    if transport in ("tls", "proxy-tls"):
        result.note = cfg.tls_note()
    if transport in PROXY and cfg.proxy is not None:
        result.note = (result.note + "; " if result.note else "") + f"via proxy {cfg.proxy.address}"
    try:
        reader, writer = await open_stream(node, transport, cfg)
    except ProbeError as exc:
        result.samples.append(Sample(error=str(exc)))
        return result
    try:
        return await _stream_samples(result, reader, writer, cfg)
    finally:
        await _close(writer)


async def _probe(node: Node, transport: str, cfg: ProbeConfig) -> TransportResult:
    if transport == "udp":
        return await probe_udp(node, cfg)
    return await probe_stream(node, transport, cfg)


async def probe_nodes(nodes: list[Node], cfg: ProbeConfig) -> list[TransportResult]:
    """Probe every node over every direct transport at once; then, when no direct transport is
    usable (or ``proxy_only``) and a proxy is configured, through the proxy (choice rule 4).
    Transports not probed get a result with ``skipped`` set, so the report can say why."""
    results: list[TransportResult] = []
    direct = [t for t in cfg.transports if t in DIRECT]
    if cfg.proxy_only:
        for n in nodes:
            for t in direct:
                results.append(TransportResult(n.name, t, _port(n, t, cfg), skipped="--proxy-only"))
    else:
        results = list(await asyncio.gather(*(_probe(n, t, cfg) for n in nodes for t in direct)))
    for n in nodes:
        for t in PROXY:
            if cfg.proxy is None:
                results.append(TransportResult(n.name, t, _port(n, t, cfg), skipped="no --proxy given"))
    if cfg.proxy is not None:
        if cfg.proxy_only or needs_proxy(results):
            results += await asyncio.gather(*(probe_stream(n, t, cfg) for n in nodes for t in PROXY))
        else:
            for n in nodes:
                for t in PROXY:
                    results.append(TransportResult(n.name, t, _port(n, t, cfg),
                                                   skipped="a direct transport is reachable (proxy is the last resort)"))
    return results


def _port(n: Node, t: str, cfg: ProbeConfig) -> int:
    return {"udp": n.udp_port, "tcp": n.tcp_port, "tls": n.tls_port, "proxy-tcp": n.tcp_port,
            "proxy-tls": cfg.proxy_port or n.tls_port}[t]


# --- keepalive of a chosen flow ----------------------------------------------------------------

@dataclass(slots=True)
class HoldReport:
    """What :func:`hold_flow` did: keepalives sent, answers received, longest silence (s)."""

    sent: int = 0
    answered: int = 0
    max_gap: float = 0.0
    error: str | None = None


async def hold_flow(node: Node, transport: str, cfg: ProbeConfig, seconds: float,
                    interval: float = DEFAULT_INTERVAL) -> HoldReport:
    """Keep the flow ``node``/``transport`` open for ``seconds``, sending a Binding request as
    keepalive after every ``interval`` s of silence (:class:`~edgeway.probe.keepalive.Keepalive`),
    and count the answers. Shows that a chosen flow stays alive (seed 004: 30 s pinholes)."""
    report = HoldReport()
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    ka = Keepalive(start, interval, request=True)
    framer = StreamFramer()
    writer = udp = None
    try:
        if transport == "udp":
            udp, proto = await loop.create_datagram_endpoint(_UdpProtocol, remote_addr=(node.host, node.udp_port))
        else:
            reader, writer = await open_stream(node, transport, cfg)
        last = start
        end = start + seconds
        for _ in range(100000):  # bounded by ``end``; each round sleeps until a deadline
            now = time.monotonic()
            if now >= end:
                break
            await asyncio.sleep(max(0.0, min(end, ka.next_deadline()) - now))
            now = time.monotonic()
            data = ka.poll(now)
            if data is None:
                continue
            report.max_gap = max(report.max_gap, now - last)
            last = now
            report.sent += 1
            tid = data[8:20]
            if udp is not None:
                udp.sendto(data)
                try:
                    kind, item, _ = await asyncio.wait_for(proto.queue.get(), cfg.timeout)
                    if kind == "data" and parse_binding_response(item, tid):
                        report.answered += 1
                except (asyncio.TimeoutError, ProbeError):
                    pass
            else:
                writer.write(data)
                try:
                    for msg in framer.feed(await asyncio.wait_for(reader.read(4096), cfg.timeout)):
                        if parse_binding_response(msg, tid):
                            report.answered += 1
                except asyncio.TimeoutError:
                    pass  # unanswered keepalive: the flow may still be open; count and go on
                except (ProbeError, OSError) as exc:
                    report.error = str(exc) or type(exc).__name__
                    break  # the stream is broken: a further keepalive cannot help
    except ProbeError as exc:
        report.error = str(exc)
    except OSError as exc:
        report.error = _why(exc, transport)
    finally:
        if udp is not None:
            udp.close()
        await _close(writer)
    return report
