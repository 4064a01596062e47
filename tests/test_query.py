"""``segspark query``: read-only SQL over lake tables, time travel, output formats, refusals."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import types as T

from segspark.errors import ReadOnlyViolationError, TableNotFoundError, UsageError
from segspark.lake import Lake
from segspark.query import VIEW_PREFIX, TableRef, check_statement, open_query, resolve_tables

Cli = Callable[..., tuple[int, str, str]]
UTC = dt.UTC

SALES_SCHEMA = T.StructType(
    [
        T.StructField("id", T.LongType()),
        T.StructField("name", T.StringType()),
        T.StructField("amount", T.DoubleType()),
        T.StructField("day", T.DateType()),
        T.StructField("ts", T.TimestampType()),
    ]
)
FIRST = [
    (1, "alice", 10.5, dt.date(2026, 1, 1), dt.datetime(2026, 1, 1, 10, 0, tzinfo=UTC)),
    (2, 'bob, "jr"', None, dt.date(2026, 1, 2), dt.datetime(2026, 1, 2, 8, 30, 0, 250000, UTC)),
]
SECOND = [(3, "chloé", 7.25, None, None)]


@pytest.fixture
def sales(spark: SparkSession, lake: Lake) -> Lake:
    """``sales`` at version 0 (ids 1, 2) and version 1 (ids 1, 2, 3); ``regions`` at version 0."""
    lake.write("sales", spark.createDataFrame(FIRST, SALES_SCHEMA))
    lake.write("sales", spark.createDataFrame(SECOND, SALES_SCHEMA))
    regions = spark.createDataFrame(
        [(1, "north"), (3, "south"), (4, "east")], "id bigint, region string"
    )
    lake.write("regions", regions)
    return lake


def _json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def _iso(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


# --------------------------------------------------------------------------------------------
# results


def test_json_rows_equal_what_deltalake_reads(sales: Lake, cli: Cli) -> None:
    from deltalake import DeltaTable

    code, out, err = cli("query", "SELECT * FROM sales ORDER BY id", "--format", "json")

    assert (code, err) == (0, "")
    truth = DeltaTable(sales.path("sales")).to_pyarrow_table().to_pylist()
    expected = [
        {k: _iso(v) for k, v in row.items()} for row in sorted(truth, key=lambda r: r["id"])
    ]
    assert _json_lines(out) == expected
    assert [row["id"] for row in expected] == [1, 2, 3]


def test_csv_output_is_exact(sales: Lake, cli: Cli) -> None:
    code, out, err = cli("query", "SELECT * FROM sales ORDER BY id", "--format", "csv")

    assert (code, err) == (0, "")
    assert out == (
        "id,name,amount,day,ts\n"
        "1,alice,10.5,2026-01-01,2026-01-01T10:00:00Z\n"
        '2,"bob, ""jr""",,2026-01-02,2026-01-02T08:30:00.250000Z\n'
        "3,chloé,7.25,,\n"
    )


def test_json_output_is_exact(sales: Lake, cli: Cli) -> None:
    sql = (
        "SELECT id, name, amount, day, ts, amount > 8 AS big, "
        "CAST(amount AS DECIMAL(6, 2)) AS dec, named_struct('d', day) AS nested "
        "FROM sales ORDER BY id"
    )
    code, out, err = cli("query", sql, "--format", "json")

    assert (code, err) == (0, "")
    assert out == (
        '{"id": 1, "name": "alice", "amount": 10.5, "day": "2026-01-01", '
        '"ts": "2026-01-01T10:00:00Z", "big": true, "dec": 10.50, '
        '"nested": {"d":"2026-01-01"}}\n'
        '{"id": 2, "name": "bob, \\"jr\\"", "amount": null, "day": "2026-01-02", '
        '"ts": "2026-01-02T08:30:00.250000Z", "big": null, "dec": null, '
        '"nested": {"d":"2026-01-02"}}\n'
        '{"id": 3, "name": "chloé", "amount": 7.25, "day": null, "ts": null, '
        '"big": false, "dec": 7.25, "nested": {}}\n'
    )
    assert json.loads(out.splitlines()[0], parse_float=Decimal)["dec"] == Decimal("10.50")


