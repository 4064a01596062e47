"""MLflow logging of a segmentation: per-k metrics, chosen values, plots and profile tables.

These helpers call ``mlflow`` directly on the active run (the ``train`` command opens it with
:func:`segspark.tracking.step_run`). Naming (DESIGN.md, "MLflow conventions"):

* per k, with ``step=k``: ``silhouette``, ``silhouette_se``, ``calinski_harabasz``,
  ``davies_bouldin``, ``wssse``, ``stability_ari`` (when bootstraps ran);
* the chosen model, as plain metrics: ``chosen_k`` and ``chosen_<metric>`` (a distinct name:
  a plain ``silhouette`` would join the per-k history, where MLflow shows the value of the
  largest step, not the chosen one), plus ``jaccard_segment_<segment_id>`` for each segment
  with at least ``privacy.min_segment_size`` training rows;
* params ``model_algorithm``, ``model_k_range``, ``model_features``; tag ``k_rule``;
* artifacts under ``segmentation/``: ``k_selection.png``, ``k_metrics.csv``, ``k_rule.txt``,
  ``profile_heatmap.png``, ``segment_sizes.png``, ``segment_profiles.csv``,
  ``segment_feature_profiles.csv``.

Plots are matplotlib (installed with MLflow) figures drawn outside pyplot, so no backend is
switched for the process. Only k-sized frames are collected.

Privacy: nothing here holds a customer id or a customer's row. The profile CSVs and plots come
from the already withheld (and, with ``privacy.epsilon``, noisy) profile frames, so a withheld
segment appears with its id, its name and ``withheld`` only; per-segment stability
(``jaccard_segment_<id>``, and ``min_jaccard`` in ``k_metrics.csv``) leaves out segments with
fewer than ``privacy.min_segment_size`` rows. The logged model (``segspark.segmentation``) holds
every cluster's centre, small ones included, because scoring needs them: treat the registered
model like the silver features it was fitted on.

Example:
    >>> with step_run(settings, uri, domain="retail", step="train", as_of="2024-06-30"):
    ...     log_selection(result)
    ...     log_profiles(profiles.profiles, profiles.feature_profiles)
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pyspark.sql import DataFrame

from segspark.model.select import KMetrics, SelectionResult

if TYPE_CHECKING:
    import pandas as pd

ARTIFACT_DIR = "segmentation"
PER_K_METRICS = (
    "silhouette",
    "silhouette_se",
    "calinski_harabasz",
    "davies_bouldin",
    "wssse",
    "stability_ari",
)


def _figure(width: float, height: float) -> Any:
    # A Figure of its own, outside pyplot: no global backend switch, so a notebook that trains
    # keeps its inline plots, and nothing to close.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _loggable(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def plot_k_selection(
    metrics: Sequence[KMetrics], path: Path, *, chosen_k: int, threshold: float | None = None
) -> Path:
    """Five panels against k (silhouette +- 2 se, CH, DB, WSSSE, stability) -> PNG.

    Example:
        >>> plot_k_selection(result.metrics, Path("k.png"), chosen_k=result.k)
        PosixPath('k.png')
    """
    ks = [m.k for m in metrics]
    panels = [
        ("silhouette", "silhouette (higher is better)"),
        ("calinski_harabasz", "Calinski-Harabasz (higher)"),
        ("davies_bouldin", "Davies-Bouldin (lower)"),
        ("wssse", "WSSSE (elbow)"),
        ("stability_ari", "bootstrap ARI (higher)"),
    ]
    fig = _figure(4 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels))
    for ax, (name, title) in zip(axes, panels, strict=True):
        values = [getattr(m, name) for m in metrics]
        values = [math.nan if v is None else v for v in values]
        if name == "silhouette":
            ax.errorbar(ks, values, yerr=[2 * m.silhouette_se for m in metrics], marker="o")
        else:
            ax.plot(ks, values, marker="o")
        if name == "stability_ari" and threshold is not None:
            ax.axhline(threshold, color="grey", linestyle=":", label="threshold")
        ax.axvline(chosen_k, color="tab:red", linestyle="--", linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("k")
        ax.set_xticks(ks)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_profile_heatmap(feature_profiles: pd.DataFrame, names: dict[int, str], path: Path) -> Path:
    """Segments x features heat map of z-scores (clipped to +-3, withheld rows blank) -> PNG.

    Example:
        >>> plot_profile_heatmap(fp.toPandas(), profiles.names, Path("heat.png"))
        PosixPath('heat.png')
    """
    table = feature_profiles.pivot(index="segment_id", columns="feature", values="z_score")
    order = list(dict.fromkeys(feature_profiles["feature"]))
    table = table[order].sort_index().astype(float)
    width = max(6.0, 3.0 + 0.55 * len(order))
    fig = _figure(width, 1.6 + 0.5 * len(table.index))
    ax = fig.subplots()
    image = ax.imshow(table.clip(-3, 3).to_numpy(), cmap="RdBu_r", vmin=-3, vmax=3, aspect="auto")
    ax.set_xticks(range(len(order)), order, rotation=60, ha="right", fontsize=8)
    labels = [f"{sid} {names.get(int(sid), '')}" for sid in table.index]
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for (i, j), z in np.ndenumerate(table.to_numpy()):
        if math.isfinite(z):
            ax.text(j, i, f"{z:.1f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=ax, label="z-score")
    ax.set_title("segment mean vs population (z-score)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_sizes(profiles: pd.DataFrame, path: Path) -> Path:
    """Customers per segment as bars (withheld segments shown without a count) -> PNG.

    Example:
        >>> plot_sizes(profiles.profiles.toPandas(), Path("sizes.png"))
        PosixPath('sizes.png')
    """
    frame = profiles.sort_values("segment_id")
    labels = [f"{s} {n}" for s, n in zip(frame["segment_id"], frame["segment_name"], strict=True)]
    counts = [0 if w else c for c, w in zip(frame["customers"], frame["withheld"], strict=True)]
    fig = _figure(6, 0.6 + 0.45 * len(labels))
    ax = fig.subplots()
    bars = ax.barh(labels, counts, color="tab:blue")
    for bar, share, withheld in zip(bars, frame["share"], frame["withheld"], strict=True):
        text = "withheld" if withheld else f"{share:.1%}"
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {text}", va="center")
    ax.invert_yaxis()
    ax.set_xlabel("customers")
    ax.set_title("segment sizes", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def published_jaccard(metrics: KMetrics, min_segment_size: int) -> dict[int, float]:
    """{cluster: bootstrap Jaccard} of the clusters with at least ``min_segment_size`` rows.

    Example:
        >>> published_jaccard(result.chosen, 10)
        {0: 0.97, 2: 0.91}
    """
    return {c: j for c, j in metrics.jaccard.items() if metrics.sizes.get(c, 0) >= min_segment_size}


def log_selection(
    result: SelectionResult, *, threshold: float | None = None, min_segment_size: int
) -> None:
    """Log per-k metrics (step=k), the chosen values, params, the rule and the k plot.

    Per-segment stability is logged only for segments with at least ``min_segment_size`` rows.

    Example:
        >>> log_selection(result, threshold=settings.model.stability_threshold,
        ...               min_segment_size=settings.privacy.min_segment_size)
    """
    import mlflow

    for m in result.metrics:
        values = {name: getattr(m, name) for name in PER_K_METRICS}
        mlflow.log_metrics({n: float(v) for n, v in values.items() if _loggable(v)}, step=m.k)
    chosen = result.chosen
    plain = {f"chosen_{n}": getattr(chosen, n) for n in PER_K_METRICS}
    plain["chosen_k"] = float(result.k)
    sizes = result.segment_sizes
    plain.update(
        {
            f"jaccard_segment_{s}": j
            for s, j in result.segment_jaccard.items()
            if sizes.get(s, 0) >= min_segment_size
        }
    )
    mlflow.log_metrics({n: float(v) for n, v in plain.items() if _loggable(v)})
    ks = [m.k for m in result.metrics]
    mlflow.log_params(
        {
            "model_algorithm": result.algorithm,
            "model_k_range": f"{min(ks)}..{max(ks)}",
            "model_features": ",".join(result.features),
        }
    )
    mlflow.set_tag("k_rule", result.rule)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plot_k_selection(
            result.metrics, folder / "k_selection.png", chosen_k=result.k, threshold=threshold
        )
        table = result.to_pandas()
        if "min_jaccard" in table.columns:
            table["min_jaccard"] = [
                min(published_jaccard(m, min_segment_size).values(), default=None)
                for m in result.metrics
            ]
        table.to_csv(folder / "k_metrics.csv", index=False)
        (folder / "k_rule.txt").write_text(result.rule + "\n")
        mlflow.log_artifacts(str(folder), ARTIFACT_DIR)


def log_profiles(profiles: DataFrame, feature_profiles: DataFrame) -> None:
    """Log the profile tables as CSV, the z-score heat map and the sizes chart.

    Both frames are k-sized (k rows; k x features rows) and are collected here.

    Example:
        >>> log_profiles(result.profiles, result.feature_profiles)
    """
    import mlflow

    profiles_pdf: pd.DataFrame = profiles.toPandas()
    features_pdf: pd.DataFrame = feature_profiles.toPandas()
    names = {
        int(s): str(n)
        for s, n in zip(profiles_pdf["segment_id"], profiles_pdf["segment_name"], strict=True)
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        profiles_pdf.to_csv(folder / "segment_profiles.csv", index=False)
        features_pdf.to_csv(folder / "segment_feature_profiles.csv", index=False)
        plot_profile_heatmap(features_pdf, names, folder / "profile_heatmap.png")
        plot_sizes(profiles_pdf, folder / "segment_sizes.png")
        mlflow.log_artifacts(str(folder), ARTIFACT_DIR)
