"""The one place a SparkSession is built.

Locally (plain ``python`` or the ``segspark`` command) the session gets settings suited to one
machine: UTC, adaptive execution, shuffle partitions sized to the cores, Arrow, Parquet
timestamps as ``TIMESTAMP_MICROS`` (readable by every Delta reader) and quiet logs. Under
``spark-submit`` the master and every setting the user gave are kept; segspark only fills in
settings that were left unset.

Example:
    >>> from segspark.config import load_settings
    >>> spark = build_session(load_settings().spark)
    >>> spark.conf.get("spark.sql.session.timeZone")
    'UTC'
"""

from __future__ import annotations

import glob
import logging
import os
import re
import site
import sys
import tempfile
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.errors import AnalysisException
from pyspark.sql import SparkSession

from segspark.config import SparkSettings

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
_LOG4J = Path(__file__).resolve().parent / "log4j2.properties"


def under_spark_submit() -> bool:
    """True when this Python driver was started by ``spark-submit`` (the JVM came first)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _cores(master: str) -> int:
    match = re.fullmatch(r"local\[(\d+)(?:,\d+)?\]", master)
    if match:
        return int(match.group(1))
    return os.cpu_count() or 2


def delta_jars_present() -> bool:
    """Whether a delta-spark jar sits in Spark's own jars folder (e.g. the Docker image)."""
    import pyspark

    folders = [Path(pyspark.__file__).parent / "jars"]
    if os.environ.get("SPARK_HOME"):
        folders.append(Path(os.environ["SPARK_HOME"]) / "jars")
    return any(glob.glob(str(folder / "delta-spark_2.13-*.jar")) for folder in folders)


SORT_AGGREGATION = "spark.sql.execution.replaceHashWithSortAgg"
"""Spark setting under which an aggregation whose input is sorted by its keys streams through
the sorted rows (``SortAggregate``) instead of building a hash map; segspark's sessions set it."""


PYTHON_DAEMON = "segspark._pydaemon"
"""Python daemon of local sessions on Python < 3.12 (``spark.python.daemon.module``): pyspark's,
with workers that skip re-reading unchanged zip archives before every task (about 0.1 s a task;
:mod:`segspark._pydaemon`)."""


def _python_daemon() -> str | None:
    """:data:`PYTHON_DAEMON` when the workers run this interpreter and it needs the daemon, else
    None (pyspark's own: another ``PYSPARK_PYTHON`` may not have segspark)."""
    ours = os.environ.get("PYSPARK_PYTHON", sys.executable) == sys.executable
    return PYTHON_DAEMON if ours and sys.version_info < (3, 12) else None


def _share_segspark_with_workers() -> None:
    """Put a segspark imported from a source checkout on the Python workers' ``PYTHONPATH``.

    The workers run this interpreter (``PYSPARK_PYTHON``), so an installed segspark is theirs
    already; one imported from a checkout is found by the daemon module only through the path.
    """
    root = str(Path(__file__).resolve().parents[1])
    if root in site.getsitepackages():
        return
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])


COALESCE_FROM_PER_CORE = 16
"""Partitions per core a shuffle that AQE may coalesce starts from when
``spark.shuffle_partitions`` is unset. With 64 MiB partitions, 2 cores (32 partitions) keep
shuffles up to 2 GiB right-sized (10^8 events: 1.5 GiB). More costs time on small shuffles:
every map task writes a file per partition (Spark's bypass-merge writer, up to 200), and with
200 the RFM ranking of 900,000 customers from 23 partitions took 12 s instead of 5 s."""


LOCAL_GC = "-XX:+UseParallelGC"
"""The garbage collector of a local session's JVM, which is driver and executor in one.

The JVM's default on a server-class machine is G1, built for short pauses on large heaps; a
batch job on a 4 GiB heap wants throughput instead, which is what the parallel collector is for
(https://docs.oracle.com/en/java/javase/17/gctuning/available-collectors.html). On 2 cores the
retail features step at 10^8 events took 93.3, 97.0 and 82.1 s against 102.0, 105.4 and 93.3 s
with G1, run alternately. Cluster executors keep whatever the cluster's configuration says."""


def sort_aggregation(spark: SparkSession) -> bool:
    """Whether ``spark`` streams aggregations over key-sorted input (:data:`SORT_AGGREGATION`)."""
    return str(spark.conf.get(SORT_AGGREGATION, "false")).lower() == "true"


