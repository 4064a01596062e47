"""``segspark ingest``: readers, mapping, validation, quarantine, idempotence and failures."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import TimestampType

from segspark import faults
from segspark.config import load_settings
from segspark.lake import Lake
from segspark.sources import ingest

Cli = Callable[..., tuple[int, str, str]]
UTC = dt.UTC


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _key(row: tuple[Any, ...]) -> list[tuple[bool, str]]:
    return [(v is not None, str(v)) for v in row]


def _rows(lake: Lake, table: str) -> list[tuple[Any, ...]]:
    """The table's rows without the lineage columns, timestamps as UTC text, sorted."""
    df = lake.read(table)
    columns = [
        F.col(f.name).cast("string").alias(f.name)
        if isinstance(f.dataType, TimestampType)
        else F.col(f.name)
        for f in df.schema.fields
        if f.name not in ("_source", "_ingest_id")
    ]
    return sorted((tuple(r) for r in df.select(*columns).collect()), key=_key)


def _lineage(lake: Lake, table: str) -> set[tuple[str, str]]:
    return {(r[0], r[1]) for r in lake.read(table).select("_source", "_ingest_id").collect()}


def _versions(lake: Lake, *tables: str) -> dict[str, int | None]:
    return {t: lake.version(t) if lake.exists(t) else None for t in tables}


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


TOP = ("--set", "sources.top_reasons=20")


# --------------------------------------------------------------------------------------------
# one corpus per reader, each holding every reason that applies to its table


def test_csv_with_header_into_transactions(cli: Cli, lake: Lake, tmp_path: Path) -> None:
    seed = _write(
        tmp_path / "seed.csv",
        """
        customer_id,event_time,amount,quantity,transaction_id
        c9,2024-01-02 08:00:00,7.0,1,t9
        """,
    )
    assert cli("ingest", "--domain", "retail", "--input", str(seed))[0] == 0
    corpus = _write(
        tmp_path / "sales.csv",
        """
        customer_id,event_time,amount,quantity,transaction_id
        c1,2024-01-05 10:00:00,12.50,2,t1
        c2,2024-01-06T11:30:00Z, 3 ,,t2
        ,2024-01-06,abc,1,t3
        c3,2024-01-06,abc,1,t4
        c3,2024-01-06,2.0,two,t5
        c3,2024-01-07,NaN,1,t6
        c4,2024-01-07,-1,1,t7
        c5,1999-12-31,1,1,t8
        c6,2999-01-01,1,1,t10
        c7,2024-01-08,1,1,t9
        c8,2024-01-08,5.0,1,t11
        c8,2024-01-08,4.0,1,t11
        c8,,4.0,1,t12
        """,
    )
    code, out, err = cli("ingest", "--domain", "retail", "--input", str(corpus), *TOP)
    ingest_id = _sha(corpus)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "read 13 rows: accepted 3, quarantined 10 (duplicate_in_input 1, "
        "duplicate_in_table 1, in_future:event_time 1, missing:customer_id 1, "
        "missing:event_time 1, negative:amount 1, not_finite:amount 1, too_early:event_time 1, "
        "unparseable:amount 1, unparseable:quantity 1)",
        f"transactions version 2, transactions_quarantine version 2; ingest id {ingest_id[:12]}",
    ]
    assert lake.read("transactions").schema.simpleString() == (
        "struct<customer_id:string,event_time:timestamp,amount:double,quantity:int,"
        "transaction_id:string,_source:string,_ingest_id:string>"
    )
    assert _rows(lake, "transactions") == [
        ("c1", "2024-01-05 10:00:00", 12.5, 2, "t1"),
        ("c2", "2024-01-06 11:30:00", 3.0, None, "t2"),
        ("c8", "2024-01-08 00:00:00", 4.0, 1, "t11"),
        ("c9", "2024-01-02 08:00:00", 7.0, 1, "t9"),
    ]
    assert _rows(lake, "transactions_quarantine") == [
        (None, "2024-01-06", "abc", "1", "t3", "missing:customer_id"),
        ("c3", "2024-01-06", "2.0", "two", "t5", "unparseable:quantity"),
        ("c3", "2024-01-06", "abc", "1", "t4", "unparseable:amount"),
        ("c3", "2024-01-07", "NaN", "1", "t6", "not_finite:amount"),
        ("c4", "2024-01-07", "-1", "1", "t7", "negative:amount"),
        ("c5", "1999-12-31", "1", "1", "t8", "too_early:event_time"),
        ("c6", "2999-01-01", "1", "1", "t10", "in_future:event_time"),
        ("c7", "2024-01-08", "1", "1", "t9", "duplicate_in_table"),
        ("c8", None, "4.0", "1", "t12", "missing:event_time"),
        ("c8", "2024-01-08", "5.0", "1", "t11", "duplicate_in_input"),
    ]
    assert lake.read("transactions_quarantine").schema.simpleString() == (
        "struct<customer_id:string,event_time:string,amount:string,quantity:string,"
        "transaction_id:string,_reject_reason:string,_source:string,_ingest_id:string>"
    )
    assert _lineage(lake, "transactions_quarantine") == {(str(corpus), ingest_id)}
    assert _lineage(lake, "transactions") == {
        (str(seed), _sha(seed)),
        (str(corpus), ingest_id),
    }


