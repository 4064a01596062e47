"""Silver features: every value of a few hand-made customers, computed by hand below."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from segspark.config import (
    EnergyFeaturesSettings,
    FeaturesSettings,
    RetailFeaturesSettings,
    TelecomFeaturesSettings,
    load_settings,
)
from segspark.errors import ConfigError, InputError, UsageError
from segspark.features import (
    FEATURE_VERSION,
    build_features,
    energy_features,
    feature_names,
    feature_schema,
    retail_features,
    rfm_scores,
    telecom_features,
)
from segspark.features.catalog import CATALOG, SCHEMA_FINGERPRINTS, schema_fingerprint
from segspark.schemas import CDRS, CUSTOMERS, METER_READINGS, TRANSACTIONS

SETTINGS = FeaturesSettings(
    weekend_days=[6, 7],
    retail=RetailFeaturesSettings(window_days=None, trend_days=10, rfm_scores=5, rate_min_days=30),
    telecom=TelecomFeaturesSettings(
        window_days=30, trend_days=7, night_hours=[22, 23, 0, 1, 2, 3, 4, 5]
    ),
    energy=EnergyFeaturesSettings(
        window_days=365,
        evening_hours=[17, 18, 19, 20],
        base_load_percentile=0.4,
        percentile_accuracy=10000,
        winter_months=[12, 1, 2],
        summer_months=[6, 7, 8],
        season_min_days=1,
    ),
)
HOURS = [f"h{h:02d}" for h in range(24)]


def ts(text: str) -> datetime:
    """A UTC timestamp (the session time zone), so hours and days are the ones written."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def frame(spark: SparkSession, schema: StructType, rows: Sequence[tuple[Any, ...]]) -> DataFrame:
    """A bronze-shaped frame without the lineage columns (features never read them)."""
    fields = [f for f in schema.fields if not f.name.startswith("_")]
    return spark.createDataFrame(list(rows), StructType(fields))


def same(actual: Any, expected: Any) -> bool:
    if isinstance(actual, float) or isinstance(expected, float):
        return actual is not None and actual == pytest.approx(expected, rel=1e-9, abs=1e-12)
    return bool(actual == expected)


def assert_same_row(row: dict[str, Any], want: dict[str, Any]) -> None:
    assert list(row) == list(want), "column names and order"
    wrong = {k: (row[k], v) for k, v in want.items() if not same(row[k], v)}
    assert not wrong, f"{row.get('customer_id')}: (actual, expected) {wrong}"


def assert_rows(actual: DataFrame, expected: list[dict[str, Any]]) -> None:
    """Full rows (every column), floats within 1e-9, ordered by customer_id."""
    rows = [row.asDict() for row in actual.orderBy("customer_id").collect()]
    assert [r["customer_id"] for r in rows] == [e["customer_id"] for e in expected]
    for row, want in zip(rows, expected, strict=True):
        assert_same_row(row, want)


def assert_catalog_schema(actual: DataFrame, domain: str) -> None:
    declared = feature_schema(domain)
    assert [(f.name, f.dataType) for f in actual.schema] == [(f.name, f.dataType) for f in declared]


# --------------------------------------------------------------------------------------------
# retail


def retail_input(spark: SparkSession) -> tuple[DataFrame, DataFrame]:
    transactions = frame(
        spark,
        TRANSACTIONS,
        [
            ("A", ts("2024-03-01 10:00:00"), 10.0, 1, "a1"),
            ("A", ts("2024-03-01 15:00:00"), 20.0, 3, "a2"),
            ("A", ts("2024-03-11 09:00:00"), 30.0, None, "a3"),
            ("A", ts("2024-03-15 12:00:00"), 40.0, 4, "a4"),
            ("A", ts("2024-03-25 18:00:00"), 50.0, 2, "a5"),
            ("A", ts("2024-04-01 00:00:00"), 1000.0, 9, "a6"),  # after as_of: ignored
            ("B", ts("2024-02-20 08:00:00"), 100.0, 2, "b1"),
            ("B", ts("2024-03-31 23:59:59"), 5.0, None, "b2"),  # last second of as_of: kept
            ("C", ts("2024-04-02 10:00:00"), 70.0, 1, "c1"),  # only after as_of: absent
            ("D", ts("2024-01-05 11:00:00"), 8.0, 1, "d1"),
        ],
    )
    customers = frame(
        spark,
        CUSTOMERS,
        [
            ("A", "retail", "north", "25-34", "high", None, date(2023, 1, 1)),
            ("B", "telecom", "south", "65+", "low", None, None),  # another domain: ignored
        ],
    )
    return transactions, customers


