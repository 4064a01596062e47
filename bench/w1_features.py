"""W1 features: per-customer retail aggregates, segspark against DuckDB and Polars.

Every engine computes the same fixed list of per-customer aggregates over all transactions up
to ``as_of``, from the same Parquet files (the transactions table's current version as listed
by ``deltalake``)::

    customer_id, first_day, last_day, purchase_days, transactions, monetary_total,
    day_value_mean, day_value_std      (day value: a customer's amount on one purchase day)

Contenders (each timed to a sink that materialises every row and discards it):

* ``segspark agg``: the segspark way (``Lake.read`` and ``customer_days`` from
  :mod:`segspark.features.retail`, then one aggregation of the customer-days), warm session;
* ``pyspark naive``: a straightforward groupBy with an exact ``countDistinct`` of the days,
  joined to a second aggregation for the day-value statistics, Spark's default 200 shuffle
  partitions;
* ``segspark transform``: the whole ``retail_features`` transform (RFM scores included, no CLV);
* ``duckdb agg``, ``polars agg``: the peers, warm in their own processes;
* whole step, one process each, start-up included: ``segspark step`` (``segspark features
  --domain retail``, which also fits CLV, writes the Delta table and logs to MLflow),
  ``duckdb step`` and ``polars step`` (read the file list, aggregate, write Parquet).

Before the timed rounds each engine's result is written once and checked equal across engines
(dates and counts exactly, amounts within 1e-9 relative; ``--no-check`` skips it). Then each
in-process engine runs untimed until its time settles (:func:`warm_up`; the seconds are recorded
as ``warmup_s``). The whole-step contenders start a fresh process every run, so they are
always timed cold.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Dataset, Measurement, Worker

log = logging.getLogger("bench.w1")

WORKLOAD = "w1"
AGGREGATES = (
    "customer_id",
    "first_day",
    "last_day",
    "purchase_days",
    "transactions",
    "monetary_total",
    "day_value_mean",
    "day_value_std",
)
CONTENDERS = (
    "segspark agg",
    "pyspark naive",
    "segspark transform",
    "duckdb agg",
    "polars agg",
    "segspark step",
    "duckdb step",
    "polars step",
)
#: The peer each contender's ratio is taken against.
BASELINE = {"agg": "duckdb agg", "naive": "duckdb agg", "transform": "duckdb agg"}
BASELINE_STEP = "duckdb step"


def _end(as_of: dt.date) -> dt.datetime:
    return dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


# --------------------------------------------------------------------------------------------
# Spark (runs in the Spark worker process)
# --------------------------------------------------------------------------------------------


class SparkState:
    def __init__(self) -> None:
        from segspark.config import load_settings
        from segspark.session import build_session

        self.settings = load_settings(domain="retail")
        self.spark = build_session(self.settings.spark)

    def lake(self, root: str) -> Any:
        from segspark.lake import Lake

        return Lake.from_settings(self.spark, self.settings.lake, root=root)

    def close(self) -> None:
        self.spark.stop()


def spark_setup() -> SparkState:
    return SparkState()


def _sink(frame: Any, out: str | None) -> None:
    if out is None:
        frame.write.format("noop").mode("overwrite").save()
    else:
        frame.write.mode("overwrite").parquet(out)


def segspark_aggregates(events: Any, as_of: dt.date) -> Any:
    """The fixed aggregates, the segspark way: customer-days once, everything derived."""
    from pyspark.sql import functions as F

    from segspark.features.retail import customer_days

    days = customer_days(events, start=None, as_of=as_of)
    return days.groupBy("customer_id").agg(
        F.min("day").alias("first_day"),
        F.max("day").alias("last_day"),
        F.count(F.lit(1)).alias("purchase_days"),
        F.sum("transactions").alias("transactions"),
        F.sum("amount").alias("monetary_total"),
        F.avg("amount").alias("day_value_mean"),
        F.stddev_samp("amount").alias("day_value_std"),
    )


def spark_agg(
    state: SparkState, *, lake: str, as_of: dt.date, out: str | None = None
) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    frame = segspark_aggregates(state.lake(lake).read("transactions"), as_of)
    _sink(frame, out)
    return time.perf_counter() - started, {}


def spark_naive(
    state: SparkState, *, lake: str, as_of: dt.date, out: str | None = None
) -> tuple[float, dict[str, Any]]:
    from deltalake import DeltaTable
    from pyspark.sql import functions as F

    spark = state.spark
    previous = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "200")
    try:
        started = time.perf_counter()
        files = DeltaTable(f"{lake}/transactions").file_uris()
        events = (
            spark.read.parquet(*files)
            .where(F.col("event_time") < F.lit(_end(as_of)))
            .withColumn("day", F.to_date("event_time"))
        )
        main = events.groupBy("customer_id").agg(
            F.min("day").alias("first_day"),
            F.max("day").alias("last_day"),
            F.countDistinct("day").alias("purchase_days"),
            F.count(F.lit(1)).alias("transactions"),
            F.sum("amount").alias("monetary_total"),
        )
        daily = (
            events.groupBy("customer_id", "day")
            .agg(F.sum("amount").alias("value"))
            .groupBy("customer_id")
            .agg(
                F.avg("value").alias("day_value_mean"),
                F.stddev_samp("value").alias("day_value_std"),
            )
        )
        _sink(main.join(daily, "customer_id"), out)
        return time.perf_counter() - started, {}
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", previous)


def spark_transform(
    state: SparkState, *, lake: str, as_of: dt.date, out: str | None = None
) -> tuple[float, dict[str, Any]]:
    from segspark.features.retail import retail_features

    started = time.perf_counter()
    handle = state.lake(lake)
    customers = handle.read("customers") if handle.exists("customers") else None
    frame = retail_features(
        handle.read("transactions"),
        as_of=as_of,
        settings=state.settings.features,
        customers=customers,
    )
    _sink(frame, out)
    return time.perf_counter() - started, {}


def spark_explain(state: SparkState, *, lake: str, as_of: dt.date, what: str) -> str:
    """The formatted physical plan of ``what`` (``agg`` or ``transform``), for profiling."""
    import contextlib
    import io

    from segspark.features.retail import retail_features

    events = state.lake(lake).read("transactions")
    if what == "agg":
        frame = segspark_aggregates(events, as_of)
    else:
        frame = retail_features(events, as_of=as_of, settings=state.settings.features)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        frame.explain(mode="formatted")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Peers (in their own worker processes, or in a fresh process for the whole step)
# --------------------------------------------------------------------------------------------


def duckdb_setup() -> Any:
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    return con


def duckdb_query(files: Sequence[str], as_of: dt.date) -> str:
    listed = ", ".join(f"'{f}'" for f in files)
    end = _end(as_of).strftime("%Y-%m-%d %H:%M:%S+00")
    return f"""
        WITH days AS (
            SELECT customer_id, CAST(event_time AS DATE) AS day,
                   sum(amount) AS value, count(*) AS n
            FROM read_parquet([{listed}])
            WHERE event_time < TIMESTAMPTZ '{end}'
            GROUP BY ALL
        )
        SELECT customer_id, min(day) AS first_day, max(day) AS last_day,
               count(*) AS purchase_days, sum(n) AS transactions, sum(value) AS monetary_total,
               avg(value) AS day_value_mean, stddev_samp(value) AS day_value_std
        FROM days GROUP BY customer_id
    """


def duckdb_agg(
    con: Any, *, lake: str, as_of: dt.date, out: str | None = None
) -> tuple[float, dict[str, Any]]:
    from deltalake import DeltaTable

    started = time.perf_counter()
    files = [u.removeprefix("file://") for u in DeltaTable(f"{lake}/transactions").file_uris()]
    query = duckdb_query(files, as_of)
    if out is None:
        con.execute(f"CREATE OR REPLACE TEMP TABLE w1_result AS {query}")
        con.execute("DROP TABLE w1_result")
    else:
        con.execute(f"COPY ({query}) TO '{out}' (FORMAT parquet)")
    return time.perf_counter() - started, {}


def polars_setup() -> None:
    import polars  # noqa: F401  (imported once, outside the timings)

    return None


def polars_frame(files: Sequence[str], as_of: dt.date) -> Any:
    import polars as pl

    days = (
        pl.scan_parquet(list(files))
        .filter(pl.col("event_time") < _end(as_of))
        .group_by("customer_id", pl.col("event_time").dt.date().alias("day"))
        .agg(pl.col("amount").sum().alias("value"), pl.len().alias("n"))
    )
    return days.group_by("customer_id").agg(
        pl.col("day").min().alias("first_day"),
        pl.col("day").max().alias("last_day"),
        pl.len().alias("purchase_days"),
        pl.col("n").sum().alias("transactions"),
        pl.col("value").sum().alias("monetary_total"),
        pl.col("value").mean().alias("day_value_mean"),
        pl.col("value").std().alias("day_value_std"),
    )


def polars_agg(
    _state: Any, *, lake: str, as_of: dt.date, out: str | None = None
) -> tuple[float, dict[str, Any]]:
    from deltalake import DeltaTable

    started = time.perf_counter()
    files = [u.removeprefix("file://") for u in DeltaTable(f"{lake}/transactions").file_uris()]
    result = polars_frame(files, as_of).collect()
    if out is not None:
        result.write_parquet(out)
    return time.perf_counter() - started, {"rows": result.height}


def peer_step(engine: str, lake: str, as_of: str, out: str) -> None:
    """The peers' whole step, for a fresh process: list the files, aggregate, write Parquet."""
    day = dt.date.fromisoformat(as_of)
    if engine == "duckdb":
        duckdb_agg(duckdb_setup(), lake=lake, as_of=day, out=out)
    elif engine == "polars":
        polars_agg(None, lake=lake, as_of=day, out=out)
    else:
        raise ValueError(f"unknown peer {engine!r}")


