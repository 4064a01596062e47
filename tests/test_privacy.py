"""Privacy: pseudonymised customer ids, withheld small segments, noisy profiles, closed doors.

* HMAC-SHA-256 built from Spark's ``sha2`` equals Python's ``hmac`` (RFC 4231 vector included),
  and a pseudonymised ``segspark run`` leaves no source id below bronze and the key nowhere: not
  in a lake file, the MLflow store, a log line or the config hash. A missing key exits 2 with
  nothing written.
* A planted segment of three customers is withheld (with its complement) in ``segment_profiles``,
  ``segment_feature_profiles``, the HTML report and the MLflow run; no customer id reaches MLflow.
* The Laplace noise of ``privacy.epsilon`` has the documented scale (variance and KS test).
* ``segspark query`` refuses names that leave the lake; ``segspark ui`` binds 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from scipy import stats

from segspark.config import PrivacySettings, Settings, load_settings
from segspark.errors import ConfigError, UsageError
from segspark.lake import Lake
from segspark.model.profile import (
    SegmentStats,
    exact_values,
    noise_scales,
    noisy_values,
    profile_segments,
    release_statistics,
    segment_statistics,
    withheld_segments,
)
from segspark.privacy import (
    KEY_ENV,
    hmac_pads,
    hmac_sha256,
    laplace_noise,
    laplace_scale,
    load_key,
    pseudonymize,
    require_key,
    split_epsilon,
)
from segspark.query import check_statement, resolve_tables
from segspark.report import Flow, suppress_flows

Cli = Callable[..., tuple[int, str, str]]

KEY = "pseudonym-key-é-0123456789-abcdefghijklmnopqrstuvwxyz"
MISSING_KEY = (
    "segspark: error: privacy.pseudonymize is on but there is no key: set "
    "SEGSPARK_PSEUDONYM_KEY or privacy.key_file\n"
)


def _hmac_hex(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()


def _files_containing(root: Path, needles: dict[str, bytes]) -> list[tuple[str, str]]:
    """(file, needle name) for every file under ``root`` whose bytes contain a needle."""
    hits = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            hits += [(str(path), name) for name, needle in needles.items() if needle in data]
    return hits


# --------------------------------------------------------------------------------------------
# HMAC-SHA-256 in Spark


MESSAGES = ["C0001", "", "Zoë Ünïcødé", "客户-42", "x" * 300, "tab\tand\nnewline", None]


@pytest.mark.parametrize(
    "key",
    [b"", b"0123456789", bytes(range(64)), bytes(range(100)), "ключ-ü".encode()],
    ids=["empty", "10-bytes", "64-bytes", "100-bytes", "non-ascii"],
)
def test_spark_hmac_equals_python_hmac(spark: SparkSession, key: bytes) -> None:
    inner, outer = hmac_pads(key)
    frame = spark.createDataFrame(
        [(i, m, bytearray(inner), bytearray(outer)) for i, m in enumerate(MESSAGES)],
        "i int, m string, ipad binary, opad binary",
    )
    got = [
        r["h"]
        for r in frame.select("i", hmac_sha256(F.col("m"), F.col("ipad"), F.col("opad")).alias("h"))
        .orderBy("i")
        .collect()
    ]
    assert got == [None if m is None else _hmac_hex(key, m) for m in MESSAGES]
    if key:  # pseudonymize refuses an empty key; otherwise it must agree
        ids = spark.createDataFrame([(i, m) for i, m in enumerate(MESSAGES)], "i int, m string")
        rows = pseudonymize(ids, key, columns=["m"]).orderBy("i").collect()
        assert [r["m"] for r in rows] == got


def test_rfc_4231_test_case_1(spark: SparkSession) -> None:
    frame = spark.createDataFrame([("Hi There",)], "customer_id string")
    row = pseudonymize(frame, b"\x0b" * 20).first()
    assert row is not None
    assert row["customer_id"] == (
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    )


def test_pseudonymize_replaces_only_the_id_and_keeps_the_schema_order(
    spark: SparkSession,
) -> None:
    frame = spark.createDataFrame(
        [("C1", 3, "north"), ("C2", None, None)], "customer_id string, n int, region string"
    )
    out = pseudonymize(frame, KEY.encode())
    assert out.columns == ["customer_id", "n", "region"]
    assert [f.dataType.simpleString() for f in out.schema.fields] == ["string", "int", "string"]
    assert sorted(tuple(r) for r in out.collect()) == sorted(
        [(_hmac_hex(KEY.encode(), "C1"), 3, "north"), (_hmac_hex(KEY.encode(), "C2"), None, None)]
    )
    with pytest.raises(UsageError, match=r"^the pseudonymisation key is empty$"):
        pseudonymize(frame, b"")
    with pytest.raises(UsageError, match=r"^columns to pseudonymise are missing: nope$"):
        pseudonymize(frame, b"k", columns=["nope"])


def test_the_key_never_appears_in_a_query_plan(spark: SparkSession) -> None:
    key = KEY.encode()
    out = pseudonymize(spark.createDataFrame([("C1",)], "customer_id string"), key)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        out.explain(True)
    plan = printed.getvalue()
    assert "BroadcastNestedLoopJoin" in plan  # the pads come in as data, not as literals
    inner, outer = hmac_pads(key)
    for secret in (key.hex(), inner.hex(), outer.hex()):
        assert secret not in plan.lower()
    assert KEY not in plan


# --------------------------------------------------------------------------------------------
# the key


def _privacy(**changes: Any) -> PrivacySettings:
    return load_settings(env="test").privacy.model_copy(update={"pseudonymize": True, **changes})


def test_key_comes_from_the_environment_or_the_key_file(tmp_path: Path) -> None:
    assert load_key(_privacy(), {KEY_ENV: KEY}) == KEY.encode("utf-8")
    key_file = tmp_path / "key"
    key_file.write_bytes(b"file-key-0123456789-0123456789-0123456789\n")
    # the file wins over the variable; one trailing newline is dropped
    assert load_key(_privacy(key_file=str(key_file)), {KEY_ENV: KEY}) == (
        b"file-key-0123456789-0123456789-0123456789"
    )
    key_file.write_bytes(b"\x00\xffraw bytes\r\n")
    assert load_key(_privacy(key_file=str(key_file)), {}) == b"\x00\xffraw bytes"
    assert require_key(_privacy(pseudonymize=False), {}) is None


@pytest.mark.parametrize(
    ("changes", "environ", "message"),
    [
        ({}, {}, r"^privacy\.pseudonymize is on but there is no key: set SEGSPARK_PSEUDONYM_KEY"),
        ({}, {KEY_ENV: ""}, r"^privacy\.pseudonymize is on but there is no key"),
        ({"key_file": "/nonexistent/segspark.key"}, {KEY_ENV: KEY},
         r"^privacy\.key_file /nonexistent/segspark\.key does not exist$"),
    ],
)  # fmt: skip
def test_a_missing_key_is_a_config_error(
    changes: dict[str, Any], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        require_key(_privacy(**changes), environ)
    assert KEY not in str(caught.value)


def test_an_empty_key_file_is_refused_and_a_short_key_warns_without_showing_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = tmp_path / "empty.key"
    empty.write_bytes(b"\n")
    with pytest.raises(
        ConfigError, match=rf"^the pseudonymisation key in privacy\.key_file {empty}"
    ):
        load_key(_privacy(key_file=str(empty)), {})
    with caplog.at_level(logging.WARNING, logger="segspark.privacy"):
        assert load_key(_privacy(), {KEY_ENV: "short-secret"}) == b"short-secret"
    assert "shorter than 32 bytes" in caplog.text
    assert "short-secret" not in caplog.text


def test_settings_and_config_hash_never_hold_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = ["privacy.pseudonymize=true"]
    monkeypatch.setenv(KEY_ENV, KEY)
    first = load_settings(domain="retail", env="test", overrides=overrides)
    monkeypatch.setenv(KEY_ENV, "another-key-0123456789-0123456789-0123456789")
    second = load_settings(domain="retail", env="test", overrides=overrides)
    assert first.config_hash() == second.config_hash()
    assert KEY not in json.dumps(first.model_dump(mode="json"))


@pytest.mark.parametrize("command", ["features", "run"])
def test_a_missing_key_exits_2_before_anything_is_written(
    cli: Cli, lake_root: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    code, out, err = cli(
        "--set", "privacy.pseudonymize=true", command, "--domain", "retail", "--as-of", "2024-02-29"
    )
    assert (code, out, err) == (2, "", MISSING_KEY)
    assert list(lake_root.iterdir()) == []


def test_the_demo_stops_for_a_missing_key_before_generating(
    cli: Cli, lake_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    code, out, err = cli("--set", "privacy.pseudonymize=true", "demo", "--domain", "energy")
    assert (code, out, err) == (2, "", MISSING_KEY)
    assert list(lake_root.iterdir()) == []


def test_the_features_step_checks_the_key_before_its_mlflow_run(
    spark: SparkSession, lake: Lake, lake_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime as dt

    from segspark.features.step import run_features
    from segspark.tracking import resolve_tracking_uri

    monkeypatch.delenv(KEY_ENV, raising=False)
    settings = load_settings(
        domain="retail",
        env="test",
        overrides=["privacy.pseudonymize=true", f"lake.root={lake_root}"],
    )
    with pytest.raises(ConfigError, match=r"^privacy\.pseudonymize is on but there is no key"):
        run_features(
            spark,
            lake,
            settings,
            domain="retail",
            as_of=dt.date(2024, 2, 29),
            tracking_uri=resolve_tracking_uri(None, settings),
        )
    assert list(lake_root.iterdir()) == []


# --------------------------------------------------------------------------------------------
# a pseudonymised run, end to end

PSEUDO_SETS = (
    "--set", "privacy.pseudonymize=true",
    "--set", "model.k=3",
    "--set", "model.bootstrap_resamples=0",
)  # fmt: skip
P1, P2 = "2024-02-29", "2024-03-31"


@pytest.fixture(scope="module")
def pseudonymised(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, str]]:
    """Generated retail data run at two dates with pseudonymisation; (lake root, logs)."""
    from segspark import cli as cli_module

    root = tmp_path_factory.mktemp("pseudonymised")
    records = io.StringIO()
    handler = logging.StreamHandler(records)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    original = cli_module._configure_logging

    def configure_and_capture(verbose: bool) -> None:
        original(verbose)
        # basicConfig(force=True) just replaced the root handlers: add the capture after it
        logging.getLogger().addHandler(handler)
        logging.getLogger("segspark").setLevel(logging.DEBUG)

    saved_key = os.environ.get(KEY_ENV)
    outputs = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli_module, "_configure_logging", configure_and_capture)
        patch.setenv(KEY_ENV, KEY)
        try:
            for args in (
                ("generate", "--domain", "retail", "--customers", "120"),
                (*PSEUDO_SETS, "run", "--domain", "retail", "--as-of", P1),
                (*PSEUDO_SETS, "run", "--domain", "retail", "--as-of", P2),
            ):
                out, err = io.StringIO(), io.StringIO()
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    code = cli_module.main(
                        ["--lake", str(root), "--env", "test", "--verbose", *args]
                    )
                outputs.write(out.getvalue() + err.getvalue())
                assert code == 0, err.getvalue()
        finally:
            logging.getLogger().removeHandler(handler)
            logging.getLogger("segspark").setLevel(logging.NOTSET)
    assert os.environ.get(KEY_ENV) == saved_key
    yield root, outputs.getvalue() + records.getvalue()


def _ids(frame: DataFrame, column: str = "customer_id") -> set[str]:
    return {r[0] for r in frame.select(column).distinct().collect() if r[0] is not None}


def test_every_table_below_bronze_holds_pseudonyms_and_joins_still_work(
    pseudonymised: tuple[Path, str], spark: SparkSession
) -> None:
    root, _ = pseudonymised
    lake = Lake(spark, str(root), backend="delta-rs")
    key = KEY.encode("utf-8")
    events = lake.read("transactions")
    snapshots = lake.read("segment_snapshots")
    for as_of in (P1, P2):
        day = F.lit(as_of).cast("date")
        raw = _ids(events.where(F.to_date("event_time") <= day))
        features = lake.read("retail_features").where(F.col("as_of") == day)
        assert _ids(features) == {_hmac_hex(key, c) for c in raw}
        # customers' attributes were joined on the source id before pseudonymising
        assert features.where(F.col("region").isNull()).count() == 0
        assert _ids(snapshots.where(F.col("as_of") == day)) == _ids(features)
    first = _ids(snapshots.where(F.col("as_of") == F.lit(P1).cast("date")))
    second = _ids(snapshots.where(F.col("as_of") == F.lit(P2).cast("date")))
    moves = lake.read("segment_migrations")
    assert _ids(moves) == first | second
    stayed = moves.where(F.col("from_segment_id").isNotNull() & F.col("to_segment_id").isNotNull())
    assert stayed.count() == len(first & second) > 0
    all_raw = _ids(events)
    for table in ("retail_features", "segment_snapshots", "segment_migrations"):
        assert not _ids(lake.read(table)) & all_raw, table
    profiles = lake.read("segment_profiles").collect()
    assert sum(r["customers"] or 0 for r in profiles if r["as_of"].isoformat() == P2) > 0


def test_the_key_is_in_no_file_log_or_mlflow_record(
    pseudonymised: tuple[Path, str], spark: SparkSession
) -> None:
    root, logs = pseudonymised
    key = KEY.encode("utf-8")
    inner, outer = hmac_pads(key)
    needles = {
        "key": key,
        "key hex": key.hex().encode(),
        "inner pad": inner,
        "outer pad": outer,
        "inner pad hex": inner.hex().encode(),
    }
    assert (root / "_mlflow" / "mlflow.db").is_file()
    assert _files_containing(root, needles) == []  # every table, the MLflow store, artifacts
    assert "segspark.segmentation INFO segspark" in logs  # the logs were captured
    for name, needle in needles.items():
        assert needle.decode("latin-1") not in logs, name
    client = mlflow.MlflowClient(f"sqlite:///{root}/_mlflow/mlflow.db")
    experiment = client.get_experiment_by_name("segspark/retail")
    assert experiment is not None
    settings = load_settings(
        domain="retail",
        env="test",
        overrides=[*PSEUDO_SETS[1::2], f"lake.root={root}"],
    )
    runs = client.search_runs([experiment.experiment_id])
    assert {r.data.tags["step"] for r in runs} == {"features", "train", "score"}
    for run in runs:
        assert run.data.tags["config_hash"] == settings.config_hash()
        for value in [*run.data.params.values(), *run.data.tags.values()]:
            assert KEY not in value and key.hex() not in value
    features_runs = [r for r in runs if r.data.tags["step"] == "features"]
    assert {r.data.params["pseudonymized"] for r in features_runs} == {"True"}


def test_no_source_id_or_pseudonym_reaches_mlflow(
    pseudonymised: tuple[Path, str], spark: SparkSession
) -> None:
    root, _ = pseudonymised
    lake = Lake(spark, str(root), backend="delta-rs")
    raw = _ids(lake.read("transactions"))
    pseudonyms = _ids(lake.read("segment_snapshots"))
    needles = {c: c.encode() for c in raw | pseudonyms}
    assert _files_containing(root / "_mlflow", needles) == []


# --------------------------------------------------------------------------------------------
# a planted segment of three customers, on every surface

TINY = [f"CUST-PRIV-9{i:04d}" for i in range(3)]
OUTLIER = {"recency_days": 777.0, "frequency": 91.0, "monetary_total": 98765.0}
BLOBS = [((10.0, 20.0, 6.0), 60), ((200.0, 2.0, 3.0), 50), ((40.0, 6.0, 4.5), 40)]
TINY_AS_OF = "2024-03-31"
TINY_SETS = [
    "model.features=[recency_days, frequency, monetary_total]",
    "model.log1p=[monetary_total]",
    "model.value_column=monetary_total",
    "model.profile_features=[]",
    "model.k=4",
    "model.restarts=2",
    "model.bootstrap_resamples=2",
]


def _planted_rows() -> list[tuple[Any, ...]]:
    rng = np.random.default_rng(11)
    rows: list[tuple[Any, ...]] = []
    for (recency, frequency, log_money), size in BLOBS:
        for _ in range(size):
            rows.append(
                (
                    f"CUST-PRIV-{len(rows):05d}",
                    float(max(rng.normal(recency, 5.0), 0.0)),
                    float(max(rng.normal(frequency, 0.8), 1.0)),
                    float(np.expm1(rng.normal(log_money, 0.15))),
                )
            )
    rows += [(c, *OUTLIER.values()) for c in TINY]
    return rows


@pytest.fixture(scope="module")
def tiny_segment(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Lake, Settings, str, int]]:
    """Features with three blobs and three identical outliers, trained with k = 4.

    Returns the lake, the settings, the tracking URI and the tiny segment's id.
    """
    import datetime as dt

    from segspark.segmentation import train
    from segspark.tracking import resolve_tracking_uri

    root = tmp_path_factory.mktemp("tiny")
    settings = load_settings(
        domain="retail", env="test", overrides=[*TINY_SETS, f"lake.root={root}"]
    )
    lake = Lake(spark, str(root), backend="delta-rs")
    as_of = dt.date.fromisoformat(TINY_AS_OF)
    frame = spark.createDataFrame(
        [(c, as_of, r, f, m, 1) for c, r, f, m in _planted_rows()],
        "customer_id string, as_of date, recency_days double, frequency double, "
        "monetary_total double, feature_version int",
    )
    lake.write("retail_features", frame, partition_by=["as_of"])
    uri = resolve_tracking_uri(None, settings)
    previous = mlflow.get_tracking_uri()
    try:
        train(spark, lake, settings, domain="retail", as_of=as_of, tracking_uri=uri)
    finally:
        mlflow.set_tracking_uri(previous)
    snapshot = lake.read("segment_snapshots").where(F.col("customer_id").isin(*TINY)).collect()
    assert len({r["segment_id"] for r in snapshot}) == 1, "the outliers must form one segment"
    tiny = int(snapshot[0]["segment_id"])
    sizes = lake.read("segment_snapshots").groupBy("segment_id").count().collect()
    assert {int(r["segment_id"]): int(r["count"]) for r in sizes}[tiny] == 3
    yield lake, settings, uri, tiny


def test_the_tiny_segment_is_withheld_in_the_profile_tables(
    tiny_segment: tuple[Lake, Settings, str, int],
) -> None:
    lake, settings, _, tiny = tiny_segment
    snapshot = lake.read("segment_snapshots").groupBy("segment_id").count().collect()
    sizes = {int(r["segment_id"]): int(r["count"]) for r in snapshot}
    complement = min((n, s) for s, n in sizes.items() if s != tiny)[1]
    rows = {r["segment_id"]: r for r in lake.read("segment_profiles").collect()}
    assert {s for s, r in rows.items() if r["withheld"]} == {tiny, complement}
    for s in (tiny, complement):
        assert [rows[s][c] for c in ("customers", "share", "value", "value_share")] == [None] * 4
    assert rows[tiny]["segment_name"] == settings.model.naming.withheld == "Small"
    assert rows[complement]["segment_name"] != "Small"
    published = {s: r["customers"] for s, r in rows.items() if not r["withheld"]}
    assert published == {s: n for s, n in sizes.items() if s not in (tiny, complement)}
    # what a reader can derive (all customers - published ones) covers at least N customers
    totals = {round(r["customers"] / r["share"]) for r in rows.values() if not r["withheld"]}
    assert totals == {sum(sizes.values())}
    assert sum(sizes.values()) - sum(published.values()) >= settings.privacy.min_segment_size
    features = lake.read("segment_feature_profiles").collect()
    hidden = [r for r in features if r["segment_id"] in (tiny, complement)]
    assert len(hidden) == 6 and all(r["mean"] is None and r["z_score"] is None for r in hidden)
    assert all(r["mean"] is not None for r in features if r["segment_id"] not in (tiny, complement))


TINY_AGGREGATES = (OUTLIER["monetary_total"], 3 * OUTLIER["monetary_total"], 777.0, 91.0)
"""The tiny segment's means and value sum (its three customers are identical)."""


