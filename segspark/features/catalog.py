"""The feature catalog: every silver feature column of every domain, documented in one place.

A ``<domain>_features`` table holds ``customer_id`` (string), ``as_of`` (date) and the domain's
features below, in this order and with these types. :data:`FEATURE_VERSION` versions each
domain's schema: adding, removing, renaming or retyping a feature is a new version, and the
schema fingerprint recorded for that version (:data:`SCHEMA_FINGERPRINTS`) must be updated in
the same change (a test compares them), so a schema never changes silently under one version.

Conventions shared by the domains:

* The window of a domain ends at ``as_of`` *included* (events up to ``as_of`` 23:59:59.999999
  in the session time zone); nothing after it influences any value. ``N`` window days are the
  days ``as_of - N + 1 .. as_of``.
* A customer with no event in the window has no row (not a row of zeros).
* Days, hours of day and weekdays are taken in the Spark session time zone (UTC in segspark's
  session), on the event's start time.
* Counts are ``int``; amounts, means and shares are ``double``. A share is a fraction in
  [0, 1]. A ratio or mean whose denominator is empty or zero is ``null`` (``null_when`` says
  when); attributes a customer lacks are ``null``.
* "Trend" features are the symmetric relative change ``(a - b) / (a + b)`` of the last
  ``trend_days`` days (``a``) against the ``trend_days`` before them (``b``): ``-1`` stopped,
  ``0`` steady, ``+1`` new; ``null`` when ``a + b = 0``. Unlike a log ratio it is bounded and
  defined when one side is zero.

Example:
    >>> [f.name for f in features("retail")][:3]
    ['recency_days', 'frequency', 'transaction_count']
    >>> feature_schema("energy")["h07"].dataType
    DoubleType()
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DataType,
    DateType,
    DoubleType,
    IntegerType,
    StringType,
    StructField,
    StructType,
)

from segspark.config import DOMAINS, Domain
from segspark.errors import UsageError

DType = Literal["int", "double", "string"]
Kind = Literal["numeric", "categorical"]

#: The key columns leading every ``<domain>_features`` table.
KEY_COLUMNS = ("customer_id", "as_of")

#: The schema version of each domain's features table (see the module docstring).
FEATURE_VERSION: dict[str, int] = {"retail": 2, "telecom": 1, "energy": 1}

#: ``schema_fingerprint(domain)`` recorded for each (domain, version).
SCHEMA_FINGERPRINTS: dict[str, dict[int, str]] = {
    "retail": {1: "9457d2e067f0", 2: "628c0f1b04c9"},  # 2: purchase_rate
    "telecom": {1: "1ff1e096be60"},
    "energy": {1: "588a97121a38"},
}

_SPARK_TYPES: dict[DType, DataType] = {
    "int": IntegerType(),
    "double": DoubleType(),
    "string": StringType(),
}


@dataclass(frozen=True)
class Feature:
    """One feature column: its name, type, unit and meaning within one domain."""

    name: str
    domain: Domain
    dtype: DType
    unit: str
    meaning: str
    null_when: str | None = None
    kind: Kind = "numeric"

    @property
    def spark_type(self) -> DataType:
        """The column's Spark SQL type."""
        return _SPARK_TYPES[self.dtype]


def _attributes(domain: Domain) -> list[Feature]:
    source = "from the customers table (rows of this domain)"
    missing = "no customers table is given or the customer has no value"
    return [
        Feature("region", domain, "string", "label", f"Region {source}.", missing, "categorical"),
        Feature(
            "age_band", domain, "string", "label", f"Age band {source}.", missing, "categorical"
        ),
        Feature(
            "income_band",
            domain,
            "string",
            "label",
            f"Income band {source}.",
            missing,
            "categorical",
        ),
    ]


_TREND = "(a - b) / (a + b); a, b = {what} in the last trend_days days, in the trend_days before."

