"""The ``features`` step: bronze events -> ``<domain>_features`` (+ ``clv_parameters``).

The edge of the silver layer: it reads the lake, calls the pure feature transforms, fits the CLV
models for retail, writes the tables and records one MLflow run (``step=features``).

* ``<domain>_features`` is partitioned by ``as_of``; recomputing an ``as_of`` replaces exactly
  that partition in one commit. Every row carries ``feature_version``. A new feature version
  evolves the table's schema explicitly (added columns; older partitions read them as null); a
  schema change under the same version is refused.
* ``clv_parameters`` (domain, as_of, model, parameter, value) is partitioned by domain and as_of
  and replaced the same way.
* Retail reads and shuffles the events once: the per-customer aggregates are checkpointed, and
  the features and (with all history, the default) the CLV summary both derive from them.
* The MLflow run starts before anything is written, so an unreachable tracking store stops the
  step with nothing written.
* With ``privacy.pseudonymize`` the ``customer_id`` of the features (and so of every table
  computed from them) is HMAC-SHA-256(key, id) (:mod:`segspark.privacy`). Features, the
  customers' attributes and the CLV scores are joined on the source id first and the result is
  pseudonymised once, so attributes still reach the profiles. The key is loaded before the
  MLflow run starts: a missing key stops the step with nothing written (exit code 2).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import mlflow
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from segspark import clv as clv_models
from segspark.clv import ClvConvergenceError
from segspark.config import Settings
from segspark.errors import InputError, SchemaMismatchError
from segspark.features import FEATURE_FUNCTIONS, FEATURE_VERSION, feature_names
from segspark.features.retail import (
    clv_purchases,
    customer_aggregates,
    features_from_aggregates,
)
from segspark.lake import Lake
from segspark.privacy import pseudonymize, require_key
from segspark.schemas import EVENT_TABLES
from segspark.tracking import step_run

log = logging.getLogger(__name__)


def features_table(domain: str) -> str:
    return f"{domain}_features"


@dataclass
class FeaturesResult:
    """What one ``features`` run wrote."""

    domain: str
    as_of: dt.date
    rows: int
    version: int | None
    feature_version: int
    clv: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    clv_error: str | None = None  # why the CLV columns are null (the fit did not converge)


class Computed(NamedTuple):
    """What :func:`compute_features` returns."""

    frame: DataFrame  # the features, with feature_version
    metrics: dict[str, float]  # the CLV metrics (retail)
    parameters: DataFrame | None  # the clv_parameters rows (retail, when the fits converged)
    clv_error: str | None = None  # why the CLV fits failed, when they did


def compute_features(
    lake: Lake, settings: Settings, *, domain: str, as_of: dt.date, key: bytes | None = None
) -> Computed:
    """The features frame for ``as_of`` (with ``feature_version``), the CLV metrics and the
    ``clv_parameters`` rows (retail only). With ``key``, ``customer_id`` is pseudonymised."""
    table = EVENT_TABLES[domain]
    if not lake.exists(table):
        raise InputError(
            f"no {table} table in the lake {lake.root}: ingest or generate {domain} events first"
        )
    events = lake.read(table)
    customers = lake.read("customers") if lake.exists("customers") else None
    if domain == "retail":
        computed = _retail(lake, settings, events=events, customers=customers, as_of=as_of)
    else:
        computed = Computed(
            FEATURE_FUNCTIONS[domain](
                events, as_of=as_of, settings=settings.features, customers=customers
            ),
            {},
            None,
        )
    frame = computed.frame
    if key is not None:
        frame = pseudonymize(frame, key)
    frame = frame.withColumn("feature_version", F.lit(FEATURE_VERSION[domain]))
    return computed._replace(frame=frame)


def _retail(
    lake: Lake,
    settings: Settings,
    *,
    events: DataFrame,
    customers: DataFrame | None,
    as_of: dt.date,
) -> Computed:
    """Retail features with the CLV columns, the CLV metrics and the ``clv_parameters`` rows.

    The per-customer aggregates are computed once (checkpointed); with all history in the
    features (``features.retail.window_days: null``, the default) the CLV summary derives from
    them too, so the events are read and shuffled once for the whole step.
    """
    aggregates = customer_aggregates(events, as_of=as_of, settings=settings.features)
    if settings.features.retail.window_days is None:
        summary = clv_models.summary_from_purchases(
            clv_purchases(aggregates), calibration_end=as_of
        )
    else:
        summary = clv_models.clv_summary(events, calibration_end=as_of).localCheckpoint(eager=True)
    cfg = settings.clv
    try:
        bgnbd, gamma_gamma = clv_models.fit_clv(summary, cfg)
    except ClvConvergenceError as exc:
        if cfg.on_failure == "error":
            raise
        # a short history often has no interior likelihood maximum; the behavioural features
        # still stand, the CLV columns stay null and the run says why
        log.warning("retail CLV at %s not estimated: %s", as_of, exc)
        frame = features_from_aggregates(
            aggregates, as_of=as_of, settings=settings.features, customers=customers
        )
        return Computed(frame, {"clv_failed": 1.0}, None, str(exc))
    scored = clv_models.score_clv(
        summary,
        bgnbd,
        gamma_gamma,
        horizon_weeks=cfg.horizon_weeks,
        clv_months=cfg.clv_months,
        monthly_discount_rate=clv_models.monthly_rate(
            cfg.discount_rate, period=cfg.discount_period
        ),
    ).localCheckpoint(eager=True)  # the pandas UDF runs once, whatever reads the scores later
    frame = features_from_aggregates(
        aggregates, as_of=as_of, settings=settings.features, customers=customers, clv=scored
    )
    parameters = clv_models.clv_parameters(
        lake.spark, bgnbd, gamma_gamma, domain="retail", as_of=as_of
    )
    return Computed(frame, clv_models.clv_metrics(bgnbd, gamma_gamma), parameters)


def _evolution(lake: Lake, table: str, frame: DataFrame, version: int) -> tuple[DataFrame, bool]:
    """``frame`` in the table's column order, and whether writing it must add columns.

    Columns match by name and type, whatever their order: a table that gained columns from a
    newer feature version holds them after the older ones, while a fresh computation has them
    where the catalog lists them. Added columns under a newer feature version evolve the table;
    any other difference under the same (or an older) version is a silent mismatch and refused.
    """
    if not lake.exists(table):
        return frame, False
    current = lake.schema(table)
    if {f.name: f.dataType for f in current.fields} == {
        f.name: f.dataType for f in frame.schema.fields
    }:
        return frame.select(*current.fieldNames()), False
    row = lake.read(table).agg(F.max("feature_version")).first()
    stored = int(row[0]) if row is not None and row[0] is not None else 0
    if version <= stored:
        raise SchemaMismatchError(
            f"{table} holds feature_version {stored} with another schema than version {version} "
            "computes; bump FEATURE_VERSION in segspark/features/catalog.py"
        )
    log.warning("%s: feature_version %s -> %s adds columns", table, stored, version)
    return frame, True


def _summary_metrics(frame: DataFrame, domain: str) -> dict[str, float]:
    numeric = feature_names(domain, kind="numeric")
    aggs = [F.count(F.lit(1)).alias("rows")]
    for name in numeric:
        aggs.append(F.avg(name).alias(f"{name}__mean"))
        aggs.append(F.stddev_samp(name).alias(f"{name}__std"))
    row = frame.agg(*aggs).first()
    assert row is not None
    out: dict[str, float] = {}
    for key, value in row.asDict().items():
        if value is None:
            continue
        name, _, stat = key.partition("__")
        out[f"feature_{stat}_{name}" if stat else key] = float(value)
    return out


def run_features(
    spark: SparkSession,
    lake: Lake,
    settings: Settings,
    *,
    domain: str,
    as_of: dt.date,
    tracking_uri: str,
) -> FeaturesResult:
    """Compute and store ``domain``'s features at ``as_of``; one MLflow run (step=features).

    Example:
        >>> result = run_features(spark, lake, settings, domain="retail",
        ...                       as_of=date(2024, 3, 31), tracking_uri=uri)
        >>> result.rows
    """
    table = features_table(domain)
    version = FEATURE_VERSION[domain]
    key = require_key(settings.privacy)
    params: dict[str, Any] = {
        "feature_version": version,
        "features_table": table,
        "pseudonymized": key is not None,
    }
    with step_run(
        settings, tracking_uri, domain=domain, step="features", as_of=as_of, params=params
    ) as run:
        frame, clv_metrics, parameters, clv_error = compute_features(
            lake, settings, domain=domain, as_of=as_of, key=key
        )
        frame, evolve = _evolution(lake, table, frame, version)
        written = lake.write(
            table,
            frame,
            mode="overwrite",
            partition_by=["as_of"],
            replace={"as_of": as_of},
            merge_schema=evolve,
        )
        if parameters is not None:
            lake.write(
                "clv_parameters",
                parameters,
                mode="overwrite",
                partition_by=["domain", "as_of"],
                replace={"domain": domain, "as_of": as_of},
            )
        stored = lake.read(table).where(F.col("as_of") == F.lit(as_of))
        metrics = _summary_metrics(stored, domain)
        metrics.update(clv_metrics)
        mlflow.log_metrics(metrics)
        rows = int(metrics["rows"])
        if rows == 0:
            log.warning("%s: no customer has events up to %s", table, as_of)
        return FeaturesResult(
            domain, as_of, rows, written.version, version, clv_metrics, run.info.run_id, clv_error
        )
