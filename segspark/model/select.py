"""Choosing k: internal metrics and bootstrap stability for each k, then one documented rule.

For every k (``model.k_min..model.k_max``, or the fixed ``model.k``) the clusterer is fitted on
the full data — the standardized vectors, preprocessed once and cached once for the whole
sweep — and scored with silhouette (MLlib, sampled beyond ``model.silhouette_sample_size``),
Calinski-Harabasz, Davies-Bouldin and WSSSE (:mod:`segspark.model.metrics`).

Stability follows flexclust's ``bootFlexclust`` (Leisch 2006, "A toolbox for K-centroids cluster
analysis"): for each of B pairs, fit on two bootstrap resamples, predict *all* rows with both
fits and take the adjusted Rand index between the two labelings; ``stability_ari`` is the mean
over the B pairs. The same resamples serve every k (common random numbers), so differences
between k are not resampling noise. Each of the 2B bootstrap fits is also compared with the
full-data fit: for every cluster the best Jaccard coefficient with a bootstrap cluster, averaged
over the fits, is Hennig's (2007, "Cluster-wise assessment of cluster stability") clusterwise
Jaccard recovery (below 0.5: the cluster dissolves; above 0.75: stable).

Cost: the fits dominate (per k, ``model.restarts`` starts on the full data and on each of the
2B resamples). Ks are evaluated concurrently from ``parallelism`` driver threads (each k's fits
and metrics are seeded, so the table does not depend on it), and the B bootstrap pairs of a k
are labelled and counted in one pass over the data rather than one pass per pair.

Choice rule (:func:`choose_k`; the text is returned with the result): among the k whose fit has
no empty cluster and whose mean bootstrap ARI is at least ``model.stability_threshold``, the k
with the highest silhouette; if no k is that stable, the k with the highest mean ARI; ties go
to the smaller k. Without bootstraps (``model.bootstrap_resamples: 0``) the highest silhouette.

Example:
    >>> result = select_model(features_df, settings=load_settings(domain="retail").model)
    >>> result.k, result.rule
    (4, 'among k in 2..8 ...')
    >>> result.model.transform(features_df).select("customer_id", "segment_id")
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pyspark.ml import PipelineModel
from pyspark.ml.clustering import GaussianMixtureModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segspark.config import ModelSettings
from segspark.errors import InputError, UsageError
from segspark.model.metrics import (
    MAX_CONTINGENCY_CELLS,
    Table,
    ari_from_contingency,
    calinski_harabasz,
    cluster_stats,
    contingency,
    davies_bouldin,
    jaccard_recovery,
    marginal,
    silhouette,
    wssse,
)
from segspark.model.pipeline import (
    CLUSTER_COL,
    PREFIX,
    Algorithm,
    ClusterModel,
    assemble_model,
    centres_data,
    cluster_count,
    fit_clusterer,
    fit_vectors,
    parallel_map,
    resolve_mapping,
    vector_col,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

_BOOT_A = f"{PREFIX}boot_a"
_BOOT_B = f"{PREFIX}boot_b"
_PAIR = f"{PREFIX}pair"

DEFAULT_PARALLELISM = 2
"""Ks evaluated at once by :func:`select_model`: one fit is a chain of small jobs with the
driver in between, which leaves cores idle that a second k's jobs use (``bench/w2_ksweep``)."""


