"""MLflow tracking: URI precedence, step runs, concurrent store creation, bounded failures, UI."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from segspark import __version__
from segspark.config import Settings, load_settings
from segspark.errors import ConfigError, Terminated, TrackingError, UsageError
from segspark.tracking import (
    artifact_location,
    configure,
    ensure_experiment,
    experiment_name,
    redact,
    resolve_tracking_uri,
    step_run,
)


def _settings(*overrides: str) -> Settings:
    return load_settings(env="test", overrides=list(overrides))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout_s) as response:
        return int(response.status), response.read()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, str, Path]]:
    """One SQLite store for the module (creating one takes seconds): settings, URI, lake root."""
    root = tmp_path_factory.mktemp("tracking") / "lake"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        settings = _settings(f"lake.root={root}")
        uri = resolve_tracking_uri(None, settings)
        configure(settings, uri)
        yield settings, uri, root


# --- where runs go ---------------------------------------------------------------------------


def test_cli_uri_wins_over_env_and_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    settings = _settings("tracking.uri=http://from-config:5000")
    assert resolve_tracking_uri("http://from-cli:5000", settings) == "http://from-cli:5000"


def test_env_uri_wins_over_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    settings = _settings("tracking.uri=http://from-config:5000")
    assert resolve_tracking_uri(None, settings) == "http://from-env:5000"


def test_config_uri_wins_over_the_lake_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = _settings("tracking.uri=http://from-config:5000", "lake.root=/data/lake")
    assert resolve_tracking_uri(None, settings) == "http://from-config:5000"


def test_default_is_a_sqlite_store_inside_the_absolute_lake_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    settings = _settings("lake.root=rel/lake")
    assert (
        resolve_tracking_uri(None, settings) == f"sqlite:///{tmp_path}/rel/lake/_mlflow/mlflow.db"
    )
    assert resolve_tracking_uri("", settings) == f"sqlite:///{tmp_path}/rel/lake/_mlflow/mlflow.db"
    assert artifact_location(settings) == f"file://{tmp_path}/rel/lake/_mlflow/artifacts"


def test_artifact_location_is_left_to_a_remote_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = _settings("tracking.uri=https://mlflow.example.com", "lake.root=/data/lake")
    assert artifact_location(settings) is None
    assert artifact_location(settings, "http://mlflow:5000") is None
    assert artifact_location(settings, "sqlite:////srv/ml/mlflow.db") == "file:///srv/ml/artifacts"


def test_a_remote_lake_without_a_tracking_uri_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = _settings("lake.root=s3a://bucket/lake")
    with pytest.raises(ConfigError, match=r"lake root 's3a://bucket/lake' is not a local path"):
        resolve_tracking_uri(None, settings)


def test_configure_leaves_the_environment_uri_alone(
    store: tuple[Settings, str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, uri, _ = store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    configure(settings, uri)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert mlflow.get_tracking_uri() == uri


def test_redact_hides_passwords_only() -> None:
    assert redact("postgresql://ml:secret@db:5432/mlflow") == "postgresql://ml:***@db:5432/mlflow"
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_experiment_name_rejects_unknown_domains() -> None:
    assert experiment_name("telecom") == "segspark/telecom"
    with pytest.raises(UsageError, match=r"unknown domain 'banking'"):
        experiment_name("banking")


def test_ensure_experiment_is_idempotent_and_restores_a_deleted_one(
    store: tuple[Settings, str, Path],
) -> None:
    settings, uri, root = store
    client = MlflowClient(uri)
    first = ensure_experiment("telecom", settings, uri)
    assert ensure_experiment("telecom", settings, uri) == first
    client.delete_experiment(first)
    assert ensure_experiment("telecom", settings, uri) == first
    experiment = client.get_experiment(first)
    assert (experiment.name, experiment.lifecycle_stage) == ("segspark/telecom", "active")
    assert experiment.artifact_location == (root / "_mlflow" / "artifacts" / "telecom").as_uri()


# --- step runs -------------------------------------------------------------------------------


def test_step_run_records_tags_params_and_finishes(
    store: tuple[Settings, str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, uri, root = store
    monkeypatch.setenv("SEGSPARK_GIT_COMMIT", "0123abcd")
    with step_run(
        settings,
        uri,
        domain="retail",
        step="train",
        as_of="2024-06-30",
        params={"k": 5, "algorithm": "kmeans"},
        tags={"trigger": "test"},
    ) as run:
        assert mlflow.active_run() is not None
        assert mlflow.active_run().info.run_id == run.info.run_id  # type: ignore[union-attr]
        mlflow.log_metric("silhouette", 0.5)
        mlflow.log_text("hello", "note.txt")
    assert mlflow.active_run() is None

    stored = MlflowClient(uri).get_run(run.info.run_id)
    mine = {k: v for k, v in stored.data.tags.items() if not k.startswith("mlflow.")}
    assert mine == {
        "step": "train",
        "domain": "retail",
        "as_of": "2024-06-30",
        "config_hash": settings.config_hash(),
        "git_commit": "0123abcd",
        "segspark_version": __version__,
        "trigger": "test",
    }
    assert stored.data.params == {"k": "5", "algorithm": "kmeans"}
    assert stored.data.metrics == {"silhouette": 0.5}
    assert stored.info.status == "FINISHED"
    assert stored.info.run_name == "train retail 2024-06-30"
    experiment = MlflowClient(uri).get_experiment(stored.info.experiment_id)
    assert experiment.name == "segspark/retail"
    artifacts = root / "_mlflow" / "artifacts" / "retail" / run.info.run_id / "artifacts"
    assert stored.info.artifact_uri == artifacts.as_uri()
    assert (artifacts / "note.txt").read_text() == "hello"


def test_an_exception_inside_marks_the_run_failed_and_propagates(
    store: tuple[Settings, str, Path],
) -> None:
    settings, uri, _ = store
    run_ids: list[str] = []
    with (
        pytest.raises(RuntimeError, match=r"^boom$"),
        step_run(settings, uri, domain="energy", step="features") as run,
    ):
        run_ids.append(run.info.run_id)
        raise RuntimeError("boom")
    assert mlflow.active_run() is None
    stored = MlflowClient(uri).get_run(run_ids[0])
    assert stored.info.status == "FAILED"
    assert stored.info.run_name == "features energy"
    assert stored.data.tags["as_of"] == ""


@pytest.mark.parametrize("where", ["before the block", "inside the block"])
def test_an_interrupt_marks_the_run_killed_and_propagates(
    store: tuple[Settings, str, Path], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # Ctrl-C, or SIGTERM (the CLI raises Terminated, a KeyboardInterrupt): never left RUNNING,
    # and never FINISHED by MLflow's exit hook, even while the run's params are being logged.
    settings, uri, _ = store
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("segspark/telecom")
    before = (
        {r.info.run_id for r in client.search_runs([experiment.experiment_id])}
        if experiment
        else set()
    )
    if where == "before the block":

        def interrupted(params: object) -> None:
            raise Terminated("SIGTERM")

        monkeypatch.setattr(mlflow, "log_params", interrupted)
    with (
        pytest.raises(KeyboardInterrupt),
        step_run(settings, uri, domain="telecom", step="train", params={"k": 3}),
    ):
        raise Terminated("SIGTERM")
    assert mlflow.active_run() is None
    experiment = client.get_experiment_by_name("segspark/telecom")
    assert experiment is not None
    runs = [
        r for r in client.search_runs([experiment.experiment_id]) if r.info.run_id not in before
    ]
    assert [(r.info.run_name, r.info.status) for r in runs] == [("train telecom", "KILLED")]


def test_a_step_run_inside_another_is_nested(store: tuple[Settings, str, Path]) -> None:
    settings, uri, _ = store
    with (
        step_run(settings, uri, domain="telecom", step="run", as_of="2024-01-31") as outer,
        step_run(settings, uri, domain="telecom", step="score", as_of="2024-01-31") as inner,
    ):
        pass
    client = MlflowClient(uri)
    assert client.get_run(inner.info.run_id).data.tags["mlflow.parentRunId"] == outer.info.run_id
    assert client.get_run(inner.info.run_id).info.status == "FINISHED"
    assert client.get_run(outer.info.run_id).info.status == "FINISHED"


def test_bad_arguments_are_rejected_before_any_run(store: tuple[Settings, str, Path]) -> None:
    settings, uri, _ = store
    with (
        pytest.raises(UsageError, match=r"as_of must be an ISO date YYYY-MM-DD, got '30/06/2024'"),
        step_run(settings, uri, domain="retail", step="train", as_of="30/06/2024"),
    ):
        pytest.fail("the block must not run")
    with (
        pytest.raises(UsageError, match=r"tags step are set by segspark"),
        step_run(settings, uri, domain="retail", step="train", tags={"step": "x"}),
    ):
        pytest.fail("the block must not run")
    assert mlflow.active_run() is None


_CREATE_STORE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from segspark.config import load_settings
    from segspark.tracking import ensure_experiment, resolve_tracking_uri

    settings = load_settings(env="test", overrides=[f"lake.root={sys.argv[1]}"])
    uri = resolve_tracking_uri(None, settings)
    print("ready", flush=True)
    go = Path(sys.argv[2])
    deadline = time.monotonic() + 120
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    print(ensure_experiment("retail", settings, uri), flush=True)
    """
)


