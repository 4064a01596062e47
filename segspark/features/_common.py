"""Helpers shared by the domain feature modules: argument checks, windows, customer attributes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segspark.errors import InputError, UsageError

#: Attributes every domain takes from the customers table (energy adds ``sector``).
ATTRIBUTES = ("region", "age_band", "income_band")

# Customer columns that are not strings (null stand-ins need the right type).
_ATTRIBUTE_TYPES = {"signup_date": "date"}


def check_as_of(as_of: object) -> date:
    if isinstance(as_of, datetime) or not isinstance(as_of, date):
        raise UsageError(f"as_of must be a datetime.date, got {type(as_of).__name__}")
    return as_of


def require_columns(frame: DataFrame, columns: Sequence[str], what: str) -> None:
    present = {name.lower() for name in frame.columns}
    missing = [name for name in columns if name.lower() not in present]
    if missing:
        raise InputError(f"{what} lacks column(s) {', '.join(missing)}; has {frame.columns}")


def window_start(as_of: date, days: int) -> date:
    """The first day of the ``days``-day window ending at ``as_of`` (included)."""
    return as_of - timedelta(days=days - 1)


def midnight(day: date) -> Column:
    """The start of ``day`` as a timestamp literal."""
    # A date cast to timestamp is midnight in the session time zone, the zone to_date uses, so
    # the bounds agree with the event days; a bare timestamp comparison also prunes Parquet.
    return F.lit(day).cast("timestamp")


def in_window(time: Column, start: date | None, as_of: date) -> Column:
    """``time`` falls on a day in ``start .. as_of`` (``start`` None: no lower bound)."""
    before_end = time < midnight(as_of + timedelta(days=1))
    return before_end if start is None else before_end & (time >= midnight(start))


def is_weekend(day: Column, weekend_days: Sequence[int]) -> Column:
    """``day`` is one of ``weekend_days`` (ISO numbers, 1 = Monday .. 7 = Sunday)."""
    return (F.weekday(day) + 1).isin(list(weekend_days))


def symmetric_change(recent: Column, earlier: Column) -> Column:
    """``(recent - earlier) / (recent + earlier)``; null when both are zero."""
    return F.try_divide(recent - earlier, recent + earlier)


def with_customers(
    frame: DataFrame,
    customers: DataFrame | None,
    *,
    domain: str,
    columns: Sequence[str],
) -> DataFrame:
    """Left-join ``columns`` of ``domain``'s customers onto ``frame`` (all null without them).

    The customers table is unique per (domain, customer_id) (its bronze natural key), so the
    join keeps one row per customer. Rows of other domains are ignored when the table has a
    ``domain`` column.
    """
    if customers is None:
        return frame.select(
            "*", *(F.lit(None).cast(_ATTRIBUTE_TYPES.get(c, "string")).alias(c) for c in columns)
        )
    require_columns(customers, ["customer_id", *columns], "customers")
    if "domain" in {c.lower() for c in customers.columns}:
        customers = customers.where(F.col("domain") == domain)
    return frame.join(customers.select("customer_id", *columns), on="customer_id", how="left")
