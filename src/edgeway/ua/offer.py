"""SDP offer/answer for the user agent (RFC 3264), over :mod:`edgeway.sip.sdp`.

Pure functions, no I/O. The UA speaks one audio stream: PCMA/8000 (PT 8), PCMU/8000
(PT 0) and telephone-event/8000 (PT 101), plain ``RTP/AVP`` or ``RTP/SAVP`` keyed
by SDES (RFC 4568, :mod:`edgeway.sip.sdes`). Parsing is
:meth:`~edgeway.sip.sdp.SessionDescription.parse`; :class:`SdpInfo` is the view of
the first ``m=audio`` section the UA needs.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .._ascii import ascii_uint
from ..sip import sdes
from ..sip.sdes import CryptoAttribute, SdesError
from ..sip.sdp import Connection, MediaDescription, Origin, SdpError, SessionDescription

__all__ = ["SdpInfo", "parse_sdp", "build_sdp", "OFFER_PTS", "answer_pts", "first_audio_pt", "offer_problem",
           "srtp_answer", "accept_srtp_answer"]

#: Audio codecs the UA sends: encoding name (lower case) → SDP name.
_CODECS = {"pcma/8000": "PCMA/8000", "pcmu/8000": "PCMU/8000"}
_STATIC_PT = {0: "pcmu/8000", 8: "pcma/8000"}
_TELEPHONE_EVENT = "telephone-event/8000"
#: What the UA offers, in preference order: ``(payload type, "NAME/rate")``.
OFFER_PTS = [(8, "PCMA/8000"), (0, "PCMU/8000"), (101, "telephone-event/8000")]
_PROTOS = ("RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF")


@dataclass
class SdpInfo:
    """The first audio stream of an SDP body.

    ``ip`` connection address (str); ``port`` RTP port (int, 0 = stream rejected);
    ``pts`` payload types (int) in m= order; ``rtpmap`` PT → ``"name/rate"`` lower
    case; ``rtcp_port`` from ``a=rtcp`` (RFC 3605) or None; ``ptime`` ms or None;
    ``proto`` the m= line's protocol; ``crypto`` the ``a=crypto`` values (RFC 4568).
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
        """``"name/rate"`` (lower case) of payload type ``pt``, static types filled in."""
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


def _audio_info(sdp: SessionDescription, m: MediaDescription) -> SdpInfo:
    conn = sdp.connection_for(m)
    if conn is None:
        raise ValueError("no c= line for the audio stream")
    ip = conn.address.split("/")[0]
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError(f"c= address {ip!r} is not an IP address") from None
    rtpmap: dict[int, str] = {}
    for value in m.attribute_values("rtpmap"):
        pt_s, _, enc = (value or "").partition(" ")
        parts = enc.strip().lower().split("/")
        pt = ascii_uint(pt_s, 127)
        if pt is not None and len(parts) >= 2:
            rtpmap[pt] = f"{parts[0]}/{parts[1]}"
    try:
        rtcp = m.rtcp_attribute
    except SdpError:
        rtcp = None
    ptime_s = (m.get_attribute("ptime") or "").strip().split(".")[0]
    return SdpInfo(ip=ip, port=m.port, pts=[n for n in (ascii_uint(f, 127) for f in m.fmts) if n is not None],
                   rtpmap=rtpmap, rtcp_port=rtcp[0] if rtcp else None, ptime=ascii_uint(ptime_s, 10000),
                   proto=m.proto, crypto=m.crypto)


def parse_sdp(body: bytes) -> SdpInfo:
    """The first ``m=audio`` stream of ``body`` (bytes). Raises ValueError
    (:class:`~edgeway.sip.sdp.SdpError` included) when the SDP is malformed, has no
    audio stream, or its connection address is missing or not an IP literal."""
    sdp = SessionDescription.parse(body)
    for m in sdp.media:
        if m.media.lower() == "audio":
            return _audio_info(sdp, m)
    raise ValueError("no m=audio line")


