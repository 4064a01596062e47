"""Read-only SQL over the lake: every lake table is visible by its plain name.

``spark.sql`` runs DDL and DML the moment it is called, so a statement is parsed and classified
with sqlglot (dialect ``spark``) before Spark sees anything. Only one query statement passes
(``SELECT``, set operations, ``WITH ... SELECT``, ``VALUES``). Each table reference is resolved to
a lake table (with its ``VERSION AS OF`` / ``TIMESTAMP AS OF`` clause), registered as a uniquely
named temporary view and rewritten to point at it; what Spark runs is the SQL that sqlglot
regenerates from the checked tree.

Example:
    >>> lake = Lake(spark, "/tmp/lakehouse")
    >>> import io
    >>> out = io.StringIO()
    >>> run_query(lake, "SELECT count(*) AS n FROM segment_snapshots", fmt="csv", out=out)
    1
    >>> out.getvalue()
    'n\\n42\\n'
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import logging
import math
import re
import uuid
import zoneinfo
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TextIO

import sqlglot
from sqlglot import expressions as exp
from sqlglot.errors import ParseError, SqlglotError

from segspark.errors import (
    ReadOnlyViolationError,
    SegsparkError,
    TableNotFoundError,
    UsageError,
)
from segspark.lake import TABLE_NAME, check_table_name

if TYPE_CHECKING:
    from pyspark.errors import PySparkException
    from pyspark.sql import Column, DataFrame, SparkSession

    from segspark.lake import Lake

log = logging.getLogger(__name__)

OutputFormat = Literal["table", "csv", "json"]
FORMATS: tuple[OutputFormat, ...] = ("table", "csv", "json")

DIALECT = "spark"
VIEW_PREFIX = "_segspark_query_"

# JVM reflection reaches arbitrary Java methods (System.exit, file I/O); IDENTIFIER() builds a
# table or function name at run time, past the checks below.
FORBIDDEN_FUNCTIONS = frozenset({"reflect", "java_method", "try_reflect", "identifier"})

# Generator table functions that only turn their arguments into rows.
TABLE_FUNCTIONS = frozenset(
    {
        "range",
        "explode",
        "explode_outer",
        "posexplode",
        "posexplode_outer",
        "inline",
        "inline_outer",
        "stack",
        "json_tuple",
        "variant_explode",
        "variant_explode_outer",
        "sql_keywords",
    }
)

# Data source names Spark accepts in front of a path (``csv.`/path```).
FILE_SOURCES = frozenset(
    {
        "csv",
        "json",
        "parquet",
        "orc",
        "avro",
        "text",
        "delta",
        "binaryfile",
        "xml",
        "hive",
        "jdbc",
        "libsvm",
        "image",
    }
)

_STATEMENT_NAMES = {
    "Insert": "INSERT",
    "Delete": "DELETE",
    "Update": "UPDATE",
    "Merge": "MERGE",
    "Copy": "COPY",
    "Create": "CREATE",
    "Drop": "DROP",
    "Alter": "ALTER",
    "TruncateTable": "TRUNCATE",
    "Set": "SET",
    "Cache": "CACHE",
    "Uncache": "UNCACHE",
    "Refresh": "REFRESH",
    "Use": "USE",
    "LoadData": "LOAD DATA",
    "Analyze": "ANALYZE",
    "Describe": "DESCRIBE",
    "Declare": "DECLARE",
    "Transaction": "BEGIN",
    "Commit": "COMMIT",
    "Rollback": "ROLLBACK",
    "Pragma": "PRAGMA",
    "Kill": "KILL",
    "Grant": "GRANT",
    "Revoke": "REVOKE",
    "Show": "SHOW",
    "Summarize": "SUMMARIZE",
    "Export": "EXPORT",
    "Install": "INSTALL",
    "Attach": "ATTACH",
    "Detach": "DETACH",
    "Execute": "EXECUTE",
    "Comment": "COMMENT",
    "Put": "PUT",
    "Get": "GET",
    "Command": "",
}
# getattr: the set of statement classes differs between the sqlglot versions pyproject allows.
_STATEMENT_TYPES: tuple[type, ...] = (
    exp.DML,
    exp.DDL,
    *(
        cls
        for cls in (getattr(exp, name, None) for name in _STATEMENT_NAMES)
        if isinstance(cls, type)
    ),
)

# Files are only read through lake tables; `${env:...}` would leak environment variables and
# change the SQL after it was checked.
_QUERY_CONF = {"spark.sql.runSQLOnFiles": "false", "spark.sql.variable.substitute": "false"}
# SQLSTATE classes of errors caused by the query itself: 22 data exception, 42 syntax or access.
_QUERY_ERROR_STATES = ("22", "42")
_PYSPARK_ERROR_LOGGERS = ("SQLQueryContextLogger", "DataFrameQueryContextLogger")
_TOKEN = re.compile(r"<Token token_type: TokenType\.(\w+), text: (.*?), line: .*?>")
_TS_SECONDS = "yyyy-MM-dd'T'HH:mm:ssXXX"
_TS_MICROS = "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"


@dataclass(frozen=True)
class TableRef:
    """One lake table as a query reads it: the current snapshot, a version or a timestamp."""

    name: str
    version: int | None = None
    as_of: str | None = None

    def describe(self) -> str:
        if self.version is not None:
            return f"{self.name} VERSION AS OF {self.version}"
        if self.as_of is not None:
            return f"{self.name} TIMESTAMP AS OF {self.as_of!r}"
        return self.name


# --------------------------------------------------------------------------------------------
# classification (pure: no Spark)


def _syntax_error(exc: SqlglotError) -> UsageError:
    if isinstance(exc, ParseError) and exc.errors:
        first = exc.errors[0]

        def token(match: re.Match[str]) -> str:
            return "end of input" if match.group(1) == "SENTINEL" else repr(match.group(2))

        description = _TOKEN.sub(token, str(first.get("description") or "invalid syntax"))
        near = str(first.get("highlight") or "").strip()
        where = f"line {first.get('line')}, column {first.get('col')}"
        if near:
            where += f" near {near!r}"
        return UsageError(f"SQL syntax error at {where}: {description}")
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UsageError(f"SQL syntax error: {text}")


def _statement_name(node: exp.Expr) -> str:
    name = _STATEMENT_NAMES.get(type(node).__name__)
    if name is None:
        for cls in type(node).__mro__:
            if _STATEMENT_NAMES.get(cls.__name__):
                return _STATEMENT_NAMES[cls.__name__]
        return type(node).__name__.upper()
    if name:
        return name
    # A generic Command keeps its first keyword in `this` and the rest as one literal.
    rest = str(node.expression.name if node.expression else "").split()
    words = [str(node.this or "").upper(), *(w.upper() for w in rest[:1] if w.isalpha())]
    return " ".join(w for w in words if w) or "this command"


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return node.name.lower()
    return node.sql_name().lower()


def _parse(sql: str) -> list[exp.Expr]:
    sqlglot_log = logging.getLogger("sqlglot")
    level = sqlglot_log.level
    # sqlglot warns when it falls back to a generic Command; that case is refused with one line.
    sqlglot_log.setLevel(logging.ERROR)
    try:
        statements = sqlglot.parse(sql, dialect=DIALECT)
    except SqlglotError as exc:
        raise _syntax_error(exc) from None
    finally:
        sqlglot_log.setLevel(level)
    return [s for s in statements if s is not None]


def check_statement(sql: str) -> exp.Expr:
    """Parse ``sql`` and return its tree if it is one read-only query, else raise.

    Raises :class:`~segspark.errors.ReadOnlyViolationError` for anything but a single query
    statement (DML or DDL anywhere in the tree, ``SET``, ``ADD JAR``, ``CACHE``, several
    statements, JVM reflection, direct file queries) and :class:`~segspark.errors.UsageError`
    for a syntax error. Table names are checked later, against the lake
    (:func:`resolve_tables`).

    Example:
        >>> check_statement("SELECT * FROM t VERSION AS OF 3").sql(dialect="spark")
        'SELECT * FROM t VERSION AS OF 3'
        >>> check_statement("DROP TABLE t")
        Traceback (most recent call last):
        segspark.errors.ReadOnlyViolationError: read-only: DROP statements are not allowed; ...
    """
    statements = _parse(sql)
    if not statements:
        raise UsageError("empty query: give one SELECT statement")
    if len(statements) > 1:
        raise ReadOnlyViolationError(
            f"read-only: only one statement is allowed, got {len(statements)}"
        )
    tree = statements[0]
    if not isinstance(tree, exp.Query | exp.Values):
        if isinstance(tree, _STATEMENT_TYPES):
            kind = _statement_name(tree)
        else:
            first = re.match(r"\s*([A-Za-z]+)", sql)
            kind = first.group(1).upper() if first else "non-query"
        raise ReadOnlyViolationError(
            f"read-only: {kind} statements are not allowed; only a single query "
            "(SELECT, WITH ... SELECT, VALUES, UNION ...) runs"
        )
    for node in tree.walk():
        if isinstance(node, _STATEMENT_TYPES):
            raise ReadOnlyViolationError(
                f"read-only: {_statement_name(node)} is not allowed inside a query"
            )
        if isinstance(node, exp.Func) and _function_name(node) in FORBIDDEN_FUNCTIONS:
            raise ReadOnlyViolationError(
                f"read-only: function {_function_name(node)}() is not allowed"
            )
        if isinstance(node, exp.Table) and _is_file_query(node):
            raise ReadOnlyViolationError(
                f"read-only: direct file queries are not allowed: {node.sql(dialect=DIALECT)}"
            )
    return tree


def _is_file_query(table: exp.Table) -> bool:
    if not isinstance(table.this, exp.Identifier) or not table.args.get("db"):
        return False
    source = table.text("db").lower()
    path = table.name
    return source in FILE_SOURCES or "." in source or any(c in path for c in "/\\:")


def _cte_names(with_: exp.Expr | None, upto: int | None = None) -> set[str]:
    if not isinstance(with_, exp.With):
        return set()
    ctes = with_.expressions if upto is None else with_.expressions[:upto]
    return {cte.alias.lower() for cte in ctes}


def _is_cte_reference(table: exp.Table, name: str) -> bool:
    """Whether ``name`` at this place in the tree means a CTE in scope (Spark's rules)."""
    child: exp.Expr = table
    parent = table.parent
    while parent is not None:
        if isinstance(parent, exp.With):
            index = next((i for i, cte in enumerate(parent.expressions) if cte is child), 0)
            upto = index + 1 if parent.args.get("recursive") else index
            if name in _cte_names(parent, upto):
                return True
        else:
            with_ = parent.args.get("with_") or parent.args.get("with")
            if with_ is not child and name in _cte_names(with_):
                return True
        child, parent = parent, parent.parent
    return False


def _literal_version(node: exp.Expression, table: str) -> int:
    if isinstance(node, exp.Literal) and node.name.isdigit():
        return int(node.name)
    raise UsageError(
        f"VERSION AS OF for table {table!r} needs a non-negative integer, "
        f"got {node.sql(dialect=DIALECT)}"
    )


def _literal_timestamp(node: exp.Expression, table: str) -> str:
    value = node.this if isinstance(node, exp.Cast) else node
    if isinstance(value, exp.Literal) and value.is_string:
        text = value.name.strip()
        try:
            dt.datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            return text
    raise UsageError(
        f"TIMESTAMP AS OF for table {table!r} needs a literal ISO timestamp such as "
        f"'2026-01-01 10:00:00', got {node.sql(dialect=DIALECT)}"
    )


def _table_refs(tree: exp.Expr) -> Iterator[tuple[exp.Table, TableRef | None]]:
    """Each relation in ``tree`` with the lake table it reads (None for CTEs and generators)."""
    for table in list(tree.find_all(exp.Table)):
        if not isinstance(table.this, exp.Identifier):
            func = table.this
            name = _function_name(func) if isinstance(func, exp.Func) else func.sql(DIALECT)
            if name not in TABLE_FUNCTIONS:
                raise UsageError(
                    f"table function {name}() is not allowed; query lake tables by name"
                )
            yield table, None
            continue
        parts = [p.name for p in table.parts]
        if len(parts) > 1:
            raise UsageError(
                f"qualified table name {'.'.join(parts)!r} is not allowed; "
                "lake tables are queried by their plain name"
            )
        raw = table.name
        name = raw.lower()
        clause = table.args.get("version")
        if _is_cte_reference(table, name):
            if clause is not None:
                raise UsageError(f"{raw!r} is a CTE, it has no versions to travel to")
            yield table, None
            continue
        check_table_name(name if TABLE_NAME.fullmatch(name) else raw)
        if clause is None:
            yield table, TableRef(name)
            continue
        kind = str(clause.this or "").upper()
        if str(clause.args.get("kind") or "").upper() != "AS OF" or kind not in (
            "VERSION",
            "TIMESTAMP",
        ):
            raise UsageError(
                f"unsupported time travel clause for table {name!r}: "
                f"{clause.sql(dialect=DIALECT)}; use VERSION AS OF n or TIMESTAMP AS OF '...'"
            )
        if kind == "VERSION":
            yield table, TableRef(name, version=_literal_version(clause.expression, name))
        else:
            yield table, TableRef(name, as_of=_literal_timestamp(clause.expression, name))


def resolve_tables(tree: exp.Expr, known: Collection[str]) -> list[TableRef]:
    """The lake tables (each snapshot once) that a checked query reads.

    Raises :class:`~segspark.errors.UsageError` for a qualified or invalid name and
    :class:`~segspark.errors.TableNotFoundError` for a table not in ``known``.

    Example:
        >>> tree = check_statement("SELECT * FROM a JOIN b VERSION AS OF 0 USING (id)")
        >>> resolve_tables(tree, ["a", "b"])
        [TableRef(name='a', version=None, as_of=None), TableRef(name='b', version=0, as_of=None)]
    """
    refs: list[TableRef] = []
    for _, ref in _table_refs(tree):
        if ref is None:
            continue
        if ref.name not in known:
            listing = ", ".join(sorted(known)) or "none"
            raise TableNotFoundError(
                f"table {ref.name!r} does not exist in the lake (tables: {listing})"
            )
        if ref not in refs:
            refs.append(ref)
    return refs


# --------------------------------------------------------------------------------------------
# execution


def _session_zone(spark: SparkSession) -> dt.tzinfo:
    name = spark.conf.get("spark.sql.session.timeZone") or "UTC"
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        pass
    match = re.fullmatch(r"(?:UTC|GMT)?([+-])(\d{1,2}):?(\d{2})?", name)
    if match:
        sign = -1 if match.group(1) == "-" else 1
        delta = dt.timedelta(hours=int(match.group(2)), minutes=int(match.group(3) or 0))
        return dt.timezone(sign * delta)
    return dt.UTC


def _read(lake: Lake, ref: TableRef) -> DataFrame:
    if ref.as_of is None:
        return lake.read(ref.name, version=ref.version)
    stamp = dt.datetime.fromisoformat(ref.as_of)
    if stamp.tzinfo is None:
        # Spark reads a zone-less TIMESTAMP AS OF in the session time zone.
        stamp = stamp.replace(tzinfo=_session_zone(lake.spark))
    return lake.read(ref.name, as_of=stamp)


@contextmanager
def _sql_conf(spark: SparkSession, values: dict[str, str]) -> Iterator[None]:
    previous: dict[str, str | None] = {key: spark.conf.get(key) for key in values}
    for key, value in values.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, old in previous.items():
            if old is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, old)


