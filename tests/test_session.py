"""The session factory: local defaults, respect for what spark-submit gave."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from pyspark.sql import SparkSession

from segspark.config import load_settings
from segspark.session import (
    PYTHON_DAEMON,
    build_session,
    delta_extension_active,
    session_defaults,
)


def test_fixture_session_has_the_local_defaults(spark: SparkSession) -> None:
    conf = spark.conf
    assert conf.get("spark.sql.session.timeZone") == "UTC"
    assert conf.get("spark.sql.shuffle.partitions") == "2"
    assert conf.get("spark.sql.adaptive.enabled") == "true"
    assert conf.get("spark.sql.parquet.outputTimestampType") == "TIMESTAMP_MICROS"
    assert conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    assert spark.sparkContext.master == "local[2]"


def test_local_sessions_run_the_parallel_garbage_collector(spark: SparkSession) -> None:
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    beans = jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()
    assert sorted(bean.getName() for bean in beans) == ["PS MarkSweep", "PS Scavenge"]
    remote = load_settings(env="local", overrides=["spark.master=spark://host:7077"]).spark
    assert "spark.driver.extraJavaOptions" not in session_defaults(remote, local=False)


def test_an_active_session_is_returned_untouched(spark: SparkSession) -> None:
    other = load_settings(env="local", overrides=["spark.shuffle_partitions=64"])
    assert build_session(other.spark) is spark
    assert spark.conf.get("spark.sql.shuffle.partitions") == "2"


def test_shuffle_partitions_default_to_twice_the_cores() -> None:
    s = load_settings(env="local", overrides=["spark.master=local[3]"]).spark
    assert session_defaults(s, local=True)["spark.sql.shuffle.partitions"] == "6"
    assert session_defaults(s, local=False).get("spark.master") is None


def test_coalescible_shuffles_are_sized_by_bytes_unless_partitions_are_set() -> None:
    unset = session_defaults(
        load_settings(env="local", overrides=["spark.master=local[4]"]).spark, local=True
    )
    assert unset["spark.sql.adaptive.coalescePartitions.initialPartitionNum"] == "64"
    fixed = session_defaults(
        load_settings(env="local", overrides=["spark.shuffle_partitions=64"]).spark, local=True
    )
    assert fixed["spark.sql.shuffle.partitions"] == "64"
    assert "spark.sql.adaptive.coalescePartitions.initialPartitionNum" not in fixed


def test_user_conf_is_applied() -> None:
    s = load_settings(env="test", overrides=["spark.conf={spark.sql.ansi.enabled: 'false'}"]).spark
    assert session_defaults(s, local=True)["spark.sql.ansi.enabled"] == "false"


def test_delta_extension_is_reported_absent_without_jars(spark: SparkSession) -> None:
    # Maven Central is unreachable here, so the jars are absent and delta-rs is the backend.
    assert delta_extension_active(spark) is False


def test_spark_submit_settings_win_over_segspark_defaults(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pyspark

    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            from segspark.config import load_settings
            from segspark.session import build_session
            spark = build_session(load_settings(env="local").spark)
            print("RESULT", spark.sparkContext.master,
                  spark.conf.get("spark.sql.shuffle.partitions"),
                  spark.conf.get("spark.sql.session.timeZone"))
            spark.stop()
            """
        )
    )
    submit = f"{pyspark.__path__[0]}/bin/spark-submit"
    out = subprocess.run(
        [submit, "--master", "local[1]", "--conf", "spark.sql.shuffle.partitions=7", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **__import__("os").environ,
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
        },
    )
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")]
    assert line == ["RESULT local[1] 7 UTC"], out.stderr[-2000:]


def test_python_workers_run_the_driver_interpreter(spark: SparkSession) -> None:
    # not whichever python3 is first on PATH (it may lack segspark and its dependencies)
    ran = spark.sparkContext.parallelize([0], 1).map(lambda _: __import__("sys").executable)
    assert ran.collect() == [sys.executable]


def test_local_python_workers_run_segspark_daemon_on_python_311(
    spark: SparkSession, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    s = load_settings(env="test").spark
    expected = PYTHON_DAEMON if sys.version_info < (3, 12) else None
    assert session_defaults(s, local=True).get("spark.python.daemon.module") == expected
    assert session_defaults(s, local=False).get("spark.python.daemon.module") is None
    # another interpreter for the workers may not have segspark: pyspark's own daemon then
    monkeypatch.setenv("PYSPARK_PYTHON", "/usr/bin/python3-elsewhere")
    assert session_defaults(s, local=True).get("spark.python.daemon.module") is None

    def probe(_: int) -> bool:
        import zipimport

        return bool(getattr(zipimport.zipimporter.invalidate_caches, "_segspark", False))

    # the fixture session's workers were forked by segspark's daemon, patch applied
    ran = spark.sparkContext.parallelize([0, 1], 2).map(probe).collect()
    assert ran == [expected is not None] * 2


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="Python 3.12 invalidates zips lazily")
def test_zip_directories_are_reread_only_when_the_archive_changed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import zipfile

    archive = tmp_path / "lib.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("one.py", "X = 1\n")
    script = textwrap.dedent(
        f"""
        import zipfile, zipimport
        from segspark._pydaemon import patch_zipimport
        assert patch_zipimport() and patch_zipimport()  # applying twice changes nothing
        reads = []
        original = zipimport._read_directory
        zipimport._read_directory = lambda path: reads.append(path) or original(path)
        importer = zipimport.zipimporter({str(archive)!r})
        importer.invalidate_caches()  # first sight: read
        importer.invalidate_caches()  # unchanged: kept
        importer.invalidate_caches()
        with zipfile.ZipFile({str(archive)!r}, "a") as z:
            z.writestr("two.py", "Y = 2\\n")
        importer.invalidate_caches()  # changed: read again, the new module is found
        print(len(reads), importer.find_spec("two") is not None)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    # the constructor reads once, then the first invalidation and the one after the change
    assert out == ["3", "True"]  # unpatched: 5, one per invalidation