def test_the_report_shows_no_aggregate_of_the_tiny_segment(
    tiny_segment: tuple[Lake, Settings, str, int], tmp_path: Path
) -> None:
    from segspark.commands.report import write_report

    lake, settings, _, tiny = tiny_segment
    out = tmp_path / "report.html"
    data = write_report(lake, settings, domain="retail", out=out)
    page = out.read_text(encoding="utf-8")
    withheld = {p.segment_id for p in data.profiles if p.withheld}
    assert tiny in withheld and len(withheld) == 2
    for s in withheld:
        card = re.search(
            rf'<article class="card withheld" data-segment="{s}">(.*?)</article>', page, re.S
        )
        assert card, s
        assert "withheld for privacy (fewer than 10 customers" in card.group(1)
        assert "<dl" not in card.group(1) and "z " not in card.group(1)
        assert f'data-segment="{s}" x=' not in page  # no bar, no heatmap cell
    assert "2 withheld for privacy (segments need at least 10 customers)" in page
    for text in ("98,765", "296,295", "mean 777", "mean 91.00", "<dd>3</dd>"):
        assert text not in page, text
    for customer in TINY:
        assert customer not in page


def test_mlflow_holds_no_aggregate_of_the_tiny_segment_and_no_customer_id(
    tiny_segment: tuple[Lake, Settings, str, int], tmp_path: Path
) -> None:
    lake, settings, uri, tiny = tiny_segment
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("segspark/retail")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id], "tags.step = 'train'")
    metrics = run.data.metrics
    jaccard = {k for k in metrics if k.startswith("jaccard_segment_")}
    assert jaccard == {f"jaccard_segment_{s}" for s in range(4) if s != tiny}
    local = Path(client.download_artifacts(run.info.run_id, "segmentation", str(tmp_path)))
    profiles = (local / "segment_profiles.csv").read_text().splitlines()
    tiny_rows = [line for line in profiles if line.startswith(f"{tiny},")]
    assert tiny_rows == [f"{tiny},Small,,,,,True"]
    features_csv = (local / "segment_feature_profiles.csv").read_text().splitlines()
    assert [line for line in features_csv if line.startswith(f"{tiny},")] == [
        f"{tiny},recency_days,,",
        f"{tiny},frequency,,",
        f"{tiny},monetary_total,,",
    ]
    texts = {p.name: p.read_text() for p in local.iterdir() if p.suffix in (".csv", ".txt")}
    assert set(texts) == {
        "k_metrics.csv",
        "k_rule.txt",
        "segment_profiles.csv",
        "segment_feature_profiles.csv",
    }
    cells = [c for text in texts.values() for line in text.splitlines() for c in line.split(",")]
    numbers = [*_numeric(cells), *metrics.values(), *_numeric(run.data.params.values())]
    assert len(numbers) > 20
    for aggregate in TINY_AGGREGATES:
        assert all(not math.isclose(v, aggregate) for v in numbers), aggregate
    # no customer-level data anywhere in the run: params, metrics, tags, every artifact (model
    # included) and the store itself
    everything = [*run.data.params.values(), *run.data.tags.values(), *map(str, metrics)]
    customers = [r[0] for r in _planted_rows()]
    for value in everything:
        assert not any(c in value for c in customers), value
    store = Path(lake.root) / "_mlflow"
    assert _files_containing(store, {c: c.encode() for c in customers}) == []
    assert (store / "artifacts").is_dir()
    # names come from the vocabulary (aggregates), never from the data
    words = {w for e in settings.model.naming.vocabulary.values() for w in (e.high, e.low) if w} | {
        settings.model.naming.neutral,
        settings.model.naming.withheld,
        "I",
        "II",
        "III",
        "IV",
    }
    names = {r["segment_name"] for r in lake.read("segment_profiles").collect()}
    assert all(set(name.split()) <= words for name in names), names