def test_headerless_whitespace_text_with_mapping_and_yyyymmdd(
    cli: Cli, lake: Lake, tmp_path: Path
) -> None:
    mapping = _write(
        tmp_path / "readings.yaml",
        """
        format: csv
        options: {header: false, delimiter: whitespace}
        columns: {customer_id: _c1, reading_time: _c0, kwh: _c2}
        timestamp_format: yyyyMMdd
        """,
    )
    seed = _write(tmp_path / "seed.txt", "20240101 m9 1.0\n")
    assert (
        cli("ingest", "--domain", "energy", "--input", str(seed), "--mapping", str(mapping))[0] == 0
    )
    corpus = tmp_path / "readings.txt"
    corpus.write_text(
        "20240105   m1\t1.5\n"
        "\n"
        "  20240105 m2 2.0 extra\n"
        "20240106 m3\n"
        "20240108\n"
        "2024-01-06 m4 1.0\n"
        "20240106 m5 NaN\n"
        "20240106 m6 -0.5\n"
        "19991231 m7 1.0\n"
        "29990101 m8 1.0\n"
        "20240101 m9 3.0\n"
        "20240107 m1 1.0\n"
        "20240107\t\tm1 0.9\n"
    )
    code, out, err = cli(
        "ingest", "--domain", "energy", "--input", str(corpus), "--mapping", str(mapping), *TOP
    )
    ingest_id = _sha(corpus)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "read 12 rows: accepted 3, quarantined 9 (duplicate_in_input 1, duplicate_in_table 1, "
        "in_future:reading_time 1, missing:customer_id 1, missing:kwh 1, negative:kwh 1, "
        "not_finite:kwh 1, too_early:reading_time 1, unparseable:reading_time 1)",
        f"meter_readings version 2, meter_readings_quarantine version 2; "
        f"ingest id {ingest_id[:12]}",
    ]
    assert _rows(lake, "meter_readings") == [
        ("m1", "2024-01-05 00:00:00", 1.5),
        ("m1", "2024-01-07 00:00:00", 0.9),
        ("m2", "2024-01-05 00:00:00", 2.0),
        ("m9", "2024-01-01 00:00:00", 1.0),
    ]
    assert _rows(lake, "meter_readings_quarantine") == [
        (None, "20240108", None, "missing:customer_id"),
        ("m1", "20240107", "1.0", "duplicate_in_input"),
        ("m3", "20240106", None, "missing:kwh"),
        ("m4", "2024-01-06", "1.0", "unparseable:reading_time"),
        ("m5", "20240106", "NaN", "not_finite:kwh"),
        ("m6", "20240106", "-0.5", "negative:kwh"),
        ("m7", "19991231", "1.0", "too_early:reading_time"),
        ("m8", "29990101", "1.0", "in_future:reading_time"),
        ("m9", "20240101", "3.0", "duplicate_in_table"),
    ]
    assert _lineage(lake, "meter_readings_quarantine") == {(str(corpus), ingest_id)}


