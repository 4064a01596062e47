"""The segmentation model library: pipeline, metrics, k selection, profiles, names, MLflow.

Tiny planted data: four well separated blobs of customers in (recency_days, frequency,
log1p(monetary_total)), 90/80/70/60 customers, a few frequencies missing (imputed).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.clustering import KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.linalg import Vectors
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType

from segspark.config import ModelSettings, NamingSettings, PrivacySettings, load_settings
from segspark.errors import InputError, UsageError
from segspark.model import (
    adjusted_rand_index,
    ari_from_contingency,
    calinski_harabasz,
    cluster_centers,
    cluster_stats,
    contingency,
    davies_bouldin,
    fit_pipeline,
    jaccard_recovery,
    name_segments,
    profile_segments,
    segment_feature_profiles,
    segment_jaccard,
    segment_mapping,
    segment_profiles,
    select_model,
    silhouette,
    with_segment_mapping,
    wssse,
)
from segspark.model.metrics import point_silhouette
from segspark.model.pipeline import (
    build_clusterer,
    fit_clusterer,
    fit_clusterers,
    fit_vectors,
    parallel_map,
    training_frame,
    vector_col,
)
from segspark.model.select import KMetrics, _pair_tables, _predict, choose_k

FEATURES = ["recency_days", "frequency", "monetary_total"]
# (recency_days, frequency, log1p(monetary_total)) centres; sizes; spreads per feature
CENTRES = [(10.0, 20.0, 6.0), (200.0, 2.0, 3.0), (40.0, 6.0, 4.5), (110.0, 12.0, 7.5)]
SIZES = [90, 80, 70, 60]
SPREAD = (5.0, 0.8, 0.15)


@pytest.fixture(scope="module")
def settings() -> ModelSettings:
    """conf/test.yaml + retail vocabulary, on the three planted features."""
    return load_settings(
        domain="retail",
        env="test",
        overrides=[
            f"model.features=[{', '.join(FEATURES)}]",
            "model.log1p=[monetary_total]",
            "model.value_column=monetary_total",
            "model.profile_features=[]",
        ],
    ).model


@pytest.fixture(scope="module")
def privacy() -> PrivacySettings:
    """conf/test.yaml's privacy section (privacy.min_segment_size = 10, no noise)."""
    return load_settings(env="test").privacy


@pytest.fixture(scope="module")
def blobs(spark: SparkSession) -> DataFrame:
    rng = np.random.default_rng(7)
    rows: list[tuple[Any, ...]] = []
    for label, (centre, size) in enumerate(zip(CENTRES, SIZES, strict=True)):
        for _ in range(size):
            r, f, m = (rng.normal(c, s) for c, s in zip(centre, SPREAD, strict=True))
            rows.append((f"C{len(rows):04d}", label, float(max(r, 0.0)), f, float(np.expm1(m))))
    # a few missing frequencies, imputed by the pipeline's median
    rows = [(*row[:3], None if i % 97 == 5 else row[3], row[4]) for i, row in enumerate(rows)]
    schema = "customer_id string, true_segment int, recency_days double, frequency double, "
    schema += "monetary_total double"
    return spark.createDataFrame(rows, schema).cache()


@pytest.fixture(scope="module")
def selection(blobs: DataFrame, settings: ModelSettings):  # type: ignore[no-untyped-def]
    return select_model(blobs, settings=settings)


@pytest.fixture(scope="module")
def scored(selection, blobs: DataFrame) -> DataFrame:  # type: ignore[no-untyped-def]
    return selection.model.transform(blobs).cache()


# --- adjusted Rand index and Jaccard on hand examples ------------------------------------------


def test_ari_of_a_2x2_table_equals_the_hand_computed_value() -> None:
    # n=10, I = 2*C(4,2) = 12, rows and columns 5,5 -> 20 each, E = 400/45, M = 20
    # ARI = (12 - 80/9) / (20 - 80/9) = (28/9) / (100/9) = 0.28
    table = {(0, 0): 4, (0, 1): 1, (1, 0): 1, (1, 1): 4}
    assert ari_from_contingency(table) == pytest.approx(0.28, abs=1e-15)


