"""Test tooling: drivers for SIPp, Kamailio and baresip, their scenarios and configs
(imported by tests/ and bench/; not part of the product)."""
