"""SRTP/SRTCP contexts (RFC 3711) keyed by SDES (RFC 4568), over pylibsrtp.

An :class:`SrtpContext` is one direction of one SRTP stream: ``"outbound"``
contexts protect what we send (keyed with *our* ``a=crypto`` key),
``"inbound"`` contexts unprotect what we receive (keyed with the *peer's*).
One context handles both RTP and RTCP of the stream (libsrtp derives separate
session keys for each); it accepts any SSRC (libsrtp ``ssrc_any_inbound`` /
``ssrc_any_outbound`` templates), keeping a rollover counter and replay window
per SSRC.

Two ways to use a context:

* ``protect_rtp``/``unprotect_rtp``/``protect_rtcp``/``unprotect_rtcp``:
  bytes in, bytes out, :class:`SrtpError` on failure (authentication, replay,
  malformed packet).  Protecting on an inbound context (or unprotecting on an
  outbound one) raises ``ValueError``.
* :meth:`SrtpContext.apply_rtp` / :meth:`SrtpContext.apply_rtcp`: the
  direction's operation *in place* on a caller's ``bytearray``, returning the
  new length; this is what the media relay's hot path uses (no copies).  The
  buffer must have :data:`SRTP_MAX_TRAILER` bytes of room after the packet.

Implementation notes (tested at import, see :data:`FAST_PATH` and
:data:`UNENCRYPTED_SRTCP_SUPPORTED`):

* pylibsrtp's public ``Session.protect()`` copies through a fixed 1500-byte
  buffer (a plain RTP packet above 1356 bytes cannot be protected) and
  allocates per call.  When pylibsrtp exposes its cffi binding (``ffi``,
  ``lib``, ``Session._srtp``, as every release since 0.x does) the contexts
  call libsrtp's ``srtp_protect``/``srtp_unprotect`` directly on the caller's
  buffer; otherwise they fall back to the public API (then packets that do not
  fit count as errors).
* pylibsrtp has no flag for ``UNENCRYPTED_SRTCP`` (RFC 4568 §6.3.2:
  authenticated but unencrypted SRTCP).  libsrtp has it: the ``sec_serv``
  field of the RTCP crypto policy.  pylibsrtp's cffi declaration keeps that
  struct opaque, so this module writes the field by offset, only after
  checking that the struct has libsrtp 2's size and that the profile's values
  are where libsrtp 2 puts them; a self-test then checks that SRTCP made this
  way is sent in clear with the E bit unset and interoperates.  If any of this
  fails, :data:`UNENCRYPTED_SRTCP_SUPPORTED` is False, :meth:`from_crypto`
  refuses such attributes, and the caller should pass
  ``allow_unencrypted_srtcp=False`` to :func:`edgeway.sip.sdes.choose_answer`
  and ``include_unencrypted_srtcp=False`` to
  :func:`edgeway.sip.sdes.make_offer`.

Contexts are not thread-safe (use them from the event loop thread).
"""

from __future__ import annotations

from typing import Literal

import pylibsrtp

from ..sip.sdes import KEY_SALT_LENGTHS, CryptoAttribute, SdesError

__all__ = [
    "SrtpContext",
    "SrtpError",
    "FAST_PATH",
    "UNENCRYPTED_SRTCP_SUPPORTED",
    "SRTP_MAX_TRAILER",
    "PROFILES",
]

Direction = Literal["inbound", "outbound"]

#: pylibsrtp profile per SDES crypto-suite.
PROFILES: dict[str, int] = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}

#: Room (bytes) protection may add after a packet: SRTCP index (4) + tag (16) +
#: MKI (128), libsrtp's maximum.
SRTP_MAX_TRAILER = 4 + 16 + 128

# libsrtp error codes (srtp_err_status_t) that have their own counters.
_ERR_AUTH = 7  # srtp_err_status_auth_fail
_ERR_REPLAY = (9, 10)  # replay_fail (bad index), replay_old (index too old)
_ERR_CANT_CHECK = 14  # E bit disagrees with the policy (UNENCRYPTED_SRTCP mismatch)

# libsrtp 2 srtp_crypto_policy_t: cipher_type, cipher_key_len, auth_type,
# auth_key_len, auth_tag_len, sec_serv (six 4-byte ints).
_CRYPTO_POLICY_SIZE = 24
_SEC_SERV_INDEX = 5
_SEC_SERV_AUTH = 2
_SEC_SERV_CONF_AND_AUTH = 3

