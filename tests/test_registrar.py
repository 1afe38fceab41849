"""The node's own registrar (edgeway.registrar), sans-IO: RFC 3261 §10.3."""

from __future__ import annotations

import secrets

from edgeway.registrar import Registrar
from edgeway.security import digest
from edgeway.sip.message import Request, Response, parse_message


def register(contacts: list[str], *, user: str = "alice", expires: str | None = None, call_id: str = "reg1@ua",
             cseq: int = 1, auth: str | None = None, extra: list[str] = ()) -> Request:
    lines = ["REGISTER sip:corp.test SIP/2.0", f"Via: SIP/2.0/TLS 192.0.2.9:5061;branch=z9hG4bK{secrets.token_hex(6)}",
             "Max-Forwards: 70", f"From: <sip:{user}@corp.test>;tag=f1", f"To: <sip:{user}@corp.test>",
             f"Call-ID: {call_id}", f"CSeq: {cseq} REGISTER", *[f"Contact: {c}" for c in contacts], *extra]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if auth:
        lines.append(f"Authorization: {auth}")
    return parse_message(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())


def contacts_of(resp: Response) -> list[str]:
    return resp.headers.get_all("Contact")


def test_bind_query_refresh_and_remove() -> None:
    r = Registrar(["corp.test"])
    resp = r.register(register(["<sip:alice@192.0.2.9:5061;transport=tls>"], expires="600"), None, 0.0)
    assert resp.status == 200 and contacts_of(resp) == ["<sip:alice@192.0.2.9:5061;transport=tls>;expires=600;q=1"]
    [b] = r.lookup("sip:alice@corp.test", 10.0)
    assert b.contact == "sip:alice@192.0.2.9:5061;transport=tls"
    assert r.register(register([], cseq=2), None, 100.0).headers.get_all("Contact") == [
        "<sip:alice@192.0.2.9:5061;transport=tls>;expires=500;q=1"]  # a query lists the bindings
    assert r.lookup("sip:alice@corp.test", 599.0) and not r.lookup("sip:alice@corp.test", 601.0)  # expiry
    r.register(register(["<sip:alice@192.0.2.9:5061;transport=tls>"], expires="600", cseq=3), None, 700.0)
    resp = r.register(register(["<sip:alice@192.0.2.9:5061;transport=tls>;expires=0"], cseq=4), None, 710.0)
    assert resp.status == 200 and contacts_of(resp) == [] and len(r) == 0


def test_star_removes_all_and_needs_expires_zero() -> None:
    r = Registrar(["corp.test"])
    r.register(register(["<sip:a@192.0.2.1>", "<sip:a@192.0.2.2>;q=0.5"], expires="600"), None, 0.0)
    assert [b.contact for b in r.lookup("sip:alice@corp.test", 1.0)] == ["sip:a@192.0.2.1", "sip:a@192.0.2.2"]
    assert r.register(register(["*"], expires="60", cseq=2), None, 1.0).status == 400
    assert r.register(register(["*"], expires="0", cseq=3), None, 1.0).status == 200 and len(r) == 0


def test_q_values_order_lookup_and_bad_values_are_400() -> None:
    r = Registrar(["corp.test"])
    r.register(register(["<sip:a@192.0.2.1>;q=0.1", "<sip:a@192.0.2.2>;q=0.9"]), None, 0.0)
    assert [b.q for b in r.lookup("sip:alice@corp.test", 1.0)] == [0.9, 0.1]
    assert r.register(register(["<sip:a@192.0.2.3>;q=2"], cseq=2), None, 1.0).status == 400
    assert r.register(register(["<sip:a@192.0.2.3>;expires=²"], cseq=3), None, 1.0).status == 400


def test_interval_too_brief_and_cap() -> None:
    r = Registrar(["corp.test"], min_expires_s=60, max_expires_s=3600)
    resp = r.register(register(["<sip:a@192.0.2.1>"], expires="30"), None, 0.0)
    assert resp.status == 423 and resp.headers.get("Min-Expires") == "60"
    resp = r.register(register(["<sip:a@192.0.2.1>"], expires="99999", cseq=2), None, 0.0)
    assert contacts_of(resp) == ["<sip:a@192.0.2.1>;expires=3600;q=1"]