# --------------------------------------------------------------------------------------------
# Equality of the engines' outputs
# --------------------------------------------------------------------------------------------


def compare(reference: str, other: str, *, columns: Sequence[str] = AGGREGATES) -> dict[str, Any]:
    """Rows of ``other`` that differ from ``reference`` (Parquet files or folders), by column.

    Dates and counts must be equal; doubles within 1e-9 relative (1e-6 absolute near zero);
    a null equals only a null.
    """
    import duckdb

    con = duckdb.connect()

    def source(path: str) -> str:
        return f"read_parquet('{path}/*.parquet')" if Path(path).is_dir() else f"'{path}'"

    def differs(c: str) -> str:
        exact = c in ("first_day", "last_day", "purchase_days", "transactions")
        a, b = f"a.{c}", f"b.{c}"
        if exact:
            return f"({a} IS DISTINCT FROM {b})"
        return (
            f"(({a} IS NULL) <> ({b} IS NULL) OR "
            f"abs({a} - {b}) > greatest(1e-6, 1e-9 * greatest(abs({a}), abs({b}))))"
        )

    keyed = [c for c in columns if c != "customer_id"]
    sums = ", ".join(f"count(*) FILTER (WHERE {differs(c)}) AS {c}" for c in keyed)
    row = con.execute(
        f"""SELECT count(*) FILTER (WHERE a.customer_id IS NULL OR b.customer_id IS NULL),
                   count(*), {sums}
            FROM {source(reference)} a FULL OUTER JOIN {source(other)} b USING (customer_id)"""
    ).fetchone()
    assert row is not None
    mismatched = {c: int(v) for c, v in zip(keyed, row[2:], strict=True) if v}
    return {"rows": int(row[1]), "unmatched_keys": int(row[0]), "mismatched": mismatched}