_RETAIL: list[Feature] = [
    Feature(
        "recency_days",
        "retail",
        "int",
        "days",
        "Days from the last purchase day to as_of (0: bought on as_of).",
    ),
    Feature(
        "frequency",
        "retail",
        "int",
        "purchase days",
        "Distinct days with a purchase; several transactions on one day are one occasion.",
    ),
    Feature(
        "transaction_count",
        "retail",
        "int",
        "transactions",
        "Transactions (rows of transactions) in the window.",
    ),
    Feature("monetary_total", "retail", "double", "currency", "Sum of amount over the window."),
    Feature(
        "monetary_per_day",
        "retail",
        "double",
        "currency per purchase day",
        "monetary_total / frequency: mean spend of a purchase day.",
    ),
    Feature(
        "monetary_per_transaction",
        "retail",
        "double",
        "currency per transaction",
        "monetary_total / transaction_count: mean spend of a transaction.",
    ),
    Feature(
        "tenure_days",
        "retail",
        "int",
        "days",
        "Days from the first purchase day in the window to as_of.",
    ),
    Feature(
        "purchase_rate",
        "retail",
        "double",
        "purchase days per 30 days",
        "30 x frequency / max(tenure_days, rate_min_days): purchase days per 30 days since the "
        "first one, so customers who joined recently compare with long-standing ones.",
    ),
    Feature(
        "basket_size",
        "retail",
        "double",
        "items per transaction",
        "Sum of quantity / transactions whose quantity is known.",
        "no transaction has a quantity",
    ),
    Feature(
        "ipi_mean_days",
        "retail",
        "double",
        "days",
        "Mean gap between consecutive purchase days: (last - first day) / (frequency - 1).",
        "frequency < 2 (no gap)",
    ),
    Feature(
        "ipi_std_days",
        "retail",
        "double",
        "days",
        "Sample standard deviation (n - 1) of the gaps between consecutive purchase days.",
        "frequency < 3 (fewer than 2 gaps)",
    ),
    Feature(
        "purchase_trend",
        "retail",
        "double",
        "ratio in [-1, 1]",
        _TREND.format(what="spend"),
        "no spend in the last 2 x trend_days days",
    ),
    Feature(
        "r_score",
        "retail",
        "int",
        "score 1..rfm_scores",
        "Recency score: more recent (smaller recency_days) is higher. Each score is "
        "1 + floor(rfm_scores * percent_rank) capped at rfm_scores, over all customers at "
        "as_of; equal values always share a score (percent_rank gives ties the lowest rank).",
    ),
    Feature(
        "f_score",
        "retail",
        "int",
        "score 1..rfm_scores",
        "Frequency score: more purchase days is higher (as r_score).",
    ),
    Feature(
        "m_score",
        "retail",
        "int",
        "score 1..rfm_scores",
        "Monetary score: larger monetary_total is higher (as r_score).",
    ),
    Feature(
        "expected_purchases",
        "retail",
        "double",
        "purchase days",
        "BG/NBD expected repeat purchase days in the next clv.horizon_weeks (segspark.clv).",
    ),
    Feature(
        "p_alive",
        "retail",
        "double",
        "probability",
        "BG/NBD probability that the customer is still active at as_of (segspark.clv).",
    ),
    Feature(
        "expected_spend",
        "retail",
        "double",
        "currency per purchase day",
        "Gamma-Gamma expected value of a future purchase day (segspark.clv).",
    ),
    Feature(
        "clv",
        "retail",
        "double",
        "currency",
        "Discounted customer lifetime value over clv.clv_months months (segspark.clv).",
    ),
    *_attributes("retail"),
]

_PER_DAY = "{what} / active_days."
_TALK = "voice and sms events"

