"""Registration of the user agent (RFC 3261 §10.2) as a sans-IO state machine.

:class:`Registration` builds the REGISTER requests of one address-of-record and reads
the final responses to them; the agent (:meth:`edgeway.ua.agent.UserAgent.register`)
adds the Via, runs each request in a client transaction and feeds the outcome back.
No sockets, no event loop, no clock reads: ``now`` is passed in (seconds, any
monotonic clock).

* All REGISTERs of one registration share a Call-ID and count CSeq up (§10.2.4); the
  outbound proxy goes in a preloaded ``Route`` (§8.1.2).
* A 401 / 407 is answered with ``Authorization`` / ``Proxy-Authorization`` digest
  credentials (RFC 3261 §22, RFC 7616, RFC 8760: SHA-256 and MD5, the first challenge
  whose algorithm we can compute). A fresh challenge is answered **once** per round:
  another challenge to the answer means the credentials were refused and the round
  fails, unless that challenge says ``stale=true`` (the nonce expired, the credentials
  were right: answered once more). Later rounds reuse the last nonce with the nonce
  count one higher, so a refresh usually needs no new challenge.
* 423 Interval Too Brief: retried once with the ``Min-Expires`` asked for (§10.2.8).
* A 2xx must list our Contact; its ``expires`` (else the ``Expires`` header, else the
  one we asked for) sets the refresh time: :func:`refresh_after`.
* :meth:`Registration.unregister` sends ``Expires: 0`` for our Contact (§10.2.2).

Results are small dataclasses: :class:`SendRegister` (send this request),
:class:`Registered`, :class:`Unregistered`, :class:`RegistrationFailed`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from ..security import digest
from ..sip.message import Request, Response
from ..sip.uri import UriError, parse_name_addr, parse_uri

__all__ = ["Registration", "SendRegister", "Registered", "Unregistered", "RegistrationFailed", "RegistrationResult",
           "refresh_after", "REFRESH_FRACTION", "REFRESH_MIN_MARGIN_S", "DEFAULT_EXPIRES_S"]

#: Expires asked for when the caller names none (RFC 3261 §10.2.1.1 suggests 3600).
DEFAULT_EXPIRES_S = 3600
#: A registration is refreshed when this share of its interval is left (libre/baresip
#: refresh at 90 % of the interval) ...
REFRESH_FRACTION = 0.1
#: ... but at least this many seconds before it ends (pjsip's
#: PJSIP_REGISTER_CLIENT_DELAY_BEFORE_REFRESH is 5 s), and never before half of it.
REFRESH_MIN_MARGIN_S = 5.0
#: Digest algorithms we can answer, strongest first (RFC 8760 §2.4).
ALGORITHMS = ("SHA-256", "MD5")


def refresh_after(expires: float) -> float:
    """Seconds after a 2xx granting ``expires`` seconds at which to refresh: with
    ``max(10 % of the interval, 5 s)`` left, but not earlier than half of it."""
    margin = max(expires * REFRESH_FRACTION, REFRESH_MIN_MARGIN_S)
    return max(expires - margin, expires / 2)


@dataclass(frozen=True)
class SendRegister:
    """Send ``request`` (no Via yet: the sender adds it) in a new client transaction."""

    request: Request


@dataclass(frozen=True)
class Registered:
    """The registrar bound our Contact for ``expires`` seconds; refresh at ``refresh_at``
    (same clock as ``now``). ``contacts``: every binding the 200 listed; ``path``: the
    Path the registrar echoed (RFC 3327); ``algorithm``: the digest algorithm answered
    (None when no challenge came)."""

    expires: int
    refresh_at: float
    contacts: tuple[str, ...] = ()
    path: tuple[str, ...] = ()
    algorithm: str | None = None


@dataclass(frozen=True)
class Unregistered:
    """The registrar removed our binding (a 2xx to ``Expires: 0``)."""


@dataclass(frozen=True)
class RegistrationFailed:
    """The round failed: ``status`` the final response (408 for a timeout, 503 for a
    transport error: RFC 3261 §17.1.4), ``detail`` why, in words."""

    status: int
    reason: str
    detail: str


@dataclass
class RegistrationResult:
    """What :meth:`~edgeway.ua.agent.UserAgent.register` reports: ``ok`` when bound,
    ``status``/``reason`` of the last final response (0 when none came), ``error`` why
    not, ``expires`` granted, ``challenges`` answered, ``algorithm`` of the digest
    answer, the ``contact`` registered, the ``call_id`` its REGISTERs share, the
    connection it was made on (``transport``, ``local``, ``remote``, ``tls_peer_names``),
    the ``path`` the registrar echoed and the ladder of its messages."""

    aor: str
    contact: str = ""
    call_id: str = ""
    ok: bool = False
    status: int = 0
    reason: str = ""
    error: str | None = None
    expires: int | None = None
    challenges: int = 0
    algorithm: str | None = None
    transport: str = ""
    local: tuple[str, int] | None = None
    remote: tuple[str, int] | None = None
    tls_peer_names: list[str] = field(default_factory=list)
    path: tuple[str, ...] = ()
    ladder: list[str] = field(default_factory=list)
    duration_ms: float = 0.0


def _same_contact(a: str, b: str) -> bool:
    """Contact URIs name the same binding (scheme, user, host, port; RFC 3261 §19.1.4
    with the parameters left aside: registrars add their own)."""
    try:
        x, y = parse_uri(a), parse_uri(b)
    except UriError:
        return False
    return (x.scheme, x.user, x.host.lower(), x.port) == (y.scheme, y.user, y.host.lower(), y.port)


class Registration:
    """One address-of-record's registration through one outbound proxy.

    Args:
        aor: ``sip:user@domain`` (To and From; the registrar's URI is ``sip:domain``).
        contact: our Contact URI (no angle brackets), e.g. ``sip:carol@192.0.2.8:5061;transport=tls``.
        password: the digest password; ``username`` defaults to the AOR's user.
        expires: the interval asked for (s).
        route: preloaded Route values (the outbound proxy, ``<sip:host:port;transport=tls;lr>``).
        call_id: default a fresh random one.
        user_agent: the ``User-Agent`` value.

    State :attr:`state`: ``"idle"`` → ``"registering"`` → ``"registered"`` (refreshing:
    ``"registering"`` again) → ``"unregistering"`` → ``"unregistered"``; ``"failed"``
    after a failed round (a later :meth:`register` starts a new round).
    """

    def __init__(self, aor: str, contact: str, *, password: str, username: str | None = None,
                 expires: int = DEFAULT_EXPIRES_S, route: list[str] | tuple[str, ...] = (), call_id: str | None = None,
                 user_agent: str = "Edgeway-UA"):
        uri = parse_uri(aor)
        if not uri.is_sip or not uri.user:
            raise ValueError(f"not a SIP address-of-record with a user: {aor!r}")
        self.aor = f"{uri.scheme}:{uri.user}@{uri.host}"
        self.registrar_uri = f"{uri.scheme}:{uri.host}"
        self.contact = contact
        self.username = username or uri.user
        self.password = password
        self.expires = int(expires)
        self.route = list(route)
        self.call_id = call_id or f"{secrets.token_hex(10)}@{uri.host}"
        self.from_tag = secrets.token_hex(5)
        self.user_agent = user_agent
        self.cseq = 0
        self.state = "idle"
        #: The granted interval and refresh time of the current binding (None when unbound).
        self.granted: int | None = None
        self.refresh_at: float | None = None
        #: Challenges answered in this registration's life, and the last algorithm used.
        self.challenges = 0
        self.algorithm: str | None = None
        self._auth: tuple[str, dict[str, str]] | None = None  # (header name, challenge)
        self._nc = 0
        self._asked = self.expires  # Expires of the round under way (0 when un-registering)
        self._answered = 0  # fresh challenges answered in this round
        self._stale_answered = False
        self._brief_retried = False

    # ------------------------------------------------------------------ requests
    def next_deadline(self) -> float | None:
        """When :meth:`due` has a refresh to send (None when not registered)."""
        return self.refresh_at if self.state == "registered" else None

    def due(self, now: float) -> SendRegister | None:
        """The refresh REGISTER when the binding is due for one at ``now``, else None."""
        if self.state == "registered" and self.refresh_at is not None and now >= self.refresh_at:
            return self.register(now)
        return None

    def register(self, now: float) -> SendRegister:
        """Start a round binding our Contact for :attr:`expires` seconds (initial or refresh)."""
        return self._start_round("registering", self.expires)

    def unregister(self, now: float) -> SendRegister | None:
        """Start a round removing our binding (``Expires: 0``); None when nothing is bound
        or being bound (idle, unregistered, failed without a binding)."""
        if self.state in ("idle", "unregistered", "unregistering") or (self.state == "failed" and self.granted is None):
            return None
        return self._start_round("unregistering", 0)

    def _start_round(self, state: str, expires: int) -> SendRegister:
        self.state, self._asked = state, expires
        self._answered, self._stale_answered, self._brief_retried = 0, False, False
        return SendRegister(self._request(with_credentials=self._auth is not None))

    def _request(self, *, with_credentials: bool) -> Request:
        """The next REGISTER (CSeq one higher; RFC 3261 §10.2.1), without a Via."""
        self.cseq += 1
        req = Request("REGISTER", self.registrar_uri)
        h = req.headers
        for r in self.route:
            h.add("Route", r)
        h.add("Max-Forwards", "70")
        h.add("From", f"<{self.aor}>;tag={self.from_tag}")
        h.add("To", f"<{self.aor}>")
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{self.cseq} REGISTER")
        h.add("Contact", f"<{self.contact}>")
        h.add("Expires", str(self._asked))
        h.add("Supported", "path")
        h.add("User-Agent", self.user_agent)
        if with_credentials and self._auth is not None:
            name, chal = self._auth
            self._nc += 1
            h.add(name, digest.authorization(chal, self.username, self.password, "REGISTER", self.registrar_uri,
                                             nc=self._nc))
        return req

    # ------------------------------------------------------------------ responses
    def receive(self, resp: Response, now: float) -> SendRegister | Registered | Unregistered | RegistrationFailed | None:
        """A response to the round's REGISTER: what to do next (None: nothing, e.g. a
        provisional or a response to an earlier CSeq)."""
        if self.state not in ("registering", "unregistering"):
            return None
        try:
            num, method = resp.cseq
        except ValueError:
            return None
        if method != "REGISTER" or num != self.cseq or resp.call_id != self.call_id or resp.status < 200:
            return None
        if 200 <= resp.status < 300:
            return self._accepted(resp, now)
        if resp.status in (401, 407):
            return self._challenged(resp)
        if resp.status == 423:
            return self._too_brief(resp)
        return self._fail(resp.status, resp.reason, f"registrar answered {resp.status} {resp.reason}")

    def failed(self, status: int, detail: str) -> RegistrationFailed:
        """The round's transaction ended without a final response: ``status`` 408 (Timer F)
        or 503 (transport error)."""
        reason = {408: "Request Timeout", 503: "Service Unavailable"}.get(status, "")
        return self._fail(status, reason, detail)

    def _fail(self, status: int, reason: str, detail: str) -> RegistrationFailed:
        self.state = "failed"
        if self._asked == 0:  # an un-registration that failed: we consider ourselves unbound
            self.granted = self.refresh_at = None
        return RegistrationFailed(status, reason, detail)

    def _accepted(self, resp: Response, now: float) -> Registered | Unregistered | RegistrationFailed:
        if self.state == "unregistering":
            self.state, self.granted, self.refresh_at = "unregistered", None, None
            return Unregistered()
        contacts, ours = [], None
        for value in resp.headers.get_all("Contact"):
            try:
                na = parse_name_addr(value)
            except UriError:
                continue
            if na.uri is None:
                continue
            contacts.append(str(na.uri))
            if ours is None and _same_contact(str(na.uri), self.contact):
                ours = na
        if ours is None:
            return self._fail(resp.status, resp.reason, "the 2xx does not list our Contact: not bound")
        text = ours.params.get("expires") or resp.headers.get("Expires") or str(self._asked)
        text = text.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 10:
            return self._fail(resp.status, resp.reason, f"the 2xx grants an unreadable expires {text!r}")
        expires = int(text)
        if expires == 0:
            return self._fail(resp.status, resp.reason, "the 2xx grants expires=0: not bound")
        self.state, self.granted = "registered", expires
        self.refresh_at = now + refresh_after(expires)
        return Registered(expires, self.refresh_at, tuple(contacts), tuple(resp.headers.get_all("Path")),
                          self.algorithm if self._auth is not None else None)

    def _challenged(self, resp: Response) -> SendRegister | RegistrationFailed:
        """Answer a 401/407 once (twice when the second says ``stale=true``)."""
        proxy = resp.status == 407
        header = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        chal = None
        for value in resp.headers.get_all(header):
            try:
                c = digest.parse_auth_header(value)
            except ValueError:
                continue
            qops = [q.strip().lower() for q in (c.get("qop") or "").split(",") if q.strip()]
            if (c.get("algorithm") or "MD5").upper() in ALGORITHMS and (not qops or "auth" in qops):
                chal = c
                break
        who = "proxy" if proxy else "registrar"
        if chal is None:
            return self._fail(resp.status, resp.reason, f"no {header} digest challenge we can answer "
                                                        f"(algorithms {', '.join(ALGORITHMS)})")
        stale = (chal.get("stale") or "").lower() == "true"
        if self._answered:
            if not stale or self._stale_answered:
                self._auth = None  # refused: never resend these credentials unasked
                return self._fail(resp.status, resp.reason,
                                  f"the {who} refused our credentials for {self.username!r} "
                                  f"({resp.status} {resp.reason} to the answered challenge)")
            self._stale_answered = True
        self._answered += 1
        self.challenges += 1
        self._auth = ("Proxy-Authorization" if proxy else "Authorization", chal)
        self.algorithm = (chal.get("algorithm") or "MD5").upper()
        self._nc = 0
        return SendRegister(self._request(with_credentials=True))

    def _too_brief(self, resp: Response) -> SendRegister | RegistrationFailed:
        """423 Interval Too Brief (RFC 3261 §10.2.8): once more with its Min-Expires."""
        text = (resp.headers.get("Min-Expires") or "").strip()
        if self._brief_retried or self._asked == 0 or not (text.isascii() and text.isdigit()) \
                or int(text[:10]) <= self._asked:
            return self._fail(resp.status, resp.reason, f"423 Interval Too Brief (Min-Expires {text or 'missing'})")
        self._brief_retried = True
        self.expires = self._asked = int(text[:10])
        return SendRegister(self._request(with_credentials=self._auth is not None))
