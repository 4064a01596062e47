"""A real Spark standalone cluster on 127.0.0.1: the same ``run`` gives the same snapshot.

The test starts a master and two one-core workers from the installed pyspark
(``spark-class ...Master`` / ``...Worker``), submits ``jobs/run.py`` to it with the zip built by
``scripts/build-cluster.sh``, submits the same step with ``--master local[2]`` into a second lake
holding the same generated input, and compares the two snapshots row for row: fitting is
deterministic (``model.partitions`` fixes the partitioning every fit sees, every seed derives
from ``model.seed``), so the master must not matter. The lake root is a local path that both
workers see, which is what the delta-rs backend serves. Every process the test starts is
stopped by the fixture's finalizer, whatever the outcome.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyspark
import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SPARK_HOME = Path(pyspark.__file__).resolve().parent
DOMAIN = "telecom"
AS_OF = "2024-03-31"
APP_NAME = "segspark-cluster-test"
# a k sweep with one bootstrap pair keeps the selection (and its seeds) in the comparison at the
# least cost on two shared cores
STEP_OPTIONS = (
    "--env", "test", "--set", "lake.backend=delta-rs",
    "--set", "model.k_max=4", "--set", "model.bootstrap_resamples=1",
)  # fmt: skip
STARTUP_S = 240
SUBMIT_S = 1500


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    """The test's environment without segspark/PySpark overrides, with Spark on loopback."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"SEGSPARK_CONF_DIR", "SEGSPARK_ENV", "SEGSPARK_LAKE", "PYTHONPATH"}
        and not k.startswith(("PYSPARK_", "SPARK_"))
        and k != "MLFLOW_TRACKING_URI"
    }
    env.update(
        SPARK_HOME=str(SPARK_HOME),
        SPARK_LOCAL_IP="127.0.0.1",
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
    )
    env.update(extra)
    return env


def _stop(proc: subprocess.Popen[Any]) -> None:
    """Stop a process started in its own session, and everything in its process group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
    # children (a worker's executors, spark-submit's Python driver) may outlive the leader
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Standalone:
    """A master and two workers on 127.0.0.1, each a process group of its own."""

    base: Path
    port: int = field(default_factory=_free_port)
    webui: int = field(default_factory=_free_port)
    procs: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def log(self, name: str) -> Path:
        return self.base / f"{name}.log"

    def work_dir(self, worker: str) -> Path:
        return self.base / worker / "work"

    def _spawn(self, name: str, cls: str, *args: str, **env: str) -> None:
        logs = self.base / name / "logs"
        logs.mkdir(parents=True)
        with self.log(name).open("wb") as out:
            self.procs[name] = subprocess.Popen(
                [str(SPARK_HOME / "bin" / "spark-class"), cls, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.base,
                env=_env(SPARK_LOG_DIR=str(logs), **env),
                start_new_session=True,
            )

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.webui}/json/", timeout=5) as r:
            data: dict[str, Any] = json.load(r)
            return data

    def _wait(self, what: str, ready: Any) -> dict[str, Any]:
        deadline = time.monotonic() + STARTUP_S
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    pytest.fail(f"{name} exited with {proc.returncode}:\n{_tail(self.log(name))}")
            with contextlib.suppress(OSError, ValueError):
                state = self.state()
                if ready(state):
                    return state
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}\n{_tail(self.log(n))}" for n in self.procs)
                pytest.fail(f"the standalone cluster was not {what} in {STARTUP_S}s:\n{logs}")
            time.sleep(1)

    def start_master(self) -> None:
        self._spawn(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(self.webui),
        )  # fmt: skip
        self._wait("up", lambda s: s.get("status") == "ALIVE")

    def start_workers(self) -> None:
        for name in ("worker1", "worker2"):
            self.work_dir(name).mkdir(parents=True)
            self._spawn(
                name,
                "org.apache.spark.deploy.worker.Worker",
                self.url,
                "--host", "127.0.0.1", "--cores", "1", "--memory", "1g",
                "--webui-port", str(_free_port()),
                SPARK_WORKER_DIR=str(self.work_dir(name)),
            )  # fmt: skip

    def wait_for_workers(self) -> list[dict[str, Any]]:
        state = self._wait(
            "ready with two workers",
            lambda s: sum(w.get("state") == "ALIVE" for w in s.get("workers", [])) == 2,
        )
        return [w for w in state["workers"] if w["state"] == "ALIVE"]

    def stop(self) -> None:
        # workers first: their executors belong to their process groups
        for name in sorted(self.procs, reverse=True):
            _stop(self.procs[name])


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Standalone]:
    cluster = Standalone(tmp_path / "cluster")
    cluster.base.mkdir()
    try:
        cluster.start_master()
        cluster.start_workers()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What scripts/build-cluster.sh builds: the zip for --py-files and the jobs."""
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-cluster.sh"), str(out)],
        capture_output=True,
        text=True,
        env=_env(PYTHON=sys.executable),
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    return out


