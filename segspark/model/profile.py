"""Segment profiles (sizes, value, feature means and z-scores) and automatic segment names.

One Spark aggregation (a ``rollup`` over the segment) gives every segment's and the
population's sufficient statistics; only those k + 1 rows reach the driver, where the two
profile tables, the names and any noise are computed.

* ``segment_profiles`` (DESIGN.md table contract): segment_id, segment_name, customers, share,
  value, value_share, withheld. ``share`` and ``value_share`` are fractions of *all* customers
  and of the total value.
* ``segment_feature_profiles``: segment_id, feature, mean (raw units, nulls ignored), z_score =
  (segment mean - population mean) / population sample standard deviation (0 for a constant
  feature).

Withholding (``privacy.min_segment_size`` = N, :func:`withheld_segments`): a segment with fewer
than N customers is ``withheld``: its aggregates (customers, share, value, value_share, means,
z-scores) are null, though it still counts in the totals. Because shares are fractions of all
customers (and MLflow records the population's size and feature means), the withheld segments
together could be recovered as "total minus the published segments"; so when the withheld
segments hold between 1 and N - 1 customers together, the smallest other segment (lowest
segment_id on a tie) is withheld as well (complementary suppression). Whatever can be derived
from the published numbers is then an aggregate of at least N customers.

Differential privacy (``privacy.epsilon``, see :mod:`segspark.privacy`): with epsilon set, the
published numbers come from Laplace-noised statistics. Every feature f (and the value column) is
first clipped to its ``privacy.clip`` bounds [lo_f, hi_f]; with neighbouring data sets differing
by one customer (added or removed), the statistics and their sensitivities are:

==========================  ==============  =======================================
statistic                   per             sensitivity
==========================  ==============  =======================================
customers                   segment         1
value (clipped sum)         segment         max(|lo|, |hi|) of the value column
count of non-null f         segment         1
sum of clipped f            segment         max(|lo_f|, |hi_f|)
sum of squared clipped f    population      max(lo_f^2, hi_f^2)
==========================  ==============  =======================================

A statistic computed per segment touches each customer once (parallel composition), so the
release holds m = 1 + [value column] + 3 x features statistics, and each gets epsilon / m
(sequential composition): Laplace scale b = sensitivity x m / epsilon. Everything published is
post-processing of those noisy values: customers = round(max(count, 0)), share = count / sum of
counts, value_share likewise, mean = noisy sum / noisy count clamped to [lo, hi], z-score from the
noisy population mean and variance, and the names from those z-scores. The noise of each
(release, statistic, segment) is seeded from ``model.seed`` and the release (domain, as_of), so
a re-run publishes the same numbers and different releases independent noise; epsilon is per
release, and releases of the same customers at several dates compose. The guarantee covers the
profile given the segment assignment (the model is not trained privately), and the withholding
decision uses the exact counts, so which segments are withheld is not protected by epsilon.

Names (:func:`name_segments`) are deterministic: for each segment the features with a
vocabulary entry and ``|z| >= naming.min_abs_z`` are ranked by ``|z|`` (then by feature name);
the ``high``/``low`` words of the strongest ``naming.max_terms`` of them (each word once) make the
name, ``naming.neutral`` when none qualifies, ``naming.withheld`` for segments with fewer than N
customers. Equal names get roman numerals in segment_id order ("Core I", "Core II"). A name
holds only vocabulary words and numerals, never anything from the data; a segment withheld only
as the complement keeps the name of its own z-scores (it has at least N customers).

Example:
    >>> profiles = profile_segments(scored, settings.model, privacy=settings.privacy,
    ...                             release=("retail", "2024-06-30"))
    >>> profiles.names
    {0: 'High-Value Loyal', 1: 'Lapsing Low-Value', 2: 'Core'}
    >>> profiles.profiles.show()
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    BooleanType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from segspark.config import ModelSettings, NamingSettings, PrivacySettings
from segspark.errors import InputError, UsageError
from segspark.privacy import clip_sensitivity, laplace_noise, laplace_scale, split_epsilon

FEATURE_PROFILE_SCHEMA = StructType(
    [
        StructField("segment_id", IntegerType(), False),
        StructField("feature", StringType(), False),
        StructField("mean", DoubleType(), True),
        StructField("z_score", DoubleType(), True),
    ]
)
"""Columns of ``segment_feature_profiles`` (``domain`` and ``as_of`` are added by the writer)."""

PROFILE_SCHEMA = StructType(
    [
        StructField("segment_id", IntegerType(), False),
        StructField("segment_name", StringType(), True),
        StructField("customers", LongType(), True),
        StructField("share", DoubleType(), True),
        StructField("value", DoubleType(), True),
        StructField("value_share", DoubleType(), True),
        StructField("withheld", BooleanType(), False),
    ]
)
"""Columns of ``segment_profiles`` (``domain`` and ``as_of`` are added by the writer)."""

PROFILE_COLUMNS = tuple(PROFILE_SCHEMA.fieldNames())

_ROMAN = (
    (1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
    (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"),
)  # fmt: skip


@dataclass(frozen=True)
class SegmentProfiles:
    """The two profile frames and the names, as :func:`profile_segments` returns them.

    ``withheld`` holds the segment ids whose aggregates are withheld (small and complement).
    """

    profiles: DataFrame
    feature_profiles: DataFrame
    names: dict[int, str]
    withheld: frozenset[int] = frozenset()


@dataclass(frozen=True)
class SegmentStats:
    """Exact sufficient statistics of one segment (or of the population), per feature in order.

    ``clipped_*`` are filled only when clipping bounds were given (differential privacy).
    """

    customers: int
    value: float | None
    count: tuple[int, ...]
    mean: tuple[float | None, ...]
    sd: tuple[float | None, ...]
    clipped_value: float | None = None
    clipped_sum: tuple[float, ...] = ()
    clipped_sumsq: tuple[float, ...] = ()


@dataclass(frozen=True)
class ProfileValues:
    """The numbers a profile publishes before withholding: exact (:func:`exact_values`) or
    noisy (:func:`noisy_values`). ``mean`` and ``z`` are keyed by (segment, feature index)."""

    customers: dict[int, float]
    value: dict[int, float | None]
    mean: dict[tuple[int, int], float | None]
    z: dict[tuple[int, int], float | None]


def roman(number: int) -> str:
    """``number`` (>= 1) in roman numerals.

    Example:
        >>> roman(14)
        'XIV'
    """
    if number < 1:
        raise UsageError(f"roman numerals start at 1, got {number}")
    out = []
    for value, letters in _ROMAN:
        count, number = divmod(number, value)
        out.append(letters * count)
    return "".join(out)


def _check_columns(df: DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"columns missing from the scored frame: {', '.join(missing)}")


def withheld_segments(customers: Mapping[int, int], min_segment_size: int) -> frozenset[int]:
    """The segments whose aggregates are withheld: those under ``min_segment_size`` customers,
    plus the smallest other one when the small ones hold 1 .. min_segment_size - 1 together.

    Example:
        >>> sorted(withheld_segments({0: 500, 1: 3, 2: 40}, 10))
        [1, 2]
        >>> sorted(withheld_segments({0: 500, 1: 3, 2: 8, 3: 40}, 10))
        [1, 2]
    """
    small = {s for s, n in customers.items() if n < min_segment_size}
    hidden = sum(customers[s] for s in small)
    others = sorted((n, s) for s, n in customers.items() if s not in small)
    if 0 < hidden < min_segment_size and others:
        small.add(others[0][1])
    return frozenset(small)


def _clipped(column: Column, bounds: tuple[float, float]) -> Column:
    lo, hi = bounds
    return F.least(F.greatest(column, F.lit(float(lo))), F.lit(float(hi)))


def segment_statistics(
    scored: DataFrame,
    features: Sequence[str],
    value_col: str | None,
    *,
    clip: Mapping[str, tuple[float, float]] | None = None,
    segment_col: str = "segment_id",
) -> tuple[dict[int, SegmentStats], SegmentStats]:
    """Each segment's and the population's statistics, in one Spark ``rollup`` (k + 1 rows).

    ``clip`` (feature: bounds) adds the clipped sums the noisy profile needs; it must cover
    every feature and ``value_col``. Rows with a null segment are left out.

    Example:
        >>> segments, population = segment_statistics(scored, ["recency_days"], None)
        >>> segments[0].customers, population.mean
        (120, (41.5,))
    """
    _check_columns(scored, [segment_col, *features] + ([value_col] if value_col else []))
    if clip is not None:
        needed = [*features] + ([value_col] if value_col else [])
        missing = [f for f in needed if f not in clip]
        if missing:
            raise UsageError(f"privacy.clip has no bounds for: {', '.join(missing)}")
    value = F.col(f"`{value_col}`").cast("double") if value_col else F.lit(None).cast("double")
    aggs: list[Column] = [F.count(F.lit(1)).alias("_n"), F.sum(value).alias("_v")]
    if clip is not None and value_col:
        aggs.append(F.sum(_clipped(value, clip[value_col])).alias("_cv"))
    for i, f in enumerate(features):
        x = F.col(f"`{f}`").cast("double")
        aggs += [
            F.count(x).alias(f"_c{i}"),
            F.avg(x).alias(f"_m{i}"),
            F.stddev_samp(x).alias(f"_s{i}"),
        ]
        if clip is not None:
            clipped = _clipped(x, clip[f])
            aggs += [
                F.coalesce(F.sum(clipped), F.lit(0.0)).alias(f"_cs{i}"),
                F.coalesce(F.sum(clipped * clipped), F.lit(0.0)).alias(f"_cq{i}"),
            ]
    rows = (
        scored.where(F.col(segment_col).isNotNull())
        .withColumn("_sid", F.col(segment_col).cast("int"))
        .rollup("_sid")
        .agg(F.grouping("_sid").alias("_g"), *aggs)
        .collect()
    )
    n = range(len(features))

    def stats(row: Any) -> SegmentStats:
        def opt(name: str) -> float | None:
            return None if row[name] is None else float(row[name])

        return SegmentStats(
            customers=int(row["_n"]),
            value=opt("_v"),
            count=tuple(int(row[f"_c{i}"]) for i in n),
            mean=tuple(opt(f"_m{i}") for i in n),
            sd=tuple(opt(f"_s{i}") for i in n),
            clipped_value=opt("_cv") if clip is not None and value_col else None,
            clipped_sum=tuple(float(row[f"_cs{i}"]) for i in n) if clip is not None else (),
            clipped_sumsq=tuple(float(row[f"_cq{i}"]) for i in n) if clip is not None else (),
        )

    segments = {int(r["_sid"]): stats(r) for r in rows if r["_g"] == 0}
    population = [stats(r) for r in rows if r["_g"] == 1]
    empty = SegmentStats(
        0, None, (0,) * len(features), (None,) * len(features), (None,) * len(features)
    )
    return segments, population[0] if population else empty


def _z(mean: float | None, pop_mean: float | None, pop_sd: float | None) -> float | None:
    if mean is None:
        return None
    if pop_mean is None or pop_sd is None or not pop_sd > 0:
        return 0.0
    return (mean - pop_mean) / pop_sd


def exact_values(
    segments: Mapping[int, SegmentStats], population: SegmentStats, features: Sequence[str]
) -> ProfileValues:
    """The exact sizes, values, means and z-scores of :func:`segment_statistics`' output."""
    mean: dict[tuple[int, int], float | None] = {}
    z: dict[tuple[int, int], float | None] = {}
    for s, st in segments.items():
        for i in range(len(features)):
            mean[(s, i)] = st.mean[i]
            z[(s, i)] = _z(st.mean[i], population.mean[i], population.sd[i])
    return ProfileValues(
        customers={s: float(st.customers) for s, st in segments.items()},
        value={s: st.value for s, st in segments.items()},
        mean=mean,
        z=z,
    )