def test_ari_of_identical_and_relabelled_labelings_is_one(spark: SparkSession) -> None:
    frame = spark.createDataFrame(
        [(0, 0, 7), (0, 0, 7), (1, 1, 3), (1, 2, 3), (2, 3, 5)], "a int, b int, c int"
    )
    assert adjusted_rand_index(frame, "a", "a") == 1.0
    assert adjusted_rand_index(frame, "a", "c") == 1.0  # same partition, other labels


def test_spark_ari_matches_the_direct_formula(spark: SparkSession) -> None:
    # a = [0,0,1,1], b = [0,0,1,2]: I = 1, sum_a = 2, sum_b = 1, E = 2/6, M = 3/2 -> 4/7
    frame = spark.createDataFrame([(0, 0), (0, 0), (1, 1), (1, 2)], "a int, b int")
    assert adjusted_rand_index(frame, "a", "b") == pytest.approx(4 / 7, abs=1e-15)


def test_jaccard_recovery_takes_the_best_match_of_each_reference_cluster() -> None:
    # cluster 0 = 10 rows, 9 of them in 5; cluster 1 = 10 rows all in 6 (which also has 1 of 0)
    assert jaccard_recovery({(0, 5): 9, (0, 6): 1, (1, 6): 10}) == {0: 0.9, 1: 10 / 11}


# --- internal metrics against direct numpy computations ----------------------------------------


@pytest.fixture(scope="module")
def labelled_points(spark: SparkSession) -> tuple[DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, 5.0, -2.0]])
    labels = np.repeat([0, 1, 2], [20, 15, 25])
    points = centres[labels] + rng.normal(0, 1.0, size=(labels.size, 3))
    frame = spark.createDataFrame(
        [(int(c), Vectors.dense(p.tolist())) for c, p in zip(labels, points, strict=True)],
        ["cluster", "features"],
    )
    return frame, points, labels


def test_calinski_harabasz_davies_bouldin_and_wssse_equal_numpy(
    labelled_points: tuple[DataFrame, np.ndarray, np.ndarray],
) -> None:
    frame, x, labels = labelled_points
    stats = cluster_stats(frame, "features", "cluster")
    ks = sorted(set(labels.tolist()))
    centroids = np.array([x[labels == c].mean(axis=0) for c in ks])
    within_c = np.array([((x[labels == c] - centroids[i]) ** 2).sum() for i, c in enumerate(ks)])
    counts = np.array([(labels == c).sum() for c in ks])
    between = (counts * ((centroids - x.mean(axis=0)) ** 2).sum(axis=1)).sum()
    n, k = len(x), len(ks)
    ch = (between / (k - 1)) / (within_c.sum() / (n - k))
    spread = np.sqrt(within_c / counts)  # Davies & Bouldin's S_i with q = 2
    db = np.mean(
        [
            max(
                (spread[i] + spread[j]) / np.linalg.norm(centroids[i] - centroids[j])
                for j in range(k)
                if j != i
            )
            for i in range(k)
        ]
    )
    assert stats.sizes() == {0: 20, 1: 15, 2: 25}
    assert wssse(stats) == pytest.approx(within_c.sum(), rel=1e-12)
    assert calinski_harabasz(stats) == pytest.approx(ch, rel=1e-10)
    assert davies_bouldin(stats) == pytest.approx(db, rel=1e-10)


def test_wssse_equals_the_kmeans_training_cost(
    labelled_points: tuple[DataFrame, np.ndarray, np.ndarray],
) -> None:
    frame, _, _ = labelled_points
    model = KMeans(k=3, seed=1, maxIter=100, tol=1e-12, predictionCol="p").fit(frame)
    stats = cluster_stats(model.transform(frame), "features", "p")
    assert wssse(stats) == pytest.approx(model.summary.trainingCost, rel=1e-9)