_ffi = getattr(pylibsrtp, "ffi", None)
_lib = getattr(pylibsrtp, "lib", None)


class SrtpError(Exception):
    """An SRTP operation failed.

    Attributes:
        kind: ``"auth"`` (authentication failed: wrong key, tampered packet,
            or an SRTCP E bit that disagrees with ``UNENCRYPTED_SRTCP``),
            ``"replay"`` (replayed or too old), or ``"error"`` (malformed or
            too long packet, other libsrtp errors).
        code: the libsrtp error code (int), or None.
    """

    def __init__(self, message: str, kind: str = "error", code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code


def _error(code: int, what: str) -> SrtpError:
    errors = pylibsrtp.ERRORS if hasattr(pylibsrtp, "ERRORS") else []
    text = errors[code] if 0 <= code < len(errors) else f"libsrtp error {code}"
    if code == _ERR_AUTH or code == _ERR_CANT_CHECK:
        kind = "auth"
    elif code in _ERR_REPLAY:
        kind = "replay"
    else:
        kind = "error"
    return SrtpError(f"{what}: {text}", kind, code)


def _classify(exc: Exception, what: str) -> SrtpError:
    """Map a pylibsrtp public-API exception to SrtpError."""
    msg = str(exc)
    errors = list(getattr(pylibsrtp, "ERRORS", []))
    if msg in errors:
        return _error(errors.index(msg), what)
    return SrtpError(f"{what}: {msg}", "error")


def _set_rtcp_auth_only(policy: pylibsrtp.Policy) -> bool:
    """Make the policy's SRTCP authentication-only; False if not possible."""
    if _ffi is None:
        return False
    try:
        if _ffi.sizeof("srtp_crypto_policy_t") != _CRYPTO_POLICY_SIZE:
            return False
        raw = policy._policy  # pylibsrtp's srtp_policy_t *
        fields = _ffi.cast("int *", _ffi.addressof(raw, "rtcp"))
        values = [fields[i] for i in range(6)]
        # Expect libsrtp 2's AES-CM-128/HMAC-SHA1 RTCP policy (30-byte key with
        # salt, 20-byte auth key, 80-bit tag) with confidentiality+auth.
        if values[1] != 30 or values[3] != 20 or values[4] != 10:
            return False
        if values[_SEC_SERV_INDEX] != _SEC_SERV_CONF_AND_AUTH:
            return False
        fields[_SEC_SERV_INDEX] = _SEC_SERV_AUTH
        return True
    except Exception:
        return False


class SrtpContext:
    """One direction of an SRTP stream (see the module docstring).

    Create with :meth:`from_crypto` (or :meth:`from_key`).

    Attributes:
        suite: the SDES crypto-suite (str).
        direction: ``"inbound"`` or ``"outbound"``.
        unencrypted_srtcp: True when SRTCP is authenticated but not encrypted.
        tag: the ``a=crypto`` tag the key came from (int), or None.
    """

    __slots__ = (
        "suite",
        "direction",
        "unencrypted_srtcp",
        "tag",
        "_session",
        "_handle",
        "_rtp_fn",
        "_rtcp_fn",
        "_lenp",
        "_last_buf",
        "_last_cbuf",
        "_fast",
    )

    def __init__(
        self,
        suite: str,
        key_salt: bytes,
        direction: Direction,
        *,
        unencrypted_srtcp: bool = False,
        window_size: int | None = None,
        tag: int | None = None,
        _fast: bool | None = None,
    ) -> None:
        if direction not in ("inbound", "outbound"):
            raise ValueError(f"direction must be 'inbound' or 'outbound', not {direction!r}")
        profile = PROFILES.get(suite)
        if profile is None:
            raise SdesError(f"unsupported crypto-suite {suite}")
        if len(key_salt) != KEY_SALT_LENGTHS[suite]:
            raise SdesError(
                f"{suite} key||salt must be {KEY_SALT_LENGTHS[suite]} bytes, got {len(key_salt)}"
            )
        self.suite = suite
        self.direction: Direction = direction
        self.unencrypted_srtcp = unencrypted_srtcp
        self.tag = tag
        ssrc_type = (
            pylibsrtp.Policy.SSRC_ANY_INBOUND if direction == "inbound"
            else pylibsrtp.Policy.SSRC_ANY_OUTBOUND
        )
        policy = pylibsrtp.Policy(key=bytes(key_salt), ssrc_type=ssrc_type, srtp_profile=profile)
        if window_size is not None:
            # libsrtp accepts replay windows of 64..0x7fff packets.
            policy.window_size = max(64, min(int(window_size), 0x7FFF))
        if unencrypted_srtcp and not _set_rtcp_auth_only(policy):
            raise SdesError("UNENCRYPTED_SRTCP is not supported by this pylibsrtp build")
        try:
            self._session = pylibsrtp.Session(policy)
        except pylibsrtp.Error as exc:
            raise SdesError(f"libsrtp refused the key: {exc}") from None
        fast = FAST_PATH if _fast is None else _fast
        self._fast = fast
        self._last_buf: bytearray | None = None
        self._last_cbuf = None
        if fast:
            self._handle = self._session._srtp[0]
            self._lenp = _ffi.new("int *")
            if direction == "inbound":
                self._rtp_fn, self._rtcp_fn = _lib.srtp_unprotect, _lib.srtp_unprotect_rtcp
            else:
                self._rtp_fn, self._rtcp_fn = _lib.srtp_protect, _lib.srtp_protect_rtcp
        else:
            self._handle = self._lenp = None
            s = self._session
            if direction == "inbound":
                self._rtp_fn, self._rtcp_fn = s.unprotect, s.unprotect_rtcp
            else:
                self._rtp_fn, self._rtcp_fn = s.protect, s.protect_rtcp

    @classmethod
    def from_crypto(cls, attr: CryptoAttribute, direction: Direction) -> "SrtpContext":
        """A context for ``direction`` keyed by an SDES attribute.

        ``direction="outbound"`` with *our* attribute (offer or answer),
        ``"inbound"`` with the peer's.  Honours ``UNENCRYPTED_SRTCP`` and, for
        inbound contexts, ``WSH`` (replay window, clamped to 64..32767).
        Raises :class:`~edgeway.sip.sdes.SdesError` for an attribute that
        cannot be used (unknown suite, wrong key length, MKI, unsupported
        session parameter, ``UNENCRYPTED_SRTCP`` when not
        :data:`UNENCRYPTED_SRTCP_SUPPORTED`).
        """
        attr.check_usable(allow_unencrypted_srtcp=UNENCRYPTED_SRTCP_SUPPORTED)
        wsh = attr.window_size_hint if direction == "inbound" else None
        return cls(
            attr.suite, attr.key_salt, direction,
            unencrypted_srtcp=attr.unencrypted_srtcp, window_size=wsh, tag=attr.tag,
        )

    def __repr__(self) -> str:
        extra = " UNENCRYPTED_SRTCP" if self.unencrypted_srtcp else ""
        return f"<SrtpContext {self.direction} {self.suite}{extra} tag={self.tag}>"

    # -- in place (relay hot path) -------------------------------------------------

    def _apply(self, fn, buf: bytearray, n: int, what: str) -> int:
        if n + SRTP_MAX_TRAILER > len(buf):
            raise SrtpError(f"{what}: packet of {n} bytes too long for the buffer", "error")
        if self._fast:
            cbuf = self._last_cbuf
            if buf is not self._last_buf:
                cbuf = self._last_cbuf = _ffi.from_buffer(buf)
                self._last_buf = buf
            lenp = self._lenp
            lenp[0] = n
            rc = fn(self._handle, cbuf, lenp)
            if rc:
                raise _error(rc, what)
            return lenp[0]
        try:
            out = fn(bytes(buf[:n]))
        except (pylibsrtp.Error, ValueError) as exc:
            raise _classify(exc, what) from None
        m = len(out)
        buf[:m] = out
        return m

    def apply_rtp(self, buf: bytearray, n: int) -> int:
        """Protect (outbound) or unprotect (inbound) the RTP packet ``buf[:n]``
        in place; returns the new length.  ``buf`` must be a ``bytearray``
        with at least :data:`SRTP_MAX_TRAILER` bytes after the packet, and
        must not be resized while this context keeps a reference to it.
        Raises :class:`SrtpError`."""
        return self._apply(self._rtp_fn, buf, n, "SRTP")

    def apply_rtcp(self, buf: bytearray, n: int) -> int:
        """:meth:`apply_rtp` for an RTCP packet (SRTCP)."""
        return self._apply(self._rtcp_fn, buf, n, "SRTCP")

    # -- bytes in, bytes out ---------------------------------------------------------

    def _bytes(self, data: bytes, rtcp: bool, want: Direction, what: str) -> bytes:
        if self.direction != want:
            raise ValueError(f"cannot {what} with an {self.direction} context")
        buf = bytearray(len(data) + SRTP_MAX_TRAILER)
        buf[: len(data)] = data
        fn = self._rtcp_fn if rtcp else self._rtp_fn
        n = self._apply(fn, buf, len(data), "SRTCP" if rtcp else "SRTP")
        return bytes(buf[:n])

    def protect_rtp(self, packet: bytes) -> bytes:
        """The SRTP packet for an RTP packet (outbound contexts)."""
        return self._bytes(packet, False, "outbound", "protect")

    def unprotect_rtp(self, packet: bytes) -> bytes:
        """The RTP packet inside an SRTP packet (inbound contexts); raises
        :class:`SrtpError` on authentication or replay failure."""
        return self._bytes(packet, False, "inbound", "unprotect")

    def protect_rtcp(self, packet: bytes) -> bytes:
        """The SRTCP packet for an RTCP packet (outbound contexts)."""
        return self._bytes(packet, True, "outbound", "protect")

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """The RTCP packet inside an SRTCP packet (inbound contexts); raises
        :class:`SrtpError` on authentication or replay failure."""
        return self._bytes(packet, True, "inbound", "unprotect")


# -- import-time self-tests ------------------------------------------------------------

_TEST_KEY = bytes(range(30))
_TEST_RTP = bytes([0x80, 0x00, 0x00, 0x01, 0, 0, 0, 160, 0x12, 0x34, 0x56, 0x78]) + b"\xd5" * 160
# RTCP receiver report, no report blocks, SSRC 0x12345678, followed by an SDES-like payload.
_TEST_RTCP = bytes([0x80, 201, 0x00, 0x01, 0x12, 0x34, 0x56, 0x78]) + b"\x81\xca\x00\x01" + b"abcd"


def _self_test_fast_path() -> bool:
    if _ffi is None or _lib is None:
        return False
    try:
        for suite in PROFILES:
            tx = SrtpContext(suite, _TEST_KEY, "outbound", _fast=True)
            rx = SrtpContext(suite, _TEST_KEY, "inbound", _fast=True)
            ref = SrtpContext(suite, _TEST_KEY, "outbound", _fast=False)
            srtp = tx.protect_rtp(_TEST_RTP)
            if srtp != ref.protect_rtp(_TEST_RTP) or rx.unprotect_rtp(srtp) != _TEST_RTP:
                return False
            if rx.unprotect_rtcp(tx.protect_rtcp(_TEST_RTCP)) != _TEST_RTCP:
                return False
        return True
    except Exception:
        return False


def _self_test_unencrypted_srtcp() -> bool:
    try:
        suite = "AES_CM_128_HMAC_SHA1_80"
        tx = SrtpContext(suite, _TEST_KEY, "outbound", unencrypted_srtcp=True)
        rx = SrtpContext(suite, _TEST_KEY, "inbound", unencrypted_srtcp=True)
        rx_enc = SrtpContext(suite, _TEST_KEY, "inbound")
        out = tx.protect_rtcp(_TEST_RTCP)
        n = len(_TEST_RTCP)
        # In clear, then the SRTCP index with the E bit unset, then the 80-bit tag.
        if out[:n] != _TEST_RTCP or out[n] & 0x80 or len(out) != n + 4 + 10:
            return False
        if rx.unprotect_rtcp(out) != _TEST_RTCP:
            return False
        try:
            rx_enc.unprotect_rtcp(out)
        except SrtpError:
            pass
        else:
            return False
        # SRTP (not SRTCP) is still encrypted.
        return tx.protect_rtp(_TEST_RTP)[12:172] != _TEST_RTP[12:]
    except Exception:
        return False


#: Whether contexts call libsrtp directly on the caller's buffer (see the module docstring).
FAST_PATH: bool = False  # (read by SrtpContext while the self-tests below run)
FAST_PATH = _self_test_fast_path()
#: Whether ``UNENCRYPTED_SRTCP`` can be honoured (see the module docstring).
UNENCRYPTED_SRTCP_SUPPORTED: bool = _self_test_unencrypted_srtcp()
