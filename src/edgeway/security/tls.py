"""TLS contexts, peer identity extraction and operator-readable handshake errors.

Built on the standard library :mod:`ssl` module (OpenSSL).

Identity model (seed 003 §3.1/§3.2): chain trust is checked by OpenSSL against
the configured CA file; the *name* is checked by us, not by OpenSSL hostname
checking, against a per-zone "TLS verify subject name" which may equal the
certificate's CN or any DNS subjectAltName. Candidates are tried CN first, then
SANs in certificate order, and the first match wins. Hence both contexts here
set ``check_hostname = False`` and callers use :func:`peer_identities` plus
:func:`subject_name_matches` after the handshake.
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from pathlib import Path
from typing import Any, Mapping, Union

from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = [
    "CIPHERS",
    "server_context",
    "client_context",
    "peer_identities",
    "subject_name_matches",
    "first_matching_identity",
    "describe_handshake_error",
]

#: OpenSSL cipher string for TLS 1.2 suites (TLS 1.3 suites are all AEAD and
#: are not affected by it): strong suites only; no NULL, anonymous, export,
#: MD5, RC4 or 3DES suites.
CIPHERS = "HIGH:!aNULL:!eNULL:!EXPORT:!MD5:!RC4:!3DES"

PathLike = Union[str, Path]

_VERSIONS = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


def _min_version(value: str | ssl.TLSVersion) -> ssl.TLSVersion:
    if isinstance(value, ssl.TLSVersion):
        if value < ssl.TLSVersion.TLSv1_2:
            raise ValueError(f"min_version {value.name} is below the TLS 1.2 floor")
        return value
    try:
        return _VERSIONS[str(value)]
    except KeyError:
        raise ValueError(
            f"min_version {value!r} is not supported; use one of {sorted(_VERSIONS)}"
        ) from None


def _harden(ctx: ssl.SSLContext, min_version: str | ssl.TLSVersion) -> None:
    ctx.minimum_version = _min_version(min_version)
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION
    if hasattr(ssl, "OP_NO_RENEGOTIATION"):
        ctx.options |= ssl.OP_NO_RENEGOTIATION


def full_chain_pem(cert_file: str | Path, ca_file: str | Path | None) -> bytes:
    """The node's certificate followed by its issuers, as PEM bytes.

    Seed 003 §3.1: the node sends its full chain, built from its trust store. Starting
    from the certificates in ``cert_file`` (a leaf alone, or leaf + chain), the issuer of
    the last one is looked up by subject in ``ca_file`` (the trusted CA store) and
    appended, until a self-signed certificate or no issuer is found."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    chain = x509.load_pem_x509_certificates(Path(cert_file).read_bytes())
    store = x509.load_pem_x509_certificates(Path(ca_file).read_bytes()) if ca_file else []
    by_subject = {c.subject: c for c in store}
    seen = {c.fingerprint(c.signature_hash_algorithm) for c in chain if c.signature_hash_algorithm}
    while chain[-1].issuer != chain[-1].subject:
        issuer = by_subject.get(chain[-1].issuer)
        if issuer is None or issuer.fingerprint(issuer.signature_hash_algorithm) in seen:
            break
        seen.add(issuer.fingerprint(issuer.signature_hash_algorithm))
        chain.append(issuer)
    return b"".join(c.public_bytes(Encoding.PEM) for c in chain)


#: Contexts built with a certificate in this process, for :func:`reload_identity`.
_WITH_IDENTITY: "weakref.WeakSet[ssl.SSLContext]" = weakref.WeakSet()


def reload_identity(cert_file: PathLike, key_file: PathLike | None, ca_file: PathLike | None) -> int:
    """Load a new certificate chain, key and CA bundle into every context of this process
    that was built with a certificate (live reload, issue 11 item 7): handshakes from now
    on present the new certificate and also trust the new CAs; connections already up keep
    what they negotiated. (A CA can be added this way, not removed: OpenSSL contexts only
    grow their trust store.) Returns how many contexts were changed. Raises ``ssl.SSLError``
    / ``OSError`` when the files are unusable — checked on a scratch context first, so a
    bad file changes nothing."""
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(scratch, cert_file, key_file, ca_file, register=False)
    if ca_file is not None:
        scratch.load_verify_locations(cafile=str(ca_file))
    n = 0
    for ctx in list(_WITH_IDENTITY):
        _load_chain(ctx, cert_file, key_file, ca_file, register=False)
        if ca_file is not None:
            ctx.load_verify_locations(cafile=str(ca_file))
        n += 1
    return n


