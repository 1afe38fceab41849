"""The lab's built-in SIP user agent: places and answers calls, sends and counts RTP.

``edgeway lab`` uses :class:`LabUserAgent` as the phones at both ends of a call through
the core/edge pair. It is a deliberately small but honest RFC 3261 UA:

* **Transports** – UDP and/or TCP, or TLS (optionally with UDP), on ``ip:port``.
  TCP and TLS connections are accepted and opened (bound to ``ip``), reused for
  responses and in-dialog requests, framed with
  :class:`~edgeway.sip.message.StreamFramer`; CRLFCRLF keepalives get a CRLF (RFC 5626
  §3.5.1). TLS uses the standard library :mod:`ssl` (contexts from
  :mod:`edgeway.security.tls`): the server side can require a client certificate
  (mutual TLS), the client side always verifies the server's chain against
  ``tls_ca`` and, with ``tls_server_name``, its CN/DNS SAN.
* **UAS** – answers INVITE with 100 Trying, 180 Ringing and 200 OK carrying an SDP
  answer (PCMA/8, PCMU/0, telephone-event/101), a Contact with its own address and a
  To tag; retransmits the 2xx over UDP until the ACK (RFC 3261 §13.3.1.4); handles
  ACK, BYE, CANCEL (200 + 487 to the INVITE), OPTIONS. ``answer_status`` and
  ``ring_seconds`` make it reject or ring for a while (failure-path tests).
* **UAC** – :meth:`LabUserAgent.call` sends an INVITE through an explicit proxy
  (Via with ``rport`` and a magic-cookie branch, Max-Forwards 70, Contact, SDP
  offer), retransmits over UDP (Timer A: T1 doubling; Timer B gives up), ACKs
  non-2xx hop by hop on the INVITE branch, ACKs 2xx end to end through the route set
  (Record-Route reversed, loose or strict routing, RFC 3261 §12.1.2, §12.2.1.1),
  CANCELs a call that rings past its timeout, exchanges RTP/RTCP, then sends BYE.
* **SRTP** – with ``srtp=True`` the UA offers ``RTP/SAVP`` with SDES keys
  (:func:`edgeway.sip.sdes.make_offer`) and insists on an SRTP answer; as callee it
  rejects plain offers with 488. Any UA answers an ``RTP/SAVP`` offer with SDES
  (:func:`~edgeway.sip.sdes.choose_answer`). Once keyed, everything it sends is
  protected and everything it receives unprotected (:class:`~edgeway.media.srtp.SrtpContext`);
  packets failing authentication are dropped and counted. RTP/RTCP counters count
  packets that were successfully unprotected.
* **Media** – a real RTP stream (RFC 3550: V=2, sequence numbers, timestamps +8 per
  ms, random SSRC, G.711 silence payload) sent from the same socket it is received on
  (symmetric RTP), always to the address in the peer's SDP (the relay does the
  latching), plus an RTCP SR/RR + SDES CNAME compound packet about once per second on
  port + 1 and a final one with BYE.

Every SIP message sent or received is written to a per-call *ladder*
(:attr:`CallResult.ladder`, :attr:`CallStats.ladder`). Malformed input never crashes
the UA: it is logged and dropped (a request whose head could be read gets a 400).

The SDP handled here is the few lines a lab call needs; the full SDP module lives in
:mod:`edgeway.sip.sdp`. Units: times in seconds unless the name says ``_ms``; ports
are ``int``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import random
import secrets
import socket
import ssl
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from .._ascii import ascii_uint
from ..media.ports import PortAllocator, PortPair
from ..media.srtp import UNENCRYPTED_SRTCP_SUPPORTED, SrtpContext, SrtpError
from ..security.tls import (
    client_context,
    peer_identities,
    server_context,
    subject_name_matches,
)
from ..sip import sdes
from ..sip.message import (
    MAGIC_COOKIE,
    Message,
    ParseError,
    Request,
    Response,
    StreamFramer,
    Via,
    make_response,
    parse_message,
)
from ..sip.sdes import CryptoAttribute, SdesError
from ..sip.uri import UriError, parse_name_addr, parse_uri

__all__ = [
    "LabUserAgent",
    "CallResult",
    "CallStats",
    "MediaCounters",
    "build_rtp_packet",
    "parse_rtp_header",
    "build_sdp",
    "parse_sdp",
    "SdpInfo",
]

log = logging.getLogger(__name__)

#: RFC 3261 §17.1.2.2: cap of the non-INVITE and 2xx retransmission interval (s).
T2 = 4.0
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO"
USER_AGENT = "Edgeway-lab-UA"
_NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01
#: Codecs the UA offers/accepts: encoding name (lower case) → (static PT, SDP name).
_CODECS = {"pcma/8000": (8, "PCMA/8000"), "pcmu/8000": (0, "PCMU/8000")}
_STATIC_PT = {0: "pcmu/8000", 8: "pcma/8000"}
_TELEPHONE_EVENT = "telephone-event/8000"
_SILENCE = {8: b"\xd5", 0: b"\xff"}  # G.711 A-law / µ-law silence octets
#: Transports carried over a byte stream (framed, connection reuse).
_STREAM = ("tcp", "tls")
#: Seconds a TLS handshake may take (both directions).
TLS_HANDSHAKE_TIMEOUT = 5.0


# =========================================================================== results


@dataclass(kw_only=True)
class MediaCounters:
    """Media and transport facts of one call, common to :class:`CallResult` and
    :class:`CallStats`.

    Packet counters are RTP/RTCP datagrams (with SRTP: the ones that decrypted).
    ``srtp`` is True when the call's media was SRTP (SDES-keyed; ``srtp_suite`` names
    the suite); ``srtp_auth_failures`` counts received packets dropped because their
    authentication tag did not verify, ``srtp_errors`` other unprotect failures
    (replays, malformed packets). ``transport`` is the INVITE's transport;
    ``tls_peer_names`` the names (CN, DNS SANs) in the certificate the TLS peer of the
    INVITE's connection presented.
    """

    rtp_sent: int = 0
    rtp_received: int = 0
    rtcp_sent: int = 0
    rtcp_received: int = 0
    rtp_lost: int = 0
    local_rtp: tuple[str, int] | None = None
    remote_rtp: tuple[str, int] | None = None
    rtp_source: tuple[str, int] | None = None
    srtp: bool = False
    srtp_suite: str | None = None
    srtp_auth_failures: int = 0
    srtp_errors: int = 0
    transport: str = ""
    tls_peer_names: list[str] = field(default_factory=list)


@dataclass
class CallResult(MediaCounters):
    """What :meth:`LabUserAgent.call` reports about one outgoing call.

    ``ok`` is True when the INVITE got a 2xx, media could be set up and the BYE was
    answered with a 2xx (or the far end hung up first). ``status``/``reason`` are the
    INVITE's final response (0 when no response at all was received; 408 after a
    timeout, 503 after a transport error). ``ladder`` has one line per SIP message
    sent or received for this call: ``"<offset> ms <→|←> <peer> (<transport>) <first
    line>"``, responses followed by their CSeq method in parentheses. ``setup_ms`` is
    INVITE sent → 2xx received. ``error`` is a human-readable explanation when ``ok``
    is False. Media fields: :class:`MediaCounters`.
    """

    call_id: str
    ok: bool = False
    status: int = 0
    reason: str = ""
    ladder: list[str] = field(default_factory=list)
    setup_ms: float | None = None
    error: str | None = None
    bye_status: int | None = None
    duration_ms: float = 0.0


@dataclass
class CallStats(MediaCounters):
    """Per-call record kept by the answering side (``ua.calls_received`` /
    ``ua.calls_answered``) so the lab report can print packets per leg.

    Packet counters are final once ``ended`` is True (they are refreshed when the
    call ends and by :meth:`LabUserAgent.refresh_stats`). Media fields:
    :class:`MediaCounters`.
    """

    call_id: str
    from_uri: str = ""
    to_uri: str = ""
    peer: str = ""
    status: int | None = None
    answered: bool = False
    ended: bool = False
    end_reason: str = ""
    ladder: list[str] = field(default_factory=list)


# =========================================================================== SDP (tiny)


@dataclass
class SdpInfo:
    """The parts of an SDP body the lab UA uses: first audio stream only.

    ``ip``: connection address; ``port``: RTP port (0 = rejected stream);
    ``pts``: payload types in m= order; ``rtpmap``: PT → ``"name/rate"`` lower
    case (static 0/8 filled in); ``rtcp_port`` from ``a=rtcp`` (RFC 3605) or None;
    ``ptime`` in ms or None; ``proto`` the m= line's transport protocol
    (``RTP/AVP``, ``RTP/SAVP``…); ``crypto`` the stream's ``a=crypto`` values
    (text after ``a=crypto:``, RFC 4568), in order.
    """

    ip: str
    port: int
    pts: list[int]
    rtpmap: dict[int, str]
    rtcp_port: int | None = None
    ptime: int | None = None
    proto: str = "RTP/AVP"
    crypto: list[str] = field(default_factory=list)

    def codec_name(self, pt: int) -> str | None:
        return self.rtpmap.get(pt) or _STATIC_PT.get(pt)

    @property
    def savp(self) -> bool:
        """True for an SRTP profile (``RTP/SAVP`` or ``RTP/SAVPF``)."""
        return self.proto.upper() in ("RTP/SAVP", "RTP/SAVPF")

    def crypto_attributes(self) -> list[CryptoAttribute]:
        """The parsed ``a=crypto`` attributes; malformed ones are skipped."""
        out = []
        for value in self.crypto:
            try:
                out.append(CryptoAttribute.parse(value))
            except SdesError:
                continue
        return out


def parse_sdp(body: bytes) -> SdpInfo:
    """Parse the first ``m=audio`` stream of an SDP body; ValueError when unusable."""
    text = body.decode("utf-8", "replace")
    session_c: str | None = None
    media_c: str | None = None
    found = in_audio = False
    port = 0
    pts: list[int] = []
    rtpmap: dict[int, str] = {}
    rtcp_port = ptime = None
    proto = "RTP/AVP"
    crypto: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        key, val = line[0], line[2:].strip()
        if key == "m":
            if found:
                in_audio = False
                continue
            parts = val.split()
            if len(parts) >= 3 and parts[0].lower() == "audio":
                try:
                    port = int(parts[1].split("/")[0])
                except ValueError:
                    raise ValueError(f"bad m= port in {line!r}") from None
                if not 0 <= port <= 65535:
                    raise ValueError(f"bad m= port in {line!r}")
                pts = [n for n in (ascii_uint(p, 127) for p in parts[3:]) if n is not None]
                proto = parts[2]
                found = in_audio = True
        elif key == "c":
            parts = val.split()
            if len(parts) >= 3:
                addr = parts[2].split("/")[0]
                if in_audio:
                    media_c = addr
                elif not found:
                    session_c = addr
        elif key == "a" and in_audio:
            name, _, rest = val.partition(":")
            name = name.lower()
            try:
                if name == "rtpmap":
                    pt_s, _, enc = rest.partition(" ")
                    enc_parts = enc.strip().lower().split("/")
                    if len(enc_parts) >= 2:
                        rtpmap[int(pt_s)] = f"{enc_parts[0]}/{enc_parts[1]}"
                elif name == "rtcp":
                    rtcp_port = int(rest.split()[0])
                elif name == "ptime":
                    ptime = int(float(rest.strip()))
                elif name == "crypto":
                    crypto.append(rest.strip())
            except (ValueError, IndexError):
                continue
    if not found:
        raise ValueError("no m=audio line")
    ip = media_c or session_c
    if ip is None:
        raise ValueError("no c= line for the audio stream")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError(f"c= address {ip!r} is not an IP address") from None
    return SdpInfo(ip=ip, port=port, pts=pts, rtpmap=rtpmap, rtcp_port=rtcp_port, ptime=ptime,
                   proto=proto, crypto=crypto)


def build_sdp(
    user: str,
    sess_id: int,
    ip: str,
    port: int,
    pts: list[tuple[int, str]],
    ptime_ms: int = 20,
    *,
    crypto: list[CryptoAttribute] | list[str] | None = None,
) -> bytes:
    """An SDP body with one sendrecv audio stream. ``pts`` are ``(payload type,
    "NAME/rate")`` pairs in preference order (telephone-event gets ``a=fmtp 0-16``).
    With ``crypto`` (SDES attributes, RFC 4568) the stream is ``RTP/SAVP`` and
    carries one ``a=crypto`` line per attribute; else ``RTP/AVP``."""
    fam = "IP6" if ":" in ip else "IP4"
    user = "".join(c for c in user if not c.isspace()) or "-"
    lines = [
        "v=0",
        f"o={user} {sess_id} {sess_id} IN {fam} {ip}",
        "s=Edgeway lab call",
        f"c=IN {fam} {ip}",
        "t=0 0",
        f"m=audio {port} {'RTP/SAVP' if crypto else 'RTP/AVP'} {' '.join(str(pt) for pt, _ in pts)}",
    ]
    for pt, name in pts:
        lines.append(f"a=rtpmap:{pt} {name}")
        if name.lower() == _TELEPHONE_EVENT:
            lines.append(f"a=fmtp:{pt} 0-16")
    for attr in crypto or []:
        lines.append(f"a=crypto:{attr}")
    lines += [f"a=ptime:{ptime_ms}", "a=sendrecv"]
    return ("\r\n".join(lines) + "\r\n").encode()


_OFFER_PTS = [(8, "PCMA/8000"), (0, "PCMU/8000"), (101, "telephone-event/8000")]


def _answer_pts(offer: SdpInfo) -> tuple[list[tuple[int, str]], int | None]:
    """Payload types to answer with (offer order) and the audio PT to send."""
    out: list[tuple[int, str]] = []
    send_pt = None
    for pt in offer.pts:
        name = offer.codec_name(pt)
        if name in _CODECS:
            out.append((pt, _CODECS[name][1]))
            if send_pt is None:
                send_pt = pt
        elif name == _TELEPHONE_EVENT:
            out.append((pt, "telephone-event/8000"))
    return out, send_pt


def _first_audio_pt(sdp: SdpInfo) -> int | None:
    for pt in sdp.pts:
        if sdp.codec_name(pt) in _CODECS:
            return pt
    return None


# =========================================================================== RTP / RTCP


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


class _Media:
    """One call's RTP/RTCP endpoint: a bound even/odd UDP port pair, a sender task
    and receive counters. Symmetric: sends from the socket it receives on.

    After :meth:`key_srtp` everything sent is SRTP/SRTCP and everything received
    must be; what fails to unprotect is dropped and counted (``srtp_auth_failures``
    for a bad authentication tag, ``srtp_errors`` otherwise), never counted as RTP.
    ``srtp_offer`` holds the SDES attributes this side offered, until the answer."""

    def __init__(self, ua: "LabUserAgent", pair: PortPair):
        self.ua = ua
        self.pair = pair
        self.ip, self.port = ua.media_ip, pair.rtp_port
        self.label = f"{ua.name}:{self.port}"
        self.cname = f"{ua.name}@{self.ip}"
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
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

    async def open(self) -> None:
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
        self.ua._media_closed(self)  # releases (closes) the socket pair

    def fill(self, obj: CallResult | CallStats) -> None:
        """Copy the counters into a result/stats record."""
        obj.rtp_sent, obj.rtp_received = self.rtp_sent, self.rtp_received
        obj.rtcp_sent, obj.rtcp_received = self.rtcp_sent, self.rtcp_received
        obj.rtp_lost = self.recv.lost
        obj.local_rtp, obj.remote_rtp, obj.rtp_source = (self.ip, self.port), self.remote, self.rtp_source
        obj.srtp, obj.srtp_suite = self.srtp, self.srtp_suite
        obj.srtp_auth_failures, obj.srtp_errors = self.srtp_auth_failures, self.srtp_errors


# =========================================================================== SIP plumbing


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _new_branch() -> str:
    return MAGIC_COOKIE + secrets.token_hex(8)


def _new_tag() -> str:
    return secrets.token_hex(5)


def _clean_reason(text: str) -> str:
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())[:120]


@dataclass(eq=False)
class _Flow:
    """Where a message goes: UDP to ``addr``, or over TCP/TLS connection ``conn``."""

    transport: str
    addr: tuple[str, int]
    conn: "_TcpConn | None" = None

    @property
    def label(self) -> str:
        return f"{_hostport(*self.addr)} ({self.transport})"


class _TcpConn:
    """One TCP or TLS connection (accepted or opened): framed reads, dispatch, writes.

    ``peer_names`` are the names (CN, then DNS SANs) of the certificate the TLS peer
    presented (empty for TCP, or a TLS client that sent none)."""

    def __init__(self, ua: "LabUserAgent", reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 peer: tuple[str, int], transport: str = "tcp"):
        self.ua, self.reader, self.writer, self.peer = ua, reader, writer, peer
        self.transport = transport
        self.framer = StreamFramer()
        self.closed = False
        self.close_reason = "closed"
        self.flow = _Flow(transport, peer, self)
        self.peer_names: list[str] = []
        if transport == "tls":
            sslobj = writer.get_extra_info("ssl_object")
            if sslobj is not None:
                try:
                    self.peer_names = peer_identities(sslobj)
                except Exception:  # informational only
                    log.debug("%s: cannot read the TLS peer certificate of %s", ua.name, peer, exc_info=True)

    @property
    def key(self) -> tuple[str, tuple[str, int]]:
        return (self.transport, self.peer)

    def write(self, data: bytes) -> bool:
        if self.closed or self.writer.is_closing():
            return False
        try:
            self.writer.write(data)
            return True
        except Exception as exc:  # noqa: BLE001 - a dead socket must not crash the UA
            log.debug("%s: %s write to %s failed: %s", self.ua.name, self.transport.upper(), self.peer, exc)
            self.close()
            return False

    async def run(self) -> None:
        try:
            while not self.closed:
                data = await self.reader.read(65536)
                if not data:
                    self.close_reason = "closed by the peer"
                    break
                for ev in self.framer.feed(data):
                    if isinstance(ev, str):
                        if ev == "ping":
                            self.write(b"\r\n")
                    elif isinstance(ev, ParseError):
                        self.ua._on_parse_error(ev, self.flow)
                        if ev.fatal_for_stream:
                            return
                    else:
                        self.ua._dispatch(ev, self.flow)
        except asyncio.CancelledError:
            raise
        except (ConnectionError, OSError) as exc:
            self.close_reason = str(exc) or type(exc).__name__
            log.debug("%s: %s connection %s: %s", self.ua.name, self.transport.upper(), self.peer, exc)
        except Exception:
            log.exception("%s: %s connection %s failed", self.ua.name, self.transport.upper(), self.peer)
        finally:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.ua._conn_closed(self)
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001
            pass


class _SipUdp(asyncio.DatagramProtocol):
    def __init__(self, ua: "LabUserAgent"):
        self.ua = ua

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.ua._on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("%s: UDP socket error: %s", self.ua.name, exc)


class _ClientTx:
    """A client transaction's mailbox. Responses are queued for the coroutine
    driving it; once an ACK was sent, retransmitted finals just get the ACK again."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Response | None] = asyncio.Queue()
        self.ack: tuple[Request, _Flow, bool] | None = None  # (ACK, flow, for_2xx)
        self.conn: _TcpConn | None = None  # the connection the request went out on


