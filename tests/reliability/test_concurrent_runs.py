"""Two ``segspark run`` processes on one lake at once.

The same domain and as_of: one consistent snapshot lands (a loser fails with exit 1 and one
conflict line, or its retry lands the same rows). Different as_ofs: both land. Never a lost or
duplicated row.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from ._support import (
    D1,
    D2,
    D3,
    DOMAIN,
    check_lake,
    last_line,
    ok,
    read_rows,
    segment_rows,
    spawn,
)
from .conftest import Baseline

pytestmark = pytest.mark.slow

RUN = ("run", "--domain", DOMAIN, "--as-of")


def _lineage(root: Path, as_of: str) -> set[tuple[str, str]]:
    """The (run_id, model_version) pairs of the snapshot at ``as_of``."""
    rows = read_rows(root, "segment_snapshots", exclude=())
    return {
        (json.loads(r)["run_id"], json.loads(r)["model_version"])
        for part, texts in rows.items()
        if part == (DOMAIN, as_of)
        for r in texts
    }


def test_two_runs_of_the_same_date_end_with_one_consistent_snapshot(
    spark: SparkSession, baseline: Baseline, fresh: Path, tmp_path: Path
) -> None:
    children = [spawn(fresh, *RUN, D1, logs=tmp_path / "logs") for _ in range(2)]
    results = [c.wait() for c in children]
    codes = sorted(r.code for r in results)
    assert codes in ([0, 0], [0, 1]), [r.err[-2000:] for r in results]
    for r in results:
        if r.code == 1:
            line = last_line(r.err)
            assert line.startswith("segspark: error: commit to "), line
            assert "lost to a concurrent writer" in line, line
    check_lake(fresh, baseline.rows, spark=spark)
    assert segment_rows(fresh, D1) == baseline.segments[D1]
    assert len(_lineage(fresh, D1)) == 1  # one run wrote the whole snapshot
    # the lake goes on as if one run had happened
    ok(fresh, *RUN, D2)
    assert segment_rows(fresh, D2) == baseline.segments[D2]
    check_lake(fresh, baseline.rows, spark=spark)


def test_two_runs_of_different_dates_both_land(
    spark: SparkSession, baseline: Baseline, fresh: Path, tmp_path: Path
) -> None:
    ok(fresh, *RUN, D1)
    children = [spawn(fresh, *RUN, d, logs=tmp_path / "logs") for d in (D2, D3)]
    results = [c.wait() for c in children]
    assert [r.code for r in results] == [0, 0], [r.err[-2000:] for r in results]
    for as_of in (D1, D2, D3):
        assert segment_rows(fresh, as_of) == baseline.segments[as_of]
    assert read_rows(fresh, "segment_snapshots") == baseline.rows["segment_snapshots"]
    features = read_rows(fresh, f"{DOMAIN}_features")
    assert features == baseline.rows[f"{DOMAIN}_features"]
    # D3 migrated from D2 or, when D2's snapshot was not there yet, from D1
    migrations = read_rows(fresh, "segment_migrations")
    assert (DOMAIN, D1, D2) in migrations
    assert migrations[(DOMAIN, D1, D2)] == baseline.rows["segment_migrations"][(DOMAIN, D1, D2)]
    if (DOMAIN, D2, D3) not in migrations:
        assert set(migrations) == {(DOMAIN, D1, D2), (DOMAIN, D1, D3)}
        ok(fresh, "migrate", "--domain", DOMAIN, "--from", D2, "--to", D3)
        migrations = read_rows(fresh, "segment_migrations")
    for pair, rows in baseline.rows["segment_migrations"].items():
        assert migrations[pair] == rows