def release_statistics(features: Sequence[str], value_col: str | None) -> list[str]:
    """The statistics a noisy profile release publishes, in order (module docstring): m of them.

    Example:
        >>> release_statistics(["recency_days"], "monetary_total")
        ['customers', 'value', 'count:recency_days', 'sum:recency_days', 'sumsq:recency_days']
    """
    names = ["customers"] + (["value"] if value_col else [])
    for f in features:
        names += [f"count:{f}", f"sum:{f}", f"sumsq:{f}"]
    return names


def noise_scales(
    features: Sequence[str],
    value_col: str | None,
    *,
    epsilon: float,
    clip: Mapping[str, tuple[float, float]],
) -> dict[str, float]:
    """Laplace scale of each statistic of :func:`release_statistics` (epsilon split evenly).

    Example:
        >>> noise_scales(["recency_days"], None, epsilon=1.0, clip={"recency_days": (0, 365)})
        {'customers': 4.0, 'count:recency_days': 4.0, 'sum:recency_days': 1460.0,
         'sumsq:recency_days': 532900.0}
    """
    names = release_statistics(features, value_col)
    each = split_epsilon(epsilon, len(names))
    scales: dict[str, float] = {}
    for name in names:
        kind, _, feature = name.partition(":")
        if kind in ("customers", "count"):
            sensitivity = 1.0
        elif kind == "value":
            assert value_col is not None
            sensitivity = clip_sensitivity(clip[value_col])
        else:
            sensitivity = clip_sensitivity(clip[feature], squared=kind == "sumsq")
        scales[name] = laplace_scale(sensitivity, epsilon=each)
    return scales


