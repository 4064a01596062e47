"""One Spark ML pipeline from raw feature columns to ``segment_id``.

Stages, in order (every one is a JVM stage, so the fitted :class:`PipelineModel` saves and loads
with MLlib's own writer, from Python or Scala, with no pickled Python):

1. ``Imputer`` (``model.impute`` features, ``model.impute_strategy``) — nulls and NaN;
2. ``SQLTransformer`` "prepare" — each feature as a double, heavy-tailed ones (``model.log1p``)
   as ``sign(x) * log1p(|x|)`` (equal to ``log1p(x)`` for the usual non-negative features,
   and still defined for a negative value);
3. ``VectorAssembler`` -> ``StandardScaler(withMean, withStd)`` -> optional ``PCA``
   (``withMean`` is off for bisecting k-means: MLlib splits a cluster by perturbing its centre
   by 1e-4 times the centre's norm, which is 0 for centred data, so the root never divides;
   distances do not change with a shift, so the clustering is the same);
4. the clusterer: ``KMeans`` (k-means|| with ``model.init_steps`` rounds), ``BisectingKMeans``
   or ``GaussianMixture``, writing the cluster index to ``_seg_cluster``;
5. ``SQLTransformer`` "cleanup" — drops the intermediate ``_seg_*`` columns;
6. ``SQLTransformer`` "segments" — ``CASE _seg_cluster WHEN i THEN segment_id ...``, the mapping
   {cluster index: segment_id} (identity by default), replaced after training by
   :func:`with_segment_mapping` when segments are matched to a previous model.

Scoring a frame with the model therefore returns its own columns plus ``segment_id`` (int).

Determinism: :func:`prepare_input` hash-partitions rows by customer id into exactly
``model.partitions`` partitions and sorts each one, so the data every fit sees (and thus
k-means||, whose sampling is seeded per partition) is the same whatever the input partitioning
or the master; every fit is seeded with ``model.seed``.

Speed: the standardized vectors are cached once (:func:`fit_vectors`); each fit reads that cache
once and MLlib keeps its own deserialized copy for the iterations (:func:`training_frame`);
k-means uses MLlib's row solver (:data:`KMEANS_SOLVER`); :func:`fit_clusterers` fits several k
at once from driver threads, which fills the cores a single fit leaves idle between its many
small jobs. None of this changes a fitted model.

Example:
    >>> settings = load_settings(domain="retail").model
    >>> model = fit_pipeline(features_df, settings.features, k=4, settings=settings)
    >>> model.transform(features_df).select("customer_id", "segment_id").show(2)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeAlias, TypeVar

from pyspark import StorageLevel
from pyspark.ml import Estimator, Pipeline, PipelineModel, Transformer
from pyspark.ml.clustering import (
    BisectingKMeans,
    BisectingKMeansModel,
    GaussianMixture,
    GaussianMixtureModel,
    KMeans,
    KMeansModel,
)
from pyspark.ml.feature import PCA, Imputer, SQLTransformer, StandardScaler, VectorAssembler
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import NumericType
from pyspark.util import inheritable_thread_target

from segspark.config import ModelSettings
from segspark.errors import InputError, UsageError

Algorithm: TypeAlias = Literal["kmeans", "bisecting", "gmm"]
Clusterer: TypeAlias = KMeans | BisectingKMeans | GaussianMixture
ClusterModel: TypeAlias = KMeansModel | BisectingKMeansModel | GaussianMixtureModel

PREFIX = "_seg_"
"""Columns the pipeline adds (and removes again); input frames may not use the prefix."""
VECTOR_COL = f"{PREFIX}vector"
SCALED_COL = f"{PREFIX}scaled"
PCA_COL = f"{PREFIX}pca"
PROBABILITY_COL = f"{PREFIX}probability"
CLUSTER_COL = f"{PREFIX}cluster"
SEGMENT_COL = "segment_id"

KMEANS_SOLVER = "row"
"""MLlib k-means solver. ``auto`` (MLlib's default) spends a pass over the data per fit on a
density check and then picks ``block`` for dense vectors, whose k-means|| initialisation re-reads
(and re-deserializes) the input DataFrame on each of its passes; ``row`` runs initialisation and
Lloyd's iterations on one cached copy and prunes distances with the triangle inequality, which
is faster for the few features and clusters of a segmentation (measured in ``bench/w2_ksweep``).
"""

_WHEN = re.compile(r"WHEN (-?\d+) THEN (-?\d+)")
_T = TypeVar("_T")
_R = TypeVar("_R")


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _imputed(features: Sequence[str], settings: ModelSettings) -> list[str]:
    if settings.impute == "all":
        return list(features)
    if settings.impute == "none":
        return []
    return [f for f in features if f in set(settings.impute)]


def vector_col(settings: ModelSettings) -> str:
    """The column the clusterer reads: the PCA projection when configured, else the scaled one.

    Example:
        >>> vector_col(settings)
        '_seg_scaled'
    """
    return PCA_COL if settings.pca_components is not None else SCALED_COL


def check_features(df: DataFrame, features: Sequence[str], settings: ModelSettings) -> None:
    """Reject unusable inputs at the boundary with one clear line.

    Raises :class:`~segspark.errors.UsageError` for an empty or repeated feature list, a
    ``model.log1p``/``model.impute`` feature that is not clustered or a PCA wider than the
    feature vector, and :class:`~segspark.errors.InputError` for missing or non-numeric
    columns or columns reserved by the pipeline (``_seg_*``, ``segment_id``).

    Example:
        >>> check_features(df, ["recency_days", "nope"], settings)
        Traceback (most recent call last):
        segspark.errors.InputError: feature columns missing from the input: nope
    """
    if not features:
        raise UsageError("no feature columns given (model.features is empty)")
    repeated = sorted({f for f in features if list(features).count(f) > 1})
    if repeated:
        raise UsageError(f"feature columns repeated: {', '.join(repeated)}")
    unknown_log = [f for f in settings.log1p if f not in features]
    if unknown_log:
        raise UsageError(f"model.log1p names features that are not clustered: {unknown_log}")
    if isinstance(settings.impute, list):
        unknown_imp = [f for f in settings.impute if f not in features]
        if unknown_imp:
            raise UsageError(f"model.impute names features that are not clustered: {unknown_imp}")
    if settings.pca_components is not None and settings.pca_components > len(features):
        raise UsageError(
            f"model.pca_components ({settings.pca_components}) exceeds the number of features "
            f"({len(features)})"
        )
    types = {field.name: field.dataType for field in df.schema.fields}
    missing = [f for f in features if f not in types]
    if missing:
        raise InputError(f"feature columns missing from the input: {', '.join(missing)}")
    non_numeric = [f for f in features if not isinstance(types[f], NumericType)]
    if non_numeric:
        raise InputError(f"feature columns are not numeric: {', '.join(non_numeric)}")
    reserved = [c for c in df.columns if c.startswith(PREFIX) or c == SEGMENT_COL]
    if reserved:
        raise InputError(f"input columns clash with the pipeline's own: {', '.join(reserved)}")


def prepare_input(df: DataFrame, id_col: str, partitions: int) -> DataFrame:
    """Rows hash-partitioned by ``id_col`` into exactly ``partitions`` and sorted within each.

    The layout, hence every seeded fit and sample on it, no longer depends on how ``df`` was
    partitioned (ids are assumed unique, as in a ``<domain>_features`` snapshot).

    Example:
        >>> prepare_input(df, "customer_id", 32).rdd.getNumPartitions()
        32
    """
    if id_col not in df.columns:
        raise InputError(f"id column {id_col!r} is missing from the input")
    return df.repartition(partitions, id_col).sortWithinPartitions(id_col)


def centres_data(algorithm: Algorithm) -> bool:
    """Whether the scaler subtracts the mean for ``algorithm`` (not for bisecting; see above).

    Example:
        >>> centres_data("bisecting")
        False
    """
    return algorithm != "bisecting"


def build_preprocessing(
    features: Sequence[str], settings: ModelSettings, *, center: bool = True
) -> Pipeline:
    """Imputer, prepare (cast, log1p), assembler, scaler and optional PCA as one Pipeline.

    ``center`` is the scaler's ``withMean`` (:func:`centres_data` of the algorithm).

    Example:
        >>> [type(s).__name__ for s in build_preprocessing(["a", "b"], settings).getStages()]
        ['Imputer', 'SQLTransformer', 'VectorAssembler', 'StandardScaler']
    """
    imputed = _imputed(features, settings)
    stages: list[Estimator[Any] | Transformer] = []
    source = {f: f for f in features}
    if imputed:
        outputs = [f"{PREFIX}imp_{features.index(f)}" for f in imputed]
        stages.append(
            Imputer(inputCols=list(imputed), outputCols=outputs, strategy=settings.impute_strategy)
        )
        source.update(zip(imputed, outputs, strict=True))
    logged = set(settings.log1p)
    exprs = []
    for i, f in enumerate(features):
        col = _quote(source[f])
        value = f"SIGNUM({col}) * LOG1P(ABS({col}))" if f in logged else col
        exprs.append(f"CAST({value} AS DOUBLE) AS {_quote(f'{PREFIX}x_{i}')}")
    stages.append(SQLTransformer(statement=f"SELECT *, {', '.join(exprs)} FROM __THIS__"))
    stages.append(
        VectorAssembler(
            inputCols=[f"{PREFIX}x_{i}" for i in range(len(features))],
            outputCol=VECTOR_COL,
            handleInvalid="error",
        )
    )
    stages.append(
        StandardScaler(inputCol=VECTOR_COL, outputCol=SCALED_COL, withMean=center, withStd=True)
    )
    if settings.pca_components is not None:
        stages.append(PCA(k=settings.pca_components, inputCol=SCALED_COL, outputCol=PCA_COL))
    return Pipeline(stages=stages)


def build_clusterer(
    algorithm: Algorithm, k: int, settings: ModelSettings, *, seed: int | None = None
) -> Clusterer:
    """The configured MLlib clusterer for ``k`` clusters, reading :func:`vector_col`.

    Example:
        >>> build_clusterer("kmeans", 4, settings).getInitMode()
        'k-means||'
    """
    if k < 2:
        raise UsageError(f"k must be at least 2, got {k}")
    seed = settings.seed if seed is None else seed
    features_col = vector_col(settings)
    if algorithm == "kmeans":
        return KMeans(
            k=k,
            maxIter=settings.max_iter,
            tol=settings.tol,
            initMode="k-means||",
            initSteps=settings.init_steps,
            featuresCol=features_col,
            predictionCol=CLUSTER_COL,
            seed=seed,
            solver=KMEANS_SOLVER,
        )
    if algorithm == "bisecting":
        return BisectingKMeans(
            k=k,
            maxIter=settings.max_iter,
            featuresCol=features_col,
            predictionCol=CLUSTER_COL,
            seed=seed,
        )
    if algorithm == "gmm":
        return GaussianMixture(
            k=k,
            maxIter=settings.max_iter,
            tol=settings.tol,
            probabilityCol=PROBABILITY_COL,
            featuresCol=features_col,
            predictionCol=CLUSTER_COL,
            seed=seed,
        )
    raise UsageError(f"unknown algorithm {algorithm!r}; expected kmeans, bisecting or gmm")


def _fit_score(model: ClusterModel) -> float:
    """Lower is better: the k-means cost, or minus the mixture's log-likelihood."""
    if isinstance(model, GaussianMixtureModel):
        return -float(model.summary.logLikelihood)
    return float(model.summary.trainingCost)


def fit_clusterer(
    df: DataFrame, algorithm: Algorithm, k: int, settings: ModelSettings
) -> ClusterModel:
    """Fit ``model.restarts`` seeded starts (``seed``, ``seed + 1`` ...) and keep the best.

    MLlib runs a single start per fit, and one unlucky k-means|| initialisation can merge two
    true clusters; the best of a few starts (lowest cost, highest likelihood for a mixture;
    the first on a tie) makes the fit, and the bootstrap stability measured with the same
    procedure, reflect the data rather than the initialisation.

    Example:
        >>> fit_clusterer(vectors, "kmeans", 4, settings).summary.k
        4
    """
    frame = training_frame(df, vector_col(settings))
    best: ClusterModel | None = None
    for restart in range(settings.restarts):
        model = build_clusterer(algorithm, k, settings, seed=settings.seed + restart).fit(frame)
        if best is None or _fit_score(model) < _fit_score(best):
            best = model
    assert best is not None
    return best


def training_frame(df: DataFrame, features_col: str) -> DataFrame:
    """``df``'s vector column alone, as a frame MLlib's clusterers will cache for themselves.

    KMeans (row solver), BisectingKMeans and GaussianMixture persist a deserialized copy of
    their training vectors for the iterations only when the frame they are given is not
    cached (``dataset.storageLevel`` is NONE); handed the cached ``vectors`` themselves, every
    one of their passes re-reads the columnar cache and rebuilds each vector. The aliased
    projection is not itself a cached plan, but reads the cache of ``df`` (once per fit). The
    rows and their order are those of ``df``, so a fit is the same either way.

    Example:
        >>> training_frame(vectors, "_seg_scaled").columns
        ['_seg_scaled']
    """
    view = df.select(F.col(features_col).alias(features_col))
    return view if view.storageLevel == StorageLevel.NONE else df


def parallel_map(
    spark: SparkSession, func: Callable[[_T], _R], items: Iterable[_T], parallelism: int
) -> list[_R]:
    """``[func(x) for x in items]``, run from up to ``parallelism`` driver threads.

    Each thread submits its own Spark jobs (with the caller's local properties and tags, e.g.
    a job group or scheduler pool); results come back in the order of ``items``. The first
    failure is raised once running calls are done; calls not yet started are cancelled.

    Example:
        >>> fit = lambda k: fit_clusterer(vectors, "kmeans", k, settings)
        >>> parallel_map(spark, fit, [2, 3], 2)
        [KMeansModel..., KMeansModel...]
    """
    todo = list(items)
    if parallelism < 1:
        raise UsageError(f"parallelism must be at least 1, got {parallelism}")
    if parallelism == 1 or len(todo) <= 1:
        return [func(x) for x in todo]
    pool = ThreadPoolExecutor(max_workers=min(parallelism, len(todo)))
    try:
        # One wrapper per call: pyspark clones the caller's local properties when wrapping and
        # hands that one copy to every call of the wrapper, so calls sharing a wrapper shared
        # the copy, and Spark SQL's per-query execution ids in it (a concurrent query then read
        # a cleared id: "NumberFormatException: Cannot parse null string").
        futures = [pool.submit(inheritable_thread_target(spark)(func), x) for x in todo]
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def fit_clusterers(
    df: DataFrame,
    algorithm: Algorithm,
    ks: Sequence[int],
    settings: ModelSettings,
    *,
    parallelism: int = 1,
) -> dict[int, ClusterModel]:
    """:func:`fit_clusterer` for every k in ``ks``, up to ``parallelism`` at a time.

    Every fit is seeded and reads the same cached rows, so the models do not depend on
    ``parallelism``; larger k (the slower fits) are started first.

    Example:
        >>> models = fit_clusterers(vectors, "kmeans", range(2, 11), settings, parallelism=2)
        >>> {k: m.summary.trainingCost for k, m in models.items()}
    """
    order = sorted(set(ks), reverse=True)
    fitted = parallel_map(
        df.sparkSession, lambda k: fit_clusterer(df, algorithm, k, settings), order, parallelism
    )
    by_k = dict(zip(order, fitted, strict=True))
    return {k: by_k[k] for k in sorted(by_k)}


def cluster_count(model: ClusterModel) -> int:
    """How many clusters a fitted clusterer has (k-means may return fewer than k).

    Example:
        >>> cluster_count(kmeans_model)
        4
    """
    if isinstance(model, GaussianMixtureModel):
        return int(model.getK())
    return len(model.clusterCenters())


def cluster_centers(model: PipelineModel | ClusterModel) -> list[list[float]]:
    """The centres in the clustered space (standardized, or PCA), indexed by cluster index.

    For a Gaussian mixture, the component means. Used to match segments across retrainings.

    Example:
        >>> len(cluster_centers(model)[0]) == len(settings.features)
        True
    """
    clusterer = clusterer_of(model) if isinstance(model, PipelineModel) else model
    if isinstance(clusterer, GaussianMixtureModel):
        return [[float(v) for v in g.mean.toArray()] for g in clusterer.gaussians]
    return [[float(v) for v in c] for c in clusterer.clusterCenters()]


def clusterer_of(model: PipelineModel) -> ClusterModel:
    """The fitted clustering stage of a segmentation :class:`PipelineModel`.

    Example:
        >>> type(clusterer_of(model)).__name__
        'KMeansModel'
    """
    for stage in model.stages:
        if isinstance(stage, KMeansModel | BisectingKMeansModel | GaussianMixtureModel):
            return stage
    raise UsageError("the pipeline model has no clustering stage")


def resolve_mapping(n_clusters: int, mapping: Mapping[int, int] | None) -> dict[int, int]:
    """``mapping`` checked to cover cluster indices ``0..n_clusters-1`` once; identity if empty.

    Example:
        >>> resolve_mapping(3, {})
        {0: 0, 1: 1, 2: 2}
        >>> resolve_mapping(2, {0: 7, 1: 5})
        {0: 7, 1: 5}
    """
    if not mapping:
        return {i: i for i in range(n_clusters)}
    keys = set(mapping)
    expected = set(range(n_clusters))
    if keys != expected:
        raise UsageError(
            f"segment_mapping must map every cluster index 0..{n_clusters - 1} exactly once; "
            f"missing {sorted(expected - keys)}, unknown {sorted(keys - expected)}"
        )
    if len(set(mapping.values())) != len(mapping):
        raise UsageError("segment_mapping must map each cluster to a different segment_id")
    return {int(k): int(v) for k, v in sorted(mapping.items())}


def cleanup_stage(
    features: Sequence[str], settings: ModelSettings, algorithm: Algorithm
) -> SQLTransformer:
    """A stage dropping every intermediate column but the cluster index.

    Example:
        >>> cleanup_stage(["a"], settings, "kmeans").getStatement()
        'SELECT * EXCEPT (`_seg_imp_0`, `_seg_x_0`, `_seg_vector`, `_seg_scaled`) FROM __THIS__'
    """
    drop = [f"{PREFIX}imp_{features.index(f)}" for f in _imputed(features, settings)]
    drop += [f"{PREFIX}x_{i}" for i in range(len(features))]
    drop += [VECTOR_COL, SCALED_COL]
    if settings.pca_components is not None:
        drop.append(PCA_COL)
    if algorithm == "gmm":
        drop.append(PROBABILITY_COL)
    return SQLTransformer(
        statement=f"SELECT * EXCEPT ({', '.join(_quote(c) for c in drop)}) FROM __THIS__"
    )


def mapping_stage(mapping: Mapping[int, int]) -> SQLTransformer:
    """The last stage: ``segment_id`` from the cluster index through ``mapping``.

    Example:
        >>> mapping_stage({0: 7, 1: 5}).getStatement()
        'SELECT * EXCEPT (`_seg_cluster`), CAST(CASE `_seg_cluster` WHEN 0 THEN 7 WHEN 1 THEN 5 END AS INT) AS `segment_id` FROM __THIS__'
    """  # noqa: E501
    if not mapping:
        raise UsageError("the segment mapping is empty")
    cases = " ".join(f"WHEN {int(k)} THEN {int(v)}" for k, v in sorted(mapping.items()))
    cluster = _quote(CLUSTER_COL)
    return SQLTransformer(
        statement=(
            f"SELECT * EXCEPT ({cluster}), CAST(CASE {cluster} {cases} END AS INT) "
            f"AS {_quote(SEGMENT_COL)} FROM __THIS__"
        )
    )


def segment_mapping(model: PipelineModel) -> dict[int, int]:
    """The {cluster index: segment_id} mapping held by a model's last stage.

    Example:
        >>> segment_mapping(with_segment_mapping(model, {0: 7, 1: 5}))
        {0: 7, 1: 5}
    """
    last = model.stages[-1] if model.stages else None
    if not isinstance(last, SQLTransformer) or CLUSTER_COL not in last.getStatement():
        raise UsageError("the pipeline model does not end with a segment mapping stage")
    return {int(k): int(v) for k, v in _WHEN.findall(last.getStatement())}


def assemble_model(
    preprocessing: PipelineModel,
    clusterer: ClusterModel,
    features: Sequence[str],
    settings: ModelSettings,
    algorithm: Algorithm,
    mapping: Mapping[int, int] | None = None,
) -> PipelineModel:
    """The complete model: fitted preprocessing, clusterer, cleanup and segment mapping.

    Example:
        >>> assemble_model(prep, kmeans_model, features, settings, "kmeans").stages[-1]
        SQLTransformer_...
    """
    resolved = resolve_mapping(cluster_count(clusterer), mapping)
    stages: list[Transformer] = [
        *preprocessing.stages,
        clusterer,
        cleanup_stage(features, settings, algorithm),
        mapping_stage(resolved),
    ]
    return PipelineModel(stages=stages)


def with_segment_mapping(model: PipelineModel, mapping: Mapping[int, int]) -> PipelineModel:
    """A copy of ``model`` whose last stage maps cluster indices through ``mapping``.

    Used after matching a retrained model's clusters to the champion's segment ids.

    Example:
        >>> remapped = with_segment_mapping(model, {0: 12, 1: 10, 2: 11})
        >>> segment_mapping(remapped)
        {0: 12, 1: 10, 2: 11}
    """
    segment_mapping(model)  # rejects a model that is not a segmentation model
    resolved = resolve_mapping(cluster_count(clusterer_of(model)), mapping)
    return PipelineModel(stages=[*model.stages[:-1], mapping_stage(resolved)])


def fit_vectors(
    df: DataFrame,
    features: Sequence[str],
    settings: ModelSettings,
    *,
    id_col: str = "customer_id",
    center: bool = True,
) -> tuple[PipelineModel, DataFrame]:
    """Fit the preprocessing once and return it with the cached (id, vector) rows.

    The input is laid out by :func:`prepare_input` and held in cache only while the
    preprocessing is fitted (Imputer, scaler and PCA each read it); the clustered vectors are
    then cached once and materialized, so every k and every bootstrap reads them without
    going back upstream. The caller owns the cache: ``vectors.unpersist()`` when done.

    Example:
        >>> prep, vectors = fit_vectors(df, features, settings)
        >>> vectors.columns
        ['customer_id', '_seg_scaled']
    """
    check_features(df, features, settings)
    prepared = prepare_input(df.select(id_col, *features), id_col, settings.partitions).persist()
    try:
        prep = build_preprocessing(features, settings, center=center).fit(prepared)
        vectors = prep.transform(prepared).select(id_col, vector_col(settings)).persist()
        vectors.count()
    finally:
        prepared.unpersist()
    return prep, vectors


def fit_pipeline(
    df: DataFrame,
    features: Sequence[str],
    *,
    k: int,
    settings: ModelSettings,
    algorithm: Algorithm | None = None,
    mapping: Mapping[int, int] | None = None,
    id_col: str = "customer_id",
) -> PipelineModel:
    """Fit preprocessing and one clusterer for a fixed ``k`` (no k selection, no metrics).

    ``mapping`` defaults to ``model.segment_mapping`` (identity when empty).

    Example:
        >>> model = fit_pipeline(df, ["recency_days", "frequency"], k=3, settings=settings)
        >>> model.transform(df).select("segment_id").distinct().count()
        3
    """
    algorithm = algorithm or settings.algorithm
    prep, vectors = fit_vectors(
        df, features, settings, id_col=id_col, center=centres_data(algorithm)
    )
    try:
        fitted = fit_clusterer(vectors, algorithm, k, settings)
    finally:
        vectors.unpersist()
    mapping = settings.segment_mapping if mapping is None else mapping
    return assemble_model(prep, fitted, features, settings, algorithm, mapping)