def test_whitespace_text_with_header_line(cli: Cli, lake: Lake, tmp_path: Path) -> None:
    corpus = tmp_path / "readings.dat"
    corpus.write_text("id   day kwh\nm1 20240105 1.5\n\nm2\t20240106   2.5\n")
    mapping = _write(
        tmp_path / "m.yaml",
        """
        options: {delimiter: whitespace, header: true}
        columns: {customer_id: id, reading_time: day}
        timestamp_format: yyyyMMdd
        """,
    )
    code, out, err = cli(
        "ingest", "--domain", "energy", "--input", str(corpus), "--mapping", str(mapping)
    )
    assert (code, err, out.splitlines()[0]) == (0, "", "read 2 rows: accepted 2, quarantined 0")
    assert _rows(lake, "meter_readings") == [
        ("m1", "2024-01-05 00:00:00", 1.5),
        ("m2", "2024-01-06 00:00:00", 2.5),
    ]
    assert _rows(lake, "meter_readings_quarantine") == []


def test_parquet_folder_into_cdrs(
    cli: Cli, lake: Lake, spark: SparkSession, tmp_path: Path
) -> None:
    seed = _write(
        tmp_path / "seed.csv",
        "customer_id,event_time,event_type,direction,duration_s,data_mb,is_international,"
        "counterparty_id\nu9,2024-03-01 00:00:00,sms,out,,,false,u8\n",
    )
    assert cli("ingest", "--domain", "telecom", "--input", str(seed))[0] == 0
    rows = [
        ("u1", "2024-03-01 09:00:00", "VOICE", "out", 60.0, None, "true", "u2"),
        ("u1", "2024-03-01 09:05:00", "data", None, None, 12.5, "false", None),
        (None, "2024-03-01 10:00:00", "sms", "out", None, None, "no", "u3"),
        ("u2", "2024-03-01 10:00:00", None, "in", 5.0, None, None, "u1"),
        ("u2", "yesterday", "voice", "in", 5.0, None, None, "u1"),
        ("u2", "2024-03-01 11:00:00", "voice", "in", 5.0, None, "maybe", "u1"),
        ("u3", "2024-03-01 12:00:00", "data", "out", None, float("nan"), None, None),
        ("u3", "2024-03-01 12:30:00", "voice", "out", -3.0, None, None, "u4"),
        ("u3", "1999-06-01 00:00:00", "sms", "out", None, None, None, "u4"),
        ("u3", "2999-06-01 00:00:00", "sms", "out", None, None, None, "u4"),
        ("u4", "2024-03-02 08:00:00", "fax", "out", None, None, None, "u5"),
        ("u4", "2024-03-02 08:00:00", "sms", "sideways", None, None, None, "u5"),
        ("u9", "2024-03-01 00:00:00", "sms", "out", None, None, "false", "u8"),
        ("u5", "2024-03-03 07:00:00", "sms", "in", None, None, "true", "u6"),
        ("u5", "2024-03-03 07:00:00", "sms", "in", None, None, "false", "u6"),
    ]
    folder = tmp_path / "cdrs_export"
    spark.createDataFrame(
        rows,
        "customer_id string, event_time string, event_type string, direction string, "
        "duration_s double, data_mb double, is_international string, counterparty_id string",
    ).repartition(3).write.parquet(str(folder))
    parts = sorted(p for p in folder.iterdir() if p.suffix == ".parquet")
    ingest_id = hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()
    code, out, err = cli("ingest", "--domain", "telecom", "--input", str(folder), *TOP)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "read 15 rows: accepted 3, quarantined 12 (duplicate_in_input 1, duplicate_in_table 1, "
        "in_future:event_time 1, missing:customer_id 1, missing:event_type 1, "
        "negative:duration_s 1, not_finite:data_mb 1, too_early:event_time 1, "
        "unknown_value:direction 1, unknown_value:event_type 1, unparseable:event_time 1, "
        "unparseable:is_international 1)",
        f"cdrs version 2, cdrs_quarantine version 2; ingest id {ingest_id[:12]}",
    ]
    assert _rows(lake, "cdrs") == [
        ("u1", "2024-03-01 09:00:00", "voice", "out", 60.0, None, True, "u2"),
        ("u1", "2024-03-01 09:05:00", "data", None, None, 12.5, False, None),
        ("u5", "2024-03-03 07:00:00", "sms", "in", None, None, False, "u6"),
        ("u9", "2024-03-01 00:00:00", "sms", "out", None, None, False, "u8"),
    ]
    assert _rows(lake, "cdrs_quarantine") == [
        (None, "2024-03-01 10:00:00", "sms", "out", None, None, "no", "u3", "missing:customer_id"),
        ("u2", "2024-03-01 10:00:00", None, "in", "5.0", None, None, "u1", "missing:event_type"),
        (
            "u2",
            "2024-03-01 11:00:00",
            "voice",
            "in",
            "5.0",
            None,
            "maybe",
            "u1",
            "unparseable:is_international",
        ),
        ("u2", "yesterday", "voice", "in", "5.0", None, None, "u1", "unparseable:event_time"),
        ("u3", "1999-06-01 00:00:00", "sms", "out", None, None, None, "u4", "too_early:event_time"),
        ("u3", "2024-03-01 12:00:00", "data", "out", None, "NaN", None, None, "not_finite:data_mb"),
        (
            "u3",
            "2024-03-01 12:30:00",
            "voice",
            "out",
            "-3.0",
            None,
            None,
            "u4",
            "negative:duration_s",
        ),
        ("u3", "2999-06-01 00:00:00", "sms", "out", None, None, None, "u4", "in_future:event_time"),
        (
            "u4",
            "2024-03-02 08:00:00",
            "fax",
            "out",
            None,
            None,
            None,
            "u5",
            "unknown_value:event_type",
        ),
        (
            "u4",
            "2024-03-02 08:00:00",
            "sms",
            "sideways",
            None,
            None,
            None,
            "u5",
            "unknown_value:direction",
        ),
        ("u5", "2024-03-03 07:00:00", "sms", "in", None, None, "true", "u6", "duplicate_in_input"),
        (
            "u9",
            "2024-03-01 00:00:00",
            "sms",
            "out",
            None,
            None,
            "false",
            "u8",
            "duplicate_in_table",
        ),
    ]
    assert _lineage(lake, "cdrs") == {(str(seed), _sha(seed)), (str(folder), ingest_id)}


