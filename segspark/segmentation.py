"""The segmentation steps: ``train``, ``score``, ``migrate`` and ``run``.

The edge of the gold layer: these functions read the silver features, call the model and snapshot
libraries, write the gold tables and track each step in MLflow.

* ``train`` fits and selects the model (:func:`segspark.model.select.select_model`), matches its
  segments to the champion's (Hungarian matching on centroids in the champion's standardized
  space) so ``segment_id`` stays stable, makes that mapping the model's last stage, logs and
  registers the PipelineModel as ``segspark-<domain>`` (alias ``champion`` unless told not to),
  and writes the registry, the snapshot and the profiles. A failure marks the MLflow run FAILED
  and leaves the previous champion in place.
* ``score`` applies the champion to the features of a date (no refit) and writes the snapshot and
  profiles.
* ``migrate`` compares two snapshots: ``segment_migrations``, ``segment_migration_matrix`` and
  ``segment_drift`` (PSI of segment shares and of each feature).
* ``run`` chains features, score (or train when there is no champion or ``retrain``), and the
  migration against the previous snapshot. Every write replaces its partition, so a re-run gives
  the same tables.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import mlflow
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from segspark import __version__, faults
from segspark.config import Settings
from segspark.drift import retrain_recommended, segment_drift, write_drift
from segspark.errors import InputError, UsageError
from segspark.features.step import features_table, run_features
from segspark.lake import Lake
from segspark.model.artifacts import log_profiles, log_selection
from segspark.model.pipeline import cluster_centers, with_segment_mapping
from segspark.model.profile import profile_segments
from segspark.model.select import select_model
from segspark.snapshots import (
    REGISTRY_TABLE,
    active_segments,
    centroids_in_space_of,
    match_segments,
    migration_matrix,
    migrations,
    next_segment_id,
    previous_snapshot_date,
    read_snapshot,
    segment_names,
    snapshot_frame,
    update_registry,
    write_migrations,
    write_snapshot,
)
from segspark.tracking import configure, step_run

log = logging.getLogger(__name__)

CHAMPION = "champion"
PROFILES_TABLE = "segment_profiles"
FEATURE_PROFILES_TABLE = "segment_feature_profiles"


def model_name(domain: str) -> str:
    """The registered model of a domain: ``segspark-<domain>``."""
    return f"segspark-{domain}"


@dataclass
class SegmentationResult:
    """What a train or score step wrote."""

    domain: str
    as_of: dt.date
    step: str
    customers: int
    segments: dict[int, str]
    model_version: str
    run_id: str
    k: int | None = None
    rule: str | None = None
    promoted: bool = False


@dataclass
class MigrationResult:
    """What a migrate step wrote."""

    domain: str
    from_as_of: dt.date
    to_as_of: dt.date
    customers: int
    drift: dict[str, float] = field(default_factory=dict)
    retrain_recommended: bool = False


def _features_at(lake: Lake, domain: str, as_of: dt.date) -> DataFrame:
    table = features_table(domain)
    if not lake.exists(table):
        raise InputError(f"no {table} table: run `segspark features --domain {domain}` first")
    frame = lake.read(table).where(F.col("as_of") == F.lit(as_of))
    if frame.isEmpty():
        raise InputError(
            f"{table} has no rows at {as_of}: run `segspark features --domain {domain} "
            f"--as-of {as_of}` first"
        )
    return frame


def _champion(domain: str) -> tuple[PipelineModel, str] | None:
    """The champion PipelineModel and its version, or None when there is none yet."""
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        version = client.get_model_version_by_alias(model_name(domain), CHAMPION)
    except MlflowException:
        return None
    model = mlflow.spark.load_model(f"models:/{model_name(domain)}@{CHAMPION}")
    return model, str(version.version)


def _signature(features: DataFrame, columns: list[str]) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    kinds = {"double": "double", "int": "integer", "bigint": "long", "string": "string"}
    dtypes = dict(features.dtypes)
    inputs = Schema([ColSpec(kinds.get(dtypes[c], "string"), c) for c in columns])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("integer", "segment_id")]))


def _pip_requirements() -> list[str]:
    import pyspark

    return [f"pyspark=={pyspark.__version__}", f"mlflow=={mlflow.__version__}"]


def _write_profiles(
    lake: Lake,
    profiles: DataFrame,
    feature_profiles: DataFrame,
    names: dict[int, str],
    *,
    domain: str,
    as_of: dt.date,
) -> None:
    spark = lake.spark
    name_frame = spark.createDataFrame(
        sorted(names.items()), "segment_id int, registered_name string"
    )
    keyed = [F.lit(domain).alias("domain"), F.lit(as_of).alias("as_of")]
    profile_rows = (
        profiles.join(name_frame, "segment_id", "left")
        .withColumn("segment_name", F.coalesce("registered_name", "segment_name"))
        .select(
            *keyed,
            F.col("segment_id").cast("int"),
            "segment_name",
            F.col("customers").cast("long"),
            F.col("share").cast("double"),
            F.col("value").cast("double"),
            F.col("value_share").cast("double"),
            F.col("withheld").cast("boolean"),
        )
    )
    feature_rows = feature_profiles.select(
        *keyed,
        F.col("segment_id").cast("int"),
        "feature",
        F.col("mean").cast("double"),
        F.col("z_score").cast("double"),
    )
    for table, frame in ((PROFILES_TABLE, profile_rows), (FEATURE_PROFILES_TABLE, feature_rows)):
        lake.write(
            table,
            frame,
            mode="overwrite",
            partition_by=["domain", "as_of"],
            replace={"domain": domain, "as_of": as_of},
        )


def _publish(
    lake: Lake,
    scored: DataFrame,
    profile: Any,
    names: dict[int, str],
    *,
    domain: str,
    as_of: dt.date,
    version: str,
    run_id: str,
    registry_frame: DataFrame | None = None,
) -> None:
    """Write the snapshot (after any registry update) and the profiles; log the profiles."""
    snapshot = snapshot_frame(
        scored,
        names,
        domain=domain,
        as_of=as_of,
        model_name=model_name(domain),
        model_version=version,
        run_id=run_id,
    )
    write_snapshot(lake, snapshot, domain=domain, as_of=as_of, registry_frame=registry_frame)
    _write_profiles(
        lake, profile.profiles, profile.feature_profiles, names, domain=domain, as_of=as_of
    )
    log_profiles(profile.profiles, profile.feature_profiles)


def train(
    spark: SparkSession,
    lake: Lake,
    settings: Settings,
    *,
    domain: str,
    as_of: dt.date,
    tracking_uri: str,
    k: int | None = None,
    k_min: int | None = None,
    k_max: int | None = None,
    algorithm: str | None = None,
    promote: bool = True,
) -> SegmentationResult:
    """Fit, select, match identities, register and snapshot ``domain`` at ``as_of``.

    Example:
        >>> result = train(spark, lake, settings, domain="retail", as_of=date(2024, 3, 31),
        ...                tracking_uri=uri)
        >>> result.k, sorted(result.segments.values())
    """
    cfg = settings.model
    features = _features_at(lake, domain, as_of)
    params = {
        "feature_version": int(features.agg(F.max("feature_version")).first()[0]),  # type: ignore[index]
        "seed": cfg.seed,
        "promote": promote,
    }
    with step_run(
        settings, tracking_uri, domain=domain, step="train", as_of=as_of, params=params
    ) as run:
        result = select_model(
            features,
            settings=cfg,
            k=k,
            k_min=k_min,
            k_max=k_max,
            algorithm=algorithm,  # type: ignore[arg-type]
        )
        log_selection(
            result,
            threshold=cfg.stability_threshold,
            min_segment_size=settings.privacy.min_segment_size,
        )
        mlflow.log_metric("rows", result.rows)

        registry = lake.read(REGISTRY_TABLE) if lake.exists(REGISTRY_TABLE) else None
        previous = active_segments(registry, domain)
        champion = _champion(domain) if previous else None
        centroids = cluster_centers(result.model)
        comparable = centroids_in_space_of(result.model, champion[0]) if champion else centroids
        match = match_segments(
            previous,
            comparable,
            threshold=settings.snapshots.identity_max_distance,
            next_id=next_segment_id(registry, domain),
        )
        mlflow.log_metrics(
            {"segments_matched": len(match.matched), "segments_new": len(match.new_ids)}
        )
        model = with_segment_mapping(result.model, match.mapping)
        scored = model.transform(features).persist()
        try:
            profile = profile_segments(
                scored, cfg, privacy=settings.privacy, release=(domain, as_of)
            )
            by_cluster = {c: profile.names.get(s, f"Segment {s}") for c, s in match.mapping.items()}
            info = mlflow.spark.log_model(
                model,
                "model",
                registered_model_name=model_name(domain),
                signature=_signature(features, list(result.features)),
                pip_requirements=_pip_requirements(),
            )
            version = str(info.registered_model_version)
            new_registry = update_registry(
                spark,
                registry,
                match,
                domain=domain,
                as_of=as_of,
                model_version=version,
                centroids=centroids,
                names=by_cluster,
            )
            names = segment_names(new_registry, domain)
            _publish(
                lake,
                scored,
                profile,
                names,
                domain=domain,
                as_of=as_of,
                version=version,
                run_id=run.info.run_id,
                registry_frame=new_registry,
            )
            customers = int(result.rows)
        finally:
            scored.unpersist()
        faults.point("segmentation.before_promote")
        if promote:
            mlflow.MlflowClient().set_registered_model_alias(model_name(domain), CHAMPION, version)
        return SegmentationResult(
            domain,
            as_of,
            "train",
            customers,
            names_in_use(names, match.mapping.values()),
            version,
            run.info.run_id,
            k=result.k,
            rule=result.rule,
            promoted=promote,
        )


def names_in_use(names: dict[int, str], ids: Any) -> dict[int, str]:
    """The names of the segment ids a model issues, by id."""
    return {int(i): names[int(i)] for i in sorted(ids)}


def score(
    spark: SparkSession,
    lake: Lake,
    settings: Settings,
    *,
    domain: str,
    as_of: dt.date,
    tracking_uri: str,
) -> SegmentationResult:
    """Assign every customer of ``as_of`` with the champion model (no refit) and snapshot it."""
    configure(settings, tracking_uri)
    champion = _champion(domain)
    if champion is None:
        raise UsageError(
            f"no champion model for {domain}: run `segspark train --domain {domain}` first"
        )
    model, version = champion
    features = _features_at(lake, domain, as_of)
    with step_run(
        settings,
        tracking_uri,
        domain=domain,
        step="score",
        as_of=as_of,
        params={"model_version": version},
    ) as run:
        registry = lake.read(REGISTRY_TABLE)
        names = segment_names(registry, domain)
        scored = model.transform(features).persist()
        try:
            _publish(
                lake,
                scored,
                profile_segments(
                    scored, settings.model, privacy=settings.privacy, release=(domain, as_of)
                ),
                names,
                domain=domain,
                as_of=as_of,
                version=version,
                run_id=run.info.run_id,
            )
            ids = [r[0] for r in scored.select("segment_id").distinct().collect()]
            customers = scored.count()
        finally:
            scored.unpersist()
        mlflow.log_metric("rows", customers)
        return SegmentationResult(
            domain,
            as_of,
            "score",
            customers,
            names_in_use(names, ids),
            version,
            run.info.run_id,
        )


def migrate(
    lake: Lake,
    settings: Settings,
    *,
    domain: str,
    from_as_of: dt.date,
    to_as_of: dt.date,
) -> MigrationResult:
    """Migrations, their matrix and the drift between two snapshots of ``domain``."""
    if from_as_of >= to_as_of:
        raise UsageError(f"--from {from_as_of} must be before --to {to_as_of}")
    before = read_snapshot(lake, domain=domain, as_of=from_as_of)
    after = read_snapshot(lake, domain=domain, as_of=to_as_of)
    for date, frame in ((from_as_of, before), (to_as_of, after)):
        if frame.isEmpty():
            raise InputError(f"no {domain} snapshot at {date}: score or train that date first")
    value_col = settings.model.value_column
    features = lake.read(features_table(domain))
    values = None
    if value_col is not None:
        values = features.select(
            "customer_id", "as_of", F.col(value_col).cast("double").alias("value")
        )
    moves = migrations(
        before, after, values, domain=domain, from_as_of=from_as_of, to_as_of=to_as_of
    ).persist()
    try:
        matrix = migration_matrix(moves)
        write_migrations(
            lake, moves, matrix, domain=domain, from_as_of=from_as_of, to_as_of=to_as_of
        )
        customers = moves.count()
    finally:
        moves.unpersist()
    drift = segment_drift(
        before,
        after,
        features.where(F.col("as_of") == F.lit(from_as_of)),
        features.where(F.col("as_of") == F.lit(to_as_of)),
        list(settings.model.features),
        domain=domain,
        from_as_of=from_as_of,
        to_as_of=to_as_of,
        settings=settings.snapshots,
    ).persist()
    try:
        write_drift(lake, drift, domain=domain, from_as_of=from_as_of, to_as_of=to_as_of)
        rows = [r.asDict() for r in drift.collect()]
    finally:
        drift.unpersist()
    values_by_name = {f"{r['kind']}:{r['name']}": float(r["psi"]) for r in rows}
    return MigrationResult(
        domain,
        from_as_of,
        to_as_of,
        customers,
        values_by_name,
        retrain_recommended(rows, settings.snapshots.psi_retrain),
    )


def run(
    spark: SparkSession,
    lake: Lake,
    settings: Settings,
    *,
    domain: str,
    as_of: dt.date,
    tracking_uri: str,
    retrain: bool = False,
) -> tuple[SegmentationResult, MigrationResult | None]:
    """Features, then score with the champion (or train), then migrate from the last snapshot."""
    run_features(spark, lake, settings, domain=domain, as_of=as_of, tracking_uri=tracking_uri)
    configure(settings, tracking_uri)
    if retrain or _champion(domain) is None:
        result = train(spark, lake, settings, domain=domain, as_of=as_of, tracking_uri=tracking_uri)
    else:
        result = score(spark, lake, settings, domain=domain, as_of=as_of, tracking_uri=tracking_uri)
    faults.point("segmentation.before_migrate")
    previous = previous_snapshot_date(lake, domain, as_of)
    moved = None
    if previous is not None:
        moved = migrate(lake, settings, domain=domain, from_as_of=previous, to_as_of=as_of)
        with mlflow.start_run(run_id=result.run_id):
            mlflow.log_metrics({f"psi_{k.replace(':', '_')}": v for k, v in moved.drift.items()})
    log.info("segspark %s: %s %s at %s", __version__, result.step, domain, as_of)
    return result, moved