def _numeric(values: Any) -> list[float]:
    out = []
    for value in values:
        try:
            out.append(float(value))
        except (TypeError, ValueError):
            continue
    return out


# --------------------------------------------------------------------------------------------
# withholding rules


@pytest.mark.parametrize(
    ("sizes", "withheld"),
    [
        ({0: 500, 1: 40, 2: 3}, {2, 1}),  # 3 alone is derivable: the smallest other joins it
        ({0: 500, 1: 40, 2: 3, 3: 8}, {2, 3}),  # 3 + 8 = 11 >= 10: no complement needed
        ({0: 500, 1: 40, 2: 40}, set()),
        ({0: 500, 1: 40, 2: 40, 3: 4}, {3, 1}),  # tie on 40: the lower segment_id
        ({0: 5, 1: 3}, {0, 1}),
    ],
)
def test_withheld_segments_add_a_complement_when_the_small_ones_are_derivable(
    sizes: dict[int, int], withheld: set[int]
) -> None:
    assert withheld_segments(sizes, 10) == withheld


def test_flows_that_would_give_away_a_small_flow_are_suppressed() -> None:
    flows = [
        Flow(0, 0, 1000),
        Flow(0, 1, 60),
        Flow(0, None, 40),
        Flow(1, 1, 640),
        Flow(None, 0, 180),
        Flow(None, 1, 52),
        Flow(2, 0, 2),  # small: into segment 0, so 0's column needs one more hidden flow
        Flow(3, 1, 25),  # out of a segment withheld at the previous snapshot
    ]
    shown = suppress_flows(flows, 10, withheld_from={3}, withheld_to=set())
    assert [(f.from_segment_id, f.to_segment_id) for f in shown] == [
        (0, 0),
        (0, 1),
        (0, None),
        (1, 1),
        (None, 1),
    ]
    # a withheld segment is neither source nor target of any shown flow
    assert all(f.to_segment_id != 1 for f in suppress_flows(flows, 10, withheld_to={1}))


