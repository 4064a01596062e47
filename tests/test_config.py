"""Layered configuration: defaults in conf/, overlays, overrides, precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from segspark.config import deep_merge, load_settings, parse_override
from segspark.errors import ConfigError


def test_base_and_env_overlay_merge_key_by_key() -> None:
    local = load_settings(env="local")
    test = load_settings(env="test")
    assert local.spark.master == "local[*]"
    assert test.spark.master == "local[2]"
    assert test.spark.shuffle_partitions == 2
    # keys the overlay does not name keep the base value
    assert test.lake.backend == local.lake.backend == "auto"
    assert test.lake.vacuum_retention_hours == 168


def test_cluster_overlay_uses_the_spark_backend() -> None:
    assert load_settings(env="cluster").lake.backend == "spark"


def test_overrides_win_and_values_parse_as_yaml(tmp_path: Path) -> None:
    extra = tmp_path / "mine.yaml"
    extra.write_text("lake:\n  root: /data/lake\n  commit_retries: 3\n")
    s = load_settings(
        env="test", files=[extra], overrides=["lake.commit_retries=7", "spark.ui=true"]
    )
    assert s.lake.root == "/data/lake"
    assert s.lake.commit_retries == 7
    assert s.spark.ui is True


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lake.bogus=1", r"^config error: unknown key 'lake.bogus'$"),
        ("nosuch.key=1", r"^config error: unknown key 'nosuch'$"),
        ("lake.backend=duckdb", r"^config error: lake.backend: Input should be 'auto', 'spark'"),
        ("lake.commit_retries=many", r"^config error: lake.commit_retries: Input should be a"),
        ("lake.commit_retries=-1", r"^config error: lake.commit_retries: Input should be greater"),
    ],
)
def test_unknown_keys_and_wrong_types_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env="test", overrides=[override])


def test_bad_override_syntax_and_unknown_layers() -> None:
    with pytest.raises(ConfigError, match="--set expects key=value"):
        parse_override("lake.root")
    with pytest.raises(ConfigError, match="unknown environment 'prod'"):
        load_settings(env="prod")
    with pytest.raises(ConfigError, match="unknown domain 'banking'"):
        load_settings(domain="banking")
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(files=["/nonexistent/x.yaml"])


def test_parse_override_and_deep_merge() -> None:
    assert parse_override("a.b.c=3") == {"a": {"b": {"c": 3}}}
    assert parse_override("a=x=y") == {"a": "x=y"}
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 5}}) == {
        "a": {"b": 5, "c": 2},
        "d": 1,
    }


def test_config_hash_is_stable_and_sensitive() -> None:
    a = load_settings(env="test")
    b = load_settings(env="test")
    c = load_settings(env="test", overrides=["lake.commit_retries=2"])
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != c.config_hash()
    assert len(a.config_hash()) == 12


def test_cli_reports_config_errors_in_one_line_with_exit_2(cli) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("--set", "lake.backend=duckdb", "maintain")
    assert code == 2
    assert err.strip().count("\n") == 0
    assert err.startswith("segspark: error: config error: lake.backend:")
