"""The user agent's registration state machine (edgeway.ua.register), sans-IO: against the
node's own registrar (edgeway.registrar, also sans-IO) and against hand-made responses.
No sockets, no event loop; time is passed in."""

from __future__ import annotations

import pytest

from edgeway.registrar import Registrar
from edgeway.security import digest
from edgeway.sip.message import Request, Response, make_response
from edgeway.ua.register import (
    Registered,
    Registration,
    RegistrationFailed,
    SendRegister,
    Unregistered,
    refresh_after,
)

AOR = "sip:carol@remote.test"
CONTACT = "sip:carol@192.0.2.8:5071;transport=tls"
PROXY = "<sip:192.0.2.2:5061;transport=tls;lr>"


def _registrar(algorithms: tuple[str, ...] = ("SHA-256", "MD5")) -> Registrar:
    return Registrar(["remote.test"], users={"carol": "s3cret", "dave": "other"}, realm="remote.test",
                     algorithms=algorithms)


def _sent(action: object) -> Request:
    """The request of a SendRegister, with the Via the agent would add."""
    assert isinstance(action, SendRegister), action
    req = action.request
    req.headers.add("Via", f"SIP/2.0/TLS 192.0.2.8:5071;branch=z9hG4bK{req.cseq[0]:08d}", first=True)
    return req


def _reg(password: str = "s3cret", expires: int = 600) -> Registration:
    return Registration(AOR, CONTACT, password=password, expires=expires, route=[PROXY])


@pytest.mark.parametrize("algorithms,expected", [(("SHA-256", "MD5"), "SHA-256"), (("MD5",), "MD5"),
                                                  (("SHA-256",), "SHA-256")])
def test_challenge_is_answered_once_and_binds(algorithms: tuple[str, ...], expected: str) -> None:
    registrar, reg = _registrar(algorithms), _reg()
    first = _sent(reg.register(0.0))
    assert first.uri == "sip:remote.test" and first.headers.get_all("Route") == [PROXY]
    assert first.headers.get("Authorization") is None and first.headers.get("Expires") == "600"
    assert first.headers.get("Contact") == f"<{CONTACT}>" and "path" in first.headers.get("Supported")
    challenge = registrar.register(first, None, 0.0)
    assert challenge.status == 401
    second = _sent(reg.receive(challenge, 0.1))
    assert (second.call_id, second.cseq) == (first.call_id, (2, "REGISTER"))  # RFC 3261 §10.2.4
    creds = digest.parse_auth_header(second.headers.get("Authorization"))
    assert creds["algorithm"] == expected and creds["username"] == "carol" and creds["uri"] == "sip:remote.test"
    ok = registrar.register(second, None, 0.1)
    assert ok.status == 200
    done = reg.receive(ok, 0.2)
    assert isinstance(done, Registered) and done.expires == 600 and done.algorithm == expected
    assert reg.state == "registered" and reg.challenges == 1
    assert [b.contact for b in registrar.lookup("sip:carol@remote.test", 1.0)] == [CONTACT]
    # A response to an earlier CSeq, or a stray one, changes nothing.
    assert reg.receive(challenge, 0.3) is None and reg.state == "registered"


def test_wrong_password_fails_once_and_does_not_loop() -> None:
    registrar, reg = _registrar(), _reg(password="wrong")
    first = _sent(reg.register(0.0))
    second = _sent(reg.receive(registrar.register(first, None, 0.0), 0.0))
    refused = registrar.register(second, None, 0.0)
    assert refused.status == 401
    out = reg.receive(refused, 0.1)
    assert isinstance(out, RegistrationFailed) and out.status == 401
    assert "refused our credentials" in out.detail and "'carol'" in out.detail
    assert reg.state == "failed" and reg.next_deadline() is None and reg.due(1e9) is None
    assert reg.receive(refused, 0.2) is None  # nothing more is sent
    assert reg.unregister(0.3) is None  # never bound: nothing to remove
    assert registrar.lookup("sip:carol@remote.test", 1.0) == []


def test_another_users_credentials_are_refused_with_403() -> None:
    registrar = _registrar()
    reg = Registration(AOR, CONTACT, password="other", username="dave")
    first = _sent(reg.register(0.0))
    out = reg.receive(registrar.register(_sent(reg.receive(registrar.register(first, None, 0.0), 0.0)), None, 0.0), 0.0)
    assert isinstance(out, RegistrationFailed) and out.status == 403


