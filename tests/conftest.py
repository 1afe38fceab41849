"""Shared test fixtures and paths."""

from __future__ import annotations

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
if not SHARED.exists():  # CI clones main next to shared/
    SHARED = pathlib.Path("/work/shared")
RFC4475 = SHARED / "conformance" / "rfc4475"
