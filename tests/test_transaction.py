"""RFC 3261 §17 transaction state machines (sans-IO): time is advanced by hand."""

from __future__ import annotations

import pytest

from conftest import RFC4475
from edgeway.sip.message import Request, Response, make_response, parse_message
from edgeway.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Deliver,
    Send,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    State,
    Terminated,
    TimerConfig,
    Timeout,
    TransactionTable,
    TransportError,
    build_ack,
    client_key,
    client_key_for_request,
    has_rfc3261_branch,
    invite_key_for_cancel,
    server_key,
)

T = TimerConfig()  # T1 0.5, T2 4, T4 5


def req(method: str = "INVITE", *, branch: str | None = "z9hG4bK-abc", to_tag: str | None = None,
        cseq: int = 1, via_host: str = "192.0.2.1:5060", uri: str = "sip:bob@example.com",
        routes: tuple[str, ...] = (), cseq_method: str | None = None, from_tag: str = "ft1") -> Request:
    via = f"SIP/2.0/UDP {via_host}" + (f";branch={branch}" if branch is not None else "")
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    lines = [f"{method} {uri} SIP/2.0", f"Via: {via}", "Max-Forwards: 70"]
    lines += [f"Route: {r}" for r in routes]
    lines += [
        f"From: <sip:alice@example.org>;tag={from_tag}",
        f"To: {to}",
        "Call-ID: call-1@example.org",
        f"CSeq: {cseq} {cseq_method or method}",
        "Content-Length: 0",
    ]
    msg = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def resp(request: Request, status: int, to_tag: str | None = "tt1") -> Response:
    return make_response(request, status, to_tag=to_tag)


def sends(actions) -> list:
    return [a.data for a in actions if isinstance(a, Send)]


def delivered(actions) -> list:
    return [a.msg for a in actions if isinstance(a, Deliver)]


def drive(tx, until: float) -> list[tuple[float, list]]:
    """Fire timers at their exact deadlines until ``until``; returns (time, actions)."""
    out = []
    while (nt := tx.next_timer()) is not None and nt <= until:
        out.append((nt, tx.on_timer(nt)))
    return out


# ---------------------------------------------------------------------------
# timer config


def test_timer_values_table4():
    t = TimerConfig(t1=0.1, t2=1.0, t4=2.0)
    assert t.value("A", False) == 0.1 and t.value("A", True) == 0
    assert t.value("B", False) == t.value("B", True) == pytest.approx(6.4)
    assert t.value("D", False) == 32.0 and t.value("D", True) == 0
    assert t.value("F", True) == t.value("H", False) == pytest.approx(6.4)
    assert t.value("I", False) == 2.0 and t.value("I", True) == 0
    assert t.value("J", False) == pytest.approx(6.4) and t.value("J", True) == 0
    assert t.value("K", False) == 2.0 and t.value("K", True) == 0
    assert t.value("L", True) == t.value("M", False) == pytest.approx(6.4)


@pytest.mark.parametrize("kw", [{"t1": 0}, {"t1": 1, "t2": 0.5}, {"t4": -1}])
def test_timer_config_validation(kw):
    with pytest.raises(ValueError):
        TimerConfig(**kw)


# ---------------------------------------------------------------------------
# client INVITE


def test_client_invite_timer_a_doubles_and_b_times_out():
    inv = req()
    tx = ClientInviteTransaction(inv, False, T, 0.0)
    assert tx.state == "Calling"
    assert sends(tx.start(0.0)) == [inv]
    assert tx.next_timer() == 0.5
    fired = drive(tx, 100.0)
    times = [t for t, acts in fired if sends(acts)]
    # A: 0.5, then +1, +2, +4, +8, +16 -> retransmissions before B at 32 s
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    intervals = [b - a for a, b in zip([0.0] + times, times)]
    assert intervals == [0.5, 1, 2, 4, 8, 16]
    last_t, last = fired[-1]
    assert last_t == 32.0 == 64 * T.t1
    assert any(isinstance(a, Timeout) for a in last) and last[-1] == Terminated()
    assert tx.state == State.TERMINATED and tx.next_timer() is None


