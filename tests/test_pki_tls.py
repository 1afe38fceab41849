"""Lab PKI and TLS helpers: real handshakes over loopback sockets (threads)."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeway.security import pki, tls

TIMEOUT = 5.0


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.timezone.utc)
    paths = pki.write_lab_pki(
        d,
        {
            "edge": {
                "common_name": "edge.corp.edgeway.test",
                "dns_sans": ["edge.corp.edgeway.test", "expe.edgeway.test"],
                "ip_sans": ["127.0.0.2"],
            },
            "core": {"common_name": "core.corp.edgeway.test", "ip_sans": ["127.0.0.3"]},
            "expired": {
                "common_name": "old.corp.edgeway.test",
                "not_before": now - dt.timedelta(days=30),
                "not_after": now - dt.timedelta(days=1),
            },
        },
    )
    # A second, unrelated CA and a leaf-only cert from it.
    other_ca, other_key = pki.make_ca("Rogue CA")
    rogue, rogue_key = pki.make_cert(other_ca, other_key, "rogue.test", ["rogue.test"])
    paths["rogue_leaf"] = {
        "cert": pki.write_pem(d / "rogue_leaf.pem", rogue),
        "key": pki.write_pem(d / "rogue_leaf.key", rogue_key),
        "ca": pki.write_pem(d / "rogue_ca.pem", other_ca),
    }
    paths["rogue_chain"] = {
        "cert": pki.write_pem(d / "rogue_chain.pem", rogue, other_ca),
        "key": paths["rogue_leaf"]["key"],
        "ca": paths["rogue_leaf"]["ca"],
    }
    return paths


def _handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, *, exchange: bool = True
) -> tuple[BaseException | None, BaseException | None, dict]:
    """One connection over 127.0.0.1. Returns (server_exc, client_exc, info).

    After the handshake both sides exchange one byte, so TLS 1.3 alerts that
    follow the client's Finished (client-cert rejection) surface on the client.
    """
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    lsock.settimeout(TIMEOUT)
    port = lsock.getsockname()[1]
    result: dict = {"server_exc": None}

    def serve() -> None:
        conn = None
        try:
            conn, _ = lsock.accept()
            conn.settimeout(TIMEOUT)
            with server_ctx.wrap_socket(conn, server_side=True) as s:
                result["server_peer"] = tls.peer_identities(s)
                if exchange:
                    s.recv(1)
                    s.sendall(b"y")
        except BaseException as exc:  # noqa: BLE001 - recorded for the test
            result["server_exc"] = exc
        finally:
            if conn is not None:
                conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    client_exc = None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="edge.corp.edgeway.test") as c:
                result["client_peer"] = tls.peer_identities(c)
                result["version"] = c.version()
                if exchange:
                    c.sendall(b"x")
                    if c.recv(1) != b"y":
                        raise ConnectionResetError("no reply")
    except BaseException as exc:  # noqa: BLE001
        client_exc = exc
    t.join(TIMEOUT)
    lsock.close()
    assert not t.is_alive()
    return result["server_exc"], client_exc, result


# --------------------------------------------------------------------------- pki


def test_write_lab_pki_files_and_chain(lab):
    edge = lab["edge"]
    assert set(edge) == {"cert", "key", "ca"}
    certs = x509.load_pem_x509_certificates(edge["cert"].read_bytes())
    ca = x509.load_pem_x509_certificate(edge["ca"].read_bytes())
    assert len(certs) == 2 and certs[1] == ca  # leaf then CA = full chain
    leaf = certs[0]
    assert leaf.issuer == ca.subject
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edge.corp.edgeway.test"
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["edge.corp.edgeway.test", "expe.edgeway.test"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.2"]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert stat.S_IMODE(edge["key"].stat().st_mode) == 0o600
    # default dns_sans = [common_name]
    core = pki.load_cert(lab["core"]["cert"])
    assert tls.peer_identities(core) == ["core.corp.edgeway.test", "core.corp.edgeway.test"]


def test_make_cert_eku_selection_and_errors():
    ca, key = pki.make_ca("T CA")
    srv, _ = pki.make_cert(ca, key, "s", ["s"], client=False)
    eku = srv.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    with pytest.raises(ValueError):
        pki.make_cert(ca, key, "s", ["s"], server=False, client=False)
    with pytest.raises(ValueError, match="not an IP"):
        pki.make_cert(ca, key, "s", ["s"], ["not-an-ip"])


def test_write_lab_pki_rejects_unknown_option(tmp_path):
    with pytest.raises(ValueError, match="dns_san"):
        pki.write_lab_pki(tmp_path, {"edge": {"dns_san": ["x"]}})


# --------------------------------------------------------------------------- contexts


def test_context_settings(lab):
    e = lab["edge"]
    s = tls.server_context(e["cert"], e["key"])
    assert s.verify_mode == ssl.CERT_NONE and not s.check_hostname
    assert s.minimum_version == ssl.TLSVersion.TLSv1_2
    s = tls.server_context(e["cert"], e["key"], e["ca"])
    assert s.verify_mode == ssl.CERT_OPTIONAL
    s = tls.server_context(e["cert"], e["key"], e["ca"], require_client_cert=True, min_version="1.3")
    assert s.verify_mode == ssl.CERT_REQUIRED
    assert s.minimum_version == ssl.TLSVersion.TLSv1_3
    names = {c["name"] for c in s.get_ciphers()}
    assert not any(("NULL" in n or "RC4" in n or "MD5" in n or "DES-CBC3" in n) for n in names)
    c = tls.client_context(ca_file=e["ca"])
    assert c.verify_mode == ssl.CERT_REQUIRED and not c.check_hostname
    with pytest.raises(ValueError):
        tls.server_context(e["cert"], e["key"], require_client_cert=True)
    with pytest.raises(ValueError):
        tls.client_context(ca_file=e["ca"], min_version="1.1")


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_mutual_tls_success_and_identities(lab, version):
    e, c = lab["edge"], lab["core"]
    server = tls.server_context(e["cert"], e["key"], e["ca"], require_client_cert=True)
    client = tls.client_context(c["cert"], c["key"], c["ca"], min_version=version)
    if version == "1.2":
        client.maximum_version = ssl.TLSVersion.TLSv1_2
    s_exc, c_exc, info = _handshake(server, client)
    assert s_exc is None and c_exc is None
    assert info["version"] == f"TLSv{version}"
    # client sees the edge: CN first, then DNS SANs in certificate order (IP SANs ignored)
    assert info["client_peer"] == ["edge.corp.edgeway.test", "edge.corp.edgeway.test", "expe.edgeway.test"]
    assert info["server_peer"] == ["core.corp.edgeway.test", "core.corp.edgeway.test"]
    assert tls.subject_name_matches(info["server_peer"], "CORE.corp.edgeway.test")
    assert tls.subject_name_matches(info["client_peer"], "expe.edgeway.test.")
    assert not tls.subject_name_matches(info["client_peer"], "edgeway.test")


def test_peer_identities_without_verification(lab):
    """A CERT_NONE client still gets names (parsed from the DER form)."""
    e = lab["edge"]
    server = tls.server_context(e["cert"], e["key"])
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    s_exc, c_exc, info = _handshake(server, client)
    assert s_exc is None and c_exc is None
    assert info["client_peer"][0] == "edge.corp.edgeway.test"
    assert info["server_peer"] == []


def test_subject_name_matching_rules():
    names = ["l2sip-cfa-01.ciscospark.com", "l2sip-cfa-01.wbx2.com", "callservice.ciscospark.com"]
    assert tls.subject_name_matches(names, "callservice.ciscospark.com")
    assert not tls.subject_name_matches(names, "calllservice.ciscospark.com")  # seed 003 M2 typo
    assert not tls.subject_name_matches(names, "*.ciscospark.com")  # no wildcards
    assert not tls.subject_name_matches(names, "")
    assert tls.first_matching_identity(names + ["CALLSERVICE.ciscospark.com"], "CallService.CiscoSpark.com") == names[2]
    d = {
        "subject": ((("organizationName", "X"),), (("commonName", "cn.test"),)),
        "subjectAltName": (("DNS", "a.test"), ("IP Address", "1.2.3.4"), ("DNS", "b.test")),
    }
    assert tls.peer_identities(d) == ["cn.test", "a.test", "b.test"]


# --------------------------------------------------------------------------- failures


def test_untrusted_ca_leaf_only(lab):
    r = lab["rogue_leaf"]
    server = tls.server_context(r["cert"], r["key"])
    client = tls.client_context(ca_file=lab["edge"]["ca"])
    s_exc, c_exc, _ = _handshake(server, client)
    assert isinstance(c_exc, ssl.SSLCertVerificationError)
    assert tls.describe_handshake_error(c_exc) == (
        "untrusted CA (certificate verify failed: unable to get local issuer certificate)"
    )
    assert tls.describe_handshake_error(s_exc) == "peer rejected our certificate (alert received: unknown ca)"


def test_untrusted_ca_full_chain(lab):
    """Seed 003 M1: a full chain to an unknown root reads 'self-signed ... in chain'."""
    r = lab["rogue_chain"]
    server = tls.server_context(r["cert"], r["key"])
    client = tls.client_context(ca_file=lab["edge"]["ca"])
    _, c_exc, _ = _handshake(server, client)
    text = tls.describe_handshake_error(c_exc)
    assert text.startswith("untrusted CA (certificate verify failed: self")
    assert "in certificate chain" in text


def test_untrusted_client_cert_seen_by_server(lab):
    e, r = lab["edge"], lab["rogue_leaf"]
    server = tls.server_context(e["cert"], e["key"], e["ca"], require_client_cert=True)
    client = tls.client_context(r["cert"], r["key"], e["ca"])
    s_exc, c_exc, _ = _handshake(server, client)
    assert tls.describe_handshake_error(s_exc).startswith("untrusted CA (certificate verify failed:")
    assert tls.describe_handshake_error(c_exc) == "peer rejected our certificate (alert received: unknown ca)"


def test_expired_server_cert(lab):
    x = lab["expired"]
    server = tls.server_context(x["cert"], x["key"])
    client = tls.client_context(ca_file=x["ca"])
    s_exc, c_exc, _ = _handshake(server, client)
    assert tls.describe_handshake_error(c_exc) == "certificate expired or not yet valid"
    assert tls.describe_handshake_error(s_exc) == (
        "peer rejected our certificate (alert received: certificate expired)"
    )


def test_not_yet_valid_cert(tmp_path):
    now = dt.datetime.now(dt.timezone.utc)
    p = pki.write_lab_pki(
        tmp_path, {"future": {"not_before": now + dt.timedelta(days=1), "not_after": now + dt.timedelta(days=9)}}
    )["future"]
    server = tls.server_context(p["cert"], p["key"])
    client = tls.client_context(ca_file=p["ca"])
    _, c_exc, _ = _handshake(server, client)
    assert tls.describe_handshake_error(c_exc) == "certificate expired or not yet valid"


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_no_client_cert_when_required(lab, version):
    e = lab["edge"]
    server = tls.server_context(e["cert"], e["key"], e["ca"], require_client_cert=True)
    client = tls.client_context(ca_file=e["ca"])
    client.maximum_version = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
    s_exc, c_exc, _ = _handshake(server, client)
    assert tls.describe_handshake_error(s_exc) == "no client certificate presented"
    assert c_exc is not None
    if version == "1.3":  # the server's certificate_required alert names the cause
        assert tls.describe_handshake_error(c_exc) == "no client certificate presented"


def test_peer_closes_without_alert(lab):
    """Seed 003 M4: something accepts TCP then closes during the handshake."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    lsock.settimeout(TIMEOUT)

    def close_after_hello() -> None:
        conn, _ = lsock.accept()
        conn.settimeout(TIMEOUT)
        try:
            conn.recv(4096)  # ClientHello
        finally:
            conn.close()

    t = threading.Thread(target=close_after_hello, daemon=True)
    t.start()
    client = tls.client_context(ca_file=lab["edge"]["ca"])
    exc = None
    try:
        with socket.create_connection(lsock.getsockname(), timeout=TIMEOUT) as raw:
            client.wrap_socket(raw, server_hostname="x").close()
    except BaseException as e:  # noqa: BLE001
        exc = e
    t.join(TIMEOUT)
    lsock.close()
    assert exc is not None
    assert tls.describe_handshake_error(exc) == (
        "peer closed the connection without an alert (middlebox suspected)"
    )


