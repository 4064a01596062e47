"""Retail features: value and purchase behaviour per customer, from ``transactions``.

A purchase day (a purchase occasion) is a customer's day with at least one transaction;
every feature derives from the purchase days, found in one pass over the events sorted by
customer and day, so no exact distinct count over raw events is needed. The RFM
scores rank customers against the whole population at ``as_of``. CLV columns
(:mod:`segspark.clv`) are joined by the features step, not here.
"""

from __future__ import annotations

from datetime import date

from pyspark.sql import Column, DataFrame, Window, WindowSpec
from pyspark.sql import functions as F

from segspark.config import FeaturesSettings
from segspark.errors import UsageError
from segspark.features._common import (
    ATTRIBUTES,
    check_as_of,
    in_window,
    require_columns,
    symmetric_change,
    window_start,
    with_customers,
)
from segspark.features.catalog import conform
from segspark.session import sort_aggregation

_COLUMNS = ("customer_id", "event_time", "amount", "quantity")

#: Columns the CLV models add to the retail features (segspark.clv.score_clv).
CLV_COLUMNS = ("expected_purchases", "p_alive", "expected_spend", "clv")


def retail_features(
    transactions: DataFrame,
    *,
    as_of: date,
    settings: FeaturesSettings,
    customers: DataFrame | None = None,
    clv: DataFrame | None = None,
) -> DataFrame:
    """One row per customer with a transaction up to ``as_of``: recency, frequency, monetary...

    ``settings.retail.window_days`` (null: all history) bounds the transactions considered;
    ``customers`` adds the demographic attributes; ``clv`` (customer_id plus the columns of
    :data:`CLV_COLUMNS`, from :func:`segspark.clv.score_clv`) adds the CLV estimates, which are
    null without it. The columns and their meaning are those of ``features("retail")`` in
    :mod:`segspark.features.catalog`.

    Example:
        >>> features = retail_features(
        ...     transactions, as_of=date(2024, 3, 31), settings=load_settings().features
        ... )
        >>> features.columns[:5]
        ['customer_id', 'as_of', 'recency_days', 'frequency', 'transaction_count']
    """
    aggregates = customer_aggregates(transactions, as_of=as_of, settings=settings)
    return features_from_aggregates(
        aggregates, as_of=as_of, settings=settings, customers=customers, clv=clv
    )


