"""The benchmark's own checks that do not need its peers (DuckDB, Polars, scikit-learn)."""

from __future__ import annotations

from pathlib import Path

from bench.common import RETAIL_END, Dataset, size_drift


def _lake(nominal: int, rows: int, customers: int) -> Dataset:
    return Dataset(Path("/data/retail-1e7"), nominal, rows, customers, RETAIL_END)


def test_size_drift_names_a_lake_sized_with_a_stale_rate() -> None:
    # The 2026-11-23 case: a "10^7" lake generated after the purchase rates rose.
    message = size_drift(_lake(10_000_000, 14_666_734, 90_253))
    assert message == (
        "retail-1e7 holds 14,666,734 transactions, 46.7% more than its nominal 10,000,000: "
        "162.5 per customer against ROWS_PER_CUSTOMER 162.5. "
        "Update the constant and delete the lake to regenerate it."
    )
    fewer = size_drift(_lake(10_000_000, 8_000_000, 61_538))
    assert fewer == (
        "retail-1e7 holds 8,000,000 transactions, 20.0% fewer than its nominal 10,000,000: "
        "130.0 per customer against ROWS_PER_CUSTOMER 162.5. "
        "Update the constant and delete the lake to regenerate it."
    )


def test_size_drift_accepts_a_lake_within_a_tenth_of_nominal() -> None:
    assert size_drift(_lake(10_000_000, 9_995_151, 61_538)) is None
    assert size_drift(_lake(10_000_000, 11_000_000, 61_538)) is None
    assert size_drift(_lake(10_000_000, 11_000_001, 61_538)) is not None
    assert size_drift(_lake(10_000_000, 0, 0)) is None