def test_describe_misc():
    assert tls.describe_handshake_error(TimeoutError()) == "handshake timed out"
    assert tls.describe_handshake_error(ConnectionResetError(104, "reset")).startswith("peer closed")
    e = ssl.SSLError(1, "x")
    e.reason = "SSLV3_ALERT_HANDSHAKE_FAILURE"
    assert tls.describe_handshake_error(e) == "TLS alert received: handshake failure"
    e.reason = "SSLV3_ALERT_CERTIFICATE_UNKNOWN"
    assert tls.describe_handshake_error(e) == "peer rejected our certificate (alert received: certificate unknown)"
    e.reason = "WRONG_VERSION_NUMBER"
    assert tls.describe_handshake_error(e) == "wrong version number"


def test_node_sends_its_full_chain_built_from_the_trust_store(tmp_path) -> None:
    """Seed 003 §3.1 / §14 case 6: a certificate file holding only the leaf still goes out
    with its issuers when they are in the trusted CA store."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from edgeway.security import pki
    from edgeway.security.tls import full_chain_pem

    root, root_key = pki.make_ca("Root CA")
    leaf, leaf_key = pki.make_cert(root, root_key, "edge.test", ["edge.test"])
    leaf_only = tmp_path / "leaf.pem"
    leaf_only.write_bytes(leaf.public_bytes(Encoding.PEM))
    store = tmp_path / "store.pem"
    other, _ = pki.make_ca("Unrelated CA")
    store.write_bytes(other.public_bytes(Encoding.PEM) + root.public_bytes(Encoding.PEM))
    chain = x509.load_pem_x509_certificates(full_chain_pem(leaf_only, store))
    assert [c.subject for c in chain] == [leaf.subject, root.subject]
    assert [c.subject for c in x509.load_pem_x509_certificates(full_chain_pem(leaf_only, None))] == [leaf.subject]
