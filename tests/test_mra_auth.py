"""MRA credentials and access tokens (edgeway.mra.auth), sans-IO (issue 9 item 4)."""

from __future__ import annotations

import base64

from edgeway.mra.auth import TokenStore, basic_user


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_user() -> None:
    assert basic_user(basic("alice", "pw:with:colons")) == "alice"
    assert basic_user("Bearer abc") is None and basic_user("Basic !!!") is None
    assert basic_user("Basic " + base64.b64encode(b"nocolon").decode()) is None


def test_token_lifetime_and_verified_credentials() -> None:
    t = TokenStore(refresh_s=100, cleanup_s=50)
    cred = basic("alice", "pw")
    assert t.verified(cred, 0.0) is None
    tok = t.issue("alice", cred, 0.0)
    assert t.verified(cred, 10.0) == tok and t.resolve(tok, 10.0) == ("alice", cred)
    assert t.resolve("forged", 10.0) is None and t.verified(basic("alice", "other"), 10.0) is None
    assert t.resolve(tok, 100.0) is None and t.verified(cred, 100.0) is None  # expired
    assert t.maybe_purge(100.0) == 1 and len(t) == 0


def test_authorization_rate_control_is_per_user_and_sliding() -> None:
    t = TokenStore(max_authorizations=3, period_s=60)
    assert [t.allow_check("alice", float(i)) for i in range(4)] == [True, True, True, False]
    assert t.allow_check("bob", 3.0)  # another user
    assert not t.allow_check("alice", 59.0)
    assert t.allow_check("alice", 60.5)  # the first check left the window
    assert t.stats["rate_limited"] == 2
