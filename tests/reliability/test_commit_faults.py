"""A failure right after a delta-rs commit landed never deletes the files it committed.

The write's clean-up removes the files it moved into the table when the commit did not happen;
before the fix it also ran when reading the new version back failed after a successful commit,
leaving a current version whose files were gone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from segspark.lake import Lake

from ._support import orphans


def _broken(*_: object) -> None:
    raise OSError("reading the log back failed")


@pytest.mark.parametrize("write", ["first", "later"])
def test_a_failure_after_the_commit_keeps_the_committed_files(
    spark: SparkSession, lake: Lake, lake_root: Path, monkeypatch: pytest.MonkeyPatch, write: str
) -> None:
    frame = spark.createDataFrame([("a", 1)], "k string, v int")
    if write == "later":
        lake.write("t", frame)
        monkeypatch.setattr(DeltaTable, "update_incremental", _broken)
    else:
        monkeypatch.setattr(DeltaTable, "version", _broken)
    with pytest.raises(OSError, match="reading the log back failed"):
        lake.write("t", spark.createDataFrame([("b", 2)], "k string, v int"))
    monkeypatch.undo()

    table = DeltaTable(str(lake_root / "t"))
    assert table.version() == (1 if write == "later" else 0)
    expected = [{"k": "a", "v": 1}] if write == "later" else []
    rows = sorted(table.to_pyarrow_table().to_pylist(), key=lambda r: str(r["k"]))
    assert rows == [*expected, {"k": "b", "v": 2}]
    assert sorted((r.k, r.v) for r in lake.read("t").collect()) == [
        (r["k"], r["v"]) for r in [*expected, {"k": "b", "v": 2}]
    ]
    assert orphans(lake_root) == []