def _generate(lake: Path) -> None:
    from segspark.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["--lake", str(lake), "--env", "test", "generate", "--domain", DOMAIN,
                     "--customers", "150", "--end", AS_OF])  # fmt: skip
    assert code == 0, err.getvalue()


def _submit(dist: Path, master: str, lake: Path, log: Path) -> str:
    """spark-submit jobs/run.py; returns its stdout (the run's summary)."""
    command = [
        str(SPARK_HOME / "bin" / "spark-submit"),
        "--master", master,
        "--name", APP_NAME,
        "--conf", "spark.executor.memory=512m",
        "--conf", "spark.ui.enabled=false",
        "--py-files", str(dist / "segspark.zip"),
        str(dist / "jobs" / "run.py"),
        "--lake", str(lake), *STEP_OPTIONS,
        "--domain", DOMAIN, "--as-of", AS_OF,
    ]  # fmt: skip
    with log.open("wb") as err:
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=lake.parent,
            env=_env(),
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=SUBMIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"spark-submit --master {master} ran over {SUBMIT_S}s:\n{_tail(log)}")
        finally:
            _stop(proc)
    assert proc.returncode == 0, f"spark-submit --master {master}:\n{_tail(log)}"
    return out.decode()


def _snapshot(lake: Path) -> list[tuple[str, int, str]]:
    frame = DeltaTable(str(lake / "segment_snapshots")).to_pandas(
        columns=["customer_id", "segment_id", "segment_name"],
        partitions=[("domain", "=", DOMAIN), ("as_of", "=", AS_OF)],
    )
    return sorted((str(c), int(s), str(n)) for c, s, n in frame.itertuples(index=False))


@pytest.mark.timeout(3600)
def test_run_on_a_standalone_cluster_gives_the_snapshot_of_a_local_run(
    standalone: Standalone, dist: Path, spark: SparkSession, tmp_path: Path
) -> None:
    generated = tmp_path / "generated"
    _generate(generated)  # while the workers register
    workers = standalone.wait_for_workers()
    assert sorted((w["host"], w["cores"], w["memory"]) for w in workers) == [
        ("127.0.0.1", 1, 1024),
        ("127.0.0.1", 1, 1024),
    ]
    on_cluster, on_local = tmp_path / "cluster-lake", tmp_path / "local-lake"
    shutil.copytree(generated, on_cluster)
    shutil.copytree(generated, on_local)

    cluster_out = _submit(dist, standalone.url, on_cluster, tmp_path / "cluster-submit.log")
    local_out = _submit(dist, "local[2]", on_local, tmp_path / "local-submit.log")

    # the application ran on the standalone master, with an executor working on each worker
    (app,) = [a for a in standalone.state()["completedapps"] if a["name"] == APP_NAME]
    assert (app["state"], app["cores"]) == ("FINISHED", 2)
    master_log = standalone.log("master").read_text()
    assert f"Registered app {APP_NAME} with ID {app['id']}" in master_log
    for worker in ("worker1", "worker2"):
        executor_logs = list(standalone.work_dir(worker).glob(f"{app['id']}/*/stderr"))
        assert any("Finished task" in log.read_text() for log in executor_logs), worker

    # the same rows, whatever the master
    features = DeltaTable(str(on_local / f"{DOMAIN}_features")).to_pandas(
        columns=["customer_id"], partitions=[("as_of", "=", AS_OF)]
    )
    expected_customers = sorted(features["customer_id"])
    local_rows = _snapshot(on_local)
    cluster_rows = _snapshot(on_cluster)
    assert [c for c, _, _ in local_rows] == expected_customers
    assert len({s for _, s, _ in local_rows}) >= 2
    assert cluster_rows == local_rows
    # and the jobs say so: the same summary (customers, segment ids and names)
    summary = [line for line in local_out.splitlines() if line.startswith((DOMAIN, "  segment"))]
    assert summary[0] == (
        f"{DOMAIN} @ {AS_OF}: train with segspark-{DOMAIN} v1, {len(local_rows)} customers"
    )
    assert sorted(summary[1:]) == sorted({f"  segment {s}: {n}" for _, s, n in local_rows})
    assert [line for line in cluster_out.splitlines() if line in summary] == summary
