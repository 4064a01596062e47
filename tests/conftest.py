"""Shared fixtures: one SparkSession for the whole run, a fresh lake per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

os.environ.setdefault("SEGSPARK_ENV", "test")
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """``local[2]``, 2 shuffle partitions, UI off, UTC: built by segspark's own factory."""
    from segspark.config import load_settings
    from segspark.session import build_session

    session = build_session(load_settings(env="test").spark)
    yield session
    session.stop()


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri() -> Iterator[None]:
    """``mlflow.set_tracking_uri`` exports MLFLOW_TRACKING_URI; remove it after every test.

    Otherwise a later ``segspark`` call (a module fixture's included) would track into an
    earlier test's store instead of its own lake's.
    """
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture
def lake_root(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    root.mkdir()
    return root


@pytest.fixture
def lake(spark: SparkSession, lake_root: Path):  # type: ignore[no-untyped-def]
    from segspark.lake import Lake

    return Lake(spark, str(lake_root), backend="delta-rs")


@pytest.fixture
def cli(spark: SparkSession, lake_root: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Run ``segspark`` in-process against the test lake, sharing the session fixture.

    Returns a function ``cli(*args) -> (exit_code, stdout, stderr)``.
    """
    from segspark.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        import contextlib
        import io

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--lake", str(lake_root), "--env", "test", *args])
        return code, out.getvalue(), err.getvalue()

    return run
