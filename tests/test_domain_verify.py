"""``edgeway domain verify`` against the lab DNS zone's TXT record (seed 000)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from edgeway.lab.dns_server import LabDnsServer
from edgeway.lab.topology import CORP_DOMAIN, VERIFICATION_TOKEN, LabTopology


def _verify(port: int, token: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgeway", "domain", "verify", CORP_DOMAIN, "--token", token, "--server", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=30,
    )


def test_domain_verify_against_lab_dns() -> None:
    async def scenario() -> tuple:
        dns = LabDnsServer(LabTopology().dns_records(), host="127.0.0.1", port=0)
        await dns.start()
        try:
            good = await asyncio.to_thread(_verify, dns.port, VERIFICATION_TOKEN)
            bad = await asyncio.to_thread(_verify, dns.port, "not-the-token")
        finally:
            await dns.close()
        return good, bad

    good, bad = asyncio.run(scenario())
    assert good.returncode == 0 and "verified" in good.stdout, good.stdout + good.stderr
    assert bad.returncode == 1 and "NOT verified" in bad.stdout and VERIFICATION_TOKEN in bad.stdout
