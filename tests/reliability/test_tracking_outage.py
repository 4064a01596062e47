"""The MLflow tracking server down: a bounded, one-line failure before any write, or, with
``tracking.required: false``, a run recorded in the lake's fallback store.

That an exception inside a step's run marks the run FAILED is proven in
``tests/test_tracking.py::test_an_exception_inside_marks_the_run_failed_and_propagates`` and,
for a whole train step, in
``tests/test_segmentation.py::test_an_interrupted_train_rerun_gives_the_uninterrupted_rows``.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deltalake import DeltaTable
from mlflow import MlflowClient

from ._support import D1, DOMAIN, run_statuses, segment_rows, segspark, step_runs, tables
from .conftest import Baseline

TIMEOUT_S, RETRIES = 2, 1
# MLflow's urllib3 backoff before retry n is 2 * 2**(n-1) s plus up to 1 s of jitter
BACKOFF_S = sum(2 * 2 ** (n - 1) + 1 for n in range(1, RETRIES + 1))
# a guard against hanging, derived from the configuration, not a benchmark
BOUND_S = (RETRIES + 1) * TIMEOUT_S + BACKOFF_S + 30
BOUNDS = ("--set", f"tracking.timeout_s={TIMEOUT_S}", "--set", f"tracking.max_retries={RETRIES}")


@pytest.fixture(autouse=True)
def _http_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``configure`` exports MLflow's HTTP bounds; restore them after each test."""
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on (bound, then closed): connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port that accepts connections (the kernel completes them) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


@pytest.mark.parametrize(("server", "reason"), [("closed", "connection refused"),
                                                ("blackhole", "timed out")])  # fmt: skip
def test_an_unreachable_server_fails_the_run_in_bounded_time_before_any_write(
    fresh: Path, request: pytest.FixtureRequest, server: str, reason: str
) -> None:
    port = request.getfixturevalue("closed_port" if server == "closed" else "blackhole")
    before = {t: DeltaTable(str(fresh / t)).version() for t in tables(fresh)}
    uri = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    result = segspark(fresh, "--tracking-uri", uri, *BOUNDS, "run", "--domain", DOMAIN,
                      "--as-of", D1)  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.code == 1
    assert result.out == ""
    assert result.err.splitlines() == [
        f"segspark: error: cannot reach the MLflow tracking server at {uri} ({reason}); "
        "check --tracking-uri, MLFLOW_TRACKING_URI or tracking.uri"
    ]
    assert elapsed < BOUND_S
    # nothing written: the same tables at the same versions, no local store
    assert {t: DeltaTable(str(fresh / t)).version() for t in tables(fresh)} == before
    assert not (fresh / "_mlflow").exists()


@pytest.mark.slow
def test_with_tracking_not_required_the_run_records_to_the_fallback_store(
    fresh: Path, closed_port: int, baseline: Baseline
) -> None:
    uri = f"http://127.0.0.1:{closed_port}"
    result = segspark(fresh, "--tracking-uri", uri, *BOUNDS, "--set", "tracking.required=false",
                      "run", "--domain", DOMAIN, "--as-of", D1)  # fmt: skip
    assert result.code == 0, result.err
    fallback = fresh / "_mlflow" / "fallback" / "mlflow.db"
    # one warning line; MLflow's own "Successfully registered model" lines may follow
    (warning,) = [line for line in result.err.splitlines() if " WARNING " in line]
    assert "Traceback" not in result.err and " ERROR " not in result.err
    assert re.fullmatch(
        rf"\S+ WARNING segspark\.tracking: MLflow tracking store {re.escape(uri)} unavailable "
        r"\(connection refused\); tracking\.required is false, so this run records to the "
        rf"local fallback store sqlite:///{re.escape(str(fallback))}",
        warning,
    ), warning
    assert segment_rows(fresh, D1) == baseline.segments[D1]
    runs = step_runs(fallback)
    assert run_statuses(runs) == [("features", "FINISHED"), ("train", "FINISHED")]
    champion = MlflowClient(f"sqlite:///{fallback}").get_model_version_by_alias(
        f"segspark-{DOMAIN}", "champion"
    )
    train = next(r for r in runs if r.data.tags["step"] == "train")
    assert champion.run_id == train.info.run_id
    assert not (fresh / "_mlflow" / "mlflow.db").exists()