def test_json_spells_special_values(lake: Lake, cli: Cli) -> None:
    sql = (
        "SELECT CAST('NaN' AS DOUBLE) AS nan, -CAST('Infinity' AS DOUBLE) AS ninf, "
        "CAST(0.1 AS FLOAT) AS f, TIMESTAMP_NTZ'2026-01-01 01:02:03' AS ntz, "
        "X'0102' AS bin, array(1, 2) AS arr, map('k', 'v') AS m, 'a\nb' AS nl, NULL AS n"
    )
    code, out, err = cli("query", sql, "--format", "json")

    assert (code, err) == (0, "")
    assert out == (
        '{"nan": "NaN", "ninf": "-Infinity", "f": 0.1, "ntz": "2026-01-01T01:02:03", '
        '"bin": "AQI=", "arr": [1,2], "m": {"k":"v"}, "nl": "a\\nb", "n": null}\n'
    )


def test_table_format_has_a_header_rule_and_row_count(sales: Lake, cli: Cli) -> None:
    code, out, err = cli("query", "SELECT id, name, amount FROM sales ORDER BY id")

    assert (code, err) == (0, "")
    assert out == (
        "id | name      | amount\n"
        "---+-----------+-------\n"
        " 1 | alice     |   10.5\n"
        ' 2 | bob, "jr" |   NULL\n'
        " 3 | chloé     |   7.25\n"
        "(3 rows)\n"
    )


def test_table_format_shows_at_most_max_rows_and_counts_the_rest(sales: Lake, cli: Cli) -> None:
    code, out, err = cli(
        "--set", "query.max_rows=2", "query", "SELECT id, day FROM sales ORDER BY id DESC"
    )

    assert (code, err) == (0, "")
    assert out == (
        "id | day\n"
        "---+-----------\n"
        " 3 | NULL\n"
        " 2 | 2026-01-02\n"
        "... 1 more row not shown (query.max_rows = 2; use --format csv or json for all rows)\n"
    )


def test_version_as_of_zero_reads_the_first_version(sales: Lake, cli: Cli) -> None:
    current = cli("query", "SELECT id FROM sales ORDER BY id", "--format", "csv")
    first = cli("query", "SELECT id FROM sales VERSION AS OF 0 ORDER BY id", "--format", "csv")

    assert current == (0, "id\n1\n2\n3\n", "")
    assert first == (0, "id\n1\n2\n", "")


def test_timestamp_as_of_reads_the_version_committed_at_that_time(sales: Lake, cli: Cli) -> None:
    commits = {int(h["version"]): int(h["timestamp"]) for h in sales.history("sales")}
    assert commits[1] > commits[0]
    at_first = dt.datetime.fromtimestamp(commits[0] / 1000, UTC).replace(tzinfo=None)
    stamp = at_first.isoformat(sep=" ", timespec="milliseconds")

    code, out, err = cli(
        "query",
        f"SELECT id, name FROM sales TIMESTAMP AS OF '{stamp}' ORDER BY id",
        "--format",
        "csv",
    )

    assert (code, err) == (0, "")
    assert out == 'id,name\n1,alice\n2,"bob, ""jr"""\n'


def test_time_travel_and_current_version_of_one_table_in_one_query(sales: Lake, cli: Cli) -> None:
    sql = (
        "SELECT now.id FROM sales AS now LEFT ANTI JOIN sales VERSION AS OF 0 AS before "
        "ON now.id = before.id"
    )
    assert cli("query", sql, "--format", "csv") == (0, "id\n3\n", "")


