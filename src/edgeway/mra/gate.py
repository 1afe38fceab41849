"""The one place the core asks the HTTP allow list (seed 002 §8.5-§8.8; issue 9 item 3) whether
a proxied request ``/<base64(domain)>/<http|https>/<host>/<port>/<path…>`` may be forwarded.

The matcher itself is :mod:`edgeway.mra.allowlist` (``parse_proxied_path``, ``AllowList.check``,
``AllowList.from_config``); this adapter only calls it and turns its answer into a
:class:`Verdict`. A gate without an allow list is closed: every proxied request is refused 403.

Deployments (seed 002 §3; issue 9 item 7): the request is checked against the rules of the
deployment of the domain in its first path segment (``deployment_of``, from the node's
``[mra]`` section: :meth:`MraConfig.deployment_of`), so a rule of one deployment never allows
a request that arrives for a domain of another; a domain that is not served is refused 404.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..config.models import DEFAULT_DEPLOYMENT, MraConfig
from .allowlist import AllowList, parse_proxied_path

__all__ = ["Verdict", "AllowListLike", "Gate", "gate_from_config"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """``status`` 200 (forward ``url``, the normalised URL: the ONLY thing that may be
    forwarded), 400 (target cannot be decoded), 403 (blocked) or 404 (the domain is not
    served); ``reason`` for the event log; ``deployment`` the deployment whose rules decided
    (None when none did: 400, 404, closed gate)."""

    status: int
    reason: str
    url: str | None = None
    rule: str | None = None
    deployment: str | None = None


class AllowListLike(Protocol):
    """What the gate needs of an allow list (``edgeway.mra.allowlist.AllowList``)."""

    def check(self, method: str, target: str, deployment: str = DEFAULT_DEPLOYMENT) -> Any: ...


class Gate:
    """Decides proxied requests with ``allow_list`` (None: closed, everything 403).
    ``parse`` decodes the proxied path into an object with ``.url`` (and ``.domain``) and
    raises ``ValueError`` (``TargetError``) when it cannot; default
    :func:`edgeway.mra.allowlist.parse_proxied_path`. ``deployment_of`` maps the decoded
    domain to its deployment, None for a domain that is not served; without it every request
    is checked against the default deployment's rules."""

    def __init__(self, allow_list: AllowListLike | None, parse: Any = None,
                 deployment_of: Callable[[str], str | None] | None = None):
        self.allow_list = allow_list
        self.parse = parse or parse_proxied_path
        self.deployment_of = deployment_of

    def decide(self, method: str, raw_path: str, deployment: str | None = None) -> Verdict:
        """Decode ``raw_path`` and ask the allow list about ``method`` on it, with the rules
        of ``deployment``; None: the deployment of the path's domain (404 when the domain is
        not served)."""
        if self.allow_list is None:
            return Verdict(403, "no HTTP allow list: closed")
        try:
            target = self.parse(raw_path)
        except ValueError as exc:  # TargetError is a ValueError
            return Verdict(400, f"cannot decode proxied path: {getattr(exc, 'reason', exc)}")
        if deployment is None:
            if self.deployment_of is None:
                deployment = DEFAULT_DEPLOYMENT
            else:
                domain = getattr(target, "domain", None)
                deployment = self.deployment_of(domain) if domain else None
                if deployment is None:
                    return Verdict(404, f"unknown domain {domain!r}")
        d = self.allow_list.check(method, target.url, deployment)
        if not d.allowed:
            return Verdict(d.status if d.status in (400, 403) else 403, d.reason, None, d.rule, deployment)
        return Verdict(200, d.reason, d.url, d.rule, deployment)


def gate_from_config(mra: MraConfig) -> Gate:
    """The gate of a node's ``[mra]`` section: ``AllowList.from_config(mra)`` (automatic rules
    in their server's deployment, editable rules in theirs), each request checked with the
    deployment of its domain (:meth:`MraConfig.deployment_of`)."""
    return Gate(AllowList.from_config(mra), deployment_of=mra.deployment_of)
