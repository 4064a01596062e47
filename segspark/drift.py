"""Drift between consecutive snapshots: the population stability index (``segment_drift``).

PSI compares an earlier ("expected") distribution ``e`` with a later ("actual") one ``a`` over
the same bins::

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

with ``a_i``, ``e_i`` the proportions in bin ``i``; an empty bin's proportion is replaced by
``epsilon`` (``snapshots.psi_epsilon``), since ``ln 0`` is undefined. The customary reading —
below 0.10 little change, 0.10 to 0.25 a moderate shift, above 0.25 a significant shift that
calls for action — is the rule of thumb of credit-scorecard monitoring (N. Siddiqi, *Credit Risk
Scorecards*, Wiley, 2006; B. Yurdakul, *Statistical Properties of Population Stability Index*,
PhD dissertation, Western Michigan University, 2018, which also shows the thresholds carry no
fixed error rate: they depend on sample size and the number of bins).

Two kinds of rows are written, both between ``from_as_of`` (expected) and ``to_as_of``:

* ``share``: the distribution of customers over ``segment_id`` (``name = "segment_id"``);
* ``feature``: each numeric feature, binned at the earlier frame's quantiles
  (``percentile_approx``; ``snapshots.psi_bins`` bins), plus one bin for missing values (null or
  NaN). Only bin edges and per-bin counts reach the driver.

Example:
    >>> drift = segment_drift(snapshots, snapshots, features, features, ["recency_days"],
    ...                       domain="retail", from_as_of=d1, to_as_of=d2,
    ...                       settings=settings.snapshots)
    >>> retrain_recommended(drift, settings.snapshots.psi_retrain)
    False
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DateType, DoubleType, NumericType, StringType, StructField, StructType

from segspark.config import SnapshotsSettings
from segspark.errors import InputError, UsageError
from segspark.lake import Lake, PartitionValue, WriteResult
from segspark.snapshots import MIGRATION_PARTITIONS, DateLike, as_date

DRIFT_TABLE = "segment_drift"
SHARE_NAME = "segment_id"

DRIFT_SCHEMA = StructType(
    [
        StructField("domain", StringType(), False),
        StructField("from_as_of", DateType(), False),
        StructField("to_as_of", DateType(), False),
        StructField("kind", StringType(), False),
        StructField("name", StringType(), False),
        StructField("psi", DoubleType(), False),
    ]
)


def psi(expected: Sequence[float], actual: Sequence[float], *, epsilon: float) -> float:
    """The population stability index of two binned distributions (counts or proportions).

    Each side is normalized to proportions; an empty bin counts as ``epsilon``.

    Example:
        >>> round(psi([50, 50], [25, 75], epsilon=1e-4), 6)  # 0.25 * ln 3
        0.274653
    """
    if len(expected) != len(actual) or not expected:
        raise UsageError(
            f"expected and actual need the same, non-zero number of bins "
            f"({len(expected)} vs {len(actual)})"
        )
    if not 0 < epsilon < 1:
        raise UsageError(f"epsilon must lie in (0, 1), got {epsilon}")
    values = [float(v) for v in (*expected, *actual)]
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise UsageError("bin counts must be finite and non-negative")
    e_total, a_total = float(sum(expected)), float(sum(actual))
    if e_total == 0 or a_total == 0:
        raise InputError("a distribution without any observation has no PSI")
    total = 0.0
    for e_count, a_count in zip(expected, actual, strict=True):
        e = float(e_count) / e_total if e_count else epsilon
        a = float(a_count) / a_total if a_count else epsilon
        total += (a - e) * math.log(a / e)
    return total


def _counts_by_segment(snapshot: DataFrame) -> dict[int | None, int]:
    rows = snapshot.groupBy("segment_id").count().collect()
    return {None if r[0] is None else int(r[0]): int(r[1]) for r in rows}


def share_psi(from_snapshot: DataFrame, to_snapshot: DataFrame, *, epsilon: float) -> float:
    """PSI of the customers' distribution over ``segment_id`` (k-sized counts collected).

    A segment present on one side only is an empty bin on the other.

    Example:
        >>> share_psi(read_snapshot(lake, domain="retail", as_of=d1),
        ...           read_snapshot(lake, domain="retail", as_of=d2), epsilon=1e-4)
        0.0123
    """
    for frame, what in ((from_snapshot, "the from snapshot"), (to_snapshot, "the to snapshot")):
        if "segment_id" not in frame.columns:
            raise InputError(f"{what} lacks column segment_id")
    before, after = _counts_by_segment(from_snapshot), _counts_by_segment(to_snapshot)
    keys = sorted(set(before) | set(after), key=lambda k: (k is None, k or 0))
    return psi([before.get(k, 0) for k in keys], [after.get(k, 0) for k in keys], epsilon=epsilon)


def _numeric(frame: DataFrame, features: Sequence[str], what: str) -> None:
    types = {f.name: f.dataType for f in frame.schema.fields}
    missing = [f for f in features if f not in types]
    if missing:
        raise InputError(f"{what} lacks feature column(s) {', '.join(missing)}")
    wrong = [f for f in features if not isinstance(types[f], NumericType)]
    if wrong:
        raise InputError(f"{what}: feature column(s) {', '.join(wrong)} are not numeric")


def _present(name: str) -> Column:
    x = F.col(f"`{name}`").cast("double")
    return F.when(x.isNotNull() & ~F.isnan(x), x)


def bin_edges(
    frame: DataFrame, features: Sequence[str], *, bins: int, accuracy: int
) -> dict[str, list[float]]:
    """Per feature, the distinct inner quantile edges ``q(1/bins) .. q((bins-1)/bins)``.

    One aggregation over ``frame`` (``percentile_approx``); nulls and NaN are ignored. Ties
    collapse edges, so a feature may get fewer bins (a constant one gets two).

    Example:
        >>> bin_edges(spark.createDataFrame([(float(v),) for v in range(1, 5)], "x double"),
        ...           ["x"], bins=2, accuracy=10000)
        {'x': [2.0]}
    """
    if bins < 2:
        raise UsageError(f"bins must be at least 2, got {bins}")
    if accuracy < 1:
        raise UsageError(f"accuracy must be at least 1, got {accuracy}")
    _numeric(frame, features, "the expected frame")
    if not features:
        return {}
    levels = [i / bins for i in range(1, bins)]
    row = frame.agg(
        *[
            F.percentile_approx(_present(f), levels, accuracy).alias(f"_q{i}")
            for i, f in enumerate(features)
        ]
    ).first()
    edges: dict[str, list[float]] = {}
    for i, f in enumerate(features):
        found = row[i] if row is not None else None
        edges[f] = sorted({float(v) for v in found if v is not None}) if found else []
    return edges


def _bin(name: str, edges: Sequence[float]) -> Column:
    """Bin ``0..len(edges)`` for values (``x <= edge`` closes a bin), ``len(edges) + 1`` for
    missing values."""
    x = _present(name)
    expr = F.when(x.isNull(), F.lit(len(edges) + 1))
    for i, edge in enumerate(edges):
        expr = expr.when(x <= F.lit(edge), F.lit(i))
    return expr.otherwise(F.lit(len(edges)))


def bin_counts(frame: DataFrame, edges: Mapping[str, Sequence[float]]) -> dict[str, list[int]]:
    """Per feature, the rows in each bin of ``edges`` plus the missing bin, in one pass.

    Example:
        >>> bin_counts(spark.createDataFrame([(1.0,), (3.0,), (None,)], "x double"),
        ...            {"x": [2.0]})
        {'x': [1, 1, 1]}
    """
    _numeric(frame, list(edges), "the frame")
    if not edges:
        return {}
    columns = []
    for f, cuts in edges.items():
        binned = _bin(f, cuts)
        columns += [F.count(F.when(binned == i, 1)) for i in range(len(cuts) + 2)]
    row = frame.agg(*columns).first()
    values = [int(v) for v in row] if row is not None else [0] * len(columns)
    out: dict[str, list[int]] = {}
    start = 0
    for f, cuts in edges.items():
        out[f] = values[start : start + len(cuts) + 2]
        start += len(cuts) + 2
    return out


def feature_psi(
    expected: DataFrame,
    actual: DataFrame,
    features: Sequence[str],
    *,
    bins: int,
    epsilon: float,
    accuracy: int,
) -> dict[str, float]:
    """PSI of each numeric feature, binned at ``expected``'s quantiles (plus a missing bin).

    Example:
        >>> feature_psi(features_jan, features_feb, ["recency_days"], bins=10, epsilon=1e-4,
        ...             accuracy=10000)
        {'recency_days': 0.031}
    """
    _numeric(actual, features, "the actual frame")
    edges = bin_edges(expected, features, bins=bins, accuracy=accuracy)
    before, after = bin_counts(expected, edges), bin_counts(actual, edges)
    return {f: psi(before[f], after[f], epsilon=epsilon) for f in features}


def drift_frame(
    spark: SparkSession,
    *,
    domain: str,
    from_as_of: DateLike,
    to_as_of: DateLike,
    share: float | None,
    features: Mapping[str, float],
) -> DataFrame:
    """``segment_drift`` rows: one ``share`` row (when given) and one ``feature`` row each.

    Example:
        >>> drift_frame(spark, domain="retail", from_as_of=d1, to_as_of=d2, share=0.02,
        ...             features={"recency_days": 0.3}).count()
        2
    """
    start, end = as_date(from_as_of, "from_as_of"), as_date(to_as_of, "to_as_of")
    rows: list[tuple[str, dt.date, dt.date, str, str, float]] = []
    if share is not None:
        rows.append((domain, start, end, "share", SHARE_NAME, float(share)))
    rows += [(domain, start, end, "feature", f, float(v)) for f, v in features.items()]
    return spark.createDataFrame(rows, DRIFT_SCHEMA)


def segment_drift(
    from_snapshot: DataFrame,
    to_snapshot: DataFrame,
    from_features: DataFrame,
    to_features: DataFrame,
    features: Sequence[str],
    *,
    domain: str,
    from_as_of: DateLike,
    to_as_of: DateLike,
    settings: SnapshotsSettings,
) -> DataFrame:
    """Share and feature PSI between two dates, as ``segment_drift`` rows.

    Snapshot frames are narrowed to (domain, as_of) and feature frames to their as_of when they
    have an ``as_of`` column, so whole tables can be passed.

    Example:
        >>> segment_drift(snapshots, snapshots, feats, feats, ["recency_days"], domain="retail",
        ...               from_as_of=d1, to_as_of=d2, settings=settings.snapshots).show()
    """
    start, end = as_date(from_as_of, "from_as_of"), as_date(to_as_of, "to_as_of")
    if start >= end:
        raise UsageError(f"from_as_of ({start}) must be before to_as_of ({end})")

    def at(frame: DataFrame, day: dt.date, *, snapshot: bool) -> DataFrame:
        if snapshot and "domain" in frame.columns:
            frame = frame.where(F.col("domain") == domain)
        if "as_of" in frame.columns:
            frame = frame.where(F.col("as_of") == F.lit(day))
        return frame

    share = share_psi(
        at(from_snapshot, start, snapshot=True),
        at(to_snapshot, end, snapshot=True),
        epsilon=settings.psi_epsilon,
    )
    per_feature = feature_psi(
        at(from_features, start, snapshot=False),
        at(to_features, end, snapshot=False),
        features,
        bins=settings.psi_bins,
        epsilon=settings.psi_epsilon,
        accuracy=settings.quantile_accuracy,
    )
    return drift_frame(
        from_snapshot.sparkSession,
        domain=domain,
        from_as_of=start,
        to_as_of=end,
        share=share,
        features=per_feature,
    )


def retrain_recommended(
    drift_rows: DataFrame | Iterable[Mapping[str, Any]], threshold: float
) -> bool:
    """Whether any drift row's PSI exceeds ``threshold`` (``snapshots.psi_retrain``).

    "Exceeds" is strict, as in the rule of thumb (PSI > 0.25: significant shift).

    Example:
        >>> retrain_recommended([{"kind": "share", "name": "segment_id", "psi": 0.3}], 0.25)
        True
    """
    if not math.isfinite(threshold) or threshold < 0:
        raise UsageError(f"threshold must be a finite number >= 0, got {threshold}")
    if isinstance(drift_rows, DataFrame):
        if "psi" not in drift_rows.columns:
            raise InputError("the drift rows lack column psi")
        return drift_rows.where(F.col("psi") > F.lit(threshold)).limit(1).count() > 0
    return any(row.get("psi") is not None and float(row["psi"]) > threshold for row in drift_rows)


def write_drift(
    lake: Lake, frame: DataFrame, *, domain: str, from_as_of: DateLike, to_as_of: DateLike
) -> WriteResult:
    """Replace the (domain, from_as_of, to_as_of) partition of ``segment_drift`` in one commit.

    Example:
        >>> write_drift(lake, drift, domain="retail", from_as_of=d1, to_as_of=d2).version
        0
    """
    replace: dict[str, PartitionValue] = {
        "domain": domain,
        "from_as_of": as_date(from_as_of, "from_as_of"),
        "to_as_of": as_date(to_as_of, "to_as_of"),
    }
    return lake.write(
        DRIFT_TABLE,
        frame.select(*DRIFT_SCHEMA.names),
        mode="overwrite",
        partition_by=MIGRATION_PARTITIONS,
        replace=replace,
    )


__all__ = [
    "DRIFT_SCHEMA",
    "DRIFT_TABLE",
    "bin_counts",
    "bin_edges",
    "drift_frame",
    "feature_psi",
    "psi",
    "retrain_recommended",
    "segment_drift",
    "share_psi",
    "write_drift",
]