@contextmanager
def _quiet_pyspark_error_loggers() -> Iterator[None]:
    """Mute PySpark's structured error loggers, which print the JVM stack trace to stderr.

    The error itself still propagates; the CLI shows it as one line.
    """
    from pyspark.logger import PySparkLogger

    # Created through PySparkLogger: a plain logging.Logger under these names would break
    # PySpark's own calls, which pass extra keyword arguments.
    loggers = [PySparkLogger.getLogger(name) for name in _PYSPARK_ERROR_LOGGERS]
    saved = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    try:
        yield
    finally:
        for logger, disabled in zip(loggers, saved, strict=True):
            logger.disabled = disabled


def _check_rewritten(sql: str, views: Collection[str]) -> None:
    """Re-check the SQL that will run: same rules, and it may only read the registered views."""
    tree = check_statement(sql)
    for table, ref in _table_refs_unchecked(tree):
        if ref is not None and ref not in views:
            raise ReadOnlyViolationError(
                f"read-only: rewritten query reads {table.sql(dialect=DIALECT)!r}"
            )


def _table_refs_unchecked(tree: exp.Expr) -> Iterator[tuple[exp.Table, str | None]]:
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            yield table, None
        elif len(table.parts) > 1 or table.args.get("version") is not None:
            yield table, table.sql(dialect=DIALECT)
        elif _is_cte_reference(table, table.name.lower()):
            yield table, None
        else:
            yield table, table.name


