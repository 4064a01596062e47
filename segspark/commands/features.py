"""``segspark features --domain D --as-of DATE``: compute and store per-customer features."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from segspark.commands._args import iso_date
from segspark.config import DOMAINS
from segspark.errors import UsageError


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "features",
        parents=[parent],
        help="compute per-customer features at a date",
        description=(
            "Compute one row per customer from the domain's events up to AS_OF and replace that "
            "as_of in <domain>_features (retail also fits the CLV models into clv_parameters)."
        ),
    )
    p.add_argument("--domain", required=True, choices=DOMAINS)
    p.add_argument("--as-of", required=True, type=iso_date, metavar="DATE")
    p.set_defaults(handler=run)


def run(ctx: Any, args: argparse.Namespace) -> int:
    from segspark.features.step import run_features
    from segspark.privacy import require_key

    if args.as_of > dt.date.today():
        raise UsageError(f"--as-of {args.as_of} is in the future")
    settings = ctx.settings(args.domain)
    require_key(settings.privacy)  # a missing key stops here, before Spark starts
    result = run_features(
        ctx.spark(args.domain),
        ctx.lake(args.domain),
        settings,
        domain=args.domain,
        as_of=args.as_of,
        tracking_uri=ctx.tracking_uri(args.domain),
    )
    print(
        f"{args.domain}_features @ {result.as_of}: {result.rows:,} customers "
        f"(feature_version {result.feature_version}, table version {result.version})"
    )
    if result.clv_error is not None:
        print(f"clv: not estimated, {result.clv_error}; CLV columns are null")
    elif result.clv:
        print("clv: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.clv.items())))
    return 0