def test_refresh_before_expiry_reuses_the_nonce_then_unregisters() -> None:
    registrar, reg = _registrar(("MD5",)), _reg(expires=600)
    req = _sent(reg.register(100.0))
    req = _sent(reg.receive(registrar.register(req, None, 100.0), 100.0))
    done = reg.receive(registrar.register(req, None, 100.0), 100.0)
    assert isinstance(done, Registered)
    assert done.refresh_at == reg.next_deadline() == 100.0 + 540.0  # 10 % of 600 s left
    assert reg.due(639.9) is None
    refresh = _sent(reg.due(640.0))
    assert reg.state == "registering" and refresh.cseq[0] == 3
    creds = digest.parse_auth_header(refresh.headers.get("Authorization"))
    assert creds["nc"] == "00000002"  # the cached challenge, nonce count one higher (RFC 7616 §3.4)
    again = reg.receive(registrar.register(refresh, None, 640.0), 640.0)
    assert isinstance(again, Registered) and again.refresh_at == 640.0 + 540.0
    assert registrar.lookup("sip:carol@remote.test", 1200.0)  # still bound past the first interval
    bye = _sent(reg.unregister(700.0))
    assert bye.headers.get("Expires") == "0" and bye.headers.get("Contact") == f"<{CONTACT}>"
    assert isinstance(reg.receive(registrar.register(bye, None, 700.0), 700.0), Unregistered)
    assert reg.state == "unregistered" and reg.next_deadline() is None
    assert registrar.lookup("sip:carol@remote.test", 701.0) == []
    assert reg.unregister(702.0) is None


def test_a_refresh_whose_nonce_expired_is_challenged_again_and_answered() -> None:
    reg = _reg()
    req = _sent(reg.register(0.0))
    nonce_1 = 'Digest realm="r", nonce="n1", algorithm=MD5, qop="auth"'
    req = _sent(reg.receive(_resp(req, 401, ("WWW-Authenticate", nonce_1)), 0.0))
    assert isinstance(reg.receive(_resp(req, 200, ("Contact", f"<{CONTACT}>;expires=60")), 0.0), Registered)
    assert reg.next_deadline() == 54.0  # max(10 %, 5 s) before the end
    refresh = _sent(reg.due(54.0))
    assert 'nonce="n1"' in refresh.headers.get("Authorization")
    # The registrar no longer knows n1: a fresh challenge in this round is answered once.
    again = _sent(reg.receive(_resp(refresh, 401, ("WWW-Authenticate", nonce_1.replace("n1", "n2"))), 54.1))
    assert 'nonce="n2"' in again.headers.get("Authorization") and "nc=00000001" in again.headers.get("Authorization")
    assert isinstance(reg.receive(_resp(again, 200, ("Contact", f"<{CONTACT}>;expires=60")), 54.2), Registered)


def test_stale_nonce_is_answered_once_more_then_refused() -> None:
    reg = _reg()
    req = _sent(reg.register(0.0))
    chal = 'Digest realm="r", nonce="{}", algorithm=SHA-256, qop="auth"{}'
    req = _sent(reg.receive(_resp(req, 401, ("WWW-Authenticate", chal.format("a", ""))), 0.0))
    req = _sent(reg.receive(_resp(req, 401, ("WWW-Authenticate", chal.format("b", ", stale=true"))), 0.0))
    assert 'nonce="b"' in req.headers.get("Authorization")
    out = reg.receive(_resp(req, 401, ("WWW-Authenticate", chal.format("c", ", stale=true"))), 0.0)
    assert isinstance(out, RegistrationFailed) and reg.challenges == 2


def test_proxy_challenge_gets_proxy_authorization_and_the_first_usable_algorithm() -> None:
    reg = _reg()
    req = _sent(reg.register(0.0))
    out = _sent(reg.receive(_resp(req, 407, ("Proxy-Authenticate", 'Digest realm="p", nonce="x", algorithm=SHA-512-256'),
                                  ("Proxy-Authenticate", 'Digest realm="p", nonce="y", algorithm=MD5, qop="auth"'),
                                  ("Proxy-Authenticate", 'Digest realm="p", nonce="z", algorithm=SHA-256')), 0.0))
    assert out.headers.get("Authorization") is None
    creds = digest.parse_auth_header(out.headers.get("Proxy-Authorization"))
    assert (creds["nonce"], creds["algorithm"]) == ("y", "MD5")
    assert digest.verify(creds, "s3cret", "REGISTER", "y", algorithms=("MD5",))