@contextmanager
def open_query(lake: Lake, sql: str) -> Iterator[DataFrame]:
    """Check ``sql`` and yield its result as a DataFrame; clean up when the block ends.

    The DataFrame is only valid inside the block: the temporary views it reads are dropped and
    the session settings restored afterwards. ``spark.sql.runSQLOnFiles`` and variable
    substitution (``${env:...}``) are off while the block runs.

    Example:
        >>> with open_query(lake, "SELECT * FROM customers VERSION AS OF 0") as df:
        ...     df.count()
        120
    """
    from pyspark.errors import AnalysisException

    tree = check_statement(sql)
    refs = resolve_tables(tree, lake.tables())
    spark = lake.spark
    token = uuid.uuid4().hex[:12]
    views = {ref: f"{VIEW_PREFIX}{token}_{i}" for i, ref in enumerate(refs)}
    registered: list[str] = []
    with _quiet_pyspark_error_loggers():
        try:
            for table, ref in list(_table_refs(tree)):
                if ref is None:
                    continue
                view = views[ref]
                if view not in registered:
                    _read(lake, ref).createOrReplaceTempView(view)
                    registered.append(view)
                alias = table.args.get("alias")
                table.set("this", exp.to_identifier(view, quoted=True))
                table.set("version", None)
                if alias is None:
                    # Keep `t.column` references working against the view.
                    table.set(
                        "alias", exp.TableAlias(this=exp.to_identifier(ref.name, quoted=True))
                    )
            text = tree.sql(dialect=DIALECT)
            _check_rewritten(text, registered)
            log.info("query: %s", text)
            with _sql_conf(spark, _QUERY_CONF):
                try:
                    df = spark.sql(text)
                except AnalysisException as exc:
                    raise UsageError(f"SQL error: {_first_line(exc, views)}") from None
                try:
                    yield df
                except Exception as exc:
                    _reraise_spark_error(exc, views)
                    raise
        finally:
            for view in registered:
                spark.catalog.dropTempView(view)


