"""The lab's authoritative DNS server, on loopback (UDP and TCP).

A small, in-memory, authoritative-only server built on dnspython, so that the
RFC 3263 resolver (:mod:`edgeway.routing.resolver`) is exercised over real
sockets without ever touching the system resolver or the internet.

Behaviour:
    - names inside a served zone: authoritative answers (AA set);
      NXDOMAIN for names that do not exist, NOERROR/NODATA (SOA in the
      authority section) for names that exist with other types — including
      empty non-terminals such as ``_tcp.corp.edgeway.test``;
    - names outside every served zone: REFUSED (we are not a recursive resolver);
    - SRV answers carry the targets' A/AAAA in the additional section; NAPTR
      answers with flag ``S`` carry the replacement's SRV records and their
      targets' A/AAAA (RFC 2782, RFC 3403 §4.2 "additional section processing");
    - no CNAME chasing, no wildcards, no DNSSEC, no zone transfers;
    - opcodes other than QUERY: NOTIMP; unparseable datagrams: dropped;
    - UDP answers larger than 512 bytes (or the client's EDNS size) are sent
      truncated (TC) so the client retries over TCP.

Example::

    records = records_from_text('''
        $ORIGIN corp.edgeway.test.
        @                 NAPTR 10 50 "s" "SIPS+D2T" "" _sips._tcp
        _sips._tcp        SRV   10 60 5061 edge
        edge              A     127.0.0.2
    ''')
    server = LabDnsServer(records, zones=["edgeway.test"])
    await server.start()            # server.port is the bound port
    ...
    await server.close()
"""

from __future__ import annotations

import asyncio
import re
import struct
from dataclasses import dataclass, field
from typing import Iterable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["Record", "LabDnsServer", "records_from_text"]

#: RFC 1035 §4.2.1: UDP payload limit without EDNS.
UDP_DEFAULT_PAYLOAD = 512
#: Cap on what we honour from a client's EDNS payload size (RFC 6891 §6.2.5
#: recommends 4096 as a starting value; 1232 is the DNS Flag Day 2020 value).
UDP_MAX_PAYLOAD = 1232
#: How many times start() retries to find a port free for both UDP and TCP
#: when port=0 (the ephemeral UDP port may be taken for TCP).
_BIND_ATTEMPTS = 20
#: Idle timeout for a TCP client (seconds), RFC 7766 §6.2.3 suggests tens of seconds.
TCP_IDLE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Record:
    """One resource record, data in zone-file text form.

    Attributes:
        name: owner name, e.g. ``"_sips._tcp.corp.edgeway.test"`` (trailing dot
            optional; always treated as absolute).
        rtype: ``"A"``, ``"AAAA"``, ``"SRV"``, ``"NAPTR"``, ``"TXT"`` (any type
            dnspython knows is accepted).
        data: RDATA as in a zone file, names absolute, e.g.
            ``"10 60 5061 edge.corp.edgeway.test."`` (SRV),
            ``'10 50 "s" "SIPS+D2T" "" _sips._tcp.corp.edgeway.test.'`` (NAPTR),
            ``'"token=abc"'`` (TXT), ``"127.0.0.2"`` (A).
        ttl: seconds.

    Raises:
        ValueError: at construction, if ``data`` does not parse for ``rtype``.
    """

    name: str
    rtype: str
    data: str
    ttl: int = 60
    _rdata: dns.rdata.Rdata = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            rdtype = dns.rdatatype.from_text(self.rtype)
            rd = dns.rdata.from_text(
                dns.rdataclass.IN, rdtype, self.data, origin=dns.name.root, relativize=False
            )
        except (dns.exception.DNSException, ValueError) as exc:
            raise ValueError(f"Record {self.name} {self.rtype}: bad data {self.data!r}: {exc}") from exc
        if not 0 <= self.ttl <= 0x7FFFFFFF:
            raise ValueError(f"Record {self.name}: ttl {self.ttl} out of range")
        object.__setattr__(self, "_rdata", rd)

    @property
    def owner(self) -> dns.name.Name:
        """The owner name as an absolute :class:`dns.name.Name`."""
        return dns.name.from_text(self.name)

    @property
    def rdata(self) -> dns.rdata.Rdata:
        """The parsed RDATA."""
        return self._rdata