def customer_aggregates(
    transactions: DataFrame, *, as_of: date, settings: FeaturesSettings
) -> DataFrame:
    """One row per customer: the aggregates of the purchase days every retail feature derives from.

    Columns: ``customer_id``, ``first_day``, ``last_day``, ``frequency`` (purchase days),
    ``first_amount`` (the first purchase day's total), ``transaction_count``,
    ``monetary_total``, ``quantity``, ``quantity_known``, ``ipi_mean_days``, ``gaps``,
    ``gap_std``, ``recent`` and ``earlier`` (spend in the two trend windows), over the
    transactions of ``settings.retail.window_days`` up to ``as_of``.

    One pass over the events: they are hash-partitioned by customer and sorted by (customer,
    day) for one window, which gives each event the day of the customer's event before it and
    the customer's first day. An event whose day differs from the one before starts a purchase
    day, and that difference is the gap between two purchase days; so every column is a plain
    per-customer aggregate of the events, with neither an exact distinct count nor a
    per-day aggregation in between (the same values; in a fresh session, 17.7 to 18.9 s instead
    of 21.1 s at 3*10^7 events with one row per customer-day first, and 54.1 to 55.1 s instead
    of 51.7 to 59.1 s, median 58.2, at 10^8).

    The rows are kept by a local checkpoint (the executors' block stores: memory, then disk;
    freed when the frame is no longer referenced), so the features, their RFM rankings (each
    a second look at every customer) and, with all history, the CLV summary
    (:func:`segspark.clv.summary_from_purchases`) read the events once. Read from the plan,
    every one of them would scan and aggregate the events again (column pruning gives each
    branch its own plan, so no shuffle is reused).

    Example:
        >>> customer_aggregates(transactions, as_of=date(2024, 3, 31), settings=settings).count()
    """
    check_as_of(as_of)
    require_columns(transactions, _COLUMNS, "transactions")
    cfg = settings.retail
    start = None if cfg.window_days is None else window_start(as_of, cfg.window_days)
    recent_start = F.lit(window_start(as_of, cfg.trend_days))
    earlier_start = F.lit(window_start(as_of, 2 * cfg.trend_days))

    events = _events_by_customer(transactions, start=start, as_of=as_of)
    day, amount = F.col("day"), F.col("amount")
    by_day = Window.partitionBy("customer_id").orderBy(day)
    everything = by_day.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    events = events.select(
        "*",
        F.datediff(day, F.lag(day).over(by_day)).alias("_since"),  # null for the first event
        F.min(day).over(everything).alias("_first_day"),
    )
    since = F.col("_since")
    gap = F.when(since > 0, since)  # null unless the event starts a later purchase day
    # Grouped on the customer and a hash of it, which makes the same groups: the rows arrive
    # sorted by customer, and grouped on the customer alone Spark swaps its code-generated hash
    # aggregation for the sort-based one (spark.sql.execution.replaceHashWithSortAgg), which
    # runs without generated code when there are grouping keys and behind the window was the
    # slower of the two (measured when the window still ran over one row per customer-day: at
    # 3*10^7 events the aggregates took 21.5 to 25.2 s in a fresh session instead of 26.8 to
    # 28.5 s, and 13.9 s warm instead of 15.1 s; the whole features step at 10^8 took 96.3,
    # 82.0 and 91.7 s against 99.4, 94.9 and 97.3 s).
    per_customer = (
        events.groupBy("customer_id", F.xxhash64("customer_id").alias("_customer_hash"))
        .agg(
            F.min(day).alias("first_day"),
            F.max(day).alias("last_day"),
            F.count(F.when(since.isNull() | (since > 0), 1)).alias("frequency"),
            F.sum(F.when(day == F.col("_first_day"), amount)).alias("first_amount"),
            F.count(F.lit(1)).alias("transaction_count"),
            F.sum(amount).alias("monetary_total"),
            F.sum("quantity").alias("quantity"),
            F.count("quantity").alias("quantity_known"),
            F.avg(gap).alias("ipi_mean_days"),
            F.count(gap).alias("gaps"),
            F.stddev_samp(gap).alias("gap_std"),
            F.sum(F.when(day >= recent_start, amount).otherwise(0.0)).alias("recent"),
            F.sum(
                F.when((day >= earlier_start) & (day < recent_start), amount).otherwise(0.0)
            ).alias("earlier"),
        )
        .drop("_customer_hash")
    )
    # Read back in as many partitions as the default parallelism (each task reads several of
    # the aggregation's blocks): the features, their rankings and the CLV fits make about ten
    # passes over these rows, and a pass over 32 partitions of small blocks was mostly task
    # overhead. At 10^8 events (900,000 customers) the features after the aggregation took
    # 8.6 s instead of 10.8 s, the CLV fits 3.9 s instead of 4.4 s.
    slots = transactions.sparkSession.sparkContext.defaultParallelism
    return per_customer.localCheckpoint(eager=True).coalesce(slots)


def clv_purchases(aggregates: DataFrame) -> DataFrame:
    """:func:`customer_aggregates` in the columns of :func:`segspark.clv.summary_from_purchases`
    (valid as the CLV summary's input only when the aggregates cover all history).

    Example:
        >>> summary_from_purchases(clv_purchases(aggregates), calibration_end=as_of)
    """
    return aggregates.select(
        "customer_id",
        F.col("first_day").alias("first_purchase"),
        F.col("last_day").alias("last_purchase"),
        F.col("frequency").alias("purchase_days"),
        F.col("monetary_total").alias("total_amount"),
        "first_amount",
    )


def features_from_aggregates(
    aggregates: DataFrame,
    *,
    as_of: date,
    settings: FeaturesSettings,
    customers: DataFrame | None = None,
    clv: DataFrame | None = None,
) -> DataFrame:
    """The retail features from :func:`customer_aggregates` (same ``as_of`` and settings).

    Example:
        >>> aggregates = customer_aggregates(transactions, as_of=as_of, settings=settings)
        >>> features_from_aggregates(aggregates, as_of=as_of, settings=settings).count()
    """
    check_as_of(as_of)
    cfg = settings.retail
    total = F.col("monetary_total")
    values = aggregates.select(
        "customer_id",
        F.datediff(F.lit(as_of), "last_day").alias("recency_days"),
        "frequency",
        "transaction_count",
        "monetary_total",
        (total / F.col("frequency")).alias("monetary_per_day"),
        (total / F.col("transaction_count")).alias("monetary_per_transaction"),
        F.datediff(F.lit(as_of), "first_day").alias("tenure_days"),
        (
            F.col("frequency")
            * 30.0
            / F.greatest(F.datediff(F.lit(as_of), "first_day"), F.lit(cfg.rate_min_days))
        ).alias("purchase_rate"),
        F.try_divide(F.col("quantity"), F.col("quantity_known")).alias("basket_size"),
        "ipi_mean_days",
        F.when(F.col("gaps") >= 2, F.col("gap_std")).alias("ipi_std_days"),
        symmetric_change(F.col("recent"), F.col("earlier")).alias("purchase_trend"),
    )
    scored = rfm_scores(values, levels=cfg.rfm_scores)
    if clv is None:
        scored = scored.select("*", *(F.lit(None).cast("double").alias(c) for c in CLV_COLUMNS))
    else:
        scored = scored.join(clv.select("customer_id", *CLV_COLUMNS), "customer_id", "left")
    out = with_customers(scored, customers, domain="retail", columns=ATTRIBUTES)
    return conform(out.withColumn("as_of", F.lit(as_of)), "retail")