def noisy_values(
    segments: Mapping[int, SegmentStats],
    features: Sequence[str],
    value_col: str | None,
    *,
    epsilon: float,
    clip: Mapping[str, tuple[float, float]],
    seed: int,
    release: Sequence[object],
) -> ProfileValues:
    """The noisy release of the module docstring (every segment; withholding comes later).

    Example:
        >>> values = noisy_values(segments, ["recency_days"], None, epsilon=1.0,
        ...                       clip={"recency_days": (0, 365)}, seed=42, release=("retail",))
    """
    if any(len(st.clipped_sum) != len(features) for st in segments.values()):
        raise UsageError("noisy profiles need statistics computed with clip bounds")
    scales = noise_scales(features, value_col, epsilon=epsilon, clip=clip)

    def noisy(true: float, statistic: str, segment: int | str) -> float:
        noise = laplace_noise(scales[statistic], seed=seed, key=(*release, statistic, segment))
        return true + noise

    ids = sorted(segments)
    counts = {s: max(noisy(segments[s].customers, "customers", s), 0.0) for s in ids}
    values: dict[int, float | None] = {
        s: noisy(segments[s].clipped_value or 0.0, "value", s) if value_col else None for s in ids
    }
    mean: dict[tuple[int, int], float | None] = {}
    z: dict[tuple[int, int], float | None] = {}
    for i, f in enumerate(features):
        lo, hi = clip[f]
        n = {s: max(noisy(segments[s].count[i], f"count:{f}", s), 0.0) for s in ids}
        total = {s: noisy(segments[s].clipped_sum[i], f"sum:{f}", s) for s in ids}
        squares = sum(segments[s].clipped_sumsq[i] for s in ids)
        pop_sq = noisy(squares, f"sumsq:{f}", "all")
        pop_n = sum(n.values())
        pop_mean = min(max(sum(total.values()) / pop_n, lo), hi) if pop_n > 0 else None
        pop_sd = None
        if pop_mean is not None and pop_n > 1:
            pop_sd = math.sqrt(max((pop_sq - pop_n * pop_mean**2) / (pop_n - 1), 0.0))
        for s in ids:
            m = min(max(total[s] / n[s], lo), hi) if n[s] >= 1 else None
            mean[(s, i)] = m
            z[(s, i)] = _z(m, pop_mean, pop_sd)
    return ProfileValues(customers=counts, value=values, mean=mean, z=z)