# --------------------------------------------------------------------------------------------
# differential privacy


def test_epsilon_is_split_evenly_and_scales_follow_the_sensitivities() -> None:
    clip = {"a": (0.0, 10.0), "b": (-4.0, 2.0), "v": (0.0, 500.0)}
    assert release_statistics(["a", "b"], "v") == [
        "customers", "value", "count:a", "sum:a", "sumsq:a", "count:b", "sum:b", "sumsq:b",
    ]  # fmt: skip
    m = 8
    assert split_epsilon(2.0, m) == 0.25
    assert noise_scales(["a", "b"], "v", epsilon=2.0, clip=clip) == {
        "customers": 1 * m / 2.0,
        "value": 500 * m / 2.0,
        "count:a": 1 * m / 2.0,
        "sum:a": 10 * m / 2.0,
        "sumsq:a": 100 * m / 2.0,
        "count:b": 1 * m / 2.0,
        "sum:b": 4 * m / 2.0,
        "sumsq:b": 16 * m / 2.0,
    }
    assert laplace_scale(3.0, epsilon=0.5) == 6.0
    with pytest.raises(UsageError, match="epsilon must be positive"):
        laplace_scale(1.0, epsilon=0.0)


def test_laplace_noise_has_the_scale_of_the_mechanism() -> None:
    scale, n = 2.5, 20000
    draws = np.array([laplace_noise(scale, seed=42, key=("release", i)) for i in range(n)])
    # Lap(b): mean 0, variance 2 b^2, fourth central moment 24 b^4, so the sample variance has
    # standard error ~ b^2 sqrt((24 - 4) / n); the bounds are five standard errors
    assert abs(draws.mean()) < 5 * math.sqrt(2) * scale / math.sqrt(n)
    assert abs(draws.var(ddof=1) - 2 * scale**2) < 5 * scale**2 * math.sqrt(20 / n)
    assert stats.kstest(draws, "laplace", args=(0, scale)).pvalue > 1e-3
    again = laplace_noise(scale, seed=42, key=("release", 7))
    assert again == draws[7]  # reproducible from the seed and the key
    assert laplace_noise(scale, seed=43, key=("release", 7)) != again
    assert laplace_noise(0.0, seed=42, key=("release", 7)) == 0.0


