"""Calls and dialogs a proxy node holds (RFC 3261 §12 as seen from a record-routing
proxy; issue 6 items 3–4).

A :class:`Call` is made for each initial dialog-creating request the node forwards
(INVITE, SUBSCRIBE, REFER). Side *a* is the caller's (upstream) side, side *b* the
callee's. Each 1xx-with-tag or 2xx creates or confirms a :class:`Dialog` (one per callee
tag: forking makes several) with one :class:`DialogSide` per party: the zone it is in,
the **flow** the node reaches it on (the connection its INVITE came in on or went out
on), its remote target (Contact) and, where the node keeps it back from the other party
(topology hiding, B2BUA), the route set toward it.

In-dialog requests are routed by this state, never by an outside party's
Request-URI: :meth:`CallTable.find` matches a request to its dialog by Call-ID and tags
(Call-IDs the node hid toward one side are indexed under both values), and a request
matching no dialog is refused with 481.

Plain data and dictionaries; no I/O and no clock reads (times are passed in).
"""

from __future__ import annotations

from typing import Any

from ..sip.target import Flow

__all__ = ["DialogSide", "Dialog", "Call", "CallTable", "other_side", "DIALOG_METHODS"]

#: Requests that create dialogs and are record-routed (RFC 3261 §16.6 item 4).
DIALOG_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER"})


def other_side(side: str) -> str:
    return "b" if side == "a" else "a"


class DialogSide:
    """One party of a dialog as the node sees it.

    ``zone`` (str) the zone it is in; ``flow`` the flow the node reaches it on (None
    unknown); ``target`` its remote target (Contact URI, str) as it gave it; ``path``
    the route set from this node toward it as the dialog's Record-Route set gave it
    (name-addr str, next hop first; where in-dialog requests toward it go when its flow
    is not a live connection); ``route`` the Route header set requests toward it must
    carry when the node keeps it back from the other party (topology hiding), None when
    in-dialog requests carry their own."""

    __slots__ = ("zone", "flow", "target", "route", "path")

    def __init__(self, zone: str, flow: Flow | None, target: str | None = None, route: list[str] | None = None,
                 path: list[str] | None = None):
        self.zone = zone
        self.flow = flow
        self.target = target
        self.route = route
        self.path = path if path is not None else (route or [])


class Dialog:
    """One dialog of a call: ``b_tag`` the callee's tag, ``sides`` {"a", "b"} →
    :class:`DialogSide`, ``confirmed`` once a 2xx created it (else early)."""

    __slots__ = ("call", "b_tag", "sides", "confirmed")

    def __init__(self, call: "Call", b_tag: str, a: DialogSide, b: DialogSide):
        self.call = call
        self.b_tag = b_tag
        self.sides = {"a": a, "b": b}
        self.confirmed = False


class Call:
    """A call (or subscription) through the node.

    ``key`` (int) names it toward the driver (media); ``method`` the dialog-creating
    method; ``call_ids`` {"a": Call-ID as side a sees it, "b": as side b sees it} (they
    differ only where the node hides an inside Call-ID); ``a_tag`` the caller's From tag;
    ``a_zone``/``b_zone``; ``inside`` the side whose topology the node hides from the
    other (None: nothing hidden); ``masked`` the sides whose Contact the node replaces by
    one of its own when sending toward the other side; ``contact_tokens`` side → token
    of that Contact; ``uri_masks`` side → (original URI, URI shown to the other side) for
    a From/To URI the node hides; ``media`` the media state (or None); ``dialogs``
    b_tag → :class:`Dialog`; ``a_flow``/``a_target``/``a_route``/``a_path`` side a's
    flow, Contact, kept Route set and route set toward it, copied into each dialog; ``expires`` (s) when the call is
    dropped if nothing happens."""

    __slots__ = ("key", "method", "call_ids", "a_tag", "a_zone", "b_zone", "inside", "masked", "contact_tokens",
                 "uri_masks", "media", "dialogs", "a_flow", "a_target", "a_route", "a_path", "expires", "b2bua",
                 "preserve", "ended")

    def __init__(self, key: int, method: str, call_id: str, a_tag: str | None, a_zone: str, a_flow: Flow | None):
        self.key = key
        self.method = method
        self.call_ids = {"a": call_id, "b": call_id}
        self.a_tag = a_tag
        self.a_zone = a_zone
        self.b_zone = ""
        self.inside: str | None = None
        self.masked: set[str] = set()
        self.contact_tokens: dict[str, str] = {}
        self.uri_masks: dict[str, tuple[str, str]] = {}
        self.media: Any = None
        self.dialogs: dict[str, Dialog] = {}
        self.a_flow = a_flow
        self.a_target: str | None = None
        self.a_route: list[str] | None = None
        self.a_path: list[str] = []
        self.expires = 0.0
        self.b2bua = False
        self.preserve = False
        self.ended = False

    @property
    def call_id(self) -> str:
        """The Call-ID as the caller's side sees it (the name events carry)."""
        return self.call_ids["a"]

    def side_of(self, from_tag: str | None, to_tag: str | None) -> tuple[Dialog | None, str | None]:
        """The dialog a request with these tags belongs to and the side it comes from."""
        if from_tag is not None and from_tag == self.a_tag:
            d = self.dialogs.get(to_tag or "")
            return (d, "a") if d is not None else (None, None)
        if to_tag is not None and to_tag == self.a_tag:
            d = self.dialogs.get(from_tag or "")
            return (d, "b") if d is not None else (None, None)
        return None, None


class CallTable:
    """Calls by Call-ID (every value a side sees) and by Contact token."""

    def __init__(self) -> None:
        self.by_call_id: dict[str, Call] = {}
        self.by_token: dict[str, tuple[Call, str]] = {}
        self.by_key: dict[int, Call] = {}

    def __len__(self) -> int:
        return len(self.by_key)

    def add(self, call: Call) -> None:
        self.by_key[call.key] = call
        for cid in set(call.call_ids.values()):
            self.by_call_id[cid] = call

    def index_call_id(self, call: Call, call_id: str) -> None:
        self.by_call_id[call_id] = call

    def add_token(self, call: Call, side: str, token: str) -> None:
        call.contact_tokens[side] = token
        self.by_token[token] = (call, side)

    def remove(self, call: Call) -> None:
        call.ended = True
        self.by_key.pop(call.key, None)
        for cid in set(call.call_ids.values()):
            if self.by_call_id.get(cid) is call:
                del self.by_call_id[cid]
        for tok in call.contact_tokens.values():
            self.by_token.pop(tok, None)

    def find(self, call_id: str, from_tag: str | None, to_tag: str | None) -> tuple[Call | None, Dialog | None, str | None]:
        """``(call, dialog, side the request comes from)`` for an in-dialog request, or
        Nones when no dialog of this node matches."""
        call = self.by_call_id.get(call_id)
        if call is None:
            return None, None, None
        dialog, side = call.side_of(from_tag, to_tag)
        return (call, dialog, side) if dialog is not None else (call, None, None)
