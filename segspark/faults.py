"""Named fault points, so tests can stop a process at an exact place in a write.

Set ``SEGSPARK_FAULT=<point>[:action]`` (several separated by commas); ``action`` is ``raise``
(default: an :class:`InjectedFault` is raised) or ``kill`` (the process sends itself SIGKILL, as
an external kill would). Points are named ``<module>.<moment>``, e.g. ``lake.before_commit``.
A point reached for one table (:func:`table_point`) also answers to ``<point>@<table>``, so
``lake.after_commit@segment_snapshots:kill`` stops a job right after its snapshot commit and at
no earlier write. With the variable unset a point costs one dictionary lookup.

The points (a ``segspark run`` reaches them in this order; ingest has its own):

* ``lake.before_write`` / ``lake.after_files`` / ``lake.before_commit`` / ``lake.after_commit``:
  every lake write (delta-rs backend: before Spark writes the staged files, after it wrote them,
  after they moved into the table before the log commit, after the commit).
* ``ingest.between_commits``: between the bronze and the quarantine commit of an ingest.
* ``snapshots.after_registry``: between the segment registry and the snapshot commit.
* ``segmentation.before_promote``: after the snapshot and profiles of a train, before the
  model becomes champion.
* ``segmentation.before_migrate``: after the snapshot and profiles of a run, before the
  migration tables.

Example:
    >>> os.environ["SEGSPARK_FAULT"] = "lake.before_commit@segment_snapshots:kill"
    >>> table_point("lake.before_commit", "segment_profiles")  # not armed here: returns
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


def table_point(name: str, table: str) -> None:
    """Trigger the fault armed for ``name`` (any table), then the one for ``name@table``."""
    point(name)
    point(f"{name}@{table}")