def test_retail_features_by_hand(spark: SparkSession) -> None:
    transactions, customers = retail_input(spark)
    as_of = date(2024, 3, 31)
    actual = retail_features(transactions, as_of=as_of, settings=SETTINGS, customers=customers)

    # trend_days 10: recent = 03-22..03-31, earlier = 03-12..03-21.
    # A: days 03-01 (10+20, 2 tx, qty 1+3), 03-11 (30, qty unknown), 03-15 (40, qty 4),
    #    03-25 (50, qty 2); gaps 10, 4, 10 (mean 8, deviations 2, -4, 2).
    a = {
        "customer_id": "A",
        "as_of": as_of,
        "recency_days": 31 - 25,
        "frequency": 4,
        "transaction_count": 5,
        "monetary_total": 150.0,
        "monetary_per_day": 150.0 / 4,
        "monetary_per_transaction": 150.0 / 5,
        "tenure_days": 31 - 1,
        "purchase_rate": 30.0 * 4 / 30,
        "basket_size": (1 + 3 + 4 + 2) / 4,
        "ipi_mean_days": (10 + 4 + 10) / 3,
        "ipi_std_days": ((2**2 + 4**2 + 2**2) / (3 - 1)) ** 0.5,
        "purchase_trend": (50.0 - 40.0) / (50.0 + 40.0),
        "r_score": 3,
        "f_score": 5,
        "m_score": 5,
        # no clv frame given: the CLV columns are null
        "expected_purchases": None,
        "p_alive": None,
        "expected_spend": None,
        "clv": None,
        "region": "north",
        "age_band": "25-34",
        "income_band": "high",
    }
    # B: days 02-20 (100, qty 2) and 03-31 (5, qty unknown); one gap of 40 days (9 + 31).
    b = {
        "customer_id": "B",
        "as_of": as_of,
        "recency_days": 0,
        "frequency": 2,
        "transaction_count": 2,
        "monetary_total": 105.0,
        "monetary_per_day": 105.0 / 2,
        "monetary_per_transaction": 105.0 / 2,
        "tenure_days": (29 - 20) + 31,
        "purchase_rate": 30.0 * 2 / 40,
        "basket_size": 2 / 1,
        "ipi_mean_days": 40.0,
        "ipi_std_days": None,
        "purchase_trend": (5.0 - 0.0) / (5.0 + 0.0),
        "r_score": 5,
        "f_score": 3,
        "m_score": 3,
        # no clv frame given: the CLV columns are null
        "expected_purchases": None,
        "p_alive": None,
        "expected_spend": None,
        "clv": None,
        "region": None,
        "age_band": None,
        "income_band": None,
    }
    # D: one purchase on 01-05: 26 days left in January + 29 + 31.
    d = {
        "customer_id": "D",
        "as_of": as_of,
        "recency_days": 26 + 29 + 31,
        "frequency": 1,
        "transaction_count": 1,
        "monetary_total": 8.0,
        "monetary_per_day": 8.0,
        "monetary_per_transaction": 8.0,
        "tenure_days": 26 + 29 + 31,
        "purchase_rate": 30.0 * 1 / 86,
        "basket_size": 1.0,
        "ipi_mean_days": None,
        "ipi_std_days": None,
        "purchase_trend": None,  # no spend in either trend window
        "r_score": 1,
        "f_score": 1,
        "m_score": 1,
        # no clv frame given: the CLV columns are null
        "expected_purchases": None,
        "p_alive": None,
        "expected_spend": None,
        "clv": None,
        "region": None,
        "age_band": None,
        "income_band": None,
    }
    # RFM over A, B, D (n = 3): score = min(5, 1 + floor(5 * below / (n - 1))), below = the
    # customers ranked lower. recency desc: D 86 (0 below) -> 1, A 6 (1) -> 1 + floor(2.5) = 3,
    # B 0 (2) -> min(5, 6) = 5. frequency: D 1 -> 1, B 2 -> 3, A 4 -> 5. monetary: D, B, A.
    assert_rows(actual, [a, b, d])
    assert_catalog_schema(actual, "retail")


