"""SDP Security Descriptions for media streams (SDES, RFC 4568), sans-IO.

An SRTP stream keyed with SDES carries ``a=crypto`` attributes on its ``m=``
line (whose transport is ``RTP/SAVP`` or ``RTP/SAVPF``)::

    a=crypto:<tag> <crypto-suite> inline:<base64 key||salt>[|<lifetime>][|<MKI>:<length>] [<session-param> ...]

Each attribute declares the key that the *sender of that SDP* uses to protect
what it sends (RFC 4568 §6.1): the offerer lists one or more alternatives, the
answerer picks one, answers with the same tag, suite and session parameters
and its own fresh key.  Each party then protects with its own key and
unprotects with the other party's.

What this module does (no I/O; the SRTP work itself is in
:mod:`edgeway.media.srtp`):

* :class:`CryptoAttribute` parses and writes one attribute value;
* :func:`make_offer` gives the four alternatives the edge offers (Webex
  hybrid call service, seed 003 §8): ``AES_CM_128_HMAC_SHA1_80``, the same
  with ``UNENCRYPTED_SRTCP``, ``AES_CM_128_HMAC_SHA1_32``, the same with
  ``UNENCRYPTED_SRTCP``;
* :func:`choose_answer` picks the first alternative of an offer that can be
  honoured, in the offerer's order, and builds the answer;
  :func:`accept_answer` checks an answer against what was offered;
* :func:`to_savp` / :func:`to_avp` turn a :class:`~edgeway.sip.sdp.MediaDescription`
  between RTP/AVP and RTP/SAVP (protocol and ``a=crypto`` lines).

Supported: the two ``AES_CM_128`` suites with an ``inline`` key of exactly
30 bytes (16-byte master key + 14-byte master salt) and the session parameters
``UNENCRYPTED_SRTCP`` and ``WSH=<n>``; a key lifetime is kept but not
enforced (nothing re-keys before libsrtp's own 2^48-packet limit).  Attributes that :func:`choose_answer`
passes over (they parse, they are just not chosen): other suites, an MKI
(the SRTP layer cannot insert/strip an MKI), several key parameters (key
switching by MKI) and any other session parameter (``KDR``, ``UNENCRYPTED_SRTP``,
``UNAUTHENTICATED_SRTP``, ``FEC_ORDER``, ``FEC_KEY``, unknown ones: RFC 4568
§6.3 requires an answerer to reject attributes whose parameters it does not
understand).

Malformed attributes raise :class:`SdesError` (a ``ValueError``).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol

from .sdp import MediaDescription

__all__ = [
    "SdesError",
    "CryptoAttribute",
    "SUPPORTED_SUITES",
    "KEY_SALT_LENGTHS",
    "UNENCRYPTED_SRTCP",
    "make_offer",
    "choose_answer",
    "accept_answer",
    "is_usable",
    "crypto_attributes",
    "to_savp",
    "to_avp",
    "is_savp",
]

#: Suites this implementation can use, in the edge's order of preference.
SUPPORTED_SUITES: tuple[str, ...] = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")
#: Length (bytes) of the inline master key || master salt per known suite.
KEY_SALT_LENGTHS: dict[str, int] = {
    "AES_CM_128_HMAC_SHA1_80": 30,
    "AES_CM_128_HMAC_SHA1_32": 30,
}
#: The session parameter asking for SRTCP without encryption (authentication only).
UNENCRYPTED_SRTCP = "UNENCRYPTED_SRTCP"

_TAG_RE = re.compile(r"[0-9]{1,9}")
_SUITE_RE = re.compile(r"[A-Za-z0-9_]+")
_LIFETIME_RE = re.compile(r"(?:2\^[0-9]{1,2}|[0-9]{1,20})")
_MKI_RE = re.compile(r"([0-9]{1,10}):([0-9]{1,3})")
_B64_RE = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_WSH_RE = re.compile(r"WSH=([0-9]{1,10})")


class SdesError(ValueError):
    """A malformed or unusable ``a=crypto`` attribute (the message says why)."""


class _Rng(Protocol):
    def token_bytes(self, nbytes: int) -> bytes: ...


@dataclass
class CryptoAttribute:
    """One ``a=crypto`` attribute (RFC 4568 §9.1).

    Attributes:
        tag: the tag (int, 1–999999999) that the answer must repeat.
        suite: the crypto-suite name as sent (e.g. ``AES_CM_128_HMAC_SHA1_80``).
        key_salt: the decoded inline key: master key || master salt (bytes; 30
            for the ``AES_CM_128`` suites, any length for unknown suites).
        lifetime: the key lifetime as sent (``"2^31"`` or decimal), or None.
        mki: the MKI as sent (``"<value>:<length>"``), or None.
        session_params: the session parameters in order, as sent.
        extra_key_params: further ``;``-separated key parameters, raw (RFC 4568
            allows several keys, distinguished by MKI).
    """

    tag: int
    suite: str
    key_salt: bytes
    lifetime: str | None = None
    mki: str | None = None
    session_params: list[str] = field(default_factory=list)
    extra_key_params: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, value: str) -> "CryptoAttribute":
        """Parse the text after ``a=crypto:``.

        Raises :class:`SdesError` on a bad tag, a missing suite or key, a key
        method other than ``inline``, bad base64, a key of the wrong length for
        a known suite, or a malformed lifetime or MKI.
        """
        parts = value.split()
        if len(parts) < 3:
            raise SdesError(f"malformed a=crypto:{value!r}: expected <tag> <suite> <key-params>")
        tag_s, suite, key_params, *params = parts
        if not _TAG_RE.fullmatch(tag_s):
            raise SdesError(f"malformed a=crypto:{value!r}: tag {tag_s!r} is not 1-9 digits")
        if not _SUITE_RE.fullmatch(suite):
            raise SdesError(f"malformed a=crypto:{value!r}: bad crypto-suite {suite!r}")
        first, *extra = key_params.split(";")
        method, colon, info = first.partition(":")
        if not colon or method.lower() != "inline":
            raise SdesError(f"malformed a=crypto:{value!r}: key method must be inline:")
        key_b64, *rest = info.split("|")
        key = _decode_key(key_b64, suite, value)
        lifetime = mki = None
        if len(rest) > 2:
            raise SdesError(f"malformed a=crypto:{value!r}: too many '|' fields in the key")
        for item in rest:
            if _MKI_RE.fullmatch(item) and mki is None:
                length = int(_MKI_RE.fullmatch(item).group(2))  # type: ignore[union-attr]
                if not 1 <= length <= 128:
                    raise SdesError(f"malformed a=crypto:{value!r}: MKI length {length} not in 1..128")
                mki = item
            elif _LIFETIME_RE.fullmatch(item) and lifetime is None and mki is None:
                lifetime = item
            else:
                raise SdesError(f"malformed a=crypto:{value!r}: bad lifetime/MKI {item!r}")
        if extra and mki is None:
            raise SdesError(f"malformed a=crypto:{value!r}: several keys without an MKI")
        return cls(int(tag_s), suite, key, lifetime, mki, params, extra)

    def __str__(self) -> str:
        key = "inline:" + base64.b64encode(self.key_salt).decode("ascii")
        if self.lifetime is not None:
            key += "|" + self.lifetime
        if self.mki is not None:
            key += "|" + self.mki
        for extra in self.extra_key_params:
            key += ";" + extra
        return " ".join([str(self.tag), self.suite, key, *self.session_params])

    @property
    def unencrypted_srtcp(self) -> bool:
        """True when the ``UNENCRYPTED_SRTCP`` session parameter is present."""
        return UNENCRYPTED_SRTCP in self.session_params

    @property
    def window_size_hint(self) -> int | None:
        """The ``WSH=<n>`` session parameter (int), or None."""
        for p in self.session_params:
            m = _WSH_RE.fullmatch(p)
            if m:
                return int(m.group(1))
        return None

    def unusable_reason(self, *, allow_unencrypted_srtcp: bool = True) -> str | None:
        """Why this attribute cannot be used for SRTP here, or None if it can."""
        if self.suite not in SUPPORTED_SUITES:
            return f"unsupported crypto-suite {self.suite}"
        if len(self.key_salt) != KEY_SALT_LENGTHS[self.suite]:
            return f"key is {len(self.key_salt)} bytes, {self.suite} needs {KEY_SALT_LENGTHS[self.suite]}"
        if self.mki is not None or self.extra_key_params:
            return "MKI is not supported"
        for p in self.session_params:
            if p == UNENCRYPTED_SRTCP:
                if not allow_unencrypted_srtcp:
                    return "UNENCRYPTED_SRTCP is not supported"
            elif not _WSH_RE.fullmatch(p):
                return f"unsupported session parameter {p}"
        return None

    def check_usable(self, *, allow_unencrypted_srtcp: bool = True) -> None:
        """Raise :class:`SdesError` when :meth:`unusable_reason` gives a reason."""
        reason = self.unusable_reason(allow_unencrypted_srtcp=allow_unencrypted_srtcp)
        if reason is not None:
            raise SdesError(f"a=crypto:{self.tag} {self.suite}: {reason}")


def _decode_key(key_b64: str, suite: str, value: str) -> bytes:
    if not key_b64 or not _B64_RE.fullmatch(key_b64):
        raise SdesError(f"malformed a=crypto:{value!r}: key is not base64")
    want = KEY_SALT_LENGTHS.get(suite)
    text = key_b64
    if want is None:  # unknown suite: be lenient about missing padding
        text += "=" * (-len(text) % 4)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SdesError(f"malformed a=crypto:{value!r}: key is not base64 ({exc})") from None
    if want is not None and len(key) != want:
        raise SdesError(
            f"malformed a=crypto:{value!r}: {suite} key||salt must be {want} bytes, got {len(key)}"
        )
    return key


def is_usable(attr: CryptoAttribute, *, allow_unencrypted_srtcp: bool = True) -> bool:
    """True when ``attr`` can be used (see :meth:`CryptoAttribute.unusable_reason`)."""
    return attr.unusable_reason(allow_unencrypted_srtcp=allow_unencrypted_srtcp) is None


def _fresh_key(suite: str, rng: Any) -> bytes:
    return rng.token_bytes(KEY_SALT_LENGTHS[suite])


def make_offer(
    rng: _Rng | Any = secrets, *, include_unencrypted_srtcp: bool = True
) -> list[CryptoAttribute]:
    """The edge's SDES offer (seed 003 §8), each line with a fresh random key:

    tag 1 ``AES_CM_128_HMAC_SHA1_80``, tag 2 the same with
    ``UNENCRYPTED_SRTCP``, tag 3 ``AES_CM_128_HMAC_SHA1_32``, tag 4 the same
    with ``UNENCRYPTED_SRTCP``.  With ``include_unencrypted_srtcp=False`` only
    the two plain variants are offered (tags 1 and 2).

    Args:
        rng: anything with ``token_bytes(n)`` (default :mod:`secrets`).
    """
    out: list[CryptoAttribute] = []
    for suite in SUPPORTED_SUITES:
        variants: list[list[str]] = [[]]
        if include_unencrypted_srtcp:
            variants.append([UNENCRYPTED_SRTCP])
        for params in variants:
            out.append(CryptoAttribute(len(out) + 1, suite, _fresh_key(suite, rng), session_params=params))
    return out


def choose_answer(
    offered: list[CryptoAttribute],
    rng: _Rng | Any = secrets,
    *,
    allow_unencrypted_srtcp: bool = True,
) -> tuple[CryptoAttribute, CryptoAttribute] | None:
    """Pick the first usable offered attribute, in the offerer's order.

    Returns ``(chosen_offer, our_answer)`` where ``our_answer`` has the same
    tag, suite and session parameters and a fresh random key of ours, or None
    when nothing offered can be used (answer with the stream rejected, or
    488).  Pass ``allow_unencrypted_srtcp=False`` when the SRTP layer cannot
    do authentication-only SRTCP
    (:data:`edgeway.media.srtp.UNENCRYPTED_SRTCP_SUPPORTED`).
    """
    for attr in offered:
        if is_usable(attr, allow_unencrypted_srtcp=allow_unencrypted_srtcp):
            answer = CryptoAttribute(
                attr.tag, attr.suite, _fresh_key(attr.suite, rng),
                session_params=list(attr.session_params),
            )
            return attr, answer
    return None


def accept_answer(
    offered: list[CryptoAttribute], answered: list[CryptoAttribute]
) -> tuple[CryptoAttribute, CryptoAttribute]:
    """Match an SDES answer to our offer.

    Returns ``(our_offered_attr, their_answer_attr)``.  Raises
    :class:`SdesError` unless the answer has exactly one attribute whose tag
    is one we offered, with the same suite and session parameters, and that
    attribute is usable.
    """
    if len(answered) != 1:
        raise SdesError(f"an SDES answer must hold exactly one a=crypto, got {len(answered)}")
    ans = answered[0]
    ours = next((o for o in offered if o.tag == ans.tag), None)
    if ours is None:
        raise SdesError(f"answered a=crypto tag {ans.tag} was not offered")
    if ours.suite != ans.suite:
        raise SdesError(f"answered tag {ans.tag} with {ans.suite}, offered {ours.suite}")
    if ours.unencrypted_srtcp != ans.unencrypted_srtcp:
        raise SdesError(f"answered tag {ans.tag} with different session parameters")
    ans.check_usable()
    return ours, ans


# -- m= line helpers -------------------------------------------------------------------

_TO_SAVP = {"RTP/AVP": "RTP/SAVP", "RTP/AVPF": "RTP/SAVPF"}
_TO_AVP = {v: k for k, v in _TO_SAVP.items()}


def is_savp(media: MediaDescription) -> bool:
    """True when the ``m=`` line's protocol is ``RTP/SAVP`` or ``RTP/SAVPF``."""
    return media.proto in _TO_AVP


