"""Typed configuration: ``conf/base.yaml`` + a domain file + an environment overlay + overrides.

Layers merge in this order, later ones winning key by key:

1. ``conf/base.yaml`` (every default lives here, none in code),
2. ``conf/<domain>.yaml`` when a step works on one domain,
3. ``conf/<env>.yaml`` (``local``, ``cluster``, ``test``; ``SEGSPARK_ENV``, default ``local``),
4. each ``--conf FILE`` given by the user,
5. each ``--set key=value`` (the value is parsed as a YAML scalar).

Unknown keys and wrong types raise :class:`~segspark.errors.ConfigError` naming the key.

Example:
    >>> settings = load_settings(domain="retail", overrides=["lake.backend=delta-rs"])
    >>> settings.lake.backend
    'delta-rs'
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from segspark.errors import ConfigError

DOMAINS = ("retail", "telecom", "energy")
Domain = Literal["retail", "telecom", "energy"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LakeSettings(_Strict):
    root: str
    backend: Literal["auto", "spark", "delta-rs"]
    vacuum_retention_hours: int = Field(ge=0)
    safe_retention_hours: int = Field(ge=0)
    staging_max_age_hours: float = Field(ge=0)
    small_file_bytes: int = Field(gt=0)
    commit_retries: int = Field(ge=0)


class SparkSettings(_Strict):
    app_name: str
    master: str
    shuffle_partitions: int | None = Field(ge=1)
    ui: bool
    log_level: str
    delta_packages: bool
    conf: dict[str, str]


class TrackingSettings(_Strict):
    uri: str | None
    timeout_s: float = Field(gt=0)
    max_retries: int = Field(ge=0)
    required: bool


class QuerySettings(_Strict):
    max_rows: int = Field(ge=1)


class Settings(_Strict):
    lake: LakeSettings
    spark: SparkSettings
    tracking: TrackingSettings
    query: QuerySettings

    def config_hash(self) -> str:
        """A short, stable hash of the resolved settings (tagged on every MLflow run)."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def conf_dir() -> Path:
    """The folder holding ``base.yaml``: ``SEGSPARK_CONF_DIR`` or the project's ``conf/``."""
    env = os.environ.get("SEGSPARK_CONF_DIR")
    if env:
        return Path(env)
    packaged = Path(__file__).resolve().parent / "_conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "conf"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``over`` into ``base`` key by key; mappings merge, everything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``a.b.c=value`` into ``{"a": {"b": {"c": value}}}`` (value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects key=value with a dotted key, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node: dict[str, Any] = {}
    cursor = node
    parts = key.split(".")
    for part in parts[:-1]:
        cursor[part] = {}
        cursor = cursor[part]
    cursor[parts[-1]] = value
    return node


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"config error: unknown key {key!r}"
    if first["type"] == "missing":
        return f"config error: missing key {key!r}"
    return f"config error: {key}: {first['msg']} (got {first.get('input')!r})"


def load_raw(
    *,
    domain: str | None = None,
    env: str | None = None,
    files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    directory: Path | None = None,
) -> dict[str, Any]:
    """Merge the configuration layers into one plain mapping (not yet validated)."""
    folder = directory or conf_dir()
    data = _read_yaml(folder / "base.yaml")
    if domain is not None:
        if domain not in DOMAINS:
            raise ConfigError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
        data = deep_merge(data, _read_yaml(folder / f"{domain}.yaml"))
    env_name = env or os.environ.get("SEGSPARK_ENV", "local")
    env_file = folder / f"{env_name}.yaml"
    if not env_file.is_file():
        raise ConfigError(f"unknown environment {env_name!r}: no {env_file}")
    data = deep_merge(data, _read_yaml(env_file))
    for extra in files:
        data = deep_merge(data, _read_yaml(Path(extra)))
    for text in overrides:
        data = deep_merge(data, parse_override(text))
    return data


def load_settings(
    *,
    domain: str | None = None,
    env: str | None = None,
    files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    directory: Path | None = None,
) -> Settings:
    """Load and validate the layered configuration; see the module docstring."""
    raw = load_raw(domain=domain, env=env, files=files, overrides=overrides, directory=directory)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