def test_json_lines_into_customers(cli: Cli, lake: Lake, tmp_path: Path) -> None:
    seed = _write(tmp_path / "seed.jsonl", '{"customer_id": "k9", "region": "west"}\n')
    assert cli("ingest", "--domain", "retail", "--table", "customers", "--input", str(seed))[0] == 0
    corpus = _write(
        tmp_path / "customers.json",
        """
        {"customer_id": "k1", "region": "north", "age_band": "25-34", "income_band": "mid",\
 "signup_date": "2023-05-01"}
        {"customer_id": "k2", "region": "south", "signup_date": "2023-06-31"}
        {"region": "east"}
        {not json
        {"customer_id": "k9", "region": "west"}
        {"customer_id": "k3", "region": "b"}
        {"customer_id": "k3", "region": "a"}
        {"customer_id": 17, "sector": "residential", "signup_date": "2020-02-29"}
        """,
    )
    code, out, err = cli(
        "ingest", "--domain", "retail", "--table", "customers", "--input", str(corpus)
    )
    ingest_id = _sha(corpus)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "read 8 rows: accepted 3, quarantined 5 (duplicate_in_input 1, duplicate_in_table 1, "
        "malformed_record 1, missing:customer_id 1, unparseable:signup_date 1)",
        f"customers version 2, customers_quarantine version 2; ingest id {ingest_id[:12]}",
    ]
    assert _rows(lake, "customers") == [
        ("17", "retail", None, None, None, "residential", dt.date(2020, 2, 29)),
        ("k1", "retail", "north", "25-34", "mid", None, dt.date(2023, 5, 1)),
        ("k3", "retail", "a", None, None, None, None),
        ("k9", "retail", "west", None, None, None, None),
    ]
    assert _rows(lake, "customers_quarantine") == [
        (None, "retail", None, None, None, None, None, "malformed_record"),
        (None, "retail", "east", None, None, None, None, "missing:customer_id"),
        ("k2", "retail", "south", None, None, None, "2023-06-31", "unparseable:signup_date"),
        ("k3", "retail", "b", None, None, None, None, "duplicate_in_input"),
        ("k9", "retail", "west", None, None, None, None, "duplicate_in_table"),
    ]