def test_client_invite_configurable_t1():
    tx = ClientInviteTransaction(req(), False, TimerConfig(t1=0.01, t2=0.04), 100.0)
    tx.start(100.0)
    fired = drive(tx, 200.0)
    assert fired[-1][0] == pytest.approx(100.64)
    assert isinstance(fired[-1][1][0], Timeout)


def test_client_invite_reliable_no_retransmit():
    tx = ClientInviteTransaction(req(), True, T, 0.0)
    tx.start(0.0)
    assert tx.armed_timers() == {"B": 32.0}
    fired = drive(tx, 40.0)
    assert len(fired) == 1 and fired[0][1] == [Timeout(), Terminated()]


def test_action_message_alias():
    inv = req()
    assert Send(inv).message is inv and Deliver(inv).message is inv


def test_client_invite_provisional_stops_retransmissions():
    inv = req()
    tx = ClientInviteTransaction(inv, False, T, 0.0)
    tx.start(0.0)
    r180 = resp(inv, 180)
    assert tx.on_message(r180, 0.2) == [Deliver(r180)]
    assert tx.state == "Proceeding"
    assert tx.next_timer() is None  # no A, no B in Proceeding
    r183 = resp(inv, 183)
    assert tx.on_message(r183, 1.0) == [Deliver(r183)]


def test_client_invite_2xx_accepted_then_terminated():
    inv = req()
    tx = ClientInviteTransaction(inv, False, T, 0.0)
    tx.start(0.0)
    ok = resp(inv, 200)
    assert tx.on_message(ok, 1.0) == [Deliver(ok)]
    assert tx.state == "Accepted"
    assert tx.ack is None  # the TU ACKs a 2xx
    # RFC 6026: further 2xx (retransmission or another fork) go to the TU
    ok2 = resp(inv, 200, to_tag="other-fork")
    assert tx.on_message(ok2, 2.0) == [Deliver(ok2)]
    assert tx.on_message(resp(inv, 486), 2.5) == []
    assert tx.next_timer() == 1.0 + 64 * T.t1
    assert tx.on_timer(33.0) == [Terminated()]


def test_client_invite_2xx_without_accepted_state():
    inv = req()
    tx = ClientInviteTransaction(inv, False, T, 0.0, accepted_state=False)
    tx.start(0.0)
    ok = resp(inv, 200)
    assert tx.on_message(ok, 1.0) == [Deliver(ok), Terminated()]
    assert tx.state == "Terminated"


def test_client_invite_non2xx_ack_and_timer_d_udp():
    inv = req(routes=("<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"))
    tx = ClientInviteTransaction(inv, False, T, 0.0)
    tx.start(0.0)
    tx.on_message(resp(inv, 100, to_tag=None), 0.1)
    busy = resp(inv, 486, to_tag="uas-tag")
    actions = tx.on_message(busy, 1.0)
    assert delivered(actions) == [busy]
    [ack] = sends(actions)
    assert tx.state == "Completed" and tx.ack is ack
    # ACK content, RFC 3261 §17.1.1.3
    assert ack.method == "ACK" and ack.uri == inv.uri
    assert ack.call_id == inv.call_id
    assert ack.headers.get("From") == inv.headers.get("From")
    assert ack.headers.get("To") == busy.headers.get("To") and ack.to_tag == "uas-tag"
    assert ack.cseq == (1, "ACK")
    assert ack.headers.get_all("Via") == [inv.headers.get("Via")]
    assert ack.headers.get_all("Route") == inv.headers.get_all("Route")
    assert ack.body == b""
    assert parse_message(ack.to_bytes()) == ack
    # retransmitted final: ACK again, not delivered
    assert tx.on_message(busy, 2.0) == [Send(ack)]
    assert tx.next_timer() == 1.0 + 32.0
    assert tx.on_timer(32.9) == []
    assert tx.on_timer(33.0) == [Terminated()]


def test_client_invite_non2xx_reliable_terminates_at_once():
    inv = req()
    tx = ClientInviteTransaction(inv, True, T, 0.0)
    tx.start(0.0)
    busy = resp(inv, 603)
    actions = tx.on_message(busy, 1.0)
    assert actions[0] == Deliver(busy)
    assert isinstance(actions[1], Send) and actions[1].data.method == "ACK"
    assert actions[2] == Terminated()
    assert tx.state == "Terminated"


