"""``get_edge_config``: edge configuration discovery answered by the core (seed 002 §8.1-§8.2,
catalogue §22; issue 9 item 2). Pure: request path in, (status, XML bytes) out.

A client outside finds the edge with the SRV record ``_collab-edge._tls.<domain>`` (port 8443)
and asks ``GET /<base64(domain)>/get_edge_config?service_name=_cisco-uds&service_name=_cuplogin``.
The guide itself is silent on the path and the document (catalogue §22 "GUIDE SILENT"); the
element names follow the public Jabber/Expressway format as the catalogue recalls it
([EXTERNAL, unverified]): ``getEdgeConfigResponse`` with ``serviceConfig`` (one ``service`` per
requested ``service_name``, each listing ``server`` entries with priority/weight/port/address)
and ``edgeConfig`` (``sipEdgeServer``, ``sipRequest`` route, ``httpEdgeServer``,
``turnEdgeServer``; no ``xmppEdgeServer``: Edgeway has no XMPP proxy yet)::

    <getEdgeConfigResponse version="1.0">
      <serviceConfig>
        <service><name>_cisco-uds</name>
          <server><priority>1</priority><weight>1</weight><port>8443</port><address>cucm.corp</address></server>
        </service>
        <service><name>_cuplogin</name></service>
      </serviceConfig>
      <edgeConfig>
        <sipEdgeServer><server><address>edge.corp</address><tlsPort>5061</tlsPort></server></sipEdgeServer>
        <sipRequest><route>&lt;sip:edge.corp:5061;transport=tls;lr&gt;</route></sipRequest>
        <httpEdgeServer><server><address>edge.corp</address><tlsPort>8443</tlsPort></server></httpEdgeServer>
        <turnEdgeServer><server><address>turn.corp</address><udpPort>3478</udpPort><tcpPort>3478</tcpPort></server></turnEdgeServer>
      </edgeConfig>
    </getEdgeConfigResponse>

The path's first segment is the domain in base64 (standard or URL-safe alphabet, padding
optional, ``%3D`` accepted); a domain not in ``mra.domains`` gets 404. The answer is per
deployment (seed 002 §3; issue 9 item 7): ``_cisco-uds`` lists only the UDS servers of the
domain's deployment (:meth:`MraConfig.deployment_of`, :meth:`MraConfig.uds_addresses_of`);
the edge's SIP and HTTPS addresses and the TURN servers are the same for every deployment.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import parse_qs, unquote
from xml.etree import ElementTree as ET

from ..config.models import DEFAULT_DEPLOYMENT, MraConfig

__all__ = ["EDGE_CONFIG_SEGMENT", "is_edge_config_path", "decode_domain", "edge_config_xml", "answer_edge_config"]

#: Second path segment of the discovery request.
EDGE_CONFIG_SEGMENT = "get_edge_config"
#: Services a client may ask for (``service_name``) and what Edgeway lists for each.
KNOWN_SERVICES = ("_cisco-uds", "_cuplogin")
_B64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")


def is_edge_config_path(path: str) -> bool:
    """Whether ``path`` (origin-form, query allowed) is ``/<segment>/get_edge_config``."""
    parts = path.partition("?")[0].split("/")
    return len(parts) == 3 and parts[0] == "" and parts[2] == EDGE_CONFIG_SEGMENT


def decode_domain(segment: str) -> str | None:
    """The lower-case domain of a base64 path segment; None when it does not decode to an
    ASCII DNS name."""
    text = unquote(segment)
    if not _B64.fullmatch(text):
        return None
    text = text.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        domain = raw.decode("ascii").lower().rstrip(".")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?", domain):
        return None
    return domain


def _el(parent: ET.Element, tag: str, text: object | None = None) -> ET.Element:
    e = ET.SubElement(parent, tag)
    if text is not None:
        e.text = str(text)
    return e


def edge_config_xml(mra: MraConfig, edge_host: str, services: list[str], deployment: str = DEFAULT_DEPLOYMENT) -> bytes:
    """The document for one domain of ``deployment``: ``services`` the requested
    ``service_name`` values (in request order, unknown ones listed empty; ``_cisco-uds`` lists
    the UDS servers of ``deployment`` only); ``edge_host`` the edge's public name."""
    root = ET.Element("getEdgeConfigResponse", version="1.0")
    sc = _el(root, "serviceConfig")
    for name in dict.fromkeys(services):
        svc = _el(sc, "service")
        _el(svc, "name", name)
        if name == "_cisco-uds":
            for host, port in mra.uds_addresses_of(deployment):
                srv = _el(svc, "server")
                _el(srv, "priority", 1)
                _el(srv, "weight", 1)
                _el(srv, "port", port)
                _el(srv, "address", host)
    ec = _el(root, "edgeConfig")
    srv = _el(_el(ec, "sipEdgeServer"), "server")
    _el(srv, "address", edge_host)
    _el(srv, "tlsPort", mra.edge_sip_tls_port)
    _el(_el(ec, "sipRequest"), "route", f"<sip:{edge_host}:{mra.edge_sip_tls_port};transport=tls;lr>")
    srv = _el(_el(ec, "httpEdgeServer"), "server")
    _el(srv, "address", edge_host)
    _el(srv, "tlsPort", mra.https_port)
    if mra.turn_servers:
        turn = _el(ec, "turnEdgeServer")
        for t in mra.turn_servers:
            srv = _el(turn, "server")
            _el(srv, "address", t.host)
            if t.udp_port:
                _el(srv, "udpPort", t.udp_port)
            if t.tcp_port:
                _el(srv, "tcpPort", t.tcp_port)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8", xml_declaration=False)


def answer_edge_config(mra: MraConfig, edge_host: str, method: str, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """Answer a ``/<base64(domain)>/get_edge_config[?service_name=…]`` request:
    ``(status, headers, body)``. 405 for a method other than GET/HEAD, 404 for a domain that
    does not decode or is not in ``mra.domains``; 200 with :func:`edge_config_xml` for the
    domain's deployment otherwise (no ``service_name``: both known services)."""
    if method not in ("GET", "HEAD"):
        return 405, [("allow", "GET, HEAD"), ("content-type", "text/plain")], b"405 Method Not Allowed\n"
    raw, _, query = path.partition("?")
    domain = decode_domain(raw.split("/")[1])
    deployment = None if domain is None else mra.deployment_of(domain)
    if deployment is None:
        return 404, [("content-type", "text/plain")], b"404 Not Found: unknown domain\n"
    services = parse_qs(query).get("service_name") or list(KNOWN_SERVICES)
    body = edge_config_xml(mra, edge_host, services, deployment)
    return 200, [("content-type", "application/xml; charset=utf-8"), ("cache-control", "no-store")], body