def _spark_errors(exc: BaseException) -> list[PySparkException]:
    """``exc`` as PySpark errors: itself, or each cause of a raw JVM error, outermost first."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    if isinstance(exc, PySparkException):
        return [exc]
    if not isinstance(exc, Py4JJavaError):
        return []
    # toLocalIterator raises the JVM error unconverted; convert it the way PySpark does.
    from pyspark.errors.exceptions.captured import convert_exception

    found: list[PySparkException] = []
    java = exc.java_exception
    while java is not None and len(found) < 16:
        found.append(convert_exception(java))
        java = java.getCause()
    return found


def _reraise_spark_error(exc: BaseException, views: dict[TableRef, str]) -> None:
    """Raise a one-line segspark error for a Spark error met while rows are computed."""
    errors = _spark_errors(exc)
    for error in errors:
        # Errors in the query's data (division by zero, a bad cast) surface only when rows are
        # computed; they are the query's fault (exit 2), not a runtime failure.
        if (error.getSqlState() or "")[:2] in _QUERY_ERROR_STATES:
            raise UsageError(f"SQL error: {_first_line(error, views)}") from None
    if errors and errors[0] is not exc:
        # A raw JVM error's own first line only names the Py4J call.
        raise SegsparkError(f"query failed: {_first_line(errors[-1], views)}") from exc


def _first_line(exc: BaseException, views: dict[TableRef, str]) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    for ref, view in views.items():
        line = line.replace(view, ref.name)
    return line


# --------------------------------------------------------------------------------------------
# output

_Kind = Literal["number", "float", "bool", "text", "json"]


def _timestamp_text(column: Column) -> Column:
    from pyspark.sql import functions as F

    # Like Python's isoformat: the fraction only when there is one, then all six digits.
    whole = F.unix_micros(column) % 1_000_000 == 0
    return F.when(whole, F.date_format(column, _TS_SECONDS)).otherwise(
        F.date_format(column, _TS_MICROS)
    )


def _presentable(df: DataFrame) -> tuple[DataFrame, list[str], list[_Kind]]:
    """Turn values Python would render ambiguously into text, inside Spark.

    Timestamps become ISO strings in the session time zone (Python would use the process's own
    zone), binary becomes base64, nested values become JSON text.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    names = list(df.columns)
    positional = df.toDF(*[f"c{i}" for i in range(len(names))])
    columns: list[Column] = []
    kinds: list[_Kind] = []
    for i, fld in enumerate(positional.schema.fields):
        col = F.col(f"c{i}")
        dtype = fld.dataType
        kind: _Kind = "text"
        if isinstance(dtype, T.BooleanType):
            kind = "bool"
        elif isinstance(dtype, T.FloatType):
            # Python would see the float32 widened to a double (0.1 -> 0.10000000149011612).
            col, kind = col.cast("string"), "float"
        elif isinstance(dtype, T.IntegralType | T.DoubleType | T.DecimalType):
            kind = "number"
        elif isinstance(dtype, T.TimestampType):
            col = _timestamp_text(col)
        elif isinstance(dtype, T.BinaryType):
            col = F.base64(col)
        elif isinstance(dtype, T.StructType | T.ArrayType | T.MapType | T.VariantType):
            col, kind = F.to_json(col, {"timestampFormat": _TS_MICROS}), "json"
        elif not isinstance(dtype, T.StringType | T.DateType | T.TimestampNTZType | T.NullType):
            col = col.cast("string")
        columns.append(col.alias(f"c{i}"))
        kinds.append(kind)
    return positional.select(*columns), names, kinds


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _text(value: Any, kind: _Kind) -> str:
    if value is None:
        return ""
    if kind == "bool":
        return "true" if value else "false"
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _json(value: Any, kind: _Kind) -> str:
    if value is None:
        return "null"
    if kind == "bool":
        return "true" if value else "false"
    if kind == "json":
        return str(value)
    if kind == "float":
        return str(value) if math.isfinite(float(value)) else json.dumps(str(value))
    if isinstance(value, float):
        # JSON has no NaN or Infinity; Spark's own spelling, quoted, keeps the value readable.
        text = _float_text(value)
        return text if math.isfinite(value) else json.dumps(text)
    if isinstance(value, int | decimal.Decimal):
        return str(value)
    if isinstance(value, dt.date):
        return json.dumps(value.isoformat())
    return json.dumps(str(value), ensure_ascii=False)


