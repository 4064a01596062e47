"""``segspark generate``: synthetic customers, events and planted truth for one domain.

Writes ``customers`` and ``synthetic_truth`` (partitioned by ``domain``, replacing only that
domain's partition) and overwrites the domain's event table whole. The same arguments always
produce the same rows, so re-running leaves the tables' content unchanged.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from pyspark.sql import functions as F

from segspark import synth
from segspark.commands._args import iso_date
from segspark.config import DOMAINS
from segspark.lake import Lake

log = logging.getLogger(__name__)


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "generate",
        parents=[parent],
        help="generate synthetic customers and events with planted segments",
        description=(
            "Generate one domain's customers, events (transactions, cdrs or meter_readings) and "
            "the planted segment of every customer at each month end (synthetic_truth)."
        ),
    )
    p.add_argument("--domain", required=True, choices=DOMAINS, help="retail, telecom or energy")
    p.add_argument("--customers", required=True, type=int, metavar="N", help="customers to create")
    p.add_argument(
        "--start",
        type=iso_date,
        default=None,
        metavar="DATE",
        help="first day of events (default synth.start)",
    )
    p.add_argument(
        "--end",
        type=iso_date,
        default=None,
        metavar="DATE",
        help="last day of events (default synth.end)",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default synth.seed)")
    p.add_argument(
        "--partitions",
        type=int,
        default=None,
        metavar="P",
        help="partitions of the customer range (default: sized by synth.rows_per_partition)",
    )
    p.set_defaults(handler=run)


def store(
    lake: Lake, data: synth.SyntheticDomain, domain: str
) -> dict[str, tuple[int, int | None]]:
    """Write a generated domain: its event table whole, its partition of the shared tables.

    Returns ``{table: (rows of this domain, new version)}``.
    """
    written: dict[str, tuple[int, int | None]] = {}
    for table, frame in data.tables().items():
        if table == data.event_table:
            result = lake.write(table, frame, mode="overwrite")
            rows = lake.read(table).count()
        else:
            result = lake.write(
                table, frame, mode="overwrite", partition_by=["domain"], replace={"domain": domain}
            )
            rows = lake.read(table).where(F.col("domain") == domain).count()
        written[table] = (rows, result.version)
    return written


def run(ctx: Any, args: argparse.Namespace) -> int:
    domain: str = args.domain
    settings = ctx.settings(domain).synth
    start = args.start or settings.start
    end = args.end or settings.end
    seed = settings.seed if args.seed is None else args.seed
    # Reject bad arguments before a Spark session is started.
    synth.check_arguments(
        domain,
        customers=args.customers,
        start=start,
        end=end,
        seed=seed,
        partitions=1 if args.partitions is None else args.partitions,
    )
    spark = ctx.spark(domain)
    lake = ctx.lake(domain)
    partitions = args.partitions or synth.default_partitions(
        spark, domain, customers=args.customers, start=start, end=end, settings=settings
    )
    data = synth.generate(
        spark,
        domain,
        customers=args.customers,
        start=start,
        end=end,
        seed=seed,
        settings=settings,
        partitions=partitions,
    )
    for table, (rows, version) in store(lake, data, domain).items():
        print(f"{table}: {rows} rows written (domain {domain}, version {version})")
    log.info("generated %s as %s", domain, data.ingest_id)
    return 0
