"""Helpers of the reliability suite: running ``segspark``, reading tables, lake invariants.

Tables are read with ``deltalake`` and pyarrow (no Spark job), rows are compared as JSON
strings (doubles to :data:`DIGITS` significant digits), and a digest is the SHA-256 of a table's
sorted rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

DOMAIN = "telecom"
CUSTOMERS = "40"
START, END = "2024-01-01", "2024-05-31"
D1, D2, D3 = "2024-03-31", "2024-04-30", "2024-05-31"
# A fixed k and no bootstrap: the same model as a sweep would pick is not the point here, and
# a train step stays a single seeded fit.
MODEL = ("--set", "model.k=3", "--set", "model.bootstrap_resamples=0")
# Columns naming the MLflow run or registered model version that wrote a row: a re-run is a new
# run (and a retrain a new version), so they are lineage, not content.
LINEAGE = frozenset({"run_id", "model_version"})
SEGSPARK = Path(sys.executable).with_name("segspark")
# Doubles are compared to this many significant digits: a sum over the same rows read from
# differently laid out files (after ``maintain`` compacts them) may differ in the last bits.
DIGITS = 12

# key columns that are unique in each table (no duplicated customer per date)
UNIQUE_KEYS: Mapping[str, tuple[str, ...]] = {
    "segment_snapshots": ("domain", "as_of", "customer_id"),
    f"{DOMAIN}_features": ("as_of", "customer_id"),
    "segment_registry": ("domain", "segment_id"),
    "segment_profiles": ("domain", "as_of", "segment_id"),
    "segment_feature_profiles": ("domain", "as_of", "segment_id", "feature"),
    "segment_migrations": ("domain", "from_as_of", "to_as_of", "customer_id"),
    "segment_migration_matrix": (
        "domain",
        "from_as_of",
        "to_as_of",
        "from_segment_id",
        "to_segment_id",
    ),
    "segment_drift": ("domain", "from_as_of", "to_as_of", "kind", "name"),
}


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def segspark(root: Path, *args: str, env: Mapping[str, str] | None = None) -> Result:
    """Run ``segspark`` in this process (sharing the session fixture) on the lake ``root``."""
    from segspark.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--lake", str(root), "--env", "test", *MODEL, *args])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    return Result(code, out.getvalue(), err.getvalue())


def ok(root: Path, *args: str) -> str:
    result = segspark(root, *args)
    assert result.code == 0, result.err
    return result.out


def last_line(err: str) -> str:
    """segspark's one failure line of a child's stderr (asserted to be its only line, last).

    A child's stderr also holds what its JVM prints itself (the launcher's incubator-module
    warning, Spark's own log lines), which is not segspark's to silence; a Python traceback
    would fail this check.
    """
    lines = err.strip().splitlines()
    assert "Traceback (most recent call last):" not in lines, err[-3000:]
    ours = [line for line in lines if line.startswith("segspark:")]
    assert len(ours) == 1 and lines[-1] == ours[0], err[-3000:]
    return ours[0]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SEGSPARK_"))}
    env.update({"SEGSPARK_ENV": "test", "PYTHONUNBUFFERED": "1", **extra})
    return env


@dataclass
class Child:
    """A ``segspark`` process in its own session (process group), output in files."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def wait(self, timeout: float = 480) -> Result:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self.kill_group()
        return Result(code, self.out.read_text(), self.err.read_text())

    def kill_group(self) -> None:
        """SIGKILL what is left of the process group (the Spark JVM a killed driver leaves)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)


def command(root: Path, *args: str) -> list[str]:
    """The ``segspark`` command line (the installed entry point) for the lake ``root``."""
    return [str(SEGSPARK), "--lake", str(root), "--env", "test", *MODEL, *args]


def spawn(root: Path, *args: str, logs: Path, env: Mapping[str, str] | None = None) -> Child:
    """Start ``segspark`` (the installed command) on ``root`` in a new process group."""
    logs.mkdir(parents=True, exist_ok=True)
    n = len(list(logs.glob("*.out")))
    out, err = logs / f"{n}.out", logs / f"{n}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            command(root, *args),
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=child_env(**(env or {})),
            start_new_session=True,
        )
    return Child(proc, out, err)


def wait_until(child: Child, ready: Callable[[], bool], *, timeout: float = 480) -> None:
    """Poll ``ready`` every few milliseconds until it holds, while the child still runs."""
    deadline = time.monotonic() + timeout
    while not ready():
        if child.proc.poll() is not None:
            raise AssertionError(
                f"segspark ended (exit {child.proc.returncode}) before the kill moment: "
                + child.err.read_text()[-2000:]
            )
        if time.monotonic() > deadline:
            child.kill_group()
            raise AssertionError("the kill moment never came")
        time.sleep(0.005)


def kill_when(child: Child, ready: Callable[[], bool], *, timeout: float = 480) -> None:
    """SIGKILL the child's process group once ``ready`` holds (:func:`wait_until`)."""
    wait_until(child, ready, timeout=timeout)
    os.killpg(child.proc.pid, signal.SIGKILL)
    assert child.proc.wait(timeout=60) == -signal.SIGKILL


