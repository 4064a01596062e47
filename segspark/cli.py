"""The ``segspark`` command: global options, subcommands, exit codes.

Exit codes (DESIGN.md): 0 success; 1 a runtime failure or a write conflict; 2 bad usage or bad
config/input that made the step impossible. Failures print one line, never a JVM stack trace
(``--verbose`` adds the traceback to the log).

Each subcommand lives in ``segspark.commands.<name>`` with ``add_parser(subparsers, parent)``
registering itself and a ``run(ctx, args) -> int`` handler.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from segspark import __version__
from segspark.config import Settings, load_settings
from segspark.errors import SegsparkError, Terminated

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from segspark.lake import Lake

log = logging.getLogger("segspark")

COMMANDS = (
    "demo",
    "generate",
    "ingest",
    "features",
    "train",
    "score",
    "migrate",
    "run",
    "report",
    "query",
    "maintain",
    "ui",
)


@dataclass
class Context:
    """What a subcommand needs: resolved settings, and the session and lake on first use."""

    args: argparse.Namespace
    _settings: dict[str | None, Settings] = field(default_factory=dict)
    _spark: SparkSession | None = None

    def settings(self, domain: str | None = None) -> Settings:
        if domain not in self._settings:
            overrides = list(self.args.set or [])
            lake_root = self.args.lake or os.environ.get("SEGSPARK_LAKE")
            if lake_root:
                overrides.append(f"lake.root={lake_root}")
            self._settings[domain] = load_settings(
                domain=domain, env=self.args.env, files=self.args.conf or [], overrides=overrides
            )
        return self._settings[domain]

    def spark(self, domain: str | None = None) -> SparkSession:
        if self._spark is None:
            from segspark.session import build_session

            self._spark = build_session(self.settings(domain).spark)
        return self._spark

    def lake(self, domain: str | None = None) -> Lake:
        from segspark.lake import Lake

        settings = self.settings(domain)
        return Lake.from_settings(self.spark(domain), settings.lake)

    def tracking_uri(self, domain: str | None = None) -> str:
        from segspark.tracking import resolve_tracking_uri

        settings = self.settings(domain)
        return resolve_tracking_uri(self.args.tracking_uri, settings)


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--lake",
        metavar="PATH",
        default=default,
        help="lake root (default ./lakehouse, env SEGSPARK_LAKE)",
    )
    parser.add_argument(
        "--conf",
        metavar="FILE",
        action="append",
        default=default,
        help="extra YAML config layered over conf/ (repeatable)",
    )
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=default,
        help="override one config key, e.g. --set lake.backend=delta-rs (repeatable)",
    )
    parser.add_argument(
        "--env",
        metavar="NAME",
        default=default,
        help="environment overlay: local, cluster, test (env SEGSPARK_ENV, default local)",
    )
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        default=default,
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else SQLite in the lake)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="log progress and details"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segspark",
        description="Customer segmentation at scale on Spark, Delta Lake and MLflow.",
    )
    parser.add_argument("--version", action="version", version=f"segspark {__version__}")
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"segspark.commands.{name}")
        module.add_parser(sub, common)
    return parser


def _not_py4j(record: logging.LogRecord) -> bool:
    """False for Py4J's own records, including those it logs on the root logger.

    A call into the JVM that fails raises in Python, and the CLI reports that in one line; Py4J
    also logs the same failure with a traceback, at ERROR, and so does every Ctrl-C or SIGTERM
    that cuts a call short ("KeyboardInterrupt while sending command", then a broken pipe while
    it closes the connection). With ``-v`` the records stay.
    """
    if record.name == "py4j" or record.name.startswith("py4j."):
        return False
    return os.sep + "py4j" + os.sep not in record.pathname


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_not_py4j)
    for noisy in ("py4j", "alembic", "urllib3", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # urllib3 warns about every retry of an unreachable tracking server; the failure (or the
    # fallback to the local store) is already reported in one line
    logging.getLogger("urllib3.connectionpool").setLevel(
        logging.WARNING if verbose else logging.ERROR
    )
    from pyspark.logger import PySparkLogger

    # PySpark 4 logs every AnalysisException with the whole JVM stack as JSON; the CLI already
    # reports it in one line. These loggers must come from PySparkLogger.getLogger.
    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        PySparkLogger.getLogger(name).setLevel(logging.DEBUG if verbose else logging.CRITICAL)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _jvm_cause(exc: BaseException) -> str | None:
    """The innermost JVM error's first line for a raw Py4J error (its own names the call)."""
    from py4j.protocol import Py4JJavaError

    if not isinstance(exc, Py4JJavaError):
        return None
    java = exc.java_exception
    line = None
    for _ in range(16):
        if java is None:
            break
        line = str(java.toString()).splitlines()[0]
        java = java.getCause()
    return line


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While inside, the first SIGTERM raises :class:`~segspark.errors.Terminated`.

    Python's default for SIGTERM ends the process on the spot: an MLflow run in progress stays
    RUNNING for good and nothing is cleaned up. Raised instead, it unwinds like Ctrl-C (the step
    run ends KILLED; a Delta commit is atomic either way). Python runs the handler in the main
    thread, between two bytecodes: a driver blocked in a Spark action may see it only when the
    action returns. A second SIGTERM during the unwinding ends the process at once, as before.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (``sys.exit`` is left to the caller)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage line
        return int(exc.code or 0)
    # MLflow configures its own loggers at import (INFO); this is its documented switch.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "DEBUG" if args.verbose else "WARNING")
    _configure_logging(bool(args.verbose))
    ctx = Context(args)
    try:
        with _sigterm_unwinds():
            return int(args.handler(ctx, args))
    except SegsparkError as exc:
        log.info("failed", exc_info=True)  # shown with --verbose
        print(f"segspark: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except Terminated:
        print("segspark: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("segspark: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from pyspark.errors import AnalysisException, ParseException

        log.info("failed", exc_info=True)  # shown with --verbose
        if isinstance(exc, AnalysisException | ParseException):
            print(f"segspark: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        cause = _jvm_cause(exc)
        if cause:
            print(f"segspark: failed: {cause}", file=sys.stderr)
            return 1
        print(f"segspark: failed: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