def test_delta_table_into_meter_readings(
    cli: Cli, lake: Lake, spark: SparkSession, tmp_path: Path
) -> None:
    seed = _write(tmp_path / "seed.csv", "customer_id,reading_time,kwh\nd9,2024-01-01,2.0\n")
    assert cli("ingest", "--domain", "energy", "--input", str(seed))[0] == 0

    def at(*parts: int) -> dt.datetime:
        return dt.datetime(*parts, tzinfo=UTC)

    source = Lake(spark, str(tmp_path / "src"), backend="delta-rs")
    source.write(
        "readings",
        spark.createDataFrame(
            [
                ("d1", at(2024, 2, 1, 0, 0), 1.25),
                ("d1", at(2024, 2, 1, 0, 15), 0.0),
                (None, at(2024, 2, 1), 1.0),
                ("d2", None, 1.0),
                ("d2", at(2024, 2, 1, 0, 30), float("inf")),
                ("d2", at(2024, 2, 1, 0, 45), -0.1),
                ("d3", at(1999, 1, 1), 1.0),
                ("d3", at(2999, 1, 1), 1.0),
                ("d9", at(2024, 1, 1), 3.0),
                ("d4", at(2024, 2, 2), 0.5),
                ("d4", at(2024, 2, 2), 0.25),
            ],
            "customer_id string, reading_time timestamp, kwh double",
        ),
    )
    path = str(tmp_path / "src" / "readings")
    ingest_id = hashlib.sha256(f"{path}@0".encode()).hexdigest()
    code, out, err = cli("ingest", "--domain", "energy", "--input", path, *TOP)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "read 11 rows: accepted 3, quarantined 8 (duplicate_in_input 1, duplicate_in_table 1, "
        "in_future:reading_time 1, missing:customer_id 1, missing:reading_time 1, "
        "negative:kwh 1, not_finite:kwh 1, too_early:reading_time 1)",
        f"meter_readings version 2, meter_readings_quarantine version 2; "
        f"ingest id {ingest_id[:12]}",
    ]
    assert _rows(lake, "meter_readings") == [
        ("d1", "2024-02-01 00:00:00", 1.25),
        ("d1", "2024-02-01 00:15:00", 0.0),
        ("d4", "2024-02-02 00:00:00", 0.25),
        ("d9", "2024-01-01 00:00:00", 2.0),
    ]
    assert _rows(lake, "meter_readings_quarantine") == [
        (None, "2024-02-01 00:00:00", "1.0", "missing:customer_id"),
        ("d2", None, "1.0", "missing:reading_time"),
        ("d2", "2024-02-01 00:30:00", "Infinity", "not_finite:kwh"),
        ("d2", "2024-02-01 00:45:00", "-0.1", "negative:kwh"),
        ("d3", "1999-01-01 00:00:00", "1.0", "too_early:reading_time"),
        ("d3", "2999-01-01 00:00:00", "1.0", "in_future:reading_time"),
        ("d4", "2024-02-02 00:00:00", "0.5", "duplicate_in_input"),
        ("d9", "2024-01-01 00:00:00", "3.0", "duplicate_in_table"),
    ]
    assert _lineage(lake, "meter_readings_quarantine") == {(path, ingest_id)}
    before = _versions(lake, "meter_readings", "meter_readings_quarantine")
    code, out, _ = cli("ingest", "--domain", "energy", "--input", path, "--format", "delta")
    assert (code, out.splitlines()) == (
        0,
        [
            f"input {path} was already ingested (ingest id {ingest_id[:12]}): nothing added "
            "(meter_readings version 2, meter_readings_quarantine version 2)"
        ],
    )
    assert _versions(lake, "meter_readings", "meter_readings_quarantine") == before


