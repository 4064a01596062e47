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
# # Query the segment tables
#
# The segment tables are plain Delta tables under the lake root (`SEGSPARK_LAKE`, default
# `./lakehouse`). This notebook reads them two ways: with `deltalake` and pandas (no Spark at
# all), and with Spark SQL through segspark's lake, which also gives time travel.
# Run `segspark demo` (or `./dev demo`) first to fill the lake.

# %%
import os
from pathlib import Path

from deltalake import DeltaTable

LAKE = Path(os.environ.get("SEGSPARK_LAKE", "lakehouse")).resolve()
print("lake:", LAKE)
print("tables:", sorted(p.name for p in LAKE.iterdir() if (p / "_delta_log").is_dir()))

# %% [markdown]
# ## Without Spark: `deltalake` + pandas
#
# The latest snapshot date of each domain, and its segment profiles.

# %%
profiles = DeltaTable(str(LAKE / "segment_profiles")).to_pandas()
latest = profiles.groupby("domain")["as_of"].max()
print(latest.to_string())
current = profiles.merge(latest.reset_index(), on=["domain", "as_of"])
columns = ["domain", "segment_id", "segment_name", "customers", "share", "withheld"]
print(current.sort_values(["domain", "segment_id"])[columns].to_string(index=False))

# %% [markdown]
# ## Spark SQL over the lake
#
# `Lake.read` resolves each table's current snapshot (or an older version) on whichever Delta
# backend the session has; temp views make the tables queryable by name.

# %%
from segspark.config import load_settings  # noqa: E402
from segspark.lake import Lake  # noqa: E402
from segspark.session import build_session  # noqa: E402

settings = load_settings()
spark = build_session(settings.spark)
lake = Lake.from_settings(spark, settings.lake, root=str(LAKE))
for table in lake.tables():
    lake.read(table).createOrReplaceTempView(table)

moves = spark.sql(
    """
    SELECT domain, from_as_of, to_as_of,
           sum(CASE WHEN from_segment_id IS NULL THEN customers END) AS new_customers,
           sum(CASE WHEN to_segment_id IS NULL THEN customers END) AS lapsed,
           sum(CASE WHEN from_segment_id <> to_segment_id THEN customers END) AS moved,
           sum(CASE WHEN from_segment_id = to_segment_id THEN customers END) AS stayed
    FROM segment_migration_matrix
    GROUP BY domain, from_as_of, to_as_of
    ORDER BY domain
    """
)
moves.show(truncate=False)

# %% [markdown]
# Time travel: the first version of the snapshot table, as it was after the first write.

# %%
first = lake.read("segment_snapshots", version=0)
first.groupBy("domain", "as_of").count().orderBy("domain", "as_of").show()