_RR_LINE = re.compile(r"^(\S+)\s+(?:(\d+)\s+)?(?:IN\s+)?([A-Za-z][A-Za-z0-9]*)\s+(\S.*)$", re.IGNORECASE)


def records_from_text(text: str) -> list[Record]:
    """Parse a mini zone file into :class:`Record` objects.

    One record per line: ``<name> [<ttl>] [IN] <type> <data...>``. Supported:
    whole-line comments starting with ``;`` or ``#`` (comments after data are
    not stripped), blank lines, ``$ORIGIN <name>`` and ``$TTL <seconds>`` directives,
    ``@`` for the origin, names without a trailing dot relative to the
    origin (absolute if no origin is set), and relative names inside the data
    (e.g. an SRV target ``edge``) resolved against the origin.

    Raises:
        ValueError: with the line number, for a malformed line.
    """
    origin: dns.name.Name | None = None
    default_ttl = 60
    out: list[Record] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith((";", "#")):
            continue
        parts = line.split(None, 1)
        if parts[0].upper() == "$ORIGIN":
            if len(parts) != 2:
                raise ValueError(f"line {lineno}: $ORIGIN needs a name")
            origin = dns.name.from_text(parts[1].strip())
            continue
        if parts[0].upper() == "$TTL":
            try:
                default_ttl = int(parts[1])
            except (IndexError, ValueError):
                raise ValueError(f"line {lineno}: $TTL needs a number") from None
            continue
        m = _RR_LINE.match(line)
        if m is None:
            raise ValueError(f"line {lineno}: expected '<name> [ttl] [IN] <type> <data>': {raw!r}")
        owner_txt, ttl_txt, rtype, data = m.group(1), m.group(2), m.group(3).upper(), m.group(4).strip()
        ttl = int(ttl_txt) if ttl_txt else default_ttl
        try:
            if owner_txt == "@":
                if origin is None:
                    raise ValueError("'@' used without $ORIGIN")
                owner = origin
            else:
                owner = dns.name.from_text(owner_txt, origin=origin or dns.name.root)
            rd = dns.rdata.from_text(
                dns.rdataclass.IN,
                dns.rdatatype.from_text(rtype),
                data,
                origin=origin or dns.name.root,
                relativize=False,
            )
        except (dns.exception.DNSException, ValueError) as exc:
            raise ValueError(f"line {lineno}: {exc}: {raw!r}") from exc
        out.append(Record(owner.to_text(), rtype, rd.to_text(), ttl))
    return out


