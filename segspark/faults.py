"""Named fault points, so tests can stop a process at an exact place in a write.

Set ``SEGSPARK_FAULT=<point>[:action]`` (several separated by commas); ``action`` is ``raise``
(default: an :class:`InjectedFault` is raised) or ``kill`` (the process sends itself SIGKILL, as
an external kill would). Points are named ``<module>.<moment>``, e.g. ``lake.before_commit``.
With the variable unset a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal


class InjectedFault(RuntimeError):
    """Raised at a fault point armed with the ``raise`` action."""


def _armed() -> dict[str, str]:
    spec = os.environ.get("SEGSPARK_FAULT", "")
    armed: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition(":")
        armed[name] = action or "raise"
    return armed


def point(name: str) -> None:
    """Trigger the fault armed for ``name``, if any."""
    action = _armed().get(name)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"fault injected at {name}")
