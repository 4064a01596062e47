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

import datetime as dt
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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


class ClvOptimizerSettings(_Strict):
    method: Literal["L-BFGS-B", "BFGS"]
    max_iter: int = Field(ge=1)
    gtol: float = Field(gt=0)


class ClvSettings(_Strict):
    horizon_weeks: float = Field(gt=0)
    clv_months: int = Field(ge=1, le=600)
    discount_rate: float = Field(ge=0)
    discount_period: Literal["monthly", "annual"]
    spend_significant_digits: int | None = Field(ge=1, le=15)
    max_distinct_statistics: int = Field(ge=1)
    fit_sample_customers: int | None = Field(ge=1)
    on_failure: Literal["null", "error"]
    optimizer: ClvOptimizerSettings


class RetailSegmentSettings(_Strict):
    share: float = Field(gt=0, lt=1)
    purchases_per_month: float = Field(gt=0)
    basket_median: float = Field(gt=0)
    basket_sigma: float = Field(ge=0, le=3)
    items_mean: float = Field(gt=1)


class RetailSynthSettings(_Strict):
    id_prefix: str = Field(pattern=r"^[A-Z]{1,3}$")
    customer_sigma: float = Field(ge=0, le=2)
    weekday_weights: list[float] = Field(min_length=7, max_length=7)
    hour_weights: list[float] = Field(min_length=24, max_length=24)
    month_factors: list[float] = Field(min_length=12, max_length=12)
    segments: dict[str, RetailSegmentSettings] = Field(min_length=2)
    affinity: dict[str, dict[str, float]]


class TelecomSegmentSettings(_Strict):
    share: float = Field(gt=0, lt=1)
    voice_per_day: float = Field(ge=0)
    sms_per_day: float = Field(ge=0)
    data_per_day: float = Field(ge=0)
    voice_median_s: float = Field(gt=0)
    voice_sigma: float = Field(ge=0, le=3)
    data_median_mb: float = Field(gt=0)
    data_sigma: float = Field(ge=0, le=3)
    intl_share: float = Field(ge=0, le=1)
    out_share: float = Field(ge=0, le=1)
    contacts: int = Field(ge=1)
    hour_weights: list[float] = Field(min_length=24, max_length=24)


class TelecomSynthSettings(_Strict):
    id_prefix: str = Field(pattern=r"^[A-Z]{1,3}$")
    customer_sigma: float = Field(ge=0, le=2)
    weekday_weights: list[float] = Field(min_length=7, max_length=7)
    home_country_code: int = Field(ge=1, le=999)
    intl_country_codes: list[int] = Field(min_length=1)
    segments: dict[str, TelecomSegmentSettings] = Field(min_length=2)
    affinity: dict[str, dict[str, float]]


class EnergySegmentSettings(_Strict):
    share: float = Field(gt=0, lt=1)
    sector: Literal["residential", "commercial", "industrial", "agricultural"]
    daily_kwh: float = Field(gt=0)
    customer_sigma: float = Field(ge=0, le=2)
    load_shape: list[float] = Field(min_length=24, max_length=24)
    weekend_factor: float = Field(ge=0)
    season_amplitude: float = Field(ge=0, lt=1)
    season_peak_day: int = Field(ge=1, le=366)


class EnergySynthSettings(_Strict):
    id_prefix: str = Field(pattern=r"^[A-Z]{1,3}$")
    interval_minutes: Literal[15, 30, 60]
    noise_sigma: float = Field(ge=0, le=2)
    sector_noise: float = Field(ge=0, le=1)
    segments: dict[str, EnergySegmentSettings] = Field(min_length=2)
    affinity: dict[str, dict[str, float]]


class SynthSettings(_Strict):
    """Synthetic data with planted segments (``segspark.synth`` documents the model)."""

    seed: int
    start: dt.date
    end: dt.date
    migration_share: float = Field(ge=0, lt=1)
    existing_share: float = Field(ge=0, le=1)
    history_days: int = Field(ge=1)
    lapse_rate: float = Field(ge=0, lt=1)
    rows_per_partition: int = Field(ge=1)
    regions: dict[str, float]
    age_bands: dict[str, float]
    income_bands: dict[str, float]
    retail: RetailSynthSettings
    telecom: TelecomSynthSettings
    energy: EnergySynthSettings


class SourcesSettings(_Strict):
    """Rules and bounds of ``segspark ingest`` (see :mod:`segspark.sources`), per bronze table."""

    earliest_event_date: dt.date
    future_tolerance_hours: float = Field(ge=0)
    time_bounded: dict[str, list[str]]
    non_negative: dict[str, list[str]]
    enums: dict[str, dict[str, list[str]]]
    natural_keys: dict[str, list[str]]
    timestamp_format: str | None
    top_reasons: int = Field(ge=0)
    reader_options: dict[str, dict[str, str | bool | int | float]]


