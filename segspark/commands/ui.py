"""``segspark ui``: the MLflow UI over the resolved tracking store.

For the lake's SQLite store (or another database store) an MLflow server runs as a child
process bound to 127.0.0.1 unless ``--host`` says otherwise, until Ctrl-C (or SIGTERM), which
stops it and everything it started. A remote tracking server already serves its UI, so its
address is printed and the command exits 0.

Example:
    $ segspark --lake /work/lakehouse ui --port 5001
    MLflow UI for sqlite:////work/lakehouse/_mlflow/mlflow.db at http://127.0.0.1:5001 (Ctrl-C ...
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import Any

from segspark.config import Settings
from segspark.errors import TrackingError, UsageError
from segspark.tracking import artifact_location, configure, redact

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
READY_TIMEOUT_S = 120.0
"""How long the server may take to answer ``/health`` (imports and store checks, on 2 cores)."""
STOP_GRACE_S = 10.0

_SERVED_ELSEWHERE = ("http", "https", "databricks")


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "ui",
        parents=[parent],
        help="serve the MLflow UI for the tracking store",
        description=(
            "Serve the MLflow UI for the lake's tracking store (or --tracking-uri) until "
            "Ctrl-C. For a remote tracking server, print its address instead."
        ),
    )
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})"
    )
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"interface to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0: all)",
    )
    p.set_defaults(handler=run)


def run(ctx: Any, args: argparse.Namespace) -> int:
    settings: Settings = ctx.settings()
    uri: str = ctx.tracking_uri()
    if uri.split(":", 1)[0].lower() in _SERVED_ELSEWHERE:
        print(f"MLflow UI: {redact(uri)} (served by the tracking server)")
        return 0
    return serve(settings, uri, host=args.host, port=args.port)


def local_url(host: str, port: int) -> str:
    """The URL a browser on this machine uses for a server bound to ``host``.

    Example:
        >>> local_url("0.0.0.0", 5000)
        'http://127.0.0.1:5000'
    """
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def server_command(uri: str, artifact_root: str | None, *, host: str, port: int) -> list[str]:
    """The ``mlflow server`` command line for a store.

    One worker (a UI for one person; the machine may have 2 cores); artifacts are read from
    where runs wrote them (``--no-serve-artifacts``), so nothing lands in the cwd.

    Example:
        >>> server_command("sqlite:////lake/_mlflow/mlflow.db", None, host="127.0.0.1",
        ...                port=5000)[1:4]
        ['-m', 'mlflow', 'server']
    """
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    if artifact_root is not None:
        cmd += ["--default-artifact-root", artifact_root]
    cmd += ["--no-serve-artifacts", "--host", host, "--port", str(port), "--workers", "1"]
    return cmd


def _check_port_free(host: str, port: int) -> None:
    if not 0 < port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        probe = socket.create_server((host, port), family=family)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        message = f"cannot listen on {host}:{port} ({reason}); pick another --port"
        raise UsageError(message) from None
    probe.close()


def start_server(
    settings: Settings, uri: str, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> subprocess.Popen[bytes]:
    """Start an MLflow server for ``uri`` in its own process group and return it (not ready yet).

    The SQLite store is created first under its lock, so the server never migrates it.
    Stop it with :func:`stop_server`.

    Example:
        >>> proc = start_server(settings, uri, port=5001)
        >>> wait_until_ready(proc, local_url("127.0.0.1", 5001))
        >>> stop_server(proc)
    """
    _check_port_free(host, port)
    configure(settings, uri)
    env = dict(os.environ)
    # The job runner serves GenAI evaluation jobs; segspark needs none, so no extra process.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    cmd = server_command(uri, artifact_location(settings, uri), host=host, port=port)
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def _get(url: str, timeout_s: float) -> int:
    # No proxies: a proxy from the environment must not answer for a local server.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout_s) as response:
        return int(response.status)


def wait_until_ready(
    proc: subprocess.Popen[bytes], url: str, *, timeout_s: float = READY_TIMEOUT_S
) -> None:
    """Return once ``<url>/health`` answers 200; raise TrackingError if the server dies or stalls.

    Example:
        >>> wait_until_ready(proc, "http://127.0.0.1:5001", timeout_s=60)
    """
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            raise TrackingError(
                f"the MLflow server exited with code {code} before it was ready "
                "(see its output above)"
            )
        try:
            if _get(f"{url}/health", timeout_s=2.0) == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TrackingError(f"the MLflow server at {url} was not ready within {timeout_s:g}s")
        time.sleep(0.5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def stop_server(proc: subprocess.Popen[bytes], *, grace_s: float = STOP_GRACE_S) -> int:
    """Stop a server from :func:`start_server` and every process it started; its exit code.

    SIGTERM to the server's process group, then SIGKILL for whatever is left after
    ``grace_s`` seconds.

    Example:
        >>> stop_server(proc)
        0
    """
    pgid = proc.pid  # start_new_session made the server the leader of its own group
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
    return proc.wait()


class _Stop(Exception):
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP) arrived while serving."""


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Turn SIGINT/SIGTERM/SIGHUP into :class:`_Stop`, whatever the inherited handlers were."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        # Only the first signal stops; a second Ctrl-C must not interrupt the cleanup.
        if not fired:
            fired = True
            raise _Stop(signal.Signals(signum).name)

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _wait(proc: subprocess.Popen[bytes]) -> int:
    """``proc.wait()`` in short slices: a stop signal sent to this process may be delivered to
    one of its other threads, and Python runs the handler only when the main thread wakes; a
    single blocking wait would sleep through it (SIGINT from ``kill`` was ignored)."""
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue


def serve(
    settings: Settings, uri: str, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> int:
    """Serve the MLflow UI for ``uri`` until a stop signal; returns 0 after a clean stop.

    Example:
        >>> serve(settings, "sqlite:////lake/_mlflow/mlflow.db", port=5001)  # until Ctrl-C
        0
    """
    proc: subprocess.Popen[bytes] | None = None
    url = local_url(host, port)
    with _stop_on_signals():
        try:
            proc = start_server(settings, uri, host=host, port=port)
            wait_until_ready(proc, url)
            where = "" if host == DEFAULT_HOST else f" (listening on {host})"
            print(f"MLflow UI for {redact(uri)} at {url}{where} (Ctrl-C to stop)", flush=True)
            code = _wait(proc)
            raise TrackingError(f"the MLflow server stopped by itself with code {code}")
        except (_Stop, KeyboardInterrupt):
            print("stopping the MLflow UI", file=sys.stderr, flush=True)
            return 0
        finally:
            if proc is not None:
                stop_server(proc)
