"""The features step end to end: raw CDNOW file -> ingest -> features -> clv_parameters."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from segspark.features.catalog import feature_schema
from segspark.lake import Lake

# Published CDNOW 1/10-sample estimates: Fader, Hardie & Lee (2005) for BG/NBD; Fader & Hardie
# (2013) for Gamma-Gamma.
PUBLISHED = {
    ("bgnbd", "r"): 0.243,
    ("bgnbd", "alpha"): 4.414,
    ("bgnbd", "a"): 0.793,
    ("bgnbd", "b"): 2.426,
    ("gamma_gamma", "p"): 6.25,
    ("gamma_gamma", "q"): 3.74,
    ("gamma_gamma", "v"): 15.44,
}
MAPPING = """\
format: csv
options:
  header: false
  delimiter: whitespace
columns:
  customer_id: _c0
  event_time: _c2
  quantity: _c3
  amount: _c4
timestamp_format: yyyyMMdd
"""


def cdnow_sample() -> Path:
    try:
        dist = importlib.metadata.distribution("lifetimes")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("the CDNOW sample ships in 'lifetimes', a dev dependency (pip install .[dev])")
    for file in dist.files or ():
        if file.name == "CDNOW_sample.txt":
            return Path(str(file.locate()))
    pytest.fail("the installed 'lifetimes' distribution has no CDNOW_sample.txt")


@pytest.mark.slow
def test_cdnow_raw_file_to_published_parameters(
    cli: Any, lake: Lake, tmp_path: Path, spark: SparkSession
) -> None:
    mapping = tmp_path / "cdnow.yaml"
    mapping.write_text(MAPPING)
    old = ["--set", "sources.earliest_event_date=1990-01-01"]
    code, out, err = cli(
        *old,
        "ingest",
        "--domain",
        "retail",
        "--input",
        str(cdnow_sample()),
        "--mapping",
        str(mapping),
    )
    assert code == 0, err
    assert "read 6,919 rows: accepted 6,919, quarantined 0" in out

    code, out, err = cli("features", "--domain", "retail", "--as-of", "1997-09-30")
    assert code == 0, err
    assert "retail_features @ 1997-09-30: 2,357 customers" in out

    params = {
        (r["model"], r["parameter"]): r["value"]
        for r in lake.read("clv_parameters").where(F.col("domain") == "retail").collect()
    }
    assert set(params) == set(PUBLISHED)
    for key, published in PUBLISHED.items():
        assert params[key] == pytest.approx(published, rel=0.01), key

    features = lake.read("retail_features")
    assert features.columns == [*feature_schema("retail").names, "feature_version"]
    c4 = features.where(F.col("customer_id") == "00004").first()
    assert c4 is not None
    # customer 00004: purchases on 1997-01-01, 1997-01-18 and 1997-08-02 (x = 2 repeat days)
    assert (c4["frequency"], c4["recency_days"], c4["tenure_days"]) == (3, 59, 272)
    assert c4["purchase_rate"] == pytest.approx(30.0 * 3 / 272)
    assert c4["feature_version"] == 2
    assert 0.0 < c4["p_alive"] < 1.0 and c4["clv"] > 0.0

    # recomputing the as_of replaces it: same rows, one more version, no duplicates
    before = lake.version("retail_features")
    code, _, err = cli("features", "--domain", "retail", "--as-of", "1997-09-30")
    assert code == 0, err
    assert lake.version("retail_features") == before + 1
    assert lake.read("retail_features").count() == 2357
    assert lake.read("clv_parameters").count() == 7


def test_features_without_events_is_a_clear_error(cli: Any) -> None:
    code, _, err = cli("features", "--domain", "telecom", "--as-of", "2024-01-31")
    assert code == 2
    assert err.strip() == (
        "segspark: error: no cdrs table in the lake "
        f"{err.split('lake ')[1].split(':')[0]}: ingest or generate telecom events first"
    )


def test_bad_as_of_is_a_usage_error(cli: Any) -> None:
    code, _, err = cli("features", "--domain", "retail", "--as-of", "2024-13-01")
    assert code == 2
    assert "not an ISO date (YYYY-MM-DD): '2024-13-01'" in err


def _reduced_table(lake: Lake, lake_root: Path, feature_version: int) -> None:
    """Rewrite telecom_features without usage_trend, as an older schema would have it."""
    import shutil

    rows = lake.read("telecom_features").drop("usage_trend")
    rows = rows.withColumn("feature_version", F.lit(feature_version)).toPandas()
    shutil.rmtree(lake_root / "telecom_features")
    lake.write(
        "telecom_features",
        lake.spark.createDataFrame(rows),
        partition_by=["as_of"],
    )


@pytest.mark.slow
def test_a_new_feature_version_adds_columns_and_old_rows_read_null(
    cli: Any, lake: Lake, lake_root: Path
) -> None:
    assert cli("generate", "--domain", "telecom", "--customers", "40")[0] == 0
    assert cli("features", "--domain", "telecom", "--as-of", "2024-02-29")[0] == 0
    _reduced_table(lake, lake_root, feature_version=0)
    assert "usage_trend" not in lake.schema("telecom_features").names

    code, _, err = cli("features", "--domain", "telecom", "--as-of", "2024-03-31")
    assert code == 0, err
    table = lake.read("telecom_features")
    assert table.columns[-1] == "usage_trend"
    old = table.where(F.col("as_of") == F.lit("2024-02-29").cast("date"))
    new = table.where(F.col("as_of") == F.lit("2024-03-31").cast("date"))
    assert old.where(F.col("usage_trend").isNotNull()).count() == 0
    assert {r.feature_version for r in old.select("feature_version").distinct().collect()} == {0}
    assert new.where(F.col("usage_trend").isNotNull()).count() > 0
    assert {r.feature_version for r in new.select("feature_version").distinct().collect()} == {1}

    # The evolved table holds usage_trend after feature_version, a fresh computation before it:
    # the same version writes again (columns match by name) and the rows are unchanged.
    before = sorted(tuple(r) for r in new.collect())
    code, _, err = cli("features", "--domain", "telecom", "--as-of", "2024-03-31")
    assert code == 0, err
    again = lake.read("telecom_features").where(F.col("as_of") == F.lit("2024-03-31").cast("date"))
    assert again.columns == table.columns
    assert sorted(tuple(r) for r in again.collect()) == before


@pytest.mark.slow
def test_a_schema_change_without_a_new_version_is_refused(
    cli: Any, lake: Lake, lake_root: Path
) -> None:
    assert cli("generate", "--domain", "telecom", "--customers", "40")[0] == 0
    assert cli("features", "--domain", "telecom", "--as-of", "2024-02-29")[0] == 0
    _reduced_table(lake, lake_root, feature_version=1)
    version = lake.version("telecom_features")
    code, _, err = cli("features", "--domain", "telecom", "--as-of", "2024-03-31")
    assert code == 2
    assert err == (
        "segspark: error: telecom_features holds feature_version 1 with another schema than "
        "version 1 computes; bump FEATURE_VERSION in segspark/features/catalog.py\n"
    )
    assert lake.version("telecom_features") == version


@pytest.mark.slow
def test_a_clv_fit_without_an_interior_maximum_leaves_clv_null(cli: Any, lake: Lake) -> None:
    # two months of generated history: BG/NBD's a and b run off to infinity (no dropout seen)
    assert cli("generate", "--domain", "retail", "--customers", "400")[0] == 0
    code, out, err = cli("features", "--domain", "retail", "--as-of", "2024-02-29")
    assert code == 0, err
    assert (
        "clv: not estimated, BG/NBD fit did not converge: a and b run off to infinity together "
        "(no interior maximum for this data); CLV columns are null\n"
    ) in out
    row = (
        lake.read("retail_features")
        .agg(F.count(F.lit(1)), F.count("clv"), F.count("p_alive"), F.count("recency_days"))
        .first()
    )
    assert row is not None
    assert (row[1], row[2]) == (0, 0)
    assert row[0] == row[3] > 0
    assert not lake.exists("clv_parameters")