def step_runs(db: Path) -> list[Any]:
    """The MLflow runs of ``segspark/<DOMAIN>`` in the SQLite store ``db`` (it must exist)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name(f"segspark/{DOMAIN}")
    assert experiment is not None
    return list(client.search_runs([experiment.experiment_id]))


def run_statuses(runs: Iterable[Any]) -> list[tuple[str, str]]:
    """(step tag, status) of each run, sorted."""
    return sorted((r.data.tags["step"], r.info.status) for r in runs)


# --- reading tables --------------------------------------------------------------------------


def tables(root: Path) -> list[str]:
    """The Delta tables under ``root`` (directories holding a ``_delta_log``)."""
    return sorted(p.name for p in root.iterdir() if (p / "_delta_log").is_dir())


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.{DIGITS}g}")
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _row_text(row: Mapping[str, Any]) -> str:
    return json.dumps({k: _rounded(v) for k, v in row.items()}, sort_keys=True, default=str)


def read_rows(
    root: Path, table: str, *, exclude: Iterable[str] = LINEAGE, version: int | None = None
) -> dict[tuple[str, ...], list[str]]:
    """The table's rows by partition (values as text), each row as sorted JSON, sorted."""
    from deltalake import DeltaTable

    dt = DeltaTable(str(root / table), version=version)
    parts = list(dt.metadata().partition_columns)
    data = dt.to_pyarrow_table()
    keep = [c for c in data.column_names if c not in set(exclude)]
    grouped: dict[tuple[str, ...], list[str]] = {}
    for row in data.select(keep).to_pylist():
        grouped.setdefault(tuple(str(row[c]) for c in parts), []).append(_row_text(row))
    return {key: sorted(rows) for key, rows in grouped.items()}


def lake_rows(root: Path, *, exclude: Iterable[str] = LINEAGE) -> dict[str, dict[Any, list[str]]]:
    return {t: read_rows(root, t, exclude=exclude) for t in tables(root)}


def digest(root: Path, table: str, *, exclude: Iterable[str] = ()) -> str:
    """SHA-256 over the table's sorted rows (``exclude``: columns left out)."""
    rows = sorted(r for part in read_rows(root, table, exclude=exclude).values() for r in part)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def segment_rows(root: Path, as_of: str) -> list[tuple[str, int, str]]:
    """(customer_id, segment_id, segment_name) of the snapshot at ``as_of``, sorted."""
    from deltalake import DeltaTable

    if not (root / "segment_snapshots" / "_delta_log").is_dir():
        return []
    data = DeltaTable(str(root / "segment_snapshots")).to_pyarrow_table().to_pylist()
    return sorted(
        (r["customer_id"], r["segment_id"], r["segment_name"])
        for r in data
        if r["domain"] == DOMAIN and str(r["as_of"]) == as_of
    )


def orphans(root: Path) -> list[str]:
    """Files under table folders that no table version references: staging and uncommitted."""
    from deltalake import DeltaTable

    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        referenced: set[str] = set()
        if (folder / "_delta_log").is_dir():
            table = DeltaTable(str(folder))
            for entry in table.history():
                uris = DeltaTable(str(folder), version=int(entry["version"])).file_uris()
                referenced |= {
                    Path(unquote(urlparse(u).path) if u.startswith("file:") else u)
                    .relative_to(folder)
                    .as_posix()
                    for u in uris
                }
        for path in folder.rglob("*"):
            rel = path.relative_to(folder).as_posix()
            hidden = rel.startswith("_delta_log/") or path.name.endswith(".crc")
            if path.is_file() and not hidden and rel not in referenced:
                found.append(f"{folder.name}/{rel}")
    return found


# --- invariants ------------------------------------------------------------------------------


def check_lake(
    root: Path, baseline: Mapping[str, Mapping[Any, list[str]]], *, spark: Any = None
) -> None:
    """What must hold after any crash: readable tables, unique keys, whole partitions only.

    Every table opens and reads in ``deltalake`` (and, given ``spark``, in segspark's Spark
    reader with the same row count); no key of :data:`UNIQUE_KEYS` repeats; every partition
    present is identical (lineage columns aside) to the uninterrupted run's (``baseline``): no
    partial snapshot, features, profiles or migrations; every snapshot segment is registered.
    """
    from segspark.lake import Lake

    lake = Lake(spark, str(root), backend="delta-rs") if spark is not None else None
    for table in tables(root):
        everything = read_rows(root, table, exclude=())
        count = sum(len(rows) for rows in everything.values())
        assert lake is None or lake.read(table).count() == count, table
        key = UNIQUE_KEYS.get(table)
        if key is not None:
            seen = [
                tuple(json.loads(r)[c] for c in key) for rows in everything.values() for r in rows
            ]
            assert len(seen) == len(set(seen)), f"duplicate {key} rows in {table}"
        assert table in baseline, f"{table} is not a table of an uninterrupted run"
        for part, rows in read_rows(root, table).items():
            assert part in baseline[table], f"{table} has a partition {part} no run writes"
            assert rows == baseline[table][part], f"{table} partition {part} differs"
    snapshot_ids = (
        {
            (json.loads(r)["domain"], json.loads(r)["segment_id"])
            for rows in read_rows(root, "segment_snapshots").values()
            for r in rows
        }
        if "segment_snapshots" in tables(root)
        else set()
    )
    registered = (
        {
            (json.loads(r)["domain"], json.loads(r)["segment_id"])
            for rows in read_rows(root, "segment_registry").values()
            for r in rows
        }
        if "segment_registry" in tables(root)
        else set()
    )
    assert snapshot_ids <= registered
