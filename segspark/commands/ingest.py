"""``segspark ingest``: load a source file or table into a bronze table, quarantining bad rows."""

from __future__ import annotations

import argparse
import logging
from typing import Any

log = logging.getLogger(__name__)


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "ingest",
        parents=[parent],
        help="validate a source and load it into a bronze table (bad rows are quarantined)",
        description=(
            "Read CSV (any delimiter, whitespace-delimited text included), Parquet, JSON lines "
            "or a Delta table, map its columns to the table contract, validate every row and "
            "append the accepted rows to the bronze table and the rejected ones, with a reason, "
            "to <table>_quarantine. The same input ingested twice adds nothing the second time."
        ),
    )
    p.add_argument("--domain", required=True, metavar="D", help="retail, telecom or energy")
    p.add_argument(
        "--input", required=True, metavar="PATH", help="a file, a folder or a Delta path"
    )
    p.add_argument(
        "--format",
        default=None,
        metavar="FMT",
        help="csv, parquet, json or delta (default: the mapping's format, else the extension)",
    )
    p.add_argument(
        "--mapping",
        default=None,
        metavar="FILE",
        help="YAML: format, options, columns (contract: source), timestamp_format",
    )
    p.add_argument(
        "--table",
        default=None,
        metavar="T",
        help="customers to load customer attributes (default: the domain's event table)",
    )
    p.set_defaults(handler=run)


def run(ctx: Any, args: argparse.Namespace) -> int:
    from segspark.sources import ingest

    settings = ctx.settings(args.domain)
    result = ingest(
        ctx.spark(args.domain),
        ctx.lake(args.domain),
        domain=args.domain,
        input_path=args.input,
        fmt=args.format,
        mapping=args.mapping,
        table=args.table,
        settings=settings.sources,
    )
    for line in result.lines():
        log.info("%s", line)
        print(line)
    return 0