def write_csv(df: DataFrame, out: TextIO) -> int:
    """Stream ``df`` to ``out`` as CSV (header, then rows); returns the number of rows.

    Example:
        >>> write_csv(spark.sql("SELECT 1 AS a, 'x,y' AS b"), sys.stdout)
        a,b
        1,"x,y"
        1
    """
    shown, names, kinds = _presentable(df)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    count = 0
    for row in shown.toLocalIterator():
        writer.writerow([_text(v, k) for v, k in zip(row, kinds, strict=True)])
        count += 1
    return count


def write_json(df: DataFrame, out: TextIO) -> int:
    """Stream ``df`` to ``out`` as JSON lines (one object per row); returns the number of rows.

    Example:
        >>> write_json(spark.sql("SELECT 1 AS a, DATE'2026-01-31' AS d"), sys.stdout)
        {"a": 1, "d": "2026-01-31"}
        1
    """
    shown, names, kinds = _presentable(df)
    keys = [json.dumps(n, ensure_ascii=False) for n in names]
    count = 0
    for row in shown.toLocalIterator():
        fields = (f"{k}: {_json(v, kind)}" for k, v, kind in zip(keys, row, kinds, strict=True))
        out.write("{" + ", ".join(fields) + "}\n")
        count += 1
    return count


