"""Lab PKI: a private CA and leaf certificates for loopback tests and ``edgeway lab``.

Everything here uses the ``cryptography`` library and EC P-256 keys. It is meant
for the lab and for tests, not as a production CA: keys are written unencrypted
(with mode 0600) and there is no revocation.

Typical use::

    ca_cert, ca_key = make_ca("Edgeway Lab CA")
    cert, key = make_cert(ca_cert, ca_key, "edge.corp.edgeway.test",
                          ["edge.corp.edgeway.test"], ["127.0.0.2"])

or, for a whole lab, :func:`write_lab_pki`.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from pathlib import Path
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "PrivateKey",
    "make_ca",
    "make_cert",
    "write_pem",
    "write_lab_pki",
    "load_cert",
    "DEFAULT_CA_VALIDITY",
    "DEFAULT_CERT_VALIDITY",
    "CLOCK_SKEW_ALLOWANCE",
]

PrivateKey = ec.EllipticCurvePrivateKey

#: Lifetime of a lab CA certificate (10 years; the lab CA is regenerated freely).
DEFAULT_CA_VALIDITY = _dt.timedelta(days=3650)
#: Lifetime of a lab leaf certificate (1 year, well under the 398-day public-CA cap).
DEFAULT_CERT_VALIDITY = _dt.timedelta(days=365)
#: notBefore is back-dated by this much so that small clock differences between
#: lab processes (or a VM whose clock lags) do not make fresh certs "not yet valid".
CLOCK_SKEW_ALLOWANCE = _dt.timedelta(hours=1)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, organization: str | None = "Edgeway Lab") -> x509.Name:
    attrs = []
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def make_ca(
    common_name: str,
    *,
    not_before: _dt.datetime | None = None,
    not_after: _dt.datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """Create a self-signed root CA.

    Args:
        common_name: subject and issuer CN, e.g. ``"Edgeway Lab CA"``.
        not_before / not_after: validity window (timezone-aware datetimes);
            defaults are now minus :data:`CLOCK_SKEW_ALLOWANCE` and now plus
            :data:`DEFAULT_CA_VALIDITY`.

    Returns:
        ``(certificate, private_key)``. The certificate has
        ``basicConstraints CA:TRUE, pathlen:0`` and ``keyUsage
        keyCertSign, cRLSign`` (critical), so it can sign leaves only.
    """
    key = _new_key()
    now = _now()
    nb = not_before or (now - CLOCK_SKEW_ALLOWANCE)
    na = not_after or (now + DEFAULT_CA_VALIDITY)
    name = _name(common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(nb)
        .not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_cert(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    common_name: str,
    dns_sans: list[str],
    ip_sans: list[str] = [],  # noqa: B006 - never mutated
    *,
    server: bool = True,
    client: bool = True,
    not_before: _dt.datetime | None = None,
    not_after: _dt.datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """Issue a leaf certificate signed by ``ca_cert`` / ``ca_key``.

    Args:
        ca_cert, ca_key: the issuing CA (from :func:`make_ca`).
        common_name: subject CN (e.g. ``"core.corp.edgeway.test"``); peers may
            match it as the TLS verify subject name.
        dns_sans: dNSName subjectAltNames, in this order (order matters for
            identity logging, see :func:`edgeway.security.tls.peer_identities`).
        ip_sans: iPAddress subjectAltNames as text (``"127.0.0.2"``, ``"::1"``).
        server / client: which extendedKeyUsage purposes to include
            (``serverAuth`` / ``clientAuth``). Traversal links are mutual TLS,
            so the default is both. At least one must be true.
        not_before / not_after: validity window (timezone-aware datetimes).
            Defaults: now minus :data:`CLOCK_SKEW_ALLOWANCE`, now plus
            :data:`DEFAULT_CERT_VALIDITY`. Pass a past ``not_after`` to make an
            expired certificate for tests.

    Returns:
        ``(certificate, private_key)`` with a fresh P-256 key.

    Raises:
        ValueError: neither ``server`` nor ``client``, or an invalid IP SAN.
    """
    if not (server or client):
        raise ValueError("make_cert: at least one of server= or client= must be true")
    key = _new_key()
    now = _now()
    nb = not_before or (now - CLOCK_SKEW_ALLOWANCE)
    na = not_after or (now + DEFAULT_CERT_VALIDITY)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_sans]
    for ip in ip_sans:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError as exc:
            raise ValueError(f"make_cert: ip_sans entry {ip!r} is not an IP address") from exc
    ekus = []
    if server:
        ekus.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        ekus.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(nb)
        .not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert, key


PemObject = Union[x509.Certificate, PrivateKey]


def _pem_bytes(obj: PemObject) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    if isinstance(obj, ec.EllipticCurvePrivateKey) or hasattr(obj, "private_bytes"):
        return obj.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    raise TypeError(f"write_pem: cannot serialise {type(obj).__name__}")


def write_pem(path: Path | str, *objs: PemObject) -> Path:
    """Write one or more certificates / private keys to ``path`` in PEM.

    Several objects are concatenated in the given order (e.g. leaf then CA for a
    full chain). Private keys are written unencrypted (PKCS#8) and the file mode
    is set to 0600 whenever a key is included; certificate-only files get 0644.

    Returns:
        ``Path(path)``.

    Raises:
        TypeError: an object is neither a certificate nor a private key.
    """
    p = Path(path)
    if not objs:
        raise TypeError("write_pem: nothing to write")
    data = b"".join(_pem_bytes(o) for o in objs)
    secret = any(not isinstance(o, x509.Certificate) for o in objs)
    mode = 0o600 if secret else 0o644
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(p, mode)
    return p


def write_lab_pki(
    directory: Path | str,
    nodes: dict[str, dict],
    *,
    ca_common_name: str = "Edgeway Lab CA",
) -> dict[str, dict[str, Path]]:
    """Create a CA and one certificate per node, written under ``directory``.

    Args:
        directory: created if missing. Files written: ``ca.pem`` (CA cert),
            ``ca.key`` (CA key, so more certs can be issued later), and per node
            ``<name>.pem`` (leaf cert followed by the CA cert: the full chain an
            endpoint should send) and ``<name>.key``.
        nodes: ``{name: options}``. Options (all optional):
            ``common_name`` (default: the node name), ``dns_sans`` (default:
            ``[common_name]``), ``ip_sans`` (default ``[]``), ``server`` /
            ``client`` (default both true), ``not_before`` / ``not_after``.
            Example: ``{"edge": {"common_name": "edge.corp.edgeway.test",
            "ip_sans": ["127.0.0.2"]}}``.
        ca_common_name: CN of the lab CA.

    Returns:
        ``{name: {"cert": Path, "key": Path, "ca": Path}}``.

    Raises:
        ValueError: a node name that is not a plain file stem, or an unknown
            option key (so typos do not silently produce a wrong cert).
    """
    allowed = {"common_name", "dns_sans", "ip_sans", "server", "client", "not_before", "not_after"}
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name, opts in nodes.items():
        if not name or "/" in name or "\\" in name or name.startswith(".") or name == "ca":
            raise ValueError(f"write_lab_pki: node name {name!r} is not usable as a file name")
        unknown = set(opts) - allowed
        if unknown:
            raise ValueError(
                f"write_lab_pki: node {name!r} has unknown option(s) {sorted(unknown)}; "
                f"allowed: {sorted(allowed)}"
            )
    ca_cert, ca_key = make_ca(ca_common_name)
    ca_path = write_pem(d / "ca.pem", ca_cert)
    write_pem(d / "ca.key", ca_key)
    out: dict[str, dict[str, Path]] = {}
    for name, opts in nodes.items():
        cn = opts.get("common_name", name)
        cert, key = make_cert(
            ca_cert,
            ca_key,
            cn,
            list(opts.get("dns_sans", [cn])),
            list(opts.get("ip_sans", [])),
            server=opts.get("server", True),
            client=opts.get("client", True),
            not_before=opts.get("not_before"),
            not_after=opts.get("not_after"),
        )
        cert_path = write_pem(d / f"{name}.pem", cert, ca_cert)
        key_path = write_pem(d / f"{name}.key", key)
        out[name] = {"cert": cert_path, "key": key_path, "ca": ca_path}
    return out


def load_cert(path: Path | str) -> x509.Certificate:
    """Load the first certificate of a PEM file (e.g. the leaf of a chain file)."""
    return x509.load_pem_x509_certificates(Path(path).read_bytes())[0]

