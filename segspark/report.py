"""The segment report: one self-contained HTML page for the marketer.

Sections (titles in :data:`SECTION_TITLES`): named segment cards, segment sizes over time, a
profile heatmap (segment x feature z-scores), the migration Sankey between the last two
snapshots, the drift table and the k-selection curves. Charts are inline SVG drawn here in
Python: the page needs no script, no font and no network to be read.

Two halves:

* :func:`collect_report_data` reads the gold tables with a :class:`~segspark.lake.Lake`,
  filters to one domain and aggregates in Spark; only rows bounded by the number of segments,
  features and snapshot dates reach the driver. Customer ids are never selected.
* :func:`render_report` turns that :class:`ReportData` into HTML. It is pure, and every string
  that comes from data (segment, feature and drift names) is HTML-escaped.

Privacy follows ``segment_profiles`` (N = ``privacy.min_segment_size``): a withheld segment's
card says it is withheld and shows no aggregates, its heatmap row and its bars are left out.
The migration Sankey and table leave out (:func:`suppress_flows`) every flow of fewer than N
customers, every flow out of a segment withheld at the previous snapshot or into one withheld
at this one, and, for each segment (row or column of the matrix) whose left-out flows would sum
to 1 .. N - 1 customers, its smallest shown flow too, until no such row or column is left: a
left-out flow can then not be recovered as a segment's size minus its shown flows.

Example:
    >>> data = collect_report_data(lake, domain="retail", max_periods=12)
    >>> options = ReportOptions(min_segment_size=10, psi_moderate=0.1, psi_retrain=0.25,
    ...                         top_features=3)
    >>> Path("report.html").write_text(render_report(data, options))
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from segspark.errors import UsageError

if TYPE_CHECKING:
    from segspark.lake import Lake

SECTION_TITLES: dict[str, str] = {
    "segments": "Segments",
    "sizes": "Segment sizes over time",
    "heatmap": "Profile heatmap",
    "migration": "Segment migration",
    "drift": "Drift",
    "k-selection": "Choosing the number of segments (k selection)",
}
"""Section id -> heading, in page order."""

K_METRICS: dict[str, str] = {
    "silhouette": "silhouette (higher is better)",
    "calinski_harabasz": "Calinski-Harabasz (higher is better)",
    "davies_bouldin": "Davies-Bouldin (lower is better)",
    "wssse": "WSSSE (look for the elbow)",
    "stability_ari": "stability ARI (higher is better)",
}
"""Per-k metrics drawn as curves (MLflow names, logged with ``step=k``) -> chart title."""

REQUIRED_TABLES = ("segment_snapshots", "segment_profiles", "segment_feature_profiles")
"""Tables the report cannot do without; migration and drift are optional (first snapshot)."""

_PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#637939",
)  # fmt: skip
_NEW_COLOR = "#6b7280"
_LAPSED_COLOR = "#a3a3a3"
_POSITIVE = (178, 24, 43)
_NEGATIVE = (33, 102, 172)
_Z_CLAMP = 3.0


@dataclass(frozen=True)
class SegmentProfile:
    """One row of ``segment_profiles`` (aggregates are None for a withheld segment)."""

    segment_id: int
    name: str
    customers: int | None
    share: float | None
    value: float | None
    value_share: float | None
    withheld: bool


@dataclass(frozen=True)
class FeatureScore:
    """One row of ``segment_feature_profiles``."""

    segment_id: int
    feature: str
    mean: float | None
    z_score: float | None


@dataclass(frozen=True)
class SizePoint:
    """A segment's size at one snapshot date (``customers`` is None when withheld)."""

    as_of: dt.date
    segment_id: int
    customers: int | None


@dataclass(frozen=True)
class Flow:
    """One row of ``segment_migration_matrix``: None from = new customers, None to = lapsed."""

    from_segment_id: int | None
    to_segment_id: int | None
    customers: int
    share_of_from: float | None = None