def test_join_of_two_lake_tables(sales: Lake, cli: Cli) -> None:
    sql = (
        "SELECT s.id, s.name, regions.region FROM sales s "
        "JOIN regions ON s.id = regions.id ORDER BY s.id"
    )
    code, out, err = cli("query", sql, "--format", "json")

    assert (code, err) == (0, "")
    assert _json_lines(out) == [
        {"id": 1, "name": "alice", "region": "north"},
        {"id": 3, "name": "chloé", "region": "south"},
    ]


def test_cte_reads_lake_tables_and_is_visible_by_its_own_name(sales: Lake, cli: Cli) -> None:
    sql = (
        "WITH big AS (SELECT id, amount FROM sales WHERE amount > 7), "
        "named AS (SELECT big.id, region FROM big JOIN regions USING (id)) "
        "SELECT * FROM named ORDER BY id"
    )
    assert cli("query", sql, "--format", "csv") == (0, "id,region\n1,north\n3,south\n", "")


def test_values_and_set_operations_run(sales: Lake, cli: Cli) -> None:
    sql = "SELECT id FROM regions UNION ALL VALUES (10) ORDER BY id"
    assert cli("query", sql, "--format", "csv") == (0, "id\n1\n3\n4\n10\n", "")


def test_unquoted_table_names_are_case_insensitive(sales: Lake, cli: Cli) -> None:
    assert cli("query", "SELECT count(*) AS n FROM SALES", "--format", "csv") == (0, "n\n3\n", "")


def test_variables_in_strings_are_not_substituted(sales: Lake, cli: Cli) -> None:
    sql = "SELECT '${env:HOME}' AS home, '${spark.app.name}' AS app"
    code, out, _ = cli("query", sql, "--format", "json")

    assert code == 0
    assert _json_lines(out) == [{"home": "${env:HOME}", "app": "${spark.app.name}"}]


def test_open_query_turns_file_queries_off_and_cleans_up(spark: SparkSession, sales: Lake) -> None:
    before = spark.conf.get("spark.sql.runSQLOnFiles")

    with open_query(sales, "SELECT id FROM sales VERSION AS OF 0") as df:
        assert spark.conf.get("spark.sql.runSQLOnFiles") == "false"
        assert sorted(r.id for r in df.collect()) == [1, 2]
        assert any(t.name.startswith(VIEW_PREFIX) for t in spark.catalog.listTables())

    assert spark.conf.get("spark.sql.runSQLOnFiles") == before
    assert not any(t.name.startswith(VIEW_PREFIX) for t in spark.catalog.listTables())


def test_resolve_tables_lists_each_snapshot_once() -> None:
    tree = check_statement(
        "WITH r AS (SELECT * FROM regions) SELECT * FROM sales a "
        "JOIN sales VERSION AS OF 0 b USING (id) JOIN sales c USING (id) JOIN r USING (id)"
    )
    refs = resolve_tables(tree, ["sales", "regions"])
    assert len(refs) == 3
    assert set(refs) == {TableRef("regions"), TableRef("sales"), TableRef("sales", version=0)}


def test_a_cte_shadowing_a_lake_table_name_is_the_cte() -> None:
    tree = check_statement("WITH sales AS (SELECT 1 AS id) SELECT * FROM sales")
    assert resolve_tables(tree, ["sales"]) == []


def test_a_cte_does_not_see_itself_or_later_ctes() -> None:
    tree = check_statement("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a")
    with pytest.raises(TableNotFoundError, match=r"^table 'b' does not exist in the lake"):
        resolve_tables(tree, ["sales"])


# --------------------------------------------------------------------------------------------
# refusals

