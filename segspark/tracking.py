"""MLflow tracking: where runs go, one experiment per domain, one run per step.

The tracking URI resolves as ``--tracking-uri`` > ``MLFLOW_TRACKING_URI`` > ``tracking.uri`` >
a SQLite store inside the lake root (``<lake>/_mlflow/mlflow.db``, artifacts in
``<lake>/_mlflow/artifacts``). Experiments are named ``segspark/<domain>``; every
``features``/``train``/``score`` invocation is one run tagged with ``step``, ``domain``,
``as_of``, ``config_hash``, ``git_commit`` and ``segspark_version`` (DESIGN.md, "MLflow
conventions").

Outages. Calls to an ``http(s)`` server are bounded by ``tracking.timeout_s`` per request and
``tracking.max_retries`` retries (:func:`configure`). With ``tracking.required: true`` (the
default) an unreachable store fails the step with one :class:`~segspark.errors.TrackingError`
line before anything is written. With ``tracking.required: false`` the store is probed once per
process when a step first uses it; if it cannot be reached, the process records its runs, models
and champion alias in a local fallback SQLite store inside the lake root
(``<lake>/_mlflow/fallback/mlflow.db``, artifacts in ``<lake>/_mlflow/fallback/artifacts``) and
logs one warning line saying so (:func:`effective_uri`). The fallback is never merged back into
the configured store: open it with ``segspark --tracking-uri sqlite:///<lake>/_mlflow/fallback/
mlflow.db ui``. A store that fails after the probe still fails the step, and a lake on remote
storage has no fallback (the step fails as with ``required: true``).

Example:
    >>> settings = load_settings(env="test", overrides=["lake.root=/tmp/lake"])
    >>> uri = resolve_tracking_uri(None, settings)
    >>> with step_run(settings, uri, domain="retail", step="train", as_of="2024-06-30") as run:
    ...     mlflow.log_metric("silhouette", 0.61)
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse, urlsplit, urlunsplit

from segspark import __version__
from segspark.config import DOMAINS, Settings
from segspark.errors import ConfigError, TrackingError, UsageError

if TYPE_CHECKING:
    from mlflow.entities import Run

log = logging.getLogger(__name__)

STORE_DIR = "_mlflow"
"""Folder under the lake root holding the default store, its artifacts and its init lock."""

FALLBACK_DIR = "fallback"
"""Folder under :data:`STORE_DIR` holding the store used while the configured one is down."""

TAG_KEYS = ("step", "domain", "as_of", "config_hash", "git_commit", "segspark_version")
"""Tags every step run carries; callers' extra tags may not reuse these keys."""

_REMOTE_SCHEMES = frozenset({"http", "https", "databricks"})
_DATABASE_SCHEMES = frozenset({"sqlite", "postgresql", "mysql", "mssql"})

_ready_lock = threading.Lock()
_ready_stores: set[str] = set()
_probe_lock = threading.Lock()
_effective: dict[tuple[str, str], str] = {}


# --- where the store lives -------------------------------------------------------------------


def _scheme(uri: str) -> str:
    scheme = urlparse(uri).scheme.lower()
    # "postgresql+psycopg2" -> "postgresql": SQLAlchemy's dialect+driver form.
    return scheme.split("+", 1)[0]


