"""Named errors raised at segspark's public boundaries.

Every error carries the process exit code the CLI uses for it (DESIGN.md): 2 for bad usage,
config or input that made a step impossible (nothing written); 1 for runtime failures and
write conflicts (nothing half-written).
"""

from __future__ import annotations


class SegsparkError(Exception):
    """Base class: a failure a user should see as one clear line."""

    exit_code = 1


class UsageError(SegsparkError, ValueError):
    """Bad arguments or a bad request (exit code 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """An unknown key or a wrong type in the configuration (exit code 2)."""


class InputError(UsageError):
    """Input that cannot be used: missing column, unreadable file, empty input (exit code 2)."""


class TableNotFoundError(UsageError):
    """A lake table that does not exist (exit code 2)."""


class SchemaMismatchError(UsageError):
    """Data whose schema does not match the table's (exit code 2, nothing written)."""


class UnsupportedTableError(UsageError):
    """A Delta table using features this backend cannot read correctly (exit code 2)."""


class ReadOnlyViolationError(UsageError):
    """A statement that is not a single read-only query (exit code 2)."""


class WriteConflictError(SegsparkError):
    """A concurrent writer won the commit (exit code 1, nothing partial is visible)."""


class TrackingError(SegsparkError):
    """The MLflow tracking store is unreachable or failed (exit code 1)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (``docker stop``, Kubernetes, a cluster manager's kill; exit code 143).

    A :class:`KeyboardInterrupt`, so it unwinds like Ctrl-C: an MLflow step run ends KILLED.
    """