def check_features_step(lake: str, as_of: dt.date, reference: str) -> dict[str, Any]:
    """The stored ``retail_features`` at ``as_of`` against the reference aggregates."""
    import duckdb
    from deltalake import DeltaTable

    table = DeltaTable(f"{lake}/retail_features")
    files = [u.removeprefix("file://") for u in table.file_uris()]
    listed = ", ".join(f"'{f}'" for f in files)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        f"""CREATE TEMP VIEW features AS
            SELECT customer_id,
                   DATE '{as_of}' - CAST(tenure_days AS INTEGER) AS first_day,
                   DATE '{as_of}' - CAST(recency_days AS INTEGER) AS last_day,
                   frequency AS purchase_days, transaction_count AS transactions,
                   monetary_total, monetary_per_day AS day_value_mean
            FROM read_parquet([{listed}], hive_partitioning = true)
            WHERE as_of = DATE '{as_of}'"""
    )
    out = Path(tempfile.mkdtemp(prefix="w1-features-")) / "features.parquet"
    con.execute(f"COPY features TO '{out}' (FORMAT parquet)")
    try:
        return compare(reference, str(out), columns=AGGREGATES[:-1])
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# One dataset
# --------------------------------------------------------------------------------------------


def _python_peer(engine: str, data: Dataset, out: str) -> list[str]:
    code = (
        "import sys; from bench.w1_features import peer_step; "
        "peer_step(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])"
    )
    return [sys.executable, "-c", code, engine, str(data.lake), data.as_of.isoformat(), out]