# --------------------------------------------------------------------------------------------
# idempotence


def test_reingesting_the_same_content_adds_nothing(cli: Cli, lake: Lake, tmp_path: Path) -> None:
    corpus = _write(
        tmp_path / "sales.csv",
        """
        customer_id,event_time,amount,transaction_id
        c1,2024-01-05,1.0,t1
        c2,2024-01-05,-1.0,t2
        """,
    )
    tables = ("transactions", "transactions_quarantine")
    code, out, _ = cli("ingest", "--domain", "retail", "--input", str(corpus))
    assert (code, out.splitlines()[0]) == (
        0,
        "read 2 rows: accepted 1, quarantined 1 (negative:amount 1)",
    )
    before = (_versions(lake, *tables), _rows(lake, tables[0]), _rows(lake, tables[1]))
    assert before[0] == {"transactions": 1, "transactions_quarantine": 1}
    copy = tmp_path / "copy" / "same_bytes.csv"
    copy.parent.mkdir()
    shutil.copy(corpus, copy)
    for again in (corpus, copy):
        code, out, err = cli("ingest", "--domain", "retail", "--input", str(again))
        assert (code, err) == (0, "")
        assert out.splitlines() == [
            f"input {again} was already ingested (ingest id {_sha(corpus)[:12]}): nothing added "
            "(transactions version 1, transactions_quarantine version 1)"
        ]
        assert (_versions(lake, *tables), _rows(lake, tables[0]), _rows(lake, tables[1])) == before


# --------------------------------------------------------------------------------------------
# unusable input


def _unusable_cases(tmp_path: Path, spark: SparkSession) -> list[tuple[list[str], str]]:
    d = tmp_path / "bad"
    d.mkdir()
    no_amount = _write(
        d / "no_amount.csv", "customer_id,event_time,transaction_id\nc1,2024-01-01,t\n"
    )
    (d / "empty.csv").write_bytes(b"")
    _write(d / "header_only.csv", "customer_id,event_time,amount\n")
    (d / "broken.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    (d / "sheet.xlsx").write_bytes(b"PK")
    good = _write(d / "good.csv", "customer_id,event_time,amount\nc1,2024-01-01,1.0\n")
    price = _write(d / "price.yaml", "columns: {amount: price}\n")
    typo = _write(d / "typo.yaml", "colums: {amount: price}\n")
    unknown = _write(d / "unknown.yaml", "columns: {price: amount}\n")
    folder = d / "csv_folder"
    folder.mkdir()
    shutil.copy(good, folder / "part.csv")
    retail = ["ingest", "--domain", "retail", "--input"]
    return [
        ([*retail, str(d / "nope.csv")], f"input {d / 'nope.csv'} does not exist"),
        (
            [*retail, str(good), "--format", "xml"],
            f"unknown format 'xml' for input {good}: expected csv, parquet, json or delta",
        ),
        (
            [*retail, str(d / "sheet.xlsx")],
            f"cannot tell the format of input {d / 'sheet.xlsx'} from its extension ('.xlsx'): "
            "give --format csv, parquet, json or delta",
        ),
        (
            [*retail, str(no_amount)],
            f"input {no_amount} has no column 'amount', required for transactions "
            "(columns: customer_id, event_time, transaction_id)",
        ),
        (
            [*retail, str(good), "--mapping", str(price)],
            f"mapping {price}: column 'amount' maps to 'price', which is not in input {good} "
            "(columns: customer_id, event_time, amount)",
        ),
        (
            [*retail, str(good), "--mapping", str(typo)],
            f"mapping {typo}: unknown key 'colums' (expected format, options, columns, "
            "timestamp_format)",
        ),
        (
            [*retail, str(good), "--mapping", str(unknown)],
            f"mapping {unknown}: 'price' is not a column of transactions "
            "(columns: customer_id, event_time, amount, quantity, transaction_id)",
        ),
        (
            [*retail, str(good), "--mapping", str(d / "missing.yaml")],
            f"mapping file {d / 'missing.yaml'} does not exist",
        ),
        ([*retail, str(d / "empty.csv")], f"input {d / 'empty.csv'} holds no rows"),
        ([*retail, str(d / "header_only.csv")], f"input {d / 'header_only.csv'} holds no rows"),
        (
            [*retail, str(d / "broken.parquet")],
            f"cannot read {d / 'broken.parquet'} as parquet: ",
        ),
        (
            [*retail, str(folder), "--format", "delta"],
            f"input {folder} is not a Delta table (no _delta_log)",
        ),
        (
            [*retail, str(good), "--table", "cdrs"],
            "cannot ingest table 'cdrs' for domain retail: use --table customers, "
            "or omit --table for transactions",
        ),
    ]


def test_unusable_input_exits_2_and_writes_nothing(
    cli: Cli, lake: Lake, spark: SparkSession, tmp_path: Path
) -> None:
    cases = _unusable_cases(tmp_path, spark)
    tables = ("transactions", "transactions_quarantine", "customers", "customers_quarantine")
    for args, message in cases:
        code, out, err = cli(*args)
        assert (code, out) == (2, ""), args
        lines = err.splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith(f"segspark: error: {message}"), (lines[0], message)
        if not message.endswith(": "):
            assert lines[0] == f"segspark: error: {message}"
    assert lake.tables() == []
    seed = _write(tmp_path / "seed.csv", "customer_id,event_time,amount\nc0,2024-01-01,1.0\n")
    assert cli("ingest", "--domain", "retail", "--input", str(seed))[0] == 0
    assert cli("ingest", "--domain", "retail", "--table", "customers", "--input", str(seed))[0] == 0
    before = _versions(lake, *tables)
    assert before == dict.fromkeys(tables, 1)
    for args, message in cases:
        code, _, err = cli(*args)
        assert code == 2, args
        assert err.splitlines()[0].startswith(f"segspark: error: {message}")
    assert _versions(lake, *tables) == before


# --------------------------------------------------------------------------------------------
# derived transaction ids


@contextmanager
def _conf(spark: SparkSession, **values: str) -> Iterator[None]:
    keys = {k.replace("_", "."): v for k, v in values.items()}
    old = {k: spark.conf.get(k, None) for k in keys}
    for k, v in keys.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)


