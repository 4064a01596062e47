"""Segment profiles (sizes, value, feature means and z-scores) and automatic segment names.

Both profile tables are computed in Spark with one aggregation each; only k rows, or k times
the number of features, ever reach the driver.

* ``segment_profiles`` (DESIGN.md table contract): segment_id, segment_name, customers, share,
  value, value_share, withheld. ``share`` and ``value_share`` are fractions of *all* customers
  and of the total value; a segment with fewer than ``model.min_segment_size`` customers is
  ``withheld``: its aggregates are null (privacy), though it still counts in the totals.
* ``segment_feature_profiles``: segment_id, feature, mean (raw units, nulls ignored), z_score =
  (segment mean - population mean) / population sample standard deviation (0 for a constant
  feature); withheld segments have null mean and z_score.

Names (:func:`name_segments`) are deterministic: for each segment the features with a
vocabulary entry and ``|z| >= naming.min_abs_z`` are ranked by ``|z|`` (then by feature name);
the ``high``/``low`` words of the strongest ``naming.max_terms`` of them (each word once) make the
name, ``naming.neutral`` when none qualifies, ``naming.withheld`` for withheld segments. Equal
names get roman numerals in segment_id order ("Core I", "Core II"). A name holds only
vocabulary words and numerals, never anything from the data.

Example:
    >>> profiles = profile_segments(scored, settings.model)
    >>> profiles.names
    {0: 'High-Value Loyal', 1: 'Lapsing Low-Value', 2: 'Core'}
    >>> profiles.profiles.show()
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, IntegerType, StringType, StructField, StructType

from segspark.config import ModelSettings, NamingSettings
from segspark.errors import InputError, UsageError

FEATURE_PROFILE_SCHEMA = StructType(
    [
        StructField("segment_id", IntegerType(), False),
        StructField("feature", StringType(), False),
        StructField("mean", DoubleType(), True),
        StructField("z_score", DoubleType(), True),
    ]
)
"""Columns of ``segment_feature_profiles`` (``domain`` and ``as_of`` are added by the writer)."""

PROFILE_COLUMNS = (
    "segment_id",
    "segment_name",
    "customers",
    "share",
    "value",
    "value_share",
    "withheld",
)
"""Columns of ``segment_profiles`` (``domain`` and ``as_of`` are added by the writer)."""

_ROMAN = (
    (1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
    (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"),
)  # fmt: skip


@dataclass(frozen=True)
class SegmentProfiles:
    """The two profile frames and the names, as :func:`profile_segments` returns them."""

    profiles: DataFrame
    feature_profiles: DataFrame
    names: dict[int, str]


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


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def segment_feature_profiles(
    scored: DataFrame,
    features: Sequence[str],
    *,
    min_segment_size: int,
    segment_col: str = "segment_id",
) -> DataFrame:
    """Long-format feature profile: one row per (segment, feature), see the module docstring.

    One ``rollup`` gives the segment rows and the population row together; a window over the
    k + 1 aggregated rows attaches the population to each segment and ``stack`` unpivots.

    Example:
        >>> segment_feature_profiles(scored, ["recency_days"], min_segment_size=10).show()
        +----------+------------+-----+-------+
        |segment_id|     feature| mean|z_score|
        +----------+------------+-----+-------+
        |         0|recency_days| 12.5|  -0.91|
    """
    if not features:
        raise UsageError("no features to profile")
    _check_columns(scored, [segment_col, *features])
    aggs: list[Column] = [F.count(F.lit(1)).alias("_n")]
    for i, f in enumerate(features):
        value = F.col(f"`{f}`").cast("double")
        aggs += [F.avg(value).alias(f"_m{i}"), F.stddev_samp(value).alias(f"_s{i}")]
    grouped = (
        scored.where(F.col(segment_col).isNotNull())
        .withColumn("_sid", F.col(segment_col).cast("int"))
        .rollup("_sid")
        .agg(F.grouping("_sid").alias("_g"), *aggs)
    )
    everything = Window.partitionBy(F.lit(0))
    withheld = F.col("_n") < min_segment_size
    columns: list[Column] = [F.col("_sid").alias("segment_id")]
    for i in range(len(features)):
        pop_mean = F.max(F.when(F.col("_g") == 1, F.col(f"_m{i}"))).over(everything)
        pop_sd = F.max(F.when(F.col("_g") == 1, F.col(f"_s{i}"))).over(everything)
        z = F.when(pop_sd > 0, (F.col(f"_m{i}") - pop_mean) / pop_sd).otherwise(F.lit(0.0))
        z = F.when(F.col(f"_m{i}").isNull(), F.lit(None)).otherwise(z)
        columns += [
            F.when(withheld, F.lit(None)).otherwise(F.col(f"_m{i}")).alias(f"_mm{i}"),
            F.when(withheld, F.lit(None)).otherwise(z).alias(f"_z{i}"),
        ]
    stack = ", ".join(f"{_sql_string(f)}, _mm{i}, _z{i}" for i, f in enumerate(features))
    return (
        grouped.select(F.col("_g"), F.col("_n"), *columns)
        .where(F.col("_g") == 0)
        .select(
            F.col("segment_id"),
            F.expr(f"stack({len(features)}, {stack}) AS (feature, mean, z_score)"),
        )
        .select(
            F.col("segment_id").cast("int"),
            F.col("feature").cast("string"),
            F.col("mean").cast("double"),
            F.col("z_score").cast("double"),
        )
    )


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
    """One row per segment: size, share, value and value share; small segments withheld.

    ``value`` is the sum of ``value_col`` over the segment (null when ``value_col`` is None);
    ``segment_name`` comes from ``names`` (null for a segment missing from it).

    Example:
        >>> segment_profiles(scored, "monetary_total", names=names, min_segment_size=10).show()
        +----------+------------+---------+-----+--------+-----------+--------+
        |segment_id|segment_name|customers|share|   value|value_share|withheld|
    """
    _check_columns(scored, [segment_col] + ([value_col] if value_col else []))
    value = F.col(f"`{value_col}`").cast("double") if value_col else F.lit(None).cast("double")
    grouped = (
        scored.where(F.col(segment_col).isNotNull())
        .groupBy(F.col(segment_col).cast("int").alias("segment_id"))
        .agg(F.count(F.lit(1)).alias("_n"), F.sum(value).alias("_v"))
    )
    everything = Window.partitionBy(F.lit(0))
    withheld = F.col("_n") < min_segment_size
    if names:
        pairs = [c for sid, name in sorted(names.items()) for c in (F.lit(sid), F.lit(name))]
        name_col = F.create_map(*pairs)[F.col("segment_id")]
    else:
        name_col = F.lit(None).cast("string")

    def hide(column: Column) -> Column:
        return F.when(withheld, F.lit(None)).otherwise(column)

    return grouped.select(
        F.col("segment_id"),
        name_col.cast("string").alias("segment_name"),
        hide(F.col("_n")).cast("long").alias("customers"),
        hide(F.col("_n") / F.sum("_n").over(everything)).cast("double").alias("share"),
        hide(F.col("_v")).cast("double").alias("value"),
        hide(F.col("_v") / F.sum("_v").over(everything)).cast("double").alias("value_share"),
        withheld.alias("withheld"),
    ).orderBy("segment_id")


def profile_segments(
    scored: DataFrame,
    settings: ModelSettings,
    *,
    features: Sequence[str] | None = None,
    value_col: str | None = None,
    segment_col: str = "segment_id",
) -> SegmentProfiles:
    """Feature profiles, names and segment profiles of a scored frame, in two Spark passes.

    ``features`` defaults to ``settings.features`` and ``value_col`` to
    ``settings.value_column``. The feature profile (k x features rows) is collected once to
    name the segments and handed back as a small DataFrame built from those rows.

    Example:
        >>> result = profile_segments(model.transform(features_df), settings.model)
        >>> sorted(result.names.values())
        ['High-Value Loyal', 'Lapsing', 'Occasional Low-Value']
    """
    features = list(settings.features if features is None else features)
    value_col = settings.value_column if value_col is None else value_col
    rows = segment_feature_profiles(
        scored, features, min_segment_size=settings.min_segment_size, segment_col=segment_col
    ).collect()
    z_scores: dict[int, dict[str, float | None]] = {}
    for row in rows:
        z_scores.setdefault(int(row["segment_id"]), {})[row["feature"]] = row["z_score"]
    names = name_segments(z_scores, settings.naming)
    feature_profiles = scored.sparkSession.createDataFrame(
        sorted(
            ((r["segment_id"], r["feature"], r["mean"], r["z_score"]) for r in rows),
            key=lambda r: (r[0], features.index(r[1])),
        ),
        FEATURE_PROFILE_SCHEMA,
    )
    profiles = segment_profiles(
        scored,
        value_col,
        names=names,
        min_segment_size=settings.min_segment_size,
        segment_col=segment_col,
    )
    return SegmentProfiles(profiles=profiles, feature_profiles=feature_profiles, names=names)
