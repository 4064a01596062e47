"""``segspark score``: assign customers with the champion model (no refit)."""

from __future__ import annotations

import argparse
from typing import Any

from segspark.commands._args import iso_date
from segspark.commands.train import print_segments
from segspark.config import DOMAINS


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "score",
        parents=[parent],
        help="assign customers at a date with the champion model",
        description="Score <domain>_features at AS_OF with models:/segspark-<domain>@champion "
        "and write the snapshot and profiles of that date.",
    )
    p.add_argument("--domain", required=True, choices=DOMAINS)
    p.add_argument("--as-of", required=True, type=iso_date, metavar="DATE")
    p.set_defaults(handler=run)


def run(ctx: Any, args: argparse.Namespace) -> int:
    from segspark.segmentation import score

    result = score(
        ctx.spark(args.domain),
        ctx.lake(args.domain),
        ctx.settings(args.domain),
        domain=args.domain,
        as_of=args.as_of,
        tracking_uri=ctx.tracking_uri(args.domain),
    )
    print(
        f"{args.domain} @ {result.as_of}: {result.customers:,} customers scored with "
        f"segspark-{args.domain} v{result.model_version}; run {result.run_id}"
    )
    print_segments(result)
    return 0