def test_derived_transaction_ids_are_stable_and_source_specific(
    spark: SparkSession, tmp_path: Path
) -> None:
    settings = load_settings(domain="retail", env="test").sources
    body = (
        "customer_id,event_time,amount,quantity\n"
        + "c1,2024-01-05 10:00:00,1.0,1\n" * 3
        + "".join(f"c{i},2024-01-0{i % 9 + 1},{i}.5,{i}\n" for i in range(2, 40))
    )
    first = tmp_path / "one" / "sales.csv"
    first.parent.mkdir()
    first.write_text(body)
    copy = tmp_path / "two" / "renamed.csv"
    copy.parent.mkdir()
    copy.write_text(body)
    other = tmp_path / "three" / "more.csv"
    other.parent.mkdir()
    other.write_text(body + "c99,2024-01-09,9.0,9\n")

    def ids(path: Path, lake_dir: str) -> dict[tuple[Any, ...], list[str]]:
        lake = Lake(spark, str(tmp_path / lake_dir), backend="delta-rs")
        result = ingest(spark, lake, domain="retail", input_path=str(path), settings=settings)
        assert (result.read, result.quarantined) == (result.accepted, 0)
        found: dict[tuple[Any, ...], list[str]] = {}
        rows = lake.read("transactions").select(
            "customer_id", F.col("event_time").cast("string"), "amount", "transaction_id"
        )
        for row in rows.collect():
            found.setdefault(tuple(row[:3]), []).append(row[3])
        return {k: sorted(v) for k, v in found.items()}

    with _conf(spark, spark_sql_shuffle_partitions="1"):
        a = ids(first, "lake_a")
    with _conf(
        spark,
        spark_sql_shuffle_partitions="7",
        spark_sql_files_maxPartitionBytes="64",
        spark_sql_files_openCostInBytes="1",
        spark_sql_adaptive_enabled="false",
    ):
        b = ids(copy, "lake_b")
    c = ids(other, "lake_c")
    assert a == b
    assert len({i for v in a.values() for i in v}) == 41
    key = ("c1", "2024-01-05 10:00:00", 1.0)
    content = (
        '{"customer_id":"c1","event_time":"2024-01-05 10:00:00","amount":"1.0","quantity":"1"}'
    )
    assert a[key] == sorted(
        hashlib.sha256(f"{_sha(first)}|{content}|{n}".encode()).hexdigest() for n in (1, 2, 3)
    )
    assert set(c) == set(a) | {("c99", "2024-01-09 00:00:00", 9.0)}
    assert all(set(c[k]).isdisjoint(a[k]) for k in a)