def _local_lake_root(settings: Settings) -> Path | None:
    """The lake root as an absolute local path, or None when it is remote storage."""
    root = settings.lake.root
    parsed = urlparse(root)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path)).absolute()
    if parsed.scheme and len(parsed.scheme) > 1:
        return None
    return Path(root).expanduser().absolute()


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (absolute), None for in-memory or non-SQLite."""
    if _scheme(uri) != "sqlite" or not uri.startswith(("sqlite:///", "sqlite+")):
        return None
    rest = uri.split(":///", 1)[1] if ":///" in uri else ""
    rest = rest.split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest).absolute()


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***``, safe to print and log.

    Example:
        >>> redact("postgresql://ml:secret@db:5432/mlflow")
        'postgresql://ml:***@db:5432/mlflow'
    """
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def default_store_uri(settings: Settings) -> str:
    """The SQLite store inside the lake root: ``sqlite:///<abs lake root>/_mlflow/mlflow.db``.

    Raises :class:`~segspark.errors.ConfigError` when the lake root is remote storage
    (``s3a://``, ``hdfs://`` ...), where SQLite cannot live.

    Example:
        >>> default_store_uri(load_settings(overrides=["lake.root=/data/lake"]))
        'sqlite:////data/lake/_mlflow/mlflow.db'
    """
    root = _local_lake_root(settings)
    if root is None:
        raise ConfigError(
            f"the lake root {settings.lake.root!r} is not a local path, so the default SQLite "
            "tracking store cannot live there; set tracking.uri, MLFLOW_TRACKING_URI or "
            "--tracking-uri"
        )
    return f"sqlite:///{root / STORE_DIR / 'mlflow.db'}"


def resolve_tracking_uri(cli_uri: str | None, settings: Settings) -> str:
    """The tracking URI: ``--tracking-uri`` > ``MLFLOW_TRACKING_URI`` > ``tracking.uri`` > lake.

    Empty values count as unset. A relative lake root is resolved against the current
    directory, so the URI is the same wherever it is used later.

    Example:
        >>> settings = load_settings(overrides=["lake.root=/data/lake"])
        >>> resolve_tracking_uri("http://mlflow:5000", settings)
        'http://mlflow:5000'
        >>> resolve_tracking_uri(None, settings)  # with MLFLOW_TRACKING_URI unset
        'sqlite:////data/lake/_mlflow/mlflow.db'
    """
    for candidate in (cli_uri, os.environ.get("MLFLOW_TRACKING_URI"), settings.tracking.uri):
        if candidate and candidate.strip():
            return candidate.strip()
    return default_store_uri(settings)


def artifact_location(settings: Settings, uri: str | None = None) -> str | None:
    """Where a store keeps artifacts of the experiments segspark creates, as a ``file:`` URI.

    For a SQLite store (the lake's default one included) the ``artifacts`` folder next to the
    database file, i.e. ``<lake>/_mlflow/artifacts`` for the default store; for another
    database server ``<lake>/_mlflow/artifacts`` when the lake root is local; None for
    tracking servers (``http(s)``, ``databricks``), which decide themselves. ``uri`` defaults
    to :func:`resolve_tracking_uri` without a command-line URI.

    Example:
        >>> artifact_location(load_settings(overrides=["lake.root=/data/lake"]))
        'file:///data/lake/_mlflow/artifacts'
    """
    uri = uri if uri is not None else resolve_tracking_uri(None, settings)
    scheme = _scheme(uri)
    if scheme in _REMOTE_SCHEMES:
        return None
    db_file = _sqlite_path(uri)
    if db_file is not None:
        return (db_file.parent / "artifacts").as_uri()
    if scheme in _DATABASE_SCHEMES:
        root = _local_lake_root(settings)
        return (root / STORE_DIR / "artifacts").as_uri() if root is not None else None
    return None


