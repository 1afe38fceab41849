"""The user agent's media endpoint: RTP at a fixed packet time, RTCP, SRTP (SDES).

One :class:`MediaEndpoint` per call: an even/odd UDP port pair from a
:class:`~edgeway.media.ports.PortAllocator`, read through ``loop.add_reader`` as the
relay does (:mod:`edgeway.media.relay`), a sender task and receive counters.
RTP follows RFC 3550 (V=2, sequence numbers, timestamps +8 per ms, random SSRC,
G.711 silence payload), sent from the socket it is received on (symmetric RTP) to
the address in the peer's SDP; RTCP SR/RR + SDES CNAME about once a second on
port + 1 and a final one with BYE. SRTP contexts are
:class:`~edgeway.media.srtp.SrtpContext`. Times in seconds unless a name says
``_ms``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import struct
import time
from typing import Any, Callable

from ..media.ports import PortPair
from ..media.srtp import SrtpContext, SrtpError
from ..sip.sdes import CryptoAttribute
from .offer import SdpInfo

__all__ = ["MediaEndpoint", "build_rtp_packet", "parse_rtp_header"]

log = logging.getLogger(__name__)

_NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01
_SILENCE = {8: b"\xd5", 0: b"\xff"}  # G.711 A-law / µ-law silence octets


def build_rtp_packet(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    """An RFC 3550 §5.1 RTP packet: V=2, no padding/extension/CSRC."""
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | (pt & 0x7F), seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc & 0xFFFFFFFF) + payload


def parse_rtp_header(data: bytes) -> tuple[int, int, int, int, bool] | None:
    """``(pt, seq, ts, ssrc, marker)`` of an RTP packet, None when not RTP v2."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    seq, ts, ssrc = struct.unpack_from("!HII", data, 2)
    return data[1] & 0x7F, seq, ts, ssrc, bool(data[1] & 0x80)


