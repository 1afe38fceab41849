"""Automated intrusion protection (edgeway.security.intrusion), sans-IO."""

from __future__ import annotations

import pytest

from edgeway.security.intrusion import CATEGORIES, Category, IntrusionProtection

SIP = "sip_authentication_failure"


def test_more_than_trigger_level_within_the_window_bans_for_ban_s() -> None:
    ip = IntrusionProtection()  # seed defaults: more than 5 → 10 minutes
    assert [ip.failure(SIP, "192.0.2.7", t) for t in range(6)] == [False] * 5 + [True]
    assert ip.blocked("192.0.2.7", 10.0) and not ip.blocked("192.0.2.8", 10.0)
    assert ip.refuse("192.0.2.7", 10.0) and ip.stats["refused"] == 1
    [row] = ip.blocked_list(10.0)
    assert row["category"] == SIP and row["failures"] == 6 and row["seconds_left"] == pytest.approx(595.0)
    assert not ip.blocked("192.0.2.7", 5 + 600.0)  # the ban ended


def test_failures_outside_the_window_do_not_count() -> None:
    ip = IntrusionProtection({SIP: Category(trigger_level=2, detection_window_s=10, ban_s=60)})
    assert not ip.failure(SIP, "192.0.2.7", 0.0)
    assert not ip.failure(SIP, "192.0.2.7", 5.0)
    assert not ip.failure(SIP, "192.0.2.7", 12.0)  # the one at 0 s left the window
    assert ip.failure(SIP, "192.0.2.7", 13.0)


def test_categories_count_separately_and_resource_access_is_off_by_default() -> None:
    ip = IntrusionProtection({name: Category(trigger_level=1) for name in CATEGORIES if name != "http_proxy_resource_access_failure"})
    assert not ip.failure("http_proxy_authorization_failure", "198.51.100.1", 0)
    assert not ip.failure("http_proxy_protocol_violation", "198.51.100.1", 0)
    assert ip.failure("http_proxy_authorization_failure", "198.51.100.1", 1)
    assert not any(ip.failure("http_proxy_resource_access_failure", "198.51.100.2", t) for t in range(50))
    assert not ip.blocked("198.51.100.2", 60)


def test_exemptions_and_unblock() -> None:
    ip = IntrusionProtection({SIP: Category(trigger_level=0)}, exempt=["10.0.0.0/8", "2001:db8::/32"])
    assert not ip.failure(SIP, "10.1.2.3", 0) and not ip.failure(SIP, "2001:db8::5", 0)
    assert ip.failure(SIP, "192.0.2.1", 0)
    assert ip.unblock("192.0.2.1") and not ip.blocked("192.0.2.1", 1) and not ip.unblock("192.0.2.1")


def test_unknown_category_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown intrusion protection category"):
        IntrusionProtection({"bogus": Category()})
    with pytest.raises(ValueError):
        IntrusionProtection().failure("bogus", "192.0.2.1", 0)


def test_tracking_is_bounded() -> None:
    ip = IntrusionProtection(max_tracked=100)
    for i in range(10_000):
        ip.failure(SIP, f"10.{i // 250}.{i % 250}.9", float(i))
    assert len(ip._records) <= 100
