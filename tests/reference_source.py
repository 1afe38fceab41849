"""The SIP and SDP parsers as they were before the fast paths (commit 3d1db24), read
from the repository's history at test time: the oracle the equivalence tests compare
the current parsers with (tests/test_sip_fastpaths.py, tests/test_sdp.py). Keeping them
as history rather than as copies in the tree means there is one parser in the code.

:func:`load` returns a module built from the listed files of that revision; a checkout
without that history (a shallow clone) skips the tests that need it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

#: The revision whose parsers are the reference.
REFERENCE_REV = "3d1db24"
_ROOT = Path(__file__).resolve().parents[1]


def _show(path: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(_ROOT), "show", f"{REFERENCE_REV}:{path}"],
                             capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"the reference parsers need git history ({REFERENCE_REV}): {exc}", allow_module_level=True)
    return out.stdout


def load(name: str, *paths: str) -> types.ModuleType:
    """One module made of the files ``paths`` (repository paths) of the reference
    revision, in order, with their package-relative imports of each other removed."""
    if name in sys.modules:
        return sys.modules[name]
    parts = []
    for p in paths:
        text = _show(p)
        text = re.sub(r"^from \.\w+ import \((?:[^)]*)\)\n|^from \.\w+ import [^\n]*\n", "", text, flags=re.M)
        text = text.replace("from __future__ import annotations\n", "")
        parts.append(text)
    mod = types.ModuleType(name)
    mod.__file__ = f"<{REFERENCE_REV}:{','.join(paths)}>"
    sys.modules[name] = mod
    exec(compile("from __future__ import annotations\n" + "\n".join(parts), mod.__file__, "exec"), mod.__dict__)
    return mod