class _TransportError(Response):
    """What a client transaction gets when its connection dies before a final
    response (RFC 3261 §17.1.4: a transport error is reported as 503)."""

    def __init__(self, detail: str):
        super().__init__(503, "Service Unavailable")
        self.detail = detail


class _ServerTx:
    """A server transaction: the request, where responses go, the last response."""

    def __init__(self, key: tuple, request: Request, flow: _Flow):
        self.key, self.request, self.flow = key, request, flow
        self.last: Response | None = None
        self.to_tag = _new_tag()
        self.acked = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.stats: CallStats | None = None

    @property
    def final_sent(self) -> bool:
        return self.last is not None and self.last.status >= 200


@dataclass(eq=False)
class _Dialog:
    """Dialog state (RFC 3261 §12): the headers and route set in-dialog requests use."""

    role: str  # "uac" | "uas"
    call_id: str
    local_tag: str
    remote_tag: str
    local_hdr: str  # From of requests we send
    remote_hdr: str  # To of requests we send
    local_seq: int
    remote_target: str
    route_set: list[str]
    transport: str
    flow: _Flow
    t1: float
    contact_user: str
    invite_cseq: int = 0
    stats: CallStats | None = None
    media: _Media | None = None
    ack_events: dict[int, asyncio.Event] = field(default_factory=dict)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end_reason: str = ""
    offer_sent_in_2xx: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)