def test_out_of_order_cseq_is_500_and_foreign_domain_404() -> None:
    r = Registrar(["corp.test"])
    r.register(register(["<sip:a@192.0.2.1>"], cseq=5), None, 0.0)
    assert r.register(register(["<sip:a@192.0.2.1>"], cseq=5), None, 1.0).status == 500
    assert r.register(register(["<sip:a@192.0.2.1>"], cseq=6), None, 1.0).status == 200
    resp = Registrar(["elsewhere.test"]).register(register(["<sip:a@192.0.2.1>"]), None, 0.0)
    assert resp.status == 404


def test_binding_limit_is_503() -> None:
    r = Registrar(["corp.test"], max_bindings=2)
    assert r.register(register(["<sip:a@192.0.2.1>", "<sip:a@192.0.2.2>"]), None, 0.0).status == 200
    resp = r.register(register(["<sip:b@192.0.2.3>"], user="bob", call_id="reg2@ua"), None, 0.0)
    assert resp.status == 503 and resp.headers.get("Retry-After")


def test_path_is_kept_and_echoed_when_supported() -> None:
    r = Registrar(["corp.test"])
    path = "<sip:ewtok@198.51.100.2:7001;transport=tls;lr>"
    resp = r.register(register(["<sip:a@192.0.2.1>"], extra=[f"Path: {path}", "Supported: path"]), None, 0.0)
    assert resp.headers.get_all("Path") == [path]
    assert r.lookup("sip:alice@corp.test", 1.0)[0].path == (path,)
    resp = r.register(register(["<sip:a@192.0.2.1>"], cseq=2, extra=[f"Path: {path}"]), None, 1.0)
    assert resp.headers.get_all("Path") == []


def _answer(resp: Response, req_user: str, password: str, algorithm: str) -> str:
    [chal] = [digest.parse_auth_header(v) for v in resp.headers.get_all("WWW-Authenticate")
              if f"algorithm={algorithm}" in v]
    return digest.authorization(chal, req_user, password, "REGISTER", "sip:corp.test").replace(
        "algorithm=SHA-256", f"algorithm={algorithm}") if algorithm == "SHA-256" else _md5_answer(chal, req_user, password)


def _md5_answer(chal: dict, user: str, password: str) -> str:
    import hashlib

    h = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    ha1, ha2 = h(f"{user}:{chal['realm']}:{password}"), h("REGISTER:sip:corp.test")
    resp = h(f"{ha1}:{chal['nonce']}:00000001:c0ffee:auth:{ha2}")
    return (f'Digest username="{user}", realm="{chal["realm"]}", nonce="{chal["nonce"]}", uri="sip:corp.test", '
            f'response="{resp}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"')


def test_digest_authentication_sha256_and_md5() -> None:
    r = Registrar(["corp.test"], users={"alice": "s3cret", "bob": "hunter2"}, realm="corp.test")
    first = r.register(register(["<sip:a@192.0.2.1>"]), None, 0.0)
    assert first.status == 401 and len(first.headers.get_all("WWW-Authenticate")) == 2
    for n, alg in enumerate(("SHA-256", "MD5"), start=2):
        ok = r.register(register(["<sip:a@192.0.2.1>"], cseq=n, auth=_answer(first, "alice", "s3cret", alg)), None, 0.0)
        assert ok.status == 200, (alg, ok)
    wrong = r.register(register(["<sip:a@192.0.2.1>"], cseq=9, auth=_answer(first, "alice", "guess", "MD5")), None, 0.0)
    assert wrong.status == 401
    other = r.register(register(["<sip:a@192.0.2.1>"], cseq=10, auth=_answer(first, "bob", "hunter2", "SHA-256")), None, 0.0)
    assert other.status == 403
