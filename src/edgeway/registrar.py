"""The node's own registrar (RFC 3261 §10.3; seed 002 §2.2 "SIP registrations and
provisioning on Expressway"; issue 9 item 6): bindings of address-of-record → contacts
for the domains a node serves itself (its LocalZone).

Sans-IO: :meth:`Registrar.register` takes a REGISTER (after the proxy's §16.3 checks),
the flow it came on and the time (seconds, any monotonic clock) and returns the
response to send; :meth:`Registrar.lookup` gives the live bindings of an AOR, best
``q`` first. Digest authentication (RFC 3261 §22, RFC 8760) against a local user
store when one is configured; nonces are stateless (an HMAC of their issue time,
accepted for :data:`NONCE_LIFETIME_S`). ``Path`` (RFC 3327) is stored with the binding
and echoed in the 200 when the UA said ``Supported: path``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from .security import digest
from .sip.message import Request, Response, make_response
from .sip.target import Flow
from .sip.uri import UriError, parse_name_addr

__all__ = ["Registrar", "Binding", "NONCE_LIFETIME_S"]

#: Seconds a nonce we issued stays acceptable.
NONCE_LIFETIME_S = 300.0


@dataclass
class Binding:
    """One contact of an address-of-record: ``contact`` (the Contact URI text),
    ``expires_at`` (seconds, the registrar's clock), ``q`` (0–1), the ``call_id`` and
    ``cseq`` of the REGISTER that made it, ``path`` (RFC 3327 route set, top first),
    ``flow`` the connection or UDP flow it came on (the way back to a client behind NAT),
    ``zone`` the zone that flow belongs to."""

    contact: str
    expires_at: float
    q: float
    call_id: str
    cseq: int
    path: tuple[str, ...] = ()
    flow: Flow | None = None
    zone: str | None = None


def aor_of(uri_text: str) -> str:
    """The canonical address-of-record of a To or Request-URI value: ``sip:user@host``
    with the host lower case, no port, parameters or display name (RFC 3261 §10.3
    step 5). Raises UriError."""
    uri = parse_name_addr(uri_text).uri
    if uri is None or not uri.is_sip or not uri.host:
        raise UriError(f"not a SIP address-of-record: {uri_text!r}")
    return f"sip:{uri.user}@{uri.host.lower()}" if uri.user else f"sip:{uri.host.lower()}"


class Registrar:
    """Bindings for the domains in ``domains`` (lower case).

    ``users``: username → password; when given, every REGISTER must carry valid digest
    credentials of the AOR's user (401 challenge otherwise, 403 for another user's AOR).
    ``realm`` is the digest realm. Expiry: ``default_expires_s`` when the request says
    nothing, at most ``max_expires_s``; below ``min_expires_s`` (and not 0) → 423
    Interval Too Brief. ``max_bindings``: bound over all AORs (503 beyond it).
    ``algorithms``: the digest algorithms challenged with and accepted ("SHA-256", "MD5").
    """

    def __init__(self, domains: list[str] | set[str], *, users: dict[str, str] | None = None, realm: str = "edgeway",
                 min_expires_s: int = 60, max_expires_s: int = 3600, default_expires_s: int = 3600,
                 max_bindings: int = 10_000, algorithms: tuple[str, ...] = ("SHA-256", "MD5")):
        self.domains = {d.lower() for d in domains}
        #: Digest algorithms challenged with (one WWW-Authenticate each, in this order)
        #: and accepted. Some clients (baresip/libre 1.x) give up on a challenge list
        #: holding an algorithm they do not know: offer MD5 alone to them.
        self.algorithms = tuple(algorithms)
        self.users = users
        self.realm = realm
        self.min_expires_s = min_expires_s
        self.max_expires_s = max_expires_s
        self.default_expires_s = default_expires_s
        self.max_bindings = max_bindings
        self._bindings: dict[str, list[Binding]] = {}
        self._secret = secrets.token_bytes(32)
        self.stats = {"registered": 0, "challenged": 0, "refused": 0}

    # ------------------------------------------------------------------ lookups
    def serves(self, aor: str) -> bool:
        """Whether ``aor`` (canonical) is in one of our domains."""
        return aor.rpartition("@")[2].partition(":")[0] in self.domains

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """The live bindings of ``aor``, highest ``q`` first (expired ones dropped)."""
        live = [b for b in self._bindings.get(aor, ()) if b.expires_at > now]
        if live:
            self._bindings[aor] = live
        else:
            self._bindings.pop(aor, None)
        return sorted(live, key=lambda b: -b.q)

    def __len__(self) -> int:
        return sum(len(v) for v in self._bindings.values())

    def expire(self, now: float) -> int:
        """Drop expired bindings; how many were dropped."""
        n = 0
        for aor in list(self._bindings):
            before = len(self._bindings[aor])
            n += before - len(self.lookup(aor, now))
        return n

    # ------------------------------------------------------------------ REGISTER
    def register(self, req: Request, flow: Flow | None, now: float, zone: str | None = None) -> Response:
        """Process one REGISTER (RFC 3261 §10.3 steps 1–8) that came on ``flow`` (in
        ``zone``); the response to send."""
        try:
            aor = aor_of(req.headers.get("To") or "")
        except UriError as exc:
            return self._reply(req, 400, f"Bad Request - {exc}")
        if not self.serves(aor):
            return self._reply(req, 404, "Not Found")
        denied = self._authenticate(req, aor)
        if denied is not None:
            return denied
        try:
            contacts = [parse_name_addr(v, allow_star=True) for v in req.headers.get_all("Contact")]
            cseq_num = req.cseq[0]
        except (UriError, ValueError) as exc:
            return self._reply(req, 400, f"Bad Request - {exc}"[:120])
        header_expires = req.headers.get("Expires")
        if any(c.star for c in contacts):
            if len(contacts) != 1 or header_expires is None or header_expires.strip() != "0":
                return self._reply(req, 400, "Bad Request - Contact * needs Expires: 0 and no other contact")
            self._bindings.pop(aor, None)
            return self._ok(req, aor, now)
        changes = []
        for c in contacts:
            expires = self._expires(c.params.get("expires"), header_expires)
            if expires is None:
                return self._reply(req, 400, "Bad Request - invalid expires")
            if 0 < expires < self.min_expires_s:
                return self._reply(req, 423, "Interval Too Brief", extra=[("Min-Expires", str(self.min_expires_s))])
            try:
                q = float(c.params.get("q") or 1.0)
            except ValueError:
                return self._reply(req, 400, "Bad Request - invalid q")
            if not 0.0 <= q <= 1.0:
                return self._reply(req, 400, "Bad Request - q out of range")
            changes.append((str(c.uri), min(expires, self.max_expires_s), q))
        current = {b.contact: b for b in self.lookup(aor, now)}
        for contact, _expires, _q in changes:
            old = current.get(contact)
            if old is not None and old.call_id == req.call_id and cseq_num <= old.cseq:
                return self._reply(req, 500, "Server Internal Error - out-of-order REGISTER")
        added = sum(1 for contact, expires, _ in changes if expires and contact not in current)
        if added and len(self) + added > self.max_bindings:
            return self._reply(req, 503, "Service Unavailable - registration limit reached", extra=[("Retry-After", "60")])
        path = tuple(req.headers.get_all("Path"))
        for contact, expires, q in changes:
            if expires == 0:
                current.pop(contact, None)
            else:
                current[contact] = Binding(contact, now + expires, q, req.call_id, cseq_num, path, flow, zone)
        if current:
            self._bindings[aor] = list(current.values())
        else:
            self._bindings.pop(aor, None)
        self.stats["registered"] += 1
        return self._ok(req, aor, now)

    def _expires(self, param: str | None, header: str | None) -> int | None:
        text = param if param is not None else header
        if text is None:
            return self.default_expires_s
        text = text.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 10:
            return None
        return int(text)

    def _ok(self, req: Request, aor: str, now: float) -> Response:
        extra = [("Contact", f"<{b.contact}>;expires={max(0, int(b.expires_at - now))};q={b.q:g}")
                 for b in self.lookup(aor, now)]
        supported = ",".join(req.headers.get_all("Supported")).replace(" ", "").lower().split(",")
        if "path" in supported:
            extra += [("Path", p) for p in req.headers.get_all("Path")]
        extra.append(("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())))
        return self._reply(req, 200, "OK", extra=extra)

    def _reply(self, req: Request, status: int, reason: str, extra: list[tuple[str, str]] | None = None) -> Response:
        if status >= 300:
            self.stats["refused"] += status != 401
        return make_response(req, status, reason, to_tag=secrets.token_hex(5), extra=extra)

    # ------------------------------------------------------------------ digest
    def _nonce(self, now_s: int) -> str:
        mac = hmac.new(self._secret, str(now_s).encode(), hashlib.sha256).hexdigest()[:24]
        return f"{now_s:x}.{mac}"

    def _nonce_ok(self, nonce: str) -> bool:
        ts, _, _mac = nonce.partition(".")
        try:
            issued = int(ts, 16)
        except ValueError:
            return False
        return hmac.compare_digest(self._nonce(issued), nonce) and 0 <= time.time() - issued <= NONCE_LIFETIME_S

    def _authenticate(self, req: Request, aor: str) -> Response | None:
        """None when the request may go on; else the 401/403 to send."""
        if self.users is None:
            return None
        auth = req.headers.get("Authorization")
        if auth:
            try:
                creds = digest.parse_auth_header(auth)
            except ValueError:
                creds = {}
            user = creds.get("username", "")
            password = self.users.get(user)
            nonce = creds.get("nonce", "")
            if (password is not None and creds.get("realm") == self.realm and self._nonce_ok(nonce)
                    and digest.verify(creds, password, "REGISTER", nonce, algorithms=self.algorithms)):
                if aor.partition(":")[2].partition("@")[0] != user:
                    return self._reply(req, 403, "Forbidden - credentials of another user")
                return None
            self.stats["refused"] += 1  # counted as a failure (intrusion protection)
        self.stats["challenged"] += 1
        nonce = self._nonce(int(time.time()))
        return make_response(req, 401, "Unauthorized", to_tag=secrets.token_hex(5), extra=[
            ("WWW-Authenticate", digest.challenge(self.realm, nonce, alg)) for alg in self.algorithms])
