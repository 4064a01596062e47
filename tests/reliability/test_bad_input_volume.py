"""An ingest of 10^6 JSON lines with 1% bad rows of every kind the validator knows.

Every good row lands in ``cdrs``, every bad one in ``cdrs_quarantine`` with its reason, and the
counts reconcile exactly: accepted + quarantined == lines read, per reason == planted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from segspark.lake import Lake

from ._support import ok

pytestmark = pytest.mark.slow

ROWS = 1_000_000
BAD = ROWS // 100
EXISTING = 1_000  # rows ingested first, so the big input can repeat their keys
COLUMNS = [
    "customer_id",
    "event_time",
    "event_type",
    "direction",
    "duration_s",
    "data_mb",
    "is_international",
    "counterparty_id",
]
# every reason the validator gives a cdrs row (segspark/sources.py), in its priority order
REASONS = [
    "malformed_record",
    "missing:customer_id",
    "missing:event_time",
    "missing:event_type",
    "unparseable:event_time",
    "unparseable:duration_s",
    "unparseable:data_mb",
    "unparseable:is_international",
    "not_finite:duration_s",
    "not_finite:data_mb",
    "negative:duration_s",
    "negative:data_mb",
    "too_early:event_time",
    "in_future:event_time",
    "unknown_value:event_type",
    "unknown_value:direction",
    "duplicate_in_table",
    "duplicate_in_input",
]
# one value that breaks each reason's column (None: the value is absent)
BREAK: dict[str, object] = {
    "missing:customer_id": None,
    "missing:event_time": None,
    "missing:event_type": "  ",
    "unparseable:event_time": "yesterday",
    "unparseable:duration_s": "12 s",
    "unparseable:data_mb": "lots",
    "unparseable:is_international": "maybe",
    "not_finite:duration_s": "NaN",
    "not_finite:data_mb": "Infinity",
    "negative:duration_s": "-1.5",
    "negative:data_mb": "-0.1",
    "too_early:event_time": "1999-12-31 23:59:59",
    "in_future:event_time": "2999-01-01 00:00:00",
    "unknown_value:event_type": "fax",
    "unknown_value:direction": "sideways",
}


def _planted() -> dict[str, int]:
    """Distinct counts per reason (a swapped reason cannot go unnoticed), summing to 1%."""
    counts = {r: 500 + 7 * i for i, r in enumerate(REASONS)}
    counts[REASONS[-1]] += BAD - sum(counts.values())
    return counts


def _good(start: int, n: int, tag: str) -> pd.DataFrame:
    """``n`` valid rows with unique natural keys, as the strings a JSON source holds."""
    i = np.arange(start, start + n)
    stamps = np.datetime64("2024-01-01T00:00:00") + i.astype("timedelta64[s]")
    kinds = np.array(["voice", "sms", "data"])[i % 3]
    return pd.DataFrame(
        {
            "customer_id": np.char.add(tag, (i % 50_000).astype(str)),
            "event_time": np.datetime_as_string(stamps).astype(object),
            "event_type": kinds,
            "direction": np.array(["out", "in"])[i % 2],
            "duration_s": np.where(kinds == "voice", (i % 600).astype(str), None),
            "data_mb": np.where(kinds == "data", ((i % 997) / 10).astype(str), None),
            "is_international": np.array(["false", "true"])[(i % 7 == 0).astype(int)],
            "counterparty_id": np.char.add("+44", i.astype(str)),
        }
    )


# short source keys (a mapping file names them): a smaller file to write and to parse
SHORT = dict(zip(COLUMNS, "cteasmip", strict=True))
CHUNK = 100_000


def _json_lines(frame: pd.DataFrame) -> str:
    text: str = frame.rename(columns=SHORT).to_json(orient="records", lines=True)
    return text.rstrip("\n") + "\n"


def _write_input(path: Path, existing: pd.DataFrame, planted: dict[str, int]) -> int:
    """The big input, written in chunks: good rows, then every planted kind of bad row.

    Returns the number of lines written.
    """
    lines = 0
    with path.open("w") as out:
        for start in range(0, ROWS - BAD, CHUNK):
            chunk = _good(start, min(CHUNK, ROWS - BAD - start), "G")
            out.write(_json_lines(chunk))
            lines += len(chunk)
        offset = ROWS
        for reason, value in BREAK.items():
            frame = _good(offset, planted[reason], "B")
            offset += len(frame)
            frame[reason.split(":", 1)[1]] = value
            out.write(_json_lines(frame))
            lines += len(frame)
        # keys already in the table; exact copies of good rows of this input
        for frame in (
            existing.iloc[: planted["duplicate_in_table"]],
            _good(0, planted["duplicate_in_input"], "G"),
        ):
            out.write(_json_lines(frame))
            lines += len(frame)
        # JSON cut short: Spark cannot parse the line (no customer_id before the cut)
        out.write('{"e": "voice", "t": "2024-01-0\n' * planted["malformed_record"])
        lines += planted["malformed_record"]
    return lines


def test_a_million_rows_with_one_percent_bad_reconcile_exactly(
    spark: SparkSession, tmp_path: Path, lake_root: Path
) -> None:
    planted = _planted()
    assert sum(planted.values()) == BAD and len(set(planted.values())) == len(REASONS)
    existing = _good(10 * ROWS, EXISTING, "E")
    mapping = tmp_path / "short.yaml"
    mapping.write_text(yaml.safe_dump({"format": "json", "columns": SHORT}))
    ingest = ("ingest", "--domain", "telecom", "--mapping", str(mapping), "--input")
    first = tmp_path / "first.json"
    first.write_text(_json_lines(existing))
    ok(lake_root, *ingest, str(first))
    big = tmp_path / "big.json"
    assert _write_input(big, existing, planted) == ROWS

    out = ok(lake_root, *ingest, str(big))
    summary = out.splitlines()[0]
    assert summary.startswith(
        f"read {ROWS:,} rows: accepted {ROWS - BAD:,}, quarantined {BAD:,} ("
    ), summary

    lake = Lake(spark, str(lake_root), backend="delta-rs")
    bronze = lake.read("cdrs")
    ingest_ids = [r[0] for r in bronze.select("_ingest_id").distinct().collect()]
    assert len(ingest_ids) == 2
    new = bronze.where(F.col("customer_id").startswith("G"))
    # every good row, once: ROWS - BAD distinct counterparties (one per planted good row)
    stats = new.agg(F.count("*"), F.countDistinct("counterparty_id")).first()
    assert stats is not None and tuple(stats) == (ROWS - BAD, ROWS - BAD)
    assert bronze.count() == EXISTING + ROWS - BAD

    quarantine = lake.read("cdrs_quarantine")
    by_reason = {
        r["_reject_reason"]: r["count"]
        for r in quarantine.groupBy("_reject_reason").count().collect()
    }
    assert by_reason == planted
    # each bad row carries the reason planted in it: the row's tag tells its kind
    tags = {
        (r["tag"], r["_reject_reason"]): r["count"]
        for r in quarantine.groupBy(F.substring("customer_id", 1, 1).alias("tag"), "_reject_reason")
        .count()
        .collect()
    }
    expected = {("B", r): planted[r] for r in BREAK if r != "missing:customer_id"}
    expected[(None, "missing:customer_id")] = planted["missing:customer_id"]
    expected[(None, "malformed_record")] = planted["malformed_record"]
    expected[("E", "duplicate_in_table")] = planted["duplicate_in_table"]
    expected[("G", "duplicate_in_input")] = planted["duplicate_in_input"]
    assert tags == expected