@dataclass
class _CallLog:
    t0: float
    lines: list[str]


class _UaClosed(Exception):
    pass


# =========================================================================== the UA


class LabUserAgent:
    """A lab SIP phone: answers every INVITE, places calls with :meth:`call`.

    Args:
        name: user part of its Contact and SDP ``o=`` user; also the log label.
        ip: local IP address to bind SIP (and, by default, media) sockets to.
        port: SIP port; 0 picks a free one (read :attr:`port` after :meth:`start`).
        transport: what it listens on: ``"udp"``, ``"tcp"``, ``"tls"``, ``"both"``
            (= ``"udp+tcp"``) or ``"udp+tls"`` (TCP and TLS share the port number,
            so not both).
        domain: host part of the From URIs it sends (``sip:<user>@<domain>``).
        media_ip: address for RTP sockets and SDP ``c=`` (default ``ip``).
        rtp_port_base: first RTP port (even, rounded up); pairs are allocated
            round-robin from ``rtp_port_base`` to ``rtp_port_base + rtp_port_range - 1``
            and never shared between concurrent calls.
        rtp_port_range: number of ports in the media range.
        timer_t1: RFC 3261 T1 (s) for the UAS side's 2xx/non-2xx retransmissions.
        resolver: optional ``async (host, port) -> (ip, port)`` for host names in
            Route/Contact URIs (e.g. the lab DNS); default: the system resolver.
            IP literals are never resolved.
        tls_cert, tls_key: PEM certificate (chain) and key; required for
            ``"tls"`` (server side), also presented as client certificate.
        tls_ca: PEM CA bundle that server and client certificates must chain to
            (default for outgoing connections: the system trust store).
        tls_require_client_cert: as TLS server, fail handshakes without a client
            certificate chaining to ``tls_ca`` (mutual TLS).
        tls_server_name: when set, an outgoing TLS connection is dropped unless the
            server's certificate has this name as CN or DNS SAN.
        srtp: offer SRTP (``RTP/SAVP``, SDES) on calls placed, require an SRTP answer,
            and reject plain RTP offers with 488. (``RTP/SAVP`` offers are answered
            with SDES either way.)

    Public attributes a lab may set: ``ring_seconds`` (delay between 180 and the
    final response), ``answer_status`` (200 to answer, or a 3xx–6xx to reject).
    ``calls_received`` / ``calls_answered`` map Call-ID → :class:`CallStats`;
    ``log`` holds the last ladder lines of all calls (most recent 2000).
    """

    def __init__(
        self,
        name: str,
        ip: str,
        port: int,
        *,
        transport: str = "udp",
        domain: str,
        media_ip: str | None = None,
        rtp_port_base: int = 40000,
        rtp_port_range: int = 2000,
        timer_t1: float = 0.5,
        resolver: Callable[[str, int], Awaitable[tuple[str, int]]] | None = None,
        tls_cert: str | Any | None = None,
        tls_key: str | Any | None = None,
        tls_ca: str | Any | None = None,
        tls_require_client_cert: bool = False,
        tls_server_name: str | None = None,
        srtp: bool = False,
    ):
        t = transport.lower().strip()
        parts = {x.strip() for x in ("udp+tcp" if t == "both" else t).replace(",", "+").split("+")}
        if not parts or not parts <= {"udp", "tcp", "tls"} or {"tcp", "tls"} <= parts:
            raise ValueError(f"transport must be 'udp', 'tcp', 'tls', 'both' or 'udp+tls', not {transport!r}")
        if "tls" in parts and (tls_cert is None or tls_key is None):
            raise ValueError("transport 'tls' needs tls_cert and tls_key")
        if tls_require_client_cert and tls_ca is None:
            raise ValueError("tls_require_client_cert needs tls_ca")
        self._transports = parts
        #: the stream transport it listens on ("tcp", "tls") or None
        self._stream = next((x for x in _STREAM if x in parts), None)
        self.name = name
        self.ip = ip
        self.port = port
        self.transport = "tls" if "tls" in parts else ("udp" if "udp" in parts and t != "tcp" else "tcp")
        self.tls_cert, self.tls_key, self.tls_ca = tls_cert, tls_key, tls_ca
        self.tls_require_client_cert = tls_require_client_cert
        self.tls_server_name = tls_server_name
        self.srtp = srtp
        self._server_ssl: ssl.SSLContext | None = None
        self._client_ssl: ssl.SSLContext | None = None
        self.domain = domain
        self.media_ip = media_ip or ip
        self.rtp_port_base = rtp_port_base
        self.timer_t1 = timer_t1
        self.resolver = resolver
        self.ring_seconds = 0.0
        self.answer_status = 200
        self.calls_received: dict[str, CallStats] = {}
        self.calls_answered: dict[str, CallStats] = {}
        self.log: deque[str] = deque(maxlen=2000)
        self._ports = PortAllocator(self.media_ip, rtp_port_base, min(65535, rtp_port_base + rtp_port_range - 1))
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.AbstractServer | None = None
        self._conns: dict[tuple[str, tuple[str, int]], _TcpConn] = {}  # (transport, peer) → connection
        self._all_conns: set[_TcpConn] = set()
        self._conn_locks: dict[tuple[str, tuple[str, int]], asyncio.Lock] = {}
        self._client_tx: dict[tuple[str, str], _ClientTx] = {}
        self._server_tx: dict[tuple, _ServerTx] = {}
        self._dialogs: dict[tuple[str, str, str], _Dialog] = {}
        self._call_logs: dict[str, _CallLog] = {}
        self._ended_events: dict[str, asyncio.Event] = {}
        self._media: set[_Media] = set()
        self._tasks: set[asyncio.Task] = set()
        self._accept_tasks: set[asyncio.Task] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._t_start = 0.0
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<LabUserAgent {self.name} {_hostport(self.ip, self.port)} {'/'.join(sorted(self._transports))}>"

    # ------------------------------------------------------------------ lifecycle
    @property
    def address(self) -> tuple[str, int]:
        """``(ip, port)`` the UA listens on."""
        return (self.ip, self.port)

    def uri(self, user: str | None = None) -> str:
        """A SIP URI reaching this UA directly: ``sip:<user>@<ip>:<port>``."""
        return f"sip:{user or self.name}@{_hostport(self.ip, self.port)}"

    async def start(self) -> None:
        """Bind the SIP listeners (UDP and/or TCP or TLS on ``ip:port``).

        Raises OSError (``ssl.SSLError`` included) when a socket cannot be bound or a
        TLS certificate/key/CA file cannot be loaded."""
        if self._started:
            return
        loop = asyncio.get_running_loop()
        self._t_start = loop.time()
        try:
            if "udp" in self._transports:
                self._udp, _ = await loop.create_datagram_endpoint(lambda: _SipUdp(self), local_addr=(self.ip, self.port))
                self.port = self._udp.get_extra_info("sockname")[1]
            if "tls" in self._transports:
                self._server_ssl = server_context(self.tls_cert, self.tls_key, self.tls_ca,
                                                  require_client_cert=self.tls_require_client_cert)
                self._client_ssl = client_context(self.tls_cert, self.tls_key, self.tls_ca)
            if self._stream is not None:
                kw: dict[str, Any] = {}
                if self._stream == "tls":
                    kw = {"ssl": self._server_ssl, "ssl_handshake_timeout": TLS_HANDSHAKE_TIMEOUT}
                self._server = await asyncio.start_server(self._on_tcp_accept, self.ip, self.port, **kw)
                self.port = self._server.sockets[0].getsockname()[1]
        except BaseException:
            await self.close()
            raise
        self._started = True
        log.info("%s: listening on %s", self.name, self)

    async def close(self) -> None:
        """Close every socket, connection, media session, timer and task it opened.

        Pending :meth:`call` coroutines return promptly with an error result; no BYE
        is sent for dialogs still up."""
        if self._closed:
            return
        self._closed = True
        for h in self._timers:
            h.cancel()
        self._timers.clear()
        for tx in self._client_tx.values():
            tx.queue.put_nowait(None)
        for d in list(self._dialogs.values()):
            self._end_dialog(d, "UA closed")
        for m in list(self._media):
            m.close()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for t in tasks:
            t.cancel()
        for c in list(self._all_conns):
            c.close()
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                pass
        if self._udp is not None:
            self._udp.close()
        accepted = [t for t in self._accept_tasks if t is not current]
        if accepted:
            _done, pending = await asyncio.wait(accepted, timeout=1.0)
            for t in pending:
                t.cancel()
            tasks += list(pending)
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        # Let transports finish closing their sockets.
        await asyncio.sleep(0)

    async def __aenter__(self) -> "LabUserAgent":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: background task failed", self.name, exc_info=task.exception())

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        if self._closed:
            return
        holder: list[asyncio.TimerHandle] = []

        def run() -> None:
            self._timers.discard(holder[0])
            fn()

        h = asyncio.get_running_loop().call_later(delay, run)
        holder.append(h)
        self._timers.add(h)

    # ------------------------------------------------------------------ transport
    async def _on_tcp_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio's stream server logs handler tasks that end cancelled, so close()
        # ends these by closing the connection (EOF) and they swallow cancellation.
        task = asyncio.current_task()
        if task is not None:
            self._accept_tasks.add(task)
            task.add_done_callback(self._accept_tasks.discard)
        peer = writer.get_extra_info("peername")
        conn = _TcpConn(self, reader, writer, (peer[0], peer[1]), self._stream or "tcp")
        if self._closed:
            conn.close()
            return
        if conn.peer_names:
            log.info("%s: TLS connection from %s, certificate names %s", self.name, _hostport(*conn.peer),
                     ", ".join(conn.peer_names))
        self._conns[conn.key] = conn
        self._all_conns.add(conn)
        try:
            await conn.run()
        except asyncio.CancelledError:
            conn.close()

    def _conn_closed(self, conn: _TcpConn) -> None:
        self._all_conns.discard(conn)
        if self._conns.get(conn.key) is conn:
            del self._conns[conn.key]
        if self._closed:
            return
        for tx in list(self._client_tx.values()):
            if tx.conn is conn and tx.ack is None:
                tx.queue.put_nowait(_TransportError(
                    f"{conn.transport.upper()} connection to {_hostport(*conn.peer)} lost before a final response:"
                    f" {conn.close_reason}"))

    async def _resolve(self, host: str, port: int) -> tuple[str, int]:
        h = host[1:-1] if host.startswith("[") else host
        try:
            ipaddress.ip_address(h)
            return (h, port)
        except ValueError:
            pass
        if self.resolver is not None:
            return await self.resolver(h, port)
        infos = await asyncio.get_running_loop().getaddrinfo(h, port, type=socket.SOCK_DGRAM)
        if not infos:
            raise OSError(f"cannot resolve {host!r}")
        return (infos[0][4][0], port)

    async def _get_conn(self, addr: tuple[str, int], transport: str = "tcp", timeout: float = 5.0) -> _TcpConn:
        """An open ``transport`` connection to ``addr``: an existing one (accepted or
        opened), else a new one from ``ip`` (TLS: handshake, server chain checked
        against ``tls_ca`` and, with ``tls_server_name``, its name)."""
        key = (transport, addr)
        lock = self._conn_locks.setdefault(key, asyncio.Lock())
        async with lock:
            c = self._conns.get(key)
            if c is not None and not c.closed:
                return c
            if self._closed:
                raise _UaClosed()
            local = (self.ip, 0)
            if transport == "tls":
                if self._client_ssl is None:
                    raise OSError(f"{self.name} has no TLS client context")
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    addr[0], addr[1], local_addr=local, ssl=self._client_ssl,
                    server_hostname=self.tls_server_name or addr[0], ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
                ), timeout + TLS_HANDSHAKE_TIMEOUT)
            else:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(addr[0], addr[1], local_addr=local), timeout)
            conn = _TcpConn(self, reader, writer, addr, transport)
            if transport == "tls" and self.tls_server_name and not subject_name_matches(conn.peer_names, self.tls_server_name):
                writer.close()
                raise OSError(f"TLS server {_hostport(*addr)} is not {self.tls_server_name!r}"
                              f" (certificate names: {', '.join(conn.peer_names) or 'none'})")
            self._conns[key] = conn
            self._all_conns.add(conn)
            self._spawn(conn.run())
            return conn

    async def _flow_to(self, host: str, port: int, transport: str) -> _Flow:
        addr = await self._resolve(host, port)
        if transport in _STREAM:
            return (await self._get_conn(addr, transport)).flow
        return _Flow("udp", addr)

    def _send(self, msg: Message, flow: _Flow, retransmit: bool = False) -> bool:
        """Serialise and send ``msg`` on ``flow``; trace it in the ladder."""
        if self._closed:
            return False
        data = msg.to_bytes()
        self._trace("→", msg, flow, retransmit)
        try:
            if flow.transport in _STREAM:
                if flow.conn is None or flow.conn.closed:
                    log.warning("%s: %s connection to %s is gone; %r not sent", self.name, flow.transport.upper(),
                                flow.label, msg)
                    return False
                return flow.conn.write(data)
            if self._udp is None:
                return False
            self._udp.sendto(data, flow.addr)
            return True
        except (OSError, ValueError, TypeError) as exc:
            log.warning("%s: send to %s failed: %s", self.name, flow.label, exc)
            return False

    def _trace(self, direction: str, msg: Message, flow: _Flow, retransmit: bool = False) -> None:
        if isinstance(msg, Request):
            first = f"{msg.method} {msg.uri}"
        else:
            try:
                method = msg.cseq[1]
            except ValueError:
                method = "?"
            first = f"{msg.status} {msg.reason} ({method})"
        clog = self._call_logs.get(msg.call_id)
        t0 = clog.t0 if clog is not None else self._t_start
        now = asyncio.get_running_loop().time()
        line = f"{(now - t0) * 1000:8.1f} ms {direction} {flow.label} {first}"
        if retransmit:
            line += " [retransmission]"
        if clog is not None:
            clog.lines.append(line)
        self.log.append(f"[{self.name}] {line}")
        log.debug("%s: %s", self.name, line)

    # ------------------------------------------------------------------ receive
    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            if not data.strip(b"\r\n\t \x00"):
                return  # keepalive
            flow = _Flow("udp", addr)
            try:
                msg = parse_message(data)
            except ParseError as exc:
                self._on_parse_error(exc, flow)
                return
            self._dispatch(msg, flow)
        except Exception:
            log.exception("%s: dropping datagram from %s", self.name, addr)

    def _on_parse_error(self, exc: ParseError, flow: _Flow) -> None:
        log.warning("%s: malformed message from %s: %s", self.name, flow.label, exc.reason)
        req = exc.partial
        if isinstance(req, Request) and req.method != "ACK":
            try:
                self._send(make_response(req, 400, f"Bad Request ({_clean_reason(exc.reason)})"), flow)
            except Exception:  # noqa: BLE001
                log.debug("%s: could not answer 400", self.name, exc_info=True)

    def _dispatch(self, msg: Request | Response, flow: _Flow) -> None:
        try:
            if isinstance(msg, Request) and msg.method == "INVITE" and msg.to_tag is None and msg.call_id not in self._call_logs:
                self._call_logs[msg.call_id] = _CallLog(asyncio.get_running_loop().time(), [])
            self._trace("←", msg, flow)
            if isinstance(msg, Response):
                self._on_response(msg, flow)
            else:
                self._on_request(msg, flow)
        except Exception:
            log.exception("%s: error handling %r from %s; dropped", self.name, msg, flow.label)

    def _on_response(self, resp: Response, flow: _Flow) -> None:
        vias = resp.headers.get_all("Via")
        if len(vias) != 1:  # RFC 3261 §8.1.3.3
            log.warning("%s: response with %d Via headers dropped", self.name, len(vias))
            return
        branch = Via.parse(vias[0]).branch or ""
        tx = self._client_tx.get((branch, resp.cseq[1]))
        if tx is None:
            log.debug("%s: stray response %r", self.name, resp)
            return
        if tx.ack is not None:
            ack, ack_flow, for_2xx = tx.ack
            if resp.status >= 200 and (resp.status < 300) == for_2xx:
                self._send(ack, ack_flow, retransmit=True)
            return
        tx.queue.put_nowait(resp)

    @staticmethod
    def _stx_key(req: Request, method: str | None = None) -> tuple:
        via = req.top_via()
        method = method or ("INVITE" if req.method == "ACK" else req.method)
        branch = via.branch or ""
        if branch.startswith(MAGIC_COOKIE):
            return (branch, via.sent_by, method)
        return (req.call_id, req.cseq[0], req.from_tag, via.sent_by, method)

    def _on_request(self, req: Request, flow: _Flow) -> None:
        if req.method == "ACK":
            self._on_ack(req)
            return
        key = self._stx_key(req)
        tx = self._server_tx.get(key)
        if tx is not None:  # retransmission
            if tx.last is not None:
                self._send(tx.last, tx.flow, retransmit=True)
            return
        tx = _ServerTx(key, req, flow)
        self._server_tx[key] = tx
        if req.method != "INVITE":
            self._later(64 * self.timer_t1, lambda: self._server_tx.pop(key, None))
        handler = {
            "INVITE": self._on_invite,
            "BYE": self._on_bye,
            "CANCEL": self._on_cancel,
            "OPTIONS": self._on_options,
            "INFO": self._on_info,
        }.get(req.method)
        if handler is None:
            self._respond(tx, 405, extra=[("Allow", ALLOW)])
            return
        handler(tx)

    def _respond(self, tx: _ServerTx, status: int, reason: str | None = None, *, body: bytes = b"", extra: list[tuple[str, str]] | None = None, tag: bool = True) -> Response:
        extra = list(extra or [])
        extra.append(("Server", f"{USER_AGENT}/{self.name}"))
        if body:
            extra.append(("Content-Type", "application/sdp"))
        resp = make_response(tx.request, status, reason, to_tag=tx.to_tag if tag else None, body=body, extra=extra)
        tx.last = resp
        self._send(resp, tx.flow)
        return resp

    def _contact(self, user: str, transport: str) -> str:
        uri = f"sip:{user}@{_hostport(self.ip, self.port)}"
        if transport in _STREAM:
            uri += f";transport={transport}"
        return f"<{uri}>"

    # ------------------------------------------------------------------ UAS
    def _on_invite(self, tx: _ServerTx) -> None:
        req = tx.request
        if req.to_tag is not None:
            self._on_reinvite(tx)
            return
        call_id = req.call_id
        clog = self._call_logs.get(call_id) or _CallLog(asyncio.get_running_loop().time(), [])
        self._call_logs[call_id] = clog
        stats = CallStats(
            call_id=call_id,
            from_uri=str(req.from_.uri),
            to_uri=str(req.to.uri),
            peer=tx.flow.label,
            ladder=clog.lines,
            transport=tx.flow.transport,
            tls_peer_names=list(tx.flow.conn.peer_names) if tx.flow.conn is not None else [],
        )
        tx.stats = stats
        self.calls_received[call_id] = stats
        self._ended_events.setdefault(call_id, asyncio.Event())
        self._respond(tx, 100, tag=False)
        require = req.headers.get("Require")
        if require:
            self._final_non2xx(tx, 420, extra=[("Unsupported", require)])
            return
        contacts = req.headers.get_all("Contact")
        if len(contacts) != 1 or parse_name_addr(contacts[0]).uri is None:
            self._final_non2xx(tx, 400, "Bad Request (INVITE needs exactly one Contact)")
            return
        offer: SdpInfo | None = None
        if req.body:
            if req.content_type != "application/sdp":
                self._final_non2xx(tx, 415, extra=[("Accept", "application/sdp")])
                return
            try:
                offer = parse_sdp(req.body)
            except ValueError as exc:
                self._final_non2xx(tx, 488, f"Not Acceptable Here ({_clean_reason(str(exc))})")
                return
            if _answer_pts(offer)[1] is None:
                self._final_non2xx(tx, 488, "Not Acceptable Here (no common codec: PCMA/PCMU)")
                return
        chosen: tuple[CryptoAttribute, CryptoAttribute] | None = None
        if offer is not None:
            reason = self._srtp_offer_problem(offer)
            if reason is not None:
                self._final_non2xx(tx, 488, f"Not Acceptable Here ({reason})")
                return
            if offer.savp:
                chosen = sdes.choose_answer(offer.crypto_attributes(), allow_unencrypted_srtcp=UNENCRYPTED_SRTCP_SUPPORTED)
        tx.task = self._spawn(self._uas_answer(tx, stats, offer, chosen))

    def _srtp_offer_problem(self, offer: SdpInfo) -> str | None:
        """Why an offer's media protocol/keys cannot be answered, or None."""
        if offer.proto.upper() not in ("RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF"):
            return f"unsupported media protocol {offer.proto}"
        if offer.savp:
            if sdes.choose_answer(offer.crypto_attributes(), allow_unencrypted_srtcp=UNENCRYPTED_SRTCP_SUPPORTED) is None:
                return "no usable a=crypto in the RTP/SAVP offer"
        elif self.srtp:
            return f"SRTP required, offer is {offer.proto}"
        return None

    def _srtp_from_answer(self, media: _Media, answer: SdpInfo) -> None:
        """Check an SDP answer against what ``media`` offered and key SRTP from it.
        Raises ValueError (SdesError) when it does not fit the offer."""
        offered = media.srtp_offer
        if offered is None:
            if answer.savp:
                raise ValueError(f"{answer.proto} answer to a plain RTP offer")
            return
        if not answer.savp:
            raise ValueError(f"plain {answer.proto} answer to an SRTP (RTP/SAVP) offer")
        ours, theirs = sdes.accept_answer(offered, [CryptoAttribute.parse(v) for v in answer.crypto])
        media.key_srtp(ours, theirs)
        media.srtp_offer = None

    async def _uas_answer(self, tx: _ServerTx, stats: CallStats, offer: SdpInfo | None,
                          chosen: tuple[CryptoAttribute, CryptoAttribute] | None = None) -> None:
        req = tx.request
        media: _Media | None = None
        try:
            rr = [("Record-Route", v) for v in req.headers.get_all("Record-Route")]
            contact = self._contact(self.name, tx.flow.transport)
            self._respond(tx, 180, extra=rr + [("Contact", contact)])
            if self.ring_seconds > 0:
                await asyncio.sleep(self.ring_seconds)
            if not 200 <= self.answer_status < 300:
                self._final_non2xx(tx, self.answer_status)
                return
            media = await self._open_media()
            crypto: list[CryptoAttribute] | None = None
            if offer is not None:
                pts, send_pt = _answer_pts(offer)
                media.set_remote(offer, send_pt)
                ptime = offer.ptime or 20
                if chosen is not None:  # SDES answer: the offer's tag and suite, our key
                    theirs, ours = chosen
                    media.key_srtp(ours, theirs)
                    crypto = [ours]
            else:
                pts, ptime = list(_OFFER_PTS), 20
                if self.srtp:  # we offer in the 2xx; the answer comes in the ACK
                    media.srtp_offer = crypto = sdes.make_offer(include_unencrypted_srtcp=UNENCRYPTED_SRTCP_SUPPORTED)
            body = build_sdp(self.name, random.randrange(1, 2**31), self.media_ip, media.port, pts, ptime, crypto=crypto)
            media.ptime = ptime
            cseq = req.cseq[0]
            d = _Dialog(
                role="uas",
                call_id=req.call_id,
                local_tag=tx.to_tag,
                remote_tag=req.from_tag or "",
                local_hdr=f"{req.headers.get('To')};tag={tx.to_tag}",
                remote_hdr=req.headers.get("From") or "",
                local_seq=random.randrange(1, 10000),
                remote_target=str(parse_name_addr(req.headers.get("Contact") or "").uri),
                route_set=req.headers.get_all("Record-Route"),
                transport=tx.flow.transport,
                flow=tx.flow,
                t1=self.timer_t1,
                contact_user=self.name,
                invite_cseq=cseq,
                stats=stats,
                media=media,
                offer_sent_in_2xx=offer is None,
            )
            media = None  # owned by the dialog now
            self._dialogs[d.key] = d
            ev = d.ack_events.setdefault(cseq, asyncio.Event())
            resp = self._respond(tx, 200, body=body, extra=rr + [("Contact", contact), ("Allow", ALLOW)])
            stats.status, stats.answered = 200, True
            self.calls_answered[req.call_id] = stats
            self._later(64 * self.timer_t1, lambda: self._server_tx.pop(tx.key, None))
            await self._reliable_2xx(d, tx.flow, resp, ev)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s: answering %s failed", self.name, req.call_id)
            if not tx.final_sent:
                self._final_non2xx(tx, 500, f"Server Internal Error ({_clean_reason(str(exc))})")
        finally:
            if media is not None:
                media.close()

    async def _reliable_2xx(self, d: _Dialog, flow: _Flow, resp: Response, ev: asyncio.Event) -> None:
        """Retransmit a 2xx over UDP (T1 doubling, capped at T2) until its ACK;
        give up after 64*T1 and end the call with BYE (RFC 3261 §13.3.1.4)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 64 * d.t1
        interval = d.t1
        while not ev.is_set() and not d.ended.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            wait = min(interval, remaining) if flow.transport == "udp" else remaining
            try:
                await asyncio.wait_for(ev.wait(), wait)
            except asyncio.TimeoutError:
                if flow.transport == "udp" and loop.time() < deadline and not ev.is_set():
                    self._send(resp, flow, retransmit=True)
                    interval = min(2 * interval, T2)
        if not ev.is_set() and not d.ended.is_set():
            log.warning("%s: no ACK for the 2xx of %s; hanging up", self.name, d.call_id)
            d.ack_events.pop(resp.cseq[0], None)
            await self._send_bye(d, "no ACK")

    def _final_non2xx(self, tx: _ServerTx, status: int, reason: str | None = None, extra: list[tuple[str, str]] | None = None) -> None:
        """Send a 3xx–6xx final response; over UDP retransmit it until the ACK
        (Timer G, T1 doubling capped at T2) or 64*T1 (Timer H)."""
        self._respond(tx, status, reason, extra=extra)
        if tx.stats is not None:
            tx.stats.status = status
            self._finish_stats(tx.stats, None, f"rejected {status}")
        self._later(64 * self.timer_t1, lambda: self._server_tx.pop(tx.key, None))
        if tx.flow.transport == "udp":
            self._spawn(self._retransmit_final(tx))

    async def _retransmit_final(self, tx: _ServerTx) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 64 * self.timer_t1
        interval = self.timer_t1
        while not tx.acked.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(tx.acked.wait(), min(interval, remaining))
            except asyncio.TimeoutError:
                if tx.last is not None and loop.time() < deadline:
                    self._send(tx.last, tx.flow, retransmit=True)
                    interval = min(2 * interval, T2)

    def _on_reinvite(self, tx: _ServerTx) -> None:
        req = tx.request
        d = self._dialogs.get((req.call_id, req.to_tag or "", req.from_tag or ""))
        if d is None or d.media is None:
            self._respond(tx, 481, tag=False)
            return
        media = d.media
        crypto: list[CryptoAttribute] | None = [media.srtp_ours] if media.srtp and media.srtp_ours else None
        if req.body:
            try:
                sdp = parse_sdp(req.body)
                problem = self._srtp_offer_problem(sdp)
                if problem is not None:
                    raise ValueError(problem)
                if sdp.savp:
                    chosen = sdes.choose_answer(sdp.crypto_attributes(), allow_unencrypted_srtcp=UNENCRYPTED_SRTCP_SUPPORTED)
                    assert chosen is not None  # checked by _srtp_offer_problem
                    theirs, ours = chosen
                    cur = media.srtp_ours
                    if cur is not None and (cur.suite, cur.session_params) == (ours.suite, ours.session_params):
                        # same suite: keep our key (and outbound context), answer with the new tag
                        ours = CryptoAttribute(ours.tag, cur.suite, cur.key_salt, session_params=list(cur.session_params))
                    media.key_srtp(ours, theirs)
                    crypto = [ours]
                else:
                    media.tx_srtp = media.rx_srtp = media.srtp_ours = media.srtp_theirs = None
                    crypto = None
                media.set_remote(sdp, _answer_pts(sdp)[1])
            except ValueError as exc:
                self._respond(tx, 488, f"Not Acceptable Here ({_clean_reason(str(exc))})", tag=False)
                return
        contact = req.headers.get("Contact")
        if contact:
            try:
                d.remote_target = str(parse_name_addr(contact).uri)
            except UriError:
                pass
        body = build_sdp(self.name, 1, self.media_ip, d.media.port, list(_OFFER_PTS), d.media.ptime, crypto=crypto)
        ev = d.ack_events.setdefault(req.cseq[0], asyncio.Event())
        resp = self._respond(tx, 200, body=body, extra=[("Contact", self._contact(d.contact_user, d.transport))], tag=False)
        self._later(64 * self.timer_t1, lambda: self._server_tx.pop(tx.key, None))
        self._spawn(self._reliable_2xx(d, tx.flow, resp, ev))

    def _on_ack(self, req: Request) -> None:
        tx = self._server_tx.get(self._stx_key(req))
        if tx is not None and tx.last is not None and tx.last.status >= 300:
            tx.acked.set()  # ACK for a non-2xx final (same branch)
            return
        d = self._dialogs.get((req.call_id, req.to_tag or "", req.from_tag or ""))
        if d is None:
            log.debug("%s: ACK for no dialog dropped", self.name)
            return
        ev = d.ack_events.pop(req.cseq[0], None)
        if ev is not None:
            ev.set()
        if d.media is not None and d.offer_sent_in_2xx and d.media.remote is None and req.body:
            try:
                sdp = parse_sdp(req.body)
                self._srtp_from_answer(d.media, sdp)
                d.media.set_remote(sdp, _first_audio_pt(sdp))
            except ValueError as exc:
                log.warning("%s: bad SDP answer in ACK: %s", self.name, exc)
        if d.role == "uas" and d.media is not None and not d.media.started and req.cseq[0] == d.invite_cseq:
            d.media.start(None, d.media.ptime)

    def _on_bye(self, tx: _ServerTx) -> None:
        req = tx.request
        d = self._dialogs.get((req.call_id, req.to_tag or "", req.from_tag or ""))
        if d is None:
            self._respond(tx, 481, tag=False)
            return
        self._end_dialog(d, "remote BYE")
        self._respond(tx, 200, tag=False)

    def _on_cancel(self, tx: _ServerTx) -> None:
        req = tx.request
        inv = self._server_tx.get(self._stx_key(req, "INVITE"))
        if inv is None:
            self._respond(tx, 481, tag=False)
            return
        tx.to_tag = inv.to_tag
        self._respond(tx, 200)
        if not inv.final_sent:
            if inv.task is not None:
                inv.task.cancel()
            self._final_non2xx(inv, 487)

    def _on_options(self, tx: _ServerTx) -> None:
        self._respond(tx, 200, tag=tx.request.to_tag is None, extra=[("Allow", ALLOW), ("Accept", "application/sdp")])

    def _on_info(self, tx: _ServerTx) -> None:
        req = tx.request
        known = (req.call_id, req.to_tag or "", req.from_tag or "") in self._dialogs
        self._respond(tx, 200 if known else 481, tag=False)

    # ------------------------------------------------------------------ dialogs
    def _build_in_dialog(self, d: _Dialog, method: str, cseq: int) -> tuple[Request, str]:
        """An in-dialog request and the URI of its next hop (RFC 3261 §12.2.1.1)."""
        routes = list(d.route_set)
        if routes:
            first = parse_name_addr(routes[0]).uri
            if first is not None and "lr" in first.params:
                ruri, next_hop = d.remote_target, str(first)
            else:  # strict router: it goes into the Request-URI
                if first is None:
                    raise UriError(f"bad Route {routes[0]!r}")
                # §12.2.1.1: strip what a Request-URI may not carry (§19.1.1 table)
                ruri = str(first.copy(params={k: v for k, v in first.params.items() if k != "method"}, headers=None))
                routes = routes[1:] + [f"<{d.remote_target}>"]
                next_hop = str(first)
        else:
            ruri = next_hop = d.remote_target
        req = Request(method, ruri)
        h = req.headers
        h.add("Via", f"SIP/2.0/{d.transport.upper()} {_hostport(self.ip, self.port)};rport;branch={_new_branch()}")
        h.add("Max-Forwards", "70")
        for r in routes:
            h.add("Route", r)
        h.add("From", d.local_hdr)
        h.add("To", d.remote_hdr)
        h.add("Call-ID", d.call_id)
        h.add("CSeq", f"{cseq} {method}")
        if method != "ACK":
            h.add("User-Agent", f"{USER_AGENT}/{self.name}")
        return req, next_hop

    async def _dialog_flow(self, d: _Dialog, next_hop: str) -> _Flow:
        """Where an in-dialog request goes: the next hop's address; over TCP/TLS an
        open connection to it, else the connection the dialog was set up on (a
        transport this UA does not use falls back to the dialog's)."""
        uri = parse_uri(next_hop)
        transport = (uri.transport or "").lower() or ("tls" if uri.scheme == "sips" else d.transport)
        if transport not in self._transports:
            transport = d.transport
        host = uri.params.get("maddr") or uri.host
        port = uri.port or (5061 if uri.scheme == "sips" or transport == "tls" else 5060)
        addr = await self._resolve(host, port)
        if transport in _STREAM:
            c = self._conns.get((transport, addr))
            if c is not None and not c.closed:
                return c.flow
            if d.flow.transport == transport and d.flow.conn is not None and not d.flow.conn.closed:
                return d.flow
            return (await self._get_conn(addr, transport)).flow
        return _Flow("udp", addr)

    async def _send_bye(self, d: _Dialog, reason: str) -> Response | None:
        if d.ended.is_set() or self._closed:
            return None
        if d.media is not None:
            d.media.stop()
        d.local_seq += 1
        bye, next_hop = self._build_in_dialog(d, "BYE", d.local_seq)
        try:
            flow = await self._dialog_flow(d, next_hop)
            resp = await self._non_invite(bye, flow, d.t1)
        except (OSError, UriError, asyncio.TimeoutError, _UaClosed) as exc:
            log.warning("%s: BYE for %s failed: %s", self.name, d.call_id, exc)
            resp = None
        self._end_dialog(d, f"local BYE ({reason})")
        return resp

    async def hangup(self, call_id: str) -> int | None:
        """Send BYE in every dialog of ``call_id``; the BYE's final status (None when
        there was no dialog or no answer)."""
        status = None
        for d in [d for d in self._dialogs.values() if d.call_id == call_id]:
            resp = await self._send_bye(d, "hangup")
            status = resp.status if resp is not None else status
        return status

    def _end_dialog(self, d: _Dialog, reason: str) -> None:
        if d.ended.is_set():
            return
        d.end_reason = reason
        d.ended.set()
        self._dialogs.pop(d.key, None)
        for ev in d.ack_events.values():
            ev.set()
        if d.media is not None:
            d.media.close()
        if d.stats is not None:
            self._finish_stats(d.stats, d.media, reason)

    def _finish_stats(self, stats: CallStats, media: _Media | None, reason: str) -> None:
        if media is not None:
            media.fill(stats)
        stats.ended, stats.end_reason = True, reason
        ev = self._ended_events.get(stats.call_id)
        if ev is not None:
            ev.set()

    def refresh_stats(self) -> None:
        """Copy the live packet counters of calls still up into their CallStats."""
        for d in self._dialogs.values():
            if d.stats is not None and d.media is not None:
                d.media.fill(d.stats)

    async def wait_call_ended(self, call_id: str, timeout: float = 5.0) -> CallStats | None:
        """Wait until the answered/rejected call ``call_id`` has ended; its stats or
        None on timeout or when this UA never saw that call."""
        ev = self._ended_events.setdefault(call_id, asyncio.Event())
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except asyncio.TimeoutError:
            return None
        return self.calls_received.get(call_id)

    # ------------------------------------------------------------------ media
    async def _open_media(self) -> _Media:
        pair = self._ports.allocate_pair()
        media = _Media(self, pair)
        try:
            await media.open()
        except BaseException:
            media.close()
            self._ports.release(pair)
            raise
        self._media.add(media)
        return media

    def _media_closed(self, media: _Media) -> None:
        self._media.discard(media)
        self._ports.release(media.pair)

    # ------------------------------------------------------------------ UAC
    def _new_client_tx(self, key: tuple[str, str]) -> _ClientTx:
        tx = _ClientTx()
        self._client_tx[key] = tx
        return tx

    async def _non_invite(self, req: Request, flow: _Flow, t1: float) -> Response | None:
        """Run a non-INVITE client transaction (Timers E/F, RFC 3261 §17.1.2);
        the final response, or None after 64*T1."""
        key = (req.branch or "", req.method)
        tx = self._new_client_tx(key)
        tx.conn = flow.conn
        loop = asyncio.get_running_loop()
        try:
            if not self._send(req, flow) and flow.conn is not None and flow.conn.closed:
                return _TransportError(f"{flow.label} is closed ({flow.conn.close_reason})")
            deadline = loop.time() + 64 * t1
            interval = t1
            next_retx = loop.time() + t1 if flow.transport == "udp" else math.inf
            while True:
                now = loop.time()
                if now >= deadline:
                    return None
                try:
                    resp = await asyncio.wait_for(tx.queue.get(), min(deadline, next_retx) - now)
                except asyncio.TimeoutError:
                    if loop.time() >= next_retx and loop.time() < deadline:
                        self._send(req, flow, retransmit=True)
                        interval = min(2 * interval, T2)
                        next_retx = loop.time() + interval
                    continue
                if resp is None:
                    raise _UaClosed()
                if resp.status >= 200:
                    return resp
                interval = T2
        finally:
            self._client_tx.pop(key, None)

    async def call(
        self,
        target_uri: str,
        *,
        proxy: tuple[str, int, str],
        from_user: str,
        media_seconds: float = 2.0,
        ptime_ms: int = 20,
        timer_t1: float = 0.5,
        timeout_s: float | None = None,
        to_uri: str | None = None,
        extra_headers: list[tuple[str, str]] | None = None,
    ) -> CallResult:
        """Place a call to ``target_uri`` through ``proxy`` = ``(host, port, transport)``.

        Sends the INVITE (retransmitted over UDP with Timer A from ``timer_t1``),
        waits up to ``timeout_s`` (default 64*T1 = 32 s) for a final response — with
        no response at all the result is 408 with ``error`` saying so; after a
        provisional the call is CANCELled. On 2xx: ACK through the route set,
        ``media_seconds`` of RTP (``ptime_ms`` packets) and RTCP both ways, then BYE.
        Never raises for network problems: everything is reported in the
        :class:`CallResult`. Raises ValueError for a transport it is not listening on.
        """
        host, pport, ptrans = proxy
        ptrans = ptrans.lower()
        if ptrans not in self._transports:
            raise ValueError(f"{self.name} is not listening on {ptrans!r} (listens on {sorted(self._transports)})")
        if not self._started or self._closed:
            raise RuntimeError(f"{self.name} is not running")
        loop = asyncio.get_running_loop()
        timeout = 64 * timer_t1 if timeout_s is None else timeout_s
        call_id = f"{secrets.token_hex(10)}@{self.domain}"
        clog = _CallLog(loop.time(), [])
        self._call_logs[call_id] = clog
        result = CallResult(call_id=call_id, ladder=clog.lines, transport=ptrans)
        media: _Media | None = None
        d: _Dialog | None = None
        try:
            try:
                media = await self._open_media()
            except OSError as exc:
                result.status, result.reason, result.error = 500, "no media ports", f"RTP port allocation failed: {exc}"
                return result
            try:
                flow = await self._flow_to(host, pport, ptrans)
            except (OSError, asyncio.TimeoutError) as exc:
                result.status, result.reason = 503, "Service Unavailable"
                result.error = f"transport error reaching {_hostport(host, pport)}/{ptrans}: {exc!r}"
                return result
            if flow.conn is not None:
                result.tls_peer_names = list(flow.conn.peer_names)
            d = await self._uac_invite(result, target_uri, to_uri, flow, from_user, media, ptime_ms, timer_t1, timeout, extra_headers)
            if d is None:
                return result
            if media_seconds > 0 and media.remote is not None:
                media.start(media_seconds, ptime_ms)
                await self._wait_any([media.done, d.ended], media_seconds + 5.0)
            media.stop()
            if not d.ended.is_set():
                resp = await self._send_bye(d, "call complete")
                result.bye_status = resp.status if resp is not None else None
                if resp is None:
                    result.ok = False
                    result.error = result.error or f"no final response to BYE within {64 * timer_t1:.1f} s"
                elif resp.status >= 300:
                    result.ok = False
                    result.error = result.error or f"BYE answered {resp.status} {resp.reason}"
        except _UaClosed:
            result.ok = False
            result.error = result.error or "UA closed during the call"
        except Exception as exc:  # a lab tool reports, it does not crash
            log.exception("%s: call %s failed", self.name, call_id)
            result.ok = False
            result.error = f"internal error: {exc!r}"
        finally:
            if d is not None:
                self._end_dialog(d, d.end_reason or "call finished")
            if media is not None:
                media.close()
                media.fill(result)
            result.duration_ms = (loop.time() - clog.t0) * 1000
        return result

    @staticmethod
    async def _wait_any(events: list[asyncio.Event], timeout: float) -> None:
        tasks = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()

    async def _uac_invite(
        self,
        result: CallResult,
        target_uri: str,
        to_uri: str | None,
        flow: _Flow,
        from_user: str,
        media: _Media,
        ptime_ms: int,
        t1: float,
        timeout: float,
        extra_headers: list[tuple[str, str]] | None,
    ) -> _Dialog | None:
        """INVITE transaction and ACK; the confirmed dialog, or None (result filled)."""
        loop = asyncio.get_running_loop()
        from_tag = _new_tag()
        from_hdr = f'"{from_user}" <sip:{from_user}@{self.domain}>;tag={from_tag}'
        branch = _new_branch()
        cseq = 1
        invite = Request("INVITE", target_uri)
        h = invite.headers
        h.add("Via", f"SIP/2.0/{flow.transport.upper()} {_hostport(self.ip, self.port)};rport;branch={branch}")
        h.add("Max-Forwards", "70")
        h.add("From", from_hdr)
        h.add("To", f"<{to_uri or target_uri}>")
        h.add("Call-ID", result.call_id)
        h.add("CSeq", f"{cseq} INVITE")
        h.add("Contact", self._contact(from_user, flow.transport))
        h.add("Allow", ALLOW)
        h.add("User-Agent", f"{USER_AGENT}/{self.name}")
        for n, v in extra_headers or []:
            h.add(n, v)
        h.add("Content-Type", "application/sdp")
        crypto = None
        if self.srtp:
            media.srtp_offer = crypto = sdes.make_offer(include_unencrypted_srtcp=UNENCRYPTED_SRTCP_SUPPORTED)
        invite.body = build_sdp(from_user, random.randrange(1, 2**31), self.media_ip, media.port, list(_OFFER_PTS),
                                ptime_ms, crypto=crypto)
        tx = self._new_client_tx((branch, "INVITE"))
        tx.conn = flow.conn
        key = (branch, "INVITE")
        started = loop.time()
        if not self._send(invite, flow) and flow.conn is not None and flow.conn.closed:
            final: Response | None = _TransportError(f"{flow.label} is closed ({flow.conn.close_reason})")
            got_1xx = False
        else:
            final, got_1xx = await self._invite_wait(tx, invite, flow, t1, started + timeout)
        cancelled = False
        if final is None and got_1xx:
            cancelled = True
            cancel = Request("CANCEL", invite.uri)
            ch = cancel.headers
            ch.add("Via", h.get("Via") or "")
            ch.add("Max-Forwards", "70")
            for n in ("From", "To", "Call-ID"):
                ch.add(n, h.get(n) or "")
            ch.add("CSeq", f"{cseq} CANCEL")
            ch.add("User-Agent", f"{USER_AGENT}/{self.name}")
            await self._non_invite(cancel, flow, t1)
            final, _ = await self._invite_wait(tx, invite, flow, t1, loop.time() + 64 * t1, retransmit=False)
        self._later(64 * t1, lambda: self._client_tx.pop(key, None))
        if isinstance(final, _TransportError):
            result.status, result.reason = final.status, final.reason
            result.error = f"transport error: {final.detail}"
            self._client_tx.pop(key, None)
            return None
        if final is None:
            result.status, result.reason = 408, "Request Timeout"
            if got_1xx:
                result.error = f"no final response within {timeout:.1f} s; CANCEL got no 487 either"
            else:
                result.error = f"timeout: no response to INVITE from {flow.label} within {timeout:.1f} s (Timer B)"
            self._client_tx.pop(key, None)
            return None
        result.status, result.reason = final.status, final.reason
        if final.status >= 300:
            ack = Request("ACK", invite.uri)
            ah = ack.headers
            ah.add("Via", h.get("Via") or "")
            ah.add("Max-Forwards", "70")
            ah.add("From", from_hdr)
            ah.add("To", final.headers.get("To") or "")
            ah.add("Call-ID", result.call_id)
            ah.add("CSeq", f"{cseq} ACK")
            self._send(ack, flow)
            tx.ack = (ack, flow, False)
            if cancelled:
                result.error = f"no answer within {timeout:.1f} s; cancelled ({final.status} {final.reason})"
            else:
                result.error = f"call rejected: {final.status} {final.reason}"
            return None
        # 2xx: the dialog (RFC 3261 §12.1.2)
        result.setup_ms = (loop.time() - started) * 1000
        contact = final.headers.get("Contact")
        try:
            remote_target = str(parse_name_addr(contact).uri) if contact else target_uri
        except UriError:
            remote_target = target_uri
        d = _Dialog(
            role="uac",
            call_id=result.call_id,
            local_tag=from_tag,
            remote_tag=final.to_tag or "",
            local_hdr=from_hdr,
            remote_hdr=final.headers.get("To") or "",
            local_seq=cseq,
            remote_target=remote_target,
            route_set=list(reversed(final.headers.get_all("Record-Route"))),
            transport=flow.transport,
            flow=flow,
            t1=t1,
            contact_user=from_user,
            invite_cseq=cseq,
            media=media,
        )
        self._dialogs[d.key] = d
        ack, next_hop = self._build_in_dialog(d, "ACK", cseq)
        ack_flow = await self._dialog_flow(d, next_hop)
        self._send(ack, ack_flow)
        tx.ack = (ack, ack_flow, True)
        result.ok = True
        if not final.body or final.content_type != "application/sdp":
            result.ok, result.error = False, "2xx carried no SDP answer"
        else:
            try:
                answer = parse_sdp(final.body)
                pt = _first_audio_pt(answer)
                if pt is None or not any(pt == p for p, _ in _OFFER_PTS):
                    raise ValueError("no offered audio codec in the answer")
                self._srtp_from_answer(media, answer)
                media.set_remote(answer, pt)
            except ValueError as exc:
                result.ok, result.error = False, f"unusable SDP answer: {exc}"
        if cancelled:
            result.ok, result.error = False, "answered after CANCEL"
        return d

    async def _invite_wait(self, tx: _ClientTx, invite: Request, flow: _Flow, t1: float, deadline: float, retransmit: bool = True) -> tuple[Response | None, bool]:
        """Collect responses until a final one or ``deadline``; retransmit the INVITE
        over UDP (Timer A: T1, 2T1, 4T1… until a provisional)."""
        loop = asyncio.get_running_loop()
        interval = t1
        next_retx = loop.time() + t1 if (retransmit and flow.transport == "udp") else math.inf
        got_1xx = not retransmit
        while True:
            now = loop.time()
            if now >= deadline:
                return None, got_1xx
            try:
                resp = await asyncio.wait_for(tx.queue.get(), min(deadline, next_retx) - now)
            except asyncio.TimeoutError:
                if loop.time() >= next_retx and loop.time() < deadline:
                    self._send(invite, flow, retransmit=True)
                    interval *= 2
                    next_retx = loop.time() + interval
                continue
            if resp is None:
                raise _UaClosed()
            if resp.status < 200:
                got_1xx = True
                next_retx = math.inf
                continue
            return resp, got_1xx