_TELECOM: list[Feature] = [
    Feature("voice_calls", "telecom", "int", "calls", "Voice events in the window."),
    Feature(
        "voice_minutes",
        "telecom",
        "double",
        "minutes",
        "Sum of duration_s of voice events / 60 (unknown durations count as 0).",
    ),
    Feature("sms_count", "telecom", "int", "messages", "SMS events in the window."),
    Feature("data_sessions", "telecom", "int", "sessions", "Data events in the window."),
    Feature("data_mb", "telecom", "double", "MB", "Sum of data_mb of data events."),
    Feature(
        "voice_calls_per_day",
        "telecom",
        "double",
        "calls per active day",
        _PER_DAY.format(what="voice_calls"),
    ),
    Feature(
        "voice_minutes_per_day",
        "telecom",
        "double",
        "minutes per active day",
        _PER_DAY.format(what="voice_minutes"),
    ),
    Feature(
        "sms_per_day",
        "telecom",
        "double",
        "messages per active day",
        _PER_DAY.format(what="sms_count"),
    ),
    Feature(
        "data_sessions_per_day",
        "telecom",
        "double",
        "sessions per active day",
        _PER_DAY.format(what="data_sessions"),
    ),
    Feature(
        "data_mb_per_day", "telecom", "double", "MB per active day", _PER_DAY.format(what="data_mb")
    ),
    Feature("active_days", "telecom", "int", "days", "Distinct days with an event."),
    Feature(
        "night_share",
        "telecom",
        "double",
        "share of events",
        "Events starting in the configured night_hours / all events.",
    ),
    Feature(
        "weekend_share",
        "telecom",
        "double",
        "share of events",
        "Events on the configured weekend_days / all events.",
    ),
    Feature(
        "international_share",
        "telecom",
        "double",
        f"share of {_TALK}",
        f"International {_TALK} / {_TALK} whose is_international is known.",
        f"no {_TALK} with a known is_international",
    ),
    Feature(
        "outgoing_share",
        "telecom",
        "double",
        f"share of {_TALK}",
        f"Outgoing {_TALK} / {_TALK} with a known direction.",
        f"no {_TALK} with a known direction",
    ),
    Feature(
        "distinct_contacts",
        "telecom",
        "int",
        "counterparties",
        f"Distinct counterparty_id of {_TALK} in the window.",
    ),
    Feature(
        "contact_entropy",
        "telecom",
        "double",
        "bits",
        f"Shannon entropy -sum p log2 p of the counterparty distribution of {_TALK} "
        "(p = events with a counterparty / all events with a counterparty); 0 with one "
        "contact or none, log2(k) for k equally used contacts.",
    ),
    Feature(
        "mean_interevent_hours",
        "telecom",
        "double",
        "hours",
        "(last - first event time) / (events - 1): mean time between consecutive events.",
        "fewer than 2 events",
    ),
    Feature(
        "tenure_days",
        "telecom",
        "int",
        "days",
        "Days to as_of from the earlier of signup_date (customers) and the first event "
        "ever (all history up to as_of, not only the window).",
    ),
    Feature(
        "usage_trend",
        "telecom",
        "double",
        "ratio in [-1, 1]",
        _TREND.format(what="events (all types)"),
        "no event in the last 2 x trend_days days",
    ),
    Feature(
        "days_since_last_activity",
        "telecom",
        "int",
        "days",
        "Days from the last event day to as_of (0: active on as_of).",
    ),
    *_attributes("telecom"),
]

_PROFILE = [
    Feature(
        f"h{hour:02d}",
        "energy",
        "double",
        "share of an average day's kWh",
        f"Load profile: mean kWh in hour {hour:02d}:00-{hour:02d}:59 (readings summed per "
        "day and hour, then averaged over the days with a reading in that hour) / the sum "
        "of the 24 hourly means; the 24 shares sum to 1 whatever the reading interval.",
        "no reading in this hour of day, or no consumption at all",
    )
    for hour in range(24)
]