def test_per_point_silhouette_averages_to_mllib_and_a_sample_reports_its_error(
    labelled_points: tuple[DataFrame, np.ndarray, np.ndarray],
) -> None:
    frame, _, _ = labelled_points
    stats = cluster_stats(frame, "features", "cluster")
    mean_row = frame.select(F.avg(point_silhouette("features", "cluster", stats))).first()
    assert mean_row is not None
    mllib = ClusteringEvaluator(predictionCol="cluster", distanceMeasure="squaredEuclidean")
    full = silhouette(frame, "features", "cluster", sample_size=1000, seed=1)
    assert full.value == pytest.approx(mllib.evaluate(frame), rel=1e-12)
    assert mean_row[0] == pytest.approx(full.value, rel=1e-9)
    assert (full.std_error, full.rows, full.sample_rows) == (0.0, 60, 60)
    sampled = silhouette(frame, "features", "cluster", sample_size=30, seed=1)
    assert 10 < sampled.sample_rows < 60 and sampled.rows == 60
    assert 0.0 < sampled.std_error < 0.1
    assert abs(sampled.value - full.value) < 4 * sampled.std_error + 0.02


def test_restarts_keep_the_lowest_cost_start(
    labelled_points: tuple[DataFrame, np.ndarray, np.ndarray], settings: ModelSettings
) -> None:
    frame = labelled_points[0].withColumnRenamed("features", vector_col(settings))
    two = settings.model_copy(update={"restarts": 2, "init_steps": 1, "max_iter": 5})
    best = fit_clusterer(frame, "kmeans", 5, two)
    costs = [
        build_clusterer("kmeans", 5, two, seed=two.seed + r).fit(frame).summary.trainingCost
        for r in range(2)
    ]
    assert best.summary.trainingCost == min(costs)


def test_training_frame_is_an_uncached_view_of_the_same_rows(
    labelled_points: tuple[DataFrame, np.ndarray, np.ndarray],
) -> None:
    cached = labelled_points[0].cache()
    view = training_frame(cached, "features")
    # MLlib caches its own deserialized copy only for a frame that is not cached itself
    assert view.storageLevel.useMemory is False and view.storageLevel.useDisk is False
    assert view.columns == ["features"]
    assert view.collect() == cached.select("features").collect()


def test_concurrent_fits_equal_sequential_ones(
    labelled_points: tuple[DataFrame, np.ndarray, np.ndarray], settings: ModelSettings
) -> None:
    frame = labelled_points[0].withColumnRenamed("features", vector_col(settings)).cache()
    ks = [2, 3, 4, 5]
    together = fit_clusterers(frame, "kmeans", ks, settings, parallelism=3)
    assert list(together) == ks
    for k in ks:
        alone = fit_clusterer(frame, "kmeans", k, settings)
        np.testing.assert_array_equal(cluster_centers(together[k]), cluster_centers(alone))
        assert together[k].summary.trainingCost == alone.summary.trainingCost


def test_parallel_map_keeps_order_and_raises_the_first_failure(spark: SparkSession) -> None:
    assert parallel_map(spark, lambda x: x * x, range(7), 3) == [0, 1, 4, 9, 16, 25, 36]

    def boom(x: int) -> int:
        if x == 2:
            raise InputError("no 2")
        return x

    with pytest.raises(InputError, match="no 2"):
        parallel_map(spark, boom, range(4), 2)
    with pytest.raises(UsageError, match="parallelism must be at least 1, got 0"):
        parallel_map(spark, boom, range(4), 0)


