"""``segspark demo``: the main job on the embedded default, end to end, for a newcomer.

For each domain: generate customers and events with planted segments, then for each configured
``as_of`` run the periodic job (features, train on the first date and score on the next ones,
snapshot, profiles, migration and drift), write the HTML report, and print the segment profiles
and the migration matrix. Sizes and dates live under ``demo:`` in ``conf/base.yaml``.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path
from typing import Any

from pyspark.sql import functions as F

from segspark.config import DOMAINS


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "demo",
        parents=[parent],
        help="generate all three domains and run the whole job on them",
        description=(
            "Generate retail, telecom and energy data with planted segments, run features, "
            "training, scoring, snapshots, migrations and reports on the demo dates, and print "
            "each domain's segment profiles and migration matrix."
        ),
    )
    p.add_argument(
        "--domain", action="append", choices=DOMAINS, help="only this domain (repeatable)"
    )
    p.add_argument(
        "--customers",
        type=int,
        default=None,
        metavar="N",
        help="customers per domain (default: demo.customers)",
    )
    p.set_defaults(handler=run)


class Progress:
    """Prints one line per finished stage: domain, stage, rows, elapsed seconds."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def stage(self, domain: str, name: str, detail: str, since: float) -> None:
        now = time.monotonic()
        print(
            f"[{now - self.started:6.1f}s] {domain:<8} {name:<10} {detail} ({now - since:.1f}s)",
            flush=True,
        )


def _table(df: Any, max_rows: int = 50) -> str:
    from segspark.query import write_table

    out = io.StringIO()
    write_table(df, out, max_rows=max_rows)
    return out.getvalue()


def run(ctx: Any, args: argparse.Namespace) -> int:
    from segspark import synth
    from segspark.commands.generate import store
    from segspark.commands.report import k_metrics_from_tracking, write_report
    from segspark.privacy import require_key
    from segspark.segmentation import run as run_step

    if ctx.args.env is None and not os.environ.get("SEGSPARK_ENV"):
        ctx.args.env = "demo"
    progress = Progress()
    domains = args.domain or list(DOMAINS)
    for domain in domains:  # a missing pseudonymisation key stops the demo before it generates
        require_key(ctx.settings(domain).privacy)
    lake = None
    summaries = []
    for domain in domains:
        settings = ctx.settings(domain)
        demo = settings.demo
        spark = ctx.spark(domain)
        lake = ctx.lake(domain)
        uri = ctx.tracking_uri(domain)
        customers = args.customers or demo.customers[domain]

        since = time.monotonic()
        data = synth.generate(
            spark,
            domain,
            customers=customers,
            start=demo.start,
            end=demo.end,
            seed=demo.seed,
            settings=settings.synth,
            partitions=synth.default_partitions(
                spark,
                domain,
                customers=customers,
                start=demo.start,
                end=demo.end,
                settings=settings.synth,
            ),
        )
        written = store(lake, data, domain)
        events, _ = written[data.event_table]
        progress.stage(
            domain, "generate", f"{customers:,} customers, {events:,} {data.event_table}", since
        )

        for as_of in demo.as_of:
            since = time.monotonic()
            result, moved = run_step(
                spark, lake, settings, domain=domain, as_of=as_of, tracking_uri=uri
            )
            detail = (
                f"{as_of}: {result.step} -> {len(result.segments)} segments, "
                f"{result.customers:,} customers"
            )
            if moved is not None:
                detail += f", {moved.customers:,} migration rows"
            progress.stage(domain, "run", detail, since)

        since = time.monotonic()
        report_dir = Path(lake.root) / "reports"
        report_dir.mkdir(parents=True, exist_ok=True)
        out = report_dir / f"{domain}.html"
        k_rows, chosen = k_metrics_from_tracking(settings, uri, domain)
        write_report(lake, settings, domain=domain, out=out, k_rows=k_rows, chosen_k=chosen)
        progress.stage(domain, "report", str(out), since)

        last, previous = demo.as_of[-1], demo.as_of[-2]
        profiles = (
            lake.read("segment_profiles")
            .where((F.col("domain") == domain) & (F.col("as_of") == F.lit(last)))
            .select("segment_id", "segment_name", "customers", "share", "value", "withheld")
            .orderBy("segment_id")
        )
        matrix = (
            lake.read("segment_migration_matrix")
            .where(
                (F.col("domain") == domain)
                & (F.col("from_as_of") == F.lit(previous))
                & (F.col("to_as_of") == F.lit(last))
            )
            .select("from_segment_id", "to_segment_id", "customers", "share_of_from", "value")
            .orderBy(F.col("from_segment_id").asc_nulls_first(), "to_segment_id")
        )
        print(f"\n== {domain}: segment profiles at {last}")
        print(_table(profiles))
        print(f"== {domain}: migration matrix {previous} -> {last} (null = new / lapsed)")
        print(_table(matrix))
        summaries.append((domain, out))

    assert lake is not None
    print("Done. Everything is in the lake:", lake.root)
    print("  tables:   " + ", ".join(lake.tables()))
    for domain, out in summaries:
        print(f"  report:   {out} ({domain})")
    print(f"  MLflow:   {ctx.tracking_uri(domains[0])}")
    lake_flag = f"--lake {lake.root}"
    print("Next:")
    print(
        f'  segspark {lake_flag} query "SELECT domain, as_of, segment_name, count(*) AS customers '
        'FROM segment_snapshots GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"'
    )
    print(f"  segspark {lake_flag} ui        # MLflow UI on http://127.0.0.1:5000")
    return 0