@dataclass(frozen=True)
class DriftRow:
    """One row of ``segment_drift`` (kind ``share`` or ``feature``)."""

    kind: str
    name: str
    psi: float | None


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows, already small (k-, feature- and date-sized)."""

    domain: str
    as_of: dt.date
    previous_as_of: dt.date | None
    profiles: Sequence[SegmentProfile]
    feature_scores: Sequence[FeatureScore]
    sizes: Sequence[SizePoint] = ()
    names: Mapping[int, str] = field(default_factory=dict)
    previous_withheld: frozenset[int] = frozenset()
    flows: Sequence[Flow] | None = None
    drift: Sequence[DriftRow] | None = None
    k_metrics: Sequence[Mapping[str, float]] = ()
    chosen_k: int | None = None


@dataclass(frozen=True)
class ReportOptions:
    """How to show the data: thresholds from the configuration, labels from the catalog."""

    min_segment_size: int
    psi_moderate: float
    psi_retrain: float
    top_features: int
    value_label: str | None = None
    feature_meanings: Mapping[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# k metrics input


def normalise_k_metrics(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, float]]:
    """Validate per-k metric rows ``{"k": 2, "silhouette": 0.41, ...}``, sorted by k.

    Keys other than ``k`` and :data:`K_METRICS` are dropped; null or non-finite values are
    left out of the row. A missing or repeated k, or a non-numeric value, is a usage error.

    Example:
        >>> normalise_k_metrics([{"k": 3, "wssse": 9.5}, {"k": 2, "wssse": 20}])
        [{'k': 2.0, 'wssse': 20.0}, {'k': 3.0, 'wssse': 9.5}]
    """
    out: dict[int, dict[str, float]] = {}
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping):
            raise UsageError(f"k metrics row {number} is not a mapping: {row!r}")
        k = _integral(row.get("k"))
        if k is None:
            raise UsageError(f"k metrics row {number} has no integer k: {row.get('k')!r}")
        if k < 1:
            raise UsageError(f"k metrics row {number}: k must be >= 1, got {k}")
        if k in out:
            raise UsageError(f"k metrics: k={k} appears twice")
        clean: dict[str, float] = {"k": float(k)}
        for metric in K_METRICS:
            value = row.get(metric)
            if value is None or value == "":
                continue
            try:
                number_value = float(value)
            except (TypeError, ValueError):
                raise UsageError(
                    f"k metrics row {number}: {metric} is not a number: {value!r}"
                ) from None
            if math.isfinite(number_value):
                clean[metric] = number_value
        out[k] = clean
    return [out[k] for k in sorted(out)]


def _integral(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def k_metrics_from_histories(
    histories: Mapping[str, Iterable[tuple[int, float]]],
) -> list[dict[str, float]]:
    """Per-k rows from MLflow metric histories ``{metric: [(step=k, value), ...]}``.

    A metric logged twice at one step keeps the last value, as MLflow's UI does.

    Example:
        >>> k_metrics_from_histories({"silhouette": [(2, 0.4), (3, 0.5)], "wssse": [(2, 9.0)]})
        [{'k': 2.0, 'silhouette': 0.4, 'wssse': 9.0}, {'k': 3.0, 'silhouette': 0.5}]
    """
    rows: dict[int, dict[str, Any]] = {}
    for metric, points in histories.items():
        if metric not in K_METRICS:
            continue
        for step, value in points:
            rows.setdefault(int(step), {"k": int(step)})[metric] = value
    return normalise_k_metrics(rows[k] for k in sorted(rows))


# ---------------------------------------------------------------------------------------------
# Reading the lake


def _as_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_float(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def snapshot_dates(lake: Lake, domain: str) -> list[dt.date]:
    """The ``as_of`` dates of ``domain`` in ``segment_snapshots``, ascending.

    Example:
        >>> snapshot_dates(lake, "retail")
        [datetime.date(2024, 2, 29), datetime.date(2024, 3, 31)]
    """
    from pyspark.sql import functions as F

    rows = (
        lake.read("segment_snapshots")
        .where(F.col("domain") == F.lit(domain))
        .select("as_of")
        .distinct()
        .collect()
    )
    return sorted({_as_date(r["as_of"]) for r in rows if r["as_of"] is not None})


def collect_report_data(
    lake: Lake,
    *,
    domain: str,
    as_of: dt.date | None = None,
    max_periods: int = 12,
    feature_order: Sequence[str] = (),
    k_metrics: Iterable[Mapping[str, Any]] = (),
    chosen_k: int | None = None,
) -> ReportData:
    """Read the segment tables of ``domain`` at ``as_of`` (default: the latest snapshot).

    Sizes cover the last ``max_periods`` snapshot dates up to ``as_of``; migration and drift
    are read between the snapshot before ``as_of`` and ``as_of`` (None when the table is
    absent or there is no earlier snapshot). Features are ordered as ``feature_order``, then by
    name. Missing required tables raise :class:`~segspark.errors.TableNotFoundError`; no
    snapshot or profile for the domain raises :class:`~segspark.errors.UsageError`.

    Example:
        >>> data = collect_report_data(lake, domain="retail", as_of=date(2024, 3, 31))
        >>> [p.name for p in data.profiles]
        ['High-Value Loyal', 'Core', 'Small']
    """
    from pyspark.sql import functions as F

    if max_periods < 1:
        raise UsageError(f"max_periods must be >= 1, got {max_periods}")
    for table in REQUIRED_TABLES:
        lake.schema(table)  # raises TableNotFoundError with the lake root in one line
    dates = snapshot_dates(lake, domain)
    if not dates:
        raise UsageError(f"no segment snapshots for domain {domain!r} in segment_snapshots")
    if as_of is None:
        as_of = dates[-1]
    elif as_of not in dates:
        shown = ", ".join(str(d) for d in dates[-5:])
        raise UsageError(f"no segment snapshot for {domain} at {as_of} (latest snapshots: {shown})")
    earlier = [d for d in dates if d < as_of]
    previous = earlier[-1] if earlier else None
    periods = [*earlier, as_of][-max_periods:]
    is_domain = F.col("domain") == F.lit(domain)
    wanted = [*periods] + ([previous] if previous is not None and previous not in periods else [])

    profile_rows = (
        lake.read("segment_profiles")
        .where(is_domain & F.col("as_of").isin(*wanted))
        .select(
            "as_of",
            F.col("segment_id").cast("int").alias("segment_id"),
            "segment_name",
            F.col("customers").cast("long").alias("customers"),
            F.col("share").cast("double").alias("share"),
            F.col("value").cast("double").alias("value"),
            F.col("value_share").cast("double").alias("value_share"),
            F.col("withheld").cast("boolean").alias("withheld"),
        )
        .collect()
    )
    names: dict[int, str] = {}
    sizes: list[SizePoint] = []
    profiles: list[SegmentProfile] = []
    previous_withheld: set[int] = set()
    for r in sorted(profile_rows, key=lambda r: (_as_date(r["as_of"]), r["segment_id"])):
        sid = int(r["segment_id"])
        date = _as_date(r["as_of"])
        withheld = bool(r["withheld"])
        if date == previous and withheld:
            previous_withheld.add(sid)
        if date not in periods:
            continue
        if r["segment_name"]:
            names[sid] = str(r["segment_name"])
        customers = None if withheld else _optional_int(r["customers"])
        sizes.append(SizePoint(as_of=date, segment_id=sid, customers=customers))
        if date == as_of:
            profiles.append(
                SegmentProfile(
                    segment_id=sid,
                    name=str(r["segment_name"] or f"Segment {sid}"),
                    customers=customers,
                    share=None if withheld else _optional_float(r["share"]),
                    value=None if withheld else _optional_float(r["value"]),
                    value_share=None if withheld else _optional_float(r["value_share"]),
                    withheld=withheld,
                )
            )
    if not profiles:
        raise UsageError(f"no segment_profiles rows for {domain} at {as_of}")

    score_rows = (
        lake.read("segment_feature_profiles")
        .where(is_domain & (F.col("as_of") == F.lit(as_of)))
        .select(
            F.col("segment_id").cast("int").alias("segment_id"),
            F.col("feature").cast("string").alias("feature"),
            F.col("mean").cast("double").alias("mean"),
            F.col("z_score").cast("double").alias("z_score"),
        )
        .collect()
    )
    if not score_rows:
        raise UsageError(f"no segment_feature_profiles rows for {domain} at {as_of}")
    rank = {f: i for i, f in enumerate(feature_order)}
    scores = sorted(
        (
            FeatureScore(
                segment_id=int(r["segment_id"]),
                feature=str(r["feature"]),
                mean=_optional_float(r["mean"]),
                z_score=_optional_float(r["z_score"]),
            )
            for r in score_rows
        ),
        key=lambda s: (s.segment_id, rank.get(s.feature, len(rank)), s.feature),
    )

    flows: list[Flow] | None = None
    drift: list[DriftRow] | None = None
    if previous is not None and lake.exists("segment_migration_matrix"):
        between = (
            is_domain
            & (F.col("from_as_of") == F.lit(previous))
            & (F.col("to_as_of") == F.lit(as_of))
        )
        flows = [
            Flow(
                from_segment_id=_optional_int(r["from_segment_id"]),
                to_segment_id=_optional_int(r["to_segment_id"]),
                customers=int(r["customers"] or 0),
                share_of_from=_optional_float(r["share_of_from"]),
            )
            for r in lake.read("segment_migration_matrix")
            .where(between)
            .select(
                F.col("from_segment_id").cast("int").alias("from_segment_id"),
                F.col("to_segment_id").cast("int").alias("to_segment_id"),
                F.col("customers").cast("long").alias("customers"),
                F.col("share_of_from").cast("double").alias("share_of_from"),
            )
            .collect()
        ] or None
    if previous is not None and lake.exists("segment_drift"):
        between = (
            is_domain
            & (F.col("from_as_of") == F.lit(previous))
            & (F.col("to_as_of") == F.lit(as_of))
        )
        drift = [
            DriftRow(kind=str(r["kind"]), name=str(r["name"]), psi=_optional_float(r["psi"]))
            for r in lake.read("segment_drift")
            .where(between)
            .select(
                F.col("kind").cast("string").alias("kind"),
                F.col("name").cast("string").alias("name"),
                F.col("psi").cast("double").alias("psi"),
            )
            .collect()
        ] or None
    return ReportData(
        domain=domain,
        as_of=as_of,
        previous_as_of=previous,
        profiles=profiles,
        feature_scores=scores,
        sizes=sizes,
        names=names,
        previous_withheld=frozenset(previous_withheld),
        flows=flows,
        drift=drift,
        k_metrics=normalise_k_metrics(k_metrics),
        chosen_k=chosen_k,
    )


# ---------------------------------------------------------------------------------------------
# Formatting


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def format_count(n: int) -> str:
    """``1240`` -> ``'1,240'``."""
    return f"{n:,}"


def format_share(x: float) -> str:
    """``0.62`` -> ``'62.0%'``."""
    return f"{x:.1%}"


def format_value(v: float) -> str:
    """Whole units from 100 up (``'524,310'``), two decimals below (``'12.50'``)."""
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"


def format_z(z: float) -> str:
    """``1.234`` -> ``'+1.23'``."""
    return f"{z:+.2f}"


def feature_label(feature: str) -> str:
    """``'monetary_total'`` -> ``'monetary total'``."""
    return feature.replace("_", " ")


def _color(segment_id: int | None, *, lapsed: bool = False) -> str:
    if segment_id is None:
        return _LAPSED_COLOR if lapsed else _NEW_COLOR
    return _PALETTE[segment_id % len(_PALETTE)]


def heat_color(z: float) -> tuple[str, str]:
    """Fill and text colour of a heatmap cell: white at z 0, red above, blue below (|z| <= 3).

    Example:
        >>> heat_color(3.5)
        ('#b2182b', '#ffffff')
    """
    t = min(abs(z), _Z_CLAMP) / _Z_CLAMP
    end = _POSITIVE if z > 0 else _NEGATIVE
    r, g, b = (round(255 + (c - 255) * t) for c in end)
    return f"#{r:02x}{g:02x}{b:02x}", "#ffffff" if t > 0.55 else "#1f2937"


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exponent = 10.0 ** math.floor(math.log10(value))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * exponent >= value:
            return m * exponent
    return 10.0 * exponent


def _tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


# ---------------------------------------------------------------------------------------------
# Sections


def _segment_name(data: ReportData, segment_id: int) -> str:
    return data.names.get(segment_id, f"Segment {segment_id}")


def _cell(value: float | None, fmt: Any) -> str:
    return "n/a" if value is None else str(fmt(value))


def render_cards(data: ReportData, options: ReportOptions) -> str:
    """One card per segment at ``as_of``: sizes, value and the most distinctive features."""
    by_segment: dict[int, list[FeatureScore]] = {}
    for s in data.feature_scores:
        if s.z_score is not None:
            by_segment.setdefault(s.segment_id, []).append(s)
    value_label = f" ({_e(options.value_label)})" if options.value_label else ""
    cards = []
    for p in sorted(data.profiles, key=lambda p: p.segment_id):
        swatch = f'<span class="swatch" style="background:{_color(p.segment_id)}"></span>'
        head = f"<h3>{swatch}{_e(p.name)}</h3>"
        if p.withheld:
            cards.append(
                f'<article class="card withheld" data-segment="{p.segment_id}">{head}'
                f'<p class="withheld-note">withheld for privacy (fewer than '
                f"{options.min_segment_size} customers, or held back with such a segment so "
                f"that its size cannot be worked out)</p></article>"
            )
            continue

        facts = (
            ("Customers", _cell(p.customers, format_count)),
            ("Share of customers", _cell(p.share, format_share)),
            (f"Value{value_label}", _cell(p.value, format_value)),
            ("Share of value", _cell(p.value_share, format_share)),
        )
        rows = "".join(f"<dt>{label}</dt><dd>{text}</dd>" for label, text in facts)
        top = sorted(
            by_segment.get(p.segment_id, []),
            key=lambda s: (-abs(s.z_score or 0.0), s.feature),
        )[: options.top_features]
        items = []
        for s in top:
            z = s.z_score or 0.0
            direction = "above" if z > 0 else "below" if z < 0 else "at"
            meaning = options.feature_meanings.get(s.feature)
            title = f' title="{_e(meaning)}"' if meaning else ""
            mean = f", mean {format_value(s.mean)}" if s.mean is not None else ""
            items.append(
                f'<li><span class="feature"{title}>{_e(feature_label(s.feature))}</span> '
                f'<span class="z">z {format_z(z)}</span> '
                f'<span class="hint">({direction} average{mean})</span></li>'
            )
        features = (
            f'<h4>Stands out by</h4><ul class="top-features">{"".join(items)}</ul>' if items else ""
        )
        cards.append(
            f'<article class="card" data-segment="{p.segment_id}">{head}'
            f'<dl class="facts">{rows}</dl>{features}</article>'
        )
    intro = (
        "Each card is one segment at this snapshot: how many customers it holds, their share of "
        "all customers, the value they bring and the features in which they differ most from "
        "the average customer (z: distance from the average in standard deviations)."
    )
    return f'<p>{intro}</p><div class="cards">{"".join(cards)}</div>'


def render_sizes(data: ReportData) -> str:
    """Stacked bars: customers per segment at each snapshot date (withheld sizes not drawn)."""
    periods = sorted({p.as_of for p in data.sizes})
    if not periods:
        return _note("No segment sizes recorded.")
    stacks: dict[dt.date, list[SizePoint]] = {d: [] for d in periods}
    for point in sorted(data.sizes, key=lambda p: p.segment_id):
        stacks[point.as_of].append(point)
    totals = {d: sum(p.customers or 0 for p in stacks[d]) for d in periods}
    top = _nice_max(max(totals.values()))
    width, height = 900, 320
    left, right, top_pad, bottom = 80, 20, 16, 48
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    slot = plot_w / len(periods)
    bar_w = min(64.0, slot * 0.6)
    parts = []
    for i in range(5):
        tick = top * i / 4
        y = top_pad + plot_h - plot_h * tick / top
        parts.append(
            f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_tick(tick)}</text>"
        )
    for i, date in enumerate(periods):
        x = left + slot * i + (slot - bar_w) / 2
        base = float(top_pad + plot_h)
        for point in stacks[date]:
            if not point.customers:
                continue
            h = plot_h * point.customers / top
            base -= h
            name = _segment_name(data, point.segment_id)
            share = point.customers / totals[date]
            parts.append(
                f'<rect class="size-bar" data-segment="{point.segment_id}" x="{x:.1f}" '
                f'y="{base:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{_color(point.segment_id)}"><title>{_e(name)} at {date}: '
                f"{format_count(point.customers)} customers ({format_share(share)} of those "
                f"shown)</title></rect>"
            )
        parts.append(
            f'<text class="axis" x="{x + bar_w / 2:.1f}" y="{top_pad + plot_h + 18}" '
            f'text-anchor="middle">{date}</text>'
        )
    parts.append(
        f'<text class="axis" x="14" y="{top_pad + plot_h / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top_pad + plot_h / 2:.0f})">customers</text>'
    )
    svg = (
        f'<svg class="chart" id="sizes-chart" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="Customers per segment at each snapshot">'
        f"{''.join(parts)}</svg>"
    )
    seen = sorted({p.segment_id for p in data.sizes})
    legend = "".join(
        f'<li><span class="swatch" style="background:{_color(s)}"></span>'
        f"{_e(_segment_name(data, s))}</li>"
        for s in seen
    )
    withheld = any(p.customers is None for p in data.sizes)
    note = _note("Withheld segments are not drawn.") if withheld else ""
    return f'{svg}<ul class="legend">{legend}</ul>{note}'


def render_heatmap(data: ReportData, options: ReportOptions) -> str:
    """Segment x feature grid of z-scores at ``as_of`` (withheld segments left out)."""
    withheld = {p.segment_id for p in data.profiles if p.withheld}
    features: list[str] = []
    grid: dict[int, dict[str, float]] = {}
    for s in data.feature_scores:
        if s.feature not in features:
            features.append(s.feature)
        if s.segment_id in withheld or s.z_score is None:
            continue
        grid.setdefault(s.segment_id, {})[s.feature] = s.z_score
    segments = sorted(grid)
    if not segments or not features:
        return _note("No feature profile to show.")
    cell_w, cell_h, left, top_pad = 84, 34, 200, 120
    width = left + cell_w * len(features) + 20
    height = top_pad + cell_h * len(segments) + 10
    parts = []
    for j, feature in enumerate(features):
        x = left + cell_w * j + cell_w / 2
        meaning = options.feature_meanings.get(feature)
        tip = f"<title>{_e(feature)}: {_e(meaning)}</title>" if meaning else ""
        parts.append(
            f'<text class="axis col-label" x="{x:.1f}" y="{top_pad - 8}" '
            f'transform="rotate(-35 {x:.1f} {top_pad - 8})">{tip}'
            f"{_e(feature_label(feature))}</text>"
        )
    for i, sid in enumerate(segments):
        y = top_pad + cell_h * i
        parts.append(
            f'<text class="axis row-label" x="{left - 10}" y="{y + cell_h / 2 + 4:.1f}" '
            f'text-anchor="end">{_e(_segment_name(data, sid))}</text>'
        )
        for j, feature in enumerate(features):
            z = grid[sid].get(feature)
            if z is None:
                continue
            x = left + cell_w * j
            fill, ink = heat_color(z)
            parts.append(
                f'<rect class="heat-cell" data-segment="{sid}" x="{x}" y="{y}" '
                f'width="{cell_w - 2}" height="{cell_h - 2}" fill="{fill}">'
                f"<title>{_e(_segment_name(data, sid))}, {_e(feature_label(feature))}: "
                f"z {format_z(z)}</title></rect>"
                f'<text class="cell" x="{x + (cell_w - 2) / 2:.1f}" y="{y + cell_h / 2 + 3:.1f}" '
                f'text-anchor="middle" style="fill:{ink}">{format_z(z)}</text>'
            )
    svg = (
        f'<svg class="chart" id="heatmap-chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" '
        f'aria-label="z-score of each feature in each segment">{"".join(parts)}</svg>'
    )
    low, high = heat_color(-_Z_CLAMP)[0], heat_color(_Z_CLAMP)[0]
    scale = (
        f'<div class="scale"><span>-{_Z_CLAMP:.0f} (below average)</span>'
        f'<span class="bar" style="background:linear-gradient(90deg,{low},#ffffff,{high})">'
        f"</span><span>+{_Z_CLAMP:.0f} (above average)</span></div>"
    )
    intro = (
        "How each segment's average compares with all customers, feature by feature, in "
        "standard deviations: red is above the average customer, blue below."
    )
    note = _note("Withheld segments are left out.") if withheld else ""
    return f"<p>{intro}</p>{svg}{scale}{note}"


def _node_label(data: ReportData, segment_id: int | None, *, side: str) -> str:
    if segment_id is None:
        return "New customers" if side == "from" else "Lapsed"
    return _segment_name(data, segment_id)


def _order(sid: int | None) -> tuple[int, int]:
    return (1, 0) if sid is None else (0, sid)


def suppress_flows(
    flows: Sequence[Flow],
    min_segment_size: int,
    *,
    withheld_from: Iterable[int] = (),
    withheld_to: Iterable[int] = (),
) -> list[Flow]:
    """The flows a report may show (module docstring), in their input order.

    Left out: flows under ``min_segment_size`` customers, flows out of ``withheld_from`` or into
    ``withheld_to`` segments, and then, while some row (from-segment) or column (to-segment)
    has left-out flows summing to 1 .. min_segment_size - 1 customers, its smallest shown flow.

    Example:
        >>> flows = [Flow(0, 0, 500), Flow(0, 1, 40), Flow(0, None, 3)]
        >>> [f.to_segment_id for f in suppress_flows(flows, 10)]
        [0]
    """
    before, after = set(withheld_from), set(withheld_to)
    hidden = {
        i
        for i, f in enumerate(flows)
        if f.customers < min_segment_size
        or (f.from_segment_id is not None and f.from_segment_id in before)
        or (f.to_segment_id is not None and f.to_segment_id in after)
    }
    lines: dict[tuple[int, tuple[int, int]], list[int]] = {}
    for i, f in enumerate(flows):
        lines.setdefault((0, _order(f.from_segment_id)), []).append(i)
        lines.setdefault((1, _order(f.to_segment_id)), []).append(i)
    changed = True
    while changed:
        changed = False
        for line in sorted(lines):
            members = lines[line]
            left_out = sum(flows[i].customers for i in members if i in hidden)
            visible = [i for i in members if i not in hidden]
            if 0 < left_out < min_segment_size and visible:
                hidden.add(
                    min(
                        visible,
                        key=lambda i: (
                            flows[i].customers,
                            _order(flows[i].from_segment_id),
                            _order(flows[i].to_segment_id),
                        ),
                    )
                )
                changed = True
    return [f for i, f in enumerate(flows) if i not in hidden]


def render_migration(data: ReportData, options: ReportOptions) -> str:
    """Sankey of customers moving between the previous snapshot and ``as_of``, and its table."""
    if data.previous_as_of is None:
        return _note(f"{data.as_of} is the first snapshot: there is no migration to show yet.")
    if not data.flows:
        return _note(f"No migration recorded between {data.previous_as_of} and {data.as_of}.")
    shown = suppress_flows(
        data.flows,
        options.min_segment_size,
        withheld_from=data.previous_withheld,
        withheld_to={p.segment_id for p in data.profiles if p.withheld},
    )
    hidden = len(data.flows) - len(shown)
    hidden_note = (
        _note(
            f"{hidden} flow(s) are not shown: flows of fewer than {options.min_segment_size} "
            "customers, flows of withheld segments, and flows that would let those be worked "
            "out from the totals."
        )
        if hidden
        else ""
    )
    if not shown:
        return _note("Every flow is too small to show.") + hidden_note

    order = _order

    sides: dict[str, dict[int | None, int]] = {"from": {}, "to": {}}
    for f in shown:
        sides["from"][f.from_segment_id] = sides["from"].get(f.from_segment_id, 0) + f.customers
        sides["to"][f.to_segment_id] = sides["to"].get(f.to_segment_id, 0) + f.customers
    total = sum(f.customers for f in shown)
    gap, node_w, usable = 14.0, 16.0, 380.0
    count = max(len(sides["from"]), len(sides["to"]))
    scale = usable / total
    height = usable + gap * (count - 1) + 40
    width, x_from, x_to = 900.0, 240.0, 660.0 - node_w
    tops: dict[tuple[str, int | None], float] = {}
    parts = []
    for side, x in (("from", x_from), ("to", x_to)):
        y = 20.0
        for sid in sorted(sides[side], key=order):
            h = sides[side][sid] * scale
            tops[(side, sid)] = y
            label = _node_label(data, sid, side=side)
            color = _color(sid, lapsed=side == "to")
            anchor, tx = ("end", x - 8) if side == "from" else ("start", x + node_w + 8)
            parts.append(
                f'<rect class="sankey-node" x="{x:.1f}" y="{y:.1f}" width="{node_w}" '
                f'height="{max(h, 1.0):.1f}" fill="{color}"><title>{_e(label)}: '
                f"{format_count(sides[side][sid])} customers</title></rect>"
                f'<text class="axis node-label" x="{tx:.1f}" y="{y + h / 2 + 4:.1f}" '
                f'text-anchor="{anchor}">{_e(label)} ({format_count(sides[side][sid])})</text>'
            )
            y += h + gap
    out_offset: dict[int | None, float] = {}
    in_offset: dict[int | None, float] = {}
    by_source = sorted(shown, key=lambda f: (order(f.from_segment_id), order(f.to_segment_id)))
    in_order = sorted(shown, key=lambda f: (order(f.to_segment_id), order(f.from_segment_id)))
    starts: dict[int, float] = {}
    for f in in_order:
        done = in_offset.get(f.to_segment_id, 0.0)
        starts[id(f)] = tops[("to", f.to_segment_id)] + done
        in_offset[f.to_segment_id] = done + f.customers * scale
    x0, x1 = x_from + node_w, x_to
    mid = (x0 + x1) / 2
    for f in by_source:
        h = f.customers * scale
        done = out_offset.get(f.from_segment_id, 0.0)
        y0 = tops[("from", f.from_segment_id)] + done
        out_offset[f.from_segment_id] = done + h
        y1 = starts[id(f)]
        source = _node_label(data, f.from_segment_id, side="from")
        target = _node_label(data, f.to_segment_id, side="to")
        parts.append(
            f'<path class="flow" d="M{x0:.1f},{y0:.1f} C{mid:.1f},{y0:.1f} {mid:.1f},{y1:.1f} '
            f"{x1:.1f},{y1:.1f} L{x1:.1f},{y1 + h:.1f} C{mid:.1f},{y1 + h:.1f} "
            f'{mid:.1f},{y0 + h:.1f} {x0:.1f},{y0 + h:.1f} Z" '
            f'fill="{_color(f.from_segment_id)}" fill-opacity="0.45">'
            f"<title>{_e(source)} \u2192 {_e(target)}: {format_count(f.customers)} "
            f"customers</title></path>"
        )
    parts.append(
        f'<text class="axis" x="{x_from + node_w / 2:.1f}" y="12" text-anchor="middle">'
        f'{data.previous_as_of}</text><text class="axis" x="{x_to + node_w / 2:.1f}" y="12" '
        f'text-anchor="middle">{data.as_of}</text>'
    )
    svg = (
        f'<svg class="chart" id="sankey-chart" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'width="{width:.0f}" height="{height:.0f}" role="img" '
        f'aria-label="Customers moving between segments">{"".join(parts)}</svg>'
    )
    rows = "".join(
        f'<tr class="flow-row"><td>{_e(_node_label(data, f.from_segment_id, side="from"))}</td>'
        f"<td>{_e(_node_label(data, f.to_segment_id, side='to'))}</td>"
        f'<td class="num">{format_count(f.customers)}</td>'
        f'<td class="num">'
        f"{'' if f.share_of_from is None else format_share(f.share_of_from)}</td></tr>"
        for f in sorted(shown, key=lambda f: (-f.customers, order(f.from_segment_id)))
    )
    table = (
        "<table><thead><tr><th>From</th><th>To</th><th>Customers</th>"
        f"<th>Share of from-segment</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    intro = (
        f"Where the customers of {data.previous_as_of} are at {data.as_of}: each band is a "
        "group of customers moving from the segment on the left to the one on the right. "
        "New customers joined after the earlier snapshot; lapsed ones left the active base."
    )
    return f"<p>{_e(intro)}</p>{svg}{table}{hidden_note}"


def drift_flag(psi: float | None, options: ReportOptions) -> str:
    """``'significant'`` above ``psi_retrain``, ``'moderate'`` above ``psi_moderate``, else ``''``.

    Example:
        >>> drift_flag(0.3, ReportOptions(10, psi_moderate=0.1, psi_retrain=0.25, top_features=3))
        'significant'
    """
    if psi is None:
        return ""
    if psi > options.psi_retrain:
        return "significant"
    if psi > options.psi_moderate:
        return "moderate"
    return ""


def render_drift(data: ReportData, options: ReportOptions) -> str:
    """Population stability index (PSI) rows, largest first, flagged above the thresholds."""
    if data.previous_as_of is None:
        return _note(f"{data.as_of} is the first snapshot: there is no drift to measure yet.")
    if not data.drift:
        return _note(f"No drift recorded between {data.previous_as_of} and {data.as_of}.")
    labels = {
        "significant": "significant shift (retraining recommended)",
        "moderate": "moderate shift",
        "": "",
    }
    rows = []
    for d in sorted(data.drift, key=lambda d: (d.psi is None, -(d.psi or 0.0), d.kind, d.name)):
        flag = drift_flag(d.psi, options)
        psi = "n/a" if d.psi is None else f"{d.psi:.3f}"
        rows.append(
            f'<tr class="drift-row{f" flagged {flag}" if flag else ""}"><td>{_e(d.kind)}</td>'
            f'<td>{_e(d.name)}</td><td class="num">{psi}</td><td>{labels[flag]}</td></tr>'
        )
    significant = sum(1 for d in data.drift if drift_flag(d.psi, options) == "significant")
    moderate = sum(1 for d in data.drift if drift_flag(d.psi, options) == "moderate")
    intro = (
        f"Population stability index (PSI) between {data.previous_as_of} and {data.as_of}: "
        "how much segment shares (kind share) and feature distributions (kind feature) moved. "
        f"Above {options.psi_retrain:g} is a significant shift ({significant} of "
        f"{len(data.drift)}), above {options.psi_moderate:g} a moderate one ({moderate})."
    )
    return (
        f"<p>{intro}</p><table><thead><tr><th>Kind</th><th>Name</th><th>PSI</th>"
        f"<th>Flag</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _k_chart(metric: str, points: list[tuple[int, float]], chosen_k: int | None) -> str:
    width, height, left, right, top_pad, bottom = 280, 190, 56, 12, 28, 30
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    ks = [k for k, _ in points]
    values = [v for _, v in points]
    lo, hi = min(values), max(values)
    if hi == lo:
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    k_lo, k_hi = min(ks), max(ks)
    k_span = (k_hi - k_lo) or 1

    def px(k: int) -> float:
        return left + plot_w * ((k - k_lo) / k_span if k_hi != k_lo else 0.5)

    def py(v: float) -> float:
        return top_pad + plot_h - plot_h * (v - lo) / (hi - lo)

    parts = [
        f'<text class="chart-title" x="{width / 2:.0f}" y="16" text-anchor="middle">'
        f"{_e(K_METRICS[metric])}</text>",
        f'<line class="axis-line" x1="{left}" y1="{top_pad + plot_h}" x2="{width - right}" '
        f'y2="{top_pad + plot_h}"/>',
    ]
    for v in (lo, hi):
        parts.append(
            f'<text class="axis" x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end">'
            f"{_tick(v)}</text>"
        )
    for k in ks:
        parts.append(
            f'<text class="axis" x="{px(k):.1f}" y="{height - 10}" text-anchor="middle">{k}</text>'
        )
    if chosen_k is not None and k_lo <= chosen_k <= k_hi:
        parts.append(
            f'<line class="chosen" x1="{px(chosen_k):.1f}" y1="{top_pad}" '
            f'x2="{px(chosen_k):.1f}" y2="{top_pad + plot_h}"><title>chosen k = {chosen_k}'
            "</title></line>"
        )
    line = " ".join(f"{px(k):.1f},{py(v):.1f}" for k, v in points)
    parts.append(f'<polyline class="k-curve" points="{line}"/>')
    for k, v in points:
        parts.append(
            f'<circle class="k-point" cx="{px(k):.1f}" cy="{py(v):.1f}" r="3.5">'
            f"<title>k = {k}: {metric} {v:.4g}</title></circle>"
        )
    return (
        f'<svg class="chart k-chart" data-metric="{metric}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{_e(K_METRICS[metric])}">'
        f"{''.join(parts)}</svg>"
    )


def render_k_selection(data: ReportData) -> str:
    """One small curve per metric against k, and the values as a table."""
    rows = normalise_k_metrics(data.k_metrics)
    if not rows:
        return _note(
            "No k-selection metrics were given (pass the training run's per-k metrics to "
            "show them here)."
        )
    metrics = [m for m in K_METRICS if any(m in r for r in rows)]
    charts = "".join(
        _k_chart(m, [(int(r["k"]), r[m]) for r in rows if m in r], data.chosen_k) for m in metrics
    )
    head = "".join(f"<th>{_e(m)}</th>" for m in metrics)
    body = "".join(
        f"<tr{' class=chosen-k' if data.chosen_k == int(r['k']) else ''}>"
        f'<td class="num">{int(r["k"])}</td>'
        + "".join(f'<td class="num">{r[m]:.4g}</td>' if m in r else "<td></td>" for m in metrics)
        + "</tr>"
        for r in rows
    )
    chosen = f" The chosen k is {data.chosen_k} (dashed line)." if data.chosen_k else ""
    intro = (
        "How well the customers split into k segments, for each k tried. Good choices sit "
        f"where silhouette and stability are high and Davies-Bouldin is low.{chosen}"
    )
    return (
        f'<p>{intro}</p><div class="k-charts">{charts}</div>'
        f"<table><thead><tr><th>k</th>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


_CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
  color: #1f2937; background: #f9fafb; }
header, section { max-width: 1120px; margin: 0 auto; padding: 16px 24px; }
header { border-bottom: 1px solid #e5e7eb; background: #fff; max-width: none; }
h1 { font-size: 1.6rem; margin: 8px 0; }
h2 { font-size: 1.25rem; border-bottom: 2px solid #e5e7eb; padding-bottom: 4px; }
h3 { font-size: 1.05rem; margin: 0 0 8px; display: flex; align-items: center; gap: 8px; }
h4 { font-size: .85rem; margin: 10px 0 4px; color: #4b5563; }
.note { color: #6b7280; font-style: italic; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr));
  gap: 14px; }
.card { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 14px; }
.card.withheld { background: #f3f4f6; color: #6b7280; }
.facts { display: grid; grid-template-columns: auto auto; gap: 2px 12px; margin: 0; }
.facts dt { color: #6b7280; } .facts dd { margin: 0; text-align: right; font-weight: 600; }
.top-features { margin: 0; padding-left: 18px; } .top-features .hint { color: #6b7280; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 3px; }
.legend { list-style: none; display: flex; flex-wrap: wrap; gap: 14px; padding: 0; }
.legend li { display: flex; align-items: center; gap: 6px; }
.chart { background: #fff; border: 1px solid #e5e7eb; border-radius: 6px; max-width: 100%;
  height: auto; }
.chart text { font-size: 12px; fill: #374151; }
.chart .cell { font-size: 11px; } .chart-title { font-weight: 600; }
.grid { stroke: #e5e7eb; } .axis-line { stroke: #9ca3af; }
.k-curve { fill: none; stroke: #4e79a7; stroke-width: 2; } .k-point { fill: #4e79a7; }
.chosen { stroke: #e15759; stroke-dasharray: 4 3; stroke-width: 1.5; }
.k-charts { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 12px; }
.scale { display: flex; align-items: center; gap: 8px; font-size: .85rem; margin: 8px 0; }
.scale .bar { display: inline-block; width: 220px; height: 12px; border-radius: 3px; }
table { border-collapse: collapse; background: #fff; margin: 10px 0; }
th, td { border: 1px solid #e5e7eb; padding: 4px 10px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.significant { background: #fee2e2; font-weight: 600; }
tr.moderate { background: #fef3c7; } tr.chosen-k { background: #eef2ff; }
"""


