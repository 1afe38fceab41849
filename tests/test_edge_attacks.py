"""The lab edge under attack (issue 7 "Checked by"), with ``bench/attack.py``'s attacks
run short: a lab with product logging (``edgeway lab up --no-ladder``), SIPp as the
legitimate caller and callee, the attacker on 127.0.1.x. Loopback only."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from support.harness import LabUp, sipp_available

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import attack  # noqa: E402

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")


@pytest.fixture(scope="module")
def product_lab(tmp_path_factory):
    up = LabUp(tmp_path_factory.mktemp("attack") / "lab", ["--no-ladder"])
    up.start()
    yield up
    up.stop()


def test_invite_flood_from_one_source(product_lab: LabUp, tmp_path: Path) -> None:
    """5,000 INVITEs/s from one UDP source (4 s here, 10 s in the bench): 5 legitimate
    calls from another source succeed with setup under 500 ms, the attacker gets back
    fewer bytes than it sent, and the edge's event log grows by less than 5 MB."""
    res = attack.run_attack("invite-flood", lambda s, c: attack.invite_flood(s, c, 5000, 4.0), product_lab, tmp_path,
                            settle_s=0.0)
    assert res.legit_ok == attack.LEGIT_CALLS, res.row()
    assert max(res.setup_ms) < 500, res.row()
    assert res.sent > 5000 * 3 * 300, res.row()  # the flood really ran (bytes)
    assert res.received <= res.sent, res.row()
    assert res.log_mb < 5.0, res.row()


def test_trickled_message_costs_little(product_lab: LabUp, tmp_path: Path) -> None:
    """A 57 KB message written one byte per segment: legitimate calls go on, and the edge
    spends well under a second of CPU on it (the bench prints the exact figure)."""
    res = attack.run_attack("trickle", attack.trickle, product_lab, tmp_path, settle_s=0.0)
    assert res.legit_ok == attack.LEGIT_CALLS, res.row()
    assert res.cpu_s < 3.0, res.row()  # includes the 5 calls and the node's idle work
