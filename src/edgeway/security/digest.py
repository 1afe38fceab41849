"""SIP digest authentication with SHA-256 and MD5 (RFC 8760, RFC 7616 §3.4; RFC 3261 §22).

Used by the traversal client (core) to authenticate to the traversal server (edge)
with a username/password held in the edge's local credential store, by the node's
registrar, and by the user agent's registrations (:mod:`edgeway.ua.register`). Pure functions
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


#: Hash functions by digest algorithm name: SHA-256 (RFC 8760) and MD5 (RFC 3261 §22.4,
#: what most deployed user agents still answer with).
_HASHES = {"SHA-256": hashlib.sha256, "MD5": hashlib.md5}


def _h(text: str, algorithm: str = ALGORITHM) -> str:
    return _HASHES[algorithm](text.encode()).hexdigest()


def challenge(realm: str, nonce: str | None = None, algorithm: str = ALGORITHM) -> str:
    """A ``WWW-Authenticate`` value: ``Digest realm=..., nonce=..., algorithm=SHA-256, qop="auth"``
    (``algorithm`` "SHA-256" or "MD5"; RFC 8760 §2.4: offer SHA-256 first, MD5 after)."""
    nonce = nonce or secrets.token_hex(16)
    return f'Digest realm="{realm}", nonce="{nonce}", algorithm={algorithm}, qop="auth"'


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


def _response(username: str, password: str, realm: str, method: str, uri: str, nonce: str, nc: str, cnonce: str, qop: str,
              algorithm: str = ALGORITHM) -> str:
    ha1 = _h(f"{username}:{realm}:{password}", algorithm)
    ha2 = _h(f"{method}:{uri}", algorithm)
    if not qop:  # RFC 2069 compatibility (RFC 3261 §22.4): no qop, no nc/cnonce
        return _h(f"{ha1}:{nonce}:{ha2}", algorithm)
    return _h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}", algorithm)


def authorization(chal: dict[str, str], username: str, password: str, method: str, uri: str, cnonce: str | None = None,
                  *, nc: int = 1) -> str:
    """The ``Authorization`` (or ``Proxy-Authorization``) value answering a parsed challenge.

    The algorithm is the challenge's (``SHA-256`` or ``MD5``; none named means MD5, RFC 3261
    §22.4 / RFC 7616 §3.3); with ``qop`` offered it answers ``qop=auth`` with nonce count
    ``nc`` (RFC 7616 §3.4: 1 for a fresh nonce, one more per reuse), without it in the
    RFC 2069 form. ``opaque`` is echoed. Raises ValueError for an algorithm it cannot
    compute or a challenge that offers only ``auth-int``."""
    algorithm = (chal.get("algorithm") or "MD5").upper()
    if algorithm not in _HASHES:
        raise ValueError(f"digest algorithm {chal.get('algorithm')!r} is not supported")
    qops = [q.strip().lower() for q in (chal.get("qop") or "").split(",") if q.strip()]
    if qops and "auth" not in qops:
        raise ValueError(f"challenge offers only qop={chal.get('qop')!r}")
    realm, nonce = chal.get("realm", ""), chal.get("nonce", "")
    value = f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
    if qops:
        cnonce = cnonce or secrets.token_hex(8)
        count = f"{nc:08x}"
        resp = _response(username, password, realm, method, uri, nonce, count, cnonce, "auth", algorithm)
        value += f'response="{resp}", algorithm={algorithm}, qop=auth, nc={count}, cnonce="{cnonce}"'
    else:
        resp = _response(username, password, realm, method, uri, nonce, "", "", "", algorithm)
        value += f'response="{resp}", algorithm={algorithm}'
    if "opaque" in chal:
        value += f', opaque="{chal["opaque"]}"'
    return value


def verify(creds: dict[str, str], password: str, method: str, expected_nonce: str, *,
           algorithms: tuple[str, ...] = (ALGORITHM,)) -> bool:
    """Check parsed credentials against ``password`` and the nonce we issued, with one of
    ``algorithms`` ("SHA-256", "MD5"; credentials without ``algorithm`` mean MD5 per
    RFC 3261 §22.4 when MD5 is accepted, else SHA-256)."""
    default = "MD5" if "MD5" in algorithms else ALGORITHM
    algorithm = creds.get("algorithm", default).upper()
    if creds.get("nonce") != expected_nonce or algorithm not in algorithms or algorithm not in _HASHES:
        return False
    want = _response(
        creds.get("username", ""), password, creds.get("realm", ""), method, creds.get("uri", ""),
        expected_nonce, creds.get("nc", ""), creds.get("cnonce", ""), creds.get("qop", "auth" if algorithm == ALGORITHM else ""),
        algorithm,
    )
    return hmac.compare_digest(want, creds.get("response", ""))
