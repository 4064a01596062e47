"""The segmentation steps end to end on generated data: train, score, run, migrate, identity."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from segspark.cli import main
from segspark.lake import Lake

pytestmark = pytest.mark.slow

DOMAIN = "telecom"
D1, D2 = "2024-03-31", "2024-04-30"
# best of four seeded starts per fit: single starts land in poor local optima on tiny data
RESTARTS = ("--set", "model.restarts=4")


def _cli(lake_root: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--lake", str(lake_root), "--env", "test", *RESTARTS, *args])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return code, out.getvalue(), err.getvalue()


def _ok(lake_root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    code, out, err = _cli(lake_root, *args, env=env)
    assert code == 0, err
    return out


def _snapshot_rows(lake: Lake, as_of: str) -> list[tuple[str, int, str]]:
    frame = lake.read("segment_snapshots").where(
        (F.col("domain") == DOMAIN) & (F.col("as_of") == F.lit(as_of).cast("date"))
    )
    return sorted(
        (r.customer_id, r.segment_id, r.segment_name)
        for r in frame.select("customer_id", "segment_id", "segment_name").collect()
    )


@pytest.fixture(scope="module")
def two_dates(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A lake with generated telecom data, run at two month ends (train, then score)."""
    root = tmp_path_factory.mktemp("segments")
    _ok(root, "generate", "--domain", DOMAIN, "--customers", "300", "--end", D2)
    _ok(root, "run", "--domain", DOMAIN, "--as-of", D1)
    _ok(root, "run", "--domain", DOMAIN, "--as-of", D2)
    yield root


def test_two_runs_give_two_snapshots_and_a_consistent_migration(
    two_dates: Path, spark: SparkSession
) -> None:
    lake = Lake(spark, str(two_dates), backend="delta-rs")
    first, second = _snapshot_rows(lake, D1), _snapshot_rows(lake, D2)
    assert first and second
    before = {c: s for c, s, _ in first}
    after = {c: s for c, s, _ in second}
    moves = lake.read("segment_migrations").where(F.col("domain") == DOMAIN).collect()
    assert len(moves) == len(set(before) | set(after))
    for row in moves:
        assert row.from_segment_id == before.get(row.customer_id)
        assert row.to_segment_id == after.get(row.customer_id)
        assert (str(row.from_as_of), str(row.to_as_of)) == (D1, D2)
    matrix = lake.read("segment_migration_matrix").where(F.col("domain") == DOMAIN).collect()
    counts: dict[tuple[Any, Any], int] = {}
    for row in moves:
        key = (row.from_segment_id, row.to_segment_id)
        counts[key] = counts.get(key, 0) + 1
    assert {(r.from_segment_id, r.to_segment_id): r.customers for r in matrix} == counts
    for row in matrix:
        if row.from_segment_id is not None:
            total = sum(n for (f, _), n in counts.items() if f == row.from_segment_id)
            assert row.share_of_from == pytest.approx(row.customers / total)
    drift = lake.read("segment_drift").where(F.col("domain") == DOMAIN).collect()
    assert {r.kind for r in drift} == {"share", "feature"}
    assert all(r.psi >= 0 for r in drift)


def test_champion_model_reproduces_the_snapshot(two_dates: Path, spark: SparkSession) -> None:
    lake = Lake(spark, str(two_dates), backend="delta-rs")
    mlflow.set_tracking_uri(f"sqlite:///{two_dates}/_mlflow/mlflow.db")
    model = mlflow.spark.load_model(f"models:/segspark-{DOMAIN}@champion")
    features = lake.read(f"{DOMAIN}_features").where(F.col("as_of") == F.lit(D2).cast("date"))
    scored = sorted(
        (r.customer_id, r.segment_id)
        for r in model.transform(features).select("customer_id", "segment_id").collect()
    )
    assert scored == [(c, s) for c, s, _ in _snapshot_rows(lake, D2)]


def test_train_run_holds_metrics_plots_and_the_registered_version(two_dates: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{two_dates}/_mlflow/mlflow.db")
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(f"segspark/{DOMAIN}")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.step = 'train'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["domain"] == DOMAIN and run.data.tags["as_of"] == D1
    history = client.get_metric_history(run.info.run_id, "silhouette")
    assert sorted(m.step for m in history) == [2, 3, 4, 5]
    for name in ("calinski_harabasz", "davies_bouldin", "wssse", "stability_ari"):
        assert len(client.get_metric_history(run.info.run_id, name)) == 4
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "segmentation")}
    assert any(p.endswith(".png") for p in artifacts)
    assert any(p.endswith(".csv") for p in artifacts)
    version = client.get_model_version_by_alias(f"segspark-{DOMAIN}", "champion")
    assert version.run_id == run.info.run_id
    steps = sorted(r.data.tags["step"] for r in client.search_runs([experiment.experiment_id], ""))
    assert steps == ["features", "features", "score", "train"]


