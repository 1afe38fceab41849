"""RFC 4475 torture messages: each gives the outcome MANIFEST.toml states (one test per message).

``parse``: parses, and serialise → parse gives the same message. ``reject``: the parser
refuses it with a reason (the proxy turns that into a 400 or a drop). ``semantic``: the
proxy-level verdict computed by the sans-IO checks, against the manifest's ``expect``.
"""

from __future__ import annotations

import hashlib
import tomllib

import pytest

from conftest import RFC4475
from edgeway.proxy.checks import check_request, response_next_hop_forbidden
from edgeway.sip import transaction as tx
from edgeway.sip.message import ParseError, Request, Response, Via, parse_message

MANIFEST = tomllib.loads((RFC4475 / "MANIFEST.toml").read_text())["message"]

# name -> the status the proxy must answer itself (None: it forwards the request).
PROXY_VERDICT = {
    "unkscm": 416, "novelsc": 416, "bext01": 420, "zeromf": 483,
    "unksm2": None, "invut": None, "regaut01": None, "sdp01": None, "inv2543": None,
    "badbranch": None, "cparam01": None, "cparam02": None, "regescrt": None,
}


def _load(entry: dict) -> bytes:
    data = (RFC4475 / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"], "fixture changed"
    return data


@pytest.mark.parametrize("entry", MANIFEST, ids=[m["name"] for m in MANIFEST])
def test_torture_message(entry: dict) -> None:
    data = _load(entry)
    outcome = entry["outcome"]
    if outcome == "reject":
        with pytest.raises(ParseError) as info:
            parse_message(data)
        assert info.value.reason
        return
    msg = parse_message(data)
    again = parse_message(msg.to_bytes())
    assert again == msg
    if outcome != "semantic":
        return
    name = entry["name"]
    if isinstance(msg, Response):  # bcast: never answer toward a broadcast sent-by
        assert name == "bcast"
        assert response_next_hop_forbidden(Via.parse(msg.headers.get_all("Via")[1]))
        return
    rej = check_request(msg, answer_options_mf0=False)
    assert (rej.status if rej else None) == PROXY_VERDICT[name], entry["expect"]


def test_bext01_lists_the_unknown_option() -> None:
    entry = next(m for m in MANIFEST if m["name"] == "bext01")
    msg = parse_message(_load(entry))
    rej = check_request(msg)
    assert rej is not None and rej.status == 420
    options = msg.headers.get("Proxy-Require")
    assert dict(rej.headers)["Unsupported"] == options


def test_badbranch_uses_rfc2543_matching() -> None:
    entry = next(m for m in MANIFEST if m["name"] == "badbranch")
    msg = parse_message(_load(entry))
    assert isinstance(msg, Request)
    assert not tx.has_rfc3261_branch(msg.branch)
    key = tx.server_key(msg)
    assert msg.call_id in key  # RFC 2543 key: built from Call-ID, CSeq, tags, Request-URI, Via


def test_contact_parameters_bind_to_the_contact() -> None:
    """cparam01: addr-spec form → the parameter is a Contact parameter;
    cparam02: name-addr form → it is a URI parameter; regescrt: escaped URI header kept."""
    get = lambda n: parse_message(_load(next(m for m in MANIFEST if m["name"] == n)))  # noqa: E731
    from edgeway.sip.uri import parse_name_addr

    c1 = parse_name_addr(get("cparam01").headers.get("Contact"))
    assert "unknownparam" in c1.params and "unknownparam" not in c1.uri.params
    c2 = parse_name_addr(get("cparam02").headers.get("Contact"))
    assert "unknownparam" in c2.uri.params and not c2.params
    c3 = parse_name_addr(get("regescrt").headers.get("Contact"))
    assert c3.uri.headers and "%" in c3.uri.headers