def session_defaults(settings: SparkSettings, *, local: bool) -> dict[str, str]:
    """The settings segspark applies where the user has not set them."""
    master = settings.master
    partitions = settings.shuffle_partitions or 2 * _cores(master)
    conf = {
        "spark.app.name": settings.app_name,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        # an aggregation over rows already sorted by its keys streams instead of hashing
        # (segspark.features.retail.customer_days sorts for it)
        SORT_AGGREGATION: "true",
        "spark.sql.shuffle.partitions": str(partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.parquet.datetimeRebaseModeInWrite": "CORRECTED",
        "spark.sql.parquet.int96RebaseModeInWrite": "CORRECTED",
        "spark.ui.enabled": str(settings.ui).lower(),
        "spark.ui.showConsoleProgress": "false",
    }
    if local:
        conf.update(
            {
                "spark.master": master,
                "spark.driver.memory": "4g",
                "spark.default.parallelism": str(partitions),
                "spark.driver.extraJavaOptions": (
                    f"{LOCAL_GC} -Dlog4j2.configurationFile=file:{_LOG4J}"
                ),
            }
        )
        daemon = _python_daemon()
        if daemon is not None:
            conf["spark.python.daemon.module"] = daemon
    if settings.shuffle_partitions is None:
        # Shuffles AQE may resize start from COALESCE_FROM_PER_CORE partitions a core and are
        # merged, neighbours together, up to min(64 MiB, shuffle size / default parallelism) (AQE's
        # parallelismFirst, on by default; at least 1 MiB): a task's share of a large shuffle
        # stays the same size whatever the input, and a medium one still spreads over every
        # core. At 10^8 events (1.5 GiB shuffled) the customer-days get 32 partitions instead
        # of 4, each sorted in memory instead of spilling: the aggregation took 37 s instead of
        # 46 s and the driver JVM's peak stayed 2.9 GiB instead of filling its 4 GiB heap
        # (bench/results/scale.md); at 10^7, 5 partitions of about 30 MiB.
        conf["spark.sql.adaptive.coalescePartitions.initialPartitionNum"] = str(
            max(COALESCE_FROM_PER_CORE * _cores(master), partitions)
        )
    if settings.delta_packages or delta_jars_present():
        conf["spark.sql.extensions"] = DELTA_EXTENSION
        conf["spark.sql.catalog.spark_catalog"] = DELTA_CATALOG
    conf.update(settings.conf)
    return conf


def build_session(settings: SparkSettings) -> SparkSession:
    """Return the process's SparkSession, building it on first use.

    An already active session (a test fixture, a notebook, a second step in one process) is
    returned as it is: segspark never reconfigures a session it did not build.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    submitted = under_spark_submit()
    if not submitted:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Python workers run this interpreter (its installed packages, segspark included), not
        # whichever python3 is first on PATH: `.venv/bin/segspark` works from any directory.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        if _python_daemon() is not None:  # only segspark's daemon needs segspark in the workers
            _share_segspark_with_workers()
    given = None
    if submitted:
        SparkContext._ensure_initialized()  # connect to spark-submit's JVM to see its settings
        given = SparkConf()
    builder = SparkSession.builder
    for key, value in session_defaults(settings, local=not submitted).items():
        if given is not None and given.contains(key):
            continue
        builder = builder.config(key, value)
    if settings.delta_packages and not submitted:
        from delta import configure_spark_with_delta_pip

        builder = configure_spark_with_delta_pip(builder)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.log_level)
    log.info(
        "spark session: master=%s, delta extension %s",
        spark.sparkContext.master,
        "loaded" if delta_extension_active(spark) else "absent",
    )
    return spark


def delta_extension_active(spark: SparkSession) -> bool:
    """Whether Spark's own Delta data source is usable in this session.

    The extension must be configured and the ``delta`` source must resolve (a configured
    extension whose jars are missing does not count).
    """
    if DELTA_EXTENSION not in (spark.conf.get("spark.sql.extensions", "") or ""):
        return False
    probe = os.path.join(tempfile.gettempdir(), "segspark-delta-probe-does-not-exist")
    try:
        spark.read.format("delta").load(probe)
    except AnalysisException as exc:
        condition = exc.getCondition() or ""
        return "DATA_SOURCE_NOT_FOUND" not in condition and "delta" in str(exc).lower()
    except Exception:
        return False
    return True