def _feature_rows(
    published: ProfileValues, features: Sequence[str], withheld: frozenset[int]
) -> list[tuple[int, str, float | None, float | None]]:
    rows = []
    for s in sorted({s for s, _ in published.mean}):
        for i, f in enumerate(features):
            hide = s in withheld
            rows.append(
                (
                    s,
                    f,
                    None if hide else published.mean[(s, i)],
                    None if hide else published.z[(s, i)],
                )
            )
    return rows


def _profile_rows(
    published: ProfileValues,
    names: Mapping[int, str],
    withheld: frozenset[int],
    *,
    rounded: bool,
) -> list[tuple[Any, ...]]:
    total_n = sum(published.customers.values())
    values = [v for v in published.value.values() if v is not None]
    total_v = sum(values) if values else None
    rows: list[tuple[Any, ...]] = []
    for s in sorted(published.customers):
        n = published.customers[s]
        v = published.value[s]
        if s in withheld:
            rows.append((s, names.get(s), None, None, None, None, True))
            continue
        rows.append(
            (
                s,
                names.get(s),
                round(n) if rounded else int(n),
                n / total_n if total_n > 0 else None,
                v,
                v / total_v if v is not None and total_v else None,
                False,
            )
        )
    return rows


def _frame(spark: SparkSession, rows: list[tuple[Any, ...]], schema: StructType) -> DataFrame:
    return spark.createDataFrame(rows, schema)


