"""Shared test fixtures and paths."""

from __future__ import annotations

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
if not SHARED.exists():  # CI clones main next to shared/
    SHARED = pathlib.Path("/work/shared")
RFC4475 = SHARED / "conformance" / "rfc4475"


@pytest.fixture(scope="module")
def lab(request, tmp_path_factory):
    """``edgeway lab up`` as a process for one test module (see
    :class:`support.harness.LabUp`), stopped by its PID after the module."""
    from support.harness import LabUp

    up = LabUp(tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2]) / "lab")
    up.start()
    yield up
    up.stop()