# --------------------------------------------------------------------------------------------
# partial failure


def _fail_on_second(name: str, real: Callable[[str], None]) -> Callable[[str], None]:
    seen = {"n": 0}

    def point(point_name: str) -> None:
        if point_name == name:
            seen["n"] += 1
            if seen["n"] == 2:
                raise faults.InjectedFault(f"fault injected at {point_name}")
        real(point_name)

    return point


@pytest.mark.parametrize("fault", ["lake.before_commit (second write)", "ingest.between_commits"])
def test_a_failure_between_the_two_commits_is_completed_by_a_retry(
    cli: Cli, lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    corpus = _write(
        tmp_path / "sales.csv",
        """
        customer_id,event_time,amount,transaction_id
        c1,2024-01-05,1.0,t1
        c2,2024-01-05,-1.0,t2
        c3,2024-01-06,2.0,t3
        """,
    )
    args = ("ingest", "--domain", "retail", "--input", str(corpus))
    point = fault.split()[0]
    with monkeypatch.context() as armed:
        if point == "lake.before_commit":
            armed.setattr(faults, "point", _fail_on_second(point, faults.point))
        else:
            armed.setenv("SEGSPARK_FAULT", point)
        code, out, err = cli(*args)
    assert (code, out) == (1, "")
    assert err.splitlines() == [f"segspark: failed: InjectedFault: fault injected at {point}"]
    accepted = [
        ("c1", "2024-01-05 00:00:00", 1.0, None, "t1"),
        ("c3", "2024-01-06 00:00:00", 2.0, None, "t3"),
    ]
    assert lake.version("transactions") == 1
    assert _rows(lake, "transactions") == accepted
    assert (
        not lake.exists("transactions_quarantine") or _rows(lake, "transactions_quarantine") == []
    )

    code, out, err = cli(*args)
    ingest_id = _sha(corpus)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "read 3 rows: accepted 2, quarantined 1 (negative:amount 1)",
        f"transactions version 1, transactions_quarantine version 1; ingest id "
        f"{ingest_id[:12]} (completed an interrupted ingest: transactions already held it)",
    ]
    assert _rows(lake, "transactions") == accepted
    assert _rows(lake, "transactions_quarantine") == [
        ("c2", "2024-01-05", "-1.0", None, "t2", "negative:amount")
    ]
    code, out, _ = cli(*args)
    assert out.splitlines()[0].startswith(f"input {corpus} was already ingested")
    assert _versions(lake, "transactions", "transactions_quarantine") == {
        "transactions": 1,
        "transactions_quarantine": 1,
    }


def test_summary_line_shows_counts_and_top_reasons() -> None:
    from segspark.sources import IngestResult

    result = IngestResult(
        "transactions",
        "/in/sales.csv",
        "ab" * 32,
        {"transactions": 3, "transactions_quarantine": 3},
        read=1000,
        accepted=990,
        quarantined=10,
        reasons=(("unparseable:amount", 6), ("duplicate_in_input", 4)),
    )
    assert result.summary() == (
        "read 1,000 rows: accepted 990, quarantined 10 (unparseable:amount 6, duplicate_in_input 4)"
    )
    assert json.dumps(result.lines()) == json.dumps(
        [
            result.summary(),
            "transactions version 3, transactions_quarantine version 3; ingest id abababababab",
        ]
    )