def test_rerunning_a_date_leaves_the_tables_unchanged(two_dates: Path, spark: SparkSession) -> None:
    lake = Lake(spark, str(two_dates), backend="delta-rs")
    tables = (
        "segment_snapshots",
        "segment_migrations",
        "segment_migration_matrix",
        "segment_profiles",
        f"{DOMAIN}_features",
    )
    before = {t: lake.read(t).count() for t in tables}
    rows = _snapshot_rows(lake, D2)
    _ok(two_dates, "run", "--domain", DOMAIN, "--as-of", D2)
    assert {t: lake.read(t).count() for t in tables} == before
    assert _snapshot_rows(lake, D2) == rows


def test_retraining_with_another_seed_keeps_segment_ids(
    two_dates: Path, spark: SparkSession
) -> None:
    # the champion was trained on D1: retrain on the same data, same k, another seed
    lake = Lake(spark, str(two_dates), backend="delta-rs")
    rows = _snapshot_rows(lake, D1)
    registry = lake.read("segment_registry").where(F.col("domain") == DOMAIN)
    k = registry.where(F.col("retired_as_of").isNull()).count()
    _ok(two_dates, "--set", "model.seed=7", "train", "--domain", DOMAIN, "--as-of", D1,
        "--k", str(k))  # fmt: skip
    again = {c: s for c, s, _ in _snapshot_rows(lake, D1)}
    same = sum(1 for c, s, _ in rows if again.get(c) == s)
    assert same / len(rows) >= 0.99
    ids = [r.segment_id for r in lake.read("segment_registry").collect()]
    assert len(ids) == len(set(ids))


def test_an_interrupted_train_rerun_gives_the_uninterrupted_rows(
    spark: SparkSession, tmp_path: Path
) -> None:
    clean, broken = tmp_path / "clean", tmp_path / "broken"
    for root in (clean, broken):
        _ok(root, "generate", "--domain", DOMAIN, "--customers", "120")
        _ok(root, "features", "--domain", DOMAIN, "--as-of", D1)
    _ok(clean, "train", "--domain", DOMAIN, "--as-of", D1, "--k", "3")
    code, _, err = _cli(
        broken,
        "train",
        "--domain",
        DOMAIN,
        "--as-of",
        D1,
        "--k",
        "3",
        env={"SEGSPARK_FAULT": "snapshots.after_registry"},
    )
    assert code == 1
    assert "fault injected at snapshots.after_registry" in err
    lake = Lake(spark, str(broken), backend="delta-rs")
    assert not lake.exists("segment_snapshots")
    mlflow.set_tracking_uri(f"sqlite:///{broken}/_mlflow/mlflow.db")
    client = mlflow.MlflowClient()
    failed = client.search_runs(
        [client.get_experiment_by_name(f"segspark/{DOMAIN}").experiment_id],  # type: ignore[union-attr]
        "tags.step = 'train'",
    )
    assert [r.info.status for r in failed] == ["FAILED"]
    _ok(broken, "train", "--domain", DOMAIN, "--as-of", D1, "--k", "3")
    assert _snapshot_rows(lake, D1) == _snapshot_rows(Lake(spark, str(clean)), D1)


def test_score_without_a_champion_is_a_clear_error(cli: Any) -> None:
    code, _, err = cli("score", "--domain", "energy", "--as-of", D1)
    assert code == 2
    assert err == (
        "segspark: error: no champion model for energy: run `segspark train --domain energy` "
        "first\n"
    )