def test_retail_window_days_drops_older_purchases(spark: SparkSession) -> None:
    transactions, _ = retail_input(spark)
    settings = SETTINGS.model_copy(
        update={
            "retail": RetailFeaturesSettings(
                window_days=30, trend_days=10, rfm_scores=5, rate_min_days=30
            )
        }
    )
    actual = retail_features(transactions, as_of=date(2024, 3, 31), settings=settings)
    # Window 03-02..03-31: A keeps 03-11, 03-15, 03-25 (30 + 40 + 50), B keeps 03-31, D drops.
    rows = actual.orderBy("customer_id").select("customer_id", "frequency", "monetary_total")
    assert [tuple(r) for r in rows.collect()] == [("A", 3, 120.0), ("B", 1, 5.0)]


def test_rfm_scores_are_quintiles_of_ten_customers_with_ties_shared(
    spark: SparkSession,
) -> None:
    ids = [f"c{i:02d}" for i in range(1, 11)]
    recency = [3, 1, 4, 10, 5, 9, 2, 6, 8, 7]
    frequency = [1, 1, 1, 2, 2, 3, 4, 5, 6, 7]
    monetary = [100.0, 90.0, 80.0, 70.0, 60.0, 50.0, 40.0, 30.0, 20.0, 10.0]
    values = spark.createDataFrame(
        list(zip(ids, recency, frequency, monetary, strict=True)),
        "customer_id string, recency_days int, frequency int, monetary_total double",
    )
    actual = {
        r["customer_id"]: (r["r_score"], r["f_score"], r["m_score"])
        for r in rfm_scores(values, levels=5).collect()
    }

    # n = 10, so score = min(5, 1 + floor(5 * below / 9)); below = 0..9 gives
    # 1, 1, 2, 2, 3, 3, 4, 4, 5, 5 (floor(5/9)=0, floor(10/9)=1, ... floor(40/9)=4, 45/9=5 -> 5).
    by_rank = [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    # recency descending: recency 10 has 0 below, recency 1 has 9 below.
    r = [by_rank[10 - days] for days in recency]
    # frequency: the three 1s share below = 0 -> 1; the 2s have 3 below -> 1 + floor(15/9) = 2;
    # 3 has 5 below -> 3; 4: 6 -> 4; 5: 7 -> 4; 6: 8 -> 5; 7: 9 -> 5.
    f = [1, 1, 1, 2, 2, 3, 4, 4, 5, 5]
    # monetary ascending: 10.0 (c10) has 0 below ... 100.0 (c01) has 9 below.
    m = [by_rank[9 - i] for i in range(10)]
    assert r == [4, 5, 4, 1, 3, 1, 5, 3, 2, 2]
    assert actual == {cid: (r[i], f[i], m[i]) for i, cid in enumerate(ids)}


def test_rfm_scores_refuse_fewer_than_two_levels(spark: SparkSession) -> None:
    values = spark.createDataFrame(
        [("x", 1, 1, 1.0)],
        "customer_id string, recency_days int, frequency int, monetary_total double",
    )
    with pytest.raises(UsageError, match=r"^levels must be >= 2, got 1$"):
        rfm_scores(values, levels=1)


# --------------------------------------------------------------------------------------------
# telecom


def telecom_input(spark: SparkSession) -> tuple[DataFrame, DataFrame]:
    # 2024-03-04 is a Monday, 03-10 a Sunday, 03-20 a Wednesday, 03-30/31 Saturday/Sunday.
    cdrs = frame(
        spark,
        CDRS,
        [
            ("T1", ts("2024-02-10 12:00:00"), "voice", "out", 60.0, None, False, "A"),  # before
            ("T1", ts("2024-03-04 23:30:00"), "voice", "out", 120.0, None, False, "A"),
            ("T1", ts("2024-03-04 08:00:00"), "sms", "out", None, None, False, "B"),
            ("T1", ts("2024-03-20 10:00:00"), "data", None, None, 50.0, False, None),
            ("T1", ts("2024-03-30 01:00:00"), "voice", "in", 180.0, None, True, "C"),
            ("T1", ts("2024-03-30 14:00:00"), "sms", "in", None, None, None, "A"),
            ("T1", ts("2024-03-31 20:00:00"), "data", None, None, 25.0, False, None),
            ("T1", ts("2024-04-01 00:30:00"), "voice", "out", 600.0, None, True, "D"),  # after
            ("T2", ts("2024-03-10 12:00:00"), "voice", "out", 30.0, None, False, "X"),
            ("T2", ts("2024-03-10 13:00:00"), "voice", "out", None, None, False, "X"),
            ("T3", ts("2024-04-05 09:00:00"), "sms", "out", None, None, False, "Y"),  # after
            ("T4", ts("2024-01-15 09:00:00"), "sms", "out", None, None, False, "Y"),  # before
        ],
    )
    customers = frame(
        spark,
        CUSTOMERS,
        [
            ("T1", "telecom", "north", "35-44", "low", None, date(2024, 1, 1)),
            ("T1", "retail", "east", "18-24", "high", None, date(2020, 1, 1)),  # other domain
            ("T2", "telecom", None, None, None, None, date(2024, 3, 15)),  # after first event
        ],
    )
    return cdrs, customers


def expected_telecom(as_of: date) -> list[dict[str, Any]]:
    # Window 03-02..03-31 (30 days); trend_days 7: recent 03-25..03-31, earlier 03-18..03-24.
    # T1 in the window: 6 events on 4 days (03-04 x2, 03-20, 03-30 x2, 03-31).
    t1 = {
        "customer_id": "T1",
        "as_of": as_of,
        "voice_calls": 2,
        "voice_minutes": (120 + 180) / 60,
        "sms_count": 2,
        "data_sessions": 2,
        "data_mb": 50.0 + 25.0,
        "voice_calls_per_day": 2 / 4,
        "voice_minutes_per_day": 5.0 / 4,
        "sms_per_day": 2 / 4,
        "data_sessions_per_day": 2 / 4,
        "data_mb_per_day": 75.0 / 4,
        "active_days": 4,
        "night_share": 2 / 6,  # 23:30 and 01:00
        "weekend_share": 3 / 6,  # 03-30 x2, 03-31
        "international_share": 1 / 3,  # voice/sms with a known flag: F, F, T (one unknown)
        "outgoing_share": 2 / 4,  # out, out, in, in
        "distinct_contacts": 3,  # A x2, B, C (the February call to A is outside the window)
        # p = 2/4, 1/4, 1/4: -(0.5 log2 0.5 + 2 x 0.25 log2 0.25) = 0.5 + 1 = 1.5 bits
        "contact_entropy": 1.5,
        # 03-04 08:00 .. 03-31 20:00 = 27 days 12 h = 660 h over 5 gaps
        "mean_interevent_hours": (27 * 24 + 12) / 5,
        "tenure_days": 30 + 29 + 31,  # signup 01-01 is earlier than the first event 02-10
        "usage_trend": (3 - 1) / (3 + 1),  # recent: 03-30 x2, 03-31; earlier: 03-20
        "days_since_last_activity": 0,
        "region": "north",
        "age_band": "35-44",
        "income_band": "low",
    }
    t2 = {
        "customer_id": "T2",
        "as_of": as_of,
        "voice_calls": 2,
        "voice_minutes": 30 / 60,  # the unknown duration counts as 0
        "sms_count": 0,
        "data_sessions": 0,
        "data_mb": 0.0,
        "voice_calls_per_day": 2.0,
        "voice_minutes_per_day": 0.5,
        "sms_per_day": 0.0,
        "data_sessions_per_day": 0.0,
        "data_mb_per_day": 0.0,
        "active_days": 1,
        "night_share": 0.0,
        "weekend_share": 1.0,  # Sunday
        "international_share": 0.0,
        "outgoing_share": 1.0,
        "distinct_contacts": 1,
        "contact_entropy": 0.0,
        "mean_interevent_hours": 1.0,
        "tenure_days": 31 - 10,  # the first event 03-10 is earlier than the signup 03-15
        "usage_trend": None,  # nothing in 03-18..03-31
        "days_since_last_activity": 31 - 10,
        "region": None,
        "age_band": None,
        "income_band": None,
    }
    return [t1, t2]


def test_telecom_features_by_hand(spark: SparkSession) -> None:
    cdrs, customers = telecom_input(spark)
    as_of = date(2024, 3, 31)
    actual = telecom_features(cdrs, as_of=as_of, settings=SETTINGS, customers=customers)
    assert_rows(actual, expected_telecom(as_of))
    assert_catalog_schema(actual, "telecom")


def test_telecom_tenure_without_customers_starts_at_the_first_event_ever(
    spark: SparkSession,
) -> None:
    cdrs, _ = telecom_input(spark)
    as_of = date(2024, 3, 31)
    t1, t2 = expected_telecom(as_of)
    t1 |= {"tenure_days": (29 - 10) + 31, "region": None, "age_band": None, "income_band": None}
    assert_rows(telecom_features(cdrs, as_of=as_of, settings=SETTINGS), [t1, t2])


def test_contact_entropy_of_uneven_contacts(spark: SparkSession) -> None:
    calls = [
        ("E", ts(f"2024-03-{day:02d} 10:00:00"), "voice", "out", 60.0, None, False, cp)
        for day, cp in [(1, "p"), (2, "p"), (3, "p"), (4, "q"), (5, "r"), (6, "r")]
    ]
    actual = telecom_features(frame(spark, CDRS, calls), as_of=date(2024, 3, 6), settings=SETTINGS)
    # p = 3/6, 1/6, 2/6: H = 0.5 log2 2 + (1/6) log2 6 + (1/3) log2 3
    import math

    want = 0.5 * 1.0 + (1 / 6) * math.log2(6) + (1 / 3) * math.log2(3)
    row = actual.select("distinct_contacts", "contact_entropy").first()
    assert row is not None
    assert (row[0], row[1]) == (3, pytest.approx(want, rel=1e-12))


# --------------------------------------------------------------------------------------------
# energy


def hourly_rows(customer: str, day: str, loads: Sequence[float]) -> list[tuple[Any, ...]]:
    return [(customer, ts(f"{day} {h:02d}:00:00"), kwh) for h, kwh in enumerate(loads)]


def quarter_rows(customer: str, day: str, loads: Sequence[float]) -> list[tuple[Any, ...]]:
    """The same hourly loads as four 15-minute readings of a quarter each."""
    return [
        (customer, ts(f"{day} {h:02d}:{m:02d}:00"), kwh / 4)
        for h, kwh in enumerate(loads)
        for m in (0, 15, 30, 45)
    ]


E1_WED_JAN = [3.0 if h in (18, 19) else 1.0 for h in range(24)]  # 22 + 6 = 28 kWh
E1_SAT_JAN = [2.0] * 24  # 48 kWh
E1_WED_JUL = [2.5 if h == 18 else 0.5 for h in range(24)]  # 11.5 + 2.5 = 14 kWh
RAMP_MON = [(h + 1) * 0.25 for h in range(24)]  # 0.25 .. 6.0, 75 kWh
FLAT_SAT = [1.0] * 24  # 24 kWh


def energy_input(spark: SparkSession) -> tuple[DataFrame, DataFrame]:
    # 2024-01-10 Wednesday, 01-13 Saturday, 07-10 Wednesday, 07-15 Monday, 07-20 Saturday.
    rows = [
        *hourly_rows("E1", "2024-01-10", E1_WED_JAN),
        *hourly_rows("E1", "2024-01-13", E1_SAT_JAN),
        *hourly_rows("E1", "2024-07-10", E1_WED_JUL),
        ("E1", ts("2023-08-01 23:00:00"), 100.0),  # before the window (starts 2023-08-02)
        ("E1", ts("2024-08-01 00:00:00"), 100.0),  # after as_of
        *quarter_rows("E2", "2024-07-15", RAMP_MON),
        *quarter_rows("E2", "2024-07-20", FLAT_SAT),
        *hourly_rows("E3", "2024-07-15", RAMP_MON),
        *hourly_rows("E3", "2024-07-20", FLAT_SAT),
        ("E4", ts("2024-08-02 10:00:00"), 1.0),  # only after as_of: absent
    ]
    customers = frame(
        spark,
        CUSTOMERS,
        [
            ("E1", "energy", "west", "45-54", "upper_middle", "residential", None),
            ("E3", "energy", "east", None, None, None, None),
        ],
    )
    return frame(spark, METER_READINGS, rows), customers


def expected_energy(as_of: date) -> list[dict[str, Any]]:
    # E1: three days; hour means over them: 3.5/3 off-peak (1 + 2 + 0.5), h18 (3 + 2 + 2.5)/3,
    # h19 (3 + 2 + 0.5)/3; their sum 30 = (28 + 48 + 14) / 3 = the mean daily kWh.
    e1_means = [(a + b + c) / 3 for a, b, c in zip(E1_WED_JAN, E1_SAT_JAN, E1_WED_JUL, strict=True)]
    assert sum(e1_means) == pytest.approx(30.0)
    e1 = {
        "customer_id": "E1",
        "as_of": as_of,
        "mean_daily_kwh": (28.0 + 48.0 + 14.0) / 3,
        **{HOURS[h]: e1_means[h] / 30.0 for h in range(24)},
        "peak_hour": 18,
        "load_factor": (90.0 / 72) / 3.0,  # mean hourly load / max hourly load
        # 72 hourly loads sorted: 0.5 x23, 1.0 x22, 2.0 x24, 2.5, 3.0 x2; the 40th percentile
        # is the ceil(0.4 x 72) = 29th value: 1.0
        "base_load_kwh": 1.0,
        "weekend_weekday_ratio": 48.0 / ((28.0 + 14.0) / 2),
        "evening_share": (3.5 + 7.5 + 5.5 + 3.5) / 3 / 30.0,  # hours 17, 18, 19, 20
        "seasonal_ratio": ((28.0 + 48.0) / 2) / 14.0,  # January days / the July day
        "sector": "residential",
        "region": "west",
        "age_band": "45-54",
        "income_band": "upper_middle",
    }
    # E2 (15-minute) and E3 (hourly) use the same energy: a Monday ramp and a flat Saturday.
    # Hour means ((h + 1) / 4 + 1) / 2, summing to (75 + 24) / 2 = 49.5.
    ramp = {
        "as_of": as_of,
        "mean_daily_kwh": (75.0 + 24.0) / 2,
        **{HOURS[h]: ((h + 1) * 0.25 + 1.0) / 2 / 49.5 for h in range(24)},
        "peak_hour": 23,
        "load_factor": (99.0 / 48) / 6.0,
        # 48 hourly loads: 0.25, 0.5, 0.75, then 1.0 x25 (positions 4..28): ceil(0.4 x 48) = 20th
        "base_load_kwh": 1.0,
        "weekend_weekday_ratio": 24.0 / 75.0,
        "evening_share": ((4.5 + 4.75 + 5.0 + 5.25) + 4 * 1.0) / 2 / 49.5,
        "seasonal_ratio": None,  # July only: no winter day
        "sector": None,
    }
    e2 = {"customer_id": "E2", **ramp, "region": None, "age_band": None, "income_band": None}
    e3 = {"customer_id": "E3", **ramp, "region": "east", "age_band": None, "income_band": None}
    return [e1, e2, e3]


def test_energy_features_by_hand(spark: SparkSession) -> None:
    readings, customers = energy_input(spark)
    as_of = date(2024, 7, 31)
    actual = energy_features(readings, as_of=as_of, settings=SETTINGS, customers=customers)
    assert_rows(actual, expected_energy(as_of))
    assert_catalog_schema(actual, "energy")


def test_energy_profile_does_not_depend_on_the_reading_interval(spark: SparkSession) -> None:
    readings, _ = energy_input(spark)
    actual = energy_features(readings, as_of=date(2024, 7, 31), settings=SETTINGS)
    rows = {r["customer_id"]: r.asDict() for r in actual.collect()}
    quarter, hourly = rows.pop("E2"), rows.pop("E3")
    assert_same_row(quarter, hourly | {"customer_id": "E2"})
    for row in actual.select(*HOURS).collect():
        assert sum(row) == pytest.approx(1.0, rel=1e-12)


# --------------------------------------------------------------------------------------------
# contract


def test_catalog_documents_every_feature_once_with_a_unit_and_a_meaning() -> None:
    names = [(f.domain, f.name) for f in CATALOG]
    assert len(names) == len(set(names))
    assert all(f.unit and f.meaning.endswith((".", ")")) for f in CATALOG)
    assert feature_names("energy")[1:25] == HOURS
    assert feature_names("energy", kind="categorical") == [
        "sector",
        "region",
        "age_band",
        "income_band",
    ]


@pytest.mark.parametrize("domain", ["retail", "telecom", "energy"])
def test_schema_changes_only_with_a_new_feature_version(domain: str) -> None:
    assert schema_fingerprint(domain) == SCHEMA_FINGERPRINTS[domain][FEATURE_VERSION[domain]]
    assert feature_schema(domain).names[:2] == ["customer_id", "as_of"]


def test_bad_arguments_are_refused_with_a_precise_message(spark: SparkSession) -> None:
    transactions, _ = retail_input(spark)
    with pytest.raises(UsageError, match=r"^as_of must be a datetime.date, got datetime$"):
        retail_features(transactions, as_of=datetime(2024, 3, 31), settings=SETTINGS)
    with pytest.raises(InputError, match=r"^transactions lacks column\(s\) amount; has "):
        retail_features(transactions.drop("amount"), as_of=date(2024, 3, 31), settings=SETTINGS)
    with pytest.raises(UsageError, match=r"^unknown domain 'banking'; expected one of retail"):
        build_features("banking", transactions, as_of=date(2024, 3, 31), settings=SETTINGS)


def test_features_defaults_load_from_base_yaml_and_are_validated() -> None:
    features = load_settings(env="test").features
    assert features.weekend_days == [6, 7]
    assert features.telecom.window_days >= 2 * features.telecom.trend_days
    with pytest.raises(
        ConfigError,
        match=r"^config error: features.telecom: window_days must be at least 2 x trend_days$",
    ):
        load_settings(env="test", overrides=["features.telecom.trend_days=60"])
    with pytest.raises(ConfigError, match=r"^config error: features.energy.evening_hours: "):
        load_settings(env="test", overrides=["features.energy.evening_hours=[17, 24]"])