def _distinct_in(values: list[int], low: int, high: int) -> list[int]:
    bad = [v for v in values if not low <= v <= high]
    if bad:
        raise ValueError(f"values must lie in {low}..{high}, got {bad}")
    if len(set(values)) != len(values):
        raise ValueError(f"values must not repeat, got {values}")
    return values


class RetailFeaturesSettings(_Strict):
    window_days: int | None = Field(ge=1)
    trend_days: int = Field(ge=1)
    rfm_scores: int = Field(ge=2, le=100)
    rate_min_days: int = Field(ge=1)

    @model_validator(mode="after")
    def _trend_fits(self) -> RetailFeaturesSettings:
        if self.window_days is not None and self.window_days < 2 * self.trend_days:
            raise ValueError("window_days must be null or at least 2 x trend_days")
        return self


class TelecomFeaturesSettings(_Strict):
    window_days: int = Field(ge=1)
    trend_days: int = Field(ge=1)
    night_hours: list[int] = Field(min_length=1, max_length=23)

    _hours = field_validator("night_hours")(lambda v: _distinct_in(v, 0, 23))

    @model_validator(mode="after")
    def _trend_fits(self) -> TelecomFeaturesSettings:
        if self.window_days < 2 * self.trend_days:
            raise ValueError("window_days must be at least 2 x trend_days")
        return self


class EnergyFeaturesSettings(_Strict):
    window_days: int = Field(ge=1)
    evening_hours: list[int] = Field(min_length=1, max_length=23)
    base_load_percentile: float = Field(ge=0, le=1)
    percentile_accuracy: int = Field(ge=1)
    winter_months: list[int] = Field(min_length=1, max_length=11)
    summer_months: list[int] = Field(min_length=1, max_length=11)
    season_min_days: int = Field(ge=1)

    _hours = field_validator("evening_hours")(lambda v: _distinct_in(v, 0, 23))
    _months = field_validator("winter_months", "summer_months")(lambda v: _distinct_in(v, 1, 12))

    @model_validator(mode="after")
    def _seasons_disjoint(self) -> EnergyFeaturesSettings:
        if set(self.winter_months) & set(self.summer_months):
            raise ValueError("winter_months and summer_months must not share a month")
        return self


class FeaturesSettings(_Strict):
    """Silver per-customer features (``segspark.features``; the catalog documents each column)."""

    weekend_days: list[int] = Field(min_length=1, max_length=6)
    retail: RetailFeaturesSettings
    telecom: TelecomFeaturesSettings
    energy: EnergyFeaturesSettings

    _days = field_validator("weekend_days")(lambda v: _distinct_in(v, 1, 7))


_WORD = r"^[A-Za-z][A-Za-z0-9&/' -]{0,39}$"


class FeatureWordsSettings(_Strict):
    """Words naming a segment whose mean of one feature is high or low (None: never used)."""

    high: str | None = Field(default=None, pattern=_WORD)
    low: str | None = Field(default=None, pattern=_WORD)


class NamingSettings(_Strict):
    """Automatic segment names from the strongest z-scores (``segspark.model.profile``)."""

    max_terms: int = Field(ge=1, le=4)
    min_abs_z: float = Field(ge=0)
    neutral: str = Field(pattern=_WORD)
    withheld: str = Field(pattern=_WORD)
    vocabulary: dict[str, FeatureWordsSettings]


class ModelSettings(_Strict):
    """Preprocessing, clustering, k selection and profiles (``segspark.model``)."""

    features: list[str]
    profile_features: list[str]
    algorithm: Literal["kmeans", "bisecting", "gmm"]
    k: int | None = Field(ge=2)
    k_min: int = Field(ge=2)
    k_max: int = Field(ge=2)
    seed: int
    partitions: int = Field(ge=1)
    max_iter: int = Field(ge=1)
    tol: float = Field(gt=0)
    init_steps: int = Field(ge=1)
    restarts: int = Field(ge=1)
    impute: Literal["all", "none"] | list[str]
    impute_strategy: Literal["median", "mean"]
    log1p: list[str]
    pca_components: int | None = Field(ge=1)
    silhouette_sample_size: int = Field(ge=10)
    bootstrap_resamples: int = Field(ge=0)
    stability_threshold: float = Field(ge=-1, le=1)
    segment_mapping: dict[int, int]
    value_column: str | None
    naming: NamingSettings

    @model_validator(mode="after")
    def _k_range(self) -> ModelSettings:
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must not exceed k_max ({self.k_max})")
        if len(set(self.segment_mapping.values())) != len(self.segment_mapping):
            raise ValueError("segment_mapping must map each cluster to a different segment_id")
        return self

    @property
    def profiled(self) -> list[str]:
        """The features profiled and named from: ``features`` then ``profile_features``."""
        return list(dict.fromkeys([*self.features, *self.profile_features]))