def _segspark_step(data: Dataset) -> list[str]:
    return [
        *common.segspark_command(),
        "--lake",
        str(data.lake),
        "features",
        "--domain",
        "retail",
        "--as-of",
        data.as_of.isoformat(),
    ]


class Engines:
    """The warm workers, started on demand and shared across datasets."""

    def __init__(self) -> None:
        self._workers: dict[str, Worker] = {}

    def get(self, name: str) -> Worker:
        if name not in self._workers:
            setup = {"spark": spark_setup, "duckdb": duckdb_setup, "polars": polars_setup}[name]
            self._workers[name] = Worker(name, setup)
            log.info("%s worker up in %.1f s", name, self._workers[name].startup_s)
        return self._workers[name]

    def close(self) -> None:
        for worker in self._workers.values():
            worker.close()


WARMUP_SETTLED = 0.10
"""A warm-up run within this fraction of the run before it ends the warm-up."""
WARMUP_MOST = 5
"""Warm-up runs at most, settled or not."""


def warm_up(
    run: Callable[[], float], *, settled: float = WARMUP_SETTLED, most: int = WARMUP_MOST
) -> list[float]:
    """Call ``run`` (which returns seconds) until its time settles; the times, rounded.

    A fresh JVM compiles its hot code while it runs: at 10^7 transactions the aggregation took
    14.9, 6.2, 4.3 and 4.0 s in its first four runs, so one untimed run leaves the timed rounds
    still warming up (and a smaller dataset, which warms the JIT up less per run, looks slower
    per row). Warm-up stops at the first run within ``settled`` of the one before it, the
    steady state JMH-style harnesses wait for, and after ``most`` runs in any case.
    """
    times: list[float] = []
    while len(times) < most:
        times.append(round(run(), 3))
        if len(times) > 1 and abs(times[-1] - times[-2]) <= settled * times[-2]:
            break
    return times


