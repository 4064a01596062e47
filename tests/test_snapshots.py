"""Segment identity, registry, snapshots, migrations and drift, on tiny inline data."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.sql import DataFrame, SparkSession

from segspark.config import load_settings
from segspark.drift import (
    DRIFT_TABLE,
    bin_counts,
    bin_edges,
    feature_psi,
    psi,
    retrain_recommended,
    segment_drift,
    share_psi,
    write_drift,
)
from segspark.errors import InputError, UsageError
from segspark.faults import InjectedFault
from segspark.lake import Lake
from segspark.model.pipeline import cluster_centers
from segspark.snapshots import (
    MATRIX_TABLE,
    MIGRATIONS_TABLE,
    REGISTRY_TABLE,
    SNAPSHOTS_TABLE,
    Registered,
    active_segments,
    centroids_in_space_of,
    match_segments,
    migration_matrix,
    migrations,
    next_segment_id,
    previous_snapshot_date,
    read_snapshot,
    rescale_centroids,
    scaler_stats,
    segment_names,
    snapshot_dates,
    snapshot_frame,
    update_registry,
    write_migrations,
    write_snapshot,
)

D1, D2, D3 = dt.date(2024, 1, 31), dt.date(2024, 2, 29), dt.date(2024, 3, 31)
EPS = 1e-4


def _rows(df: DataFrame) -> list[tuple[Any, ...]]:
    return sorted((tuple(r) for r in df.collect()), key=repr)


def _sorted(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted(rows, key=repr)


def _scored(spark: SparkSession, rows: list[tuple[str, int]]) -> DataFrame:
    return spark.createDataFrame(rows, "customer_id string, segment_id int")


SNAPSHOT_TYPES = (
    "struct<domain:string,as_of:date,customer_id:string,segment_id:int,segment_name:string,"
    "model_name:string,model_version:string,run_id:string>"
)
REGISTRY_TYPES = (
    "struct<domain:string,segment_id:int,segment_name:string,centroid:array<double>,"
    "first_as_of:date,retired_as_of:date,model_version:string>"
)


# -- identity ---------------------------------------------------------------------------------

OLD = [
    Registered(4, "Loyal", [0.0, 0.0]),
    Registered(7, "Rare", [3.0, 0.0]),
    Registered(9, "Night", [0.0, 3.0]),
]


def test_permuted_centroids_map_back_to_their_original_ids() -> None:
    result = match_segments(OLD, [[0.1, 2.9], [0.0, 0.2], [3.1, 0.0]], threshold=1.0, next_id=10)
    assert result.mapping == {0: 9, 1: 4, 2: 7}
    assert result.names == {4: "Loyal", 7: "Rare", 9: "Night"}
    assert (result.new_ids, result.retired, result.next_id) == ((), (), 10)
    assert result.distances == pytest.approx({0: math.hypot(0.1, 0.1), 1: 0.2, 2: 0.1})
    assert result.matched == {0: 9, 1: 4, 2: 7}


def test_far_centroid_gets_the_next_id_and_the_unmatched_segment_retires() -> None:
    result = match_segments(OLD, [[0.0, 3.0], [20.0, 20.0], [0.0, 0.0]], threshold=1.0, next_id=12)
    assert result.mapping == {0: 9, 1: 12, 2: 4}
    assert result.new_ids == (12,)
    assert result.retired == (7,)
    assert result.next_id == 13
    assert result.names == {4: "Loyal", 9: "Night"}
    assert result.new_clusters == {1: 12}


def test_more_clusters_than_segments_and_a_first_model() -> None:
    first = match_segments([], [[1.0], [2.0]], threshold=0.5, next_id=0)
    assert (first.mapping, first.new_ids, first.retired) == ({0: 0, 1: 1}, (0, 1), ())
    grown = match_segments(
        [Registered(0, "A", [1.0])], [[5.0], [1.2], [9.0]], threshold=0.5, next_id=2
    )
    assert grown.mapping == {0: 2, 1: 0, 2: 3}
    assert grown.next_id == 4


def test_match_segments_rejects_bad_arguments() -> None:
    with pytest.raises(
        UsageError, match="would reuse an issued segment_id; it must be at least 10"
    ):
        match_segments(OLD, [[0.0, 0.0]], threshold=1.0, next_id=9)
    with pytest.raises(UsageError, match="centroid dimensions differ: previous 2, new 3"):
        match_segments(OLD, [[0.0, 0.0, 0.0]], threshold=1.0, next_id=10)
    with pytest.raises(UsageError, match="threshold must be a finite number >= 0"):
        match_segments(OLD, [[0.0, 0.0]], threshold=-1.0, next_id=10)
    with pytest.raises(UsageError, match="new_centroids is empty"):
        match_segments(OLD, [], threshold=1.0, next_id=10)
    with pytest.raises(UsageError, match="repeat a segment_id"):
        match_segments([OLD[0], OLD[0]], [[0.0, 0.0]], threshold=1.0, next_id=10)


def test_rescale_centroids_moves_between_scaler_spaces() -> None:
    moved = rescale_centroids(
        [[1.0, -1.0], [0.0, 2.0]],
        from_mean=[10.0, 0.0],
        from_std=[2.0, 1.0],
        to_mean=[11.0, 1.0],
        to_std=[4.0, 0.0],
    )
    assert moved == [[0.25, 0.0], [-0.25, 0.0]]
    with pytest.raises(UsageError, match="one value per feature \\(2\\)"):
        rescale_centroids(
            [[1.0, 2.0]], from_mean=[0.0], from_std=[1.0], to_mean=[0.0], to_std=[1.0]
        )


def test_scaler_stats_of_a_fitted_pipeline(spark: SparkSession) -> None:
    from pyspark.ml import Pipeline

    df = spark.createDataFrame([(1.0, 10.0), (3.0, 10.0), (5.0, 10.0)], "a double, b double")
    model = Pipeline(
        stages=[
            VectorAssembler(inputCols=["a", "b"], outputCol="v"),
            StandardScaler(inputCol="v", outputCol="s", withMean=True, withStd=True),
        ]
    ).fit(df)
    mean, std = scaler_stats(model)
    assert mean == pytest.approx([3.0, 10.0])
    assert std == pytest.approx([2.0, 0.0])  # sample std; a constant feature has std 0
    # centroid a = +1 std in this space is a = 5 raw; in a space with mean 4, std 0.5: +2
    [moved] = rescale_centroids(
        [[1.0, 0.0]], from_mean=mean, from_std=std, to_mean=[4.0, 10.0], to_std=[0.5, 1.0]
    )
    assert moved == pytest.approx([2.0, 0.0])


@pytest.mark.parametrize("pca", [False, True])
def test_centroids_in_space_of_the_champion(spark: SparkSession, pca: bool) -> None:
    from pyspark.ml import Pipeline
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.feature import PCA

    def fit(rows: list[tuple[float, float]]) -> Any:
        stages: list[Any] = [
            VectorAssembler(inputCols=["a", "b"], outputCol="v"),
            StandardScaler(inputCol="v", outputCol="s", withMean=True, withStd=True),
        ]
        if pca:
            stages.append(PCA(k=2, inputCol="s", outputCol="p"))
        stages.append(KMeans(k=2, seed=1, maxIter=5, initSteps=1, featuresCol="p" if pca else "s"))
        return Pipeline(stages=stages).fit(spark.createDataFrame(rows, "a double, b double"))

    # Both data sets have clusters centred on (0.1, 1) and (10.1, 5) in raw units.
    champion = fit([(0.0, 1.0), (0.2, 1.0), (10.0, 5.0), (10.2, 5.0)])
    retrained = fit([(0.0, 0.0), (0.2, 2.0), (10.0, 5.0), (10.2, 5.0), (10.1, 5.0)])
    moved = sorted(centroids_in_space_of(retrained, champion))
    expected = sorted(cluster_centers(champion))
    assert moved[0] == pytest.approx(expected[0])
    assert moved[1] == pytest.approx(expected[1])
    same = centroids_in_space_of(champion, champion)
    assert [pytest.approx(c) for c in cluster_centers(champion)] == same


# -- registry ---------------------------------------------------------------------------------


def test_registry_rounds_keep_ids_retire_and_never_reuse(spark: SparkSession) -> None:
    other = spark.createDataFrame(
        [("energy", 50, "Other", [1.0, 1.0], D1, None, "9")],
        "domain string, segment_id int, segment_name string, centroid array<double>, "
        "first_as_of date, retired_as_of date, model_version string",
    )
    assert next_segment_id(other, "retail") == 0
    assert active_segments(other, "retail") == []

    first_centroids = [[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]]
    first = match_segments([], first_centroids, threshold=1.0, next_id=0)
    reg1 = update_registry(
        spark,
        other,
        first,
        domain="retail",
        as_of=D1,
        model_version="1",
        centroids=first_centroids,
        names={0: "A", 1: "B", 2: "C"},
    )
    assert reg1.schema.simpleString() == REGISTRY_TYPES
    assert _rows(reg1) == _sorted(
        [
            ("retail", 0, "A", [0.0, 0.0], D1, None, "1"),
            ("retail", 1, "B", [3.0, 0.0], D1, None, "1"),
            ("retail", 2, "C", [0.0, 3.0], D1, None, "1"),
        ]
    )

    second_centroids = [[0.1, 3.0], [0.0, 0.1], [9.0, 9.0]]
    second = match_segments(
        active_segments(reg1, "retail"),
        second_centroids,
        threshold=1.0,
        next_id=next_segment_id(reg1, "retail"),
    )
    assert (second.mapping, second.retired, second.new_ids) == ({0: 2, 1: 0, 2: 3}, (1,), (3,))
    reg2 = update_registry(
        spark,
        reg1,
        second,
        domain="retail",
        as_of=D2,
        model_version="2",
        centroids=second_centroids,
        names={0: "X", 1: "Y", 2: "A"},
    )
    assert _rows(reg2) == _sorted(
        [
            ("retail", 0, "A", [0.0, 0.1], D1, None, "2"),
            ("retail", 1, "B", [3.0, 0.0], D1, D2, "1"),
            ("retail", 2, "C", [0.1, 3.0], D1, None, "2"),
            ("retail", 3, "A II", [9.0, 9.0], D2, None, "2"),
        ]
    )

    # The retired segment 1's centroid comes back: it is not active, so it gets a fresh id.
    third_centroids = [[3.0, 0.0], [9.0, 9.0]]
    third = match_segments(
        active_segments(reg2, "retail"),
        third_centroids,
        threshold=1.0,
        next_id=next_segment_id(reg2, "retail"),
    )
    assert (third.mapping, third.retired, third.new_ids) == ({0: 4, 1: 3}, (0, 2), (4,))
    reg3 = update_registry(
        spark,
        reg2,
        third,
        domain="retail",
        as_of=D3,
        model_version="3",
        centroids=third_centroids,
        names={0: "B", 1: "Z"},
    )
    assert _rows(reg3) == _sorted(
        [
            ("retail", 0, "A", [0.0, 0.1], D1, D3, "2"),
            ("retail", 1, "B", [3.0, 0.0], D1, D2, "1"),
            ("retail", 2, "C", [0.1, 3.0], D1, D3, "2"),
            ("retail", 3, "A II", [9.0, 9.0], D2, None, "3"),
            ("retail", 4, "B", [3.0, 0.0], D3, None, "3"),
        ]
    )
    assert next_segment_id(reg3, "retail") == 5
    assert segment_names(reg3, "retail") == {0: "A", 1: "B", 2: "C", 3: "A II", 4: "B"}


def test_update_registry_rejects_a_stale_match_or_a_reused_id(spark: SparkSession) -> None:
    centroids = [[0.0], [5.0]]
    reg = update_registry(
        spark,
        None,
        match_segments([], centroids, threshold=1.0, next_id=0),
        domain="retail",
        as_of=D1,
        model_version="1",
        centroids=centroids,
        names={0: "A", 1: "B"},
    )
    stale = match_segments([Registered(0, "A", [0.0])], [[0.0], [9.0]], threshold=1, next_id=1)
    with pytest.raises(UsageError, match=r"segment_id\(s\) \[1\] were issued before"):
        update_registry(
            spark,
            reg,
            stale,
            domain="retail",
            as_of=D2,
            model_version="2",
            centroids=[[0.0], [9.0]],
            names={1: "N"},
        )
    partial = match_segments([Registered(0, "A", [0.0])], [[0.0]], threshold=1, next_id=2)
    with pytest.raises(UsageError, match=r"was not computed against the active segments \[0, 1\]"):
        update_registry(
            spark,
            reg,
            partial,
            domain="retail",
            as_of=D2,
            model_version="2",
            centroids=[[0.0]],
            names={},
        )


# -- snapshots --------------------------------------------------------------------------------


def _snapshot(spark: SparkSession, rows: list[tuple[str, int]], as_of: dt.date) -> DataFrame:
    return snapshot_frame(
        _scored(spark, rows),
        {1: "Loyal", 2: "Rare", 3: "Night"},
        domain="retail",
        as_of=as_of,
        model_name="segspark-retail",
        model_version="3",
        run_id="run-1",
    )


def test_snapshot_frame_names_segments_and_refuses_unknown_ids(spark: SparkSession) -> None:
    frame = _snapshot(spark, [("c1", 1), ("c2", 3)], D1)
    assert frame.schema.simpleString() == SNAPSHOT_TYPES
    assert _rows(frame) == [
        ("retail", D1, "c1", 1, "Loyal", "segspark-retail", "3", "run-1"),
        ("retail", D1, "c2", 3, "Night", "segspark-retail", "3", "run-1"),
    ]
    with pytest.raises(Exception, match="segment_id 8 has no name in the segment registry"):
        _snapshot(spark, [("c1", 8)], D1).collect()
    with pytest.raises(InputError, match="the scored frame lacks column\\(s\\) segment_id"):
        snapshot_frame(
            spark.createDataFrame([("c1",)], "customer_id string"),
            {1: "x"},
            domain="retail",
            as_of=D1,
            model_name="m",
            model_version="1",
        )


def test_snapshot_rewrite_replaces_only_its_partition_and_keeps_history(
    spark: SparkSession, lake: Lake
) -> None:
    jan = _snapshot(spark, [("c1", 1), ("c2", 2)], D1)
    feb = _snapshot(spark, [("c1", 2), ("c3", 3)], D2)
    assert write_snapshot(lake, jan, domain="retail", as_of=D1).snapshot.version == 0
    assert write_snapshot(lake, feb, domain="retail", as_of=D2).snapshot.version == 1
    feb_rows = _rows(read_snapshot(lake, domain="retail", as_of=D2))

    again = write_snapshot(lake, jan, domain="retail", as_of=D1)
    assert (again.snapshot.version, again.registry) == (2, None)
    assert _rows(lake.read(SNAPSHOTS_TABLE)) == _sorted([*_rows(jan), *feb_rows])

    changed = _snapshot(spark, [("c1", 3)], D1)
    assert write_snapshot(lake, changed, domain="retail", as_of="2024-01-31").snapshot.version == 3
    assert _rows(read_snapshot(lake, domain="retail", as_of=D1)) == [
        ("retail", D1, "c1", 3, "Night", "segspark-retail", "3", "run-1")
    ]
    assert _rows(read_snapshot(lake, domain="retail", as_of=D2)) == feb_rows
    assert _rows(read_snapshot(lake, domain="retail", as_of=D1, version=2)) == _rows(jan)
    assert read_snapshot(lake, domain="retail", as_of=D1).schema.simpleString() == SNAPSHOT_TYPES
    assert snapshot_dates(lake, "retail") == [D1, D2]
    assert snapshot_dates(lake, "energy") == []
    assert previous_snapshot_date(lake, "retail", D2) == D1
    assert previous_snapshot_date(lake, "retail", D1) is None
    with pytest.raises(UsageError, match="outside the partitions being replaced"):
        write_snapshot(lake, feb, domain="retail", as_of=D1)


def _registry(spark: SparkSession) -> DataFrame:
    centroids = [[0.0, 1.0], [2.0, 3.0]]
    return update_registry(
        spark,
        None,
        match_segments([], centroids, threshold=1.0, next_id=1),
        domain="retail",
        as_of=D2,
        model_version="3",
        centroids=centroids,
        names={0: "Loyal", 1: "Rare"},
    )


@pytest.mark.parametrize("earlier_snapshot", [False, True])
def test_registry_and_snapshot_retry_after_a_crash_between_them(
    spark: SparkSession, lake: Lake, monkeypatch: pytest.MonkeyPatch, earlier_snapshot: bool
) -> None:
    if earlier_snapshot:
        write_snapshot(lake, _snapshot(spark, [("c0", 3)], D1), domain="retail", as_of=D1)
    registry = _registry(spark)
    snap = _snapshot(spark, [("c1", 1), ("c2", 2)], D2)

    real_write = lake.write

    def crash_on_snapshot(table: str, df: DataFrame, **kwargs: Any) -> Any:
        if table == SNAPSHOTS_TABLE:
            monkeypatch.setenv("SEGSPARK_FAULT", "lake.before_commit")
        try:
            return real_write(table, df, **kwargs)
        finally:
            monkeypatch.delenv("SEGSPARK_FAULT", raising=False)

    monkeypatch.setattr(lake, "write", crash_on_snapshot)
    with pytest.raises(InjectedFault, match=r"lake\.before_commit"):
        write_snapshot(lake, snap, domain="retail", as_of=D2, registry_frame=registry)
    monkeypatch.setattr(lake, "write", real_write)
    assert lake.version(REGISTRY_TABLE) == 0
    assert lake.exists(SNAPSHOTS_TABLE) == earlier_snapshot
    if earlier_snapshot:
        assert lake.version(SNAPSHOTS_TABLE) == 0

    retry = write_snapshot(lake, snap, domain="retail", as_of=D2, registry_frame=registry)
    assert retry.registry is not None and retry.registry.skipped
    assert retry.snapshot.version == (1 if earlier_snapshot else 0)
    assert lake.version(REGISTRY_TABLE) == 0
    assert _rows(lake.read(REGISTRY_TABLE)) == _rows(registry)
    assert _rows(read_snapshot(lake, domain="retail", as_of=D2)) == _rows(snap)
    assert lake.read(SNAPSHOTS_TABLE).count() == (3 if earlier_snapshot else 2)

    # A completed pair repeated later is a new run: both tables get a new version.
    rerun = write_snapshot(lake, snap, domain="retail", as_of=D2, registry_frame=registry)
    assert rerun.registry is not None and rerun.registry.version == 1
    assert rerun.snapshot.version == retry.snapshot.version + 1
    assert _rows(lake.read(REGISTRY_TABLE)) == _rows(registry)
    assert _rows(read_snapshot(lake, domain="retail", as_of=D2)) == _rows(snap)


# -- migrations -------------------------------------------------------------------------------


@pytest.fixture
def pair(spark: SparkSession) -> tuple[DataFrame, DataFrame]:
    schema = "domain string, as_of date, customer_id string, segment_id int"
    snapshots = spark.createDataFrame(
        [
            ("retail", D1, "c1", 1),
            ("retail", D1, "c2", 1),
            ("retail", D1, "c7", 1),
            ("retail", D1, "c3", 2),
            ("retail", D1, "c4", 2),
            ("retail", D2, "c1", 1),  # stayed
            ("retail", D2, "c7", 1),  # stayed
            ("retail", D2, "c2", 2),  # moved
            ("retail", D2, "c3", 2),  # stayed; c4 lapsed
            ("retail", D2, "c5", 3),  # new
            ("retail", D2, "c6", 1),  # new
            ("energy", D2, "c9", 1),  # another domain
            ("retail", D3, "c8", 1),  # another date
        ],
        schema,
    )
    values = spark.createDataFrame(
        [
            ("c1", D1, 1.0),
            ("c1", D2, 10.0),
            ("c7", D2, 5.0),
            ("c2", D2, 20.0),
            ("c3", D2, 30.0),
            ("c4", D1, 40.0),
            ("c5", D2, 50.0),
            ("c6", D2, 60.0),
            ("c8", D3, 99.0),
        ],
        "customer_id string, as_of date, value double",
    )
    return snapshots, values


MIGRATION_ROWS = [
    ("retail", D1, D2, "c1", 1, 1, 10.0),
    ("retail", D1, D2, "c2", 1, 2, 20.0),
    ("retail", D1, D2, "c3", 2, 2, 30.0),
    ("retail", D1, D2, "c4", 2, None, 40.0),
    ("retail", D1, D2, "c5", None, 3, 50.0),
    ("retail", D1, D2, "c6", None, 1, 60.0),
    ("retail", D1, D2, "c7", 1, 1, 5.0),
]
MATRIX_ROWS = [
    ("retail", D1, D2, 1, 1, 2, 2 / 3, 15.0),
    ("retail", D1, D2, 1, 2, 1, 1 / 3, 20.0),
    ("retail", D1, D2, 2, 2, 1, 0.5, 30.0),
    ("retail", D1, D2, 2, None, 1, 0.5, 40.0),
    ("retail", D1, D2, None, 3, 1, 0.5, 50.0),
    ("retail", D1, D2, None, 1, 1, 0.5, 60.0),
]


def test_migrations_cover_stayed_moved_new_and_lapsed_customers(
    pair: tuple[DataFrame, DataFrame],
) -> None:
    snapshots, values = pair
    moves = migrations(snapshots, snapshots, values, domain="retail", from_as_of=D1, to_as_of=D2)
    assert moves.schema.simpleString() == (
        "struct<domain:string,from_as_of:date,to_as_of:date,customer_id:string,"
        "from_segment_id:int,to_segment_id:int,value:double>"
    )
    assert _rows(moves) == _sorted(MIGRATION_ROWS)
    no_values = migrations(snapshots, snapshots, None, domain="retail", from_as_of=D1, to_as_of=D2)
    assert _rows(no_values) == _sorted([(*r[:6], None) for r in MIGRATION_ROWS])
    with pytest.raises(UsageError, match=r"from_as_of \(2024-02-29\) must be before to_as_of"):
        migrations(snapshots, snapshots, values, domain="retail", from_as_of=D2, to_as_of=D1)


def test_migration_matrix_counts_shares_and_values(pair: tuple[DataFrame, DataFrame]) -> None:
    snapshots, values = pair
    moves = migrations(snapshots, snapshots, values, domain="retail", from_as_of=D1, to_as_of=D2)
    matrix = migration_matrix(moves)
    assert matrix.schema.simpleString() == (
        "struct<domain:string,from_as_of:date,to_as_of:date,from_segment_id:int,"
        "to_segment_id:int,customers:bigint,share_of_from:double,value:double>"
    )
    got = _rows(matrix)
    expected = _sorted(MATRIX_ROWS)
    assert [r[:6] for r in got] == [r[:6] for r in expected]
    assert [r[6:] for r in got] == [pytest.approx(r[6:]) for r in expected]


def test_write_migrations_replaces_the_date_pair_in_both_tables(
    spark: SparkSession, lake: Lake, pair: tuple[DataFrame, DataFrame]
) -> None:
    snapshots, values = pair
    moves = migrations(snapshots, snapshots, values, domain="retail", from_as_of=D1, to_as_of=D2)
    later = migrations(snapshots, snapshots, values, domain="retail", from_as_of=D2, to_as_of=D3)
    write_migrations(
        lake, later, migration_matrix(later), domain="retail", from_as_of=D2, to_as_of=D3
    )
    first = write_migrations(
        lake, moves, migration_matrix(moves), domain="retail", from_as_of=D1, to_as_of=D2
    )
    second = write_migrations(
        lake, moves, migration_matrix(moves), domain="retail", from_as_of=D1, to_as_of=D2
    )
    assert [r.version for r in first] == [1, 1]
    assert [r.version for r in second] == [2, 2]
    assert _rows(lake.read(MIGRATIONS_TABLE)) == _sorted([*MIGRATION_ROWS, *_rows(later)])
    assert lake.read(MATRIX_TABLE).count() == len(MATRIX_ROWS) + migration_matrix(later).count()
    assert lake.partition_columns(MATRIX_TABLE) == ["domain", "from_as_of", "to_as_of"]


# -- drift ------------------------------------------------------------------------------------


def test_psi_of_identical_distributions_is_zero_and_matches_hand_values() -> None:
    assert psi([10, 20, 30], [1, 2, 3], epsilon=EPS) == 0.0
    assert psi([50, 50], [25, 75], epsilon=EPS) == pytest.approx(0.25 * math.log(3))
    # an empty bin counts as epsilon
    hand = (0.5 - 0.5) * 0 + (0.5 - EPS) * math.log(0.5 / EPS) + (EPS - 0.5) * math.log(EPS / 0.5)
    assert psi([1, 1, 0], [1, 0, 1], epsilon=EPS) == pytest.approx(hand)
    with pytest.raises(UsageError, match="same, non-zero number of bins \\(2 vs 3\\)"):
        psi([1, 1], [1, 1, 1], epsilon=EPS)
    with pytest.raises(InputError, match="without any observation"):
        psi([0, 0], [1, 1], epsilon=EPS)


def test_share_psi_between_two_snapshots(spark: SparkSession) -> None:
    before = _scored(spark, [("a", 1), ("b", 1), ("c", 2), ("d", 2)])
    after = _scored(spark, [("a", 1), ("b", 2), ("c", 2), ("d", 2)])
    assert share_psi(before, before, epsilon=EPS) == 0.0
    assert share_psi(before, after, epsilon=EPS) == pytest.approx(0.25 * math.log(3))
    new_segment = _scored(spark, [("a", 1), ("b", 2), ("c", 2), ("d", 5)])
    hand = (
        (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.5 - 0.5) * 0 + (0.25 - EPS) * math.log(0.25 / EPS)
    )
    assert share_psi(before, new_segment, epsilon=EPS) == pytest.approx(hand)


def test_feature_psi_bins_at_the_earlier_quantiles(spark: SparkSession) -> None:
    schema = "x double, n long"
    expected = spark.createDataFrame([(1.0, 7), (2.0, 7), (3.0, 7), (4.0, 7)], schema)
    actual = spark.createDataFrame([(1.0, 7), (5.0, 7), (6.0, 7), (None, 7)], schema)
    edges = bin_edges(expected, ["x", "n"], bins=2, accuracy=10000)
    assert edges == {"x": [2.0], "n": [7.0]}
    assert bin_counts(actual, edges) == {"x": [1, 2, 1], "n": [4, 0, 0]}
    result = feature_psi(expected, actual, ["x", "n"], bins=2, epsilon=EPS, accuracy=10000)
    # x: bins (<=2, >2, missing) expected [.5, .5, 0], actual [.25, .5, .25]
    hand = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.25 - EPS) * math.log(0.25 / EPS)
    assert result == pytest.approx({"x": hand, "n": 0.0})
    assert feature_psi(expected, expected, ["x"], bins=10, epsilon=EPS, accuracy=10000) == {
        "x": 0.0
    }
    with pytest.raises(InputError, match="lacks feature column\\(s\\) y"):
        feature_psi(expected, actual, ["y"], bins=2, epsilon=EPS, accuracy=10000)


def test_retrain_recommended_when_a_psi_exceeds_the_threshold(spark: SparkSession) -> None:
    rows = [
        {"kind": "share", "name": "segment_id", "psi": 0.05},
        {"kind": "feature", "name": "x", "psi": 0.25},
    ]
    assert not retrain_recommended(rows, 0.25)
    assert retrain_recommended(rows, 0.2)
    assert not retrain_recommended([], 0.25)
    frame = spark.createDataFrame(
        [(r["kind"], r["name"], r["psi"]) for r in rows], "kind string, name string, psi double"
    )
    assert not retrain_recommended(frame, 0.25)
    assert retrain_recommended(frame, 0.1)
    with pytest.raises(UsageError, match="threshold must be a finite number >= 0"):
        retrain_recommended(rows, float("nan"))


def test_segment_drift_rows_and_their_table(
    spark: SparkSession, lake: Lake, pair: tuple[DataFrame, DataFrame]
) -> None:
    snapshots, values = pair
    settings = load_settings(env="test").snapshots
    assert (settings.psi_bins, settings.psi_epsilon, settings.psi_retrain) == (10, 1e-4, 0.25)
    drift = segment_drift(
        snapshots,
        snapshots,
        values,
        values,
        ["value"],
        domain="retail",
        from_as_of=D1,
        to_as_of=D2,
        settings=settings.model_copy(update={"psi_bins": 2}),
    )
    assert drift.schema.simpleString() == (
        "struct<domain:string,from_as_of:date,to_as_of:date,kind:string,name:string,psi:double>"
    )
    # shares: D1 {1: 3/5, 2: 2/5}, D2 {1: 3/6, 2: 2/6, 3: 1/6}
    share = (
        (0.5 - 0.6) * math.log(0.5 / 0.6)
        + (1 / 3 - 0.4) * math.log((1 / 3) / 0.4)
        + (1 / 6 - EPS) * math.log((1 / 6) / EPS)
    )
    # value: D1 values [1, 40], median edge 1 -> expected [1/2, 1/2]; D2 [10, 5, 20, 30, 50, 60]
    value = (EPS - 0.5) * math.log(EPS / 0.5) + (1 - 0.5) * math.log(1 / 0.5)
    got = {(r["kind"], r["name"]): r["psi"] for r in drift.collect()}
    assert got == pytest.approx({("share", "segment_id"): share, ("feature", "value"): value})
    assert write_drift(lake, drift, domain="retail", from_as_of=D1, to_as_of=D2).version == 0
    assert write_drift(lake, drift, domain="retail", from_as_of=D1, to_as_of=D2).version == 1
    assert _rows(lake.read(DRIFT_TABLE)) == _rows(drift)
    assert retrain_recommended(lake.read(DRIFT_TABLE), settings.psi_retrain)