def test_client_invite_final_from_calling_cancels_timers():
    inv = req()
    tx = ClientInviteTransaction(inv, False, T, 0.0)
    tx.start(0.0)
    tx.on_message(resp(inv, 404), 0.3)
    assert set(tx.armed_timers()) == {"D"}


def test_client_invite_transport_error():
    tx = ClientInviteTransaction(req(), False, T, 0.0)
    tx.start(0.0)
    assert tx.on_transport_error(0.1) == [TransportError(), Terminated()]
    assert tx.on_transport_error(0.2) == []
    assert tx.next_timer() is None


def test_client_misuse():
    inv = req()
    tx = ClientInviteTransaction(inv, False, T, 0.0)
    tx.start(0.0)
    with pytest.raises(RuntimeError):
        tx.start(0.0)
    with pytest.raises(TypeError):
        tx.on_message(inv, 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ClientInviteTransaction(req("OPTIONS"), False, T, 0.0)
    with pytest.raises(ValueError):
        ClientNonInviteTransaction(inv, False, T, 0.0)


# ---------------------------------------------------------------------------
# client non-INVITE


def test_client_non_invite_timer_e_capped_at_t2_and_f():
    opt = req("OPTIONS")
    tx = ClientNonInviteTransaction(opt, False, T, 0.0)
    assert tx.state == "Trying"
    assert tx.start(0.0) == [Send(opt)]
    fired = drive(tx, 100.0)
    times = [t for t, acts in fired if sends(acts)]
    intervals = [b - a for a, b in zip([0.0] + times, times)]
    assert intervals[:5] == [0.5, 1, 2, 4, 4]
    assert all(i == 4 for i in intervals[3:])
    assert fired[-1][0] == 32.0
    assert fired[-1][1][0] == Timeout() and fired[-1][1][-1] == Terminated()
    assert times[-1] < 32.0


def test_client_non_invite_proceeding_retransmits_every_t2():
    opt = req("REGISTER")
    tx = ClientNonInviteTransaction(opt, False, T, 0.0)
    tx.start(0.0)
    r100 = resp(opt, 100, to_tag=None)
    assert tx.on_message(r100, 0.2) == [Deliver(r100)]
    assert tx.state == "Proceeding"
    fired = drive(tx, 10.0)
    times = [t for t, acts in fired if sends(acts)]
    # next E (armed in Trying) at 0.5, then every T2 in Proceeding
    assert times == [0.5, 4.5, 8.5]


def test_client_non_invite_final_then_timer_k():
    opt = req("OPTIONS")
    tx = ClientNonInviteTransaction(opt, False, T, 0.0)
    tx.start(0.0)
    ok = resp(opt, 200)
    assert tx.on_message(ok, 0.7) == [Deliver(ok)]
    assert tx.state == "Completed"
    assert tx.armed_timers() == {"K": 0.7 + T.t4}
    assert tx.on_message(ok, 1.0) == []  # absorbed
    assert tx.on_timer(5.7) == [Terminated()]


def test_client_non_invite_reliable():
    opt = req("OPTIONS")
    tx = ClientNonInviteTransaction(opt, True, T, 0.0)
    tx.start(0.0)
    assert set(tx.armed_timers()) == {"F"}
    ok = resp(opt, 404)
    assert tx.on_message(ok, 0.1) == [Deliver(ok), Terminated()]


def test_client_non_invite_reliable_timeout():
    tx = ClientNonInviteTransaction(req("OPTIONS"), True, TimerConfig(t1=0.25, t2=1), 0.0)
    tx.start(0.0)
    assert drive(tx, 100) == [(16.0, [Timeout(), Terminated()])]


# ---------------------------------------------------------------------------
# server INVITE


def test_server_invite_non2xx_udp_g_retransmits_then_ack():
    inv = req()
    tx = ServerInviteTransaction(inv, False, T, 0.0)
    assert tx.state == "Proceeding"
    assert tx.start(0.0) == [Deliver(inv)]
    # no automatic 100 Trying; a retransmission before any provisional is absorbed
    assert tx.on_message(inv, 0.1) == []
    ringing = resp(inv, 180)
    assert tx.send_response(ringing, 0.2) == [Send(ringing)]
    assert tx.on_message(inv, 0.5) == [Send(ringing)]
    busy = resp(inv, 486)
    assert tx.send_response(busy, 1.0) == [Send(busy)]
    assert tx.state == "Completed"
    assert tx.on_message(inv, 1.1) == [Send(busy)]
    fired = drive(tx, 20.0)
    times = [t for t, acts in fired if sends(acts) == [busy]]
    intervals = [b - a for a, b in zip([1.0] + times, times)]
    assert intervals == [0.5, 1, 2, 4, 4, 4]  # 1.5 2.5 4.5 8.5 12.5 16.5 (20.5 > 20)
    ack = build_ack(inv, busy)
    assert tx.on_message(ack, 20.5) == []  # absorbed, not delivered
    assert tx.state == "Confirmed"
    assert tx.armed_timers() == {"I": 20.5 + T.t4}
    assert tx.on_message(ack, 21.0) == []  # further ACKs absorbed
    assert tx.on_message(inv, 21.0) == []
    assert tx.on_timer(25.5) == [Terminated()]


def test_server_invite_timer_h():
    inv = req()
    tx = ServerInviteTransaction(inv, False, T, 0.0)
    tx.start(0.0)
    tx.send_response(resp(inv, 500), 0.0)
    fired = drive(tx, 100.0)
    assert fired[-1][0] == 32.0
    assert fired[-1][1] == [Timeout("H"), Terminated()]
    assert fired[-1][1][0].timer == "H"


def test_server_invite_reliable():
    inv = req()
    tx = ServerInviteTransaction(inv, True, T, 0.0)
    tx.start(0.0)
    busy = resp(inv, 486)
    tx.send_response(busy, 0.0)
    assert tx.armed_timers() == {"H": 32.0}  # no Timer G over TCP
    assert tx.on_message(build_ack(inv, busy), 1.0) == [Terminated()]  # Timer I = 0


def test_server_invite_2xx_accepted():
    inv = req()
    tx = ServerInviteTransaction(inv, False, T, 0.0)
    tx.start(0.0)
    ok = resp(inv, 200)
    assert tx.send_response(ok, 1.0) == [Send(ok)]
    assert tx.state == "Accepted"
    assert tx.on_message(inv, 1.5) == []  # INVITE retransmission absorbed, no 2xx resend
    assert tx.send_response(ok, 2.0) == [Send(ok)]  # TU's 2xx retransmission passes
    assert tx.send_response(resp(inv, 486), 2.0) == []
    ack2xx = req("ACK", to_tag="tt1", cseq_method="ACK")  # same branch (non-conforming UA)
    assert tx.on_message(ack2xx, 2.1) == [Deliver(ack2xx)]
    assert tx.armed_timers() == {"L": 1.0 + 32.0}
    assert tx.on_timer(33.0) == [Terminated()]


def test_server_invite_2xx_without_accepted_state():
    inv = req()
    tx = ServerInviteTransaction(inv, False, T, 0.0, accepted_state=False)
    tx.start(0.0)
    ok = resp(inv, 200)
    assert tx.send_response(ok, 1.0) == [Send(ok), Terminated()]


def test_server_misuse():
    inv = req()
    tx = ServerInviteTransaction(inv, False, T, 0.0)
    tx.start(0.0)
    with pytest.raises(RuntimeError):
        tx.start(0.0)
    with pytest.raises(TypeError):
        tx.send_response(inv, 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ServerInviteTransaction(req("BYE"), False, T, 0.0)
    with pytest.raises(ValueError):
        ServerNonInviteTransaction(req("ACK"), False, T, 0.0)
    assert tx.on_transport_error(1.0) == [TransportError(), Terminated()]


# ---------------------------------------------------------------------------
# server non-INVITE


def test_server_non_invite_paths_udp():
    bye = req("BYE", to_tag="tt1")
    tx = ServerNonInviteTransaction(bye, False, T, 0.0)
    assert tx.state == "Trying"
    assert tx.start(0.0) == [Deliver(bye)]
    assert tx.on_message(bye, 0.1) == []  # absorbed in Trying
    r100 = resp(bye, 100, to_tag=None)
    assert tx.send_response(r100, 0.2) == [Send(r100)]
    assert tx.state == "Proceeding"
    assert tx.on_message(bye, 0.3) == [Send(r100)]
    ok = resp(bye, 200)
    assert tx.send_response(ok, 0.4) == [Send(ok)]
    assert tx.state == "Completed"
    assert tx.on_message(bye, 0.5) == [Send(ok)]
    assert tx.send_response(resp(bye, 500), 0.6) == []  # discarded in Completed
    assert tx.armed_timers() == {"J": 0.4 + 32.0}
    assert tx.on_timer(32.3) == []
    assert tx.on_timer(32.4) == [Terminated()]


def test_server_non_invite_reliable():
    opt = req("OPTIONS")
    tx = ServerNonInviteTransaction(opt, True, T, 0.0)
    tx.start(0.0)
    ok = resp(opt, 200)
    assert tx.send_response(ok, 0.1) == [Send(ok), Terminated()]


# ---------------------------------------------------------------------------
# keys and matching


def test_has_rfc3261_branch():
    assert has_rfc3261_branch("z9hG4bK776asdhds")
    assert not has_rfc3261_branch("z9hG4bK")
    assert not has_rfc3261_branch("776asdhds")
    assert not has_rfc3261_branch(None)


def test_server_key_rfc3261():
    inv = req(via_host="Host.Example.com:5070")
    assert server_key(inv) == ("z9hG4bK-abc", "host.example.com:5070", "INVITE")
    ack = req("ACK", to_tag="x", via_host="host.example.com:5070")
    assert server_key(ack) == server_key(inv)
    cancel = req("CANCEL", via_host="host.example.com:5070")
    assert server_key(cancel) != server_key(inv)
    assert invite_key_for_cancel(cancel) == server_key(inv)
    # different sent-by: a different transaction even with the same branch
    assert server_key(req(via_host="192.0.2.9")) != server_key(inv)


def test_client_keys():
    inv = req()
    assert client_key_for_request(inv) == ("z9hG4bK-abc", "INVITE")
    assert client_key(resp(inv, 180)) == client_key_for_request(inv)
    cancel = req("CANCEL")
    assert client_key(resp(cancel, 200)) == ("z9hG4bK-abc", "CANCEL")


def test_table_client_matching_invite_and_cancel():
    table = TransactionTable()
    inv, cancel = req(), req("CANCEL")
    tinv = ClientInviteTransaction(inv, False, T, 0.0)
    tcan = ClientNonInviteTransaction(cancel, False, T, 0.0)
    table.add(tinv)
    table.add(tcan)
    assert table.find_client(resp(inv, 487)) is tinv
    assert table.find_client(resp(cancel, 200)) is tcan
    assert table.find_client(resp(req(branch="z9hG4bK-other"), 200)) is None
    with pytest.raises(ValueError):
        table.add(ClientInviteTransaction(inv, False, T, 0.0))


def test_table_server_matching_and_cancel():
    table = TransactionTable()
    inv = req()
    tx = ServerInviteTransaction(inv, False, T, 0.0)
    table.add(tx)
    assert table.find_server(req()) is tx  # retransmission
    cancel = req("CANCEL")
    assert table.find_server(cancel) is None  # CANCEL is its own transaction
    assert table.find_invite_for_cancel(cancel) is tx
    ctx = ServerNonInviteTransaction(cancel, False, T, 0.0)
    table.add(ctx)
    assert table.find_server(req("CANCEL")) is ctx
    busy = resp(inv, 486)
    tx.send_response(busy, 0.0)
    assert table.find_server(build_ack(inv, busy)) is tx
    # an ACK for a 2xx carries a new branch: no transaction, the TU gets it
    assert table.find_server(req("ACK", branch="z9hG4bK-new", to_tag="tt1")) is None
    assert len(table) == 2 and tx in table
    table.remove(tx)
    assert tx not in table and table.find_server(inv) is None
    table.remove(tx)  # no error


def test_rfc4475_badbranch_uses_rfc2543_matching():
    data = (RFC4475 / "3.2-transaction" / "badbranch.dat").read_bytes()
    msg = parse_message(data)
    assert isinstance(msg, Request) and msg.branch == "z9hG4bK"
    key = server_key(msg)
    assert len(key) == 7  # RFC 2543 form
    assert key == (
        "sip:user@example.com", None, "33242", "badbranch.sadonfo23i420jv0as0derf3j3n", 8,
        "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK", "OPTIONS",
    )
    table = TransactionTable()
    tx = ServerNonInviteTransaction(msg, False, T, 0.0)
    table.add(tx)
    assert table.find_server(parse_message(data)) is tx
    other = parse_message(data.replace(b"tag=33242", b"tag=99999"))
    assert table.find_server(other) is None
    other = parse_message(data.replace(b"CSeq: 8", b"CSeq: 9"))
    assert table.find_server(other) is None
    # a real RFC 3261 branch with the same other fields is a different transaction
    other = parse_message(data.replace(b"branch=z9hG4bK", b"branch=z9hG4bKabc"))
    assert table.find_server(other) is None
    ok = resp(msg, 200)
    tx.send_response(ok, 0.1)
    assert tx.on_message(parse_message(data), 0.2) == [Send(ok)]


def test_rfc2543_ack_matching_uses_response_to_tag():
    inv = req(branch=None)
    assert len(server_key(inv)) == 7
    table = TransactionTable()
    tx = ServerInviteTransaction(inv, False, T, 0.0)
    table.add(tx)
    tx.start(0.0)
    busy = resp(inv, 486, to_tag="srv-tag")
    tx.send_response(busy, 0.1)
    assert tx.response_to_tag == "srv-tag"
    ack = build_ack(inv, busy)
    assert ack.to_tag == "srv-tag" and server_key(ack) != server_key(inv)
    assert table.find_server(ack) is tx
    assert tx.on_message(ack, 0.2) == [] and tx.state == "Confirmed"
    wrong = req("ACK", branch=None, to_tag="not-ours", cseq_method="ACK")
    assert table.find_server(wrong) is None
    untagged = req("ACK", branch=None, cseq_method="ACK")
    assert table.find_server(untagged) is None
    # a different From tag never matches
    assert table.find_server(req("ACK", branch=None, to_tag="srv-tag", from_tag="zz")) is None


def test_rfc2543_reinvite_ack_matches_exact_key():
    inv = req(branch=None, to_tag="dlg")
    table = TransactionTable()
    tx = ServerInviteTransaction(inv, False, T, 0.0)
    table.add(tx)
    busy = resp(inv, 491, to_tag="ignored-already-tagged")
    tx.send_response(busy, 0.0)
    assert busy.to_tag == "dlg"
    assert table.find_server(build_ack(inv, busy)) is tx


def test_rfc2543_cancel_matching():
    inv = req(branch=None)
    table = TransactionTable()
    tx = ServerInviteTransaction(inv, False, T, 0.0)
    table.add(tx)
    cancel = req("CANCEL", branch=None)
    assert table.find_server(cancel) is None
    assert table.find_invite_for_cancel(cancel) is tx


def test_rfc4475_inv2543_key():
    msg = parse_message((RFC4475 / "3.4-backcompat" / "inv2543.dat").read_bytes())
    key = server_key(msg)
    assert len(key) == 7 and key[-1] == "INVITE" and key[4] == 56


# ---------------------------------------------------------------------------
# table timer driving


def test_table_due_and_next_deadline():
    table = TransactionTable()
    assert table.next_deadline() is None
    c = ClientNonInviteTransaction(req("OPTIONS", branch="z9hG4bK-1"), False, T, 0.0)
    s = ServerInviteTransaction(req(branch="z9hG4bK-2"), False, T, 0.0)
    table.add(c)
    table.add(s)
    c.start(0.0)
    s.start(0.0)
    s.send_response(resp(s.request, 404), 0.2)
    assert table.next_deadline() == 0.5
    assert table.due(0.4) == []
    out = table.due(0.7)
    assert {id(tx) for tx, _ in out} == {id(c), id(s)}
    assert table.next_deadline() == pytest.approx(1.7)  # fired late at 0.7: E and G re-armed from then
    now = 0.0
    while (d := table.next_deadline()) is not None:
        now = d
        table.due(now)
    assert len(table) == 0  # both timed out (F at 32 s, H at 32.2 s) and were reaped
    assert now == pytest.approx(32.2)


def test_late_timer_call_fires_in_deadline_order():
    tx = ClientInviteTransaction(req(), False, T, 0.0)
    tx.start(0.0)
    actions = tx.on_timer(100.0)  # very late: A fires once, then B
    assert actions[0] == Send(tx.request)
    assert actions[-2:] == [Timeout(), Terminated()]