def render_report(data: ReportData, options: ReportOptions) -> str:
    """The whole page as one HTML string (no external resources, no script).

    Example:
        >>> options = ReportOptions(10, psi_moderate=0.1, psi_retrain=0.25, top_features=3)
        >>> page = render_report(data, options)
        >>> page.startswith("<!DOCTYPE html>")
        True
    """
    if options.top_features < 0:
        raise UsageError(f"top_features must be >= 0, got {options.top_features}")
    bodies = {
        "segments": render_cards(data, options),
        "sizes": render_sizes(data),
        "heatmap": render_heatmap(data, options),
        "migration": render_migration(data, options),
        "drift": render_drift(data, options),
        "k-selection": render_k_selection(data),
    }
    sections = "".join(
        f'<section id="{key}"><h2>{SECTION_TITLES[key]}</h2>{bodies[key]}</section>'
        for key in SECTION_TITLES
    )
    title = f"Customer segments: {data.domain}, {data.as_of}"
    withheld = sum(1 for p in data.profiles if p.withheld)
    summary = f"{len(data.profiles)} segments" + (
        f", {withheld} withheld for privacy (segments need at least "
        f"{options.min_segment_size} customers)"
        if withheld
        else ""
    )
    previous = f"; compared with {data.previous_as_of}" if data.previous_as_of else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><p>Snapshot of {data.as_of}{previous}. {summary}.</p>"
        f"</header>{sections}</body></html>\n"
    )