def test_parallel_map_calls_have_their_own_local_properties(spark: SparkSession) -> None:
    # Spark SQL keeps each query's execution ids in the thread's local properties; calls that
    # shared one properties object cleared each other's ids mid-query ("NumberFormatException:
    # Cannot parse null string" from concurrent KMeans fits).
    import threading

    sc = spark.sparkContext
    sc.setLocalProperty("segspark.test.caller", "parent")
    both_set = threading.Barrier(2, timeout=30)

    def tag(x: int) -> tuple[str | None, str | None]:
        sc.setLocalProperty("segspark.test.call", str(x))
        both_set.wait()  # the other call has set its own value by now
        return sc.getLocalProperty("segspark.test.call"), sc.getLocalProperty(
            "segspark.test.caller"
        )

    try:
        assert parallel_map(spark, tag, [0, 1], 2) == [("0", "parent"), ("1", "parent")]
        assert sc.getLocalProperty("segspark.test.call") is None  # the caller's are untouched
    finally:
        sc.setLocalProperty("segspark.test.caller", None)  # type: ignore[arg-type]


def test_bootstrap_pairs_counted_in_one_pass_equal_per_pair_tables(
    blobs: DataFrame, settings: ModelSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, vectors = fit_vectors(blobs, FEATURES, settings)
    try:
        fits = [
            fit_clusterer(vectors.sample(True, 1.0, seed=s), "kmeans", 3, settings)
            for s in (1, 2, 3)
        ]
        full = fit_clusterer(vectors, "kmeans", 3, settings)
        labeled = _predict(full, vectors, "_seg_cluster")
        pairs = [(fits[0], fits[1]), (fits[1], fits[2]), (fits[2], fits[0])]
        expected = [
            contingency(_predict(b, _predict(a, labeled, "_a"), "_b"), "_seg_cluster", "_a", "_b")
            for a, b in pairs
        ]
        assert _pair_tables(labeled, pairs, 3) == expected
        # 27 cells per pair at k = 3: two chunks of one pair and one of two
        monkeypatch.setattr("segspark.model.select.MAX_CONTINGENCY_CELLS", 60)
        assert _pair_tables(labeled, pairs, 3) == expected
    finally:
        vectors.unpersist()


def test_the_k_table_does_not_depend_on_parallelism(
    blobs: DataFrame, settings: ModelSettings, selection
) -> None:  # type: ignore[no-untyped-def]
    one = select_model(blobs, settings=settings, k_min=3, k_max=4, parallelism=1)
    assert list(one.metrics) == [m for m in selection.metrics if m.k in (3, 4)]
    fixed = select_model(blobs, settings=settings, k=4, parallelism=3)
    assert fixed.metrics == (selection.chosen,)
    with pytest.raises(UsageError, match="parallelism must be at least 1, got 0"):
        select_model(blobs, settings=settings, parallelism=0)


# --- automatic k, recovery, stability ----------------------------------------------------------


def test_automatic_k_finds_the_four_planted_segments(selection) -> None:  # type: ignore[no-untyped-def]
    assert selection.k == 4
    assert [m.k for m in selection.metrics] == [2, 3, 4, 5]
    best = max(selection.metrics, key=lambda m: m.silhouette)
    assert best.k == 4
    chosen = selection.chosen
    assert chosen.stability_ari == pytest.approx(1.0, abs=0.02)
    assert chosen.clusters == 4 and sum(chosen.sizes.values()) == 300
    assert chosen.silhouette_se == 0.0 and chosen.silhouette_rows == 300
    assert "mean bootstrap ARI >= 0.75" in selection.rule
    assert re.search(r"-> k=4 \(stable: [0-9, ]+\)$", selection.rule)
    table = selection.to_pandas()
    assert list(table["k"]) == [2, 3, 4, 5]
    assert set(table.columns) >= {
        "silhouette",
        "calinski_harabasz",
        "davies_bouldin",
        "wssse",
        "stability_ari",
    }
    assert (
        table.loc[table["k"] == 4, "calinski_harabasz"].item() == table["calinski_harabasz"].max()
    )


def test_assignment_recovers_the_planted_labels(selection, scored: DataFrame) -> None:  # type: ignore[no-untyped-def]
    assert adjusted_rand_index(scored, "segment_id", "true_segment") >= 0.9
    recovery = segment_jaccard(scored, "true_segment", "segment_id")
    assert min(recovery.values()) >= 0.9
    assert set(selection.segment_jaccard) == {0, 1, 2, 3}
    assert min(selection.segment_jaccard.values()) >= 0.9  # Hennig: highly stable


def test_choice_rule_falls_back_to_the_most_stable_k() -> None:
    def row(k: int, sil: float, ari: float | None) -> KMetrics:
        return KMetrics(k, k, sil, 0.0, 100, 1.0, 1.0, 1.0, ari, 0.0)

    rows = [row(2, 0.5, 0.6), row(3, 0.7, 0.7), row(4, 0.6, 0.7)]
    k, rule = choose_k(rows, threshold=0.75)
    assert k == 3 and rule.endswith("-> k=3 (no k reached the threshold; most stable)")
    k, _ = choose_k([row(2, 0.5, 0.9), row(3, 0.7, 0.8), row(4, 0.8, 0.5)], threshold=0.75)
    assert k == 3
    k, rule = choose_k([row(2, 0.5, None), row(3, 0.7, None)], threshold=0.75)
    assert k == 3 and "no bootstrap" in rule


# --- determinism, persistence, mapping ----------------------------------------------------------


def _assignments(model: PipelineModel, frame: DataFrame) -> dict[str, int]:
    rows = model.transform(frame).select("customer_id", "segment_id").collect()
    return {r["customer_id"]: r["segment_id"] for r in rows}


def test_same_data_and_seed_give_the_same_model_whatever_the_partitioning(
    blobs: DataFrame, settings: ModelSettings, selection
) -> None:  # type: ignore[no-untyped-def]
    one = fit_pipeline(blobs.repartition(7), FEATURES, k=4, settings=settings)
    two = fit_pipeline(blobs.coalesce(1), FEATURES, k=4, settings=settings)
    np.testing.assert_allclose(cluster_centers(one), cluster_centers(two), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        cluster_centers(one), cluster_centers(selection.model), rtol=1e-12, atol=1e-12
    )
    assert _assignments(one, blobs) == _assignments(two, blobs)
    assert _assignments(one, blobs) == _assignments(selection.model, blobs)


def test_saved_and_reloaded_model_scores_the_same_segments(
    selection, blobs: DataFrame, scored: DataFrame, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "model")
    selection.model.save(path)
    loaded = PipelineModel.load(path)
    rescored = loaded.transform(blobs)
    assert rescored.columns == [*blobs.columns, "segment_id"]
    assert rescored.schema["segment_id"].dataType == IntegerType()
    before = {r["customer_id"]: r["segment_id"] for r in scored.collect()}
    assert _assignments(loaded, blobs) == before
    sizes = {s: list(before.values()).count(s) for s in set(before.values())}
    assert sizes == selection.segment_sizes  # the sizes training measured


def test_mapping_stage_maps_cluster_indices_as_configured(selection, blobs: DataFrame) -> None:  # type: ignore[no-untyped-def]
    assert segment_mapping(selection.model) == {0: 0, 1: 1, 2: 2, 3: 3}
    mapping = {0: 12, 1: 10, 2: 13, 3: 11}
    remapped = with_segment_mapping(selection.model, mapping)
    assert segment_mapping(remapped) == mapping
    identity = _assignments(selection.model, blobs)
    assert _assignments(remapped, blobs) == {c: mapping[s] for c, s in identity.items()}
    with pytest.raises(UsageError, match=r"missing \[3\], unknown \[7\]"):
        with_segment_mapping(selection.model, {0: 1, 1: 2, 2: 3, 7: 4})
    with pytest.raises(UsageError, match="different segment_id"):
        with_segment_mapping(selection.model, {0: 1, 1: 1, 2: 3, 3: 4})


def test_pca_bisecting_and_gmm_variants_recover_the_blobs_and_drop_their_columns(
    blobs: DataFrame, settings: ModelSettings, tmp_path: Path
) -> None:
    pca = settings.model_copy(update={"pca_components": 2})
    model = fit_pipeline(blobs, FEATURES, k=4, settings=pca)
    scored_p = model.transform(blobs)
    assert scored_p.columns == [*blobs.columns, "segment_id"]
    assert adjusted_rand_index(scored_p, "segment_id", "true_segment") >= 0.9
    assert {len(c) for c in cluster_centers(model)} == {2}
    ints = blobs.withColumn("recency_days", F.col("recency_days").cast("int"))
    model = fit_pipeline(ints, FEATURES, k=4, settings=settings, algorithm="bisecting")
    scored_b = model.transform(ints)
    assert scored_b.columns == [*ints.columns, "segment_id"]
    assert adjusted_rand_index(scored_b, "segment_id", "true_segment") >= 0.9
    gmm = settings.model_copy(update={"bootstrap_resamples": 1})
    result = select_model(blobs, settings=gmm, k=4, algorithm="gmm")
    assert result.rule == "k fixed at 4 (no selection)"
    # bootstrap duplicates let a mixture component collapse onto a few repeated rows, so the
    # GMM pair ARI is low on this data; only its range is a property
    assert result.chosen.stability_ari is not None and -1.0 <= result.chosen.stability_ari <= 1.0
    result.model.save(str(tmp_path / "gmm"))
    scored_g = PipelineModel.load(str(tmp_path / "gmm")).transform(blobs)
    assert scored_g.columns == [*blobs.columns, "segment_id"]
    assert adjusted_rand_index(scored_g, "segment_id", "true_segment") >= 0.9
    assert len(cluster_centers(result.model)) == 4


def test_bad_inputs_fail_at_the_boundary(blobs: DataFrame, settings: ModelSettings) -> None:
    with pytest.raises(InputError, match="feature columns missing from the input: nope"):
        select_model(blobs, [*FEATURES, "nope"], settings=settings)
    with pytest.raises(InputError, match="not numeric: customer_id"):
        select_model(blobs, ["customer_id", *FEATURES], settings=settings)
    with pytest.raises(UsageError, match="a segment mapping needs a fixed k"):
        select_model(blobs, settings=settings, mapping={0: 1, 1: 2})
    with pytest.raises(UsageError, match=r"k range 5\.\.3 is empty"):
        select_model(blobs, settings=settings, k_min=5, k_max=3)
    with pytest.raises(UsageError, match=r"model\.log1p names features that are not clustered"):
        select_model(blobs, ["recency_days", "frequency"], settings=settings)


# --- profiles and names --------------------------------------------------------------------------


def test_names_are_deterministic_unique_and_only_vocabulary(settings: ModelSettings) -> None:
    naming = settings.naming
    z = {
        3: {"monetary_total": 1.8, "frequency": 1.1, "recency_days": -0.9},
        1: {"monetary_total": -1.2, "recency_days": 2.0, "frequency": -0.4},
        0: {"monetary_total": 0.1, "frequency": -0.2, "recency_days": 0.3},
        2: {"monetary_total": 0.2, "frequency": 0.3, "recency_days": -0.1},
        4: {"monetary_total": None, "frequency": None, "recency_days": None},
    }
    names = name_segments(z, naming)
    assert names == {
        0: "Core I",
        1: "Lapsing Low-Value",
        2: "Core II",
        3: "High-Value Loyal",
        4: "Small",
    }
    assert name_segments(dict(reversed(list(z.items()))), naming) == names
    tie = NamingSettings.model_validate({**naming.model_dump(), "max_terms": 1})
    assert name_segments({0: {"frequency": 1.0, "monetary_total": 1.0}}, tie) == {0: "Loyal"}


def test_segment_profiles_shares_sum_to_one_and_names_are_unique(
    selection, scored: DataFrame, settings: ModelSettings, privacy: PrivacySettings
) -> None:  # type: ignore[no-untyped-def]
    first = profile_segments(scored, settings, privacy=privacy)
    again = profile_segments(scored, settings, privacy=privacy)
    assert first.names == again.names
    assert len(set(first.names.values())) == 4
    words = {w for e in settings.naming.vocabulary.values() for w in (e.high, e.low) if w}
    for name in first.names.values():
        assert set(name.split()) <= words | {"Core", "I", "II", "III", "IV"}
    rows = first.profiles.collect()
    assert first.profiles.columns == [
        "segment_id",
        "segment_name",
        "customers",
        "share",
        "value",
        "value_share",
        "withheld",
    ]
    assert sum(r["customers"] for r in rows) == sum(SIZES)
    # Summarizer counts during training == groupBy counts of the scored frame
    assert {r["segment_id"]: r["customers"] for r in rows} == selection.segment_sizes
    assert sum(r["share"] for r in rows) == pytest.approx(1.0, abs=1e-12)
    assert sum(r["value_share"] for r in rows) == pytest.approx(1.0, abs=1e-12)
    total = scored.agg(F.sum("monetary_total")).first()
    assert total is not None
    assert sum(r["value"] for r in rows) == pytest.approx(total[0], rel=1e-12)
    assert not any(r["withheld"] for r in rows)
    assert {r["segment_id"]: r["segment_name"] for r in rows} == first.names
    # the high-monetary, frequent, recent blob is named from its strongest z-scores
    counts = scored.groupBy("true_segment", "segment_id").count().collect()
    planted = {
        t: max((r for r in counts if r["true_segment"] == t), key=lambda r: r["count"])[
            "segment_id"
        ]
        for t in range(4)
    }
    assert [first.names[planted[t]] for t in range(4)] == [
        "Loyal Recent",
        "Lapsing Occasional",
        "Recent Low-Value",
        "High-Value",
    ]


def test_feature_profile_means_and_z_scores_match_numpy(scored: DataFrame) -> None:
    fp = segment_feature_profiles(scored, FEATURES, min_segment_size=10)
    assert fp.columns == ["segment_id", "feature", "mean", "z_score"]
    got = {(r["segment_id"], r["feature"]): (r["mean"], r["z_score"]) for r in fp.collect()}
    assert len(got) == 4 * len(FEATURES)
    local = scored.select("segment_id", *FEATURES).collect()
    for f in FEATURES:
        values = np.array([math.nan if r[f] is None else r[f] for r in local])
        seg = np.array([r["segment_id"] for r in local])
        pop_mean, pop_sd = np.nanmean(values), np.nanstd(values, ddof=1)
        for s in range(4):
            mean = np.nanmean(values[seg == s])
            assert got[(s, f)][0] == pytest.approx(mean, rel=1e-12)
            assert got[(s, f)][1] == pytest.approx((mean - pop_mean) / pop_sd, rel=1e-9)


def test_profile_features_are_profiled_after_the_model_features(
    scored: DataFrame, settings: ModelSettings, privacy: PrivacySettings
) -> None:
    # a descriptive column that is not clustered: profiled and named from, after the model's
    extra = settings.model_copy(update={"profile_features": ["visits", "frequency"]})
    assert extra.profiled == [*FEATURES, "visits"]
    frame = scored.withColumn("visits", F.col("frequency") * 2 + 1)
    result = profile_segments(frame, extra, privacy=privacy)
    fp = {(r["segment_id"], r["feature"]): r for r in result.feature_profiles.collect()}
    assert len(fp) == 4 * 4
    plain = {(r["segment_id"], r["feature"]): r for r in profile_segments(
        scored, settings, privacy=privacy).feature_profiles.collect()}  # fmt: skip
    for s in range(4):
        # a linear function of frequency: mean 2m + 1, the same z-score
        assert fp[(s, "visits")]["mean"] == pytest.approx(
            2 * plain[(s, "frequency")]["mean"] + 1, rel=1e-12
        )
        assert fp[(s, "visits")]["z_score"] == pytest.approx(
            plain[(s, "frequency")]["z_score"], rel=1e-9
        )
    with pytest.raises(InputError, match="profiled features not in the features table: visits"):
        profile_segments(scored, extra, privacy=privacy)


def test_small_segments_are_withheld_with_their_complement(
    scored: DataFrame, settings: ModelSettings, privacy: PrivacySettings
) -> None:
    # privacy.min_segment_size = 65 makes the 60-row blob small; alone it could be derived as
    # 300 - the published sizes, so the next-smallest segment (71 rows: one point of the
    # 70-blob sits nearer another centre) is withheld with it.
    strict = privacy.model_copy(update={"min_segment_size": 65})
    result = profile_segments(scored, settings, privacy=strict)
    sizes = {r["segment_id"]: r["count"] for r in scored.groupBy("segment_id").count().collect()}
    by_size = {n: s for s, n in sizes.items()}
    assert sorted(sizes.values()) == [60, 71, 80, 89]
    rows = {r["segment_id"]: r for r in result.profiles.collect()}
    withheld = {s for s, r in rows.items() if r["withheld"]}
    assert withheld == {by_size[60], by_size[71]} == set(result.withheld)
    for s in withheld:
        hidden = rows[s]
        assert (hidden["customers"], hidden["share"], hidden["value"], hidden["value_share"]) == (
            None,
            None,
            None,
            None,
        )
    # only the small segment is named "Small"; the complement keeps the name of its z-scores
    assert rows[by_size[60]]["segment_name"] == "Small"
    assert rows[by_size[71]]["segment_name"] not in (None, "Small")
    assert sum(r["share"] for r in rows.values() if not r["withheld"]) == pytest.approx(169 / 300)
    assert 300 - sum(r["customers"] for r in rows.values() if not r["withheld"]) >= 65
    fp = result.feature_profiles.where(F.col("segment_id").isin(*withheld)).collect()
    assert len(fp) == 6 and all(r["mean"] is None and r["z_score"] is None for r in fp)
    plain = segment_profiles(scored, None, names={}, min_segment_size=1).collect()
    assert all(r["value"] is None and r["segment_name"] is None for r in plain)


# --- MLflow ---------------------------------------------------------------------------------------


def test_mlflow_helpers_log_per_k_metrics_chosen_values_and_artifacts(
    selection, scored: DataFrame, settings: ModelSettings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import mlflow
    from mlflow.tracking import MlflowClient

    from segspark.model.artifacts import log_profiles, log_selection
    from segspark.tracking import step_run

    full = load_settings(env="test", overrides=[f"lake.root={tmp_path}"])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    try:
        with step_run(full, uri, domain="retail", step="train", as_of="2024-03-31") as run:
            log_selection(selection, threshold=settings.stability_threshold, min_segment_size=10)
            profiles = profile_segments(scored, settings, privacy=full.privacy)
            log_profiles(profiles.profiles, profiles.feature_profiles)
        client = MlflowClient(uri)
        history = client.get_metric_history(run.info.run_id, "silhouette")
        assert sorted(m.step for m in history) == [2, 3, 4, 5]
        by_k = {m.k: m.silhouette for m in selection.metrics}
        assert {m.step: m.value for m in history} == pytest.approx(by_k)
        data = client.get_run(run.info.run_id).data
        assert data.metrics["chosen_k"] == 4.0
        assert data.metrics["chosen_silhouette"] == pytest.approx(selection.chosen.silhouette)
        assert data.tags["k_rule"] == selection.rule
        files = {a.path for a in client.list_artifacts(run.info.run_id, "segmentation")}
        assert files == {
            f"segmentation/{n}"
            for n in (
                "k_selection.png",
                "k_metrics.csv",
                "k_rule.txt",
                "profile_heatmap.png",
                "segment_sizes.png",
                "segment_profiles.csv",
                "segment_feature_profiles.csv",
            )
        }
    finally:
        mlflow.set_tracking_uri(previous)
