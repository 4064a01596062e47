# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # segspark walkthrough: from call records to segments and how customers move
#
# One domain (telecom) end to end with segspark's Python API, on generated customers whose
# segments are planted, so the result can be checked against the truth:
#
# 1. generate customers and call-detail records;
# 2. compute per-customer features at two month ends;
# 3. choose k: the k-selection table and its curves;
# 4. train the model and profile the segments;
# 5. score the next month with the champion and measure migration between the two snapshots.
#
# Everything goes to a throwaway lake (`SEGSPARK_WALKTHROUGH_LAKE`, default a new temporary
# folder) so an existing lake is never touched; `SEGSPARK_WALKTHROUGH_CUSTOMERS` sets the size.
# The `segspark` command runs the same steps (`segspark generate`, `features`, `train`, `score`,
# `migrate`, or `run` for one period end to end).

# %%
import datetime as dt
import io
import logging
import os
import tempfile
from pathlib import Path

import pandas as pd
from IPython.display import Image, display
from matplotlib.figure import Figure
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segspark import synth
from segspark.commands.generate import store
from segspark.config import load_settings
from segspark.features.step import features_table, run_features
from segspark.lake import Lake
from segspark.model.artifacts import plot_k_selection, plot_profile_heatmap, plot_sizes
from segspark.model.metrics import ari_from_contingency
from segspark.model.select import select_model
from segspark.segmentation import migrate, score, train
from segspark.session import build_session
from segspark.snapshots import read_snapshot
from segspark.tracking import resolve_tracking_uri

LAKE = Path(
    os.environ.get("SEGSPARK_WALKTHROUGH_LAKE") or tempfile.mkdtemp(prefix="segspark-walkthrough-")
).resolve()
CUSTOMERS = int(os.environ.get("SEGSPARK_WALKTHROUGH_CUSTOMERS", "300"))
DOMAIN = "telecom"
START, D1, D2 = dt.date(2024, 1, 1), dt.date(2024, 3, 31), dt.date(2024, 4, 30)
FIGURES = Path(tempfile.mkdtemp(prefix="segspark-figures-"))

# Features over the last 28 days see one month of behaviour, so a month-end snapshot reflects
# that month's planted segment. The model settings keep the sweep small for a small walkthrough
# (conf/base.yaml sizes them for real data: k up to 8, 10 bootstrap pairs, 32 partitions).
OVERRIDES = [
    f"lake.root={LAKE}",
    "features.telecom.window_days=28",
    "features.telecom.trend_days=14",
    "model.k_min=2",
    "model.k_max=6",
    "model.bootstrap_resamples=2",
    "model.restarts=2",
    "model.partitions=4",
]
settings = load_settings(domain=DOMAIN, overrides=OVERRIDES)
spark = build_session(settings.spark)
lake = Lake.from_settings(spark, settings.lake)
tracking_uri = resolve_tracking_uri(None, settings)
logging.getLogger("mlflow").setLevel(logging.WARNING)  # as the segspark command does
print(f"lake: {LAKE} ({lake.backend_name} backend)")
print(f"MLflow: {tracking_uri}")


def show_png(path: Path) -> None:
    """Show a PNG written by segspark's plotting functions (the same files MLflow logs)."""
    display(Image(filename=str(path)))


def show_figure(fig: Figure) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    display(Image(data=buffer.getvalue(), format="png"))


def at(table: str, as_of: dt.date) -> DataFrame:
    """One domain's rows of a gold table at one date."""
    return lake.read(table).where((F.col("domain") == DOMAIN) & (F.col("as_of") == F.lit(as_of)))


# %% [markdown]
# ## 1. Generate
#
# Every random draw is a hash of (seed, customer, stream), so the same seed gives the same
# tables on any cluster. `synthetic_truth` holds the planted segment of each customer at each
# month end.