def build_sdp(user: str, sess_id: int, ip: str, port: int, pts: list[tuple[int, str]], ptime_ms: int = 20, *,
              crypto: list[CryptoAttribute] | list[str] | None = None) -> bytes:
    """An SDP body (bytes, CRLF lines) with one sendrecv audio stream on ``ip:port``.

    ``pts`` are ``(payload type, "NAME/rate")`` pairs in preference order
    (telephone-event gets ``a=fmtp:<pt> 0-16``). With ``crypto`` (SDES attributes,
    RFC 4568) the stream is ``RTP/SAVP`` with one ``a=crypto`` per attribute, else
    ``RTP/AVP``. ``ptime_ms`` is the packet time in milliseconds."""
    user = "".join(c for c in user if not c.isspace()) or "-"
    conn = Connection.for_address(ip)
    m = MediaDescription("audio", port, None, "RTP/SAVP" if crypto else "RTP/AVP", [str(pt) for pt, _ in pts])
    for pt, name in pts:
        m.attributes.append(("rtpmap", f"{pt} {name}"))
        if name.lower() == _TELEPHONE_EVENT:
            m.attributes.append(("fmtp", f"{pt} 0-16"))
    m.attributes += [("crypto", str(a)) for a in crypto or []]
    m.attributes += [("ptime", str(ptime_ms)), ("sendrecv", None)]
    sdp = SessionDescription(origin=Origin(user, str(sess_id), sess_id, "IN", conn.addrtype, conn.address),
                             session_name="Edgeway call", connection=conn, other=[("t", "0 0")], media=[m])
    return sdp.to_bytes()


def answer_pts(offer: SdpInfo) -> tuple[list[tuple[int, str]], int | None]:
    """Payload types to answer ``offer`` with (offer order, only those the UA
    speaks) and the audio PT to send (None: no common codec, answer 488)."""
    out: list[tuple[int, str]] = []
    send_pt = None
    for pt in offer.pts:
        name = offer.codec_name(pt)
        if name in _CODECS:
            out.append((pt, _CODECS[name]))
            send_pt = pt if send_pt is None else send_pt
        elif name == _TELEPHONE_EVENT:
            out.append((pt, "telephone-event/8000"))
    return out, send_pt


def first_audio_pt(sdp: SdpInfo) -> int | None:
    """The first payload type of ``sdp`` the UA can send (PCMA or PCMU), or None."""
    return next((pt for pt in sdp.pts if sdp.codec_name(pt) in _CODECS), None)


def offer_problem(offer: SdpInfo, *, require_srtp: bool, allow_unencrypted_srtcp: bool) -> str | None:
    """Why ``offer``'s protocol or keys cannot be answered (the 488 reason text), or None."""
    if offer.proto.upper() not in _PROTOS:
        return f"unsupported media protocol {offer.proto}"
    if offer.savp:
        if sdes.choose_answer(offer.crypto_attributes(), allow_unencrypted_srtcp=allow_unencrypted_srtcp) is None:
            return "no usable a=crypto in the RTP/SAVP offer"
    elif require_srtp:
        return f"SRTP required, offer is {offer.proto}"
    return None


def srtp_answer(offer: SdpInfo, current: CryptoAttribute | None, *,
                allow_unencrypted_srtcp: bool) -> tuple[CryptoAttribute, CryptoAttribute] | None:
    """SDES answer to ``offer`` (RFC 4568 §6.1): ``(theirs, ours)``, None for a plain
    offer. ``current`` is the key this side uses now: with the same suite and
    parameters it is kept (re-INVITE), under the offer's tag. Raises ValueError when
    nothing offered is usable (check :func:`offer_problem` first)."""
    if not offer.savp:
        return None
    chosen = sdes.choose_answer(offer.crypto_attributes(), allow_unencrypted_srtcp=allow_unencrypted_srtcp)
    if chosen is None:
        raise ValueError("no usable a=crypto in the RTP/SAVP offer")
    theirs, ours = chosen
    if current is not None and (current.suite, current.session_params) == (ours.suite, ours.session_params):
        ours = CryptoAttribute(ours.tag, current.suite, current.key_salt, session_params=list(current.session_params))
    return theirs, ours


def accept_srtp_answer(offered: list[CryptoAttribute] | None,
                       answer: SdpInfo) -> tuple[CryptoAttribute, CryptoAttribute] | None:
    """Check an SDP answer against this side's SDES offer (``offered``, None for a
    plain offer): ``(ours, theirs)`` keys, or None for plain RTP. Raises ValueError
    (:class:`~edgeway.sip.sdes.SdesError`) when the answer does not fit the offer."""
    if offered is None:
        if answer.savp:
            raise ValueError(f"{answer.proto} answer to a plain RTP offer")
        return None
    if not answer.savp:
        raise ValueError(f"plain {answer.proto} answer to an SRTP (RTP/SAVP) offer")
    return sdes.accept_answer(offered, [CryptoAttribute.parse(v) for v in answer.crypto])