def customer_days(transactions: DataFrame, *, start: date | None, as_of: date) -> DataFrame:
    """One row per customer and purchase day in ``start .. as_of`` (``start`` None: all history).

    Columns: ``customer_id``, ``day``, ``amount`` (the day's total), ``transactions``,
    ``quantity`` (sum of the known quantities) and ``quantity_known`` (how many were known).

    For per-customer statistics of the day totals (the benchmark's fixed aggregates; the retail
    features need no per-day rows, see :func:`customer_aggregates`). The events are shuffled
    once: they are hash-partitioned by ``customer_id`` alone, which satisfies the per-day
    aggregation and a later per-customer one (keyed on both, the per-day rows would be shuffled
    again: as many rows as events when customers seldom buy twice a day). Within a partition
    the events are sorted by (customer_id, day) when the session streams sorted aggregations
    (:func:`segspark.session.sort_aggregation`, on in segspark's sessions): the per-day
    aggregation then streams (almost every event is its own customer-day, so a hash map only
    grows, twice: partial and final). Both together: 10^7 events aggregated in 3.7 s instead
    of 8.0 s on 2 cores (``bench/w1_features.py``).

    Example:
        >>> customer_days(transactions, start=None, as_of=date(2024, 3, 31)).columns
        ['customer_id', 'day', 'amount', 'transactions', 'quantity', 'quantity_known']
    """
    require_columns(transactions, _COLUMNS, "transactions")
    events = _events_by_customer(transactions, start=start, as_of=as_of)
    if sort_aggregation(transactions.sparkSession):
        events = events.sortWithinPartitions("customer_id", "day")
    return events.groupBy("customer_id", "day").agg(
        F.sum("amount").alias("amount"),
        F.count(F.lit(1)).alias("transactions"),
        F.sum("quantity").alias("quantity"),
        F.count("quantity").alias("quantity_known"),
    )


def _events_by_customer(transactions: DataFrame, *, start: date | None, as_of: date) -> DataFrame:
    """The events in ``start .. as_of`` as (customer_id, day, amount, quantity), hash-partitioned
    by ``customer_id`` alone: every per-customer step after it needs no other shuffle."""
    return (
        transactions.where(in_window(F.col("event_time"), start, as_of))
        .select("customer_id", F.to_date("event_time").alias("day"), "amount", "quantity")
        .repartition("customer_id")
    )


def rfm_scores(frame: DataFrame, *, levels: int, key: str = "customer_id") -> DataFrame:
    """Add ``r_score``, ``f_score`` and ``m_score`` (1..``levels``) ranking every row of ``frame``.

    Each score is ``1 + floor(levels * percent_rank)`` capped at ``levels``, where
    ``percent_rank`` is the share of the other customers ranked strictly below (``recency_days``
    descending, so the most recent customer ranks highest; ``frequency`` and
    ``monetary_total`` ascending). Equal values share the lowest rank, hence one score: the
    result depends only on the values, never on row order.

    ``frame`` has one row per ``key``. The scores are computed on the key and the three values
    alone and joined back on the key, so the other columns move only with that join, which a
    following join on the same key (the CLV columns, the customers) shares.

    Example:
        >>> rfm_scores(values, levels=5).columns[-3:]
        ['r_score', 'f_score', 'm_score']
    """
    if levels < 2:
        raise UsageError(f"levels must be >= 2, got {levels}")
    keyed = frame.select(key, "recency_days", "frequency", "monetary_total")
    scores = keyed
    # recency and frequency take at most one value per day of history: a small table, ranked
    # by one window and broadcast; monetary_total takes about one value per customer, so its
    # rows are ranked in parallel, by value range
    for column, score, descending in (
        ("recency_days", "r_score", True),
        ("frequency", "f_score", False),
    ):
        table = _score_table(keyed, column, score, levels=levels, descending=descending)
        scores = scores.join(F.broadcast(table), on=column, how="left")
    scores = _scored_by_ranges(scores, "monetary_total", "m_score", levels=levels, descending=False)
    return frame.join(scores.select(key, "r_score", "f_score", "m_score"), on=key, how="left")