def test_two_processes_creating_the_same_fresh_store_both_succeed(tmp_path: Path) -> None:
    lake, go = tmp_path / "lake", tmp_path / "go"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["SEGSPARK_ENV"] = "test"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CREATE_STORE, str(lake), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:  # both have imported everything before either touches the store
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        go.touch()
        results = [proc.communicate(timeout=300) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (_out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
    ids = [out.strip() for out, _ in results]
    assert ids[0] == ids[1]

    uri = f"sqlite:///{lake}/_mlflow/mlflow.db"
    experiments = MlflowClient(uri).search_experiments()
    assert sorted((e.name, e.experiment_id) for e in experiments) == [
        ("Default", "0"),
        ("segspark/retail", ids[0]),
    ]


def test_an_unreachable_server_fails_quickly_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)  # restored after the test
    port = _free_port()  # bound, then closed: nothing listens there
    uri = f"http://127.0.0.1:{port}"
    settings = _settings("tracking.timeout_s=2", "tracking.max_retries=1")
    started = time.monotonic()
    with (
        pytest.raises(
            TrackingError,
            match=rf"^cannot reach the MLflow tracking server at http://127\.0\.0\.1:{port} "
            r"\(connection refused\); check --tracking-uri",
        ) as caught,
        step_run(settings, uri, domain="retail", step="train", as_of="2024-06-30"),
    ):
        pytest.fail("the block must not run")
    assert time.monotonic() - started < 30  # a guard against hanging, not a benchmark
    assert "\n" not in str(caught.value)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
    assert mlflow.active_run() is None


# --- segspark ui -----------------------------------------------------------------------------


def test_ui_serves_the_lake_store_until_stopped(
    store: tuple[Settings, str, Path], tmp_path: Path
) -> None:
    settings, uri, root = store
    with step_run(settings, uri, domain="retail", step="score", as_of="2024-07-31") as run:
        mlflow.log_text("served", "ui.txt")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # Files, not pipes: the server's logs can never fill a pipe and block it.
    output, errors = (tmp_path / "ui.out").open("wb"), (tmp_path / "ui.err").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "segspark.cli",
            "--lake",
            str(root),
            "--env",
            "test",
            "ui",
            "--port",
            str(port),
        ],
        stdout=output,
        stderr=errors,
        env=env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        status, deadline = 0, time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, _ = _http_get(f"{base}/")
                break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "ui.err").read_text()[-2000:]
        assert status == 200

        _, body = _http_get(
            f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=segspark/retail"
        )
        assert json.loads(body)["experiment"]["experiment_id"] == run.info.experiment_id
        status, body = _http_get(f"{base}/get-artifact?path=ui.txt&run_uuid={run.info.run_id}")
        assert (status, body) == (200, b"served")

        # A user presses Ctrl-C after the address is printed; the server may answer the test a
        # little before the command's own readiness poll sees it and prints.
        line = f"MLflow UI for {uri} at {base} (Ctrl-C to stop)"
        deadline = time.monotonic() + 60
        while line not in (tmp_path / "ui.out").read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        output.close()
        errors.close()
    assert proc.returncode == 0
    assert line in (tmp_path / "ui.out").read_text().splitlines()
    with pytest.raises(OSError):  # the server and its workers are gone with it
        _http_get(f"{base}/health", timeout_s=2)


def _cli(lake: Path, *args: str) -> tuple[int, str, str]:
    """Run ``segspark`` in-process; unlike the ``cli`` fixture, no SparkSession is started."""
    from segspark.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--lake", str(lake), "--env", "test", *args])
    return code, out.getvalue(), err.getvalue()


def test_ui_for_a_remote_server_prints_its_address(tmp_path: Path) -> None:
    code, out, err = _cli(tmp_path, "--tracking-uri", "https://ml:secret@mlflow.example.com", "ui")
    assert (code, out, err) == (
        0,
        "MLflow UI: https://ml:***@mlflow.example.com (served by the tracking server)\n",
        "",
    )


def test_ui_refuses_a_port_in_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = _cli(tmp_path / "lake", "ui", "--port", str(port))
    assert (code, out) == (2, "")
    assert err == (
        f"segspark: error: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "pick another --port\n"
    )
    assert not (tmp_path / "lake").exists()  # refused before creating any store
