"""``segspark migrate``: who moved where between two snapshots, and how much drift."""

from __future__ import annotations

import argparse
from typing import Any

from segspark.commands._args import iso_date
from segspark.config import DOMAINS


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "migrate",
        parents=[parent],
        help="compute migrations and drift between two snapshots",
        description="Write segment_migrations (one row per customer of either snapshot), "
        "segment_migration_matrix and segment_drift for the pair (FROM, TO).",
    )
    p.add_argument("--domain", required=True, choices=DOMAINS)
    p.add_argument("--from", dest="from_as_of", required=True, type=iso_date, metavar="DATE")
    p.add_argument("--to", dest="to_as_of", required=True, type=iso_date, metavar="DATE")
    p.set_defaults(handler=run)


def report(result: Any, threshold: float) -> None:
    print(
        f"{result.domain} {result.from_as_of} -> {result.to_as_of}: "
        f"{result.customers:,} customers in segment_migrations"
    )
    worst = sorted(result.drift.items(), key=lambda kv: -kv[1])[:3]
    if worst:
        print("largest drift (PSI): " + ", ".join(f"{k} {v:.3f}" for k, v in worst))
    if result.retrain_recommended:
        print(f"drift above PSI {threshold:g}: retraining is recommended (--retrain)")


def run(ctx: Any, args: argparse.Namespace) -> int:
    from segspark.segmentation import migrate

    settings = ctx.settings(args.domain)
    ctx.spark(args.domain)
    result = migrate(
        ctx.lake(args.domain),
        settings,
        domain=args.domain,
        from_as_of=args.from_as_of,
        to_as_of=args.to_as_of,
    )
    report(result, settings.snapshots.psi_retrain)
    return 0
