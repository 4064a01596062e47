"""Delta tables under one lake root, through one API and two backends.

* ``spark``: Spark's own Delta data source (``io.delta.sql.DeltaSparkSessionExtension``), used
  when the Delta jars are loaded (clusters, ``--packages io.delta:delta-spark_2.13:4.0.1``, the
  Docker image).
* ``delta-rs`` (the embedded default when the jars are absent): Spark writes Parquet files into a
  private staging folder of the table; the driver moves them into the table's own layout and
  commits them with ``deltalake`` transactions (add actions carry sizes and per-file statistics
  read from the Parquet footers). Reads resolve the snapshot's file list with ``deltalake`` and hand
  exactly those files to ``spark.read.parquet``. The driver only ever holds file metadata.

Both write real Delta tables that any Delta reader opens.

Example:
    >>> lake = Lake(spark, "/tmp/lakehouse")
    >>> lake.write("segment_snapshots", df, partition_by=["domain", "as_of"],
    ...            replace={"domain": "retail", "as_of": "2024-01-31"})
    >>> lake.read("segment_snapshots", version=0).count()
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DataType, StructField, StructType

from segspark import faults
from segspark.errors import (
    SchemaMismatchError,
    TableNotFoundError,
    UnsupportedTableError,
    UsageError,
    WriteConflictError,
)

log = logging.getLogger(__name__)

BackendName = Literal["spark", "delta-rs"]
WriteMode = Literal["append", "overwrite"]
PartitionValue = str | int | dt.date | None

TABLE_NAME = re.compile(r"[a-z][a-z0-9_]{0,127}")
STAGING_DIR = "_staging"
_UNSUPPORTED_FEATURES = {"deletionVectors", "columnMapping", "v2Checkpoint"}
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_STRING_STATS_MAX = 32


def check_table_name(name: str) -> str:
    """Return ``name`` if it is a plain lake table name, else raise :class:`UsageError`.

    Names are lower-case identifiers, so no name can reach outside the lake root.
    """
    if not TABLE_NAME.fullmatch(name):
        raise UsageError(
            f"invalid table name {name!r}: use lower-case letters, digits and underscores"
        )
    return name


@dataclass(frozen=True)
class WriteResult:
    """What a write did: the version it committed, or ``skipped`` for a repeated app write."""

    table: str
    version: int | None
    files: int = 0
    skipped: bool = False


@dataclass
class MaintainReport:
    """What ``maintain`` did to one table."""

    table: str
    compacted_files: int = 0
    vacuumed_files: list[str] = field(default_factory=list)
    staging_removed: list[str] = field(default_factory=list)
    checkpoint_version: int | None = None


def _partition_literal(value: PartitionValue) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        raise UsageError("timestamps are not supported as partition values")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _sql_literal(value: PartitionValue) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    text = _partition_literal(value) or ""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def replace_predicate(replace: Mapping[str, PartitionValue], schema: StructType) -> str:
    """The SQL predicate (Delta's ``replaceWhere``) selecting the partitions ``replace`` names."""
    parts = []
    for column, value in replace.items():
        ctype = schema[column].dataType.simpleString()
        if value is None:
            parts.append(f"`{column}` IS NULL")
        elif ctype == "date":
            parts.append(f"`{column}` = DATE{_sql_literal(value)}")
        else:
            parts.append(f"`{column}` = {_sql_literal(value)}")
    return " AND ".join(parts)


def _same_type(a: DataType, b: DataType) -> bool:
    return a.simpleString() == b.simpleString()


def conform_schema(
    df: DataFrame, table_schema: StructType, table: str, *, merge: bool = False
) -> tuple[DataFrame, StructType]:
    """Check ``df`` against the table's schema and order its columns like the table.

    Columns are matched by name. A missing column, an extra column (unless ``merge`` adds it) or
    a different type raises :class:`SchemaMismatchError` naming the column. Returns the reordered
    frame and the schema to commit (the table's, plus any merged new columns).
    """
    incoming = {f.name: f for f in df.schema.fields}
    problems = []
    for fld in table_schema.fields:
        got = incoming.get(fld.name)
        if got is None:
            if not merge:
                problems.append(f"missing column {fld.name!r} ({fld.dataType.simpleString()})")
        elif not _same_type(got.dataType, fld.dataType):
            problems.append(
                f"column {fld.name!r} is {got.dataType.simpleString()}, "
                f"table has {fld.dataType.simpleString()}"
            )
    known = set(table_schema.names)
    extra = [f for f in df.schema.fields if f.name not in known]
    if extra and not merge:
        problems.append("unexpected column(s) " + ", ".join(repr(f.name) for f in extra))
    if problems:
        raise SchemaMismatchError(f"schema mismatch for table {table!r}: " + "; ".join(problems))
    target = StructType([*table_schema.fields, *extra])
    columns = [
        F.col(f"`{f.name}`") if f.name in incoming else F.lit(None).cast(f.dataType).alias(f.name)
        for f in target.fields
    ]
    return df.select(*columns), target


class Backend(Protocol):
    """What each Delta backend provides. Paths are absolute table locations."""

    name: BackendName

    def exists(self, path: str) -> bool: ...

    def schema(self, path: str) -> StructType: ...

    def partition_columns(self, path: str) -> list[str]: ...

    def read(
        self, path: str, *, version: int | None = None, as_of: dt.datetime | None = None
    ) -> DataFrame: ...

    def write(
        self,
        path: str,
        df: DataFrame,
        *,
        mode: WriteMode,
        partition_by: Sequence[str],
        replace: Mapping[str, PartitionValue] | None,
        app_id: str | None,
        app_version: int | None,
        merge_schema: bool,
    ) -> WriteResult: ...

    def create(self, path: str, schema: StructType, partition_by: Sequence[str]) -> None: ...

    def version(self, path: str) -> int: ...

    def history(self, path: str) -> list[dict[str, Any]]: ...

    def transaction_version(self, path: str, app_id: str) -> int | None: ...

    def maintain(
        self, path: str, *, retention_hours: float, vacuum: bool, report: MaintainReport
    ) -> None: ...


# --------------------------------------------------------------------------------------------
# delta-rs backend


def _local_path(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return unquote(parsed.path) if parsed.scheme == "file" else uri
    raise UsageError(
        f"the delta-rs backend serves local or shared POSIX paths, not {uri!r}; "
        "use lake.backend=spark on a cluster"
    )


def _stat_value(value: Any) -> Any:
    """A Parquet statistic as Delta's JSON stats spell it, or None where it is not kept."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return value if len(value) <= _STRING_STATS_MAX else None
    return None


def _ms_floor(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.replace(microsecond=value.microsecond // 1000 * 1000)
    return value


def _ms_ceil(value: Any) -> Any:
    if isinstance(value, dt.datetime) and value.microsecond % 1000:
        base = value.replace(microsecond=value.microsecond // 1000 * 1000)
        return base + dt.timedelta(milliseconds=1)
    return value


def parquet_stats(file: str) -> str:
    """Delta per-file statistics (numRecords, min/max, null counts) from a Parquet footer."""
    meta = pq.read_metadata(file)
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    schema = meta.schema.to_arrow_schema()
    for index, fld in enumerate(schema):
        if pa.types.is_nested(fld.type):
            continue
        lo: Any = None
        hi: Any = None
        null_count = 0
        complete = True
        for rg in range(meta.num_row_groups):
            column = meta.row_group(rg).column(index)
            st = column.statistics
            if st is None:
                complete = False
                break
            null_count += st.null_count or 0
            if not st.has_min_max:
                if column.num_values > (st.null_count or 0):
                    complete = False
                continue
            lo = st.min if lo is None else min(lo, st.min)
            hi = st.max if hi is None else max(hi, st.max)
        if not complete:
            continue
        nulls[fld.name] = null_count
        lo_v, hi_v = _stat_value(_ms_floor(lo)), _stat_value(_ms_ceil(hi))
        if lo_v is not None and hi_v is not None:
            mins[fld.name] = lo_v
            maxs[fld.name] = hi_v
    return json.dumps(
        {"numRecords": meta.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls},
        separators=(",", ":"),
    )


def _partition_values_from_path(relpath: str, columns: Sequence[str]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for segment in relpath.split("/")[:-1]:
        key, sep, raw = segment.partition("=")
        if sep and key in columns:
            text = unquote(raw)
            values[key] = None if text == _HIVE_NULL else text
    missing = [c for c in columns if c not in values]
    if missing:
        raise RuntimeError(f"file {relpath} lacks partition folders for {missing}")
    return values


class DeltaRsBackend:
    """Spark writes the Parquet files, ``deltalake`` commits them and resolves snapshots."""

    name: BackendName = "delta-rs"

    def __init__(self, spark: SparkSession, *, commit_retries: int) -> None:
        self.spark = spark
        self.commit_retries = commit_retries

    # -- metadata ---------------------------------------------------------------------------
    def _open(self, path: str, version: int | None = None) -> Any:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError as RsNotFound

        local = _local_path(path)
        if not DeltaTable.is_deltatable(local):
            raise TableNotFoundError(f"no Delta table at {path}")
        try:
            table = DeltaTable(local, version=version)
        except RsNotFound as exc:
            raise TableNotFoundError(f"no Delta table at {path}") from exc
        except Exception as exc:
            if version is not None and "version" in str(exc).lower():
                raise UsageError(f"table at {path} has no version {version}") from exc
            raise
        self._check_readable(table, path)
        return table

    @staticmethod
    def _check_readable(table: Any, path: str) -> None:
        protocol = table.protocol()
        features = set(protocol.reader_features or []) | set(protocol.writer_features or [])
        mapping = (table.metadata().configuration or {}).get("delta.columnMapping.mode", "none")
        found = sorted(features & _UNSUPPORTED_FEATURES)
        if mapping not in (None, "none"):
            found.append(f"columnMapping={mapping}")
        if found:
            raise UnsupportedTableError(
                f"table at {path} uses {', '.join(found)}, which the delta-rs backend cannot "
                "read correctly; read it with lake.backend=spark"
            )

    def exists(self, path: str) -> bool:
        from deltalake import DeltaTable

        return bool(DeltaTable.is_deltatable(_local_path(path)))

    @staticmethod
    def _spark_schema(table: Any) -> StructType:
        from pyspark.sql.pandas.types import from_arrow_schema

        return from_arrow_schema(pa.schema(table.schema().to_arrow()))

    def schema(self, path: str) -> StructType:
        return self._spark_schema(self._open(path))

    def partition_columns(self, path: str) -> list[str]:
        return list(self._open(path).metadata().partition_columns)

    def version(self, path: str) -> int:
        return int(self._open(path).version())

    def history(self, path: str) -> list[dict[str, Any]]:
        return list(self._open(path).history())

    def transaction_version(self, path: str, app_id: str) -> int | None:
        if not self.exists(path):
            return None
        value = self._open(path).transaction_version(app_id)
        return None if value is None else int(value)

    # -- read -------------------------------------------------------------------------------
    def read(
        self, path: str, *, version: int | None = None, as_of: dt.datetime | None = None
    ) -> DataFrame:
        table = self._open(path, version)
        if as_of is not None:
            first = min(table.history(), key=lambda h: int(h["version"]))
            if int(first["timestamp"]) > as_of.timestamp() * 1000:
                raise UsageError(f"table at {path} has no version at or before {as_of}")
            try:
                table.load_as_version(as_of)
            except Exception as exc:
                raise UsageError(f"table at {path} has no version at or before {as_of}") from exc
            self._check_readable(table, path)
        schema = self._spark_schema(table)
        partitions = list(table.metadata().partition_columns)
        actions = pa.table(table.get_add_actions(flatten=True))
        files = actions.column("path").to_pylist()
        if not files:
            return self.spark.createDataFrame([], schema)
        root = _local_path(path).rstrip("/")
        paths = [f"{root}/{f}" for f in files]
        data_schema = StructType([f for f in schema.fields if f.name not in partitions])
        if not partitions:
            return self.spark.read.schema(data_schema).parquet(*paths)
        values = {
            c: [_partition_literal(v) for v in actions.column(f"partition.{c}").to_pylist()]
            for c in partitions
        }
        hive = all(
            _hive_consistent(f, {c: values[c][i] for c in partitions}) for i, f in enumerate(files)
        )
        if hive:
            df = self.spark.read.schema(schema).option("basePath", root).parquet(*paths)
            return df.select(*[F.col(f"`{n}`") for n in schema.names])
        groups: dict[tuple[Any, ...], list[str]] = {}
        for i, p in enumerate(paths):
            groups.setdefault(tuple(values[c][i] for c in partitions), []).append(p)
        frames = []
        for key, group in groups.items():
            part = self.spark.read.schema(data_schema).parquet(*group)
            for column, raw in zip(partitions, key, strict=True):
                part = part.withColumn(column, F.lit(raw).cast(schema[column].dataType))
            frames.append(part.select(*[F.col(f"`{n}`") for n in schema.names]))
        result = frames[0]
        for frame in frames[1:]:
            result = result.unionByName(frame)
        return result

    # -- write ------------------------------------------------------------------------------
    def create(self, path: str, schema: StructType, partition_by: Sequence[str]) -> None:
        from deltalake import DeltaTable, Schema
        from pyspark.sql.pandas.types import to_arrow_schema

        if self.exists(path):
            return
        arrow = to_arrow_schema(schema)
        DeltaTable.create(
            _local_path(path),
            Schema.from_arrow(arrow),
            partition_by=list(partition_by) or None,
            mode="ignore",
        )

    def write(
        self,
        path: str,
        df: DataFrame,
        *,
        mode: WriteMode,
        partition_by: Sequence[str],
        replace: Mapping[str, PartitionValue] | None,
        app_id: str | None,
        app_version: int | None,
        merge_schema: bool,
    ) -> WriteResult:
        from deltalake import Schema
        from deltalake.transaction import CommitProperties, Transaction
        from pyspark.sql.pandas.types import to_arrow_schema

        root = _local_path(path).rstrip("/")
        name = os.path.basename(root)
        existing = self._open(path) if self.exists(path) else None
        if existing is not None and app_id is not None and app_version is not None:
            done = existing.transaction_version(app_id)
            if done is not None and done >= app_version:
                log.info("%s: write %s@%s already committed; skipped", name, app_id, app_version)
                return WriteResult(name, None, skipped=True)
        if existing is not None:
            table_schema = self._spark_schema(existing)
            table_parts = list(existing.metadata().partition_columns)
            if partition_by and list(partition_by) != table_parts:
                raise SchemaMismatchError(
                    f"table {name!r} is partitioned by {table_parts}, not {list(partition_by)}"
                )
            partition_by = table_parts
            df, target = conform_schema(df, table_schema, name, merge=merge_schema)
        else:
            target = df.schema
            missing = [c for c in partition_by if c not in target.names]
            if missing:
                raise SchemaMismatchError(f"partition column(s) {missing} not in the data")
        _check_replace(replace, partition_by, mode, name)

        stage_rel = f"{STAGING_DIR}/{uuid.uuid4().hex}"
        stage = f"{root}/{stage_rel}"
        moved: list[str] = []
        try:
            faults.table_point("lake.before_write", name)
            df.write.mode("errorifexists").partitionBy(*partition_by).parquet(stage)
            faults.table_point("lake.after_files", name)
            adds = self._collect_adds(root, stage, partition_by, replace, moved)
            faults.table_point("lake.before_commit", name)
            props = CommitProperties(
                max_commit_retries=self.commit_retries,
                app_transactions=(
                    [Transaction(app_id, app_version)]
                    if app_id is not None and app_version is not None
                    else None
                ),
                custom_metadata={"segspark.writer": "delta-rs", "segspark.mode": mode},
            )
            arrow_schema = Schema.from_arrow(to_arrow_schema(target))
            version = self._commit(
                root, existing, adds, mode, partition_by, replace, arrow_schema, props, moved
            )
        except BaseException:
            # only files no commit references: _commit empties ``moved`` once its commit landed
            for file in moved:
                with _suppress():
                    os.remove(f"{root}/{file}")
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        faults.table_point("lake.after_commit", name)
        return WriteResult(name, version, files=len(adds))

    def _collect_adds(
        self,
        root: str,
        stage: str,
        partition_by: Sequence[str],
        replace: Mapping[str, PartitionValue] | None,
        moved: list[str],
    ) -> list[Any]:
        from deltalake.transaction import AddAction

        wanted = {k: _partition_literal(v) for k, v in (replace or {}).items()}
        adds = []
        for dirpath, dirnames, filenames in os.walk(stage):
            dirnames[:] = [d for d in dirnames if not d.startswith(("_", "."))]
            for filename in sorted(filenames):
                if not filename.endswith(".parquet") or filename.startswith(("_", ".")):
                    continue
                source = os.path.join(dirpath, filename)
                relpath = os.path.relpath(source, stage).replace(os.sep, "/")
                values = _partition_values_from_path(relpath, partition_by)
                for column, value in wanted.items():
                    if values.get(column) != value:
                        raise UsageError(
                            f"rows with {column}={values.get(column)!r} are outside the "
                            f"partitions being replaced ({column}={value!r})"
                        )
                stats = parquet_stats(source)
                if json.loads(stats)["numRecords"] == 0:
                    continue  # Spark writes empty files for empty tasks; the log needs none
                os.makedirs(os.path.dirname(f"{root}/{relpath}") or root, exist_ok=True)
                os.rename(source, f"{root}/{relpath}")
                moved.append(relpath)
                info = os.stat(f"{root}/{relpath}")
                adds.append(
                    AddAction(relpath, info.st_size, values, int(info.st_mtime * 1000), True, stats)
                )
        return adds

    def _commit(
        self,
        root: str,
        existing: Any,
        adds: list[Any],
        mode: WriteMode,
        partition_by: Sequence[str],
        replace: Mapping[str, PartitionValue] | None,
        schema: Any,
        props: Any,
        moved: list[str],
    ) -> int:
        """Commit ``adds``; returns the new version. Once the commit landed ``moved`` is
        emptied, so a failure after it (reading the version back, an interrupt) never
        deletes files the table now references."""
        from deltalake import DeltaTable
        from deltalake.exceptions import CommitFailedError, DeltaError
        from deltalake.transaction import create_table_with_add_actions

        parts = list(partition_by) or None
        if existing is None:
            try:
                create_table_with_add_actions(
                    root, schema, adds, mode="error", partition_by=parts, commit_properties=props
                )
            except (DeltaError, CommitFailedError) as exc:
                if not DeltaTable.is_deltatable(root):
                    raise
                log.info("table created concurrently (%s); committing into it", exc)
                existing = DeltaTable(root)
                self._check_schema_against(existing, schema, root)
            else:
                moved.clear()
                return int(DeltaTable(root).version())
        self._evolve(existing, schema)
        filters = None
        commit_mode = mode
        if replace:
            commit_mode = "overwrite"
            filters = [(k, "=", _partition_literal(v)) for k, v in replace.items()]
        try:
            existing.create_write_transaction(
                adds,
                mode=commit_mode,
                schema=schema,
                partition_by=parts,
                partition_filters=filters,
                commit_properties=props,
            )
        except CommitFailedError as exc:
            raise WriteConflictError(
                f"commit to {root} lost to a concurrent writer: {exc}".splitlines()[0]
            ) from exc
        moved.clear()
        existing.update_incremental()
        return int(existing.version())

    @staticmethod
    def _evolve(table: Any, schema: Any) -> None:
        """Add the columns ``schema`` has and the table lacks (merge_schema), as one commit."""
        current = set(pa.schema(table.schema().to_arrow()).names)
        added = [f for f in schema.fields if f.name not in current]
        if added:
            table.alter.add_columns(added)
            table.update_incremental()

    def _check_schema_against(self, table: Any, schema: Any, root: str) -> None:
        current = pa.schema(table.schema().to_arrow())
        incoming = pa.schema(schema.to_arrow())
        if current.names != incoming.names or current.types != incoming.types:
            raise WriteConflictError(
                f"table {root} was created concurrently with another schema; nothing written"
            )

    # -- maintenance ------------------------------------------------------------------------
    def maintain(
        self, path: str, *, retention_hours: float, vacuum: bool, report: MaintainReport
    ) -> None:
        table = self._open(path)
        metrics = table.optimize.compact()
        report.compacted_files = int(metrics.get("numFilesRemoved", 0))
        table.update_incremental()
        table.create_checkpoint()
        report.checkpoint_version = int(table.version())
        if vacuum:
            removed = table.vacuum(
                retention_hours=int(retention_hours),
                dry_run=False,
                enforce_retention_duration=False,
                full=True,
            )
            report.vacuumed_files = sorted(removed)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def _hive_consistent(relpath: str, values: Mapping[str, str | None]) -> bool:
    segments = {}
    for segment in relpath.split("/")[:-1]:
        key, sep, raw = segment.partition("=")
        if sep:
            text = unquote(raw)
            segments[key] = None if text == _HIVE_NULL else text
    return all(segments.get(k, "\0") == v for k, v in values.items())


def _check_replace(
    replace: Mapping[str, PartitionValue] | None,
    partition_by: Sequence[str],
    mode: WriteMode,
    name: str,
) -> None:
    if not replace:
        return
    if mode != "overwrite":
        raise UsageError("replace= needs mode='overwrite'")
    outside = [k for k in replace if k not in partition_by]
    if outside:
        raise UsageError(
            f"replace= names {outside}, which are not partition columns of {name!r} "
            f"(partitioned by {list(partition_by)})"
        )


# --------------------------------------------------------------------------------------------
# spark backend


class SparkDeltaBackend:
    """Spark's own Delta data source (needs the delta-spark jars in the session)."""

    name: BackendName = "spark"

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def _table(self, path: str) -> Any:
        from delta.tables import DeltaTable

        if not DeltaTable.isDeltaTable(self.spark, path):
            raise TableNotFoundError(f"no Delta table at {path}")
        return DeltaTable.forPath(self.spark, path)

    def exists(self, path: str) -> bool:
        from delta.tables import DeltaTable

        return bool(DeltaTable.isDeltaTable(self.spark, path))

    def schema(self, path: str) -> StructType:
        schema: StructType = self._table(path).toDF().schema
        return schema

    def partition_columns(self, path: str) -> list[str]:
        detail = self._table(path).detail().select("partitionColumns").first()
        return list(detail[0]) if detail else []

    def version(self, path: str) -> int:
        row = self._table(path).history(1).select("version").first()
        return int(row[0]) if row else -1

    def history(self, path: str) -> list[dict[str, Any]]:
        return [r.asDict(recursive=True) for r in self._table(path).history().collect()]

    def transaction_version(self, path: str, app_id: str) -> int | None:
        # Delta Spark enforces app transactions itself on write (txnAppId/txnVersion) but has
        # no public reader for them; the same log read with deltalake answers for local paths.
        parsed = urlparse(path)
        if parsed.scheme not in ("", "file") or not self.exists(path):
            return None
        from deltalake import DeltaTable

        value = DeltaTable(_local_path(path)).transaction_version(app_id)
        return None if value is None else int(value)

    def read(
        self, path: str, *, version: int | None = None, as_of: dt.datetime | None = None
    ) -> DataFrame:
        self._table(path)
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        if as_of is not None:
            reader = reader.option("timestampAsOf", as_of.astimezone(dt.UTC).isoformat())
        return reader.load(path)

    def create(self, path: str, schema: StructType, partition_by: Sequence[str]) -> None:
        if self.exists(path):
            return
        self.spark.createDataFrame([], schema).write.format("delta").partitionBy(
            *partition_by
        ).mode("ignore").save(path)

    def write(
        self,
        path: str,
        df: DataFrame,
        *,
        mode: WriteMode,
        partition_by: Sequence[str],
        replace: Mapping[str, PartitionValue] | None,
        app_id: str | None,
        app_version: int | None,
        merge_schema: bool,
    ) -> WriteResult:
        name = path.rstrip("/").rsplit("/", 1)[-1]
        before: int | None = None
        if self.exists(path):
            table_schema = self.schema(path)
            table_parts = self.partition_columns(path)
            df, _ = conform_schema(df, table_schema, name, merge=merge_schema)
            partition_by = table_parts
            before = self.version(path)
        _check_replace(replace, partition_by, mode, name)
        writer = df.write.format("delta").mode(mode)
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        if replace:
            writer = writer.option("replaceWhere", replace_predicate(replace, df.schema))
        if app_id is not None and app_version is not None:
            writer = writer.option("txnAppId", app_id).option("txnVersion", app_version)
        if merge_schema:
            writer = writer.option("mergeSchema", "true")
        faults.table_point("lake.before_commit", name)
        try:
            writer.save(path)
        except Exception as exc:
            if "concurrent" in type(exc).__name__.lower() or "Concurrent" in str(exc):
                raise WriteConflictError(
                    f"commit to {path} lost to a concurrent writer".strip()
                ) from exc
            raise
        faults.table_point("lake.after_commit", name)
        after = self.version(path)
        if before is not None and after == before:
            return WriteResult(name, None, skipped=True)
        return WriteResult(name, after)

    def maintain(
        self, path: str, *, retention_hours: float, vacuum: bool, report: MaintainReport
    ) -> None:
        table = self._table(path)
        metrics = table.optimize().executeCompaction().select("metrics.numFilesRemoved").first()
        report.compacted_files = int(metrics[0]) if metrics else 0
        if vacuum:
            self.spark.conf.set(
                "spark.databricks.delta.retentionDurationCheck.enabled",
                "true" if retention_hours >= 168 else "false",
            )
            table.vacuum(retention_hours)
        report.checkpoint_version = self.version(path)


# --------------------------------------------------------------------------------------------
# the facade


def _normalise_root(root: str) -> str:
    parsed = urlparse(root)
    if parsed.scheme and len(parsed.scheme) > 1:
        return root.rstrip("/")
    return str(Path(root).expanduser().resolve())


def _as_datetime(value: str | dt.datetime | dt.date) -> dt.datetime:
    if isinstance(value, dt.datetime):
        stamp = value
    elif isinstance(value, dt.date):
        stamp = dt.datetime(value.year, value.month, value.day)
    else:
        try:
            stamp = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise UsageError(f"not an ISO timestamp: {value!r}") from exc
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


class Lake:
    """The tables under one lake root, through the backend chosen for the session.

    ``backend="auto"`` picks ``spark`` when the Delta extension is loaded in ``spark`` and
    ``delta-rs`` otherwise.
    """

    def __init__(
        self,
        spark: SparkSession,
        root: str,
        *,
        backend: Literal["auto", "spark", "delta-rs"] = "auto",
        commit_retries: int = 15,
        safe_retention_hours: float = 168,
        staging_max_age_hours: float = 6,
    ) -> None:
        from segspark.session import delta_extension_active

        self.spark = spark
        self.root = _normalise_root(root)
        self.safe_retention_hours = safe_retention_hours
        self.staging_max_age_hours = staging_max_age_hours
        chosen = backend
        if backend == "auto":
            chosen = "spark" if delta_extension_active(spark) else "delta-rs"
        elif backend == "spark" and not delta_extension_active(spark):
            raise UsageError(
                "lake.backend=spark needs the Delta jars: start Spark with --packages "
                "io.delta:delta-spark_2.13:4.0.1 (or spark.delta_packages=true), "
                "or use lake.backend=delta-rs"
            )
        self.backend: Backend = (
            SparkDeltaBackend(spark)
            if chosen == "spark"
            else DeltaRsBackend(spark, commit_retries=commit_retries)
        )
        log.info("lake %s on the %s backend", self.root, self.backend.name)

    @classmethod
    def from_settings(cls, spark: SparkSession, settings: Any, root: str | None = None) -> Lake:
        """Build from :class:`segspark.config.LakeSettings` (``root`` overrides its root)."""
        return cls(
            spark,
            root or settings.root,
            backend=settings.backend,
            commit_retries=settings.commit_retries,
            safe_retention_hours=settings.safe_retention_hours,
            staging_max_age_hours=settings.staging_max_age_hours,
        )

    @property
    def backend_name(self) -> BackendName:
        return self.backend.name

    def path(self, table: str) -> str:
        """The location of ``table`` (validated: it cannot leave the lake root)."""
        return f"{self.root}/{check_table_name(table)}"

    def tables(self) -> list[str]:
        """Names of the Delta tables directly under the lake root."""
        if urlparse(self.root).scheme not in ("", "file") and len(urlparse(self.root).scheme) > 1:
            return self._remote_tables()
        root = Path(_local_path(self.root))
        if not root.is_dir():
            return []
        return sorted(
            p.name
            for p in root.iterdir()
            if TABLE_NAME.fullmatch(p.name) and (p / "_delta_log").is_dir()
        )

    def _remote_tables(self) -> list[str]:
        # Hadoop's FileSystem has no Python API; listing a cluster store goes through the JVM.
        jvm = self.spark._jvm
        assert jvm is not None
        hpath = jvm.org.apache.hadoop.fs.Path(self.root)
        fs = hpath.getFileSystem(self.spark._jsc.hadoopConfiguration())
        names = []
        for status in fs.listStatus(hpath):
            name = status.getPath().getName()
            if TABLE_NAME.fullmatch(name) and fs.exists(
                jvm.org.apache.hadoop.fs.Path(status.getPath(), "_delta_log")
            ):
                names.append(name)
        return sorted(names)

    def exists(self, table: str) -> bool:
        return self.backend.exists(self.path(table))

    def _require(self, table: str) -> str:
        path = self.path(table)
        if not self.backend.exists(path):
            raise TableNotFoundError(f"table {table!r} does not exist in the lake {self.root}")
        return path

    def schema(self, table: str) -> StructType:
        return self.backend.schema(self._require(table))

    def partition_columns(self, table: str) -> list[str]:
        return self.backend.partition_columns(self._require(table))

    def read(
        self,
        table: str,
        *,
        version: int | None = None,
        as_of: str | dt.datetime | dt.date | None = None,
    ) -> DataFrame:
        """The table's current snapshot, or the one at ``version`` / timestamp ``as_of``."""
        if version is not None and as_of is not None:
            raise UsageError("give version= or as_of=, not both")
        if version is not None and version < 0:
            raise UsageError(f"version must be >= 0, got {version}")
        stamp = _as_datetime(as_of) if as_of is not None else None
        return self.backend.read(self._require(table), version=version, as_of=stamp)

    def create(self, table: str, schema: StructType, *, partition_by: Sequence[str] = ()) -> None:
        """Create ``table`` empty with ``schema`` if it does not exist yet."""
        self.backend.create(self.path(table), schema, partition_by)

    def write(
        self,
        table: str,
        df: DataFrame,
        *,
        mode: WriteMode = "append",
        partition_by: Sequence[str] = (),
        replace: Mapping[str, PartitionValue] | None = None,
        app_id: str | None = None,
        app_version: int | None = None,
        merge_schema: bool = False,
    ) -> WriteResult:
        """Write ``df`` to ``table`` as one new version.

        ``mode="append"`` adds rows; ``mode="overwrite"`` replaces the whole table, or only the
        partitions named by ``replace`` (``{"domain": "retail", "as_of": "2024-01-31"}``),
        atomically.
        With ``app_id`` and ``app_version`` the write is idempotent: a write whose key was already
        committed (same app id, version not newer) adds nothing and returns ``skipped=True``.
        The schema must match the table's (``merge_schema=True`` adds new columns).
        """
        if mode not in ("append", "overwrite"):
            raise UsageError(f"mode must be 'append' or 'overwrite', got {mode!r}")
        if (app_id is None) != (app_version is None):
            raise UsageError("app_id and app_version go together")
        path = self.path(table)
        result = self.backend.write(
            path,
            df,
            mode=mode,
            partition_by=list(partition_by),
            replace=dict(replace) if replace else None,
            app_id=app_id,
            app_version=app_version,
            merge_schema=merge_schema,
        )
        log.info("%s: %s", table, result)
        return result

    def version(self, table: str) -> int:
        return self.backend.version(self._require(table))

    def is_delta_path(self, path: str) -> bool:
        """Whether ``path`` (anywhere, not only under the lake root) holds a Delta table."""
        return self.backend.exists(path)

    def path_version(self, path: str) -> int:
        """The current version of the Delta table at ``path`` (e.g. an input to ingest)."""
        return self.backend.version(path)

    def read_path(self, path: str, *, version: int | None = None) -> DataFrame:
        """Read the Delta table at ``path`` (e.g. an input to ingest) through this backend."""
        return self.backend.read(path, version=version)

    def history(self, table: str) -> list[dict[str, Any]]:
        """Commit history, newest first (version, timestamp, operation, ...)."""
        rows = self.backend.history(self._require(table))
        return sorted(rows, key=lambda r: int(r.get("version", -1)), reverse=True)

    def transaction_version(self, table: str, app_id: str) -> int | None:
        """The last committed version of an idempotent writer ``app_id``, if any."""
        return self.backend.transaction_version(self.path(table), app_id)

    def maintain(
        self,
        tables: Iterable[str] | None = None,
        *,
        retention_hours: float | None = None,
        force: bool = False,
        vacuum: bool = True,
    ) -> list[MaintainReport]:
        """Compact small files, checkpoint, vacuum and remove orphaned staging folders.

        ``retention_hours`` below the safe default is refused unless ``force`` is given: vacuum
        deletes the files older versions need for time travel.
        """
        hours = self.safe_retention_hours if retention_hours is None else retention_hours
        if hours < self.safe_retention_hours and not force:
            raise UsageError(
                f"retention of {hours:g} h is below the safe {self.safe_retention_hours:g} h; "
                "pass --force to vacuum anyway (time travel to older versions is lost)"
            )
        reports = []
        for table in tables if tables is not None else self.tables():
            report = MaintainReport(table)
            path = self._require(table)
            self.backend.maintain(path, retention_hours=hours, vacuum=vacuum, report=report)
            report.staging_removed = self._clean_staging(table)
            reports.append(report)
        return reports

    def _clean_staging(self, table: str) -> list[str]:
        if self.backend.name != "delta-rs":
            return []
        stage_root = Path(_local_path(self.path(table))) / STAGING_DIR
        if not stage_root.is_dir():
            return []
        cutoff = time.time() - self.staging_max_age_hours * 3600
        removed = []
        for entry in stage_root.iterdir():
            newest = max(
                (p.stat().st_mtime for p in entry.rglob("*")), default=entry.stat().st_mtime
            )
            if max(newest, entry.stat().st_mtime) <= cutoff:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return sorted(removed)


def spark_schema_of(fields: Iterable[tuple[str, DataType]]) -> StructType:
    """A nullable StructType from (name, type) pairs."""
    return StructType([StructField(n, t, True) for n, t in fields])