def _cell(value: Any, kind: _Kind) -> str:
    if value is None:
        return "NULL"
    text = _text(value, kind)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def _aligned(names: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[bool]) -> str:
    header = [_cell(n, "text") for n in names]
    body = [list(r) for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        )
        return " | ".join(padded).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in body)]) + "\n"


def write_table(df: DataFrame, out: TextIO, *, max_rows: int) -> int:
    """Print ``df`` as an aligned text table of at most ``max_rows`` rows; returns rows shown.

    A last line gives the number of rows, or how many more were not shown. Numbers are
    right-aligned, NULL is spelled out.

    Example:
        >>> write_table(spark.sql("SELECT * FROM VALUES (1, 'a'), (2, 'b') AS v(n, s)"),
        ...             sys.stdout, max_rows=1)
        n | s
        --+--
        1 | a
        ... 1 more row not shown (query.max_rows = 1; use --format csv or json for all rows)
        1
    """
    if max_rows < 1:
        raise UsageError(f"max_rows must be >= 1, got {max_rows}")
    shown, names, kinds = _presentable(df)
    rows = shown.limit(max_rows + 1).collect()
    more = 0
    if len(rows) > max_rows:
        rows = rows[:max_rows]
        more = df.count() - max_rows
    cells = [[_cell(v, k) for v, k in zip(row, kinds, strict=True)] for row in rows]
    out.write(_aligned(names, cells, [k in ("number", "float") for k in kinds]))
    if more:
        plural = "row" if more == 1 else "rows"
        out.write(
            f"... {more} more {plural} not shown (query.max_rows = {max_rows}; "
            "use --format csv or json for all rows)\n"
        )
    else:
        out.write(f"({len(rows)} {'row' if len(rows) == 1 else 'rows'})\n")
    return len(rows)


def run_query(
    lake: Lake,
    sql: str,
    *,
    fmt: OutputFormat = "table",
    out: TextIO,
    max_rows: int = 1000,
) -> int:
    """Run one read-only query over the lake and write its result to ``out``.

    Returns the number of rows written. See :func:`check_statement` for what is refused.

    Example:
        >>> run_query(lake, "SELECT domain, count(*) AS n FROM segment_snapshots GROUP BY 1",
        ...           fmt="json", out=sys.stdout)
        {"domain": "retail", "n": 120}
        1
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    with open_query(lake, sql) as df:
        if fmt == "csv":
            return write_csv(df, out)
        if fmt == "json":
            return write_json(df, out)
        return write_table(df, out, max_rows=max_rows)
