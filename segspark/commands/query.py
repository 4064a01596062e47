"""``segspark query "SQL"``: one read-only query over the lake tables, printed to stdout."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from segspark.query import FORMATS, check_statement, run_query


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "query",
        parents=[parent],
        help="run one read-only SQL query over the lake tables",
        description=(
            "Run one read-only SQL query (SELECT, WITH ... SELECT, VALUES, set operations) in "
            "Spark SQL syntax. Every lake table is visible by its name; "
            "`FROM t VERSION AS OF 3` and `FROM t TIMESTAMP AS OF '2026-01-01 10:00:00'` read "
            "earlier versions. Statements that write, change settings or read files directly "
            "are refused (exit code 2)."
        ),
    )
    p.add_argument("sql", metavar="SQL", help='the query, e.g. "SELECT * FROM customers"')
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table (aligned, at most query.max_rows rows), csv or json (JSON lines); "
        "default table",
    )
    p.set_defaults(handler=run)


def run(ctx: Any, args: argparse.Namespace) -> int:
    # Refuse a bad statement before a SparkSession is started.
    check_statement(args.sql)
    settings = ctx.settings()
    lake = ctx.lake()
    try:
        run_query(lake, args.sql, fmt=args.format, out=sys.stdout, max_rows=settings.query.max_rows)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (`| head`) is gone: stop quietly, and keep Python's exit-time flush from
        # failing on the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0