def test_profile_noise_of_counts_and_values_has_the_documented_scale() -> None:
    clip = {"x": (0.0, 50.0), "v": (0.0, 200.0)}
    true_n, true_v = 1_000_000, 123_456.0
    segment = SegmentStats(
        customers=true_n,
        value=true_v,
        count=(true_n,),
        mean=(10.0,),
        sd=(1.0,),
        clipped_value=true_v,
        clipped_sum=(10.0 * true_n,),
        clipped_sumsq=(101.0 * true_n,),
    )
    scales = noise_scales(["x"], "v", epsilon=1.0, clip=clip)
    count_noise, value_noise = [], []
    for release in range(3000):
        values = noisy_values(
            {0: segment}, ["x"], "v", epsilon=1.0, clip=clip, seed=42, release=(release,)
        )
        count_noise.append(values.customers[0] - true_n)
        value = values.value[0]
        assert value is not None
        value_noise.append(value - true_v)
    # m = 5 statistics (customers, value, count/sum/sumsq of x), epsilon 1: b = sensitivity x 5
    assert (scales["customers"], scales["value"]) == (5.0, 1000.0)
    for noise, b in ((np.array(count_noise), 5.0), (np.array(value_noise), 1000.0)):
        assert abs(noise.var(ddof=1) - 2 * b**2) < 5 * b**2 * math.sqrt(20 / len(noise))
        assert stats.kstest(noise, "laplace", args=(0, b)).pvalue > 1e-3
    # the two statistics draw independent noise
    assert abs(np.corrcoef(count_noise, value_noise)[0, 1]) < 5 / math.sqrt(len(count_noise))


