"""Clustering quality computed in Spark: only k-sized results ever reach the driver.

Internal metrics come from per-cluster sufficient statistics gathered in one ``groupBy`` with
MLlib's :class:`~pyspark.ml.stat.Summarizer` — for each cluster ``c`` the count ``n_c``, the sum
vector ``S_c`` and the sum of squared norms ``Q_c = sum |x|^2`` (from the per-coordinate L2
norms). With centroids ``m_c = S_c / n_c``, ``N`` rows and ``k`` clusters:

* WSSSE ``W = sum_c (Q_c - |S_c|^2 / n_c)`` (the k-means objective; equal to
  ``KMeansModel.summary.trainingCost`` once Lloyd's iterations reached a fixed point);
* Calinski-Harabasz (Caliński & Harabasz 1974)
  ``CH = [B / (k - 1)] / [W / (N - k)]`` with ``B = sum_c |S_c|^2 / n_c - |sum_c S_c|^2 / N``;
* Davies-Bouldin (Davies & Bouldin 1979) ``DB = (1/k) sum_i max_{j != i} (s_i + s_j) / |m_i - m_j|``
  with the paper's dispersion for q = 2, ``s_i = sqrt(W_i / n_i)`` (root mean squared distance
  to the centroid, which the sums give exactly; scikit-learn uses q = 1, the mean distance,
  which needs a second pass, so its values differ slightly).

The silhouette is MLlib's :class:`~pyspark.ml.evaluation.ClusteringEvaluator` (squared Euclidean,
the simplified form MLlib computes from the same cluster sums). Beyond ``sample_size`` rows it
is evaluated on a seeded sample and its sampling error is returned: the per-point silhouettes of
the sample are computed in Spark with the same formula (higher-order array functions, no UDF)
and ``se = sd / sqrt(m) * sqrt(1 - m / N)`` (standard error of a mean of ``m`` draws without
replacement from ``N``); on the full data the error is 0.

Agreement between labelings is the adjusted Rand index (Hubert & Arabie 1985) from a Spark
contingency table (at most ``k_a * k_b`` cells collected), and the recovery of each reference
cluster is Hennig's (2007) clusterwise Jaccard: ``max_j |C ∩ D_j| / |C ∪ D_j|``.

Example:
    >>> stats = cluster_stats(scored, "_seg_scaled", "_seg_cluster")
    >>> calinski_harabasz(stats), davies_bouldin(stats), wssse(stats)
    (1523.4, 0.31, 288.0)
    >>> adjusted_rand_index(scored, "_seg_cluster", "true_segment")
    0.98
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.functions import vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segspark.errors import InputError, UsageError

FloatArray = npt.NDArray[np.float64]

MAX_CONTINGENCY_CELLS = 100_000
"""A contingency table with more cells than this is refused (a label column is not a label)."""


@dataclass(frozen=True)
class ClusterStats:
    """Per-cluster sufficient statistics: ids, counts, sum vectors, sums of squared norms."""

    ids: tuple[int, ...]
    counts: FloatArray
    sums: FloatArray
    sq_norms: FloatArray

    @property
    def k(self) -> int:
        """Number of non-empty clusters."""
        return len(self.ids)

    @property
    def n(self) -> float:
        """Number of rows."""
        return float(self.counts.sum())

    @property
    def centroids(self) -> FloatArray:
        """Cluster means, one row per id."""
        centroids: FloatArray = self.sums / self.counts[:, None]
        return centroids

    @property
    def within(self) -> FloatArray:
        """Within-cluster sum of squares of each cluster ``Q_c - |S_c|^2 / n_c`` (>= 0)."""
        sq_sums = np.einsum("ij,ij->i", self.sums, self.sums)
        within: FloatArray = np.maximum(self.sq_norms - sq_sums / self.counts, 0.0)
        return within

    def sizes(self) -> dict[int, int]:
        """{cluster id: rows}."""
        return {i: int(c) for i, c in zip(self.ids, self.counts, strict=True)}


@dataclass(frozen=True)
class SilhouetteEstimate:
    """A silhouette value with the standard error due to sampling (0 on the full data)."""

    value: float
    std_error: float
    rows: int
    sample_rows: int


def cluster_stats(df: DataFrame, features_col: str, prediction_col: str) -> ClusterStats:
    """Count, sum vector and sum of squared norms of each cluster, in one Spark aggregation.

    Rows whose prediction is null are ignored. Collects k rows of d + 2 numbers.

    Example:
        >>> cluster_stats(scored, "_seg_scaled", "_seg_cluster").sizes()
        {0: 75, 1: 75, 2: 75, 3: 75}
    """
    summary = Summarizer.metrics("count", "sum", "normL2").summary(F.col(features_col))
    rows = (
        df.where(F.col(prediction_col).isNotNull())
        .groupBy(F.col(prediction_col).cast("int").alias("c"))
        .agg(summary.alias("s"))
        .orderBy("c")
        .collect()
    )
    if not rows:
        raise InputError("no labelled rows to compute cluster statistics from")
    ids = tuple(int(r["c"]) for r in rows)
    counts = np.array([float(r["s"]["count"]) for r in rows])
    sums = np.array([r["s"]["sum"].toArray() for r in rows], dtype=np.float64)
    norms = np.array([r["s"]["normL2"].toArray() for r in rows], dtype=np.float64)
    return ClusterStats(ids, counts, sums, (norms**2).sum(axis=1))


def wssse(stats: ClusterStats) -> float:
    """Within-cluster sum of squared errors ``sum_c (Q_c - |S_c|^2 / n_c)``.

    Example:
        >>> wssse(stats)
        288.0
    """
    return float(stats.within.sum())


def calinski_harabasz(stats: ClusterStats) -> float:
    """Calinski-Harabasz variance ratio (Caliński & Harabasz 1974); nan when k < 2.

    ``[B / (k - 1)] / [W / (N - k)]``, between (B) and within (W) sums of squares.

    Example:
        >>> calinski_harabasz(stats)
        1523.4
    """
    k, n = stats.k, stats.n
    if k < 2 or n <= k:
        return math.nan
    total = stats.sums.sum(axis=0)
    sq_sums = np.einsum("ij,ij->i", stats.sums, stats.sums)
    between = float((sq_sums / stats.counts).sum() - total @ total / n)
    within = wssse(stats)
    if within == 0.0:
        return math.inf
    return (between / (k - 1)) / (within / (n - k))


def davies_bouldin(stats: ClusterStats) -> float:
    """Davies-Bouldin index (Davies & Bouldin 1979, q = p = 2); lower is better; nan if k < 2.

    Example:
        >>> davies_bouldin(stats)
        0.31
    """
    if stats.k < 2:
        return math.nan
    spread = np.sqrt(stats.within / stats.counts)
    centroids = stats.centroids
    diff = centroids[:, None, :] - centroids[None, :, :]
    distance = np.sqrt((diff**2).sum(axis=2))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (spread[:, None] + spread[None, :]) / distance
    np.fill_diagonal(ratio, -np.inf)
    return float(ratio.max(axis=1).mean())


def _dot(x: Column, values: FloatArray) -> Column:
    literal = F.array(*[F.lit(float(v)) for v in values])
    return F.aggregate(F.zip_with(x, literal, lambda a, b: a * b), F.lit(0.0), lambda s, v: s + v)


def point_silhouette(features_col: str, prediction_col: str, stats: ClusterStats) -> Column:
    """Each row's silhouette (squared Euclidean, as MLlib) from the clusters' sums.

    Mean squared distance to cluster c is ``|x|^2 - 2 x.S_c / n_c + Q_c / n_c``; for the row's
    own cluster it is rescaled by ``n_c / (n_c - 1)`` (the row itself is excluded); a row
    alone in its cluster scores 0. Built-in array functions only.

    Example:
        >>> scored.select(point_silhouette("_seg_scaled", "_seg_cluster", stats).alias("s"))
    """
    x = vector_to_array(F.col(features_col))
    norm2 = F.aggregate(x, F.lit(0.0), lambda s, v: s + v * v)
    mean_sq = [
        norm2
        - 2.0 * _dot(x, stats.sums[i]) / float(stats.counts[i])
        + float(stats.sq_norms[i] / stats.counts[i])
        for i in range(stats.k)
    ]
    ids = F.array(*[F.lit(i) for i in stats.ids])
    position = F.array_position(ids, F.col(prediction_col).cast("int")).cast("int")
    distances = F.array(*mean_sq)
    own_n = F.element_at(F.array(*[F.lit(float(c)) for c in stats.counts]), position)
    a = F.element_at(distances, position) * own_n / (own_n - 1.0)
    b = F.array_min(F.filter(distances, lambda _, i: i != position - 1))
    return (
        F.when(own_n <= 1.0, F.lit(0.0))
        .when(a < b, 1.0 - a / b)
        .when(a > b, b / a - 1.0)
        .otherwise(F.lit(0.0))
    )


def silhouette(
    df: DataFrame,
    features_col: str,
    prediction_col: str,
    *,
    sample_size: int,
    seed: int,
    rows: int | None = None,
) -> SilhouetteEstimate:
    """MLlib's silhouette, on a seeded sample beyond ``sample_size`` rows, with its std error.

    ``rows`` (the row count of ``df``) saves a pass when the caller knows it.

    Example:
        >>> silhouette(scored, "_seg_scaled", "_seg_cluster", sample_size=50_000, seed=42)
        SilhouetteEstimate(value=0.72, std_error=0.0, rows=300, sample_rows=300)
    """
    evaluator = ClusteringEvaluator(
        featuresCol=features_col,
        predictionCol=prediction_col,
        metricName="silhouette",
        distanceMeasure="squaredEuclidean",
    )
    total = df.count() if rows is None else rows
    if total <= sample_size:
        return SilhouetteEstimate(float(evaluator.evaluate(df)), 0.0, total, total)
    sample = df.sample(withReplacement=False, fraction=sample_size / total, seed=seed).persist()
    try:
        value = float(evaluator.evaluate(sample))
        stats = cluster_stats(sample, features_col, prediction_col)
        agg = sample.select(point_silhouette(features_col, prediction_col, stats).alias("s")).agg(
            F.count("s").alias("m"), F.stddev_samp("s").alias("sd")
        )
        row = agg.first()
        assert row is not None
        m, sd = int(row["m"]), float(row["sd"] or 0.0)
    finally:
        sample.unpersist()
    std_error = sd / math.sqrt(m) * math.sqrt(max(0.0, 1.0 - m / total)) if m > 0 else math.nan
    return SilhouetteEstimate(value, std_error, total, m)


Table = dict[tuple[int, ...], int]


def contingency(df: DataFrame, *label_cols: str) -> Table:
    """Counts of rows per combination of labels: ``{(a, b, ...): n}`` (rows with a null skipped).

    At most :data:`MAX_CONTINGENCY_CELLS` cells are collected; more raise ``UsageError``.

    Example:
        >>> contingency(scored, "_seg_cluster", "true_segment")
        {(0, 2): 75, (1, 0): 74, (1, 1): 1, ...}
    """
    if len(label_cols) < 2:
        raise UsageError("a contingency table needs at least two label columns")
    condition = F.lit(True)
    for c in label_cols:
        condition = condition & F.col(c).isNotNull()
    labels = [F.col(c).cast("long").alias(f"_l{i}") for i, c in enumerate(label_cols)]
    rows = (
        df.where(condition)
        .groupBy(*labels)
        .agg(F.count(F.lit(1)).alias("n"))
        .limit(MAX_CONTINGENCY_CELLS + 1)
        .collect()
    )
    if len(rows) > MAX_CONTINGENCY_CELLS:
        raise UsageError(
            f"more than {MAX_CONTINGENCY_CELLS} label combinations in {', '.join(label_cols)}; "
            "these are not cluster labels"
        )
    return {tuple(int(r[f"_l{i}"]) for i in range(len(label_cols))): int(r["n"]) for r in rows}


def marginal(table: Mapping[tuple[int, ...], int], axes: Sequence[int]) -> Table:
    """Sum a contingency table over every axis not in ``axes``.

    Example:
        >>> marginal({(0, 0, 1): 2, (0, 1, 1): 3}, (0, 2))
        {(0, 1): 5}
    """
    out: defaultdict[tuple[int, ...], int] = defaultdict(int)
    for key, n in table.items():
        out[tuple(key[a] for a in axes)] += n
    return dict(out)


def _pairs(n: int) -> int:
    return n * (n - 1) // 2


def ari_from_contingency(table: Mapping[tuple[int, ...], int]) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985) of a two-way contingency table.

    ``(I - E) / (M - E)`` with ``I = sum_ij C(n_ij, 2)``, ``E = sum_i C(a_i, 2) sum_j C(b_j, 2)
    / C(n, 2)`` and ``M = (sum_i C(a_i, 2) + sum_j C(b_j, 2)) / 2``; exact integer sums. Two
    labelings that each put everything in one cluster (M = E) count as identical (1.0).

    Example:
        >>> ari_from_contingency({(0, 0): 4, (0, 1): 1, (1, 0): 1, (1, 1): 4})
        0.28
    """
    rows: defaultdict[int, int] = defaultdict(int)
    cols: defaultdict[int, int] = defaultdict(int)
    index = 0
    for key, n in table.items():
        if len(key) != 2:
            raise UsageError("the adjusted Rand index needs a two-way contingency table")
        rows[key[0]] += n
        cols[key[1]] += n
        index += _pairs(n)
    total = sum(table.values())
    if total < 2:
        raise InputError("the adjusted Rand index needs at least two labelled rows")
    sum_a = sum(_pairs(n) for n in rows.values())
    sum_b = sum(_pairs(n) for n in cols.values())
    expected = sum_a * sum_b / _pairs(total)
    maximum = (sum_a + sum_b) / 2
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)