# %% tags=["generate"]
data = synth.generate(
    spark,
    DOMAIN,
    customers=CUSTOMERS,
    start=START,
    end=D2,
    seed=settings.synth.seed,
    settings=settings.synth,
    partitions=synth.default_partitions(
        spark, DOMAIN, customers=CUSTOMERS, start=START, end=D2, settings=settings.synth
    ),
)
for table, (rows, _version) in store(lake, data, DOMAIN).items():
    print(f"{table}: {rows} rows")
planted = synth.segment_names(settings.synth, DOMAIN)
print("planted segments:", ", ".join(planted))

# %% [markdown]
# ## 2. Features
#
# One row per customer with events up to `as_of` (usage volumes and rates, night, weekend,
# international and outgoing shares, contacts ...). Each run is also an MLflow run with the
# features' summary statistics.

# %% tags=["features"]
for as_of in (D1, D2):
    computed = run_features(
        spark, lake, settings, domain=DOMAIN, as_of=as_of, tracking_uri=tracking_uri
    )
    print(f"{features_table(DOMAIN)} @ {as_of}: {computed.rows} customers")
features = lake.read(features_table(DOMAIN)).where(F.col("as_of") == F.lit(D1))
clustered = list(settings.model.features)
print("clustered features:", ", ".join(clustered))
features.select(*clustered).summary("mean", "25%", "50%", "75%").toPandas().set_index("summary")

# %% [markdown]
# ## 3. Choosing k
#
# `select_model` is what `segspark train` calls: it fits the preprocessing once (imputation,
# `log1p` of the heavy-tailed features, scaling), fits k-means for every k and scores each fit
# with silhouette, Calinski-Harabasz, Davies-Bouldin, WSSSE and bootstrap stability (mean
# adjusted Rand index between fits on resamples). The rule: among stable k, the best
# silhouette.

# %% tags=["k-selection"]
selection = select_model(features, settings=settings.model)
columns = ["k", "silhouette", "silhouette_se", "calinski_harabasz", "davies_bouldin", "wssse"]
columns += ["stability_ari", "min_jaccard"]
print(selection.to_pandas()[columns].round(3).to_string(index=False))
print(f"chosen k = {selection.k}")
print(f"rule: {selection.rule}")
show_png(
    plot_k_selection(
        selection.metrics,
        FIGURES / "k_selection.png",
        chosen_k=selection.k,
        threshold=settings.model.stability_threshold,
    )
)

# %% [markdown]
# ## 4. Train and profile
#
# `train` refits the chosen k (same data and seed: the same model), names the segments from
# their strongest z-scores, registers the PipelineModel in MLflow as the champion and writes
# the registry, the first snapshot and the profiles.

# %% tags=["profiles"]
trained = train(
    spark, lake, settings, domain=DOMAIN, as_of=D1, tracking_uri=tracking_uri, k=selection.k
)
print(f"segspark-{DOMAIN} v{trained.model_version}: k={trained.k}, {trained.customers} customers")
profiles = at("segment_profiles", D1).orderBy("segment_id").toPandas()
for p in profiles.itertuples(index=False):
    size = "withheld" if p.withheld else f"{int(p.customers)} customers ({p.share:.1%})"
    print(f"segment {p.segment_id}: {p.segment_name}: {size}")
feature_profiles = at("segment_feature_profiles", D1).toPandas()
show_png(plot_profile_heatmap(feature_profiles, trained.segments, FIGURES / "profiles.png"))
show_png(plot_sizes(profiles, FIGURES / "sizes.png"))

# %% [markdown]
# The generator planted the segments, so the snapshot can be scored against the truth: rows are
# segments, columns planted segments; the adjusted Rand index is 1 for a perfect recovery.

