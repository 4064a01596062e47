"""``segspark report --domain D [--as-of DATE] --out FILE.html``: the segment report."""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from segspark.commands._args import iso_date
from segspark.config import DOMAINS
from segspark.errors import InputError, UsageError


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "report",
        parents=[parent],
        help="write the segment report as one self-contained HTML file",
        description=(
            "Write one HTML page (no network needed to view it) with the segment cards, segment "
            "sizes over time, the profile heatmap, the migration Sankey and drift since the "
            "previous snapshot, and the k-selection curves when --k-metrics is given."
        ),
    )
    p.add_argument("--domain", required=True, choices=DOMAINS)
    p.add_argument(
        "--as-of",
        type=iso_date,
        default=None,
        metavar="DATE",
        help="snapshot date (default: the domain's latest segment snapshot)",
    )
    p.add_argument("--out", required=True, metavar="FILE.html", help="the HTML file to write")
    p.add_argument(
        "--k-metrics",
        metavar="FILE",
        default=None,
        help='per-k metrics: a JSON list like [{"k": 2, "silhouette": 0.41, ...}] or a CSV '
        "with a k column (the training run's k_metrics.csv)",
    )
    p.add_argument("--chosen-k", type=int, default=None, metavar="K", help="mark this k")
    p.set_defaults(handler=run)


def read_k_metrics(path: str) -> list[dict[str, Any]]:
    """Rows of a per-k metrics file (JSON list of objects, or CSV with a header).

    Example:
        >>> read_k_metrics("k_metrics.json")
        [{'k': 2, 'silhouette': 0.41}, {'k': 3, 'silhouette': 0.52}]
    """
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise InputError(f"cannot read --k-metrics {path}: {exc.strerror or exc}") from None
    if file.suffix.lower() == ".csv":
        return [dict(row) for row in csv.DictReader(text.splitlines())]
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--k-metrics {path} is not valid JSON: {exc.msg}") from None
    if not isinstance(rows, list):
        raise InputError(f"--k-metrics {path} must hold a JSON list of objects")
    return rows


def _write_atomically(path: Path, text: str) -> None:
    # A reader (or a browser reload) never sees half a page, and a failure leaves no file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(
    lake: Any,
    settings: Any,
    *,
    domain: str,
    out: Path,
    as_of: Any = None,
    k_rows: list[dict[str, float]] | None = None,
    chosen_k: int | None = None,
) -> Any:
    """Collect the report's aggregates from the lake and write the HTML file atomically."""
    from segspark.features.catalog import features
    from segspark.report import ReportOptions, collect_report_data, render_report

    data = collect_report_data(
        lake,
        domain=domain,
        as_of=as_of,
        max_periods=settings.report.max_periods,
        feature_order=settings.model.profiled,
        k_metrics=k_rows or [],
        chosen_k=chosen_k,
    )
    catalog = {f.name: f for f in features(domain)}
    meanings = {name: f"{f.meaning} ({f.unit})" for name, f in catalog.items()}
    value_column = settings.model.value_column
    value_label = None
    if value_column:
        unit = catalog[value_column].unit if value_column in catalog else None
        value_label = f"sum of {value_column}" + (f", {unit}" if unit else "")
    options = ReportOptions(
        min_segment_size=settings.privacy.min_segment_size,
        psi_moderate=settings.snapshots.psi_moderate,
        psi_retrain=settings.snapshots.psi_retrain,
        top_features=settings.report.top_features,
        value_label=value_label,
        feature_meanings=meanings,
    )
    _write_atomically(out, render_report(data, options))
    return data


def k_metrics_from_tracking(
    settings: Any, uri: str, domain: str
) -> tuple[list[dict[str, float]], int | None]:
    """The per-k metrics and chosen k of the domain's latest train run, if one is tracked."""
    import mlflow

    from segspark.report import k_metrics_from_histories
    from segspark.tracking import configure, experiment_name

    configure(settings, uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name(domain))
    if experiment is None:
        return [], None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.step = 'train' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return [], None
    run_id = runs[0].info.run_id
    names = ("silhouette", "calinski_harabasz", "davies_bouldin", "wssse", "stability_ari")
    histories = {
        name: [(m.step, m.value) for m in client.get_metric_history(run_id, name)] for name in names
    }
    chosen = runs[0].data.metrics.get("chosen_k")
    return k_metrics_from_histories(histories), None if chosen is None else int(chosen)


def run(ctx: Any, args: argparse.Namespace) -> int:
    from segspark.report import normalise_k_metrics

    out = Path(args.out)
    if not out.parent.is_dir():
        raise UsageError(f"--out {args.out}: folder {out.parent} does not exist")
    if out.is_dir():
        raise UsageError(f"--out {args.out} is a folder; give a file name")
    k_rows = normalise_k_metrics(read_k_metrics(args.k_metrics)) if args.k_metrics else []
    chosen_k = args.chosen_k
    settings = ctx.settings(args.domain)
    lake = ctx.lake(args.domain)
    if not k_rows:
        k_rows, tracked_k = k_metrics_from_tracking(
            settings, ctx.tracking_uri(args.domain), args.domain
        )
        chosen_k = chosen_k if chosen_k is not None else tracked_k
    data = write_report(
        lake,
        settings,
        domain=args.domain,
        out=out,
        as_of=args.as_of,
        k_rows=k_rows,
        chosen_k=chosen_k,
    )
    withheld = sum(1 for p in data.profiles if p.withheld)
    print(
        f"report for {args.domain} @ {data.as_of}: {len(data.profiles)} segments "
        f"({withheld} withheld) -> {out}"
    )
    return 0
