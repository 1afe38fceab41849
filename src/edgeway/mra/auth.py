"""Credentials and access tokens of MRA clients (seed 002 §10; issue 9 item 4), sans-IO.

A proxied request carries HTTP Basic credentials (RFC 7617) or a bearer token (RFC 6750)
that Edgeway issued. The core checks Basic credentials once against the internal
call-control service (the caller does the check; :class:`TokenStore` remembers the
outcome): on success it issues an access token valid for the credentials refresh
interval (default 480 min) and the client may present ``Authorization: Bearer <token>``
afterwards; expired tokens are purged every cleanup interval (default 720 min). Checks
per user are rate-controlled (at most ``max_authorizations`` per sliding
``period_s``; over it: 429). Tokens are random (``secrets``), compared through a keyed
hash (no timing leak from dict lookups of the raw value) and never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections import deque
from dataclasses import dataclass

__all__ = ["TokenStore", "basic_user"]


def basic_user(authorization: str) -> str | None:
    """The user name of an ``Authorization: Basic …`` value, or None (not Basic, or
    undecodable)."""
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(rest.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, _ = decoded.partition(":")
    return user if sep and user else None


@dataclass
class _Grant:
    user: str
    basic: str
    expires_at: float


class TokenStore:
    """Verified credentials and the tokens issued for them.

    ``refresh_s`` token (and verified-credentials) lifetime in seconds; ``cleanup_s`` how
    often :meth:`maybe_purge` drops expired entries; ``max_authorizations`` credential
    checks per user within ``period_s`` seconds."""

    def __init__(self, refresh_s: float = 480 * 60, cleanup_s: float = 720 * 60, max_authorizations: int = 5,
                 period_s: float = 60.0):
        self.refresh_s = refresh_s
        self.cleanup_s = cleanup_s
        self.max_authorizations = max_authorizations
        self.period_s = period_s
        self._key = secrets.token_bytes(32)
        self._tokens: dict[str, _Grant] = {}  # keyed hash of the token → grant
        self._verified: dict[str, tuple[str, float]] = {}  # keyed hash of the Basic value → (token, expiry)
        self._checks: dict[str, deque[float]] = {}
        self._next_purge = 0.0
        self.stats = {"issued": 0, "rate_limited": 0, "purged": 0}

    def _h(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def verified(self, basic: str, now: float) -> str | None:
        """The live token of already-verified Basic credentials ``basic``, or None."""
        hit = self._verified.get(self._h(basic))
        if hit is None or hit[1] <= now:
            return None
        return hit[0]

    def allow_check(self, user: str, now: float) -> bool:
        """Whether one more credential check for ``user`` is within the rate (it is then
        counted); False: answer 429."""
        q = self._checks.setdefault(user, deque())
        while q and q[0] <= now - self.period_s:
            q.popleft()
        if len(q) >= self.max_authorizations:
            self.stats["rate_limited"] += 1
            return False
        q.append(now)
        return True

    def issue(self, user: str, basic: str, now: float) -> str:
        """Remember ``basic`` as verified for ``user`` and return a new access token."""
        token = secrets.token_urlsafe(32)
        expires = now + self.refresh_s
        self._tokens[self._h(token)] = _Grant(user, basic, expires)
        self._verified[self._h(basic)] = (token, expires)
        self.stats["issued"] += 1
        return token

    def resolve(self, token: str, now: float) -> tuple[str, str] | None:
        """``(user, Basic value)`` of a live token, or None (unknown or expired)."""
        grant = self._tokens.get(self._h(token))
        if grant is None or grant.expires_at <= now:
            return None
        return grant.user, grant.basic

    def maybe_purge(self, now: float) -> int:
        """Every ``cleanup_s``: drop expired tokens, verified credentials and old rate
        counts; how many tokens were dropped."""
        if now < self._next_purge:
            return 0
        self._next_purge = now + self.cleanup_s
        dead = [k for k, g in self._tokens.items() if g.expires_at <= now]
        for k in dead:
            del self._tokens[k]
        for k in [k for k, (_, exp) in self._verified.items() if exp <= now]:
            del self._verified[k]
        for user in [u for u, q in self._checks.items() if not q or q[-1] <= now - self.period_s]:
            del self._checks[user]
        self.stats["purged"] += len(dead)
        return len(dead)

    def __len__(self) -> int:
        return len(self._tokens)
