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


def test_anatomy_budget_interpolates_costs_over_k_and_weighs_them_by_iterations() -> None:
    from bench.w2_ksweep import anatomy_budget

    anatomy = {
        "2": {
            "fixed_s": 2.0,
            "per_iteration_s": 0.1,
            "fixed_cpu_s": 4.0,
            "per_iteration_cpu_s": 0.2,
        },
        "10": {
            "fixed_s": 3.0,
            "per_iteration_s": 0.2,
            "fixed_cpu_s": 6.0,
            "per_iteration_cpu_s": 0.4,
        },
    }
    # k = 6 sits halfway: fixed 2.5 s, 0.15 s per iteration (0.3 CPU s).
    budget = anatomy_budget(anatomy, {2: 5, 6: 10, 10: 50}, 9.88)
    assert budget == {
        "iterations": 65,
        "fixed_s": 7.5,
        "iterations_s": 12.0,  # 5 × 0.1 + 10 × 0.15 + 50 × 0.2
        "fixed_cpu_s": 15.0,
        "iterations_cpu_s": 24.0,
        "budget_s": 29.64,
    }
    assert "budget_s" not in anatomy_budget(anatomy, {2: 5}, None)
