"""Registrations the core proxies from a traversal zone to an inside registrar (seed 002
§2.3 "SIP Path header mode", catalogue case 32; RFC 3327; issue 9 item 5). Pure: a
REGISTER or its 2xx in, the same message changed in place; no sockets, no clock.

A remote client REGISTERs over TLS to the edge; the edge adds a Path entry naming the
client's own connection (a flow token) and sends the request over the traversal zone to
the core. The core forwards it to the registrar (call control) in one of two modes:

* **Contact rewriting** (the default, "SIP Path headers" Off): each Contact is replaced by
  an address of the core's own, ``<sip:ewr<key>@core:port;transport=…>`` (the header's
  parameters kept), and the edge's Path is taken off; the core remembers the original
  Contact, the edge's Path (the route back to the client's connection) and the traversal
  zone under ``key``. A request for ``sip:ewr<key>@core`` is sent over the zone with its
  Request-URI restored and the edge's Path as its route set.
* **Path** ("SIP Path headers" On): Contact is kept and the core adds its own Path entry
  on top of the edge's, ``<sip:ewp<mac>@core:port;transport=…;lr>``, whose user part names
  the traversal zone (HMAC, :class:`PathTokens`). A request routed by that entry goes over
  the zone's live connection with the rest of its route set (the edge's entry).

In both modes the 2xx the registrar returns lists every binding of the address-of-record,
inside phones' included; the core keeps only the requesting client's own bindings (their
original Contact restored) so no inside address goes out.

The rewriting key is a hash of the address-of-record and the original Contact URI, not a
secret: it is the same after a core restart, so a client that registers again refreshes
its binding at the registrar instead of adding a second one.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from ..sip.message import Request, Response
from ..sip.uri import NameAddr, Uri, UriError, parse_name_addr

__all__ = ["REWRITE_PREFIX", "PATH_PREFIX", "Mapping", "ContactMap", "PathTokens", "restore_contacts"]

#: User-part prefix of a rewritten Contact.
REWRITE_PREFIX = "ewr"
#: User-part prefix of the core's own Path entry.
PATH_PREFIX = "ewp"
#: Seconds a mapping outlives its binding's expiry (a refresh may arrive a little late).
GRACE_S = 32.0
#: Expiry (s) assumed when neither the Contact nor the request says.
DEFAULT_EXPIRES_S = 3600


@dataclass(slots=True)
class Mapping:
    """One rewritten Contact: ``contact`` the client's original Contact URI (str);
    ``path`` the edge's Path values (name-addr str, top first), the route set back to the
    client's connection; ``zone`` the traversal zone the REGISTER came from; ``aor`` its
    address-of-record; ``expires`` the monotonic time (s) after which it is forgotten."""

    contact: str
    path: tuple[str, ...]
    zone: str
    aor: str
    expires: float


def _expires_of(na: NameAddr, req: Request) -> int:
    text = na.params.get("expires") or req.headers.get("Expires") or str(DEFAULT_EXPIRES_S)
    text = text.strip()
    return int(text[:9]) if text.isascii() and text.isdigit() else DEFAULT_EXPIRES_S


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class ContactMap:
    """The core's rewritten Contacts (default mode), bounded by ``max_entries`` (the
    oldest-expiring are dropped first when full; the edge's registration cap keeps it far
    below the bound in practice)."""

    def __init__(self, max_entries: int = 100_000):
        self.max_entries = max_entries
        self._entries: dict[str, Mapping] = {}
        self._inserts = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(aor: str, contact: str) -> str:
        """``ewr`` + 20 hex digits of SHA-256 over the AOR and the original Contact URI."""
        return REWRITE_PREFIX + hashlib.sha256(f"{aor}\0{contact}".encode()).hexdigest()[:20]

    def rewrite_register(self, fwd: Request, aor: str, zone: str, host: str, port: int, transport: str,
                         now: float) -> int:
        """Default mode on REGISTER ``fwd`` (the copy being forwarded, changed in place):
        the edge's Path values are taken off and every Contact but ``*`` is replaced by
        ``<sip:ewr<key>@host:port;transport=…>`` with its header parameters kept.
        ``host``/``port``/``transport`` are where the registrar reaches the core. Returns
        the number of Contacts rewritten. Raises UriError on a Contact it cannot parse
        (the caller answers 400)."""
        path = tuple(fwd.headers.get_all("Path"))
        contacts = fwd.headers.get_all("Contact")
        fwd.headers.remove("Path")
        if not contacts:
            return 0
        out: list[str] = []
        n = 0
        for value in contacts:
            na = parse_name_addr(value, allow_star=True)
            if na.star or na.uri is None:
                out.append(value)
                continue
            original = str(na.uri)
            k = self.key(aor, original)
            expires = _expires_of(na, fwd)
            self._put(k, Mapping(original, path, zone, aor, now + expires + GRACE_S), now)
            mine = Uri("sip", k, None, _host(host), port, {"transport": transport})
            out.append(str(NameAddr(mine, None, dict(na.params))))
            n += 1
        fwd.headers.remove("Contact")
        for v in out:
            fwd.headers.add("Contact", v)
        return n

    def _put(self, k: str, m: Mapping, now: float) -> None:
        self._entries[k] = m
        self._inserts += 1
        if self._inserts % 1024 == 0 or len(self._entries) > self.max_entries:
            self.sweep(now)
            while len(self._entries) > self.max_entries:
                oldest = min(self._entries, key=lambda x: self._entries[x].expires)
                del self._entries[oldest]

    def lookup(self, user: str | None, now: float) -> Mapping | None:
        """The mapping a rewritten Request-URI user part names, or None (not ours, unknown
        or expired)."""
        if not user or not user.startswith(REWRITE_PREFIX):
            return None
        m = self._entries.get(user)
        if m is None:
            return None
        if m.expires <= now:
            del self._entries[user]
            return None
        return m

    def sweep(self, now: float) -> int:
        """Forget expired mappings; returns how many."""
        dead = [k for k, m in self._entries.items() if m.expires <= now]
        for k in dead:
            del self._entries[k]
        return len(dead)

    def restore(self, up: Response, now: float) -> None:
        """A REGISTER's 2xx on its way back to the traversal zone (changed in place): every
        Contact this map rewrote gets its original URI back (and its mapping the binding's
        new expiry; expires=0 or a binding missing from the list is forgotten with the
        next sweep); every other Contact (an inside phone's binding) is left out."""
        kept: list[str] = []
        for value in up.headers.get_all("Contact"):
            try:
                na = parse_name_addr(value)
            except UriError:
                continue
            m = self.lookup(na.uri.user if na.uri is not None else None, now)
            if m is None:
                continue
            exp = na.params.get("expires")
            if exp is not None and exp.isascii() and exp.isdigit():
                m.expires = now + int(exp[:9]) + (GRACE_S if int(exp[:9]) else 0)
            kept.append(str(NameAddr(parse_name_addr(f"<{m.contact}>").uri, na.display, dict(na.params))))
        up.headers.remove("Contact")
        for v in kept:
            up.headers.add("Contact", v)


def restore_contacts(up: Response, req: Request) -> None:
    """Path mode: a REGISTER's 2xx on its way back to the traversal zone keeps only the
    Contacts whose URI the request itself registered (changed in place)."""
    mine: set[str] = set()
    for value in req.headers.get_all("Contact"):
        try:
            na = parse_name_addr(value, allow_star=True)
        except UriError:
            continue
        if na.uri is not None:
            mine.add(str(na.uri))
    kept = []
    for value in up.headers.get_all("Contact"):
        try:
            na = parse_name_addr(value)
        except UriError:
            continue
        if na.uri is not None and str(na.uri) in mine:
            kept.append(value)
    up.headers.remove("Contact")
    for v in kept:
        up.headers.add("Contact", v)


class PathTokens:
    """User parts of the core's own Path entries (Path mode): ``ewp`` + 12 hex digits of
    HMAC-SHA256(secret, zone name), naming the traversal zone a registration came from so
    that a request routed by the entry reaches the zone's live connection, whichever
    connection carried the REGISTER. ``secret`` (bytes): by default a fixed one, so the
    entries the registrar stored stay valid across a core restart (the token only picks
    among the core's own traversal zones; it grants nothing a search rule does not)."""

    def __init__(self, secret: bytes = b"edgeway path entry"):
        self._key = secret

    def encode(self, zone: str) -> str:
        return PATH_PREFIX + hmac.new(self._key, zone.encode(), hashlib.sha256).hexdigest()[:12]

    def decode(self, user: str | None, zones) -> str | None:
        """The zone of ``zones`` (iterable of names) whose token ``user`` is, or None."""
        if not user or not user.startswith(PATH_PREFIX):
            return None
        for z in zones:
            if hmac.compare_digest(user, self.encode(z)):
                return z
        return None
