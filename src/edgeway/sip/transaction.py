"""SIP transaction layer (RFC 3261 §17, with the RFC 6026 "Accepted" state), sans-IO.

Modelled on h11 and aioquic: no sockets, no asyncio and no clock reads. Every
method takes the current time ``now`` (float, seconds, any monotonic origin) and
returns a list of *actions* for the caller to carry out:

* :class:`Send` — hand ``data`` (a :class:`Request` or :class:`Response`) to the
  transport. Client transactions send the request, its retransmissions and the ACK
  for a non-2xx final response; server transactions send responses.
* :class:`Deliver` — pass ``msg`` up to the transaction user (TU). Client
  transactions deliver responses; server transactions deliver the request when
  started (and, in the Accepted state, an ACK matching them).
* :class:`Timeout` — Timer B, F or H fired. For B/F the TU synthesises a 408
  (RFC 3261 §8.1.3.1 / §16.7 step 2); for H the ACK never came.
* :class:`TransportError` — the caller reported a transport failure
  (:meth:`on_transport_error`, RFC 3261 §17.1.4 / §17.2.4).
* :class:`Terminated` — the transaction reached the Terminated state; the caller
  removes it from its :class:`TransactionTable`.

Timers are absolute deadlines: :meth:`next_timer` says when the earliest one is
due, and the caller calls :meth:`on_timer` at or after that time. A timer that is
re-armed when it fires (A, E, G) is re-armed relative to the ``now`` given to
:meth:`on_timer`. Timer values follow RFC 3261 Table 4 (see :class:`TimerConfig`);
over a reliable transport the retransmission timers (A, E, G) are not used and the
wait timers D, I, J and K are zero, so the transition to Terminated happens in the
same call that would have armed them.

A typical driver::

    table = TransactionTable()
    tx = ClientInviteTransaction(invite, reliable=False, timers=TimerConfig(), now=now)
    table.add(tx)
    run(tx.start(now))                      # Send(invite)
    ...
    tx = table.find_client(response)        # on each received response
    run(tx.on_message(response, now))
    ...
    for tx, actions in table.due(now):      # whenever now >= table.next_deadline()
        run(actions)
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Union

from .message import MAGIC_COOKIE, Headers, Request, Response

__all__ = [
    "TimerConfig",
    "State",
    "Send",
    "Deliver",
    "Timeout",
    "TransportError",
    "Terminated",
    "Action",
    "has_rfc3261_branch",
    "server_key",
    "client_key",
    "client_key_for_request",
    "invite_key_for_cancel",
    "build_ack",
    "ClientInviteTransaction",
    "ClientNonInviteTransaction",
    "ServerInviteTransaction",
    "ServerNonInviteTransaction",
    "Transaction",
    "TransactionTable",
]


# ---------------------------------------------------------------------------
# configuration and actions


@dataclass(frozen=True)
class TimerConfig:
    """Base timer values in seconds (RFC 3261 §17.1.1.1 and Table 4).

    ``t1`` — RTT estimate (default 500 ms); ``t2`` — maximum retransmission
    interval for non-INVITE requests and INVITE responses (4 s); ``t4`` — maximum
    time a message stays in the network (5 s); ``d`` — Timer D over UDP (32 s, "at
    least 32 s" in Table 4; not derived from T1). Raises ``ValueError`` when
    ``t1 <= 0``, ``t2 < t1`` or a value is negative.
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    d: float = 32.0

    def __post_init__(self) -> None:
        if self.t1 <= 0:
            raise ValueError("T1 must be positive")
        if self.t2 < self.t1:
            raise ValueError("T2 must be at least T1")
        if self.t4 < 0 or self.d < 0:
            raise ValueError("T4 and Timer D must not be negative")

    def value(self, timer: str, reliable: bool) -> float:
        """Initial value in seconds of timer ``timer`` ("A".."M") per RFC 3261 Table 4
        and RFC 6026 §8.4 (L, M). For A, E and G over a reliable transport the
        timer is not used and 0.0 is returned. Raises ``KeyError`` for other names.
        """
        t1, t4 = self.t1, self.t4
        table = {
            "A": 0.0 if reliable else t1,
            "B": 64 * t1,
            "D": 0.0 if reliable else self.d,
            "E": 0.0 if reliable else t1,
            "F": 64 * t1,
            "G": 0.0 if reliable else t1,
            "H": 64 * t1,
            "I": 0.0 if reliable else t4,
            "J": 0.0 if reliable else 64 * t1,
            "K": 0.0 if reliable else t4,
            "L": 64 * t1,
            "M": 64 * t1,
        }
        return table[timer.upper()]


class State(StrEnum):
    """Transaction states with their RFC 3261 / RFC 6026 names. Members compare
    equal to the plain strings (``tx.state == "Calling"``)."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


@dataclass(frozen=True)
class Send:
    """Give ``data`` to the transport (towards the transaction's peer).
    ``message`` is an alias of ``data``."""

    data: Request | Response

    @property
    def message(self) -> Request | Response:
        return self.data


@dataclass(frozen=True)
class Deliver:
    """Pass ``msg`` up to the transaction user. ``message`` is an alias of ``msg``."""

    msg: Request | Response

    @property
    def message(self) -> Request | Response:
        return self.msg


@dataclass(frozen=True)
class Timeout:
    """A transaction timeout: Timer B or F (client: the TU answers 408 itself) or
    Timer H (server INVITE: the ACK never came). ``timer`` names it ("B", "F", "H");
    it is informative and not part of equality, so ``Timeout() == Timeout("B")``."""

    timer: str = field(default="", compare=False)


@dataclass(frozen=True)
class TransportError:
    """The transport reported a failure (RFC 3261 §17.1.4, §17.2.4); ``reason``
    is informative and not part of equality."""

    reason: str = field(default="", compare=False)


@dataclass(frozen=True)
class Terminated:
    """The transaction is in the Terminated state; drop it from the table."""


Action = Union[Send, Deliver, Timeout, TransportError, Terminated]


# ---------------------------------------------------------------------------
# matching keys


def has_rfc3261_branch(branch: str | None) -> bool:
    """True when ``branch`` starts with the magic cookie ``z9hG4bK`` and has
    something after it (RFC 3261 §8.1.1.7, §17.2.3). A branch equal to the bare
    cookie counts as lacking it: RFC 4475 §3.2.1 (badbranch) says such a message
    is matched with the RFC 2543 rules."""
    return branch is not None and branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE)


def _match_method(method: str) -> str:
    return "INVITE" if method == "ACK" else method


def server_key(req: Request) -> tuple:
    """The key matching ``req`` to a server transaction (RFC 3261 §17.2.3).

    * RFC 3261 branch (see :func:`has_rfc3261_branch`): a 3-tuple
      ``(branch, sent_by, method)`` where ``sent_by`` is ``host[:port]`` of the top
      Via with the host lower-cased and ``method`` is the request method with ACK
      mapped to INVITE (the ACK for a non-2xx final matches the INVITE's
      transaction). CANCEL keeps its own method: it is its own transaction.
    * Otherwise the RFC 2543 rules: a 7-tuple ``(Request-URI, To tag, From tag,
      Call-ID, CSeq number, top Via text, method)``, method again with ACK mapped to
      INVITE. An ACK for a non-2xx final of an initial INVITE carries the To tag of
      the response while the INVITE had none, so this key alone does not find its
      transaction; :meth:`TransactionTable.find_server` handles that case (see
      there).

    Raises :class:`~edgeway.sip.message.ParseError` when the top Via is missing or
    malformed and ``ValueError`` on a malformed CSeq.
    """
    via = req.top_via()
    method = _match_method(req.method)
    if has_rfc3261_branch(via.branch):
        sent_by = via.host.lower() if via.port is None else f"{via.host.lower()}:{via.port}"
        return (via.branch, sent_by, method)
    return _rfc2543_key(req, req.to_tag, method)


def _rfc2543_key(req: Request, to_tag: str | None, method: str) -> tuple:
    return (
        req.uri,
        to_tag,
        req.from_tag,
        req.call_id.strip(),
        req.cseq[0],
        req.headers.get("Via"),
        method,
    )


def invite_key_for_cancel(cancel: Request) -> tuple:
    """The :func:`server_key` of the INVITE server transaction ``cancel`` targets
    (RFC 3261 §9.2): the CANCEL's own key with the method replaced by INVITE.
    Works for both key forms (the CANCEL copies the INVITE's Request-URI, To, From,
    Call-ID, CSeq number and top Via, RFC 3261 §9.1)."""
    key = server_key(cancel)
    return key[:-1] + ("INVITE",)


def client_key(resp: Response) -> tuple:
    """The key matching ``resp`` to a client transaction (RFC 3261 §17.1.3):
    ``(branch of the top Via, CSeq method)``. The CSeq method tells the CANCEL
    transaction apart from the INVITE one sharing its branch. Raises
    :class:`~edgeway.sip.message.ParseError` on a missing or malformed top Via."""
    return (resp.top_via().branch, resp.cseq[1])


def client_key_for_request(req: Request) -> tuple:
    """The :func:`client_key` that responses to ``req`` will have:
    ``(branch of the top Via, method)``."""
    return (req.top_via().branch, req.method)


def build_ack(invite: Request, response: Response) -> Request:
    """The ACK for a non-2xx final ``response`` to ``invite`` (RFC 3261 §17.1.1.3).

    Request-URI, Call-ID and From of the INVITE; CSeq with the INVITE's number and
    method ACK; To from the response (with its tag); a single Via equal to the
    INVITE's top Via; the INVITE's Route headers; Max-Forwards of the INVITE (70
    when it had none); no body (``Content-Length: 0``).
    """
    h = Headers()
    h.add("Via", invite.headers.get("Via") or "")
    for route in invite.headers.get_all("Route"):
        h.add("Route", route)
    h.add("Max-Forwards", invite.headers.get("Max-Forwards") or "70")
    h.add("From", invite.headers.get("From") or "")
    h.add("To", response.headers.get("To") or "")
    h.add("Call-ID", invite.headers.get("Call-ID") or "")
    h.add("CSeq", f"{invite.cseq[0]} ACK")
    h.add("Content-Length", "0")
    return Request("ACK", invite.uri, h, b"", invite.version)


# ---------------------------------------------------------------------------
# state machines


class _Transaction:
    """Shared timer bookkeeping. Subclasses implement ``_fire(name, now)``."""

    is_client: bool = False

    def __init__(self, request: Request, reliable: bool = False, timers: TimerConfig | None = None, now: float = 0.0):
        self.request = request
        #: True over TCP/TLS/WS (no retransmissions, zero wait timers).
        self.reliable = reliable
        self.timers = timers if timers is not None else TimerConfig()
        #: ``now`` at construction, seconds.
        self.created = now
        self.state: State
        self._deadlines: dict[str, float] = {}
        self._intervals: dict[str, float] = {}
        #: The :class:`TransactionTable` this transaction was added to (it is told of
        #: every timer armed, to keep its deadline heap), or None.
        self._table: "TransactionTable | None" = None
        #: Free slot for the transaction user (the proxy's branch or response context).
        self.tu: object = None

    # -- timers ----------------------------------------------------------------
    def next_timer(self) -> float | None:
        """Absolute time (seconds, same origin as ``now``) of the earliest armed
        timer, or None when no timer is armed."""
        return min(self._deadlines.values(), default=None)

    def armed_timers(self) -> dict[str, float]:
        """The armed timers by name ("A".."M") with their absolute deadlines."""
        return dict(self._deadlines)

    def on_timer(self, now: float) -> list[Action]:
        """Fire, in deadline order, every timer due at ``now`` (deadline <= now)."""
        actions: list[Action] = []
        while self.state != State.TERMINATED and self._deadlines:
            name, deadline = min(self._deadlines.items(), key=lambda kv: kv[1])
            if deadline > now:
                break
            del self._deadlines[name]
            actions += self._fire(name, now)
        return actions

    def on_transport_error(self, now: float) -> list[Action]:
        """The transport failed to send for this transaction: inform the TU and
        terminate (RFC 3261 §17.1.4, §17.2.4). No-op once Terminated."""
        if self.state == State.TERMINATED:
            return []
        return [TransportError(), *self._terminate()]

    def _arm(self, name: str, now: float, delay: float) -> None:
        deadline = now + delay
        self._deadlines[name] = deadline
        if self._table is not None:
            self._table._push(deadline, self)

    def _cancel(self, *names: str) -> None:
        for n in names:
            self._deadlines.pop(n, None)
            self._intervals.pop(n, None)

    def _terminate(self) -> list[Action]:
        self.state = State.TERMINATED
        self._deadlines.clear()
        self._intervals.clear()
        return [Terminated()]

    def _wait_then_terminate(self, name: str, now: float) -> list[Action]:
        """Arm wait timer ``name`` (D, I, J, K); a zero value terminates at once."""
        delay = self.timers.value(name, self.reliable)
        if delay <= 0:
            return self._terminate()
        self._arm(name, now, delay)
        return []

    def _fire(self, name: str, now: float) -> list[Action]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.request.method} {self.state} key={self.key!r}>"


class _ClientTransaction(_Transaction):
    is_client = True

    def __init__(self, request: Request, reliable: bool = False, timers: TimerConfig | None = None, now: float = 0.0):
        super().__init__(request, reliable, timers, now)
        #: :func:`client_key_for_request` of the request.
        self.key: tuple = client_key_for_request(request)
        self._started = False
        #: The last response received (None before any).
        self.last_response: Response | None = None

    def _start_client(self, now: float, retransmit: str, timeout: str) -> list[Action]:
        """Send the request, arm the retransmission timer (UDP only, starting at T1)
        and the transaction timeout (64*T1)."""
        self._check_start()
        if not self.reliable:
            self._intervals[retransmit] = self.timers.t1
            self._arm(retransmit, now, self.timers.t1)
        self._arm(timeout, now, self.timers.value(timeout, self.reliable))
        return [Send(self.request)]

    def _check_start(self) -> None:
        if self._started:
            raise RuntimeError("transaction already started")
        self._started = True

    def send_response(self, resp: Response, now: float) -> list[Action]:
        raise TypeError("client transactions do not send responses")

    def _check_response(self, msg: object) -> Response:
        if not isinstance(msg, Response):
            raise TypeError(f"a client transaction takes responses, not {type(msg).__name__}")
        return msg


class ClientInviteTransaction(_ClientTransaction):
    """INVITE client transaction (RFC 3261 §17.1.1, RFC 6026 §7.2).

    States: Calling → Proceeding → Completed → Terminated for non-2xx finals;
    Calling/Proceeding → Accepted → Terminated for 2xx (with ``accepted_state``,
    the default: further 2xx responses, retransmitted or from other forks, are
    delivered to the TU for 64*T1 by Timer M) or straight to Terminated without it.
    Timer A retransmits the request over UDP (T1, doubling, no cap) until a
    response; Timer B (64*T1) times out the Calling state. For a 300–699 final the
    ACK (:func:`build_ack`) is sent, and sent again for each retransmitted final
    during Timer D (32 s UDP, 0 reliable). Raises ``ValueError`` when the request is
    not an INVITE.
    """

    def __init__(self, request: Request, reliable: bool = False, timers: TimerConfig | None = None, now: float = 0.0, *, accepted_state: bool = True):
        if request.method != "INVITE":
            raise ValueError("ClientInviteTransaction needs an INVITE")
        super().__init__(request, reliable, timers, now)
        self.accepted_state = accepted_state
        self.state = State.CALLING
        #: The ACK sent for a non-2xx final (None until then).
        self.ack: Request | None = None

    def start(self, now: float) -> list[Action]:
        """Send the INVITE; arm Timer A (UDP) and Timer B. Raises RuntimeError if
        called twice."""
        return self._start_client(now, "A", "B")

    def on_message(self, msg: Response, now: float) -> list[Action]:
        """Handle a response matched to this transaction."""
        resp = self._check_response(msg)
        code = resp.status
        if self.state in (State.CALLING, State.PROCEEDING):
            self.last_response = resp
            if code < 200:
                self.state = State.PROCEEDING
                self._cancel("A", "B")
                return [Deliver(resp)]
            self._cancel("A", "B")
            if code < 300:
                if self.accepted_state:
                    self.state = State.ACCEPTED
                    self._arm("M", now, self.timers.value("M", self.reliable))
                    return [Deliver(resp)]
                return [Deliver(resp), *self._terminate()]
            self.ack = build_ack(self.request, resp)
            self.state = State.COMPLETED
            return [Deliver(resp), Send(self.ack), *self._wait_then_terminate("D", now)]
        if self.state == State.COMPLETED and code >= 300 and self.ack is not None:
            return [Send(self.ack)]  # retransmitted final: ACK again, don't deliver
        if self.state == State.ACCEPTED and 200 <= code < 300:
            self.last_response = resp
            return [Deliver(resp)]
        return []

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "A" and self.state == State.CALLING:
            interval = self._intervals["A"] * 2
            self._intervals["A"] = interval
            self._arm("A", now, interval)
            return [Send(self.request)]
        if name == "B" and self.state == State.CALLING:
            return [Timeout("B"), *self._terminate()]
        if name in ("D", "M"):
            return self._terminate()
        return []


class ClientNonInviteTransaction(_ClientTransaction):
    """Non-INVITE client transaction (RFC 3261 §17.1.2), used for CANCEL too.

    States: Trying → Proceeding → Completed → Terminated. Timer E retransmits over
    UDP: in Trying at T1 doubling up to T2, in Proceeding every T2. Timer F (64*T1)
    times out Trying and Proceeding. After a final response Timer K (T4 UDP, 0
    reliable) absorbs response retransmissions. Raises ``ValueError`` for an INVITE
    or ACK request.
    """

    def __init__(self, request: Request, reliable: bool = False, timers: TimerConfig | None = None, now: float = 0.0):
        if request.method in ("INVITE", "ACK"):
            raise ValueError(f"ClientNonInviteTransaction cannot carry {request.method}")
        super().__init__(request, reliable, timers, now)
        self.state = State.TRYING

    def start(self, now: float) -> list[Action]:
        """Send the request; arm Timer E (UDP) and Timer F. Raises RuntimeError if
        called twice."""
        return self._start_client(now, "E", "F")

    def on_message(self, msg: Response, now: float) -> list[Action]:
        """Handle a response matched to this transaction."""
        resp = self._check_response(msg)
        if self.state not in (State.TRYING, State.PROCEEDING):
            return []  # Completed: retransmissions absorbed
        self.last_response = resp
        if resp.status < 200:
            self.state = State.PROCEEDING
            return [Deliver(resp)]
        self._cancel("E", "F")
        self.state = State.COMPLETED
        return [Deliver(resp), *self._wait_then_terminate("K", now)]

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "E" and self.state in (State.TRYING, State.PROCEEDING):
            if self.state == State.TRYING:
                interval = min(self._intervals["E"] * 2, self.timers.t2)
            else:
                interval = self.timers.t2
            self._intervals["E"] = interval
            self._arm("E", now, interval)
            return [Send(self.request)]
        if name == "F" and self.state in (State.TRYING, State.PROCEEDING):
            return [Timeout("F"), *self._terminate()]
        if name == "K":
            return self._terminate()
        return []


class _ServerTransaction(_Transaction):
    def __init__(self, request: Request, reliable: bool = False, timers: TimerConfig | None = None, now: float = 0.0):
        super().__init__(request, reliable, timers, now)
        #: :func:`server_key` of the request that created the transaction.
        self.key: tuple = server_key(request)
        self._started = False
        #: The last provisional (101–199 or 100) response sent, for retransmission.
        self.last_provisional: Response | None = None
        #: The final response sent (the first one), None before.
        self.final_response: Response | None = None
        #: To tag of the last response sent (None if none or untagged). Used to
        #: match RFC 2543 ACKs (see :meth:`TransactionTable.find_server`).
        self.response_to_tag: str | None = None

    def start(self, now: float) -> list[Action]:
        """Deliver the request that created the transaction to the TU. The
        transaction does not send 100 Trying itself: that decision is the TU's
        (RFC 3261 §17.2.1 lets it skip 100 when it answers within 200 ms).
        Raises RuntimeError if called twice."""
        if self._started:
            raise RuntimeError("transaction already started")
        self._started = True
        return [Deliver(self.request)]

    def _check_request(self, msg: object) -> Request:
        if not isinstance(msg, Request):
            raise TypeError(f"a server transaction takes requests, not {type(msg).__name__}")
        return msg

    def _check_outgoing(self, resp: object) -> Response:
        if not isinstance(resp, Response):
            raise TypeError(f"send_response takes a Response, not {type(resp).__name__}")
        if resp.status >= 101:
            try:
                self.response_to_tag = resp.to_tag
            except ValueError:
                self.response_to_tag = None
        return resp


class ServerInviteTransaction(_ServerTransaction):
    """INVITE server transaction (RFC 3261 §17.2.1, RFC 6026 §7.1).

    Starts in Proceeding. A retransmitted INVITE makes it resend the last
    provisional response (nothing if the TU sent none yet). A 2xx from the TU is
    sent and moves it to Accepted (``accepted_state``, default; Timer L = 64*T1:
    INVITE retransmissions absorbed, further 2xx from the TU sent, a matching ACK
    delivered to the TU) or straight to Terminated. A 300–699 is sent and moves it
    to Completed: Timer G retransmits it over UDP (T1 doubling, capped at T2),
    Timer H (64*T1) gives up with :class:`Timeout`. The ACK moves it to Confirmed
    (the ACK is absorbed, not delivered), and Timer I (T4 UDP, 0 reliable) to
    Terminated. Raises ``ValueError`` when the request is not an INVITE.
    """

    def __init__(self, request: Request, reliable: bool = False, timers: TimerConfig | None = None, now: float = 0.0, *, accepted_state: bool = True):
        if request.method != "INVITE":
            raise ValueError("ServerInviteTransaction needs an INVITE")
        super().__init__(request, reliable, timers, now)
        self.accepted_state = accepted_state
        self.state = State.PROCEEDING

    def on_message(self, msg: Request, now: float) -> list[Action]:
        """Handle a request matched to this transaction: an INVITE
        retransmission or an ACK."""
        req = self._check_request(msg)
        if req.method == "ACK":
            if self.state == State.COMPLETED:
                self._cancel("G", "H")
                self.state = State.CONFIRMED
                return self._wait_then_terminate("I", now)
            if self.state == State.ACCEPTED:
                return [Deliver(req)]  # RFC 6026 §7.1: ACK for 2xx goes to the TU
            return []
        if req.method == "INVITE":
            if self.state == State.PROCEEDING and self.last_provisional is not None:
                return [Send(self.last_provisional)]
            if self.state == State.COMPLETED and self.final_response is not None:
                return [Send(self.final_response)]
        return []

    def send_response(self, resp: Response, now: float) -> list[Action]:
        """Send a response from the TU. In Proceeding: 1xx sent (and remembered),
        2xx sent (→ Accepted or Terminated), 300–699 sent (→ Completed). In
        Accepted only 2xx are sent. Anything else is discarded (returns [])."""
        resp = self._check_outgoing(resp)
        code = resp.status
        if self.state == State.PROCEEDING:
            if code < 200:
                self.last_provisional = resp
                return [Send(resp)]
            self.final_response = resp
            if code < 300:
                if self.accepted_state:
                    self.state = State.ACCEPTED
                    self._arm("L", now, self.timers.value("L", self.reliable))
                    return [Send(resp)]
                return [Send(resp), *self._terminate()]
            self.state = State.COMPLETED
            if not self.reliable:
                self._intervals["G"] = self.timers.t1
                self._arm("G", now, self.timers.t1)
            self._arm("H", now, self.timers.value("H", self.reliable))
            return [Send(resp)]
        if self.state == State.ACCEPTED and 200 <= code < 300:
            return [Send(resp)]
        return []

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "G" and self.state == State.COMPLETED and self.final_response is not None:
            interval = min(self._intervals["G"] * 2, self.timers.t2)
            self._intervals["G"] = interval
            self._arm("G", now, interval)
            return [Send(self.final_response)]
        if name == "H" and self.state == State.COMPLETED:
            return [Timeout("H"), *self._terminate()]
        if name in ("I", "L"):
            return self._terminate()
        return []


class ServerNonInviteTransaction(_ServerTransaction):
    """Non-INVITE server transaction (RFC 3261 §17.2.2), used for CANCEL too.

    Trying → (1xx) Proceeding → (final) Completed → Timer J (64*T1 UDP, 0
    reliable) → Terminated. Request retransmissions are absorbed in Trying and
    answered with the last response sent in Proceeding and Completed. Further
    final responses from the TU in Completed are discarded. Raises ``ValueError``
    for an INVITE or ACK request.
    """

    def __init__(self, request: Request, reliable: bool = False, timers: TimerConfig | None = None, now: float = 0.0):
        if request.method in ("INVITE", "ACK"):
            raise ValueError(f"ServerNonInviteTransaction cannot carry {request.method}")
        super().__init__(request, reliable, timers, now)
        self.state = State.TRYING

    def on_message(self, msg: Request, now: float) -> list[Action]:
        """Handle a retransmission of the request."""
        req = self._check_request(msg)
        if req.method != self.request.method:
            return []
        if self.state == State.PROCEEDING and self.last_provisional is not None:
            return [Send(self.last_provisional)]
        if self.state == State.COMPLETED and self.final_response is not None:
            return [Send(self.final_response)]
        return []

    def send_response(self, resp: Response, now: float) -> list[Action]:
        """Send a response from the TU: 1xx in Trying/Proceeding (→ Proceeding),
        a final in Trying/Proceeding (→ Completed, Timer J). Discarded otherwise."""
        resp = self._check_outgoing(resp)
        if self.state not in (State.TRYING, State.PROCEEDING):
            return []
        if resp.status < 200:
            self.state = State.PROCEEDING
            self.last_provisional = resp
            return [Send(resp)]
        self.final_response = resp
        self.state = State.COMPLETED
        return [Send(resp), *self._wait_then_terminate("J", now)]

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "J":
            return self._terminate()
        return []


Transaction = Union[ClientInviteTransaction, ClientNonInviteTransaction, ServerInviteTransaction, ServerNonInviteTransaction]


# ---------------------------------------------------------------------------
# table


class TransactionTable:
    """Server and client transactions by key, and one place to drive their timers.

    ``add(tx)`` files a transaction under ``tx.key`` (server or client side by its
    type); ``find_server(req)`` / ``find_client(resp)`` match incoming messages;
    ``due(now)`` fires every due timer and drops the transactions that
    terminated; ``next_deadline()`` is when to call ``due`` next. Transactions that
    terminate through :meth:`on_message` and friends are removed by the caller
    (``remove``) when it sees :class:`Terminated`.

    Timers are kept in a heap: every timer a member transaction arms is pushed as it
    is armed, entries of cancelled or fired timers are dropped when they reach the top,
    so ``next_deadline`` and ``due`` cost O(log n) per timer, not a scan of the table.
    """

    def __init__(self) -> None:
        self._server: dict[tuple, _ServerTransaction] = {}
        self._client: dict[tuple, _ClientTransaction] = {}
        self._heap: list[tuple[float, int, _Transaction]] = []
        self._seq = itertools.count()
        self._removed = 0  # transactions removed since the heap was last rebuilt

    def _push(self, deadline: float, tx: "_Transaction") -> None:
        heapq.heappush(self._heap, (deadline, next(self._seq), tx))

    def add(self, tx: Transaction) -> None:
        """Add ``tx``; raises ``ValueError`` when its key is already taken."""
        table = self._client if tx.is_client else self._server
        if tx.key in table:
            raise ValueError(f"a transaction with key {tx.key!r} exists")
        table[tx.key] = tx  # type: ignore[assignment]
        tx._table = self
        nt = tx.next_timer()
        if nt is not None:
            self._push(nt, tx)

    def remove(self, tx: Transaction) -> None:
        """Remove ``tx`` if present (no error otherwise). Its timer entries are dropped
        lazily; once removed transactions hold most of the heap it is rebuilt, so that
        transactions answered and forgotten at once (a flood answered statelessly) do not
        stay alive until their Timer H."""
        table = self._client if tx.is_client else self._server
        if table.get(tx.key) is tx:
            del table[tx.key]
        if tx._table is self and tx._deadlines:
            self._removed += 1
            if self._removed > 1024 and self._removed * 2 > len(self._heap):
                self._heap = [e for e in self._heap if e[2]._table is self]
                heapq.heapify(self._heap)
                self._removed = 0
        tx._table = None

    def find_server(self, req: Request) -> _ServerTransaction | None:
        """The server transaction ``req`` belongs to (RFC 3261 §17.2.3), or None.

        RFC 3261 branches match on (branch, sent-by, method with ACK→INVITE).
        RFC 2543 requests match on the 7-tuple of :func:`server_key`. An RFC 2543
        ACK must in addition carry the To tag of the response the transaction sent
        (``response_to_tag``, §17.2.3): it is looked up with its own To tag (a
        re-INVITE, whose To tag is the dialog's) and, failing that, with no To tag
        (an initial INVITE), and the candidate is accepted only when its
        ``response_to_tag`` equals the ACK's To tag. Raises ParseError on a
        malformed top Via.
        """
        key = server_key(req)
        tx = self._server.get(key)
        if req.method != "ACK" or len(key) != 7:
            return tx
        ack_tag = req.to_tag
        if tx is not None and (tx.response_to_tag is None or tx.response_to_tag == ack_tag):
            return tx  # e.g. a re-INVITE: its To tag is the dialog's, same in the ACK
        if ack_tag is None:
            return None
        tx = self._server.get(_rfc2543_key(req, None, "INVITE"))
        if tx is not None and tx.response_to_tag == ack_tag:
            return tx
        return None

    def find_client(self, resp: Response) -> _ClientTransaction | None:
        """The client transaction ``resp`` belongs to (RFC 3261 §17.1.3), or None."""
        return self._client.get(client_key(resp))

    def find_invite_for_cancel(self, cancel: Request) -> ServerInviteTransaction | None:
        """The INVITE server transaction a CANCEL targets (RFC 3261 §9.2), or None."""
        tx = self._server.get(invite_key_for_cancel(cancel))
        return tx if isinstance(tx, ServerInviteTransaction) else None

    def get_server(self, key: tuple) -> _ServerTransaction | None:
        """The server transaction filed under ``key`` exactly, or None."""
        return self._server.get(key)

    def get_client(self, key: tuple) -> _ClientTransaction | None:
        """The client transaction filed under ``key`` exactly, or None."""
        return self._client.get(key)

    def _member(self, tx: "_Transaction") -> bool:
        table = self._client if tx.is_client else self._server
        return table.get(tx.key) is tx

    def _clean_top(self) -> None:
        """Drop heap entries of removed transactions and of timers no longer armed."""
        heap = self._heap
        while heap:
            deadline, _, tx = heap[0]
            if tx._table is self and deadline in tx._deadlines.values():
                return
            heapq.heappop(heap)

    def due(self, now: float) -> list[tuple[Transaction, list[Action]]]:
        """Fire the timers due at ``now`` on every transaction; returns
        ``(tx, actions)`` for each transaction that produced actions. Terminated
        transactions are removed from the table."""
        out: list[tuple[Transaction, list[Action]]] = []
        heap = self._heap
        while True:
            self._clean_top()
            if not heap or heap[0][0] > now:
                break
            _, _, tx = heapq.heappop(heap)
            actions = tx.on_timer(now)
            if actions:
                out.append((tx, actions))  # type: ignore[arg-type]
            if tx.state == State.TERMINATED:
                self.remove(tx)  # type: ignore[arg-type]
        return out

    def next_deadline(self) -> float | None:
        """The earliest armed timer over all transactions (seconds), or None."""
        self._clean_top()
        return self._heap[0][0] if self._heap else None

    def __iter__(self):
        yield from list(self._server.values())
        yield from list(self._client.values())

    def __len__(self) -> int:
        return len(self._server) + len(self._client)

    def __contains__(self, tx: object) -> bool:
        key = getattr(tx, "key", None)
        table = self._client if getattr(tx, "is_client", False) else self._server
        return key is not None and table.get(key) is tx