def test_noisy_profiles_are_reproducible_per_release_and_keep_the_withholding(
    spark: SparkSession,
) -> None:
    rng = np.random.default_rng(3)
    rows = [(f"C{i}", i % 3 if i < 297 else 3, float(rng.uniform(0, 100))) for i in range(300)]
    scored = spark.createDataFrame(rows, "customer_id string, segment_id int, x double")
    settings = load_settings(
        domain="retail",
        env="test",
        overrides=[
            "model.features=[x]",
            "model.profile_features=[]",
            "model.value_column=x",
            "privacy.epsilon=1.0",
            "privacy.clip={x: [0, 100]}",
        ],
    )
    noisy = profile_segments(
        scored, settings.model, privacy=settings.privacy, release=("retail", "2024-03-31")
    )
    again = profile_segments(
        scored, settings.model, privacy=settings.privacy, release=("retail", "2024-03-31")
    )
    other = profile_segments(
        scored, settings.model, privacy=settings.privacy, release=("retail", "2024-04-30")
    )
    exact = profile_segments(
        scored,
        settings.model,
        privacy=settings.privacy.model_copy(update={"epsilon": None}),
    )
    first = noisy.profiles.collect()
    assert first == again.profiles.collect()
    assert noisy.feature_profiles.collect() == again.feature_profiles.collect()
    assert first != other.profiles.collect()
    # segment 3 (3 customers) and its complement are withheld exactly as without noise
    assert noisy.withheld == exact.withheld == {3, 0}
    by_id = {r["segment_id"]: r for r in first}
    assert by_id[3]["segment_name"] == "Small" and by_id[3]["customers"] is None
    # 99 customers per published segment; the noise (scale m / epsilon = 5) moves them a little
    exact_rows = {r["segment_id"]: r for r in exact.profiles.collect()}
    assert [by_id[s]["value"] for s in (1, 2)] != [exact_rows[s]["value"] for s in (1, 2)]
    for s in (1, 2):
        assert exact_rows[s]["customers"] == 99
        assert abs(by_id[s]["customers"] - 99) < 5 * 5
    means = {r["segment_id"]: r["mean"] for r in noisy.feature_profiles.collect()}
    assert all(0 <= means[s] <= 100 for s in (1, 2))
    assert means[3] is None and means[0] is None