def adjusted_rand_index(df: DataFrame, labels_a: str, labels_b: str) -> float:
    """The adjusted Rand index between two label columns of ``df`` (Hubert & Arabie 1985).

    Example:
        >>> adjusted_rand_index(scored, "segment_id", "true_segment")
        1.0
    """
    return ari_from_contingency(contingency(df, labels_a, labels_b))


def jaccard_recovery(table: Mapping[tuple[int, ...], int]) -> dict[int, float]:
    """For each reference cluster (first label), the best Jaccard with any other cluster.

    ``max_j |C ∩ D_j| / (|C| + |D_j| - |C ∩ D_j|)`` (Hennig 2007's clusterwise Jaccard).

    Example:
        >>> jaccard_recovery({(0, 5): 9, (0, 6): 1, (1, 6): 10})
        {0: 0.9, 1: 0.9090909090909091}
    """
    ref: defaultdict[int, int] = defaultdict(int)
    other: defaultdict[int, int] = defaultdict(int)
    for (c, d), n in table.items():
        ref[c] += n
        other[d] += n
    best: dict[int, float] = dict.fromkeys(sorted(ref), 0.0)
    for (c, d), n in table.items():
        best[c] = max(best[c], n / (ref[c] + other[d] - n))
    return best


def segment_jaccard(df: DataFrame, reference_col: str, other_col: str) -> dict[int, float]:
    """Hennig's clusterwise Jaccard of each ``reference_col`` cluster against ``other_col``.

    Example:
        >>> segment_jaccard(scored, "true_segment", "segment_id")
        {0: 1.0, 1: 0.987, 2: 1.0, 3: 0.987}
    """
    return jaccard_recovery(contingency(df, reference_col, other_col))