def test_a_challenge_it_cannot_answer_fails() -> None:
    reg = _reg()
    req = _sent(reg.register(0.0))
    out = reg.receive(_resp(req, 401, ("WWW-Authenticate", 'Digest realm="r", nonce="n", algorithm=SHA-512-256')), 0.0)
    assert isinstance(out, RegistrationFailed) and "no WWW-Authenticate digest challenge we can answer" in out.detail


def test_interval_too_brief_is_retried_once_with_min_expires() -> None:
    reg = _reg(expires=30)
    req = _sent(reg.register(0.0))
    req = _sent(reg.receive(_resp(req, 423, ("Min-Expires", "60")), 0.0))
    assert req.headers.get("Expires") == "60"
    out = reg.receive(_resp(req, 423, ("Min-Expires", "120")), 0.0)
    assert isinstance(out, RegistrationFailed) and out.status == 423


def test_a_2xx_without_our_binding_or_with_expires_0_is_a_failure() -> None:
    reg = _reg()
    req = _sent(reg.register(0.0))
    out = reg.receive(_resp(req, 200, ("Contact", "<sip:someone@192.0.2.99>;expires=600")), 0.0)
    assert isinstance(out, RegistrationFailed) and "does not list our Contact" in out.detail
    req = _sent(reg.register(1.0))
    out = reg.receive(_resp(req, 200, ("Contact", f"<{CONTACT.replace('tls', 'TLS')}>;expires=0")), 1.0)
    assert isinstance(out, RegistrationFailed) and "expires=0" in out.detail


def test_other_final_responses_and_transaction_failures_end_the_round() -> None:
    reg = _reg()
    out = reg.receive(_resp(_sent(reg.register(0.0)), 404, None), 0.0)
    assert isinstance(out, RegistrationFailed) and out.status == 404 and reg.state == "failed"
    assert reg.receive(_resp(_sent(reg.register(1.0)), 100, None), 1.0) is None  # provisional: wait on
    out = reg.failed(408, "no response (Timer F)")
    assert (out.status, out.reason) == (408, "Request Timeout")


def test_refresh_after() -> None:
    assert refresh_after(3600) == 3240.0
    assert refresh_after(600) == 540.0
    assert refresh_after(60) == 54.0
    assert refresh_after(20) == 15.0
    assert refresh_after(8) == 4.0  # never before half the interval
    assert all(0 < refresh_after(e) < e for e in range(1, 5000))


def test_digest_authorization_md5_sha256_no_qop_and_opaque() -> None:
    for alg in ("MD5", "SHA-256"):
        chal = digest.parse_auth_header(digest.challenge("r", "n", alg))
        value = digest.authorization(chal, "u", "pw", "REGISTER", "sip:r", nc=3)
        creds = digest.parse_auth_header(value)
        assert creds["algorithm"] == alg and creds["nc"] == "00000003"
        assert digest.verify(creds, "pw", "REGISTER", "n", algorithms=(alg,))
        assert not digest.verify(creds, "wrong", "REGISTER", "n", algorithms=(alg,))
    # RFC 2069 form (no qop offered): no nc/cnonce; no algorithm named means MD5.
    value = digest.authorization({"realm": "r", "nonce": "n", "opaque": "o"}, "u", "pw", "REGISTER", "sip:r")
    creds = digest.parse_auth_header(value)
    assert "qop" not in creds and "nc" not in creds and creds["opaque"] == "o" and creds["algorithm"] == "MD5"
    assert digest.verify({k: v for k, v in creds.items() if k != "algorithm"}, "pw", "REGISTER", "n",
                         algorithms=("MD5",))
    with pytest.raises(ValueError):
        digest.authorization({"nonce": "n", "qop": "auth-int"}, "u", "pw", "REGISTER", "sip:r")


def _resp(req: Request, status: int, *headers: tuple[str, str] | None) -> Response:
    return make_response(req, status, to_tag="t" if status >= 200 else None, extra=[h for h in headers if h])
