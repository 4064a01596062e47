"""A disk that fills during a write: the step fails with one line and exit 1, the table keeps its
previous version, readable, and no file of the failed write is left behind.

The lake lives on a small tmpfs (we are root in CI and in the sandbox). Where mounting is not
permitted the failing step runs in a child process whose file size limit (RLIMIT_FSIZE) applies
to every file it writes, so Spark's own temporary files may be the first to hit it; the test
skips only when neither is possible.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from ._support import Result, child_env, command, digest, last_line, orphans, segspark, spawn

pytestmark = pytest.mark.slow

SIZE_MB = 4
INGEST = ("ingest", "--domain", "retail", "--input")


def _transactions(path: Path, rows: int, seed: int) -> Path:
    """Retail transactions with random ids and amounts (incompressible, so the bytes add up)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 2**63, size=(rows, 2), dtype=np.int64)
    start = np.datetime64("2024-01-01T00:00:00", "us")
    table = pa.table(
        {
            "customer_id": pa.array(np.char.mod("c%016x", ids[:, 0] % 10**6)),
            "event_time": pa.array(start + rng.integers(0, 10**13, rows).astype("timedelta64[us]")),
            "amount": pa.array(rng.random(rows) * 100),
            "quantity": pa.array(rng.integers(1, 9, rows, dtype=np.int32)),
            "transaction_id": pa.array(np.char.mod("%032x", ids[:, 1])),
        }
    )
    pq.write_table(table, path)
    return path


def _mount(target: Path) -> bool:
    target.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(target)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A lake root with little room: ``(root, "tmpfs")`` or ``(root, "rlimit")``."""
    root = tmp_path / "disk"
    if sys.platform == "linux" and _mount(root):
        try:
            yield root, "tmpfs"
        finally:
            subprocess.run(["umount", "-l", str(root)], check=False)
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if hard != resource.RLIM_INFINITY and hard < SIZE_MB << 20:
        pytest.skip("cannot mount a tmpfs and RLIMIT_FSIZE cannot be set: no way to fill a disk")
    yield root, "rlimit"


def _limited(root: Path, *args: str, tmp_path: Path) -> Result:
    """``segspark`` in a child process (and its JVM) whose files cannot grow past the size."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (SIZE_MB << 20, SIZE_MB << 20))

    out, err = tmp_path / "limited.out", tmp_path / "limited.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        code = subprocess.run(
            command(root, *args),
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=child_env(),
            preexec_fn=limit,
            check=False,
        ).returncode
    return Result(code, out.read_text(), err.read_text())


def test_a_write_that_fills_the_disk_fails_cleanly_and_keeps_the_previous_version(
    small_disk: tuple[Path, str], tmp_path: Path
) -> None:
    root, how = small_disk
    small = _transactions(tmp_path / "small.parquet", 2_000, seed=1)
    big = _transactions(tmp_path / "big.parquet", 300_000, seed=2)
    assert big.stat().st_size > 3 * (SIZE_MB << 20)  # more than fits, even per task file

    first = segspark(root, *INGEST, str(small))
    assert first.code == 0, first.err
    version = DeltaTable(str(root / "transactions")).version()
    before = digest(root, "transactions")
    log_files = sorted(p.name for p in (root / "transactions" / "_delta_log").iterdir())

    # A child process, as from a shell: a JVM that failed a write keeps some of its files open
    # (deleted, still holding their space) until it exits.
    if how == "tmpfs":
        failed = spawn(root, *INGEST, str(big), logs=tmp_path / "logs").wait()
    else:
        # per file, so Spark's own temporary files may be the first to hit the limit
        failed = _limited(root, *INGEST, str(big), tmp_path=tmp_path)
    assert failed.code == 1, failed.err
    assert failed.out == ""
    line = last_line(failed.err)
    assert line in (
        "segspark: failed: java.io.IOException: No space left on device",
        "segspark: failed: java.io.IOException: File too large",
    ), line

    # the previous version, whole and readable; no half-written commit; nothing left behind
    table = DeltaTable(str(root / "transactions"))
    assert table.version() == version
    assert digest(root, "transactions") == before
    assert sorted(p.name for p in (root / "transactions" / "_delta_log").iterdir()) == log_files
    assert orphans(root) == []
    # the room is free again: the same small step still succeeds afterwards
    again = segspark(root, *INGEST, str(_transactions(tmp_path / "more.parquet", 2_000, seed=3)))
    assert again.code == 0, again.err
    assert DeltaTable(str(root / "transactions")).version() == version + 1
