"""``edgeway domain verify``: is a verification token published in a domain's TXT records?

Seed 000 (domain verification for the cloud service): the organisation proves it owns a
domain by publishing a token the cloud issued as a DNS TXT record. This command looks the
records up with dnspython and reports whether the token is among them.
"""

from __future__ import annotations

import asyncio

import typer

domain_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Domain ownership checks (DNS TXT).")


async def txt_records(domain: str, server: str | None, timeout_s: float) -> list[str]:
    """TXT strings of ``domain`` (each record's strings joined), through ``server``
    ("ip" or "ip:port") or the system resolver when None. Empty list when none exist;
    raises ``dns.exception.DNSException`` subclasses on timeouts and server failures."""
    import dns.asyncresolver
    import dns.resolver

    from ..config.models import split_hostport
    from ..routing.resolver import make_resolver

    if server:
        resolver = make_resolver([split_hostport(server, 53)], timeout_s)
    else:
        resolver = dns.asyncresolver.Resolver()
        resolver.lifetime = timeout_s
    try:
        answer = await resolver.resolve(domain, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]


def token_present(records: list[str], token: str) -> bool:
    """True when ``token`` appears in a TXT string, alone or as ``name=<token>``."""
    return any(r == token or r.split("=", 1)[-1] == token for r in records)


@domain_app.command("verify")
def verify(
    domain: str,
    token: str = typer.Option(..., "--token", help="verification token the cloud issued"),
    server: str = typer.Option(None, "--server", help="DNS server ip[:port] (default: the system resolver)"),
    timeout: float = typer.Option(3.0, "--timeout", help="seconds"),
) -> None:
    """Report whether TOKEN is published in DOMAIN's TXT records; exit 0 if verified, 1 if not, 2 on DNS errors."""
    import dns.exception

    try:
        records = asyncio.run(txt_records(domain, server, timeout))
    except dns.exception.DNSException as exc:
        typer.echo(f"{domain}: TXT lookup failed: {exc}", err=True)
        raise typer.Exit(2)
    if token_present(records, token):
        typer.echo(f"{domain}: verified (token found in TXT records)")
        return
    shown = "; ".join(records) if records else "no TXT records"
    typer.echo(f"{domain}: NOT verified (token not in TXT records: {shown})")
    raise typer.Exit(1)
