"""The parallel ranking of many distinct values (monetary_total) equals one global window."""

from __future__ import annotations

import math
import random

import pytest
from pyspark.sql import SparkSession
from pyspark.sql.types import DoubleType, StructField, StructType

from segspark.features.retail import _score_table, _scored_by_ranges


@pytest.mark.parametrize("descending", [False, True])
def test_ranges_rank_like_one_window_with_ties_negatives_nulls_and_nan(
    spark: SparkSession, descending: bool
) -> None:
    rng = random.Random(7)
    values: list[float | None] = [round(rng.lognormvariate(4, 2), 2) for _ in range(300)]
    values += [0.0, -0.0, -3.5, -1200.0, 1e9, math.inf, -math.inf, math.nan, None, None]
    values += values[:40]  # ties
    frame = spark.createDataFrame(
        [(v,) for v in values], StructType([StructField("monetary_total", DoubleType())])
    )
    kwargs = {"levels": 5, "descending": descending}

    # one window over the distinct values (their counts as weights), looked up per row
    table = _score_table(frame, "monetary_total", "m_score", **kwargs)
    single = {repr(r["monetary_total"]): r["m_score"] for r in table.collect()}
    # repr: NaN compares unequal to itself, its text does not; grouping made -0.0 into 0.0
    expected = sorted((repr(v), single[repr(v if v is None else v + 0.0)]) for v in values)

    scored = _scored_by_ranges(frame, "monetary_total", "m_score", **kwargs)
    assert scored.columns == ["monetary_total", "m_score"]
    got = sorted((repr(r["monetary_total"]), r["m_score"]) for r in scored.collect())
    assert got == expected
    # -0.0 and 0.0 are one value to Spark's ordering, so they tie
    assert dict(got)["-0.0"] == dict(got)["0.0"]
    assert {s for _, s in expected} == {1, 2, 3, 4, 5}
