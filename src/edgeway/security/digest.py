"""SIP digest authentication with SHA-256 (RFC 8760, RFC 7616 §3.4; RFC 3261 §22).

Used by the traversal client (core) to authenticate to the traversal server (edge)
with a username/password held in the edge's local credential store. Pure functions
over strings; nonces are made from random bytes passed in by the caller's choice of
``secrets`` (default).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

__all__ = ["challenge", "parse_auth_header", "authorization", "verify"]

ALGORITHM = "SHA-256"
_PARAM_RE = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]+)')


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def challenge(realm: str, nonce: str | None = None) -> str:
    """A ``WWW-Authenticate`` value: ``Digest realm=..., nonce=..., algorithm=SHA-256, qop="auth"``."""
    nonce = nonce or secrets.token_hex(16)
    return f'Digest realm="{realm}", nonce="{nonce}", algorithm={ALGORITHM}, qop="auth"'


def parse_auth_header(value: str) -> dict[str, str]:
    """Parse a Digest challenge or credentials header into a dict (quotes removed).

    Raises ValueError when the scheme is not Digest.
    """
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise ValueError(f"authentication scheme {scheme!r} is not Digest")
    out = {}
    for k, v in _PARAM_RE.findall(rest):
        out[k.lower()] = v[1:-1] if v.startswith('"') else v
    return out


def _response(username: str, password: str, realm: str, method: str, uri: str, nonce: str, nc: str, cnonce: str, qop: str) -> str:
    ha1 = _h(f"{username}:{realm}:{password}")
    ha2 = _h(f"{method}:{uri}")
    return _h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def authorization(chal: dict[str, str], username: str, password: str, method: str, uri: str, cnonce: str | None = None) -> str:
    """The ``Authorization`` value answering a parsed challenge (qop=auth, nc=1)."""
    cnonce = cnonce or secrets.token_hex(8)
    nc = "00000001"
    realm, nonce = chal.get("realm", ""), chal.get("nonce", "")
    resp = _response(username, password, realm, method, uri, nonce, nc, cnonce, "auth")
    return (
        f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{resp}", algorithm={ALGORITHM}, qop=auth, nc={nc}, cnonce="{cnonce}"'
    )


def verify(creds: dict[str, str], password: str, method: str, expected_nonce: str) -> bool:
    """Check parsed credentials against ``password`` and the nonce we issued."""
    if creds.get("nonce") != expected_nonce or creds.get("algorithm", ALGORITHM).upper() != ALGORITHM:
        return False
    want = _response(
        creds.get("username", ""), password, creds.get("realm", ""), method, creds.get("uri", ""),
        expected_nonce, creds.get("nc", ""), creds.get("cnonce", ""), creds.get("qop", "auth"),
    )
    return hmac.compare_digest(want, creds.get("response", ""))