def _score_table(
    frame: DataFrame, column: str, score: str, *, levels: int, descending: bool
) -> DataFrame:
    """``column``'s distinct values with their ``score`` (:func:`rfm_scores`), from one
    single-partition window over the values' counts (for a column with few distinct values)."""
    # Ranking the distinct values weighted by their counts equals percent_rank over the rows.
    counts = frame.groupBy(column).agg(F.count(F.lit(1)).alias("_n"))
    order = Window.orderBy(F.col(column).desc() if descending else F.col(column).asc())
    ranked = counts.select(
        column,
        _sum_before("_n", order).alias("_below"),
        _sum_all("_n", order).alias("_everyone"),
    )
    return ranked.select(column, _score(levels).alias(score))


def _score(levels: int) -> Column:
    """The score of a row from ``_below`` (rows ranked strictly before) and ``_everyone``."""
    below, everyone = F.col("_below"), F.col("_everyone")
    bucket = _floor_div(below * levels, F.greatest(everyone - 1, F.lit(1)))
    return F.least(bucket + 1, F.lit(levels)).cast("int")


# Ranges per unit of log1p(|value|): about 30 ranges over money totals from 0 to 10^6.
_RANGES_PER_LOG = 2.0
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


def _scored_by_ranges(
    frame: DataFrame, column: str, score: str, *, levels: int, descending: bool
) -> DataFrame:
    """``frame`` with ``score`` (:func:`rfm_scores`) for a double ``column`` of many values.

    The values are cut into ranges by a monotone function of the value (log scale, so money
    amounts spread over many ranges). Each range's rows are ranked by their own window task
    (``rank() - 1`` counts the rows strictly before, ties sharing the lowest), and the sizes of
    the ranges before it (one row per range, a tiny single-partition window, broadcast) give
    its offset. The result equals one window over all the rows, in Spark's order (nulls first
    ascending, last descending; NaN above every number; -0.0 equal to 0.0), while every row
    moves once and no table of values is joined back.
    """
    value = F.col(column)
    magnitude = F.floor(F.log1p(F.abs(value)) * F.lit(_RANGES_PER_LOG))
    part = (
        F.when(value.isNull(), F.lit(_LONG_MIN))
        .when(F.isnan(value), F.lit(_LONG_MAX))
        .when(value < 0, -magnitude - 1)
        .otherwise(magnitude)
    )
    ranged = frame.withColumn("_range", part)
    order = value.desc() if descending else value.asc()
    ranges = Window.orderBy(F.col("_range").desc() if descending else F.col("_range").asc())
    offsets = (
        ranged.groupBy("_range")
        .agg(F.count(F.lit(1)).alias("_size"))
        .select(
            "_range",
            _sum_before("_size", ranges).alias("_offset"),
            _sum_all("_size", ranges).alias("_everyone"),
        )
    )
    within = F.rank().over(Window.partitionBy("_range").orderBy(order)) - 1
    return (
        ranged.withColumn("_within", within)
        .join(F.broadcast(offsets), "_range")
        .withColumn("_below", F.col("_offset") + F.col("_within"))
        .withColumn(score, _score(levels))
        .drop("_range", "_within", "_offset", "_below", "_everyone")
    )


def _sum_before(column: str, order: WindowSpec) -> Column:
    """Sum of ``column`` over the rows ordered strictly before each row (0 for the first)."""
    preceding = order.rowsBetween(Window.unboundedPreceding, -1)
    return F.coalesce(F.sum(column).over(preceding), F.lit(0))


def _sum_all(column: str, order: WindowSpec) -> Column:
    """Sum of ``column`` over every row of the window."""
    return F.sum(column).over(
        order.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    )


def _floor_div(numerator: Column, denominator: Column) -> Column:
    # Integer floor division: a double quotient may land just below a whole number and drop a
    # customer on a score boundary into the lower score.
    return (numerator - F.pmod(numerator, denominator)) / denominator