def test_clipping_bounds_the_sums_the_noise_is_added_to(spark: SparkSession) -> None:
    scored = spark.createDataFrame(
        [(0, -5.0, 1.0), (0, 3.0, 1000.0), (0, None, 2.0), (1, 50.0, 4.0)],
        "segment_id int, x double, v double",
    )
    segments, population = segment_statistics(
        scored, ["x"], "v", clip={"x": (0.0, 10.0), "v": (0.0, 100.0)}
    )
    assert segments[0] == SegmentStats(
        customers=3,
        value=1003.0,
        count=(2,),
        mean=(-1.0,),
        sd=(pytest.approx(math.sqrt(32.0)),),  # type: ignore[arg-type]
        clipped_value=103.0,
        clipped_sum=(3.0,),
        clipped_sumsq=(9.0,),
    )
    assert (segments[1].clipped_sum, segments[1].clipped_value) == ((10.0,), 4.0)
    assert population.customers == 4
    exact = exact_values(segments, population, ["x"])
    assert exact.customers == {0: 3.0, 1: 1.0}
    with pytest.raises(UsageError, match=r"^privacy\.clip has no bounds for: v$"):
        segment_statistics(scored, ["x"], "v", clip={"x": (0.0, 10.0)})


def test_epsilon_without_clip_bounds_is_a_one_line_config_error(cli: Cli) -> None:
    code, out, err = cli(
        "--set", "privacy.epsilon=0.5",
        "--set", "model.features=[recency_days, ipi_mean_days]",
        "features", "--domain", "retail", "--as-of", "2024-02-29",
    )  # fmt: skip
    assert (code, out) == (2, "")
    assert err == (
        "segspark: error: config error: privacy.epsilon needs privacy.clip bounds [lo, hi] for "
        "every profiled feature; missing: ipi_mean_days\n"
    )


