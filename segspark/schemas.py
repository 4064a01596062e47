"""Schemas of the bronze tables (DESIGN.md "Table contract"), shared by ingest and generators.

Bronze rows carry ``_source`` (where the row came from) and ``_ingest_id`` (which ingest or
generation wrote it). Quarantine tables hold every raw column as a string plus
``_reject_reason``, ``_source`` and ``_ingest_id``.
"""

from __future__ import annotations

from pyspark.sql.types import (
    BooleanType,
    DateType,
    DoubleType,
    IntegerType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

LINEAGE = [
    StructField("_source", StringType(), False),
    StructField("_ingest_id", StringType(), False),
]

TRANSACTIONS = StructType(
    [
        StructField("customer_id", StringType(), False),
        StructField("event_time", TimestampType(), False),
        StructField("amount", DoubleType(), False),
        StructField("quantity", IntegerType(), True),
        StructField("transaction_id", StringType(), False),
        *LINEAGE,
    ]
)

CDRS = StructType(
    [
        StructField("customer_id", StringType(), False),
        StructField("event_time", TimestampType(), False),
        StructField("event_type", StringType(), False),  # voice | sms | data
        StructField("direction", StringType(), True),  # out | in
        StructField("duration_s", DoubleType(), True),
        StructField("data_mb", DoubleType(), True),
        StructField("is_international", BooleanType(), True),
        StructField("counterparty_id", StringType(), True),
        *LINEAGE,
    ]
)

METER_READINGS = StructType(
    [
        StructField("customer_id", StringType(), False),
        StructField("reading_time", TimestampType(), False),
        StructField("kwh", DoubleType(), False),
        *LINEAGE,
    ]
)

CUSTOMERS = StructType(
    [
        StructField("customer_id", StringType(), False),
        StructField("domain", StringType(), True),
        StructField("region", StringType(), True),
        StructField("age_band", StringType(), True),
        StructField("income_band", StringType(), True),
        StructField("sector", StringType(), True),  # energy: residential/commercial/...
        StructField("signup_date", DateType(), True),
        *LINEAGE,
    ]
)

SYNTHETIC_TRUTH = StructType(
    [
        StructField("domain", StringType(), False),
        StructField("customer_id", StringType(), False),
        StructField("as_of", DateType(), False),
        StructField("true_segment", StringType(), False),
    ]
)

EVENT_TABLES = {
    "retail": "transactions",
    "telecom": "cdrs",
    "energy": "meter_readings",
}

BRONZE = {
    "transactions": TRANSACTIONS,
    "cdrs": CDRS,
    "meter_readings": METER_READINGS,
    "customers": CUSTOMERS,
}

EVENT_ENUMS = {
    "cdrs": {"event_type": ("voice", "sms", "data"), "direction": ("out", "in")},
}

__all__ = [
    "BRONZE",
    "CDRS",
    "CUSTOMERS",
    "EVENT_ENUMS",
    "EVENT_TABLES",
    "METER_READINGS",
    "SYNTHETIC_TRUTH",
    "TRANSACTIONS",
]