def _default_zones(records: Iterable[Record]) -> list[dns.name.Name]:
    zones: set[dns.name.Name] = set()
    for r in records:
        labels = r.owner.labels  # includes the empty root label
        zones.add(dns.name.Name(labels[-3:]) if len(labels) >= 3 else r.owner)
    return sorted(zones)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: "LabDnsServer") -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        reply = self.server.handle(data, udp=True)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class LabDnsServer:
    """Authoritative DNS server for the lab zones (UDP, plus TCP by default).

    Args:
        records: the zone data.
        host: IP address to bind (loopback in the lab).
        port: port to bind; 0 picks a free one (read :attr:`port` after
            :meth:`start`). UDP and TCP share the port.
        zones: served zone apexes, e.g. ``["edgeway.test"]``. Default: the
            last two labels of every owner name (``corp.edgeway.test`` →
            ``edgeway.test``). Queries outside these get REFUSED.
        tcp: also listen on TCP (needed for answers over 512 bytes).

    Attributes:
        queries: ``(qname, qtype)`` text pairs in arrival order, for tests and
            diagnostics (e.g. to assert "no NAPTR query was made").
        errors: exceptions raised while answering (each answered SERVFAIL).
    """

    def __init__(
        self,
        records: list[Record],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        zones: list[str] | None = None,
        tcp: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.tcp = tcp
        self.queries: list[tuple[str, str]] = []
        self.errors: list[BaseException] = []
        self._records: list[Record] = []
        self._zones_arg = zones
        self._zones: list[dns.name.Name] = []
        self._by_name: dict[dns.name.Name, list[Record]] = {}
        self._existing: set[dns.name.Name] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.base_events.Server | None = None
        self._tcp_tasks: set[asyncio.Task] = set()
        self.set_records(records)

    # ------------------------------------------------------------------ data

    @property
    def zones(self) -> list[str]:
        """Served zone apexes as absolute text names."""
        return [z.to_text() for z in self._zones]

    def set_records(self, records: list[Record]) -> None:
        """Replace the zone data (takes effect for the next query)."""
        self._records = list(records)
        if self._zones_arg is not None:
            self._zones = [dns.name.from_text(z) for z in self._zones_arg]
        else:
            self._zones = _default_zones(self._records)
        by_name: dict[dns.name.Name, list[Record]] = {}
        existing: set[dns.name.Name] = set()
        for r in self._records:
            owner = r.owner
            by_name.setdefault(owner, []).append(r)
            # the owner and all ancestors down to its zone exist (empty non-terminals)
            zone = self._zone_of(owner)
            n = owner
            while True:
                existing.add(n)
                if zone is None or n == zone or n == dns.name.root:
                    break
                n = n.parent()
        self._by_name = by_name
        self._existing = existing

    def _zone_of(self, name: dns.name.Name) -> dns.name.Name | None:
        best = None
        for z in self._zones:
            if name.is_subdomain(z) and (best is None or len(z) > len(best)):
                best = z
        return best

    def _rrset(self, name: dns.name.Name, rdtype: int) -> dns.rrset.RRset | None:
        recs = [r for r in self._by_name.get(name, ()) if r.rdata.rdtype == rdtype]
        if not recs:
            return None
        rrset = dns.rrset.RRset(name, dns.rdataclass.IN, rdtype)
        for r in recs:
            rrset.add(r.rdata, r.ttl)
        rrset.update_ttl(min(r.ttl for r in recs))
        return rrset

    def _soa(self, zone: dns.name.Name) -> dns.rrset.RRset:
        rd = dns.rdata.from_text(
            dns.rdataclass.IN,
            dns.rdatatype.SOA,
            f"ns.{zone.to_text()} hostmaster.{zone.to_text()} 1 3600 600 86400 60",
        )
        rrset = dns.rrset.RRset(zone, dns.rdataclass.IN, dns.rdatatype.SOA)
        rrset.add(rd, 60)
        return rrset

    def _add_addresses(self, msg: dns.message.Message, target: dns.name.Name) -> None:
        for t in (dns.rdatatype.A, dns.rdatatype.AAAA):
            rr = self._rrset(target, t)
            if rr is not None and rr not in msg.additional:
                msg.additional.append(rr)

    def _additional(self, msg: dns.message.Message, answer: dns.rrset.RRset) -> None:
        if answer.rdtype == dns.rdatatype.SRV:
            for rd in answer:
                self._add_addresses(msg, rd.target)
        elif answer.rdtype == dns.rdatatype.NAPTR:
            for rd in answer:
                if rd.flags.lower() == b"s":
                    srv = self._rrset(rd.replacement, dns.rdatatype.SRV)
                    if srv is not None and srv not in msg.additional:
                        msg.additional.append(srv)
                        for s in srv:
                            self._add_addresses(msg, s.target)
                elif rd.flags.lower() == b"a":
                    self._add_addresses(msg, rd.replacement)

    # ------------------------------------------------------------------ protocol

    def handle(self, wire: bytes, *, udp: bool = True) -> bytes | None:
        """Answer one query in wire format; ``None`` means "drop it".

        Pure apart from appending to :attr:`queries`; usable without sockets.
        Unparseable input is dropped; an internal error answers SERVFAIL
        (and is kept in :attr:`errors`) rather than stopping the server.
        """
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # noqa: BLE001 - any garbage is dropped, never crashes the server
            return None
        try:
            return self._answer(query, udp)
        except Exception as exc:  # noqa: BLE001
            self.errors.append(exc)
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()

    def _answer(self, query: dns.message.Message, udp: bool) -> bytes | None:
        if query.flags & dns.flags.QR:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            response.flags &= ~dns.flags.AA
            response.set_rcode(
                dns.rcode.NOTIMP if query.opcode() != dns.opcode.QUERY else dns.rcode.FORMERR
            )
            return response.to_wire()
        q = query.question[0]
        self.queries.append((q.name.to_text(omit_final_dot=True), dns.rdatatype.to_text(q.rdtype)))
        zone = self._zone_of(q.name) if q.rdclass == dns.rdataclass.IN else None
        if zone is None:
            response.flags &= ~dns.flags.AA
            response.set_rcode(dns.rcode.REFUSED)
            return response.to_wire()
        if q.rdtype == dns.rdatatype.SOA and q.name == zone:
            response.answer.append(self._soa(zone))
        elif q.rdtype == dns.rdatatype.ANY:
            for t in sorted({r.rdata.rdtype for r in self._by_name.get(q.name, ())}):
                rr = self._rrset(q.name, t)
                if rr is not None:
                    response.answer.append(rr)
        else:
            rr = self._rrset(q.name, q.rdtype)
            if rr is not None:
                response.answer.append(rr)
                self._additional(response, rr)
        if not response.answer:
            if q.name not in self._existing and q.name != zone:
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa(zone))
        return self._to_wire(query, response, udp)

    @staticmethod
    def _to_wire(query: dns.message.Message, response: dns.message.Message, udp: bool) -> bytes:
        if not udp:
            return response.to_wire(max_size=65535)
        limit = UDP_DEFAULT_PAYLOAD
        if query.edns >= 0:
            limit = max(UDP_DEFAULT_PAYLOAD, min(query.payload, UDP_MAX_PAYLOAD))
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            pass
        # Drop the additional section first (RFC 2181 §9: TC only if the
        # answer itself does not fit).
        response.additional = []
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            pass
        response.answer = []
        response.authority = []
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit)

    # ------------------------------------------------------------------ sockets

    async def start(self) -> None:
        """Bind UDP (and TCP) on ``host:port`` and start answering.

        Raises:
            OSError: the port is unavailable.
        """
        loop = asyncio.get_running_loop()
        attempts = _BIND_ATTEMPTS if self.port == 0 else 1
        last: OSError | None = None
        for _ in range(attempts):
            udp, _proto = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(self.host, self.port)
            )
            port = udp.get_extra_info("sockname")[1]
            if not self.tcp:
                self._udp, self.port = udp, port
                return
            try:
                self._tcp_server = await asyncio.start_server(
                    self._serve_tcp, self.host, port, reuse_address=True
                )
            except OSError as exc:
                udp.close()
                last = exc
                continue
            self._udp, self.port = udp, port
            return
        assert last is not None
        raise last

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tcp_tasks.add(task)
        try:
            while True:
                hdr = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT_S)
                (length,) = struct.unpack("!H", hdr)
                data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE_TIMEOUT_S)
                reply = self.handle(data, udp=False)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()
            if task is not None:
                self._tcp_tasks.discard(task)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` to give to a resolver (valid after :meth:`start`)."""
        return (self.host, self.port)

    async def close(self) -> None:
        """Stop listening and drop open TCP connections. Idempotent."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp_server is not None:
            self._tcp_server.close()
            for t in list(self._tcp_tasks):
                t.cancel()
            await self._tcp_server.wait_closed()
            self._tcp_server = None

    async def __aenter__(self) -> "LabDnsServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
