"""``segspark train``: fit, select k, register and snapshot one domain at one date."""

from __future__ import annotations

import argparse
from typing import Any

from segspark.commands._args import iso_date
from segspark.config import DOMAINS


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "train",
        parents=[parent],
        help="fit the segmentation model, register it and write the snapshot",
        description=(
            "Fit preprocessing + clustering on <domain>_features at AS_OF, choose k by the "
            "documented rule, keep segment ids stable against the champion, register the model "
            "as segspark-<domain> (alias champion unless --no-promote) and write the snapshot "
            "and profiles."
        ),
    )
    p.add_argument("--domain", required=True, choices=DOMAINS)
    p.add_argument("--as-of", required=True, type=iso_date, metavar="DATE")
    p.add_argument("--k", type=int, default=None, help="fix k instead of choosing it")
    p.add_argument("--k-min", type=int, default=None, help="smallest k tried (model.k_min)")
    p.add_argument("--k-max", type=int, default=None, help="largest k tried (model.k_max)")
    p.add_argument("--algorithm", choices=("kmeans", "bisecting", "gmm"), default=None)
    p.add_argument(
        "--no-promote", action="store_true", help="register without moving the champion alias"
    )
    p.set_defaults(handler=run)


def print_segments(result: Any) -> None:
    for segment_id, name in result.segments.items():
        print(f"  segment {segment_id}: {name}")


def run(ctx: Any, args: argparse.Namespace) -> int:
    from segspark.segmentation import train

    result = train(
        ctx.spark(args.domain),
        ctx.lake(args.domain),
        ctx.settings(args.domain),
        domain=args.domain,
        as_of=args.as_of,
        tracking_uri=ctx.tracking_uri(args.domain),
        k=args.k,
        k_min=args.k_min,
        k_max=args.k_max,
        algorithm=args.algorithm,
        promote=not args.no_promote,
    )
    alias = "champion" if result.promoted else "not promoted"
    print(
        f"{args.domain} @ {result.as_of}: k={result.k} ({result.rule}); {result.customers:,} "
        f"customers; model segspark-{args.domain} v{result.model_version} ({alias}); "
        f"run {result.run_id}"
    )
    print_segments(result)
    return 0
