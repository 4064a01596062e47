"""``segspark maintain``: compact small files, checkpoint, vacuum, remove orphaned staging."""

from __future__ import annotations

import argparse
from typing import Any

from segspark.lake import check_table_name


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "maintain",
        parents=[parent],
        help="compact, checkpoint and vacuum lake tables",
        description=(
            "Compact small files, write a checkpoint, vacuum files older than the retention "
            "and remove staging folders of writes that never committed."
        ),
    )
    p.add_argument("--table", action="append", metavar="T", help="only this table (repeatable)")
    p.add_argument(
        "--retention-hours",
        type=float,
        default=None,
        help="vacuum retention (default lake.vacuum_retention_hours)",
    )
    p.add_argument(
        "--force", action="store_true", help="allow a retention below lake.safe_retention_hours"
    )
    p.add_argument("--no-vacuum", action="store_true", help="compact and checkpoint only")
    p.set_defaults(handler=run)


def run(ctx: Any, args: argparse.Namespace) -> int:
    settings = ctx.settings()
    lake = ctx.lake()
    tables = [check_table_name(t) for t in args.table] if args.table else None
    hours = (
        args.retention_hours
        if args.retention_hours is not None
        else settings.lake.vacuum_retention_hours
    )
    reports = lake.maintain(
        tables, retention_hours=hours, force=args.force, vacuum=not args.no_vacuum
    )
    for r in reports:
        print(
            f"{r.table}: compacted {r.compacted_files} file(s), checkpoint at version "
            f"{r.checkpoint_version}, vacuumed {len(r.vacuumed_files)} file(s), "
            f"removed {len(r.staging_removed)} unfinished write(s)"
        )
    if not reports:
        print(f"no tables under {lake.root}")
    return 0