def measure_dataset(
    data: Dataset,
    contenders: Sequence[str],
    *,
    repeat: int,
    check: bool,
    engines: Engines,
    scratch: Path,
) -> dict[str, Any]:
    """Check the outputs, then time ``contenders`` alternately on one dataset."""
    lake = str(data.lake)
    calls = {
        "segspark agg": ("spark", spark_agg),
        "pyspark naive": ("spark", spark_naive),
        "segspark transform": ("spark", spark_transform),
        "duckdb agg": ("duckdb", duckdb_agg),
        "polars agg": ("polars", polars_agg),
    }
    scratch.mkdir(parents=True, exist_ok=True)
    checks: dict[str, Any] = {}
    if check:
        reference = str(scratch / "duckdb.parquet")
        engines.get("duckdb").call(duckdb_agg, lake=lake, as_of=data.as_of, out=reference)
        for name in ("segspark agg", "pyspark naive", "polars agg"):
            if name not in contenders:
                continue
            engine, func = calls[name]
            out = str(scratch / name.replace(" ", "-"))
            suffix = ".parquet" if engine == "polars" else ""
            engines.get(engine).call(func, lake=lake, as_of=data.as_of, out=out + suffix)
            checks[name] = compare(reference, out + suffix)
        if "segspark transform" in contenders:
            engines.get("spark").call(spark_transform, lake=lake, as_of=data.as_of)
        if "segspark step" in contenders:
            common.timed_subprocess(_segspark_step(data))
            checks["segspark step"] = check_features_step(lake, data.as_of, reference)
        bad = {k: v for k, v in checks.items() if v["unmatched_keys"] or v["mismatched"]}
        if bad:
            raise RuntimeError(f"{data.lake.name}: outputs differ from DuckDB's: {bad}")
        log.info("%s: outputs equal across engines %s", data.lake.name, sorted(checks))

    def run_in(name: str) -> Measurement:
        engine, func = calls[name]
        return common.timed_call(engines.get(engine), func, lake=lake, as_of=data.as_of)

    # untimed runs until each in-process engine is steady, so no median holds a JVM whose
    # code is still being compiled and the time per row compares the engines, not warm-up
    warmup: dict[str, list[float]] = {}
    for name in contenders:
        if name in calls:
            warmup[name] = warm_up(lambda n=name: run_in(n).seconds)
            log.info("warm-up %-22s %s s (untimed)", name, warmup[name])

    def run_step(name: str) -> Measurement:
        if name == "segspark step":
            return common.timed_subprocess(_segspark_step(data))
        out = scratch / f"{name.replace(' ', '-')}.parquet"
        out.unlink(missing_ok=True)
        return common.timed_subprocess(_python_peer(name.split()[0], data, str(out)))

    runners: list[common.Contender] = []
    for name in contenders:
        if name in calls:
            engines.get(calls[name][0])  # start workers before the timed rounds
            runners.append((name, lambda n=name: run_in(n)))
        else:
            runners.append((name, lambda n=name: run_step(n)))
    runs = common.alternate(runners, repeat)
    results = common.summarize(runs)
    for entry in results.values():
        entry["ns_per_row"] = round(entry["median_s"] * 1e9 / data.rows, 1)
    ratios: dict[str, float] = {}
    for name, entry in results.items():
        base = BASELINE_STEP if name.endswith("step") else "duckdb agg"
        if base in results and name != base:
            ratios[f"{name} / {base}"] = round(entry["median_s"] / results[base]["median_s"], 2)
    return {
        "dataset": data.lake.name,
        "lake": str(data.lake),
        "rows": data.rows,
        "customers": data.customers,
        "as_of": data.as_of.isoformat(),
        "files": len(data.files()),
        "repeat": repeat,
        "results": results,
        "ratios": ratios,
        "checks": checks,
        "warmup_s": warmup,
    }


