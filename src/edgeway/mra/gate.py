"""The one place the core asks the HTTP allow list (seed 002 §8.5-§8.8; issue 9 item 3) whether
a proxied request ``/<base64(domain)>/<http|https>/<host>/<port>/<path…>`` may be forwarded.

The matcher itself is :mod:`edgeway.mra.allowlist` (``parse_proxied_path``, ``AllowList.check``,
``AllowList.from_config``); this adapter only calls it and turns its answer into a
:class:`Verdict`. A gate without an allow list is closed: every proxied request is refused 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..config.models import MraConfig
from .allowlist import AllowList, parse_proxied_path

__all__ = ["Verdict", "AllowListLike", "Gate", "gate_from_config"]

DEFAULT_DEPLOYMENT = "Default deployment"


@dataclass(frozen=True, slots=True)
class Verdict:
    """``status`` 200 (forward ``url``, the normalised URL: the ONLY thing that may be
    forwarded), 400 (target cannot be decoded) or 403 (blocked); ``reason`` for the event log."""

    status: int
    reason: str
    url: str | None = None
    rule: str | None = None


class AllowListLike(Protocol):
    """What the gate needs of an allow list (``edgeway.mra.allowlist.AllowList``)."""

    def check(self, method: str, target: str, deployment: str = DEFAULT_DEPLOYMENT) -> Any: ...


class Gate:
    """Decides proxied requests with ``allow_list`` (None: closed, everything 403).
    ``parse`` decodes the proxied path into an object with ``.url`` and raises ``ValueError``
    (``TargetError``) when it cannot; default :func:`edgeway.mra.allowlist.parse_proxied_path`."""

    def __init__(self, allow_list: AllowListLike | None, parse: Any = None):
        self.allow_list = allow_list
        self.parse = parse or parse_proxied_path

    def decide(self, method: str, raw_path: str, deployment: str = DEFAULT_DEPLOYMENT) -> Verdict:
        """Decode ``raw_path`` and ask the allow list about ``method`` on it."""
        if self.allow_list is None:
            return Verdict(403, "no HTTP allow list: closed")
        try:
            target = self.parse(raw_path)
        except ValueError as exc:  # TargetError is a ValueError
            return Verdict(400, f"cannot decode proxied path: {getattr(exc, 'reason', exc)}")
        d = self.allow_list.check(method, target.url, deployment)
        if not d.allowed:
            return Verdict(d.status if d.status in (400, 403) else 403, d.reason, None, d.rule)
        return Verdict(200, d.reason, d.url, d.rule)


def gate_from_config(mra: MraConfig) -> Gate:
    """The gate of a node's ``[mra]`` section: ``AllowList.from_config(mra)``."""
    return Gate(AllowList.from_config(mra))
