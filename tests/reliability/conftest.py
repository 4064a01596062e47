"""Fixtures of the reliability suite: generated telecom data and an uninterrupted baseline.

``template`` holds generated data only (no MLflow store, whose artifact paths are absolute), so
it can be copied to any path; every test that crashes or races runs on its own copy.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from ._support import CUSTOMERS, D1, D2, D3, DOMAIN, END, START, lake_rows, ok, segment_rows


@pytest.fixture(scope="session")
def template(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated telecom customers and call records, nothing computed yet."""
    root = tmp_path_factory.mktemp("template") / "lake"
    ok(root, "generate", "--domain", DOMAIN, "--customers", CUSTOMERS, "--start", START,
       "--end", END)  # fmt: skip
    return root


@dataclass(frozen=True)
class Baseline:
    """An uninterrupted lake: ``run`` at D1 (train), D2 and D3 (score), one after the other."""

    root: Path
    rows: dict[str, dict[Any, list[str]]]
    segments: dict[str, list[tuple[str, int, str]]]


@pytest.fixture(scope="session")
def baseline(
    spark: SparkSession, template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Baseline:
    root = tmp_path_factory.mktemp("baseline") / "lake"
    shutil.copytree(template, root)
    for as_of in (D1, D2, D3):
        ok(root, "run", "--domain", DOMAIN, "--as-of", as_of)
    segments = {d: segment_rows(root, d) for d in (D1, D2, D3)}
    assert all(segments.values())
    return Baseline(root, lake_rows(root), segments)


@pytest.fixture
def fresh(template: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of ``template`` of this test's own."""
    root = tmp_path / "lake"
    shutil.copytree(template, root)
    yield root