def test_the_migration_matrix_recovers_the_planted_transitions(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Planted monthly moves (30% of customers) are recovered from two snapshots.

    Telecom features over a 28-day window see one month of behaviour, so a customer's segment at
    a month end reflects that month's planted segment.
    """
    from segspark.config import load_settings
    from segspark.model.metrics import ari_from_contingency
    from segspark.synth import domain_transition_matrix

    share = 0.3
    opts = (
        "--set", "features.telecom.window_days=28", "--set", "features.telecom.trend_days=14",
        "--set", f"synth.migration_share={share}",
    )  # fmt: skip
    _ok(tmp_path, *opts, "generate", "--domain", DOMAIN, "--customers", "600", "--end", D2)
    _ok(tmp_path, *opts, "run", "--domain", DOMAIN, "--as-of", D1)
    _ok(tmp_path, *opts, "run", "--domain", DOMAIN, "--as-of", D2)
    lake = Lake(spark, str(tmp_path), backend="delta-rs")

    truth = {
        (r.customer_id, str(r.as_of)): r.true_segment
        for r in lake.read("synthetic_truth").where(F.col("domain") == DOMAIN).collect()
    }
    snapshot = {
        (r.customer_id, str(r.as_of)): r.segment_id
        for r in lake.read("segment_snapshots").where(F.col("domain") == DOMAIN).collect()
    }
    # every recovered segment stands for one planted segment (majority of its D1 members)
    members: dict[int, dict[str, int]] = {}
    for (customer, as_of), segment in snapshot.items():
        if as_of == D1 and (customer, D1) in truth:
            planted = truth[(customer, D1)]
            members.setdefault(segment, {}).setdefault(planted, 0)
            members[segment][planted] += 1
    label = {s: max(c, key=lambda p: c[p]) for s, c in members.items()}
    assert len(set(label.values())) == len(label) == 5
    table: dict[tuple[int, ...], int] = {}
    for segment, counts in members.items():
        for planted, n in counts.items():
            key = (segment, sorted(label.values()).index(planted))
            table[key] = table.get(key, 0) + n
    assert ari_from_contingency(table) >= 0.9

    # recovered transitions among customers in both snapshots vs (1 - m) I + m Q
    planted_q = domain_transition_matrix(
        load_settings(env="test", overrides=[f"synth.migration_share={share}"]).synth, DOMAIN
    )
    flows: dict[str, dict[str, int]] = {}
    for r in lake.read("segment_migrations").collect():
        if r.from_segment_id is not None and r.to_segment_id is not None:
            src, dst = label[r.from_segment_id], label.get(r.to_segment_id, "?")
            flows.setdefault(src, {}).setdefault(dst, 0)
            flows[src][dst] += 1
    for src, row in flows.items():
        n = sum(row.values())
        for dst in planted_q[src]:
            expected = (1 - share) * (src == dst) + share * planted_q[src][dst]
            observed = row.get(dst, 0) / n
            sampling_error = (expected * (1 - expected) / n) ** 0.5
            # 25 cells compared: 4 binomial standard errors (on this seed the largest is 2.7)
            assert abs(observed - expected) <= 4 * sampling_error, (src, dst, n, observed)


def test_automatic_k_finds_the_planted_energy_segments(spark: SparkSession, tmp_path: Path) -> None:
    """A one-month window sees the load shape each meter is planted with at the month end.

    Telecom's recovery is asserted by the migration test above (600 customers), retail's below.
    """
    domain = "energy"
    window = ("features.energy.window_days=28",)
    from segspark.config import load_settings
    from segspark.model.metrics import ari_from_contingency
    from segspark.synth import segment_names

    opts = [arg for value in window for arg in ("--set", value)]
    _ok(tmp_path, *opts, "generate", "--domain", domain, "--customers", "300")
    _ok(tmp_path, *opts, "run", "--domain", domain, "--as-of", D1)
    lake = Lake(spark, str(tmp_path), backend="delta-rs")
    planted = segment_names(load_settings(env="test").synth, domain)
    truth = {
        r.customer_id: r.true_segment
        for r in lake.read("synthetic_truth")
        .where(F.col("as_of") == F.lit(D1).cast("date"))
        .collect()
    }
    table: dict[tuple[int, ...], int] = {}
    for r in lake.read("segment_snapshots").collect():
        if r.customer_id in truth:  # lapsed during the month: events, but no planted segment
            key = (r.segment_id, planted.index(truth[r.customer_id]))
            table[key] = table.get(key, 0) + 1
    assert len({segment for segment, _ in table}) == len(planted) == 5
    assert ari_from_contingency(table) >= 0.9


def test_automatic_k_finds_the_planted_retail_segments(spark: SparkSession, tmp_path: Path) -> None:
    """A year of purchases without migration; k swept over 2..7, so splitting a segment shows.

    Rate and spend per visit separate the five planted segments (conf/retail.yaml); customers
    who lapsed before the year end have no planted segment then and are left out of the ARI.
    """
    from segspark.config import load_settings
    from segspark.model.metrics import ari_from_contingency
    from segspark.synth import segment_names

    as_of = "2024-06-30"
    settings = (
        "synth.start=2023-07-01",
        f"synth.end={as_of}",
        "synth.migration_share=0",
        "model.k_max=7",
    )
    opts = [arg for value in settings for arg in ("--set", value)]
    _ok(tmp_path, *opts, "generate", "--domain", "retail", "--customers", "600")
    _ok(tmp_path, *opts, "run", "--domain", "retail", "--as-of", as_of)
    lake = Lake(spark, str(tmp_path), backend="delta-rs")
    planted = segment_names(load_settings(env="test").synth, "retail")
    truth = {
        r.customer_id: r.true_segment
        for r in lake.read("synthetic_truth")
        .where(F.col("as_of") == F.lit(as_of).cast("date"))
        .collect()
    }
    snapshot = lake.read("segment_snapshots").collect()
    table: dict[tuple[int, ...], int] = {}
    for r in snapshot:
        if r.customer_id in truth:
            key = (r.segment_id, planted.index(truth[r.customer_id]))
            table[key] = table.get(key, 0) + 1
    assert len({r.segment_id for r in snapshot}) == len(planted) == 5
    assert sum(table.values()) >= 400  # most of the 600 are active at the year end
    assert ari_from_contingency(table) >= 0.9
    # profiled beyond the two clustered features: every segment has all seven z-scores
    profiles = lake.read("segment_feature_profiles").collect()
    assert sorted({r.feature for r in profiles}) == [
        "basket_size",
        "frequency",
        "monetary_per_transaction",
        "monetary_total",
        "purchase_rate",
        "recency_days",
        "tenure_days",
    ]
    assert len(profiles) == 5 * 7