class PrivacySettings(_Strict):
    """Pseudonymisation, small-segment withholding and differential privacy (``segspark.privacy``).

    The pseudonymisation key is never a setting: it comes from the file ``key_file`` names or
    from the ``SEGSPARK_PSEUDONYM_KEY`` environment variable (:func:`segspark.privacy.load_key`).
    """

    pseudonymize: bool
    key_file: str | None
    min_segment_size: int = Field(ge=1)
    epsilon: float | None = Field(gt=0)
    clip: dict[str, tuple[float, float]]

    @field_validator("clip")
    @classmethod
    def _bounds_ordered(
        cls, value: dict[str, tuple[float, float]]
    ) -> dict[str, tuple[float, float]]:
        bad = [name for name, (lo, hi) in value.items() if not lo < hi]
        if bad:
            raise ValueError(f"clip bounds must be [lo, hi] with lo < hi: {', '.join(bad)}")
        return value


class SnapshotsSettings(_Strict):
    """Segment identity, migrations and drift (``segspark.snapshots``, ``segspark.drift``)."""

    identity_max_distance: float = Field(ge=0)
    psi_bins: int = Field(ge=2, le=1000)
    psi_epsilon: float = Field(gt=0, lt=1)
    psi_moderate: float = Field(ge=0)
    psi_retrain: float = Field(ge=0)
    quantile_accuracy: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> SnapshotsSettings:
        if self.psi_moderate > self.psi_retrain:
            raise ValueError("psi_moderate must not exceed psi_retrain")
        return self


class ReportSettings(_Strict):
    """The segment report (``segspark report``, :mod:`segspark.report`)."""

    top_features: int = Field(ge=0, le=20)
    max_periods: int = Field(ge=1)


class DemoSettings(_Strict):
    start: dt.date
    end: dt.date
    as_of: list[dt.date] = Field(min_length=2)
    customers: dict[Domain, int]
    seed: int


class Settings(_Strict):
    lake: LakeSettings
    spark: SparkSettings
    tracking: TrackingSettings
    query: QuerySettings
    clv: ClvSettings
    synth: SynthSettings
    sources: SourcesSettings
    features: FeaturesSettings
    model: ModelSettings
    demo: DemoSettings
    snapshots: SnapshotsSettings
    report: ReportSettings
    privacy: PrivacySettings

    @model_validator(mode="after")
    def _clip_covers_published_features(self) -> Settings:
        if self.privacy.epsilon is None:
            return self
        needed = [*self.model.profiled]
        if self.model.value_column and self.model.value_column not in needed:
            needed.append(self.model.value_column)
        missing = [name for name in needed if name not in self.privacy.clip]
        if missing:
            raise ValueError(
                "privacy.epsilon needs privacy.clip bounds [lo, hi] for every profiled feature; "
                f"missing: {', '.join(missing)}"
            )
        return self

    def config_hash(self) -> str:
        """A short, stable hash of the resolved settings (tagged on every MLflow run)."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def conf_dir() -> Traversable:
    """The folder holding ``base.yaml``.

    ``SEGSPARK_CONF_DIR`` if set; else the ``segspark/_conf`` folder packaged into the wheel or
    the ``--py-files`` zip (read through :mod:`importlib.resources`, so it works from inside a
    zip); else the checkout's ``conf/``.
    """
    env = os.environ.get("SEGSPARK_CONF_DIR")
    if env:
        return Path(env)
    packaged = resources.files("segspark") / "_conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "conf"


def _read_yaml(path: Traversable) -> dict[str, Any]:
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
    if isinstance(first.get("input"), Mapping):
        # a cross-field rule: the whole section is the input, too long for one line
        message = str(first["msg"]).removeprefix("Value error, ")
        return f"config error: {message}" if key == "<root>" else f"config error: {key}: {message}"
    return f"config error: {key}: {first['msg']} (got {first.get('input')!r})"


def load_raw(
    *,
    domain: str | None = None,
    env: str | None = None,
    files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    directory: Traversable | None = None,
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
    directory: Traversable | None = None,
) -> Settings:
    """Load and validate the layered configuration; see the module docstring."""
    raw = load_raw(domain=domain, env=env, files=files, overrides=overrides, directory=directory)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