def _load_chain(ctx: ssl.SSLContext, cert_file, key_file, ca_file, *, register: bool = True) -> None:
    """``load_cert_chain`` with the chain completed from the trust store (see
    :func:`full_chain_pem`); ssl only reads chains from files, so a private temporary
    file carries it for the duration of the call."""
    import os
    import tempfile

    pem = full_chain_pem(cert_file, ca_file)
    fd, path = tempfile.mkstemp(prefix="edgeway-chain-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        ctx.load_cert_chain(path, None if key_file is None else str(key_file))
    finally:
        os.unlink(path)
    if register:
        _WITH_IDENTITY.add(ctx)


def server_context(
    cert_file: PathLike,
    key_file: PathLike,
    ca_file: PathLike | None = None,
    *,
    require_client_cert: bool = False,
    min_version: str | ssl.TLSVersion = "1.2",
) -> ssl.SSLContext:
    """Build a TLS server context.

    Args:
        cert_file: PEM with our certificate, optionally followed by the chain
            (seed 003 §3.1: send the full chain, or the peer answers
            ``certificate unknown``).
        key_file: PEM private key for ``cert_file``.
        ca_file: PEM bundle of CAs trusted for *client* certificates.
        require_client_cert: mutual TLS: the handshake fails unless the client
            presents a certificate that chains to ``ca_file``.
        min_version: ``"1.2"`` (default) or ``"1.3"``.

    Returns:
        A context with ``check_hostname=False`` and ``verify_mode``:
        ``CERT_REQUIRED`` if ``require_client_cert``; else ``CERT_OPTIONAL``
        if ``ca_file`` is given (a presented cert must still chain to it);
        else ``CERT_NONE``.

    Raises:
        ValueError: ``require_client_cert`` without ``ca_file``, or a bad
            ``min_version``.
        OSError / ssl.SSLError: unreadable or mismatched cert/key/CA files.
    """
    if require_client_cert and ca_file is None:
        raise ValueError("server_context: require_client_cert=True needs ca_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx, min_version)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(ctx, cert_file, key_file, ca_file)
    ctx.check_hostname = False
    if ca_file is not None:
        ctx.load_verify_locations(cafile=str(ca_file))
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif ca_file is not None:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(
    cert_file: PathLike | None = None,
    key_file: PathLike | None = None,
    ca_file: PathLike | None = None,
    *,
    min_version: str | ssl.TLSVersion = "1.2",
) -> ssl.SSLContext:
    """Build a TLS client context that always verifies the server's chain.

    Args:
        cert_file / key_file: our certificate (chain) and key, presented when
            the server asks (mutual TLS). ``key_file`` may be ``None`` when the
            key is inside ``cert_file``.
        ca_file: PEM bundle of CAs trusted for the *server* certificate. When
            ``None`` the platform's default trust store is used.
        min_version: ``"1.2"`` (default) or ``"1.3"``.

    Returns:
        A context with ``verify_mode=CERT_REQUIRED`` and
        ``check_hostname=False``: the server's name is checked by the caller
        with :func:`peer_identities` / :func:`subject_name_matches`.
        Pass ``server_hostname=`` when connecting anyway, so SNI is sent.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx, min_version)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if ca_file is not None:
        ctx.load_verify_locations(cafile=str(ca_file))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert_file is not None:
        _load_chain(ctx, cert_file, key_file, ca_file)
    return ctx


# --------------------------------------------------------------------------- identities


def _identities_from_dict(d: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    for rdn in d.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.append(value)
    for kind, value in d.get("subjectAltName", ()):
        if kind == "DNS":
            names.append(value)
    return names


def _identities_from_der(der: bytes) -> list[str]:
    return _identities_from_x509(x509.load_der_x509_certificate(der))


def _identities_from_x509(cert: x509.Certificate) -> list[str]:
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return names
    names.extend(san.get_values_for_type(x509.DNSName))
    return names


def peer_identities(peer: Any) -> list[str]:
    """Return the peer certificate's names: CN(s) first, then DNS SANs.

    Order is certificate order, duplicates kept (a CN usually reappears as the
    first SAN), matching how seed 003 §3.2 logs ``Candidates``.

    Args:
        peer: one of
            - an :class:`ssl.SSLObject` / :class:`ssl.SSLSocket` after the
              handshake (e.g. ``writer.get_extra_info("ssl_object")``); if the
              context did not verify the peer (``CERT_NONE``), the DER form is
              parsed instead of the (empty) decoded dict;
            - a ``getpeercert()`` dict;
            - DER ``bytes`` (``getpeercert(binary_form=True)``);
            - a :class:`cryptography.x509.Certificate`.

    Returns:
        A list of names; ``[]`` when there is no peer certificate.
    """
    if peer is None:
        return []
    if isinstance(peer, Mapping):
        return _identities_from_dict(peer)
    if isinstance(peer, (bytes, bytearray, memoryview)):
        return _identities_from_der(bytes(peer)) if peer else []
    getpeercert = getattr(peer, "getpeercert", None)
    if getpeercert is not None:
        d = getpeercert()
        if d:
            return _identities_from_dict(d)
        der = getpeercert(binary_form=True)
        return _identities_from_der(der) if der else []
    if isinstance(peer, x509.Certificate):
        return _identities_from_x509(peer)
    raise TypeError(f"peer_identities: unsupported object {type(peer).__name__}")


def _norm(name: str) -> str:
    return name.strip().rstrip(".").casefold()


def first_matching_identity(names: list[str], expected: str) -> str | None:
    """Return the first of ``names`` equal to ``expected``, or ``None``.

    Comparison is exact apart from ASCII case and one trailing dot (DNS names
    are case-insensitive). No wildcard expansion: the subject name is an exact
    configured identity (seed 003 §3.1).
    """
    want = _norm(expected)
    if not want:
        return None
    for n in names:
        if _norm(n) == want:
            return n
    return None


def subject_name_matches(names: list[str], expected: str) -> bool:
    """True if ``expected`` (a zone's TLS verify subject name) equals the CN or
    a DNS SAN among ``names`` (from :func:`peer_identities`).

    See :func:`first_matching_identity` for the comparison rule.
    """
    return first_matching_identity(names, expected) is not None


# --------------------------------------------------------------------------- errors

#: OpenSSL X509_V_ERR codes meaning "the chain does not lead to a trusted CA".
_UNTRUSTED_CODES = {
    2,  # unable to get issuer certificate
    18,  # self-signed certificate
    19,  # self-signed certificate in certificate chain
    20,  # unable to get local issuer certificate
    21,  # unable to verify the first certificate
    27,  # certificate not trusted
}
#: 9 = certificate is not yet valid, 10 = certificate has expired.
_VALIDITY_CODES = {9, 10}

#: Alert reasons (OpenSSL ``SSL_R_*`` names) by which a peer rejects our cert.
_CERT_REJECT_ALERTS = {
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "TLSV1_ALERT_ACCESS_DENIED",
}
_NO_CLIENT_CERT_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE",  # we are the server
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",  # we are the client, server told us
}
_EOF_REASONS = {"UNEXPECTED_EOF_WHILE_READING", "EOF_OCCURRED_IN_VIOLATION_OF_PROTOCOL"}


def _alert_words(reason: str) -> str:
    """``SSLV3_ALERT_CERTIFICATE_UNKNOWN`` -> ``certificate unknown``."""
    r = reason
    for prefix in ("SSLV3_ALERT_", "TLSV13_ALERT_", "TLSV1_ALERT_"):
        if r.startswith(prefix):
            r = r[len(prefix):]
            break
    return r.replace("_", " ").lower()


def describe_handshake_error(exc: BaseException) -> str:
    """Translate a TLS handshake (or first-read) failure into operator words.

    The wording follows the differential diagnosis of seed 003 §3.3: whose
    side rejected what.

    Returns one of:
        - ``"untrusted CA (certificate verify failed: <openssl text>)"`` — we
          do not trust the peer's chain (e.g. ``unable to get local issuer
          certificate``, ``self-signed certificate in certificate chain``);
        - ``"certificate expired or not yet valid"`` — the peer's cert is
          outside its validity window (or our clock is wrong);
        - ``"peer rejected our certificate (alert received: <alert>)"`` — the
          peer sent unknown_ca / certificate_unknown / bad_certificate /
          certificate_expired / …;
        - ``"no client certificate presented"`` — mutual TLS required and the
          client sent none (seen by the server, or by a TLS 1.3 client via the
          certificate_required alert);
        - ``"peer closed the connection without an alert (middlebox
          suspected)"`` — EOF or reset during the handshake;
        - ``"handshake timed out"``;
        - ``"TLS alert received: <alert>"`` for other alerts;
        - otherwise the OpenSSL reason (or ``str(exc)``).
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", None)
        msg = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        if code in _VALIDITY_CODES:
            return "certificate expired or not yet valid"
        if code in _UNTRUSTED_CODES:
            return f"untrusted CA (certificate verify failed: {msg})"
        return f"certificate verify failed: {msg}"
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return "peer closed the connection without an alert (middlebox suspected)"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in _NO_CLIENT_CERT_REASONS:
            return "no client certificate presented"
        if reason in _CERT_REJECT_ALERTS:
            return f"peer rejected our certificate (alert received: {_alert_words(reason)})"
        if reason in _EOF_REASONS:
            return "peer closed the connection without an alert (middlebox suspected)"
        if "ALERT_" in reason:
            return f"TLS alert received: {_alert_words(reason)}"
        return reason.replace("_", " ").lower() if reason else str(exc)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "handshake timed out"
    if isinstance(
        exc,
        (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, asyncio.IncompleteReadError, EOFError),
    ):
        return "peer closed the connection without an alert (middlebox suspected)"
    if isinstance(exc, ConnectionError) and "lost" in str(exc).lower():
        return "peer closed the connection without an alert (middlebox suspected)"
    return str(exc) or type(exc).__name__