REFUSED = [
    pytest.param(
        "INSERT INTO sales SELECT * FROM sales",
        r"^read-only: INSERT statements are not allowed; only a single query",
        id="insert",
    ),
    pytest.param(
        "DELETE FROM sales WHERE id = 1",
        r"^read-only: DELETE statements are not allowed",
        id="delete",
    ),
    pytest.param(
        "UPDATE sales SET amount = 0", r"^read-only: UPDATE statements are not allowed", id="update"
    ),
    pytest.param(
        "MERGE INTO sales USING regions ON sales.id = regions.id WHEN MATCHED THEN DELETE",
        r"^read-only: MERGE statements are not allowed",
        id="merge",
    ),
    pytest.param("DROP TABLE sales", r"^read-only: DROP statements are not allowed", id="drop"),
    pytest.param(
        "CREATE TABLE evil AS SELECT * FROM sales",
        r"^read-only: CREATE statements are not allowed",
        id="create",
    ),
    pytest.param(
        "ALTER TABLE sales ADD COLUMNS (x INT)",
        r"^read-only: ALTER statements are not allowed",
        id="alter",
    ),
    pytest.param(
        "TRUNCATE TABLE sales", r"^read-only: TRUNCATE statements are not allowed", id="truncate"
    ),
    pytest.param(
        "SET spark.sql.runSQLOnFiles=true", r"^read-only: SET statements are not allowed", id="set"
    ),
    pytest.param(
        "ADD JAR /tmp/evil.jar", r"^read-only: ADD JAR statements are not allowed", id="add-jar"
    ),
    pytest.param("CACHE TABLE sales", r"^read-only: CACHE statements are not allowed", id="cache"),
    pytest.param(
        "UNCACHE TABLE sales", r"^read-only: UNCACHE statements are not allowed", id="uncache"
    ),
    pytest.param(
        "REFRESH TABLE sales", r"^read-only: REFRESH statements are not allowed", id="refresh"
    ),
    pytest.param(
        "EXECUTE IMMEDIATE 'DROP TABLE sales'",
        r"^read-only: EXECUTE IMMEDIATE statements are not allowed",
        id="execute-immediate",
    ),
    pytest.param("SHOW TABLES", r"^read-only: SHOW TABLES statements are not allowed", id="show"),
    pytest.param(
        "SELECT 1; DROP TABLE sales",
        r"^read-only: only one statement is allowed, got 2$",
        id="two-statements",
    ),
    pytest.param(
        "WITH a AS (INSERT INTO sales SELECT * FROM sales) SELECT 1",
        r"^read-only: INSERT is not allowed inside a query$",
        id="nested-insert",
    ),
    pytest.param(
        "SELECT reflect('java.lang.System', 'exit', 0)",
        r"^read-only: function reflect\(\) is not allowed$",
        id="reflect",
    ),
    pytest.param(
        "SELECT id, JAVA_METHOD('java.lang.System', 'getenv', 'HOME') FROM sales",
        r"^read-only: function java_method\(\) is not allowed$",
        id="java-method",
    ),
    pytest.param(
        "SELECT try_reflect('java.lang.System', 'exit', 0)",
        r"^read-only: function try_reflect\(\) is not allowed$",
        id="try-reflect",
    ),
    pytest.param(
        "SELECT * FROM IDENTIFIER('sales')",
        r"^read-only: function identifier\(\) is not allowed$",
        id="identifier-clause",
    ),
    pytest.param(
        "SELECT * FROM csv.`/etc/passwd`",
        r"^read-only: direct file queries are not allowed: csv\.`/etc/passwd`$",
        id="csv-file",
    ),
    pytest.param(
        "SELECT * FROM delta.`/tmp/lake/sales`",
        r"^read-only: direct file queries are not allowed: delta\.`/tmp/lake/sales`$",
        id="delta-path",
    ),
    pytest.param(
        "SELECT * FROM default.sales",
        r"^qualified table name 'default\.sales' is not allowed; lake tables are queried by",
        id="db-table",
    ),
    pytest.param(
        "SELECT * FROM spark_catalog.default.sales",
        r"^qualified table name 'spark_catalog\.default\.sales' is not allowed",
        id="catalog-db-table",
    ),
    pytest.param(
        "SELECT * FROM `../x`",
        r"^invalid table name '\.\./x': use lower-case letters, digits and underscores$",
        id="parent-dir",
    ),
    pytest.param(
        "SELECT * FROM sales VERSION AS OF id",
        r"^VERSION AS OF for table 'sales' needs a non-negative integer, got id$",
        id="version-expression",
    ),
    pytest.param(
        "SELECT * FROM range(3) JOIN read_files('/etc') ON true",
        r"^table function read_files\(\) is not allowed",
        id="file-table-function",
    ),
]


