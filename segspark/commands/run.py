"""``segspark run``: features, score (or train), snapshot and migration for one date."""

from __future__ import annotations

import argparse
from typing import Any

from segspark.commands._args import iso_date
from segspark.commands.migrate import report
from segspark.commands.train import print_segments
from segspark.config import DOMAINS


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "run",
        parents=[parent],
        help="features, score or train, snapshot and migration for a date",
        description="The periodic job: compute features at AS_OF, score with the champion "
        "(train when there is none or --retrain), write the snapshot and profiles, and the "
        "migration and drift against the previous snapshot. Safe to re-run.",
    )
    p.add_argument("--domain", required=True, choices=DOMAINS)
    p.add_argument("--as-of", required=True, type=iso_date, metavar="DATE")
    p.add_argument("--retrain", action="store_true", help="train a new model even with a champion")
    p.set_defaults(handler=run)


def run(ctx: Any, args: argparse.Namespace) -> int:
    from segspark.privacy import require_key
    from segspark.segmentation import run as run_step

    settings = ctx.settings(args.domain)
    require_key(settings.privacy)  # a missing key stops here, before Spark starts
    result, moved = run_step(
        ctx.spark(args.domain),
        ctx.lake(args.domain),
        settings,
        domain=args.domain,
        as_of=args.as_of,
        tracking_uri=ctx.tracking_uri(args.domain),
        retrain=args.retrain,
    )
    print(
        f"{args.domain} @ {result.as_of}: {result.step} with segspark-{args.domain} "
        f"v{result.model_version}, {result.customers:,} customers"
    )
    print_segments(result)
    if moved is not None:
        report(moved, settings.snapshots.psi_retrain)
    return 0
