"""W2 k-sweep: k-means for k = 2..10 on standardized customer features, MLlib against scikit-learn.

Data: ``rows`` customers with 8 numeric features drawn from a seeded mixture of 5 Gaussian blobs
(shares 30/25/20/15/10 %, anisotropic spreads, each feature on its own scale and offset), written
once as Parquet (250 000 rows per file) under ``$BENCH_DATA/w2-blobs-v1-<rows>`` and read by
every engine. Every contender times the whole sweep from the Parquet files: read, standardize
(mean 0, sample standard deviation 1, as Spark's ``StandardScaler``), then one fit per k.

Contenders:

* ``segspark sweep``: segspark's own path, :func:`segspark.model.pipeline.fit_vectors` (rows laid
  out by customer id into ``--partitions`` partitions, default the cores; assembler and scaler
  fitted once; the scaled vectors cached once for the whole sweep) then
  :func:`~segspark.model.pipeline.fit_clusterers` (MLlib ``KMeans``, k-means|| with
  ``initSteps=2``, the row solver, MLlib's own deserialized copy of the vectors per fit,
  ``--threads`` ks fitted at once from driver threads). WSSSE is ``summary.trainingCost`` (no
  extra pass).
* ``mllib naive``: ``VectorAssembler`` and a fitted ``StandardScaler`` on the Parquet frame, not
  cached, then ``KMeans(k=k).fit(frame)`` for each k with MLlib's defaults (``maxIter=20``,
  ``tol=1e-4``, solver ``auto``, its default seed); WSSSE is ``summary.trainingCost``.
* ``sklearn``: ``pyarrow`` -> numpy -> standardized -> ``KMeans(algorithm="lloyd", n_init=1,
  init="k-means++", max_iter, tol, random_state)``; WSSSE is ``inertia_``.

Each engine runs warm in its own process (``bench.common.Worker``); rounds alternate the
contenders and round ``r`` seeds segspark and scikit-learn with ``--seed + r``, so the WSSSE
medians compare initialisations, not one lucky seed. Wall and CPU seconds (the worker process
and its children: for Spark the driver's Python process and its JVM) are recorded per run.

Tolerance. scikit-learn stops when the sum over centres of their squared shifts is at most
``tol`` times the mean feature variance (1 here); MLlib stops when every centre moved at most
``tol`` (Euclidean, not squared). The same number is thus a much stricter test for MLlib.
``--mllib-tol strict`` (default) gives segspark ``sqrt(tol / k_max)``: every centre within that
distance implies scikit-learn's criterion, so MLlib never stops earlier than scikit-learn would;
``loose`` gives ``sqrt(tol)``, the converse (scikit-learn's criterion implies MLlib's, so MLlib
may stop earlier); ``same`` passes ``tol`` unchanged. ``max_iter`` is the same for both.

Anatomy (``--anatomy N``, on by default): after the rounds, fits of 1 and of 1 + N iterations
at the smallest and largest k split one segspark fit into a fixed cost and a cost per Lloyd
iteration; interpolated over k and weighted by the sweep's own iterations, they say how much of
the sweep is iterations, and so whether any saving outside MLlib's loop could reach a target.

Quality: k-means|| (MLlib) and greedy k-means++ (scikit-learn) are different initialisations and
a single start of either can land in a different local optimum, notably for k above the 5
planted blobs. Per k the median and best WSSSE over the rounds are reported for both engines.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Measurement, Worker

log = logging.getLogger("bench.w2")

WORKLOAD = "w2"
CONTENDERS = ("segspark sweep", "mllib naive", "sklearn")
FEATURES = tuple(f"f{i}" for i in range(8))
ROWS_PER_FILE = 250_000
DATA_VERSION = "v1"
#: Generator of the data: its own seed, never the sweep's.
DATA_SEED = 20240601
BLOB_SHARES = (0.30, 0.25, 0.20, 0.15, 0.10)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def ensure_blobs(rows: int, *, data_dir: Path = common.DATA) -> Path:
    """The Parquet folder of ``rows`` generated customers (generated once, then reused).

    The same ``rows`` always gives the same data: one seeded numpy stream, file by file.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = data_dir / f"w2-blobs-{DATA_VERSION}-{common.rows_label(rows)}"
    if (folder / "_SUCCESS").exists():
        return folder
    log.info("generating %s customers into %s", f"{rows:,}", folder)
    staging = folder.with_name(folder.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    rng = np.random.default_rng(DATA_SEED)
    dims, blobs = len(FEATURES), len(BLOB_SHARES)
    centres = rng.normal(0.0, 2.5, size=(blobs, dims))
    spreads = rng.uniform(0.6, 1.4, size=(blobs, dims))
    scale = 10 ** rng.uniform(-1.0, 3.0, size=dims)
    offset = rng.uniform(0.0, 100.0, size=dims)
    for part, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        size = min(ROWS_PER_FILE, rows - start)
        blob = rng.choice(blobs, size=size, p=np.array(BLOB_SHARES))
        x = (centres[blob] + rng.normal(size=(size, dims)) * spreads[blob]) * scale + offset
        columns: dict[str, Any] = {"customer_id": np.arange(start, start + size, dtype=np.int64)}
        columns.update({f: x[:, i] for i, f in enumerate(FEATURES)})
        pq.write_table(
            pa.table(columns), staging / f"part-{part:05d}.parquet", row_group_size=65_536
        )
    (staging / "_SUCCESS").touch()
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


# --------------------------------------------------------------------------------------------
# CPU time of a worker (its process and children: the driver's JVM for Spark)
# --------------------------------------------------------------------------------------------


def _cpu_seconds() -> float:
    import psutil

    me = psutil.Process()
    times = me.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in me.children(recursive=True):
        try:
            t = child.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return float(total)


def _measured(run: Callable[[], dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    cpu = _cpu_seconds()
    started = time.perf_counter()
    extra = run()
    seconds = time.perf_counter() - started
    extra["cpu_s"] = round(_cpu_seconds() - cpu, 3)
    extra["load_average_after"] = round(os.getloadavg()[0], 2)
    return seconds, extra


# --------------------------------------------------------------------------------------------
# Spark (runs in the Spark worker process)
# --------------------------------------------------------------------------------------------


class SparkState:
    def __init__(self, scheduler: str) -> None:
        from segspark.config import load_settings
        from segspark.session import build_session

        settings = load_settings()
        conf = dict(settings.spark.conf)
        if scheduler == "fair":
            conf["spark.scheduler.mode"] = "FAIR"
        self.settings = settings
        self.spark = build_session(settings.spark.model_copy(update={"conf": conf}))

    def close(self) -> None:
        self.spark.stop()


def spark_setup(scheduler: str = "fifo") -> SparkState:
    return SparkState(scheduler)


def spark_info(state: SparkState) -> dict[str, Any]:
    """Which BLAS MLlib gets, the master and the scheduler mode (for the results file).

    MLlib calls ``dev.ludovic.netlib``: native BLAS only if a system BLAS (OpenBLAS, MKL)
    loads, else the Java implementation (``VectorBLAS`` on the JDK Vector API when the
    ``jdk.incubator.vector`` module is present, else plain Java).
    """
    spark = state.spark
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    netlib = jvm.dev.ludovic.netlib.blas
    try:
        native = str(netlib.NativeBLAS.getInstance().getClass().getName())
    except Exception as exc:  # the JVM raises when no native library loads
        native = f"unavailable ({type(exc).__name__})"
    return {
        "master": spark.sparkContext.master,
        "default_parallelism": spark.sparkContext.defaultParallelism,
        "scheduler_mode": spark.conf.get("spark.scheduler.mode", "FIFO"),
        "blas": str(netlib.BLAS.getInstance().getClass().getName()),
        "java_blas": str(netlib.JavaBLAS.getInstance().getClass().getName()),
        "native_blas": native,
    }


def _sweep_settings(
    state: SparkState, *, partitions: int, max_iter: int, tol: float, seed: int
) -> Any:
    return state.settings.model.model_copy(
        update={
            "features": list(FEATURES),
            "algorithm": "kmeans",
            "impute": "none",
            "log1p": [],
            "pca_components": None,
            "partitions": partitions,
            "max_iter": max_iter,
            "tol": tol,
            "init_steps": 2,
            "restarts": 1,
            "seed": seed,
        }
    )


def spark_segspark(
    state: SparkState,
    *,
    path: str,
    ks: Sequence[int],
    partitions: int,
    max_iter: int,
    tol: float,
    seed: int,
    threads: int,
) -> tuple[float, dict[str, Any]]:
    from segspark.model.pipeline import fit_clusterers, fit_vectors

    settings = _sweep_settings(state, partitions=partitions, max_iter=max_iter, tol=tol, seed=seed)

    def run() -> dict[str, Any]:
        started = time.perf_counter()
        frame = state.spark.read.parquet(path)
        _, vectors = fit_vectors(frame, FEATURES, settings, id_col="customer_id")
        prepared = time.perf_counter() - started
        try:
            models = fit_clusterers(vectors, "kmeans", ks, settings, parallelism=threads)
        finally:
            vectors.unpersist()
        summaries = {k: m.summary for k, m in models.items()}
        return {
            "wssse": {k: float(s.trainingCost) for k, s in summaries.items()},  # type: ignore[union-attr]
            "iterations": {k: int(s.numIter) for k, s in summaries.items()},
            "mllib_tol": tol,
            "seed": seed,
            "prepare_s": round(prepared, 3),
        }

    return _measured(run)


def spark_naive(state: SparkState, *, path: str, ks: Sequence[int]) -> tuple[float, dict[str, Any]]:
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.feature import StandardScaler, VectorAssembler

    def run() -> dict[str, Any]:
        frame = state.spark.read.parquet(path)
        assembled = VectorAssembler(inputCols=list(FEATURES), outputCol="raw").transform(frame)
        scaler = StandardScaler(inputCol="raw", outputCol="features", withMean=True, withStd=True)
        scaled = scaler.fit(assembled).transform(assembled)
        wssse, iterations = {}, {}
        for k in ks:
            model = KMeans(k=k).fit(scaled)
            wssse[k] = float(model.summary.trainingCost)
            iterations[k] = int(model.summary.numIter)
        return {"wssse": wssse, "iterations": iterations}

    return _measured(run)


def spark_anatomy(
    state: SparkState,
    *,
    path: str,
    ks: Sequence[int],
    partitions: int,
    iterations: int,
    repeat: int,
    seed: int,
) -> dict[str, Any]:
    """What one of segspark's k-means fits costs: a fixed part and a part per Lloyd iteration.

    At the smallest and the largest k, fits of 1 and of ``1 + iterations`` iterations (tol 0,
    so only ``maxIter`` or an exact fixed point stops them) alternate ``repeat`` times on the
    sweep's own cached vectors. Per iteration: the difference of the medians over the
    difference of the iterations run; fixed: the 1-iteration fit less one iteration (the copy
    of the vectors, k-means||, the summary's pass). Wall and CPU seconds of the worker process
    and its JVM.
    """
    from segspark.model.pipeline import build_clusterer, fit_vectors, training_frame, vector_col

    settings = _sweep_settings(state, partitions=partitions, max_iter=1, tol=0.0, seed=seed)
    _, vectors = fit_vectors(
        state.spark.read.parquet(path), FEATURES, settings, id_col="customer_id"
    )
    frame = training_frame(vectors, vector_col(settings))
    out: dict[str, Any] = {}
    try:
        for k in sorted({min(ks), max(ks)}):
            runs: dict[int, list[tuple[float, float, int]]] = {1: [], 1 + iterations: []}
            for _ in range(repeat):
                for max_iter, bucket in runs.items():
                    fit = settings.model_copy(update={"max_iter": max_iter})
                    clusterer = build_clusterer("kmeans", k, fit)

                    def one_fit(c: Any = clusterer) -> dict[str, Any]:
                        return {"iterations": int(c.fit(frame).summary.numIter)}

                    seconds, extra = _measured(one_fit)
                    bucket.append((seconds, extra["cpu_s"], extra["iterations"]))
            short, long = runs[1], runs[1 + iterations]
            ran = common.median(r[2] for r in long) - 1
            if ran < 1:
                raise RuntimeError(f"k={k}: the long fits stopped after one iteration")
            row: dict[str, Any] = {"long_iterations": [r[2] for r in long]}
            for unit, i in (("s", 0), ("cpu_s", 1)):
                one = common.median(r[i] for r in short)
                per = (common.median(r[i] for r in long) - one) / ran
                row[f"per_iteration_{unit}"] = round(per, 4)
                row[f"fixed_{unit}"] = round(one - per, 3)
                row[f"runs_1_{unit}"] = [round(r[i], 3) for r in short]
                row[f"runs_long_{unit}"] = [round(r[i], 3) for r in long]
            out[str(k)] = row
    finally:
        vectors.unpersist()
    return out


def anatomy_budget(
    anatomy: dict[str, Any], iterations: dict[int, float], sklearn_s: float | None
) -> dict[str, Any]:
    """The sweep's seconds split into fixed and per-iteration parts, against 3 × scikit-learn.

    Each k's costs are interpolated linearly in k between the two measured ks (distances per
    point grow with k), and its iterations are the sweep's median over the rounds.
    """
    measured = sorted(int(k) for k in anatomy)
    lo, hi = measured[0], measured[-1]

    def cost(key: str, k: int) -> float:
        a, b = anatomy[str(lo)][key], anatomy[str(hi)][key]
        return float(a if hi == lo else a + (b - a) * (k - lo) / (hi - lo))

    out: dict[str, Any] = {"iterations": sum(iterations.values())}
    for unit in ("s", "cpu_s"):
        out[f"fixed_{unit}"] = round(sum(cost(f"fixed_{unit}", k) for k in iterations), 2)
        out[f"iterations_{unit}"] = round(
            sum(n * cost(f"per_iteration_{unit}", k) for k, n in iterations.items()), 2
        )
    if sklearn_s is not None:
        out["budget_s"] = round(3 * sklearn_s, 2)
    return out


# --------------------------------------------------------------------------------------------
# scikit-learn (its own worker process)
# --------------------------------------------------------------------------------------------


def sklearn_setup() -> None:
    import sklearn.cluster  # noqa: F401  (imported once, outside the timings)

    return None


def sklearn_info(_state: Any) -> dict[str, Any]:
    import numpy as np
    from threadpoolctl import threadpool_info

    pools = [
        {k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "version")}
        for p in threadpool_info()
    ]
    return {"numpy": np.__version__, "threadpools": pools}


def sklearn_sweep(
    _state: Any, *, path: str, ks: Sequence[int], max_iter: int, tol: float, seed: int
) -> tuple[float, dict[str, Any]]:
    import numpy as np
    import pyarrow.parquet as pq
    from sklearn.cluster import KMeans

    def run() -> dict[str, Any]:
        table = pq.read_table(path, columns=list(FEATURES))
        x = np.column_stack([table.column(f).to_numpy() for f in FEATURES])
        x = (x - x.mean(axis=0)) / x.std(axis=0, ddof=1)
        wssse, iterations = {}, {}
        for k in ks:
            model = KMeans(
                n_clusters=k,
                algorithm="lloyd",
                n_init=1,
                init="k-means++",
                max_iter=max_iter,
                tol=tol,
                random_state=seed,
            ).fit(x)
            wssse[k] = float(model.inertia_)
            iterations[k] = int(model.n_iter_)
        return {"wssse": wssse, "iterations": iterations, "seed": seed}

    return _measured(run)


# --------------------------------------------------------------------------------------------
# One dataset
# --------------------------------------------------------------------------------------------


class Engines:
    """The warm workers, started on demand and shared across datasets."""

    def __init__(self, scheduler: str) -> None:
        self.scheduler = scheduler
        self._workers: dict[str, Worker] = {}

    def get(self, name: str) -> Worker:
        if name not in self._workers:
            setups: dict[str, Callable[[], Any]] = {
                "spark": functools.partial(spark_setup, self.scheduler),
                "sklearn": sklearn_setup,
            }
            setup = setups[name]
            self._workers[name] = Worker(name, setup)
            log.info("%s worker up in %.1f s", name, self._workers[name].startup_s)
        return self._workers[name]

    def close(self) -> None:
        for worker in self._workers.values():
            worker.close()


def mllib_tol(tol: float, ks: Sequence[int], mode: str) -> float:
    """MLlib's tolerance for scikit-learn's ``tol`` (module docstring): strict, loose or same."""
    if mode == "same":
        return tol
    if mode == "loose":
        return math.sqrt(tol)
    return math.sqrt(tol / max(ks))


def measure_dataset(
    path: Path, rows: int, contenders: Sequence[str], args: argparse.Namespace, engines: Engines
) -> dict[str, Any]:
    ks = list(range(args.k_min, args.k_max + 1))
    tol_mllib = mllib_tol(args.tol, ks, args.mllib_tol)
    engine_of = {"segspark sweep": "spark", "mllib naive": "spark", "sklearn": "sklearn"}
    rounds = {name: 0 for name in contenders}

    def call(name: str, data: str, seed: int) -> Measurement:
        worker = engines.get(engine_of[name])
        if name == "segspark sweep":
            return common.timed_call(
                worker,
                spark_segspark,
                path=data,
                ks=ks,
                partitions=args.partitions,
                max_iter=args.max_iter,
                tol=tol_mllib,
                seed=seed,
                threads=args.threads,
            )
        if name == "mllib naive":
            return common.timed_call(worker, spark_naive, path=data, ks=ks)
        return common.timed_call(
            worker, sklearn_sweep, path=data, ks=ks, max_iter=args.max_iter, tol=args.tol, seed=seed
        )

    def run(name: str) -> Measurement:
        seed = args.seed + rounds[name]
        rounds[name] += 1
        return call(name, str(path), seed)

    for name in contenders:  # start the workers (and warm them up) before the timed rounds
        engines.get(engine_of[name])
    if args.warmup:
        small = ensure_blobs(args.warmup, data_dir=args.data_dir)
        for name in contenders:
            m = call(name, str(small), args.seed)
            log.info("warm-up %-16s %.1f s on %s rows", name, m.seconds, f"{args.warmup:,}")
    runs = common.alternate([(n, functools.partial(run, n)) for n in contenders], args.repeat)
    results = common.summarize(runs)
    for name, ms in runs.items():
        results[name]["median_cpu_s"] = round(common.median(m.extra["cpu_s"] for m in ms), 3)
        results[name]["runs_cpu_s"] = [m.extra["cpu_s"] for m in ms]
        results[name]["load_average_after"] = [m.extra["load_average_after"] for m in ms]
        if name == "segspark sweep":
            results[name]["median_prepare_s"] = round(
                common.median(m.extra["prepare_s"] for m in ms), 3
            )
    ratios: dict[str, float] = {}

    def ratio(a: str, b: str, key: str = "median_s") -> None:
        if a in results and b in results:
            ratios[f"{a} / {b}" + (" (cpu)" if key != "median_s" else "")] = round(
                results[a][key] / results[b][key], 2
            )

    anatomy: dict[str, Any] | None = None
    if args.anatomy and "segspark sweep" in runs:
        anatomy = engines.get("spark").call(
            spark_anatomy,
            path=str(path),
            ks=ks,
            partitions=args.partitions,
            iterations=args.anatomy,
            repeat=args.repeat,
            seed=args.seed,
        )
        sweep_iterations = {
            k: common.median(m.extra["iterations"][k] for m in runs["segspark sweep"]) for k in ks
        }
        sklearn = results.get("sklearn")
        anatomy["budget"] = anatomy_budget(
            anatomy, sweep_iterations, sklearn["median_s"] if sklearn else None
        )
    for key in ("median_s", "median_cpu_s"):
        ratio("segspark sweep", "sklearn", key)
        ratio("mllib naive", "segspark sweep", key)
        ratio("mllib naive", "sklearn", key)
    return {
        "dataset": path.name,
        "path": str(path),
        "rows": rows,
        "features": len(FEATURES),
        "ks": ks,
        "repeat": args.repeat,
        "max_iter": args.max_iter,
        "tol_sklearn": args.tol,
        "tol_mllib_segspark": tol_mllib,
        "results": results,
        "ratios": ratios,
        "quality": quality(runs, ks),
        "anatomy": anatomy,
        "per_round": {
            name: [
                {
                    "seconds": round(m.seconds, 3),
                    "cpu_s": m.extra["cpu_s"],
                    "seed": m.extra.get("seed"),
                    "prepare_s": m.extra.get("prepare_s"),
                    "wssse": m.extra["wssse"],
                    "iterations": m.extra["iterations"],
                }
                for m in ms
            ]
            for name, ms in runs.items()
        },
    }


def quality(runs: dict[str, list[Measurement]], ks: Sequence[int]) -> dict[str, Any]:
    """Per k: each engine's median and best WSSSE over the rounds, iterations, and the ratios."""
    per_k: dict[int, dict[str, Any]] = {}
    for k in ks:
        row: dict[str, Any] = {}
        for name, ms in runs.items():
            values = [m.extra["wssse"][k] for m in ms]
            row[name] = {
                "median_wssse": common.median(values),
                "best_wssse": min(values),
                "median_iterations": common.median(m.extra["iterations"][k] for m in ms),
            }
        if "segspark sweep" in row and "sklearn" in row:
            seg, sk = row["segspark sweep"], row["sklearn"]
            row["median_ratio"] = seg["median_wssse"] / sk["median_wssse"]
            row["best_ratio"] = seg["best_wssse"] / sk["best_wssse"]
        per_k[k] = row
    ratios = [r["median_ratio"] for r in per_k.values() if "median_ratio" in r]
    best = [r["best_ratio"] for r in per_k.values() if "best_ratio" in r]
    summary: dict[str, Any] = {}
    if ratios:
        summary = {
            "ks_median_within_1pct": sum(abs(r - 1) <= 0.01 for r in ratios),
            "ks_best_within_1pct": sum(abs(r - 1) <= 0.01 for r in best),
            "ks": len(ratios),
            "geomean_median_ratio": math.exp(sum(math.log(r) for r in ratios) / len(ratios)),
            "sum_wssse_ratio": sum(per_k[k]["segspark sweep"]["median_wssse"] for k in ks)
            / sum(per_k[k]["sklearn"]["median_wssse"] for k in ks),
        }
    return {"per_k": per_k, "summary": summary}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def render(payload: dict[str, Any]) -> str:
    parts = []
    info = payload.get("engines", {})
    if info:
        spark = info.get("spark", {})
        parts.append(
            f"Spark {spark.get('master')} (scheduler {spark.get('scheduler_mode')}), MLlib BLAS "
            f"`{spark.get('blas')}` (native: {spark.get('native_blas')}); scikit-learn "
            f"threadpools {info.get('sklearn', {}).get('threadpools')}.\n"
        )
    for entry in payload["datasets"]:
        results = entry["results"]
        base = results.get("sklearn")
        rows = []
        for name, r in results.items():
            rows.append(
                [
                    name,
                    r["median_s"],
                    r["median_cpu_s"],
                    f"{r['median_s'] / base['median_s']:.2f}×" if base else None,
                    round(r["peak_rss_mib"]["total"]),
                    common.tenths(r["runs_s"]),
                    common.tenths(r["load_average_after"]),
                ]
            )
        table = common.markdown_table(
            [
                "contender",
                "median s",
                "median CPU s",
                "vs sklearn",
                "peak RSS MiB",
                "runs (s)",
                "load avg after each run",
            ],
            rows,
        )
        names = [n for n in ("segspark sweep", "sklearn", "mllib naive") if n in results]
        q = entry["quality"]
        qrows = []
        for k, row in q["per_k"].items():
            line: list[Any] = [k]
            for n in names:
                line += [row[n]["median_wssse"], int(row[n]["median_iterations"])]
            if "median_ratio" in row:
                line += [f"{row['median_ratio']:.4f}", f"{row['best_ratio']:.4f}"]
            qrows.append(line)
        qheader: list[str] = ["k"]
        for n in names:
            qheader += [f"{n} WSSSE (median)", "iter"]
        if "segspark sweep" in names and "sklearn" in names:
            qheader += ["segspark / sklearn (median)", "(best)"]
        qtable = common.markdown_table(qheader, qrows)
        summary = q["summary"]
        verdict = (
            f"segspark WSSSE within 1% of scikit-learn's for {summary['ks_median_within_1pct']} "
            f"of {summary['ks']} k (medians over rounds), {summary['ks_best_within_1pct']} of "
            f"{summary['ks']} (best over rounds); summed over k the ratio is "
            f"{summary['sum_wssse_ratio']:.4f}, geometric mean of the per-k ratios "
            f"{summary['geomean_median_ratio']:.4f}."
            if summary
            else ""
        )
        ratio_text = ", ".join(f"{k} = {v:.2f}" for k, v in entry["ratios"].items())
        seg = results.get("segspark sweep")
        if seg:
            ratio_text += (
                f". Of segspark's time, {seg['median_prepare_s']:.1f} s (median) is "
                "`fit_vectors`: read, lay out by customer id, fit the scaler, cache the vectors"
            )
        anatomy_text = render_anatomy(entry["anatomy"]) if entry.get("anatomy") else ""
        parts.append(
            f"## {entry['rows']:,} customers × {entry['features']} features, "
            f"k = {entry['ks'][0]}..{entry['ks'][-1]}\n\n"
            f"max_iter {entry['max_iter']}; scikit-learn tol {entry['tol_sklearn']:g}, "
            f"segspark's MLlib tol {entry['tol_mllib_segspark']:.3g}; "
            f"{entry['repeat']} alternating rounds.\n\n"
            f"{table}\n\nRatios: {ratio_text}.\n\n{qtable}\n\n{verdict}\n{anatomy_text}"
        )
    return "\n".join(parts)


def render_anatomy(anatomy: dict[str, Any]) -> str:
    rows = [
        [
            k,
            row["fixed_s"],
            row["per_iteration_s"],
            row["fixed_cpu_s"],
            row["per_iteration_cpu_s"],
            common.tenths(row["runs_1_s"]),
            common.tenths(row["runs_long_s"]),
            "/".join(str(n) for n in row["long_iterations"]),
        ]
        for k, row in anatomy.items()
        if k != "budget"
    ]
    table = common.markdown_table(
        [
            "k",
            "fixed s",
            "s per iteration",
            "fixed CPU s",
            "CPU s per iteration",
            "1-iteration fits (s)",
            "long fits (s)",
            "long fits' iterations",
        ],
        rows,
    )
    b = anatomy["budget"]
    text = (
        f"\nAnatomy of one segspark fit (`--anatomy`: fits of 1 and 1 + N iterations, tol 0, "
        f"alone on both cores):\n\n{table}\n\nInterpolated over k with the sweep's median "
        f"iterations ({b['iterations']:g}), the sweep's fits are {b['fixed_s']:.1f} s of fixed "
        f"cost and {b['iterations_s']:.1f} s of Lloyd iterations "
        f"({b['fixed_cpu_s']:.1f} and {b['iterations_cpu_s']:.1f} CPU s)"
    )
    if "budget_s" in b:
        text += f"; 3 × scikit-learn's sweep is {b['budget_s']:.1f} s"
    return text + ".\n"


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench w2", description=__doc__.split("\n")[0])
    p.add_argument("--rows", default="1e6,2e6", help="customers per dataset (default 1e6,2e6)")
    p.add_argument("--k-min", type=int, default=2)
    p.add_argument("--k-max", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated subset of: {', '.join(CONTENDERS)}",
    )
    p.add_argument("--max-iter", type=int, default=50, help="both engines (default 50)")
    p.add_argument("--tol", type=float, default=1e-4, help="scikit-learn's tol (default 1e-4)")
    p.add_argument(
        "--mllib-tol",
        choices=("strict", "loose", "same"),
        default="strict",
        help="segspark's MLlib tol: sqrt(tol / k_max) (strict, default), sqrt(tol) or tol",
    )
    p.add_argument("--seed", type=int, default=42, help="seed of round 1 (round r: seed + r - 1)")
    p.add_argument(
        "--partitions",
        type=int,
        default=os.cpu_count() or 2,
        help="segspark's model.partitions (default: the cores)",
    )
    p.add_argument("--threads", type=int, default=2, help="ks segspark fits at once (default 2)")
    p.add_argument("--scheduler", choices=("fifo", "fair"), default="fifo")
    p.add_argument(
        "--warmup",
        type=int,
        default=100_000,
        help="rows of an untimed warm-up sweep per contender (0: none; default 1e5)",
    )
    p.add_argument(
        "--anatomy",
        type=int,
        default=30,
        metavar="N",
        help="after the rounds, split a segspark fit into fixed and per-iteration cost by "
        "fits of 1 and 1+N iterations at k-min and k-max (0: skip; default 30)",
    )
    p.add_argument("--name", default=WORKLOAD, help="results file name (default w2)")
    p.add_argument("--data-dir", type=Path, default=common.DATA, help="generated data cache")
    return p


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = sorted(set(contenders) - set(CONTENDERS))
    if unknown:
        raise SystemExit(f"unknown contender(s) {unknown}; pick from {list(CONTENDERS)}")
    if not 2 <= args.k_min <= args.k_max:
        raise SystemExit(f"bad k range {args.k_min}..{args.k_max}")
    sizes = [common.parse_rows(r) for r in args.rows.split(",")]
    payload = common.envelope(WORKLOAD, argv)
    payload["contenders"] = contenders
    payload["settings"] = {
        "partitions": args.partitions,
        "threads": args.threads,
        "scheduler": args.scheduler,
        "mllib_tol": args.mllib_tol,
        "warmup_rows": args.warmup,
        "anatomy_iterations": args.anatomy,
    }
    payload["datasets"] = []
    engines = Engines(args.scheduler)
    try:
        info: dict[str, Any] = {}
        if any(c != "sklearn" for c in contenders):
            info["spark"] = engines.get("spark").call(spark_info)
        if "sklearn" in contenders:
            info["sklearn"] = engines.get("sklearn").call(sklearn_info)
        payload["engines"] = info
        for rows in sizes:
            path = ensure_blobs(rows, data_dir=args.data_dir)
            log.info("%s: %s customers", path.name, f"{rows:,}")
            payload["datasets"].append(measure_dataset(path, rows, contenders, args, engines))
    finally:
        engines.close()
    payload["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return payload


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    payload = run(args, argv)
    common.write_json(args.name, payload)
    common.write_markdown(
        args.name, "W2 k-sweep: MLlib k-means against scikit-learn", payload, render(payload)
    )
    print(render(payload))
    return 0
