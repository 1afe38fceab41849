"""``edgeway check-pattern`` (issue 11 item 3; seed 003 §11 "Check pattern", catalogue
case 24): one alias against one pattern, offline, as transforms and search rules apply it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeway.routing.transforms import check_alias


def test_catalogue_case_24() -> None:
    ok = check_alias("cucm.rtp.ciscotac.net", "prefix", "cucm.rtp.ciscotac.net", "leave")
    assert ok.succeeded and ok.result == "cucm.rtp.ciscotac.net"
    ok = check_alias("pstojano-test@dmzlab.call.ciscospark.com", "regex", r".*@.*\.ciscospark\.com")
    assert ok.succeeded
    no = check_alias("bob@example.com", "regex", r".*@.*\.ciscospark\.com")
    assert not no.succeeded and no.result is None and "does not match the whole alias" in no.detail


@pytest.mark.parametrize("alias,ptype,pattern,behaviour,replace,domains,result", [
    ("alice@corp.test", "suffix", "@corp.test", "strip", "", (), "alice"),
    ("alice@corp.test", "suffix", "@%localdomains%", "replace", "@new.test", ("corp.test",), "alice@new.test"),
    ("alice@corp.test", "regex", r"(.*)@%localdomains%", "replace", r"\1@x.test", ("corp.test",), "alice@x.test"),
    ("ALICE@Corp.Test", "exact", "alice@corp.test", "leave", "", (), "ALICE@Corp.Test"),  # case-insensitive
    ("9123", "prefix", "9", "strip", "", (), "123"),
    ("alice@corp.test", "regex", r".*@%localdomains%", "leave", "", (), None),  # no local domains: matches nothing
    ("alice@corp.test.evil", "suffix", "@corp.test", "leave", "", (), None),
])
def test_behaviours(alias, ptype, pattern, behaviour, replace, domains, result) -> None:
    res = check_alias(alias, ptype, pattern, behaviour, replace, domains)
    assert res.result == result and res.succeeded == (result is not None), res


@pytest.mark.parametrize("ptype,pattern,behaviour,replace,why", [
    ("regex", "(", "leave", "", "valid regular expression"),
    ("regex", "(a)", "replace", r"\2", "group"),
    ("glob", "*", "leave", "", "unknown pattern type"),
    ("prefix", "a", "rewrite", "", "unknown pattern behaviour"),
])
def test_invalid_inputs_fail_with_a_reason(ptype, pattern, behaviour, replace, why) -> None:
    res = check_alias("a", ptype, pattern, behaviour, replace)
    assert not res.succeeded and why in res.detail, res


def test_command_line() -> None:
    run = [sys.executable, "-m", "edgeway", "check-pattern"]
    ok = subprocess.run([*run, "cucm.rtp.ciscotac.net", "-t", "prefix", "-p", "cucm.rtp.ciscotac.net"],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and ok.stdout.startswith("Succeeded"), ok
    bad = subprocess.run([*run, "bob@example.com", "-t", "regex", "-p", r".*@.*\.ciscospark\.com", "--json"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and json.loads(bad.stdout)["succeeded"] is False, bad