def crypto_attributes(media: MediaDescription, *, strict: bool = False) -> list[CryptoAttribute]:
    """The parsed ``a=crypto`` attributes of a media section, in order.

    Malformed ones are skipped (so the others can still be chosen), or raise
    :class:`SdesError` with ``strict=True``.
    """
    out = []
    for value in media.crypto:
        try:
            out.append(CryptoAttribute.parse(value))
        except SdesError:
            if strict:
                raise
    return out


def to_savp(media: MediaDescription, attrs: list[CryptoAttribute]) -> MediaDescription:
    """Make ``media`` an SDES-keyed SRTP stream, in place (and return it).

    ``RTP/AVP`` becomes ``RTP/SAVP`` (``RTP/AVPF`` → ``RTP/SAVPF``; already
    SAVP stays), every existing ``a=crypto`` is replaced by ``attrs``: they go
    where the first old one was, else before the first direction or
    ``a=rtcp`` attribute (the seed's order), else at the end.  Raises
    :class:`SdesError` for another protocol (e.g. ``UDP/TLS/RTP/SAVP``).
    """
    if media.proto in _TO_SAVP:
        media.proto = _TO_SAVP[media.proto]
    elif media.proto not in _TO_AVP:
        raise SdesError(f"cannot use SDES on a {media.proto} stream")
    old = [i for i, (n, _) in enumerate(media.attributes) if n == "crypto"]
    if old:
        pos = old[0]
    else:
        pos = next(
            (i for i, (n, v) in enumerate(media.attributes)
             if n == "rtcp" or (v is None and n in ("sendrecv", "sendonly", "recvonly", "inactive"))),
            len(media.attributes),
        )
    old_set = set(old)
    kept = [a for i, a in enumerate(media.attributes) if i not in old_set]
    pos -= sum(1 for i in old if i < pos)
    new: list[tuple[str, str | None]] = [("crypto", str(a)) for a in attrs]
    media.attributes[:] = kept[:pos] + new + kept[pos:]
    return media


def to_avp(media: MediaDescription) -> MediaDescription:
    """Make ``media`` a plain RTP stream, in place (and return it):
    ``RTP/SAVP`` → ``RTP/AVP`` (``RTP/SAVPF`` → ``RTP/AVPF``) and every
    ``a=crypto`` removed.  Other protocols keep their name; their
    ``a=crypto`` lines are still removed."""
    media.proto = _TO_AVP.get(media.proto, media.proto)
    media.remove_attributes("crypto")
    return media