@pytest.mark.parametrize(("sql", "message"), REFUSED)
def test_refused_statements_exit_2_and_leave_the_lake_untouched(
    sales: Lake, cli: Cli, sql: str, message: str
) -> None:
    before = (sales.tables(), sales.version("sales"), sales.version("regions"))

    code, out, err = cli("query", sql)

    assert (code, out) == (2, "")
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert re.search(message, err.removeprefix("segspark: error: ").rstrip("\n")), err
    assert (sales.tables(), sales.version("sales"), sales.version("regions")) == before
    assert sales.read("sales").count() == 3


@pytest.mark.parametrize(
    ("sql", "error"),
    [
        ("DROP TABLE sales", ReadOnlyViolationError),
        ("SELECT * FROM db.t", UsageError),
        ("SELECT FROM WHERE (", UsageError),
    ],
)
def test_check_statement_needs_no_spark(sql: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        resolve_tables(check_statement(sql), ["sales"])


# --------------------------------------------------------------------------------------------
# errors are one line


def _one_clean_line(err: str) -> str:
    assert err.count("\n") == 1, err
    assert "Traceback" not in err and "\tat " not in err and "JVM" not in err
    assert VIEW_PREFIX not in err
    return err.removeprefix("segspark: error: ").rstrip("\n")


def test_unknown_table_is_one_line(sales: Lake, cli: Cli) -> None:
    code, out, err = cli("query", "SELECT * FROM nope")

    assert (code, out) == (2, "")
    assert _one_clean_line(err) == (
        "table 'nope' does not exist in the lake (tables: regions, sales)"
    )


def test_syntax_error_is_one_line(sales: Lake, cli: Cli) -> None:
    code, out, err = cli("query", "SELECT id FROM")

    assert (code, out) == (2, "")
    assert _one_clean_line(err) == (
        "SQL syntax error at line 1, column 14 near 'FROM': "
        "Expected table name but got end of input"
    )


def test_unknown_column_is_one_line(sales: Lake, cli: Cli) -> None:
    code, out, err = cli("query", "SELECT nope FROM sales")

    assert (code, out) == (2, "")
    line = _one_clean_line(err)
    assert re.match(r"^SQL error: \[UNRESOLVED_COLUMN\.WITH_SUGGESTION\] .*`nope`", line), line
    assert "Did you mean one of the following? [`id`, `name`, `ts`, `day`, `amount`]" in line


def test_spark_parse_error_is_one_line(sales: Lake, cli: Cli) -> None:
    # sqlglot reads `sales@v1` as an alias; Spark (no variable substitution) cannot parse it.
    code, out, err = cli("query", "SELECT * FROM sales@v1")

    assert (code, out) == (2, "")
    assert re.match(r"^SQL error: \[PARSE_SYNTAX_ERROR\]", _one_clean_line(err))


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_error_in_the_data_is_one_line(sales: Lake, cli: Cli, fmt: str) -> None:
    code, out, err = cli("query", "SELECT id / 0 AS x FROM sales", "--format", fmt)

    assert code == 2
    assert out == ("x\n" if fmt == "csv" else "")
    assert re.match(r"^SQL error: \[DIVIDE_BY_ZERO\] Division by zero\.", _one_clean_line(err))


def test_missing_version_is_one_line(sales: Lake, cli: Cli) -> None:
    code, out, err = cli("query", "SELECT * FROM sales VERSION AS OF 7")

    assert (code, out) == (2, "")
    assert re.match(r"^table at .*/sales has no version 7$", _one_clean_line(err))