_ENERGY: list[Feature] = [
    Feature(
        "mean_daily_kwh",
        "energy",
        "double",
        "kWh per day",
        "Mean over days with readings of the day's total kWh.",
    ),
    *_PROFILE,
    Feature(
        "peak_hour",
        "energy",
        "int",
        "hour of day 0..23",
        "Hour with the largest profile share (the earliest on a tie).",
        "no consumption at all",
    ),
    Feature(
        "load_factor",
        "energy",
        "double",
        "ratio in [0, 1]",
        "Mean hourly kWh / maximum hourly kWh over the hours with readings.",
        "the maximum hourly kWh is 0",
    ),
    Feature(
        "base_load_kwh",
        "energy",
        "double",
        "kWh per hour (mean kW)",
        "The base_load_percentile of the hourly kWh values (percentile_approx with "
        "percentile_accuracy): the smallest hourly value with at least that share of hours "
        "at or below it.",
    ),
    Feature(
        "weekend_weekday_ratio",
        "energy",
        "double",
        "ratio",
        "Mean daily kWh on weekend_days / mean daily kWh on other days.",
        "no weekend day, no weekday, or zero weekday consumption",
    ),
    Feature(
        "evening_share",
        "energy",
        "double",
        "share of an average day's kWh",
        "Sum of the profile shares of the configured evening_hours.",
        "no consumption at all",
    ),
    Feature(
        "seasonal_ratio",
        "energy",
        "double",
        "ratio",
        "Mean daily kWh on days in winter_months / on days in summer_months.",
        "either season has fewer than season_min_days days with readings in the window, "
        "or zero summer consumption",
    ),
    Feature(
        "sector",
        "energy",
        "string",
        "label",
        "Sector from the customers table: residential, commercial, industrial or agricultural.",
        "no customers table is given or the sector is unknown",
        "categorical",
    ),
    *_attributes("energy"),
]

#: Every feature of every domain, in table column order within a domain.
CATALOG: tuple[Feature, ...] = (*_RETAIL, *_TELECOM, *_ENERGY)


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise UsageError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")


def features(domain: str) -> tuple[Feature, ...]:
    """The features of ``domain`` in table column order.

    Example:
        >>> features("telecom")[0].unit
        'calls'
    """
    _check_domain(domain)
    return tuple(f for f in CATALOG if f.domain == domain)


def feature_names(domain: str, *, kind: Kind | None = None) -> list[str]:
    """Feature column names of ``domain`` (only numeric or categorical ones when ``kind``).

    Example:
        >>> feature_names("energy", kind="categorical")
        ['sector', 'region', 'age_band', 'income_band']
    """
    return [f.name for f in features(domain) if kind is None or f.kind == kind]


def feature_schema(domain: str) -> StructType:
    """The schema of the ``<domain>_features`` table: keys, then the features in order.

    Example:
        >>> feature_schema("retail").names[:3]
        ['customer_id', 'as_of', 'recency_days']
    """
    fields = [
        StructField("customer_id", StringType(), False),
        StructField("as_of", DateType(), False),
        *(StructField(f.name, f.spark_type, True) for f in features(domain)),
    ]
    return StructType(fields)


def schema_fingerprint(domain: str) -> str:
    """A short hash of the column names and types of ``feature_schema(domain)``.

    Example:
        >>> schema_fingerprint("retail") == SCHEMA_FINGERPRINTS["retail"][FEATURE_VERSION["retail"]]
        True
    """
    text = ",".join(f"{f.name}:{f.dataType.simpleString()}" for f in feature_schema(domain))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def conform(frame: DataFrame, domain: str) -> DataFrame:
    """Select the keys and ``domain``'s features from ``frame`` in order, cast to their types.

    Example:
        >>> conform(frame, "retail").columns == feature_schema("retail").names
        True
    """
    schema = feature_schema(domain)
    return frame.select(
        *(F.col(field.name).cast(field.dataType).alias(field.name) for field in schema)
    )


__all__ = [
    "CATALOG",
    "FEATURE_VERSION",
    "KEY_COLUMNS",
    "SCHEMA_FINGERPRINTS",
    "Feature",
    "conform",
    "feature_names",
    "feature_schema",
    "features",
    "schema_fingerprint",
]