def render(payload: dict[str, Any]) -> str:
    parts = []
    for entry in payload["datasets"]:
        rows = []
        for name, r in entry["results"].items():
            base = BASELINE_STEP if name.endswith("step") else "duckdb agg"
            ratio = entry["ratios"].get(f"{name} / {base}")
            rows.append(
                [
                    name,
                    r["median_s"],
                    r["ns_per_row"],
                    f"{ratio:.2f}×" if ratio is not None else "1×" if name == base else None,
                    round(r["peak_rss_mib"]["total"]),
                    round(r["peak_rss_mib"]["jvm"]),
                    round(r["peak_rss_mib"]["python"]),
                    common.tenths(r["runs_s"]),
                ]
            )
        checked = ", ".join(
            f"{k}: {'equal' if not v['mismatched'] and not v['unmatched_keys'] else 'DIFFERENT'}"
            for k, v in entry["checks"].items()
        )
        parts.append(
            f"## {entry['dataset']}: {entry['rows']:,} transactions, "
            f"{entry['customers']:,} customers, {entry['files']} files\n\n"
            + common.markdown_table(
                [
                    "contender",
                    "median s",
                    "ns/row",
                    "vs DuckDB",
                    "peak RSS MiB",
                    "JVM",
                    "Python/other",
                    "runs (s)",
                ],
                rows,
            )
            + f"\n\nOutputs checked against DuckDB's: {checked or 'not checked'}."
            + _warmup_note(entry.get("warmup_s", {}))
            + "\n"
        )
    return "\n".join(parts)


def warmup_runs(value: float | list[float]) -> list[float]:
    """A ``warmup_s`` entry as a list (results before 2026-11-23 hold one run as a number)."""
    return [value] if isinstance(value, int | float) else list(value)


def _warmup_note(warmup: dict[str, float | list[float]]) -> str:
    if not warmup:
        return ""
    runs = "; ".join(f"{name} {common.tenths(warmup_runs(v))} s" for name, v in warmup.items())
    until = f"until one is within {WARMUP_SETTLED:.0%} of the last"
    return f" Untimed warm-up runs before the rounds ({until}): {runs}."


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench w1", description=__doc__.split("\n")[0])
    p.add_argument(
        "--rows",
        default="1e7,1e8",
        help="comma-separated transaction counts of the generated datasets (default 1e7,1e8)",
    )
    p.add_argument("--repeat", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated subset of: {', '.join(CONTENDERS)}",
    )
    p.add_argument("--no-check", action="store_true", help="skip the equality check")
    p.add_argument("--name", default=WORKLOAD, help="results file name (default w1)")
    p.add_argument("--data-dir", type=Path, default=common.DATA, help="generated data cache")
    p.add_argument(
        "--explain", action="store_true", help="print the Spark plans and exit (profiling)"
    )
    return p


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = sorted(set(contenders) - set(CONTENDERS))
    if unknown:
        raise SystemExit(f"unknown contender(s) {unknown}; pick from {list(CONTENDERS)}")
    sizes = [common.parse_rows(r) for r in args.rows.split(",")]
    payload = common.envelope(WORKLOAD, argv)
    payload["contenders"] = contenders
    payload["datasets"] = []
    args.data_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-w1-", dir=args.data_dir))
    try:
        for rows in sizes:
            data = common.ensure_retail_dataset(rows, data_dir=args.data_dir)
            # fresh engines per dataset: each size's peak memory is its own
            engines = Engines()
            if args.explain:
                for what in ("agg", "transform"):
                    plan = engines.get("spark").call(
                        spark_explain, lake=str(data.lake), as_of=data.as_of, what=what
                    )
                    print(f"== {what} @ {data.lake.name}\n{plan}")
                engines.close()
                continue
            log.info("%s: %s rows, %s customers", data.lake.name, f"{data.rows:,}", data.customers)
            try:
                payload["datasets"].append(
                    measure_dataset(
                        data,
                        contenders,
                        repeat=args.repeat,
                        check=not args.no_check,
                        engines=engines,
                        scratch=scratch / data.lake.name,
                    )
                )
            finally:
                engines.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return payload


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    payload = run(args, argv)
    if args.explain:
        return 0
    common.write_json(args.name, payload)
    common.write_markdown(
        args.name, "W1 features: per-customer retail aggregates", payload, render(payload)
    )
    print(render(payload))
    return 0