# %% tags=["recovery"]
truth = at("synthetic_truth", D1).select("customer_id", "true_segment")
crossed = (
    read_snapshot(lake, domain=DOMAIN, as_of=D1)
    .join(truth, "customer_id")
    .groupBy("segment_id", "true_segment")
    .agg(F.count(F.lit(1)).alias("customers"))
    .toPandas()
)
recovery = crossed.pivot_table(
    index="segment_id", columns="true_segment", values="customers", aggfunc="sum", fill_value=0
)
print(recovery.to_string())
contingency = {
    (int(r.segment_id), planted.index(r.true_segment)): int(r.customers)
    for r in crossed.itertuples(index=False)
}
print(f"adjusted Rand index vs the planted segments: {ari_from_contingency(contingency):.3f}")

# %% [markdown]
# ## 5. Next month: score and migrate
#
# `score` assigns the customers of the next month end with the champion (no refit), so segment
# ids mean the same thing in both snapshots; `migrate` compares the two snapshots: one row per
# customer in either (`segment_migrations`), the from x to matrix
# (`segment_migration_matrix`) and the drift of segment shares and features (`segment_drift`).

# %% tags=["migration"]
scored = score(spark, lake, settings, domain=DOMAIN, as_of=D2, tracking_uri=tracking_uri)
moved = migrate(lake, settings, domain=DOMAIN, from_as_of=D1, to_as_of=D2)
print(f"customers in either snapshot: {moved.customers}")
matrix = (
    lake.read("segment_migration_matrix")
    .where((F.col("domain") == DOMAIN) & (F.col("from_as_of") == F.lit(D1)))
    .toPandas()
)
names = {**trained.segments, **scored.segments}


def label(segment_id: float | None, missing: str) -> str:
    return missing if pd.isna(segment_id) else names[int(segment_id)]


matrix["from"] = [label(s, "(new)") for s in matrix["from_segment_id"]]
matrix["to"] = [label(s, "(lapsed)") for s in matrix["to_segment_id"]]
crosstab = matrix.pivot_table(
    index="from", columns="to", values="customers", aggfunc="sum", fill_value=0
)
print(crosstab.to_string())
known = matrix["from_segment_id"].notna() & matrix["to_segment_id"].notna()
same = known & (matrix["from_segment_id"] == matrix["to_segment_id"])
print(
    f"stayed: {matrix.loc[same, 'customers'].sum()}, "
    f"moved: {matrix.loc[known & ~same, 'customers'].sum()}, "
    f"new: {matrix.loc[matrix['from_segment_id'].isna(), 'customers'].sum()}, "
    f"lapsed: {matrix.loc[matrix['to_segment_id'].isna(), 'customers'].sum()}"
)
shares = matrix.pivot_table(index="from", columns="to", values="share_of_from", fill_value=0.0)
fig = Figure(figsize=(1.6 + 1.1 * len(shares.columns), 1.2 + 0.5 * len(shares.index)))
ax = fig.subplots()
image = ax.imshow(shares.to_numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
ax.set_xticks(range(len(shares.columns)), shares.columns, rotation=30, ha="right", fontsize=8)
ax.set_yticks(range(len(shares.index)), shares.index, fontsize=8)
for (i, j), value in zip(
    [(i, j) for i in range(len(shares.index)) for j in range(len(shares.columns))],
    shares.to_numpy().ravel(),
    strict=True,
):
    ax.text(j, i, f"{value:.0%}", ha="center", va="center", fontsize=7)
ax.set_xlabel(f"segment at {D2}")
ax.set_ylabel(f"segment at {D1}")
ax.set_title("where each segment's customers went (share of the row)", fontsize=10)
fig.colorbar(image, ax=ax)
fig.tight_layout()
show_figure(fig)

# %% [markdown]
# Drift between the two snapshots: the population stability index of segment shares and of each
# clustered feature. Above `snapshots.psi_retrain` a retraining is recommended
# (`segspark run --retrain`).

# %% tags=["drift"]
for name, psi in sorted(moved.drift.items(), key=lambda item: -item[1])[:5]:
    print(f"PSI {name}: {psi:.3f}")
print("retraining recommended" if moved.retrain_recommended else "no retraining needed")