def test_min_segment_size_lives_in_the_privacy_section_only() -> None:
    settings = load_settings(env="test")
    assert settings.privacy.min_segment_size == 10
    assert "min_segment_size" not in settings.model.model_dump()
    with pytest.raises(ConfigError, match=r"^config error: unknown key 'model.min_segment_size'$"):
        load_settings(env="test", overrides=["model.min_segment_size=5"])


# --------------------------------------------------------------------------------------------
# query and ui


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT * FROM `/etc/passwd`", r"^invalid table name '/etc/passwd'"),
        ("SELECT * FROM `..`", r"^invalid table name '\.\.'"),
        ("SELECT * FROM `sales/../../etc`", r"^invalid table name 'sales/\.\./\.\./etc'"),
        ("SELECT * FROM `file:/etc/passwd`", r"^invalid table name 'file:/etc/passwd'"),
        ("SELECT * FROM `s3a://bucket/lake/sales`", r"^invalid table name 's3a://bucket"),
        ("SELECT * FROM `~/sales`", r"^invalid table name '~/sales'"),
        ("SELECT * FROM `_segspark_query_x_0`", r"^invalid table name '_segspark_query_x_0'"),
        ("SELECT * FROM (SELECT * FROM `../sales`)", r"^invalid table name '\.\./sales'"),
        ("SELECT 1 WHERE 1 IN (SELECT id FROM `../x`)", r"^invalid table name '\.\./x'"),
        ("SELECT * FROM `delta`.`/tmp/lake/sales`", r"^read-only: direct file queries"),
        ("SELECT * FROM parquet.`../other_lake/sales`", r"^read-only: direct file queries"),
        ("SELECT * FROM binaryFile.`/etc`", r"^read-only: direct file queries"),
        ("SELECT * FROM `..`.`sales`", r"^read-only: direct file queries"),
        ("SELECT * FROM sales.`..`", r"^qualified table name"),
        ("SELECT * FROM global_temp.v", r"^qualified table name 'global_temp\.v'"),
        ("WITH x AS (SELECT * FROM orc.`/x`) SELECT * FROM x", r"^read-only: direct file"),
    ],
)
def test_query_table_names_cannot_leave_the_lake(sql: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        resolve_tables(check_statement(sql), ["sales"])


def test_ui_binds_loopback_unless_a_host_is_named() -> None:
    from segspark.cli import build_parser
    from segspark.commands.ui import server_command

    args = build_parser().parse_args(["ui"])
    assert (args.host, args.port) == ("127.0.0.1", 5000)
    command = server_command("sqlite:////lake/_mlflow/mlflow.db", None, host=args.host, port=5000)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    named = build_parser().parse_args(["ui", "--host", "0.0.0.0"])
    command = server_command("sqlite:////lake/_mlflow/mlflow.db", None, host=named.host, port=1)
    assert command[command.index("--host") + 1] == "0.0.0.0"
