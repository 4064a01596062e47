"""``segspark run`` killed with SIGKILL mid-run: at every named fault point and at timed moments.

After each kill the lake holds whole table versions only (:func:`check_lake`). Kills come in
pairs on one lake: the run started after the first kill gets past the first crash and is killed
at a later point, and the run after the second kill completes with the rows of an uninterrupted
run. ``segspark maintain`` then removes whatever files the killed processes left behind, which
no reader returned meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from ._support import (
    D1,
    D2,
    D3,
    DOMAIN,
    Child,
    check_lake,
    kill_when,
    last_line,
    ok,
    orphans,
    read_rows,
    run_statuses,
    segment_rows,
    spawn,
    step_runs,
    tables,
    wait_until,
)
from .conftest import Baseline

pytestmark = pytest.mark.slow

RUN = ("run", "--domain", DOMAIN, "--as-of")
MAINTAIN = ("--set", "lake.staging_max_age_hours=0", "maintain", "--retention-hours", "0")


def _killed_at(root: Path, as_of: str, point: str, logs: Path) -> None:
    child = spawn(root, *RUN, as_of, logs=logs, env={"SEGSPARK_FAULT": f"{point}:kill"})
    result = child.wait()
    assert result.code == -signal.SIGKILL, result.err[-3000:]


def _recover(spark: SparkSession, root: Path, baseline: Baseline, as_of: str) -> None:
    """The next run completes with the uninterrupted rows; maintain then leaves no orphan."""
    ok(root, *RUN, as_of)
    assert segment_rows(root, as_of) == baseline.segments[as_of]
    check_lake(root, baseline.rows)
    ok(root, *MAINTAIN, "--force")
    assert orphans(root) == []
    check_lake(root, baseline.rows, spark=spark)


def _left(root: Path, prefixes: list[str]) -> None:
    """The files the kill left are exactly under ``prefixes`` (one or more under each)."""
    found = orphans(root)
    assert all(any(f.startswith(p) for f in found) for p in prefixes), found
    assert all(any(f.startswith(p) for p in prefixes) for f in found), found


SNAPSHOT_D1 = f"segment_snapshots/domain={DOMAIN}/as_of={D1}/"
# The first run of a lake: features, train (registry, snapshot, profiles), promote. Each pair:
# (point, the files it leaves behind) twice, in the order a run reaches them.
TRAIN_PAIRS = {
    "nothing_written-registry_staged": [
        ("lake.before_write", []),
        ("lake.after_files@segment_registry", ["segment_registry/_staging/"]),
    ],
    "registry_committed-snapshot_uncommitted": [
        ("snapshots.after_registry", []),
        ("lake.before_commit@segment_snapshots", ["segment_snapshots/_staging/", SNAPSHOT_D1]),
    ],
    "snapshot_committed-not_promoted": [
        ("lake.after_commit@segment_snapshots", []),
        ("segmentation.before_promote", []),
    ],
}


@pytest.mark.parametrize("pair", list(TRAIN_PAIRS))
def test_a_first_run_killed_at_fault_points_recovers(
    spark: SparkSession, baseline: Baseline, fresh: Path, tmp_path: Path, pair: str
) -> None:
    for point, left in TRAIN_PAIRS[pair]:
        _killed_at(fresh, D1, point, tmp_path / "logs")
        check_lake(fresh, baseline.rows)
        _left(fresh, left)
    _recover(spark, fresh, baseline, D1)


def test_later_runs_killed_before_and_during_the_migration_recover(
    spark: SparkSession, baseline: Baseline, fresh: Path, tmp_path: Path
) -> None:
    ok(fresh, *RUN, D1)
    # D2: snapshot and profiles committed, no migration yet
    _killed_at(fresh, D2, "segmentation.before_migrate", tmp_path / "logs")
    check_lake(fresh, baseline.rows)
    assert segment_rows(fresh, D2) == baseline.segments[D2]
    assert "segment_migrations" not in tables(fresh)
    ok(fresh, *RUN, D2)
    assert segment_rows(fresh, D2) == baseline.segments[D2]
    # D3: the migrations committed, their matrix not
    _killed_at(fresh, D3, "lake.after_commit@segment_migrations", tmp_path / "logs")
    check_lake(fresh, baseline.rows)
    assert len(read_rows(fresh, "segment_migrations")) == 2  # D1 -> D2 and D2 -> D3
    assert len(read_rows(fresh, "segment_migration_matrix")) == 1  # D1 -> D2 only
    _recover(spark, fresh, baseline, D3)
    assert read_rows(fresh, "segment_migration_matrix") == baseline.rows["segment_migration_matrix"]


def _staged(table: Path) -> bool:
    staging = table / "_staging"
    return staging.is_dir() and any(staging.iterdir())


def test_runs_killed_from_outside_at_timed_moments_recover(
    spark: SparkSession, baseline: Baseline, fresh: Path, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    # as soon as the features table's first version exists (the kill lands in training)
    child: Child = spawn(fresh, *RUN, D1, logs=logs)
    first = fresh / f"{DOMAIN}_features" / "_delta_log" / "00000000000000000000.json"
    kill_when(child, first.exists)
    child.kill_group()
    check_lake(fresh, baseline.rows)
    assert f"{DOMAIN}_features" in tables(fresh)
    # while Spark writes the snapshot's files
    child = spawn(fresh, *RUN, D1, logs=logs)
    kill_when(child, lambda: _staged(fresh / "segment_snapshots"))
    child.kill_group()
    check_lake(fresh, baseline.rows)
    _recover(spark, fresh, baseline, D1)


def _running(db: Path, step: str) -> bool:
    """Whether the lake's MLflow store holds a RUNNING run of ``step`` with its params logged."""
    if not db.exists():
        return False
    # immutable: take no lock, so the peek never makes the run's own writes wait or fail
    peek = f"file:{db}?mode=ro&immutable=1"
    try:
        with contextlib.closing(sqlite3.connect(peek, uri=True)) as db_:
            query = (
                "SELECT count(*) FROM runs r WHERE r.status = 'RUNNING' AND r.name LIKE ? "
                "AND EXISTS (SELECT 1 FROM params p WHERE p.run_uuid = r.run_uuid)"
            )
            (count,) = db_.execute(query, (f"{step} %",)).fetchone()
    except sqlite3.Error:  # not created yet, or caught mid-write
        return False
    return bool(count)


def test_a_run_terminated_with_sigterm_unwinds_and_marks_its_mlflow_run_killed(
    spark: SparkSession, baseline: Baseline, fresh: Path, tmp_path: Path
) -> None:
    # SIGTERM to segspark alone, as `docker stop` (through compose's init) or Kubernetes send
    # it, once the train step's MLflow run is under way.
    db = fresh / "_mlflow" / "mlflow.db"
    child = spawn(fresh, *RUN, D1, logs=tmp_path / "logs")
    wait_until(child, lambda: _running(db, "train"))
    os.kill(child.proc.pid, signal.SIGTERM)
    result = child.wait(timeout=120)
    assert result.code == 143, result.err[-3000:]
    assert last_line(result.err) == "segspark: terminated"
    runs = step_runs(db)
    assert run_statuses(runs) == [("features", "FINISHED"), ("train", "KILLED")]
    assert all(r.info.end_time for r in runs)
    check_lake(fresh, baseline.rows)
    _recover(spark, fresh, baseline, D1)