def segment_feature_profiles(
    scored: DataFrame,
    features: Sequence[str],
    *,
    min_segment_size: int,
    segment_col: str = "segment_id",
) -> DataFrame:
    """Long-format exact feature profile: one row per (segment, feature), see the module docstring.

    Withheld segments (:func:`withheld_segments`) have null mean and z_score.

    Example:
        >>> segment_feature_profiles(scored, ["recency_days"], min_segment_size=10).show()
        +----------+------------+-----+-------+
        |segment_id|     feature| mean|z_score|
        +----------+------------+-----+-------+
        |         0|recency_days| 12.5|  -0.91|
    """
    if not features:
        raise UsageError("no features to profile")
    segments, population = segment_statistics(scored, features, None, segment_col=segment_col)
    withheld = withheld_segments({s: st.customers for s, st in segments.items()}, min_segment_size)
    rows = _feature_rows(exact_values(segments, population, features), features, withheld)
    return _frame(scored.sparkSession, rows, FEATURE_PROFILE_SCHEMA)


def name_segments(
    z_scores: Mapping[int, Mapping[str, float | None]], naming: NamingSettings
) -> dict[int, str]:
    """Deterministic, unique names from each segment's z-scores (module docstring).

    A segment whose z-scores are all null (withheld) is named ``naming.withheld``.

    Example:
        >>> name_segments({0: {"monetary_total": 1.8, "frequency": 1.1},
        ...                1: {"monetary_total": -0.2, "frequency": 0.1}}, naming)
        {0: 'High-Value Loyal', 1: 'Core'}
    """
    base: dict[int, str] = {}
    for segment in sorted(z_scores):
        zs = z_scores[segment]
        known = {f: z for f, z in zs.items() if z is not None}
        if not known:
            base[segment] = naming.withheld
            continue
        ranked = sorted(
            (
                (f, z)
                for f, z in known.items()
                if f in naming.vocabulary and z != 0 and abs(z) >= naming.min_abs_z
            ),
            key=lambda item: (-abs(item[1]), item[0]),
        )
        words: list[str] = []
        for f, z in ranked:
            entry = naming.vocabulary[f]
            word = entry.high if z > 0 else entry.low
            if word is not None and word not in words:
                words.append(word)
            if len(words) == naming.max_terms:
                break
        base[segment] = " ".join(words) if words else naming.neutral
    counts = Counter(base.values())
    taken = {name for name, count in counts.items() if count == 1}
    names: dict[int, str] = {}
    for segment, name in base.items():
        if counts[name] == 1:
            names[segment] = name
            continue
        number = 1
        while f"{name} {roman(number)}" in taken:
            number += 1
        names[segment] = f"{name} {roman(number)}"
        taken.add(names[segment])
    return names