# --- connecting ------------------------------------------------------------------------------


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.init.lock`` next to a SQLite database (else no-op).

    Two processes creating the same SQLite store at once otherwise race in MLflow's schema
    migrations and in experiment creation.
    """
    db_file = _sqlite_path(uri)
    if db_file is None:
        yield
        return
    import fcntl

    try:
        db_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(db_file.parent / ".init.lock", os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:
        raise TrackingError(
            f"cannot create the MLflow store folder {db_file.parent}: {exc.strerror}"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def configure(settings: Settings, uri: str) -> None:
    """Point MLflow at ``uri``; bound remote calls; create a SQLite store once, under a lock.

    For ``http(s)`` servers, ``MLFLOW_HTTP_REQUEST_TIMEOUT`` and
    ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` are set from ``tracking.timeout_s`` and
    ``tracking.max_retries`` (config wins over values already in the environment), so an
    unreachable server fails after about ``(max_retries + 1) * timeout_s`` plus MLflow's
    backoff. With ``tracking.required: false`` an unreachable store is replaced by the lake's
    fallback store (:func:`effective_uri`). For SQLite the folder is created and the schema
    initialised while holding ``<folder>/.init.lock``; later calls in the same process skip
    that. The process's
    ``MLFLOW_TRACKING_URI`` is left as it was.

    Example:
        >>> configure(settings, "sqlite:////data/lake/_mlflow/mlflow.db")
        >>> mlflow.get_tracking_uri()
        'sqlite:////data/lake/_mlflow/mlflow.db'
    """
    import mlflow

    uri = effective_uri(settings, uri)
    if _scheme(uri) in ("http", "https"):
        _bound_http(settings)
    elif _sqlite_path(uri) is not None:
        _init_sqlite(settings, uri)
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # set_tracking_uri also exports MLFLOW_TRACKING_URI; left there, it would outrank
    # tracking.uri and the lake default in every later resolve_tracking_uri of this process.
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


def _bound_http(settings: Settings) -> None:
    # MLflow parses these as int.
    timeout = max(1, math.ceil(settings.tracking.timeout_s))
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(settings.tracking.max_retries)


def fallback_store_uri(settings: Settings) -> str | None:
    """The store used while the configured one is unreachable and ``tracking.required`` is
    false: ``sqlite:///<abs lake root>/_mlflow/fallback/mlflow.db`` (None for a remote lake).

    Example:
        >>> fallback_store_uri(load_settings(overrides=["lake.root=/data/lake"]))
        'sqlite:////data/lake/_mlflow/fallback/mlflow.db'
    """
    root = _local_lake_root(settings)
    if root is None:
        return None
    return f"sqlite:///{root / STORE_DIR / FALLBACK_DIR / 'mlflow.db'}"


def _probe(settings: Settings, uri: str) -> None:
    """One bounded call to the store at ``uri``; raises whatever reaching it raises."""
    if _sqlite_path(uri) is not None:
        _init_sqlite(settings, uri)
        return
    from mlflow import MlflowClient

    if _scheme(uri) in ("http", "https"):
        _bound_http(settings)
    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def effective_uri(settings: Settings, uri: str) -> str:
    """The store MLflow records to for ``uri``: ``uri`` itself, or its fallback.

    With ``tracking.required: true`` this is always ``uri`` (an unreachable store then fails
    the step where it is used). With ``tracking.required: false`` the store is probed once per
    process (bounded by ``tracking.timeout_s`` and ``tracking.max_retries``); when that fails,
    one warning line is logged and :func:`fallback_store_uri` is returned, now and for every
    later call with the same URI and lake in this process.

    Example:
        >>> settings = load_settings(overrides=["lake.root=/data/lake", "tracking.required=false"])
        >>> effective_uri(settings, "http://127.0.0.1:9")  # nothing listens there
        'sqlite:////data/lake/_mlflow/fallback/mlflow.db'
    """
    if settings.tracking.required:
        return uri
    fallback = fallback_store_uri(settings)
    if fallback is None or uri == fallback:
        return uri
    key = (uri, fallback)
    with _probe_lock:
        if key not in _effective:
            try:
                _probe(settings, uri)
            except Exception as exc:
                reason = _unreachable_reason(exc) or _first_line(exc)
                log.warning(
                    "MLflow tracking store %s unavailable (%s); tracking.required is false, so "
                    "this run records to the local fallback store %s",
                    redact(uri),
                    reason,
                    fallback,
                )
                _effective[key] = fallback
            else:
                _effective[key] = uri
        return _effective[key]


def _init_sqlite(settings: Settings, uri: str) -> None:
    with _ready_lock:
        if uri in _ready_stores:
            return
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        with _store_lock(uri):
            try:
                # Constructing the store runs the migrations and creates the Default
                # experiment with our artifact root instead of ./mlruns in the cwd.
                SqlAlchemyStore(uri, artifact_location(settings, uri))  # type: ignore[no-untyped-call]
            except Exception as exc:
                raise TrackingError(
                    f"cannot open the MLflow store {redact(uri)}: {_first_line(exc)}"
                ) from exc
        _ready_stores.add(uri)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _unreachable_reason(exc: BaseException) -> str | None:
    """Why a request failed when it is a connection problem (refused, timed out), else None."""
    import requests

    seen: set[int] = set()
    cursor: BaseException | None = exc
    while cursor is not None and id(cursor) not in seen:
        seen.add(id(cursor))
        # ConnectTimeout is both a Timeout and a ConnectionError: test Timeout first.
        if isinstance(cursor, requests.exceptions.Timeout | TimeoutError):
            return "timed out"
        if isinstance(cursor, requests.exceptions.ConnectionError | ConnectionError):
            text = str(cursor).lower()
            if "refused" in text:
                return "connection refused"
            # requests reports retries that ended in read timeouts as a ConnectionError
            return "timed out" if "timed out" in text else "no connection"
        cursor = cursor.__cause__ or cursor.__context__
    return None


def _tracking_error(uri: str, exc: BaseException) -> TrackingError:
    reason = _unreachable_reason(exc)
    if reason is not None:
        return TrackingError(
            f"cannot reach the MLflow tracking server at {redact(uri)} ({reason}); check "
            "--tracking-uri, MLFLOW_TRACKING_URI or tracking.uri"
        )
    return TrackingError(f"MLflow tracking store {redact(uri)} failed: {_first_line(exc)}")


# --- experiments and runs --------------------------------------------------------------------


def experiment_name(domain: str) -> str:
    """The experiment of a domain.

    Example:
        >>> experiment_name("retail")
        'segspark/retail'
    """
    if domain not in DOMAINS:
        raise UsageError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    return f"segspark/{domain}"


def ensure_experiment(domain: str, settings: Settings, uri: str) -> str:
    """The id of experiment ``segspark/<domain>``, created (or restored if deleted) when needed.

    A new experiment keeps its artifacts in ``<artifact_location>/<domain>`` (for the default
    store ``<lake>/_mlflow/artifacts/retail`` ...). Processes creating it at the same time
    all get the same id (SQLite: under the store lock; servers: a lost race is read back).

    Example:
        >>> ensure_experiment("retail", settings, uri)
        '1'
    """
    from mlflow import MlflowClient
    from mlflow.entities import LifecycleStage
    from mlflow.exceptions import MlflowException

    name = experiment_name(domain)
    uri = effective_uri(settings, uri)
    configure(settings, uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        with _store_lock(uri):
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                root = artifact_location(settings, uri)
                try:
                    return client.create_experiment(
                        name, artifact_location=f"{root}/{domain}" if root else None
                    )
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    experiment = client.get_experiment_by_name(name)
                    if experiment is None:
                        raise
            if experiment.lifecycle_stage == LifecycleStage.DELETED:
                log.warning("experiment %s was deleted; restoring it", name)
                client.restore_experiment(experiment.experiment_id)
            return str(experiment.experiment_id)
    except TrackingError:
        raise
    except Exception as exc:
        raise _tracking_error(uri, exc) from exc


@cache
def _source_commit() -> str | None:
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit or None


def git_commit() -> str:
    """The code version tagged on runs: ``SEGSPARK_GIT_COMMIT``, else the checkout's HEAD.

    Returns ``"unknown"`` for an installed package outside a git checkout (set
    ``SEGSPARK_GIT_COMMIT`` when building images).

    Example:
        >>> git_commit()
        '5ba0df2c1e...'
    """
    return os.environ.get("SEGSPARK_GIT_COMMIT", "").strip() or _source_commit() or "unknown"


def _iso_date(as_of: date | str | None) -> str:
    if as_of is None:
        return ""
    if isinstance(as_of, datetime):
        return as_of.date().isoformat()
    if isinstance(as_of, date):
        return as_of.isoformat()
    try:
        return date.fromisoformat(as_of).isoformat()
    except ValueError:
        raise UsageError(f"as_of must be an ISO date YYYY-MM-DD, got {as_of!r}") from None


def run_tags(
    settings: Settings, *, domain: str, step: str, as_of: date | str | None = None
) -> dict[str, str]:
    """The tags of a step run (see :data:`TAG_KEYS`).

    Example:
        >>> run_tags(settings, domain="retail", step="train", as_of="2024-06-30")["as_of"]
        '2024-06-30'
    """
    return {
        "step": step,
        "domain": domain,
        "as_of": _iso_date(as_of),
        "config_hash": settings.config_hash(),
        "git_commit": git_commit(),
        "segspark_version": __version__,
    }


@contextmanager
def step_run(
    settings: Settings,
    uri: str,
    *,
    domain: str,
    step: str,
    as_of: date | str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[Run]:
    """One MLflow run for one step, in experiment ``segspark/<domain>``; yields the active Run.

    The run is named ``"<step> <domain> <as_of>"`` and tagged with :func:`run_tags` plus
    ``tags``; ``params`` are logged at the start. Inside the block the fluent API
    (``mlflow.log_metric`` ...) logs to this run. A normal exit ends it ``FINISHED``; an
    exception ends it ``FAILED`` (``KILLED`` for Ctrl-C) and propagates unchanged. When a run
    is already active, this one is nested under it. An unreachable or failing store raises
    :class:`~segspark.errors.TrackingError` naming the URI, before the block runs (with
    ``tracking.required: false`` an unreachable store is replaced by the fallback store first,
    see :func:`effective_uri`).

    Example:
        >>> with step_run(settings, uri, domain="retail", step="train", as_of="2024-06-30",
        ...               params={"k": 5}) as run:
        ...     mlflow.log_metric("silhouette", 0.61)
        >>> MlflowClient(uri).get_run(run.info.run_id).info.status
        'FINISHED'
    """
    import mlflow
    from mlflow.entities import RunStatus

    if not step or not step.strip():
        raise UsageError("a step run needs a non-empty step name")
    base_tags = run_tags(settings, domain=domain, step=step, as_of=as_of)
    extra = dict(tags or {})
    clash = sorted(set(extra) & set(base_tags))
    if clash:
        raise UsageError(f"tags {', '.join(clash)} are set by segspark and cannot be overridden")
    run_name = " ".join(p for p in (step, domain, base_tags["as_of"]) if p)

    uri = effective_uri(settings, uri)
    experiment_id = ensure_experiment(domain, settings, uri)
    try:
        active = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=run_name,
            nested=mlflow.active_run() is not None,
            tags={**extra, **base_tags},
        )
    except Exception as exc:
        raise _tracking_error(uri, exc) from exc
    run_id = active.info.run_id
    try:
        if params:
            mlflow.log_params(dict(params))
        run = mlflow.get_run(run_id)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (Terminated) before the block: MLflow's
        _end_quietly(RunStatus.to_string(RunStatus.KILLED))  # exit hook would end it FINISHED
        raise
    except Exception as exc:
        _end_quietly(RunStatus.to_string(RunStatus.FAILED))
        raise _tracking_error(uri, exc) from exc

    try:
        yield run
    except KeyboardInterrupt:
        _end_quietly(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        _end_quietly(RunStatus.to_string(RunStatus.FAILED))
        raise
    try:
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))
    except Exception as exc:
        raise _tracking_error(uri, exc) from exc


def _end_quietly(status: str) -> None:
    """End the active run without masking the exception that is already on its way out."""
    import mlflow

    try:
        mlflow.end_run(status)
    except Exception:  # the original error matters more than this one
        log.warning("could not mark the MLflow run %s", status, exc_info=True)