def _rtcp_header(count: int, pt: int, body: bytes) -> bytes:
    return struct.pack("!BBH", 0x80 | (count & 0x1F), pt, len(body) // 4)


def _rtcp_valid(data: bytes) -> bool:
    """RFC 3550 §A.2 compound validity: v=2, first packet SR/RR, lengths add up."""
    if len(data) < 8 or data[0] >> 6 != 2 or data[1] not in (200, 201) or data[0] & 0x20:
        return False
    off = 0
    while off < len(data):
        if off + 4 > len(data) or data[off] >> 6 != 2:
            return False
        off += (struct.unpack_from("!H", data, off + 2)[0] + 1) * 4
    return off == len(data)


class _RecvStats:
    """Receiver-side sequence/jitter bookkeeping (RFC 3550 §A.1, §A.3, §A.8)."""

    def __init__(self) -> None:
        self.ssrc: int | None = None
        self.base_seq = self.max_seq = self.cycles = self.received = 0
        self.expected_prior = self.received_prior = 0
        self.jitter = 0.0
        self.transit: int | None = None
        self.lsr = 0
        self.lsr_time: float | None = None

    def update(self, seq: int, ts: int, ssrc: int, arrival: int) -> None:
        if ssrc != self.ssrc:
            self.ssrc, self.base_seq, self.max_seq, self.cycles = ssrc, seq, seq, 0
            self.received = self.expected_prior = self.received_prior = 0
            self.transit = None
        else:
            udelta = (seq - self.max_seq) & 0xFFFF
            if 0 < udelta < 3000:
                if seq < self.max_seq:
                    self.cycles += 65536
                self.max_seq = seq
        self.received += 1
        transit = (arrival - ts) & 0xFFFFFFFF
        if self.transit is not None:
            d = ((transit - self.transit + 2**31) % 2**32) - 2**31
            self.jitter += (abs(d) - self.jitter) / 16
        self.transit = transit

    @property
    def expected(self) -> int:
        return self.cycles + self.max_seq - self.base_seq + 1 if self.ssrc is not None else 0

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.received)

    def report_block(self, now: float) -> bytes:
        expected = self.expected
        lost = max(-0x800000, min(0x7FFFFF, expected - self.received))
        exp_int = expected - self.expected_prior
        rec_int = self.received - self.received_prior
        self.expected_prior, self.received_prior = expected, self.received
        lost_int = exp_int - rec_int
        fraction = 0 if exp_int <= 0 or lost_int <= 0 else min(255, (lost_int << 8) // exp_int)
        dlsr = int((now - self.lsr_time) * 65536) & 0xFFFFFFFF if self.lsr_time is not None else 0
        return struct.pack(
            "!IIIIII", self.ssrc or 0, (fraction << 24) | (lost & 0xFFFFFF),
            (self.cycles + self.max_seq) & 0xFFFFFFFF, int(self.jitter) & 0xFFFFFFFF, self.lsr, dlsr,
        )


class MediaEndpoint:
    """One call's RTP/RTCP endpoint: a bound even/odd UDP port pair, a sender task
    and receive counters. Symmetric: sends from the socket it receives on.

    After :meth:`key_srtp` everything sent is SRTP/SRTCP and everything received
    must be; what fails to unprotect is dropped and counted (``srtp_auth_failures``
    for a bad authentication tag, ``srtp_errors`` otherwise), never counted as RTP.
    ``srtp_offer`` holds the SDES attributes this side offered, until the answer."""

    def __init__(self, pair: PortPair, ip: str, name: str, on_close: Callable[["MediaEndpoint"], None] | None = None):
        self.pair = pair
        self.ip, self.port = ip, pair.rtp_port
        self.label = f"{name}:{self.port}"
        self.cname = f"{name}@{ip}"
        self._on_close = on_close
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.first_seq = self.seq
        #: RTP packets of ours the far end says it received (its last RTCP report block
        #: about our SSRC, RFC 3550 §6.4.1), None before any.
        self.peer_received: int | None = None
        self.ts = random.getrandbits(32)
        self.pt = 8
        self.ptime = 20
        self.remote: tuple[str, int] | None = None
        self.remote_rtcp: tuple[str, int] | None = None
        self.rtp_sent = self.rtp_octets = self.rtcp_sent = 0
        self.rtp_received = self.rtcp_received = self.bad_packets = 0
        self.rtp_source: tuple[str, int] | None = None
        self.recv = _RecvStats()
        self.done = asyncio.Event()
        self.started = False
        self.closed = False
        self._readers: list[int] = []
        self._task: asyncio.Task | None = None
        self._bye_sent = False
        self.tx_srtp: SrtpContext | None = None
        self.rx_srtp: SrtpContext | None = None
        self.srtp_offer: list[CryptoAttribute] | None = None
        self.srtp_ours: CryptoAttribute | None = None
        self.srtp_theirs: CryptoAttribute | None = None
        self.srtp_auth_failures = self.srtp_errors = 0

    @property
    def srtp(self) -> bool:
        return self.tx_srtp is not None and self.rx_srtp is not None

    @property
    def srtp_suite(self) -> str | None:
        if self.srtp_ours is None or not self.srtp:
            return None
        return self.srtp_ours.suite + (" UNENCRYPTED_SRTCP" if self.srtp_ours.unencrypted_srtcp else "")

    def key_srtp(self, ours: CryptoAttribute, theirs: CryptoAttribute) -> None:
        """Protect what we send with ``ours`` and unprotect what we receive with
        ``theirs`` (RFC 4568 §6.1). A key that did not change keeps its context (and
        so its rollover counter and replay window). Raises SdesError."""
        if self.srtp_ours is None or (self.srtp_ours.suite, self.srtp_ours.key_salt, self.srtp_ours.session_params) != (
                ours.suite, ours.key_salt, ours.session_params):
            self.tx_srtp = SrtpContext.from_crypto(ours, "outbound")
        if self.srtp_theirs is None or (self.srtp_theirs.suite, self.srtp_theirs.key_salt,
                                        self.srtp_theirs.session_params) != (theirs.suite, theirs.key_salt,
                                                                             theirs.session_params):
            self.rx_srtp = SrtpContext.from_crypto(theirs, "inbound")
        self.srtp_ours, self.srtp_theirs = ours, theirs

    def _unprotect(self, data: bytes, rtcp: bool) -> bytes | None:
        ctx = self.rx_srtp
        if ctx is None:
            return data
        try:
            return ctx.unprotect_rtcp(data) if rtcp else ctx.unprotect_rtp(data)
        except SrtpError as exc:
            if exc.kind == "auth":
                self.srtp_auth_failures += 1
            else:
                self.srtp_errors += 1
            log.debug("media %s: %s dropped: %s", self.label, "SRTCP" if rtcp else "SRTP", exc)
            return None

    def open(self) -> None:
        """Start reading the RTP and RTCP sockets (``loop.add_reader``, as the relay does)."""
        loop = asyncio.get_running_loop()
        for sock, rtcp in ((self.pair.rtp_sock, False), (self.pair.rtcp_sock, True)):
            loop.add_reader(sock.fileno(), self._drain, sock, rtcp)
            self._readers.append(sock.fileno())

    def _drain(self, sock, rtcp: bool) -> None:
        """Read every datagram waiting on ``sock``; a bad packet is dropped, never raised."""
        for _ in range(64):
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                log.debug("media %s: socket error %s", self.label, exc)
                continue
            try:
                if rtcp:
                    self.on_rtcp(data, (addr[0], addr[1]))
                else:
                    self.on_rtp(data, (addr[0], addr[1]))
            except Exception:  # never let a bad packet kill the endpoint
                log.exception("media %s: dropping bad packet from %s", self.label, addr)

    def set_remote(self, sdp: SdpInfo, pt: int | None) -> None:
        """Send to the SDP's c=/m= address (RTCP to a=rtcp or port + 1)."""
        if sdp.port == 0 or sdp.ip in ("0.0.0.0", "::"):
            self.remote = self.remote_rtcp = None
            return
        self.remote = (sdp.ip, sdp.port)
        self.remote_rtcp = (sdp.ip, sdp.rtcp_port or sdp.port + 1)
        if pt is not None:
            self.pt = pt

    # -- receive ---------------------------------------------------------------
    def on_rtp(self, data: bytes, addr: tuple[str, int]) -> None:
        hdr = parse_rtp_header(data)
        if hdr is None:
            self.bad_packets += 1
            return
        pt = hdr[0]
        if 72 <= pt <= 76:  # RTCP multiplexed on the RTP port (RFC 5761)
            self.on_rtcp(data, addr)
            return
        if self.rx_srtp is not None:
            plain = self._unprotect(data, rtcp=False)
            if plain is None:
                return
            hdr = parse_rtp_header(plain)
            if hdr is None:
                self.bad_packets += 1
                return
        self.rtp_received += 1
        if self.rtp_source is None:
            self.rtp_source = addr
        arrival = int(asyncio.get_running_loop().time() * 8000) & 0xFFFFFFFF
        self.recv.update(hdr[1], hdr[2], hdr[3], arrival)

    def on_rtcp(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.rx_srtp is not None:
            if len(data) < 8 or data[0] >> 6 != 2:
                self.bad_packets += 1
                return
            plain = self._unprotect(data, rtcp=True)
            if plain is None:
                return
            data = plain
        if not _rtcp_valid(data):
            self.bad_packets += 1
            return
        self.rtcp_received += 1
        if data[1] == 200 and len(data) >= 28:
            sec, frac = struct.unpack_from("!II", data, 8)
            self.recv.lsr = ((sec & 0xFFFF) << 16) | (frac >> 16)
            self.recv.lsr_time = asyncio.get_running_loop().time()
        self._report_about_us(data)

    def _report_about_us(self, data: bytes) -> None:
        """Read the report block about our SSRC in the first SR/RR of a compound packet:
        packets received = extended highest sequence - our first + 1 - cumulative lost."""
        count, off = data[0] & 0x1F, 8 + (20 if data[1] == 200 else 0)
        for _ in range(count):
            if off + 24 > len(data):
                return
            ssrc, lost_word, highest = struct.unpack_from("!III", data, off)
            if ssrc == self.ssrc:
                lost = lost_word & 0xFFFFFF
                lost = lost - 0x1000000 if lost & 0x800000 else lost
                self.peer_received = max(0, ((highest - self.first_seq) & 0xFFFFFFFF) + 1 - lost)
                return
            off += 24

    # -- send ------------------------------------------------------------------
    def start(self, duration: float | None, ptime_ms: int = 20) -> None:
        """Start sending RTP for ``duration`` seconds (None: until :meth:`stop`)."""
        if self.started or self.closed:
            return
        self.started = True
        self.ptime = max(1, int(ptime_ms))
        self._task = asyncio.get_running_loop().create_task(self._send_loop(duration))

    async def _send_loop(self, duration: float | None) -> None:
        loop = asyncio.get_running_loop()
        interval = self.ptime / 1000
        samples = 8 * self.ptime
        payload = _SILENCE.get(self.pt, b"\xd5") * samples
        start = loop.time()
        end = start + duration if duration is not None else math.inf
        next_rtcp = start + 0.5
        n = 0
        try:
            while not self.closed:
                now = loop.time()
                if now >= end:
                    break
                if self.remote is not None and self._readers:
                    pkt = build_rtp_packet(self.pt, self.seq, self.ts, self.ssrc, payload, marker=(n == 0))
                    try:
                        if self.tx_srtp is not None:
                            pkt = self.tx_srtp.protect_rtp(pkt)
                        self.pair.rtp_sock.sendto(pkt, self.remote)
                        self.rtp_sent += 1
                        self.rtp_octets += len(payload)
                    except (OSError, ValueError, TypeError, SrtpError) as exc:
                        log.debug("media %s: RTP send to %s failed: %s", self.label, self.remote, exc)
                if now >= next_rtcp:
                    self._send_rtcp()
                    next_rtcp += 1.0
                n += 1
                self.seq = (self.seq + 1) & 0xFFFF
                self.ts = (self.ts + samples) & 0xFFFFFFFF
                delay = start + n * interval - loop.time()
                if delay < -5 * interval:  # fell far behind: resync instead of bursting
                    start = loop.time() - n * interval
                    delay = 0.0
                await asyncio.sleep(max(0.0, delay))
        finally:
            self.done.set()

    def _rtcp_packet(self, bye: bool = False) -> bytes:
        now = asyncio.get_running_loop().time()
        blocks = self.recv.report_block(now) if self.recv.ssrc is not None else b""
        count = 1 if blocks else 0
        if self.rtp_sent:
            ntp = time.time() + _NTP_EPOCH_OFFSET
            sec = int(ntp)
            frac = int((ntp - sec) * 2**32) & 0xFFFFFFFF
            body = struct.pack("!IIIIII", self.ssrc, sec & 0xFFFFFFFF, frac, self.ts, self.rtp_sent & 0xFFFFFFFF, self.rtp_octets & 0xFFFFFFFF) + blocks
            pkt = _rtcp_header(count, 200, body) + body
        else:
            body = struct.pack("!I", self.ssrc) + blocks
            pkt = _rtcp_header(count, 201, body) + body
        cname = self.cname.encode()[:255]
        chunk = struct.pack("!IBB", self.ssrc, 1, len(cname)) + cname + b"\x00"
        chunk += b"\x00" * (-len(chunk) % 4)
        pkt += _rtcp_header(1, 202, chunk) + chunk
        if bye:
            body = struct.pack("!I", self.ssrc)
            pkt += _rtcp_header(1, 203, body) + body
        return pkt

    def _send_rtcp(self, bye: bool = False) -> None:
        if self.remote_rtcp is None or not self._readers or self.closed:
            return
        try:
            pkt = self._rtcp_packet(bye)
            if self.tx_srtp is not None:
                pkt = self.tx_srtp.protect_rtcp(pkt)
            self.pair.rtcp_sock.sendto(pkt, self.remote_rtcp)
            self.rtcp_sent += 1
        except (OSError, ValueError, TypeError, SrtpError) as exc:
            log.debug("media %s: RTCP send failed: %s", self.label, exc)

    def stop(self) -> None:
        """Stop sending; send a final RTCP report with BYE once (keeps receiving)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self.done.set()
        if self.started and not self._bye_sent:
            self._bye_sent = True
            self._send_rtcp(bye=True)

    def close(self) -> None:
        """Stop and close both sockets; returns the ports to the UA's allocator."""
        if self.closed:
            return
        self.stop()
        self.closed = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # closed after the loop: nothing is registered any more
            loop = None
        for fd in self._readers:
            if loop is not None:
                loop.remove_reader(fd)
        self._readers.clear()
        if self._on_close is not None:
            self._on_close(self)  # releases (closes) the socket pair

    def fill(self, obj: Any) -> None:
        """Copy the counters into a result/stats record."""
        obj.rtp_sent, obj.rtp_received = self.rtp_sent, self.rtp_received
        obj.rtcp_sent, obj.rtcp_received = self.rtcp_sent, self.rtcp_received
        obj.rtp_lost = self.recv.lost
        obj.rtp_peer_received = self.peer_received
        obj.local_rtp, obj.remote_rtp, obj.rtp_source = (self.ip, self.port), self.remote, self.rtp_source
        obj.srtp, obj.srtp_suite = self.srtp, self.srtp_suite
        obj.srtp_auth_failures, obj.srtp_errors = self.srtp_auth_failures, self.srtp_errors
