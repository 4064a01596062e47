"""Silver layer: pure per-customer feature transforms of the three domains.

Each domain function takes its bronze event table (and optionally ``customers``) and returns
one row per customer active in the window ending at ``as_of``, with the columns that
:mod:`segspark.features.catalog` documents. They only build Spark plans: no session, no I/O,
nothing collected.

Example:
    >>> from segspark.config import load_settings
    >>> features = build_features(
    ...     "energy", meter_readings, as_of=date(2024, 3, 31),
    ...     settings=load_settings().features, customers=customers,
    ... )
    >>> features.columns == feature_schema("energy").names
    True
"""

from __future__ import annotations

from datetime import date
from typing import Protocol

from pyspark.sql import DataFrame

from segspark.config import FeaturesSettings
from segspark.errors import UsageError
from segspark.features.catalog import (
    CATALOG,
    FEATURE_VERSION,
    KEY_COLUMNS,
    Feature,
    conform,
    feature_names,
    feature_schema,
    features,
    schema_fingerprint,
)
from segspark.features.energy import energy_features
from segspark.features.retail import retail_features, rfm_scores
from segspark.features.telecom import telecom_features


class FeatureFunction(Protocol):
    """The shape shared by the domain feature functions."""

    def __call__(
        self,
        events: DataFrame,
        /,
        *,
        as_of: date,
        settings: FeaturesSettings,
        customers: DataFrame | None = None,
    ) -> DataFrame: ...


#: The feature function of each domain (its input is the domain's bronze event table).
FEATURE_FUNCTIONS: dict[str, FeatureFunction] = {
    "retail": retail_features,
    "telecom": telecom_features,
    "energy": energy_features,
}


def build_features(
    domain: str,
    events: DataFrame,
    *,
    as_of: date,
    settings: FeaturesSettings,
    customers: DataFrame | None = None,
) -> DataFrame:
    """Dispatch to ``domain``'s feature function (``events``: its bronze event table).

    Example:
        >>> build_features("retail", transactions, as_of=date(2024, 3, 31),
        ...                settings=load_settings().features).columns[:3]
        ['customer_id', 'as_of', 'recency_days']
    """
    try:
        function = FEATURE_FUNCTIONS[domain]
    except KeyError:
        raise UsageError(
            f"unknown domain {domain!r}; expected one of {', '.join(FEATURE_FUNCTIONS)}"
        ) from None
    return function(events, as_of=as_of, settings=settings, customers=customers)


__all__ = [
    "CATALOG",
    "FEATURE_FUNCTIONS",
    "FEATURE_VERSION",
    "KEY_COLUMNS",
    "Feature",
    "FeatureFunction",
    "build_features",
    "conform",
    "energy_features",
    "feature_names",
    "feature_schema",
    "features",
    "retail_features",
    "rfm_scores",
    "schema_fingerprint",
    "telecom_features",
]