@dataclass(frozen=True)
class KMetrics:
    """Quality of the full-data fit for one k (one row of the k-selection table)."""

    k: int
    clusters: int
    silhouette: float
    silhouette_se: float
    silhouette_rows: int
    calinski_harabasz: float
    davies_bouldin: float
    wssse: float
    stability_ari: float | None
    stability_ari_sd: float | None
    jaccard: dict[int, float] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The scalar columns as a plain dict (per-cluster maps left out)."""
        out = asdict(self)
        del out["jaccard"], out["sizes"]
        out["min_jaccard"] = min(self.jaccard.values()) if self.jaccard else None
        return out


@dataclass(frozen=True)
class SelectionResult:
    """What :func:`select_model` returns: the k table, the chosen k and rule, the fitted model."""

    k: int
    rule: str
    metrics: tuple[KMetrics, ...]
    model: PipelineModel
    algorithm: Algorithm
    features: tuple[str, ...]
    mapping: dict[int, int]
    rows: int

    @property
    def chosen(self) -> KMetrics:
        """The metrics row of the chosen k."""
        return next(m for m in self.metrics if m.k == self.k)

    @property
    def segment_jaccard(self) -> dict[int, float]:
        """{segment_id: Hennig's bootstrap Jaccard recovery} of the chosen model."""
        return {self.mapping[c]: j for c, j in sorted(self.chosen.jaccard.items())}

    @property
    def segment_sizes(self) -> dict[int, int]:
        """{segment_id: training rows} of the chosen model."""
        return {self.mapping[c]: n for c, n in sorted(self.chosen.sizes.items())}

    def metrics_table(self) -> list[dict[str, Any]]:
        """One plain dict per k, ordered by k.

        Example:
            >>> [(r["k"], round(r["silhouette"], 2)) for r in result.metrics_table()]
            [(2, 0.41), (3, 0.55), (4, 0.83), (5, 0.66)]
        """
        return [m.row() for m in self.metrics]

    def to_pandas(self) -> pd.DataFrame:
        """The k table as a pandas frame (k rows)."""
        import pandas as pd

        return pd.DataFrame(self.metrics_table())


def choose_k(
    metrics: Sequence[KMetrics], *, threshold: float, fixed: bool = False
) -> tuple[int, str]:
    """Apply the choice rule (module docstring) and describe it; returns ``(k, rule)``.

    Example:
        >>> choose_k(rows, threshold=0.75)[0]
        4
    """
    if not metrics:
        raise UsageError("no k was evaluated")
    ks = [m.k for m in metrics]
    if fixed:
        return ks[0], f"k fixed at {ks[0]} (no selection)"
    span = f"k in {min(ks)}..{max(ks)}"
    eligible = [m for m in metrics if m.clusters == m.k] or list(metrics)

    def best(rows: Sequence[KMetrics], key: str) -> KMetrics:
        # max() keeps the first of equal values; rows are in ascending k, so ties -> smaller k
        return max(rows, key=lambda m: _finite(getattr(m, key)))

    if all(m.stability_ari is None for m in metrics):
        chosen = best(eligible, "silhouette")
        return chosen.k, (
            f"among {span} with no empty cluster, the highest silhouette (no bootstrap "
            f"stability computed); ties to the smaller k -> k={chosen.k}"
        )
    stable = [m for m in eligible if _finite(m.stability_ari) >= threshold]
    rule = (
        f"among {span} with no empty cluster and mean bootstrap ARI >= {threshold:g} "
        "(flexclust bootFlexclust pairs), the highest silhouette; if none is that stable, the "
        "highest mean ARI; ties to the smaller k"
    )
    if stable:
        chosen = best(stable, "silhouette")
        stable_ks = ", ".join(str(m.k) for m in stable)
        return chosen.k, f"{rule} -> k={chosen.k} (stable: {stable_ks})"
    chosen = best(eligible, "stability_ari")
    return chosen.k, f"{rule} -> k={chosen.k} (no k reached the threshold; most stable)"


def _finite(value: float | None) -> float:
    return -math.inf if value is None or math.isnan(value) else value


def _predict(model: ClusterModel, df: DataFrame, column: str) -> DataFrame:
    """Add ``model``'s cluster index as ``column``; every other added column is dropped."""
    model.setPredictionCol(column)
    if isinstance(model, GaussianMixtureModel):
        model.setProbabilityCol(f"{column}_probability")
    return model.transform(df).select(*df.columns, column)


def _pair_tables(
    labeled: DataFrame, pairs: Sequence[tuple[ClusterModel, ClusterModel]], k: int
) -> list[Table]:
    """The (full fit, fit A, fit B) contingency table of each bootstrap pair, in order.

    All pairs are labelled and counted in one pass over ``labeled`` (a pair index column
    tells the tables apart), in chunks small enough for :data:`MAX_CONTINGENCY_CELLS`.
    """
    per_pair = max(2, k) ** 3
    chunk = max(1, MAX_CONTINGENCY_CELLS // per_pair)
    tables: list[Table] = []
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        frame = labeled
        cells = []
        for i, (fit_a, fit_b) in enumerate(part):
            frame = _predict(fit_b, _predict(fit_a, frame, f"{_BOOT_A}{i}"), f"{_BOOT_B}{i}")
            cells.append(
                F.struct(
                    F.lit(i).alias("pair"),
                    F.col(f"{_BOOT_A}{i}").alias("a"),
                    F.col(f"{_BOOT_B}{i}").alias("b"),
                )
            )
        exploded = frame.select(CLUSTER_COL, F.explode(F.array(*cells)).alias("p")).select(
            CLUSTER_COL,
            F.col("p.pair").alias(_PAIR),
            F.col("p.a").alias(_BOOT_A),
            F.col("p.b").alias(_BOOT_B),
        )
        table = contingency(exploded, _PAIR, CLUSTER_COL, _BOOT_A, _BOOT_B)
        split: list[Table] = [{} for _ in part]
        for (pair, *labels), n in table.items():
            split[pair][tuple(labels)] = n
        tables.extend(split)
    return tables


def _stability(
    vectors: DataFrame,
    labeled: DataFrame,
    *,
    algorithm: Algorithm,
    k: int,
    settings: ModelSettings,
    resamples: int,
    parallelism: int = 1,
) -> tuple[float | None, float | None, dict[int, float]]:
    """Mean and sd of the bootstrap-pair ARI, and each cluster's mean Jaccard recovery."""
    if resamples == 0:
        return None, None, {}

    def fit(draw: tuple[int, int]) -> ClusterModel:
        b, j = draw
        # Seeds depend on (b, j) only: the same resamples for every k.
        sample = vectors.sample(
            withReplacement=True, fraction=1.0, seed=settings.seed + 1000 * (b + 1) + j
        )
        return fit_clusterer(sample, algorithm, k, settings)

    draws = [(b, j) for b in range(resamples) for j in (0, 1)]
    fits = parallel_map(vectors.sparkSession, fit, draws, parallelism)
    pairs = [(fits[2 * b], fits[2 * b + 1]) for b in range(resamples)]
    aris: list[float] = []
    jaccards: dict[int, list[float]] = {}
    for table in _pair_tables(labeled, pairs, k):
        aris.append(ari_from_contingency(marginal(table, (1, 2))))
        for axis in (1, 2):
            for c, value in jaccard_recovery(marginal(table, (0, axis))).items():
                jaccards.setdefault(c, []).append(value)
    mean = sum(aris) / len(aris)
    sd = math.sqrt(sum((a - mean) ** 2 for a in aris) / (len(aris) - 1)) if len(aris) > 1 else 0.0
    return mean, sd, {c: sum(v) / len(v) for c, v in sorted(jaccards.items())}


def evaluate_k(
    vectors: DataFrame,
    model: ClusterModel,
    *,
    algorithm: Algorithm,
    k: int,
    settings: ModelSettings,
    rows: int,
    resamples: int,
    parallelism: int = 1,
) -> KMetrics:
    """All metrics of one full-data fit on the cached ``vectors``.

    ``parallelism`` driver threads fit the bootstrap resamples.

    Example:
        >>> evaluate_k(vectors, fitted, algorithm="kmeans", k=4, settings=s, rows=300,
        ...            resamples=2).stability_ari
        1.0
    """
    features_col = vector_col(settings)
    labeled = model.transform(vectors).select(*vectors.columns, CLUSTER_COL)
    stats = cluster_stats(labeled, features_col, CLUSTER_COL)
    sil = silhouette(
        labeled,
        features_col,
        CLUSTER_COL,
        sample_size=settings.silhouette_sample_size,
        seed=settings.seed,
        rows=rows,
    )
    ari, ari_sd, jaccard = _stability(
        vectors,
        labeled,
        algorithm=algorithm,
        k=k,
        settings=settings,
        resamples=resamples,
        parallelism=parallelism,
    )
    return KMetrics(
        k=k,
        clusters=stats.k,
        silhouette=sil.value,
        silhouette_se=sil.std_error,
        silhouette_rows=sil.sample_rows,
        calinski_harabasz=calinski_harabasz(stats),
        davies_bouldin=davies_bouldin(stats),
        wssse=wssse(stats),
        stability_ari=ari,
        stability_ari_sd=ari_sd,
        jaccard=jaccard,
        sizes=stats.sizes(),
    )


def select_model(
    df: DataFrame,
    features: Sequence[str] | None = None,
    *,
    settings: ModelSettings,
    k: int | None = None,
    k_min: int | None = None,
    k_max: int | None = None,
    algorithm: Algorithm | None = None,
    mapping: Mapping[int, int] | None = None,
    id_col: str = "customer_id",
    parallelism: int = DEFAULT_PARALLELISM,
) -> SelectionResult:
    """Fit preprocessing once, sweep k, choose one by the rule, return the complete model.

    Arguments left as None come from ``settings`` (``features``, ``k``/``k_min``/``k_max``,
    ``algorithm``, ``segment_mapping``); an explicit ``k`` overrides the range. The returned
    :class:`PipelineModel` scores raw feature rows straight to ``segment_id``. ``parallelism``
    is how many ks are evaluated at once from driver threads (with a single k, how many
    bootstrap fits); the result does not depend on it.

    Example:
        >>> result = select_model(df, ["recency_days", "frequency"], settings=s, k_max=6)
        >>> result.to_pandas()[["k", "silhouette", "stability_ari"]]
    """
    features = list(settings.features if features is None else features)
    algorithm = algorithm or settings.algorithm
    fixed_k = k if k is not None else (settings.k if k_min is None and k_max is None else None)
    if fixed_k is not None:
        ks = [fixed_k]
    else:
        low = settings.k_min if k_min is None else k_min
        high = settings.k_max if k_max is None else k_max
        if low < 2 or low > high:
            raise UsageError(f"the k range {low}..{high} is empty or starts below 2")
        ks = list(range(low, high + 1))
    if ks[0] < 2:
        raise UsageError(f"k must be at least 2, got {ks[0]}")
    if parallelism < 1:
        raise UsageError(f"parallelism must be at least 1, got {parallelism}")
    wanted = settings.segment_mapping if mapping is None else mapping
    if wanted and len(ks) > 1:
        raise UsageError("a segment mapping needs a fixed k (set k, or map after training)")
    prep, vectors = fit_vectors(
        df, features, settings, id_col=id_col, center=centres_data(algorithm)
    )
    try:
        rows = vectors.count()
        if rows <= max(ks):
            raise InputError(f"{rows} rows cannot be split into {max(ks)} clusters (need more)")
        outer = parallelism if len(ks) > 1 else 1

        def sweep(k_: int) -> tuple[ClusterModel, KMetrics]:
            model = fit_clusterer(vectors, algorithm, k_, settings)
            row = evaluate_k(
                vectors,
                model,
                algorithm=algorithm,
                k=k_,
                settings=settings,
                rows=rows,
                resamples=settings.bootstrap_resamples,
                parallelism=parallelism if outer == 1 else 1,
            )
            return model, row

        # the larger k (slower fits) first, so the threads finish together
        order = sorted(ks, reverse=True)
        sweeps = parallel_map(vectors.sparkSession, sweep, order, outer)
        done = dict(zip(order, sweeps, strict=True))
        fitted = {k_: done[k_][0] for k_ in ks}
        metrics = [done[k_][1] for k_ in ks]
        for row in metrics:
            log.info(
                "k=%d silhouette=%.4f (se %.4f) ch=%.1f db=%.4f wssse=%.1f stability=%s",
                row.k,
                row.silhouette,
                row.silhouette_se,
                row.calinski_harabasz,
                row.davies_bouldin,
                row.wssse,
                "n/a" if row.stability_ari is None else f"{row.stability_ari:.3f}",
            )
    finally:
        vectors.unpersist()
    chosen, rule = choose_k(
        metrics, threshold=settings.stability_threshold, fixed=fixed_k is not None
    )
    log.info("chose k=%d: %s", chosen, rule)
    resolved = resolve_mapping(cluster_count(fitted[chosen]), wanted)
    model = assemble_model(prep, fitted[chosen], features, settings, algorithm, resolved)
    return SelectionResult(
        k=chosen,
        rule=rule,
        metrics=tuple(metrics),
        model=model,
        algorithm=algorithm,
        features=tuple(features),
        mapping=resolved,
        rows=rows,
    )
