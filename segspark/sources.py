"""Ingest: read a source, map it to a bronze table's contract, validate it, quarantine bad rows.

The flow is ``read -> map + parse -> (derive transaction ids) -> validate -> split``. Reading and
writing happen in :func:`ingest` only; :func:`parse`, :func:`derive_transaction_ids`,
:func:`validate`, :func:`accepted_rows` and :func:`quarantine_rows` are pure DataFrame
transforms built from Spark's own functions.

Sources: CSV (any delimiter; ``delimiter: whitespace`` splits on runs of spaces and tabs, with
or without a header line), Parquet (a file or a folder), JSON lines and Delta tables (read at
their current version through the lake's backend). The format comes from ``--format``, else the
mapping's ``format``, else the file extension (a folder holding ``_delta_log`` is Delta). A
mapping file is YAML with ``format``, reader ``options``, ``columns`` (contract column: source
column) and ``timestamp_format`` (a Spark datetime pattern such as ``yyyyMMdd``, used for every
timestamp and date column held as text). Without a mapping the contract names are expected.
Columns absent from the source are null; a required one that is absent makes the input
unusable. Without a header CSV columns are named ``_c0``, ``_c1``, ... String values are
trimmed; enum values are also lower-cased.

Reason codes (``_reject_reason``), stable; a rejected row carries the first that applies, in
this priority order (rule by rule, and within a rule in contract column order):

1. ``malformed_record`` -- a JSON line Spark could not parse.
2. ``missing:<column>`` -- a required value is null or blank.
3. ``unparseable:<column>`` -- a value is present but is not a valid value of the column's type.
4. ``not_finite:<column>`` -- NaN or an infinite number.
5. ``negative:<column>`` -- below zero where that is impossible (``sources.non_negative``).
6. ``too_early:<column>`` -- before ``sources.earliest_event_date`` (``sources.time_bounded``).
7. ``in_future:<column>`` -- later than now plus ``sources.future_tolerance_hours``.
8. ``unknown_value:<column>`` -- not one of the allowed values (``sources.enums``).
9. ``duplicate_in_table`` -- the natural key (``sources.natural_keys``) is already in the table
   (rows an earlier, interrupted run of the same input wrote do not count).
10. ``duplicate_in_input`` -- another valid row of the input has the same natural key; the copy
    whose raw values sort first (contract column order, nulls first) is kept.

Rejected rows go to ``<table>_quarantine``: every contract column as the raw string read (null
when the source lacks the column), ``_reject_reason``, ``_source`` and ``_ingest_id``.

Idempotence: the ingest id is the SHA-256 over the input files' bytes (streamed, in sorted path
order; files whose path has a part starting with ``_`` or ``.`` are skipped, as Spark skips them)
or, for a Delta input, over its path and version. The accepted rows and the quarantine rows are
two commits carrying the app id ``segspark-ingest:<id>``; an input whose two commits both landed
is recognised before anything is read, and a retry after a failure between them writes only the
missing one.

``transactions.transaction_id`` may be absent from the source: it is then
``sha2(ingest id | row content as JSON | occurrence among identical rows)``, the same however the
data is partitioned (a source that has the column but leaves a value empty gets
``missing:transaction_id``). ``customers.domain`` always comes from ``--domain``.

Example:
    >>> result = ingest(spark, lake, domain="retail", input_path="sales.csv",
    ...                 settings=load_settings(domain="retail").sources)
    >>> print(result.lines()[0])
    read 1,000 rows: accepted 990, quarantined 10 (unparseable:amount 6, duplicate_in_input 4)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import yaml
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    BooleanType,
    DataType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    NumericType,
    ShortType,
    StringType,
    StructField,
    StructType,
    TimestampNTZType,
    TimestampType,
)

from segspark import faults
from segspark.config import SourcesSettings
from segspark.errors import ConfigError, InputError, SegsparkError, UsageError
from segspark.lake import Lake
from segspark.schemas import BRONZE, EVENT_TABLES

log = logging.getLogger(__name__)

FORMATS = ("csv", "parquet", "json", "delta")
EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".dat": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
}
WHITESPACE = "whitespace"
REASON = "_reject_reason"
CORRUPT_RECORD = "_corrupt_record"
APP_PREFIX = "segspark-ingest:"
APP_VERSION = 1
_RAW = "__raw__"
_MALFORMED = "__malformed"
_IN_TABLE = "__in_table"
_KEY = "__key__"
_MAPPING_KEYS = ("format", "options", "columns", "timestamp_format")
_CHUNK = 1 << 20
_SHOWN_COLUMNS = 20


# --------------------------------------------------------------------------------------------
# contracts


def contract_columns(table: str) -> list[str]:
    """The contract columns of a bronze table, without the lineage columns.

    Example:
        >>> contract_columns("meter_readings")
        ['customer_id', 'reading_time', 'kwh']
    """
    return [f.name for f in BRONZE[table].fields if not f.name.startswith("_")]


def quarantine_table(table: str) -> str:
    """The quarantine table of ``table``.

    Example:
        >>> quarantine_table("cdrs")
        'cdrs_quarantine'
    """
    return f"{table}_quarantine"


def quarantine_schema(table: str) -> StructType:
    """Every contract column of ``table`` as a string, then the reason and the lineage.

    Example:
        >>> quarantine_schema("meter_readings").names
        ['customer_id', 'reading_time', 'kwh', '_reject_reason', '_source', '_ingest_id']
    """
    return StructType(
        [
            *(StructField(c, StringType(), True) for c in contract_columns(table)),
            StructField(REASON, StringType(), False),
            StructField("_source", StringType(), False),
            StructField("_ingest_id", StringType(), False),
        ]
    )


def target_table(domain: str, table: str | None) -> str:
    """The bronze table an ingest loads: the domain's event table, or ``customers``.

    Example:
        >>> target_table("telecom", None)
        'cdrs'
    """
    if domain not in EVENT_TABLES:
        raise UsageError(f"unknown domain {domain!r}; expected one of {', '.join(EVENT_TABLES)}")
    events = EVENT_TABLES[domain]
    if table is None or table in (events, "customers"):
        return table or events
    raise UsageError(
        f"cannot ingest table {table!r} for domain {domain}: use --table customers, "
        f"or omit --table for {events}"
    )


@dataclass(frozen=True)
class Rules:
    """The validation rules of one table, resolved from ``sources:`` for one run."""

    required: tuple[str, ...]
    non_negative: tuple[str, ...]
    time_bounded: tuple[str, ...]
    enums: Mapping[str, tuple[str, ...]]
    key: tuple[str, ...]
    earliest: dt.datetime
    latest: dt.datetime


def rules_for(table: str, settings: SourcesSettings, *, now: dt.datetime) -> Rules:
    """Resolve the configured rules of ``table``; configured columns must be in the contract.

    Example:
        >>> rules_for("meter_readings", settings, now=dt.datetime.now(dt.UTC)).key
        ('customer_id', 'reading_time')
    """
    columns = contract_columns(table)

    def check(key: str, names: Sequence[str]) -> tuple[str, ...]:
        unknown = [n for n in names if n not in columns]
        if unknown:
            raise ConfigError(
                f"config error: sources.{key}.{table} names {unknown}, not columns of {table}"
            )
        return tuple(names)

    schema = BRONZE[table]
    key = check("natural_keys", settings.natural_keys.get(table, []))
    if not key:
        raise ConfigError(f"config error: sources.natural_keys.{table} is missing or empty")
    enums = settings.enums.get(table, {})
    check("enums", list(enums))
    earliest = dt.datetime.combine(settings.earliest_event_date, dt.time(), dt.UTC)
    stamp = now if now.tzinfo else now.replace(tzinfo=dt.UTC)
    return Rules(
        required=tuple(c for c in columns if not schema[c].nullable),
        non_negative=check("non_negative", settings.non_negative.get(table, [])),
        time_bounded=check("time_bounded", settings.time_bounded.get(table, [])),
        enums={c: tuple(v.lower() for v in values) for c, values in enums.items()},
        key=key,
        earliest=earliest,
        latest=stamp + dt.timedelta(hours=settings.future_tolerance_hours),
    )


# --------------------------------------------------------------------------------------------
# mapping files and input discovery


@dataclass(frozen=True)
class SourceMapping:
    """A parsed mapping file (all fields optional)."""

    format: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    columns: Mapping[str, str] = field(default_factory=dict)
    timestamp_format: str | None = None
    origin: str | None = None


def _option_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_mapping(data: Any, origin: str = "<mapping>") -> SourceMapping:
    """Check and normalise a mapping read from YAML.

    Example:
        >>> parse_mapping({"columns": {"kwh": "_c2"}, "options": {"header": False}}).options
        {'header': 'false'}
    """
    where = f"mapping {origin}"
    if data is None:
        return SourceMapping(origin=origin)
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a YAML mapping at the top level")
    unknown = [k for k in data if k not in _MAPPING_KEYS]
    if unknown:
        raise InputError(
            f"{where}: unknown key {unknown[0]!r} (expected {', '.join(_MAPPING_KEYS)})"
        )
    fmt = data.get("format")
    if fmt is not None and not isinstance(fmt, str):
        raise InputError(f"{where}: format must be a string")
    options = data.get("options") or {}
    columns = data.get("columns") or {}
    if not isinstance(options, dict) or not all(
        isinstance(v, str | bool | int | float) for v in options.values()
    ):
        raise InputError(f"{where}: options must map option names to plain values")
    if not isinstance(columns, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in columns.items()
    ):
        raise InputError(f"{where}: columns must map contract columns to source column names")
    stamp = data.get("timestamp_format")
    if stamp is not None and not isinstance(stamp, str):
        raise InputError(f"{where}: timestamp_format must be a string")
    return SourceMapping(
        format=fmt,
        options={str(k): _option_text(v) for k, v in options.items()},
        columns=dict(columns),
        timestamp_format=stamp,
        origin=origin,
    )


def load_mapping(path: str | Path) -> SourceMapping:
    """Read a mapping file (see the module docstring).

    Example:
        >>> load_mapping("conf/mappings/cdnow.yaml").timestamp_format
        'yyyyMMdd'
    """
    file = Path(path)
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise InputError(f"mapping file {path} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read mapping file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise InputError(f"mapping {path} is not valid YAML: {first}") from None
    return parse_mapping(data, str(path))


def local_input(path: str) -> Path:
    """The absolute local path of ``path`` (a plain path or a ``file:`` URI).

    Example:
        >>> local_input("file:///data/sales.csv")
        PosixPath('/data/sales.csv')
    """
    parsed = urlparse(path)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path)).resolve()
    if parsed.scheme and len(parsed.scheme) > 1:
        raise InputError(
            f"input {path}: ingest reads local or shared POSIX paths (it hashes the bytes "
            "on the driver); copy the input to a mounted path"
        )
    return Path(path).expanduser().resolve()


def _hidden(relative: Path) -> bool:
    return any(part.startswith(("_", ".")) for part in relative.parts)


def input_files(root: Path) -> list[Path]:
    """The data files of an input (itself, or those under a folder), in sorted path order.

    Example:
        >>> [p.name for p in input_files(Path("exports/2024"))]
        ['part-0.parquet', 'part-1.parquet']
    """
    if root.is_file():
        return [root]
    found = [p for p in root.rglob("*") if p.is_file() and not _hidden(p.relative_to(root))]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def content_hash(files: Sequence[Path]) -> str:
    """SHA-256 (hex) over the bytes of ``files`` in the given order, streamed.

    Example:
        >>> content_hash([]) == hashlib.sha256(b"").hexdigest()
        True
    """
    digest = hashlib.sha256()
    for file in files:
        try:
            with file.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
        except OSError as exc:
            raise InputError(f"cannot read input {file}: {exc.strerror}") from None
    return digest.hexdigest()


def resolve_format(root: Path, given: str | None, mapping: SourceMapping) -> str:
    """The input's format: ``given``, else the mapping's, else the extension.

    A folder holding ``_delta_log`` is a Delta table; another folder's files must share one
    known extension.

    Example:
        >>> resolve_format(Path("a.jsonl"), None, SourceMapping())
        'json'
    """
    fmt = given or mapping.format
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise InputError(
                f"unknown format {fmt!r} for input {root}: expected csv, parquet, json or delta"
            )
        return fmt
    if root.is_dir() and (root / "_delta_log").is_dir():
        return "delta"
    suffixes = sorted({f.suffix.lower() for f in input_files(root)})
    found = {EXTENSIONS.get(s) for s in suffixes}
    if len(found) == 1 and None not in found:
        return str(found.pop())
    shown = ", ".join(repr(s or "(none)") for s in suffixes) or "no files"
    raise InputError(
        f"cannot tell the format of input {root} from its extension ({shown}): "
        "give --format csv, parquet, json or delta"
    )


# --------------------------------------------------------------------------------------------
# readers (edge)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def read_whitespace(
    spark: SparkSession, root: Path, files: Sequence[Path], *, header: bool
) -> DataFrame:
    """Read text whose fields are separated by runs of spaces or tabs; blank lines are skipped.

    With ``header`` the first line of the first file names the columns and every line equal
    to it is dropped (as Spark's CSV reader drops repeated headers); without, the columns are
    ``_c0``, ``_c1``, ... up to the longest line (one scalar aggregation).

    Example:
        >>> read_whitespace(spark, Path("cdnow.txt"), [Path("cdnow.txt")], header=False).columns
        ['_c0', '_c1', '_c2', '_c3']
    """
    lines = spark.read.text(str(root)).where(F.trim(F.col("value")) != "")
    tokens = F.split(F.trim(F.col("value")), r"\s+")
    if header:
        names = _header_tokens(files)
        if not names:
            return spark.createDataFrame([], StructType([]))
        lines = lines.where(tokens != F.array(*[F.lit(n) for n in names]))
    else:
        longest = lines.select(F.max(F.size(tokens))).first()
        count = int(longest[0]) if longest is not None and longest[0] is not None else 0
        names = [f"_c{i}" for i in range(count)]
    if not names:
        return spark.createDataFrame([], StructType([]))
    return lines.select(
        *[F.try_element_at(tokens, F.lit(i + 1)).alias(n) for i, n in enumerate(names)]
    )


def _header_tokens(files: Sequence[Path]) -> list[str]:
    for file in files[:1]:
        with file.open("r", errors="replace") as handle:
            for line in handle:
                if line.strip():
                    return line.split()
    return []


def read_input(
    spark: SparkSession,
    lake: Lake,
    root: Path,
    files: Sequence[Path],
    fmt: str,
    options: Mapping[str, str],
    *,
    delta_version: int | None = None,
) -> DataFrame:
    """Read the input as Spark sees it (columns as the source names them).

    Example:
        >>> read_input(spark, lake, Path("a.csv"), [Path("a.csv")], "csv", {"header": "true"})
        DataFrame[customer_id: string, amount: string]
    """
    opts = dict(options)
    try:
        if fmt == "delta":
            return lake.read_path(str(root), version=delta_version)
        delimiter = opts.get("delimiter", opts.get("sep"))
        if fmt == "csv" and delimiter is not None and delimiter.lower() == WHITESPACE:
            return read_whitespace(
                spark, root, files, header=opts.get("header", "false").lower() == "true"
            )
        return spark.read.options(**opts).format(fmt).load(str(root))
    except SegsparkError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read {root} as {fmt}: {_first_line(exc)}") from exc


# --------------------------------------------------------------------------------------------
# mapping and parsing (pure)


def resolve_columns(
    available: Sequence[str],
    table: str,
    mapping: SourceMapping,
    *,
    where: str,
) -> dict[str, str | None]:
    """Map each contract column to its source column (None: absent from the source).

    Raises :class:`InputError` for a mapping naming an unknown contract column or a source
    column the input lacks, and for a required column the input lacks (``transaction_id`` may
    be absent: it is derived; ``customers.domain`` always comes from ``--domain``).

    Example:
        >>> resolve_columns(["_c0", "_c1", "_c2"], "meter_readings",
        ...                 SourceMapping(columns={"customer_id": "_c0", "reading_time": "_c1",
        ...                                        "kwh": "_c2"}), where="input r.txt")
        {'customer_id': '_c0', 'reading_time': '_c1', 'kwh': '_c2'}
    """
    columns = contract_columns(table)
    schema = BRONZE[table]
    present = set(available)
    shown = ", ".join(list(available)[:_SHOWN_COLUMNS]) + (
        ", ..." if len(available) > _SHOWN_COLUMNS else ""
    )
    origin = mapping.origin or "<mapping>"
    for contract, named in mapping.columns.items():
        if table == "customers" and contract == "domain":
            raise InputError(f"mapping {origin}: 'domain' comes from --domain and is not mapped")
        if contract not in columns:
            raise InputError(
                f"mapping {origin}: {contract!r} is not a column of {table} "
                f"(columns: {', '.join(columns)})"
            )
        if named not in present:
            raise InputError(
                f"mapping {origin}: column {contract!r} maps to {named!r}, which is not in "
                f"{where} (columns: {shown})"
            )
    resolved: dict[str, str | None] = {}
    for column in columns:
        if table == "customers" and column == "domain":
            resolved[column] = None
            continue
        source = mapping.columns.get(column)
        if source is None and column in present:
            source = column
        optional = schema[column].nullable or (
            table == "transactions" and column == "transaction_id"
        )
        if source is None and not optional:
            raise InputError(
                f"{where} has no column {column!r}, required for {table} (columns: {shown})"
            )
        resolved[column] = source
    return resolved


def _col(name: str) -> Column:
    return F.col("`" + name.replace("`", "``") + "`")


def raw_name(column: str) -> str:
    """The name of the raw-string twin of a contract column inside the parsed frame.

    Example:
        >>> raw_name("kwh")
        '__raw__kwh'
    """
    return _RAW + column


def _blank(value: Column) -> Column:
    return value.isNull() | (F.trim(value) == "")


def _parse_text(text: Column, target: DataType, timestamp_format: str | None) -> Column:
    value = F.trim(text)
    if isinstance(target, StringType):
        return F.when(value != "", value)
    if isinstance(target, TimestampType | DateType):
        stamp = (
            F.try_to_timestamp(value, F.lit(timestamp_format))
            if timestamp_format
            else F.try_to_timestamp(value)
        )
        return stamp.cast("date") if isinstance(target, DateType) else stamp
    return F.when(value != "", value.try_cast(target))


def _parse_native(source: Column, native: DataType, target: DataType) -> Column | None:
    """Parse a typed source column directly (None: go through its text)."""
    if isinstance(native, StringType):
        return None
    if isinstance(target, DoubleType) and isinstance(native, NumericType):
        return source.cast("double")
    if isinstance(target, IntegerType) and isinstance(native, IntegerType | ShortType | LongType):
        return F.when(source.between(-(2**31), 2**31 - 1), source.cast("int"))
    if isinstance(target, IntegerType) and isinstance(native, FloatType | DoubleType | DecimalType):
        whole = source.cast("double")
        return F.when(
            (whole == F.floor(whole)) & whole.between(-(2**31), 2**31 - 1), whole.cast("int")
        )
    if isinstance(target, TimestampType) and isinstance(
        native, TimestampType | TimestampNTZType | DateType
    ):
        return source.cast("timestamp")
    if isinstance(target, DateType) and isinstance(
        native, TimestampType | TimestampNTZType | DateType
    ):
        return source.cast("date")
    if isinstance(target, BooleanType) and isinstance(native, BooleanType):
        return source
    return None


def parse(
    df: DataFrame,
    table: str,
    resolved: Mapping[str, str | None],
    *,
    domain: str,
    timestamp_format: str | None = None,
    enums: Mapping[str, Sequence[str]] | None = None,
) -> DataFrame:
    """Project the source onto the contract: each column typed, plus its raw string twin.

    The typed column is null when the value is blank or does not parse; :func:`validate` tells
    the two apart with the raw twin. Columns the source lacks are null (``customers.domain`` is
    ``domain``). Enum columns are lower-cased.

    Example:
        >>> raw = spark.createDataFrame([("m1", "20240105", "1.5")], "a string, b string, c string")
        >>> parse(raw, "meter_readings", {"customer_id": "a", "reading_time": "b", "kwh": "c"},
        ...       domain="energy", timestamp_format="yyyyMMdd").first().kwh
        1.5
    """
    schema = BRONZE[table]
    natives = {f.name: f.dataType for f in df.schema.fields}
    enum_columns = set(enums or {})
    out: list[Column] = []
    for column in contract_columns(table):
        target = schema[column].dataType
        source = resolved.get(column)
        if table == "customers" and column == "domain":
            raw: Column = F.lit(domain)
            typed: Column = F.lit(domain)
        elif source is None:
            raw = F.lit(None).cast("string")
            typed = F.lit(None).cast(target)
        else:
            raw = _col(source).cast("string")
            native = _parse_native(_col(source), natives[source], target)
            typed = native if native is not None else _parse_text(raw, target, timestamp_format)
        if column in enum_columns:
            typed = F.lower(typed)
        out.extend([typed.cast(target).alias(column), raw.alias(raw_name(column))])
    malformed = _col(CORRUPT_RECORD).isNotNull() if CORRUPT_RECORD in natives else F.lit(False)
    return df.select(*out, malformed.alias(_MALFORMED))


def derive_transaction_ids(df: DataFrame, ingest_id: str) -> DataFrame:
    """Fill ``transaction_id`` from the source's id, the row's content and its occurrence.

    The occurrence numbers rows among the rows with identical raw values, so it does not depend
    on how the data is partitioned (identical rows are interchangeable).

    Example:
        >>> len(derive_transaction_ids(parsed, ingest_id).first().transaction_id)
        64
    """
    raws = [raw_name(c) for c in contract_columns("transactions") if c != "transaction_id"]
    content = F.to_json(F.struct(*[F.col(r).alias(r[len(_RAW) :]) for r in raws]))
    window = Window.partitionBy(*raws).orderBy(*raws)
    occurrence = F.row_number().over(window).cast("string")
    derived = F.sha2(F.concat_ws("|", F.lit(ingest_id), content, occurrence), 256)
    return df.withColumn("transaction_id", derived)


def _row_checks(df: DataFrame, table: str, rules: Rules) -> list[Column]:
    schema = BRONZE[table]
    columns = contract_columns(table)

    def raw(column: str) -> Column:
        return F.col(raw_name(column))

    def when(test: Column, reason: str) -> Column:
        return F.when(test, F.lit(reason))

    checks = [when(F.col(_MALFORMED), "malformed_record")]
    checks += [when(F.col(c).isNull() & _blank(raw(c)), f"missing:{c}") for c in rules.required]
    checks += [when(F.col(c).isNull() & ~_blank(raw(c)), f"unparseable:{c}") for c in columns]
    checks += [
        when(F.isnan(c) | (F.abs(c) == F.lit(float("inf"))), f"not_finite:{c}")
        for c in columns
        if isinstance(schema[c].dataType, DoubleType)
    ]
    checks += [when(F.col(c) < 0, f"negative:{c}") for c in rules.non_negative]

    def bound(column: str, stamp: dt.datetime) -> Column:
        if isinstance(schema[column].dataType, DateType):
            return F.lit(stamp.date())
        return F.lit(stamp)

    checks += [
        when(F.col(c) < bound(c, rules.earliest), f"too_early:{c}") for c in rules.time_bounded
    ]
    checks += [
        when(F.col(c) > bound(c, rules.latest), f"in_future:{c}") for c in rules.time_bounded
    ]
    checks += [
        when(F.col(c).isNotNull() & ~F.col(c).isin(*values), f"unknown_value:{c}")
        for c, values in rules.enums.items()
    ]
    return checks


def validate(
    df: DataFrame, table: str, rules: Rules, *, existing: DataFrame | None = None
) -> DataFrame:
    """Add ``_reject_reason``: null for an accepted row, else the first reason that applies.

    ``existing`` holds the natural-key columns of the rows already in the table (null: the
    table is empty or absent). See the module docstring for the codes and their priority.

    Example:
        >>> validate(parsed, "meter_readings", rules).groupBy("_reject_reason").count().show()
    """
    columns = contract_columns(table)
    checked = df.withColumn(REASON, F.coalesce(*_row_checks(df, table, rules)))
    if existing is not None:
        keys = (
            existing.select(*[F.col(k).alias(_KEY + k) for k in rules.key])
            .distinct()
            .withColumn(_IN_TABLE, F.lit(True))
        )
        same = reduce(lambda a, b: a & b, [F.col(k).eqNullSafe(F.col(_KEY + k)) for k in rules.key])
        checked = (
            checked.join(keys, same, "left")
            .withColumn(
                REASON,
                F.coalesce(F.col(REASON), F.when(F.col(_IN_TABLE), F.lit("duplicate_in_table"))),
            )
            .drop(_IN_TABLE, *[_KEY + k for k in rules.key])
        )
    first = Window.partitionBy(F.col(REASON), *[F.col(k) for k in rules.key]).orderBy(
        *[F.col(raw_name(c)).asc_nulls_first() for c in columns]
    )
    return checked.withColumn(
        REASON,
        F.when(
            F.col(REASON).isNull() & (F.row_number().over(first) > 1),
            F.lit("duplicate_in_input"),
        ).otherwise(F.col(REASON)),
    )


def accepted_rows(df: DataFrame, table: str, *, source: str, ingest_id: str) -> DataFrame:
    """The valid rows of a validated frame, in the bronze table's schema.

    Example:
        >>> accepted_rows(validated, "cdrs", source="/in/cdrs", ingest_id="ab12").columns[-2:]
        ['_source', '_ingest_id']
    """
    schema = BRONZE[table]
    return df.where(F.col(REASON).isNull()).select(
        *[F.col(c).cast(schema[c].dataType).alias(c) for c in contract_columns(table)],
        F.lit(source).alias("_source"),
        F.lit(ingest_id).alias("_ingest_id"),
    )


def quarantine_rows(df: DataFrame, table: str, *, source: str, ingest_id: str) -> DataFrame:
    """The rejected rows of a validated frame: raw strings, reason and lineage.

    Example:
        >>> quarantine_rows(validated, "cdrs", source="/in/cdrs", ingest_id="ab12").columns[-3:]
        ['_reject_reason', '_source', '_ingest_id']
    """
    return df.where(F.col(REASON).isNotNull()).select(
        *[F.col(raw_name(c)).alias(c) for c in contract_columns(table)],
        F.col(REASON),
        F.lit(source).alias("_source"),
        F.lit(ingest_id).alias("_ingest_id"),
    )


# --------------------------------------------------------------------------------------------
# the edge


@dataclass(frozen=True)
class IngestResult:
    """What an ingest did. ``skipped``: the input had been ingested, nothing was read."""

    table: str
    source: str
    ingest_id: str
    versions: Mapping[str, int | None]
    read: int = 0
    accepted: int = 0
    quarantined: int = 0
    reasons: tuple[tuple[str, int], ...] = ()
    skipped: bool = False
    resumed: tuple[str, ...] = ()
    top_reasons: int = 5

    def summary(self) -> str:
        """The counts line, e.g. ``read 3 rows: accepted 2, quarantined 1 (negative:kwh 1)``."""
        line = (
            f"read {self.read:,} rows: accepted {self.accepted:,}, quarantined {self.quarantined:,}"
        )
        shown = [f"{reason} {count:,}" for reason, count in self.reasons[: self.top_reasons]]
        hidden = len(self.reasons) - len(shown)
        if hidden > 0:
            shown.append(f"{hidden} more reason{'s' if hidden > 1 else ''}")
        return f"{line} ({', '.join(shown)})" if shown else line

    def lines(self) -> list[str]:
        """What ``segspark ingest`` prints."""
        where = ", ".join(f"{t} version {v}" for t, v in self.versions.items())
        if self.skipped:
            return [
                f"input {self.source} was already ingested (ingest id {self.ingest_id[:12]}): "
                f"nothing added ({where})"
            ]
        tail = f"{where}; ingest id {self.ingest_id[:12]}"
        if self.resumed:
            tail += f" (completed an interrupted ingest: {', '.join(self.resumed)} already held it)"
        return [self.summary(), tail]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _count(validated: DataFrame, root: Path, kind: str) -> list[tuple[str | None, int]]:
    try:
        rows = validated.groupBy(REASON).count().collect()
    except Exception as exc:
        # Files are only opened when the rows are first read; a corrupt one surfaces here.
        if "FAILED_READ_FILE" in str(exc) or "CANNOT_READ_FILE" in str(exc):
            raise InputError(f"cannot read {root} as {kind}: {_first_line(exc)}") from exc
        raise
    return [(row[0], int(row[1])) for row in rows]


def ingest(
    spark: SparkSession,
    lake: Lake,
    *,
    domain: str,
    input_path: str,
    settings: SourcesSettings,
    fmt: str | None = None,
    mapping: str | Path | SourceMapping | None = None,
    table: str | None = None,
    now: dt.datetime | None = None,
) -> IngestResult:
    """Validate ``input_path`` and append it to the domain's bronze table and its quarantine.

    Unusable input raises :class:`InputError` before anything is written. An input ingested
    before (same content hash) is recognised before it is read and adds nothing.

    Example:
        >>> ingest(spark, lake, domain="energy", input_path="readings.txt",
        ...        mapping="readings.yaml", settings=settings.sources).summary()
        'read 4 rows: accepted 3, quarantined 1 (negative:kwh 1)'
    """
    name = target_table(domain, table)
    qname = quarantine_table(name)
    spec = (
        mapping
        if isinstance(mapping, SourceMapping)
        else (load_mapping(mapping) if mapping is not None else SourceMapping())
    )
    root = local_input(input_path)
    if not root.exists():
        raise InputError(f"input {input_path} does not exist")
    kind = resolve_format(root, fmt, spec)
    files: list[Path] = []
    delta_version: int | None = None
    if kind == "delta":
        if not lake.is_delta_path(str(root)):
            raise InputError(f"input {root} is not a Delta table (no _delta_log)")
        delta_version = lake.path_version(str(root))
        ingest_id = _sha256(f"{root}@{delta_version}")
    else:
        files = input_files(root)
        if not files:
            raise InputError(f"input {root} holds no rows")
        ingest_id = content_hash(files)
    app_id = APP_PREFIX + ingest_id
    done = {t: (lake.transaction_version(t, app_id) or 0) >= APP_VERSION for t in (name, qname)}
    source = str(root)
    if all(done.values()):
        versions = {t: lake.version(t) for t in (name, qname)}
        log.info("input %s already ingested as %s", source, ingest_id)
        return IngestResult(name, source, ingest_id, versions, skipped=True)

    defaults = {k: _option_text(v) for k, v in settings.reader_options.get(kind, {}).items()}
    df = read_input(
        spark, lake, root, files, kind, {**defaults, **spec.options}, delta_version=delta_version
    )
    if not df.columns:
        raise InputError(f"input {root} holds no rows")
    resolved = resolve_columns(df.columns, name, spec, where=f"input {root}")
    rules = rules_for(name, settings, now=now or dt.datetime.now(dt.UTC))
    parsed = parse(
        df,
        name,
        resolved,
        domain=domain,
        timestamp_format=spec.timestamp_format or settings.timestamp_format,
        enums=rules.enums,
    )
    if name == "transactions" and resolved["transaction_id"] is None:
        parsed = derive_transaction_ids(parsed, ingest_id)
    existing = None
    if lake.exists(name):
        # Rows an interrupted run of this same input wrote are not duplicates of themselves.
        existing = lake.read(name).where(F.col("_ingest_id") != ingest_id)
    validated = validate(parsed, name, rules, existing=existing).persist()
    try:
        counts = _count(validated, root, kind)
        total = sum(n for _, n in counts)
        if total == 0:
            raise InputError(f"input {root} holds no rows")
        accepted = sum(n for reason, n in counts if reason is None)
        reasons = tuple(
            sorted(((r, n) for r, n in counts if r is not None), key=lambda x: (-x[1], x[0]))
        )
        if not done[name]:
            lake.create(name, BRONZE[name])
            lake.write(
                name,
                accepted_rows(validated, name, source=source, ingest_id=ingest_id),
                app_id=app_id,
                app_version=APP_VERSION,
            )
        faults.point("ingest.between_commits")
        if not done[qname]:
            lake.create(qname, quarantine_schema(name))
            lake.write(
                qname,
                quarantine_rows(validated, name, source=source, ingest_id=ingest_id),
                app_id=app_id,
                app_version=APP_VERSION,
            )
    finally:
        validated.unpersist()
    result = IngestResult(
        name,
        source,
        ingest_id,
        {t: lake.version(t) for t in (name, qname)},
        read=total,
        accepted=accepted,
        quarantined=total - accepted,
        reasons=reasons,
        resumed=tuple(t for t, landed in done.items() if landed),
        top_reasons=settings.top_reasons,
    )
    log.info("%s from %s: %s", name, source, result.summary())
    return result
