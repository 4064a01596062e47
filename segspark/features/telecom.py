"""Telecom features: usage mix, timing, contacts and loyalty per customer, from ``cdrs``.

Two aggregations feed the features: the window's events per customer-day (usage, timing,
shares, active days, trend) and the whole history up to ``as_of`` per customer and
counterparty (contacts and entropy over the window's events, tenure from the first event ever),
joined on ``customer_id``.
"""

from __future__ import annotations

from datetime import date

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segspark.config import FeaturesSettings
from segspark.features._common import (
    ATTRIBUTES,
    check_as_of,
    in_window,
    is_weekend,
    midnight,
    require_columns,
    symmetric_change,
    window_start,
    with_customers,
)
from segspark.features.catalog import conform

_COLUMNS = (
    "customer_id",
    "event_time",
    "event_type",
    "direction",
    "duration_s",
    "data_mb",
    "is_international",
    "counterparty_id",
)

_MICROS_PER_HOUR = 3_600_000_000.0


def telecom_features(
    cdrs: DataFrame,
    *,
    as_of: date,
    settings: FeaturesSettings,
    customers: DataFrame | None = None,
) -> DataFrame:
    """One row per customer with an event in the window ending at ``as_of``: usage and loyalty.

    The window is ``settings.telecom.window_days`` days up to ``as_of`` included; tenure looks
    at the whole history up to ``as_of`` (and at ``signup_date`` when ``customers`` is given).
    The columns and their meaning are those of ``features("telecom")`` in
    :mod:`segspark.features.catalog`.

    Example:
        >>> features = telecom_features(
        ...     cdrs, as_of=date(2024, 3, 31), settings=load_settings().features
        ... )
        >>> features.columns[:4]
        ['customer_id', 'as_of', 'voice_calls', 'voice_minutes']
    """
    check_as_of(as_of)
    require_columns(cdrs, _COLUMNS, "cdrs")
    cfg = settings.telecom
    start = window_start(as_of, cfg.window_days)
    recent_start = F.lit(window_start(as_of, cfg.trend_days))
    earlier_start = F.lit(window_start(as_of, 2 * cfg.trend_days))

    time = F.col("event_time")
    kind = F.col("event_type")
    voice, sms, data = kind == "voice", kind == "sms", kind == "data"
    talk = voice | sms
    days = (
        cdrs.where(in_window(time, start, as_of))
        .groupBy("customer_id", F.to_date(time).alias("day"))
        .agg(
            F.count(F.lit(1)).alias("events"),
            F.count_if(voice).alias("voice_calls"),
            F.sum(F.when(voice, F.col("duration_s"))).alias("voice_seconds"),
            F.count_if(sms).alias("sms_count"),
            F.count_if(data).alias("data_sessions"),
            F.sum(F.when(data, F.col("data_mb"))).alias("data_mb"),
            F.count_if(F.hour(time).isin(cfg.night_hours)).alias("night_events"),
            F.count_if(talk & F.col("is_international")).alias("intl_events"),
            F.count_if(talk & F.col("is_international").isNotNull()).alias("intl_known"),
            F.count_if(talk & (F.col("direction") == "out")).alias("out_events"),
            F.count_if(talk & F.col("direction").isNotNull()).alias("directed_events"),
            F.min(time).alias("first_time"),
            F.max(time).alias("last_time"),
        )
    )
    day, events = F.col("day"), F.col("events")
    usage = days.groupBy("customer_id").agg(
        F.count(F.lit(1)).alias("active_days"),
        F.sum(events).alias("events"),
        *(
            F.sum(name).alias(name)
            for name in (
                "voice_calls",
                "sms_count",
                "data_sessions",
                "night_events",
                "intl_events",
                "intl_known",
                "out_events",
                "directed_events",
            )
        ),
        F.coalesce(F.sum("voice_seconds"), F.lit(0.0)).alias("voice_seconds"),
        F.coalesce(F.sum("data_mb"), F.lit(0.0)).alias("data_mb"),
        F.sum(F.when(is_weekend(day, settings.weekend_days), events).otherwise(0)).alias(
            "weekend_events"
        ),
        F.sum(F.when(day >= recent_start, events).otherwise(0)).alias("recent"),
        F.sum(F.when((day >= earlier_start) & (day < recent_start), events).otherwise(0)).alias(
            "earlier"
        ),
        F.min("first_time").alias("first_time"),
        F.max("last_time").alias("last_time"),
        F.max(day).alias("last_day"),
    )

    # The counterparty of a voice or sms event; data sessions have no contact.
    contact = F.when(talk, F.col("counterparty_id"))
    pairs = (
        cdrs.where(in_window(time, None, as_of))
        .groupBy("customer_id", contact.alias("contact"))
        .agg(
            F.count_if(time >= midnight(start)).alias("n"),
            F.min(time).alias("first_ever"),
        )
    )
    n = F.col("n")
    known = F.col("contact").isNotNull() & (n > 0)
    contacts = pairs.groupBy("customer_id").agg(
        F.min("first_ever").alias("first_ever"),
        F.count_if(known).alias("distinct_contacts"),
        F.sum(F.when(known, n)).alias("contact_events"),
        F.sum(F.when(known, n * F.log2(n))).alias("contact_nlog2n"),
    )

    joined = with_customers(
        usage.join(contacts, on="customer_id", how="left"),
        customers,
        domain="telecom",
        columns=(*ATTRIBUTES, "signup_date"),
    )
    active = F.col("active_days")
    total_contacts = F.col("contact_events")
    # H = log2 N - (sum n log2 n) / N; clamped because rounding can leave -1e-16 for one contact.
    entropy = F.greatest(
        F.log2(total_contacts) - F.col("contact_nlog2n") / total_contacts, F.lit(0.0)
    )
    span_hours = (F.unix_micros("last_time") - F.unix_micros("first_time")) / _MICROS_PER_HOUR
    minutes = F.col("voice_seconds") / 60.0
    out = joined.select(
        "customer_id",
        F.lit(as_of).alias("as_of"),
        "voice_calls",
        minutes.alias("voice_minutes"),
        "sms_count",
        "data_sessions",
        "data_mb",
        (F.col("voice_calls") / active).alias("voice_calls_per_day"),
        (minutes / active).alias("voice_minutes_per_day"),
        (F.col("sms_count") / active).alias("sms_per_day"),
        (F.col("data_sessions") / active).alias("data_sessions_per_day"),
        (F.col("data_mb") / active).alias("data_mb_per_day"),
        "active_days",
        (F.col("night_events") / F.col("events")).alias("night_share"),
        (F.col("weekend_events") / F.col("events")).alias("weekend_share"),
        F.try_divide(F.col("intl_events"), F.col("intl_known")).alias("international_share"),
        F.try_divide(F.col("out_events"), F.col("directed_events")).alias("outgoing_share"),
        F.coalesce(F.col("distinct_contacts"), F.lit(0)).alias("distinct_contacts"),
        F.when(total_contacts > 0, entropy).otherwise(F.lit(0.0)).alias("contact_entropy"),
        F.when(F.col("events") >= 2, span_hours / (F.col("events") - 1)).alias(
            "mean_interevent_hours"
        ),
        F.datediff(
            F.lit(as_of), F.least(F.col("signup_date"), F.to_date(F.col("first_ever")))
        ).alias("tenure_days"),
        symmetric_change(F.col("recent"), F.col("earlier")).alias("usage_trend"),
        F.datediff(F.lit(as_of), F.col("last_day")).alias("days_since_last_activity"),
        *ATTRIBUTES,
    )
    return conform(out, "telecom")
