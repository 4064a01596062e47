"""Energy features: consumption level, 24-hour load shape, seasonality and sector per customer.

Readings are first summed per customer, day and hour of day (the hourly load), so 15-, 30- and
60-minute intervals describe the same consumption identically. Everything derives from the
hourly loads: the hour-of-day means (profile, peak hour, evening share), their distribution
(load factor, base load) and the daily totals (level, weekend and seasonal ratios).
"""

from __future__ import annotations

from datetime import date
from functools import reduce
from operator import add

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segspark.config import FeaturesSettings
from segspark.features._common import (
    ATTRIBUTES,
    check_as_of,
    in_window,
    is_weekend,
    require_columns,
    window_start,
    with_customers,
)
from segspark.features.catalog import conform

_COLUMNS = ("customer_id", "reading_time", "kwh")
HOURS = tuple(f"h{hour:02d}" for hour in range(24))


def energy_features(
    meter_readings: DataFrame,
    *,
    as_of: date,
    settings: FeaturesSettings,
    customers: DataFrame | None = None,
) -> DataFrame:
    """One row per customer with a reading in the window ending at ``as_of``: consumption pattern.

    The window is ``settings.energy.window_days`` days up to ``as_of`` included; a reading
    belongs to the hour and day of its ``reading_time`` (the interval's start). ``customers``
    adds ``sector`` and the demographic attributes. The columns and their meaning are those of
    ``features("energy")`` in :mod:`segspark.features.catalog`.

    Example:
        >>> features = energy_features(
        ...     meter_readings, as_of=date(2024, 3, 31), settings=load_settings().features
        ... )
        >>> features.columns[:5]
        ['customer_id', 'as_of', 'mean_daily_kwh', 'h00', 'h01']
    """
    check_as_of(as_of)
    require_columns(meter_readings, _COLUMNS, "meter_readings")
    cfg = settings.energy
    time = F.col("reading_time")
    hourly = (
        meter_readings.where(in_window(time, window_start(as_of, cfg.window_days), as_of))
        .groupBy("customer_id", F.to_date(time).alias("day"), F.hour(time).alias("hour"))
        .agg(F.sum("kwh").alias("kwh"))
    )
    kwh, hour = F.col("kwh"), F.col("hour")
    by_hour = hourly.groupBy("customer_id").agg(
        *(F.avg(F.when(hour == h, kwh)).alias(name) for h, name in enumerate(HOURS)),
        F.avg(kwh).alias("mean_hourly"),
        F.max(kwh).alias("max_hourly"),
        F.percentile_approx(kwh, cfg.base_load_percentile, cfg.percentile_accuracy).alias(
            "base_load_kwh"
        ),
    )

    day = F.col("day")
    weekend = is_weekend(day, settings.weekend_days)
    winter = F.month(day).isin(cfg.winter_months)
    summer = F.month(day).isin(cfg.summer_months)
    by_day = (
        hourly.groupBy("customer_id", "day")
        .agg(F.sum("kwh").alias("kwh"))
        .groupBy("customer_id")
        .agg(
            F.avg(kwh).alias("mean_daily_kwh"),
            F.avg(F.when(weekend, kwh)).alias("weekend_kwh"),
            F.avg(F.when(~weekend, kwh)).alias("weekday_kwh"),
            F.avg(F.when(winter, kwh)).alias("winter_kwh"),
            F.count_if(winter).alias("winter_days"),
            F.avg(F.when(summer, kwh)).alias("summer_kwh"),
            F.count_if(summer).alias("summer_days"),
        )
    )

    means = [F.col(name) for name in HOURS]
    profile_total = _sum_known(means)
    has_load = profile_total > 0
    seasons_seen = (F.col("winter_days") >= cfg.season_min_days) & (
        F.col("summer_days") >= cfg.season_min_days
    )
    values = by_hour.join(by_day, on="customer_id").select(
        "customer_id",
        F.lit(as_of).alias("as_of"),
        "mean_daily_kwh",
        *(F.try_divide(F.col(name), profile_total).alias(name) for name in HOURS),
        F.when(has_load, F.array_position(F.array(*means), F.array_max(F.array(*means))) - 1).alias(
            "peak_hour"
        ),
        F.try_divide(F.col("mean_hourly"), F.col("max_hourly")).alias("load_factor"),
        "base_load_kwh",
        F.try_divide(F.col("weekend_kwh"), F.col("weekday_kwh")).alias("weekend_weekday_ratio"),
        F.try_divide(_sum_known([means[h] for h in cfg.evening_hours]), profile_total).alias(
            "evening_share"
        ),
        F.when(seasons_seen, F.try_divide(F.col("winter_kwh"), F.col("summer_kwh"))).alias(
            "seasonal_ratio"
        ),
    )
    out = with_customers(values, customers, domain="energy", columns=("sector", *ATTRIBUTES))
    return conform(out, "energy")


def _sum_known(columns: list[Column]) -> Column:
    """The sum of the non-null columns (an hour without readings adds nothing)."""
    return reduce(add, (F.coalesce(c, F.lit(0.0)) for c in columns))