def segment_profiles(
    scored: DataFrame,
    value_col: str | None,
    *,
    names: Mapping[int, str],
    min_segment_size: int,
    segment_col: str = "segment_id",
) -> DataFrame:
    """One exact row per segment: size, share, value and value share; small segments withheld.

    ``value`` is the sum of ``value_col`` over the segment (null when ``value_col`` is None);
    ``segment_name`` comes from ``names`` (null for a segment missing from it).

    Example:
        >>> segment_profiles(scored, "monetary_total", names=names, min_segment_size=10).show()
        +----------+------------+---------+-----+--------+-----------+--------+
        |segment_id|segment_name|customers|share|   value|value_share|withheld|
    """
    segments, population = segment_statistics(scored, [], value_col, segment_col=segment_col)
    withheld = withheld_segments({s: st.customers for s, st in segments.items()}, min_segment_size)
    rows = _profile_rows(exact_values(segments, population, []), names, withheld, rounded=False)
    return _frame(scored.sparkSession, rows, PROFILE_SCHEMA)


def profile_segments(
    scored: DataFrame,
    settings: ModelSettings,
    *,
    privacy: PrivacySettings,
    features: Sequence[str] | None = None,
    value_col: str | None = None,
    segment_col: str = "segment_id",
    release: Sequence[object] = (),
) -> SegmentProfiles:
    """Feature profiles, names and segment profiles of a scored frame, from one Spark pass.

    ``features`` defaults to ``settings.profiled`` (the model's features, then
    ``model.profile_features``) and ``value_col`` to
    ``settings.value_column``. ``privacy`` gives ``min_segment_size`` and, when ``epsilon`` is
    set, the noise (module docstring); ``release`` (e.g. ``(domain, as_of)``) keys the noise so
    that each release draws its own. Both frames are small (k and k x features rows), built on
    the driver from the collected statistics.

    Example:
        >>> result = profile_segments(model.transform(features_df), settings.model,
        ...                           privacy=settings.privacy, release=("retail", "2024-06-30"))
        >>> sorted(result.names.values())
        ['High-Value Loyal', 'Lapsing', 'Occasional Low-Value']
    """
    features = list(settings.profiled if features is None else features)
    if not features:
        raise UsageError("no features to profile")
    missing = [f for f in features if f not in scored.columns]
    if missing:
        raise InputError(f"profiled features not in the features table: {', '.join(missing)}")
    value_col = settings.value_column if value_col is None else value_col
    dp = privacy.epsilon is not None
    segments, population = segment_statistics(
        scored,
        features,
        value_col,
        clip=privacy.clip if dp else None,
        segment_col=segment_col,
    )
    customers = {s: st.customers for s, st in segments.items()}
    withheld = withheld_segments(customers, privacy.min_segment_size)
    if privacy.epsilon is not None:
        published = noisy_values(
            segments,
            features,
            value_col,
            epsilon=privacy.epsilon,
            clip=privacy.clip,
            seed=settings.seed,
            release=release,
        )
    else:
        published = exact_values(segments, population, features)
    small = {s for s, n in customers.items() if n < privacy.min_segment_size}
    z_scores = {
        s: {f: None if s in small else published.z[(s, i)] for i, f in enumerate(features)}
        for s in sorted(segments)
    }
    names = name_segments(z_scores, settings.naming)
    spark = scored.sparkSession
    return SegmentProfiles(
        profiles=_frame(
            spark, _profile_rows(published, names, withheld, rounded=dp), PROFILE_SCHEMA
        ),
        feature_profiles=_frame(
            spark, _feature_rows(published, features, withheld), FEATURE_PROFILE_SCHEMA
        ),
        names=names,
        withheld=withheld,
    )
