"""Stable segment identity, segment snapshots and customer migrations (DESIGN.md tables).

* **Identity.** A retrained model's centroids are matched to the champion's active segments by
  Hungarian assignment (:func:`scipy.optimize.linear_sum_assignment`) on Euclidean distances in
  the champion's standardized space (:func:`match_segments`). A pair within
  ``snapshots.identity_max_distance`` keeps the champion's ``segment_id`` and name; an unmatched
  new cluster gets a fresh id above every id ever issued in the domain; an unmatched champion
  segment is retired. Ids are never reused.
* **Registry.** ``segment_registry`` holds every id ever issued, one domain partition each
  (:func:`update_registry`); retired rows keep their last centroid and model version.
* **Snapshots.** ``segment_snapshots`` holds one partition per (domain, as_of), replaced in one
  commit (:func:`write_snapshot`); older contents stay readable by Delta version.
* **Migrations.** ``segment_migrations`` (one row per customer in either snapshot) and
  ``segment_migration_matrix`` (one row per (from, to) pair), replaced per
  (domain, from_as_of, to_as_of) (:func:`write_migrations`).

Only k-sized things reach the driver: registry rows, centroids, mappings, names.

Example:
    >>> previous = active_segments(lake.read(REGISTRY_TABLE), "retail")
    >>> result = match_segments(previous, new_centroids, threshold=1.0,
    ...                         next_id=next_segment_id(lake.read(REGISTRY_TABLE), "retail"))
    >>> registry = update_registry(spark, lake.read(REGISTRY_TABLE), result, domain="retail",
    ...                            as_of=as_of, model_version="3", centroids=own_centroids,
    ...                            names=proposed_names)
    >>> scored = with_segment_mapping(model, result.mapping).transform(features)
    >>> snapshot = snapshot_frame(scored, segment_names(registry, "retail"), domain="retail",
    ...                           as_of=as_of, model_name="segspark-retail", model_version="3")
    >>> write_snapshot(lake, snapshot, domain="retail", as_of=as_of, registry_frame=registry)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pyspark.ml import PipelineModel
from pyspark.ml.feature import PCAModel, StandardScalerModel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)
from scipy.optimize import linear_sum_assignment

from segspark import faults
from segspark.errors import InputError, UsageError
from segspark.lake import Lake, PartitionValue, WriteResult

log = logging.getLogger(__name__)

SNAPSHOTS_TABLE = "segment_snapshots"
REGISTRY_TABLE = "segment_registry"
MIGRATIONS_TABLE = "segment_migrations"
MATRIX_TABLE = "segment_migration_matrix"

SNAPSHOT_PARTITIONS = ("domain", "as_of")
REGISTRY_PARTITIONS = ("domain",)
MIGRATION_PARTITIONS = ("domain", "from_as_of", "to_as_of")

SNAPSHOT_SCHEMA = StructType(
    [
        StructField("domain", StringType(), False),
        StructField("as_of", DateType(), False),
        StructField("customer_id", StringType(), False),
        StructField("segment_id", IntegerType(), False),
        StructField("segment_name", StringType(), False),
        StructField("model_name", StringType(), False),
        StructField("model_version", StringType(), False),
        StructField("run_id", StringType(), True),
    ]
)

REGISTRY_SCHEMA = StructType(
    [
        StructField("domain", StringType(), False),
        StructField("segment_id", IntegerType(), False),
        StructField("segment_name", StringType(), False),
        StructField("centroid", ArrayType(DoubleType(), False), False),
        StructField("first_as_of", DateType(), False),
        StructField("retired_as_of", DateType(), True),
        StructField("model_version", StringType(), False),
    ]
)

MIGRATIONS_SCHEMA = StructType(
    [
        StructField("domain", StringType(), False),
        StructField("from_as_of", DateType(), False),
        StructField("to_as_of", DateType(), False),
        StructField("customer_id", StringType(), False),
        StructField("from_segment_id", IntegerType(), True),
        StructField("to_segment_id", IntegerType(), True),
        StructField("value", DoubleType(), True),
    ]
)

MATRIX_SCHEMA = StructType(
    [
        StructField("domain", StringType(), False),
        StructField("from_as_of", DateType(), False),
        StructField("to_as_of", DateType(), False),
        StructField("from_segment_id", IntegerType(), True),
        StructField("to_segment_id", IntegerType(), True),
        StructField("customers", LongType(), False),
        StructField("share_of_from", DoubleType(), True),
        StructField("value", DoubleType(), True),
    ]
)

DateLike = dt.date | str


def as_date(value: DateLike, what: str = "as_of") -> dt.date:
    """``value`` as a :class:`datetime.date` (ISO ``YYYY-MM-DD`` strings are parsed).

    Example:
        >>> as_date("2024-01-31")
        datetime.date(2024, 1, 31)
    """
    if isinstance(value, dt.datetime):
        raise UsageError(f"{what} must be a date, not a timestamp: {value!r}")
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be an ISO date YYYY-MM-DD, got {value!r}") from None


def _require_columns(df: DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{what} lacks column(s) {', '.join(missing)}")


# --------------------------------------------------------------------------------------------
# identity


@dataclass(frozen=True)
class Registered:
    """An active segment of the champion: its id, name and standardized centroid."""

    segment_id: int
    name: str
    centroid: Sequence[float]


@dataclass(frozen=True)
class MatchResult:
    """The outcome of matching a retrained model's clusters to the champion's segments.

    ``mapping`` maps every cluster index to its ``segment_id`` (the model's last stage);
    ``names`` the kept name of each matched ``segment_id``; ``new_ids`` the ids issued in this
    round; ``retired`` the champion ids left unmatched; ``distances`` the distance from each
    cluster to its Hungarian partner (absent when it had none); ``next_id`` the first id not
    yet issued after this round.
    """

    mapping: dict[int, int]
    names: dict[int, str]
    new_ids: tuple[int, ...]
    retired: tuple[int, ...]
    distances: dict[int, float]
    next_id: int

    @property
    def matched(self) -> dict[int, int]:
        """Cluster index -> kept ``segment_id``, for the clusters that matched."""
        return {c: s for c, s in self.mapping.items() if s in self.names}

    @property
    def new_clusters(self) -> dict[int, int]:
        """Cluster index -> newly issued ``segment_id``."""
        return {c: s for c, s in self.mapping.items() if s not in self.names}


def _matrix(rows: Sequence[Sequence[float]], what: str) -> np.ndarray:
    try:
        array = np.asarray([[float(v) for v in row] for row in rows], dtype=float)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be lists of numbers") from None
    if rows and array.ndim != 2:
        raise UsageError(f"{what} must all have the same length")
    if array.size and not np.isfinite(array).all():
        raise UsageError(f"{what} must be finite")
    return array


def match_segments(
    previous: Sequence[Registered],
    new_centroids: Sequence[Sequence[float]],
    *,
    threshold: float,
    next_id: int,
) -> MatchResult:
    """Match new clusters to the champion's segments (Hungarian assignment, Euclidean).

    ``new_centroids`` (indexed by cluster index) must be in the same standardized space as the
    ``previous`` centroids (see :func:`rescale_centroids`). Pairs within ``threshold`` keep the
    champion's id and name; other clusters get ids ``next_id, next_id + 1, ...`` in cluster
    order; champion segments left without a partner are retired.

    Example:
        >>> old = [Registered(0, "Loyal", [1.0, 0.0]), Registered(1, "Rare", [-1.0, 0.0])]
        >>> result = match_segments(old, [[-0.9, 0.0], [5.0, 5.0]], threshold=0.5, next_id=2)
        >>> result.mapping, result.retired, result.new_ids
        ({0: 1, 1: 2}, (0,), (2,))
    """
    if not math.isfinite(threshold) or threshold < 0:
        raise UsageError(f"threshold must be a finite number >= 0, got {threshold}")
    if not new_centroids:
        raise UsageError("new_centroids is empty: a model has at least one cluster")
    ids = [int(p.segment_id) for p in previous]
    if len(set(ids)) != len(ids):
        raise UsageError(f"previous segments repeat a segment_id: {sorted(ids)}")
    floor = max(ids) + 1 if ids else 0
    if next_id < floor:
        raise UsageError(
            f"next_id {next_id} would reuse an issued segment_id; it must be at least {floor}"
        )
    new = _matrix(new_centroids, "new_centroids")
    old = _matrix([p.centroid for p in previous], "previous centroids")
    if previous and old.shape[1] != new.shape[1]:
        raise UsageError(
            f"centroid dimensions differ: previous {old.shape[1]}, new {new.shape[1]} "
            "(were both expressed in the champion's standardized space?)"
        )

    mapping: dict[int, int] = {}
    names: dict[int, str] = {}
    distances: dict[int, float] = {}
    if previous:
        cost = np.linalg.norm(new[:, None, :] - old[None, :, :], axis=2)
        rows, cols = linear_sum_assignment(cost)
        for cluster, j in zip(rows.tolist(), cols.tolist(), strict=True):
            distances[cluster] = float(cost[cluster, j])
            if cost[cluster, j] <= threshold:
                mapping[cluster] = ids[j]
                names[ids[j]] = previous[j].name
    issued = next_id
    new_ids: list[int] = []
    for cluster in range(len(new)):
        if cluster not in mapping:
            mapping[cluster] = issued
            new_ids.append(issued)
            issued += 1
    retired = tuple(sorted(i for i in ids if i not in names))
    result = MatchResult(
        mapping=dict(sorted(mapping.items())),
        names=names,
        new_ids=tuple(new_ids),
        retired=retired,
        distances=distances,
        next_id=issued,
    )
    log.info(
        "segments matched %s, new %s, retired %s", result.matched, result.new_ids, result.retired
    )
    return result


def rescale_centroids(
    centroids: Sequence[Sequence[float]],
    *,
    from_mean: Sequence[float],
    from_std: Sequence[float],
    to_mean: Sequence[float],
    to_std: Sequence[float],
) -> list[list[float]]:
    """Move standardized centroids from one StandardScaler's space to another's.

    ``x = c * from_std + from_mean`` recovers the scaler's input, ``(x - to_mean) / to_std``
    standardizes it again. A feature with ``to_std == 0`` maps to 0, as Spark's StandardScaler
    does.

    Example:
        >>> rescale_centroids([[1.0, -1.0]], from_mean=[10.0, 0.0], from_std=[2.0, 1.0],
        ...                   to_mean=[11.0, 1.0], to_std=[4.0, 0.0])
        [[0.25, 0.0]]
    """
    c = _matrix(centroids, "centroids")
    stats = [
        _matrix([v], name)[0]
        for v, name in (
            (from_mean, "from_mean"),
            (from_std, "from_std"),
            (to_mean, "to_mean"),
            (to_std, "to_std"),
        )
    ]
    width = c.shape[1] if c.size else len(stats[0])
    if any(len(s) != width for s in stats):
        raise UsageError(f"means and stds must have one value per feature ({width})")
    f_mean, f_std, t_mean, t_std = stats
    raw = c * f_std + f_mean
    safe = np.where(t_std == 0, 1.0, t_std)
    out = np.where(t_std == 0, 0.0, (raw - t_mean) / safe)
    return [[float(v) for v in row] for row in out]


def scaler_stats(model: PipelineModel) -> tuple[list[float], list[float]]:
    """The (mean, std) a segmentation model standardizes with (0 and 1 where switched off).

    Example:
        >>> mean, std = scaler_stats(model)
        >>> len(mean) == len(settings.features)
        True
    """
    for stage in model.stages:
        if isinstance(stage, StandardScalerModel):
            mean = [float(v) for v in stage.mean.toArray()]
            std = [float(v) for v in stage.std.toArray()]
            if not stage.getWithMean():
                mean = [0.0] * len(mean)
            if not stage.getWithStd():
                std = [1.0] * len(std)
            return mean, std
    raise UsageError("the pipeline model has no StandardScaler stage")


def _pca(model: PipelineModel) -> np.ndarray | None:
    for stage in model.stages:
        if isinstance(stage, PCAModel):
            return np.asarray(stage.pc.toArray(), dtype=float)
    return None


def centroids_in_space_of(model: PipelineModel, reference: PipelineModel) -> list[list[float]]:
    """``model``'s cluster centres expressed in ``reference``'s clustered space.

    Both models must cluster the same features with the same transforms before the scaler.
    With PCA, a centre is lifted back to standardized space with the components (an orthogonal
    projection, so exact only inside the components' span) before rescaling.

    Example:
        >>> match_segments(active, centroids_in_space_of(retrained, champion),
        ...                threshold=1.0, next_id=next_id)
    """
    from segspark.model.pipeline import cluster_centers

    centres = np.asarray(cluster_centers(model), dtype=float)
    pc = _pca(model)
    if pc is not None:
        centres = centres @ pc.T
    mean, std = scaler_stats(model)
    ref_mean, ref_std = scaler_stats(reference)
    moved = np.asarray(
        rescale_centroids(
            centres.tolist(), from_mean=mean, from_std=std, to_mean=ref_mean, to_std=ref_std
        ),
        dtype=float,
    )
    ref_pc = _pca(reference)
    if ref_pc is not None:
        moved = moved @ ref_pc
    return [[float(v) for v in row] for row in moved]


# --------------------------------------------------------------------------------------------
# registry


RegistryRow = tuple[str, int, str, list[float], dt.date, dt.date | None, str]
"""One ``segment_registry`` row, in table column order."""


def _domain_rows(registry: DataFrame | None, domain: str) -> list[RegistryRow]:
    if registry is None:
        return []
    _require_columns(registry, REGISTRY_SCHEMA.names, REGISTRY_TABLE)
    rows = registry.where(F.col("domain") == domain).select(*REGISTRY_SCHEMA.names).collect()
    typed: list[RegistryRow] = [
        (
            str(r[0]),
            int(r[1]),
            str(r[2]),
            [float(v) for v in r[3]],
            r[4],
            r[5],
            str(r[6]),
        )
        for r in rows
    ]
    return sorted(typed, key=lambda r: r[1])


def active_segments(registry: DataFrame | None, domain: str) -> list[Registered]:
    """The domain's segments not yet retired, ordered by ``segment_id``.

    Example:
        >>> [s.segment_id for s in active_segments(lake.read(REGISTRY_TABLE), "retail")]
        [0, 1, 3]
    """
    return [Registered(r[1], r[2], r[3]) for r in _domain_rows(registry, domain) if r[5] is None]


def next_segment_id(registry: DataFrame | None, domain: str) -> int:
    """One above the largest ``segment_id`` ever issued in ``domain`` (0 when none was).

    Example:
        >>> next_segment_id(None, "retail")
        0
    """
    if registry is None:
        return 0
    _require_columns(registry, ["domain", "segment_id"], REGISTRY_TABLE)
    top = registry.where(F.col("domain") == domain).agg(F.max("segment_id")).first()
    return 0 if top is None or top[0] is None else int(top[0]) + 1


def segment_names(registry: DataFrame, domain: str) -> dict[int, str]:
    """``segment_id -> segment_name`` for every id the domain ever issued.

    Example:
        >>> segment_names(registry, "retail")
        {0: 'High-Value Loyal', 1: 'Core'}
    """
    return {r[1]: r[2] for r in _domain_rows(registry, domain)}


def _roman(number: int) -> str:
    from segspark.model.profile import roman

    return roman(number)


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    number = 2
    while f"{name} {_roman(number)}" in taken:
        number += 1
    return f"{name} {_roman(number)}"


def update_registry(
    spark: SparkSession,
    previous: DataFrame | None,
    result: MatchResult,
    *,
    domain: str,
    as_of: DateLike,
    model_version: str | int,
    centroids: Sequence[Sequence[float]],
    names: Mapping[int, str],
) -> DataFrame:
    """The domain's registry after a retraining: the frame that replaces its partition.

    ``previous`` is the registry before the round (``None`` for the first model); ``result``
    must come from matching against its active segments. ``centroids`` are the new model's
    centres in its own standardized space (what the next round matches against), indexed by
    cluster; ``names`` proposes a name per cluster, used only for new segments (a name already
    held by an active segment gets a Roman numeral).

    Matched rows take the new centroid and ``model_version`` and keep their name and
    ``first_as_of``; retired rows get ``retired_as_of = as_of``; rows retired earlier stay as
    they were; new ids get a row with ``first_as_of = as_of``.

    Example:
        >>> registry = update_registry(spark, None, match_segments([], c, threshold=1.0,
        ...                            next_id=0), domain="retail", as_of="2024-01-31",
        ...                            model_version="1", centroids=c, names={0: "A", 1: "B"})
    """
    day = as_date(as_of)
    version = str(model_version)
    rows = _domain_rows(previous, domain)
    if len(centroids) != len(result.mapping):
        raise UsageError(
            f"{len(centroids)} centroids for {len(result.mapping)} clusters in the match result"
        )
    width = {len(c) for c in centroids}
    if len(width) != 1:
        raise UsageError("centroids must all have the same length")
    issued = {r[1] for r in rows}
    active = {r[1] for r in rows if r[5] is None}
    reused = sorted(set(result.new_ids) & issued)
    if reused:
        raise UsageError(f"segment_id(s) {reused} were issued before and are never reused")
    if set(result.names) | set(result.retired) != active:
        raise UsageError(
            f"the match result (matched {sorted(result.names)}, retired {list(result.retired)}) "
            f"was not computed against the active segments {sorted(active)} of {domain!r}"
        )
    unnamed = [c for c in result.new_clusters if c not in names]
    if unnamed:
        raise UsageError(f"no proposed name for new cluster(s) {unnamed}")
    cluster_of = {s: c for c, s in result.mapping.items()}

    out: list[RegistryRow] = []
    taken: set[str] = set()
    for r in rows:
        sid = r[1]
        if sid in result.names:
            centroid = [float(v) for v in centroids[cluster_of[sid]]]
            out.append((domain, sid, r[2], centroid, r[4], None, version))
            taken.add(r[2])
        elif sid in result.retired:
            out.append((r[0], sid, r[2], r[3], r[4], day, r[6]))
        else:
            out.append(r)
    for cluster, sid in sorted(result.new_clusters.items(), key=lambda item: item[1]):
        name = _unique(str(names[cluster]), taken)
        taken.add(name)
        centroid = [float(v) for v in centroids[cluster]]
        out.append((domain, sid, name, centroid, day, None, version))
    out.sort(key=lambda r: r[1])
    return spark.createDataFrame(out, REGISTRY_SCHEMA)


# --------------------------------------------------------------------------------------------
# snapshots


@dataclass(frozen=True)
class SnapshotWrite:
    """The commits of :func:`write_snapshot` (``registry`` is None without a registry update)."""

    snapshot: WriteResult
    registry: WriteResult | None
    app_id: str | None = None


def snapshot_frame(
    scored: DataFrame,
    names: Mapping[int, str],
    *,
    domain: str,
    as_of: DateLike,
    model_name: str,
    model_version: str | int,
    run_id: str | None = None,
) -> DataFrame:
    """``segment_snapshots`` rows from a scored frame (``customer_id``, ``segment_id``).

    A ``segment_id`` missing from ``names`` (or a null one) fails the query that materializes
    the frame: a snapshot never holds an unnamed segment.

    Example:
        >>> snapshot_frame(model.transform(features), {0: "Loyal", 1: "Rare"}, domain="retail",
        ...                as_of="2024-01-31", model_name="segspark-retail", model_version="3")
    """
    _require_columns(scored, ["customer_id", "segment_id"], "the scored frame")
    if not names:
        raise UsageError("names is empty: every segment_id needs a name")
    day = as_date(as_of)
    segment = F.col("segment_id").cast("int")
    lookup = F.create_map(*[F.lit(v) for k, n in sorted(names.items()) for v in (int(k), n)])
    name = lookup[segment]
    checked = F.when(
        name.isNull(),
        F.raise_error(
            F.concat(
                F.lit("segment_id "),
                F.coalesce(segment.cast("string"), F.lit("null")),
                F.lit(" has no name in the segment registry"),
            )
        ),
    ).otherwise(name)
    return scored.select(
        F.lit(domain).alias("domain"),
        F.lit(day).alias("as_of"),
        F.col("customer_id").cast("string").alias("customer_id"),
        segment.alias("segment_id"),
        checked.cast("string").alias("segment_name"),
        F.lit(model_name).cast("string").alias("model_name"),
        F.lit(str(model_version)).alias("model_version"),
        F.lit(run_id).cast("string").alias("run_id"),
    )


def registry_app_id(registry_frame: DataFrame, *, domain: str, as_of: DateLike) -> str:
    """The idempotency key shared by a registry update and its snapshot.

    It names the domain, the as_of and a hash of the registry rows (k-sized), so a retry that
    recomputes the same registry reuses the key, and a different registry never does.

    Example:
        >>> registry_app_id(registry, domain="retail", as_of="2024-01-31")
        'segspark.segments:retail:2024-01-31:5f0c...'
    """
    _require_columns(registry_frame, REGISTRY_SCHEMA.names, "the registry frame")
    collected = registry_frame.select(*REGISTRY_SCHEMA.names).collect()
    rows = [
        [
            str(r[0]),
            int(r[1]),
            str(r[2]),
            [repr(float(v)) for v in r[3]],
            str(r[4]),
            None if r[5] is None else str(r[5]),
            str(r[6]),
        ]
        for r in sorted(collected, key=lambda r: (str(r[0]), int(r[1])))
    ]
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]
    return f"segspark.segments:{domain}:{as_date(as_of).isoformat()}:{digest}"


def write_snapshot(
    lake: Lake,
    frame: DataFrame,
    *,
    domain: str,
    as_of: DateLike,
    registry_frame: DataFrame | None = None,
) -> SnapshotWrite:
    """Replace the (domain, as_of) snapshot partition in one commit, after any registry update.

    With ``registry_frame`` the domain's registry partition is replaced first, then the
    snapshot, both under one idempotency key (:func:`registry_app_id`, with the snapshot
    table's next version as the app version). A run that crashed between the two commits and is
    retried with the same registry skips the registry (already committed) and writes the
    snapshot; a completed run repeated later writes both again.

    Example:
        >>> write_snapshot(lake, snapshot, domain="retail", as_of="2024-01-31",
        ...                registry_frame=registry).snapshot.version
        0
    """
    day = as_date(as_of)
    snapshot_replace: dict[str, PartitionValue] = {"domain": domain, "as_of": day}
    if registry_frame is None:
        result = lake.write(
            SNAPSHOTS_TABLE,
            frame,
            mode="overwrite",
            partition_by=SNAPSHOT_PARTITIONS,
            replace=snapshot_replace,
        )
        return SnapshotWrite(result, None)
    app_id = registry_app_id(registry_frame, domain=domain, as_of=day)
    # The snapshot commit is the last of the pair, so its table's version only moves once a
    # pair completed: a retry after a crash in between sees the same version, hence the same key.
    app_version = lake.version(SNAPSHOTS_TABLE) + 1 if lake.exists(SNAPSHOTS_TABLE) else 0
    registry = lake.write(
        REGISTRY_TABLE,
        registry_frame,
        mode="overwrite",
        partition_by=REGISTRY_PARTITIONS,
        replace={"domain": domain},
        app_id=app_id,
        app_version=app_version,
    )
    faults.point("snapshots.after_registry")
    snapshot = lake.write(
        SNAPSHOTS_TABLE,
        frame,
        mode="overwrite",
        partition_by=SNAPSHOT_PARTITIONS,
        replace=snapshot_replace,
        app_id=app_id,
        app_version=app_version,
    )
    return SnapshotWrite(snapshot, registry, app_id)


def read_snapshot(
    lake: Lake,
    *,
    domain: str,
    as_of: DateLike,
    version: int | None = None,
    timestamp: str | dt.datetime | None = None,
) -> DataFrame:
    """The (domain, as_of) snapshot, from the current table or an earlier one.

    ``version`` (a Delta table version) or ``timestamp`` (the table as it was then) time-travel;
    ``as_of`` is the snapshot's business date, the partition read.

    Example:
        >>> read_snapshot(lake, domain="retail", as_of="2024-01-31", version=0).count()
        1000
    """
    day = as_date(as_of)
    table = lake.read(SNAPSHOTS_TABLE, version=version, as_of=timestamp)
    return table.where((F.col("domain") == domain) & (F.col("as_of") == F.lit(day)))


def snapshot_dates(lake: Lake, domain: str) -> list[dt.date]:
    """The as_of dates holding a snapshot of ``domain``, oldest first (one per run date).

    Example:
        >>> snapshot_dates(lake, "retail")
        [datetime.date(2024, 1, 31), datetime.date(2024, 2, 29)]
    """
    if not lake.exists(SNAPSHOTS_TABLE):
        return []
    rows = (
        lake.read(SNAPSHOTS_TABLE)
        .where(F.col("domain") == domain)
        .select("as_of")
        .distinct()
        .collect()
    )
    return sorted(r[0] for r in rows)


def previous_snapshot_date(lake: Lake, domain: str, as_of: DateLike) -> dt.date | None:
    """The latest snapshot date of ``domain`` strictly before ``as_of`` (None if there is none).

    Example:
        >>> previous_snapshot_date(lake, "retail", "2024-02-29")
        datetime.date(2024, 1, 31)
    """
    if not lake.exists(SNAPSHOTS_TABLE):
        return None
    day = as_date(as_of)
    row = (
        lake.read(SNAPSHOTS_TABLE)
        .where((F.col("domain") == domain) & (F.col("as_of") < F.lit(day)))
        .agg(F.max("as_of"))
        .first()
    )
    return None if row is None else row[0]


# --------------------------------------------------------------------------------------------
# migrations


def migrations(
    from_snapshot: DataFrame,
    to_snapshot: DataFrame,
    values: DataFrame | None,
    *,
    domain: str,
    from_as_of: DateLike,
    to_as_of: DateLike,
) -> DataFrame:
    """``segment_migrations``: one row per customer in either snapshot (full outer join).

    The snapshot frames may hold other partitions (the whole table): only (domain, from_as_of)
    and (domain, to_as_of) are used. ``from_segment_id`` is null for a new customer and
    ``to_segment_id`` null for a lapsed one. ``value`` comes from ``values`` (customer_id,
    as_of, value: the domain's value measure) at ``to_as_of``, or at ``from_as_of`` for a lapsed
    customer; null without ``values``.

    Example:
        >>> migrations(snapshots, snapshots, features.select("customer_id", "as_of",
        ...            F.col("monetary_total").alias("value")), domain="retail",
        ...            from_as_of="2024-01-31", to_as_of="2024-02-29")
    """
    start, end = as_date(from_as_of, "from_as_of"), as_date(to_as_of, "to_as_of")
    if start >= end:
        raise UsageError(f"from_as_of ({start}) must be before to_as_of ({end})")
    needed = ["domain", "as_of", "customer_id", "segment_id"]
    _require_columns(from_snapshot, needed, "the from snapshot")
    _require_columns(to_snapshot, needed, "the to snapshot")

    def side(snapshot: DataFrame, day: dt.date, column: str) -> DataFrame:
        return snapshot.where((F.col("domain") == domain) & (F.col("as_of") == F.lit(day))).select(
            "customer_id", F.col("segment_id").cast("int").alias(column)
        )

    joined = side(from_snapshot, start, "from_segment_id").join(
        side(to_snapshot, end, "to_segment_id"), "customer_id", "full_outer"
    )
    if values is None:
        value = F.lit(None).cast("double")
    else:
        _require_columns(values, ["customer_id", "as_of", "value"], "the values frame")
        measure = (
            values.where(F.col("as_of").isin(F.lit(start), F.lit(end)))
            .groupBy("customer_id")
            .agg(
                F.max(F.when(F.col("as_of") == F.lit(end), F.col("value"))).alias("_to_value"),
                F.max(F.when(F.col("as_of") == F.lit(start), F.col("value"))).alias("_from_value"),
            )
        )
        joined = joined.join(measure, "customer_id", "left")
        value = F.when(F.col("to_segment_id").isNull(), F.col("_from_value")).otherwise(
            F.col("_to_value")
        )
    return joined.select(
        F.lit(domain).alias("domain"),
        F.lit(start).alias("from_as_of"),
        F.lit(end).alias("to_as_of"),
        F.col("customer_id").cast("string").alias("customer_id"),
        "from_segment_id",
        "to_segment_id",
        value.cast("double").alias("value"),
    )


def migration_matrix(migrations: DataFrame) -> DataFrame:
    """``segment_migration_matrix``: customers, share and value per (from, to) pair.

    ``share_of_from`` divides by all customers of the from-segment, those lapsing included; the
    rows with a null from-segment (new customers) divide by all new customers. ``value`` sums
    the customers' values.

    Example:
        >>> migration_matrix(migrations(...)).orderBy("from_segment_id", "to_segment_id").show()
    """
    _require_columns(migrations, MIGRATIONS_SCHEMA.names, MIGRATIONS_TABLE)
    keys = ["domain", "from_as_of", "to_as_of", "from_segment_id"]
    # Window partitions group null keys together, which is exactly the "new customers" row set.
    origin = Window.partitionBy(*keys)
    return (
        migrations.groupBy(*keys, "to_segment_id")
        .agg(F.count(F.lit(1)).alias("customers"), F.sum("value").alias("value"))
        .select(
            *keys,
            "to_segment_id",
            F.col("customers").cast("long").alias("customers"),
            (F.col("customers") / F.sum("customers").over(origin))
            .cast("double")
            .alias("share_of_from"),
            F.col("value").cast("double").alias("value"),
        )
    )


def write_migrations(
    lake: Lake,
    migrations: DataFrame,
    matrix: DataFrame,
    *,
    domain: str,
    from_as_of: DateLike,
    to_as_of: DateLike,
) -> tuple[WriteResult, WriteResult]:
    """Replace the (domain, from_as_of, to_as_of) partition of both migration tables.

    Each table is replaced in one commit, so writing the same pair again leaves the same rows.

    Example:
        >>> rows, matrix = write_migrations(lake, moves, migration_matrix(moves),
        ...                                 domain="retail", from_as_of=d1, to_as_of=d2)
    """
    replace: dict[str, PartitionValue] = {
        "domain": domain,
        "from_as_of": as_date(from_as_of, "from_as_of"),
        "to_as_of": as_date(to_as_of, "to_as_of"),
    }
    written = lake.write(
        MIGRATIONS_TABLE,
        migrations.select(*MIGRATIONS_SCHEMA.names),
        mode="overwrite",
        partition_by=MIGRATION_PARTITIONS,
        replace=replace,
    )
    summary = lake.write(
        MATRIX_TABLE,
        matrix.select(*MATRIX_SCHEMA.names),
        mode="overwrite",
        partition_by=MIGRATION_PARTITIONS,
        replace=replace,
    )
    return written, summary


__all__ = [
    "MATRIX_SCHEMA",
    "MATRIX_TABLE",
    "MIGRATIONS_SCHEMA",
    "MIGRATIONS_TABLE",
    "REGISTRY_SCHEMA",
    "REGISTRY_TABLE",
    "SNAPSHOTS_TABLE",
    "SNAPSHOT_SCHEMA",
    "MatchResult",
    "Registered",
    "SnapshotWrite",
    "active_segments",
    "as_date",
    "centroids_in_space_of",
    "match_segments",
    "migration_matrix",
    "migrations",
    "next_segment_id",
    "previous_snapshot_date",
    "read_snapshot",
    "registry_app_id",
    "rescale_centroids",
    "scaler_stats",
    "segment_names",
    "snapshot_dates",
    "snapshot_frame",
    "update_registry",
    "write_migrations",
    "write_snapshot",
]
