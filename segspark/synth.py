"""Synthetic customers and events with planted segments, built with Spark only.

Each domain has 4-6 latent segments (``synth.<domain>.segments`` in ``conf/base.yaml``, in that
order). The generator plants them, writes the events they imply and records the truth, so later
steps can score how well segmentation and migration tracking recover what was planted.

Default segments (``conf/base.yaml``), chosen to separate in the features later steps compute:

* retail (RFM): ``high_value_loyal`` (frequent, large baskets), ``mid_value_regular``,
  ``bargain_occasional`` (rare, small baskets), ``big_ticket_rare`` (rare, very large baskets),
  ``lapsing`` (almost no purchases, so recency grows). Being *new* is not a planted segment: it
  is a lifecycle fact (``signup_date``) a customer cannot migrate back into.
* telecom (usage mix, night and international share, contacts): ``data_heavy``,
  ``voice_heavy``, ``international``, ``night_owl``, ``light_user``.
* energy (24-hour load shape): ``evening_peak_home``, ``night_heating_ev``,
  ``daytime_commerce``, ``flat_industrial``, ``agricultural_irrigation``.

The model, per customer:

* **Periods** are the calendar months touched by ``[start, end]``; period ``k`` is the ``k``-th
  month from ``start``'s month. The truth is recorded at each month end inside the window.
* **Segments.** In period 0 a customer's segment is drawn from the configured shares ``pi``.
  Before each later period the customer *moves* with probability ``synth.migration_share``
  (whatever its segment); a mover from segment ``i`` goes to ``j != i`` with probability
  ``Q[i][j]`` (:func:`transition_matrix`). ``Q`` is the reversible flow closest (in KL
  divergence) to "pick by share" that keeps the shares stationary:
  ``pi_i Q[i][j] = x_i x_j A_ij pi_i pi_j`` with the scaling ``x`` found by symmetric Sinkhorn
  balancing, ``A`` being the optional ``synth.<domain>.affinity`` (1 where not given). So, in
  expectation, the shares are ``pi`` at every period end, a share ``m = migration_share`` of the
  customers present at two consecutive period ends changes segment whatever its segment, and
  the migration matrix is ``(1 - m) I + m Q``.
* **Lifecycle.** A share ``synth.existing_share`` signed up in the ``history_days`` before
  ``start``; the others sign up uniformly over the window. From ``max(signup, start)`` a customer
  lapses after an exponential time with monthly probability ``synth.lapse_rate``; the lapse date
  is the first day without activity (null when it falls after ``end``). Lapse is independent of
  the segment, so the shares among active customers stay ``pi``. The truth holds a row for each
  period end ``t`` with ``signup_date <= t < lapse_date``.
* **Events** of period ``k`` follow the customer's segment in period ``k`` and fall inside
  ``[signup, lapse) ∩ [start, end]``. Event counts are a thinned Poisson-like process: a
  candidate count (the intensity rounded stochastically, so its mean is exact) is spread
  uniformly over the active days and thinned by weekday weight; hours follow per-segment
  hour-of-day weights. Energy readings instead fill the interval grid and carry the segment's
  24-hour load shape, a weekend factor and a winter/summer cosine seasonality.
* **Heavy tails** come from log-normal draws (per-customer intensity and value multipliers with
  mean 1, basket sizes, call durations, data volumes, load scale), via Box-Muller normals clipped
  at +-4 sigma so event counts stay bounded; contact popularity is a power law.

Randomness: every draw is a uniform made from ``xxhash64(seed, domain, stream, keys...)``
(``keys`` being the customer's number, the period and the event's index), never ``rand(seed)``,
so a seed gives the same rows however the data is partitioned, and nothing is collected to the
driver: event rows come from exploding bounded per-customer-period counts.

The parameters in ``conf/base.yaml`` are illustrative, chosen to give plausible shapes and
well-separated segments; they are not fitted to published data.

Example:
    >>> from segspark.config import load_settings
    >>> data = generate(spark, "retail", customers=1000, start=dt.date(2024, 1, 1),
    ...                 end=dt.date(2024, 6, 30), seed=7, settings=load_settings().synth,
    ...                 partitions=4)
    >>> sorted(data.tables())
    ['customers', 'synthetic_truth', 'transactions']
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from segspark.config import (
    DOMAINS,
    EnergySynthSettings,
    RetailSynthSettings,
    SynthSettings,
    TelecomSynthSettings,
)
from segspark.errors import ConfigError, UsageError
from segspark.schemas import CDRS, CUSTOMERS, EVENT_TABLES, METER_READINGS, TRANSACTIONS

log = logging.getLogger(__name__)

_DomainSynth = RetailSynthSettings | TelecomSynthSettings | EnergySynthSettings

SOURCE = "synthetic"
SECTORS = ("residential", "commercial", "industrial", "agricultural")
EVENT_TYPES = ("voice", "sms", "data")

_DAYS_PER_MONTH = 365.25 / 12
_TWO_53 = float(2**53)
_Z_CLIP = 4.0
_SEED_MIN, _SEED_MAX = -(2**63), 2**63 - 1
_SHARE_TOLERANCE = 1e-6


# --------------------------------------------------------------------------------------------
# public results and helpers


@dataclass(frozen=True)
class SyntheticDomain:
    """The frames generated for one domain (lazy: nothing is computed until an action).

    ``lifecycle`` (customer_id, signup_date, lapse_date) is not a lake table; tests use it to
    check that no event falls outside a customer's active life.
    """

    domain: str
    ingest_id: str
    customers: DataFrame
    events: DataFrame
    truth: DataFrame
    lifecycle: DataFrame

    @property
    def event_table(self) -> str:
        """The domain's event table: ``transactions``, ``cdrs`` or ``meter_readings``."""
        return EVENT_TABLES[self.domain]

    def tables(self) -> dict[str, DataFrame]:
        """Lake table name -> frame, for the three tables the generator writes."""
        return {
            "customers": self.customers,
            self.event_table: self.events,
            "synthetic_truth": self.truth,
        }


def period_ends(start: dt.date, end: dt.date) -> list[dt.date]:
    """The month ends inside ``[start, end]``: the ``as_of`` dates of the truth table.

    Example:
        >>> period_ends(dt.date(2024, 1, 15), dt.date(2024, 3, 30))
        [datetime.date(2024, 1, 31), datetime.date(2024, 2, 29)]
    """
    out = []
    for k in range(_months(start, end)):
        first = _add_months(_month_start(start), k)
        last = _add_months(first, 1) - dt.timedelta(days=1)
        if last <= end:
            out.append(last)
    return out


def segment_names(settings: SynthSettings, domain: str) -> list[str]:
    """The planted segments of ``domain`` in configured order (their index order).

    Example:
        >>> segment_names(load_settings().synth, "telecom")[:2]
        ['data_heavy', 'voice_heavy']
    """
    return list(_domain_settings(settings, domain).segments)


def segment_shares(settings: SynthSettings, domain: str) -> dict[str, float]:
    """Configured share of each planted segment of ``domain``.

    Example:
        >>> sum(segment_shares(load_settings().synth, "retail").values())
        1.0
    """
    return {name: seg.share for name, seg in _domain_settings(settings, domain).segments.items()}


def transition_matrix(
    shares: Sequence[float], affinity: Sequence[Sequence[float]] | None = None
) -> list[list[float]]:
    """Where movers go: ``Q[i][j]`` is the probability that a mover from ``i`` lands in ``j``.

    ``Q`` has a zero diagonal, rows summing to 1 and keeps the shares stationary
    (``sum_i shares[i] * Q[i][j] == shares[j]``). It is the symmetric flow
    ``W[i][j] = x_i x_j A[i][j] shares[i] shares[j]`` with margins ``shares`` (symmetric Sinkhorn
    scaling), divided by ``shares[i]``. Such a flow exists when every share is below 1/2 and
    every affinity off the diagonal is positive.

    Example:
        >>> q = transition_matrix([0.25, 0.25, 0.25, 0.25])
        >>> [round(v, 6) for v in q[0]]
        [0.0, 0.333333, 0.333333, 0.333333]
    """
    k = len(shares)
    if k < 2:
        raise ConfigError("migration needs at least two segments")
    if any(s <= 0 for s in shares):
        raise ConfigError("segment shares must be positive")
    if max(shares) >= 0.5:
        raise ConfigError(
            f"a segment share of {max(shares):g} leaves too few others to move to; with "
            "migration every share must be below 0.5"
        )
    aff = [list(row) for row in affinity] if affinity is not None else [[1.0] * k] * k
    kernel = [
        [aff[i][j] * shares[i] * shares[j] if i != j else 0.0 for j in range(k)] for i in range(k)
    ]
    x = [1.0] * k
    for _ in range(100_000):
        flow = [sum(kernel[i][j] * x[j] for j in range(k)) for i in range(k)]
        new = [math.sqrt(x[i] * shares[i] / flow[i]) for i in range(k)]
        done = max(abs(a - b) / b for a, b in zip(new, x, strict=True)) < 1e-15
        x = new
        if done:
            break
    rows = [[x[i] * kernel[i][j] * x[j] / shares[i] for j in range(k)] for i in range(k)]
    worst = max(abs(sum(row) - 1.0) for row in rows)
    if worst > 1e-9:
        raise ConfigError(
            f"cannot balance the migration flows for shares {list(shares)} (off by {worst:.2g}); "
            "raise the smallest affinities"
        )
    return [[v / sum(row) for v in row] for row in rows]


def domain_transition_matrix(settings: SynthSettings, domain: str) -> dict[str, dict[str, float]]:
    """:func:`transition_matrix` of ``domain``'s configured segments, keyed by segment name.

    Example:
        >>> q = domain_transition_matrix(load_settings().synth, "retail")
        >>> q["lapsing"]["lapsing"]
        0.0
    """
    names = segment_names(settings, domain)
    shares, affinity = _shares_and_affinity(settings, domain)
    q = transition_matrix(shares, affinity)
    return {a: dict(zip(names, row, strict=True)) for a, row in zip(names, q, strict=True)}


def ingest_id(
    domain: str,
    *,
    customers: int,
    start: dt.date,
    end: dt.date,
    seed: int,
    settings: SynthSettings,
) -> str:
    """A deterministic id of the generation parameters (the ``_ingest_id`` of every row).

    Example:
        >>> ingest_id("retail", customers=10, start=dt.date(2024, 1, 1),
        ...           end=dt.date(2024, 1, 31), seed=1, settings=load_settings().synth)[:6]
        'synth-'
    """
    params = settings.model_dump(mode="json")
    for other in DOMAINS:
        if other != domain:
            params.pop(other, None)
    for key in ("seed", "start", "end", "rows_per_partition"):
        params.pop(key, None)
    payload = json.dumps(
        {
            "domain": domain,
            "customers": customers,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "seed": seed,
            "settings": params,
        },
        sort_keys=True,
    )
    return "synth-" + hashlib.sha256(payload.encode()).hexdigest()[:16]


def check_arguments(
    domain: str, *, customers: int, start: dt.date, end: dt.date, seed: int, partitions: int
) -> None:
    """Raise :class:`UsageError` naming the first bad generation argument.

    Example:
        >>> check_arguments("retail", customers=0, start=dt.date(2024, 1, 1),
        ...                 end=dt.date(2024, 1, 31), seed=1, partitions=1)
        Traceback (most recent call last):
        segspark.errors.UsageError: customers must be a positive integer, got 0
    """
    _check_domain(domain)
    if isinstance(customers, bool) or not isinstance(customers, int) or customers < 1:
        raise UsageError(f"customers must be a positive integer, got {customers!r}")
    if start > end:
        raise UsageError(f"start {start} is after end {end}")
    if not _SEED_MIN <= seed <= _SEED_MAX:
        raise UsageError(f"seed must fit in 64 bits, got {seed}")
    if partitions < 1:
        raise UsageError(f"partitions must be >= 1, got {partitions}")


def estimate_event_rows(
    domain: str, *, customers: int, start: dt.date, end: dt.date, settings: SynthSettings
) -> int:
    """Expected event rows if every customer were active the whole window (an upper guide).

    Used to size partitions; joining and lapsing customers make the real count smaller.

    Example:
        >>> estimate_event_rows("energy", customers=10, start=dt.date(2024, 1, 1),
        ...                     end=dt.date(2024, 1, 31), settings=load_settings().synth)
        7440
    """
    _check_domain(domain)
    days = (end - start).days + 1
    if domain == "retail":
        r = settings.retail
        per_day = sum(s.share * s.purchases_per_month for s in r.segments.values())
        per_day /= _DAYS_PER_MONTH
        per_day *= sum(r.month_factors) / 12
    elif domain == "telecom":
        per_day = sum(
            s.share * (s.voice_per_day + s.sms_per_day + s.data_per_day)
            for s in settings.telecom.segments.values()
        )
    else:
        per_day = 1440 / settings.energy.interval_minutes
    return math.ceil(customers * days * per_day)


def default_partitions(
    spark: SparkSession,
    domain: str,
    *,
    customers: int,
    start: dt.date,
    end: dt.date,
    settings: SynthSettings,
) -> int:
    """Partitions for the customer range: enough for ``synth.rows_per_partition`` events each.

    Never fewer than the session's default parallelism nor more than the customers.

    Example:
        >>> default_partitions(spark, "retail", customers=100, start=dt.date(2024, 1, 1),
        ...                    end=dt.date(2024, 1, 31), settings=load_settings().synth)
        2
    """
    rows = estimate_event_rows(domain, customers=customers, start=start, end=end, settings=settings)
    wanted = max(
        spark.sparkContext.defaultParallelism, math.ceil(rows / settings.rows_per_partition)
    )
    return max(1, min(wanted, customers))


# --------------------------------------------------------------------------------------------
# generators


def generate(
    spark: SparkSession,
    domain: str,
    *,
    customers: int,
    start: dt.date,
    end: dt.date,
    seed: int,
    settings: SynthSettings,
    partitions: int,
) -> SyntheticDomain:
    """Generate one domain's customers, events and planted truth (see the module docstring).

    Example:
        >>> data = generate(spark, "energy", customers=50, start=dt.date(2024, 1, 1),
        ...                 end=dt.date(2024, 2, 29), seed=3, settings=load_settings().synth,
        ...                 partitions=2)
        >>> data.events.columns[:3]
        ['customer_id', 'reading_time', 'kwh']
    """
    generators = {
        "retail": generate_retail,
        "telecom": generate_telecom,
        "energy": generate_energy,
    }
    _check_domain(domain)
    return generators[domain](
        spark,
        customers=customers,
        start=start,
        end=end,
        seed=seed,
        settings=settings,
        partitions=partitions,
    )


def generate_retail(
    spark: SparkSession,
    *,
    customers: int,
    start: dt.date,
    end: dt.date,
    seed: int,
    settings: SynthSettings,
    partitions: int,
) -> SyntheticDomain:
    """Retail customers, ``transactions`` and truth.

    Segments differ in purchase rate (frequency, hence recency) and basket size (monetary);
    each customer also has a persistent rate and value multiplier (log-normal, mean 1). Months
    are scaled by ``month_factors`` (the December peak) and days thinned by ``weekday_weights``.

    Example:
        >>> data = generate_retail(spark, customers=100, start=dt.date(2024, 1, 1),
        ...                        end=dt.date(2024, 3, 31), seed=1,
        ...                        settings=load_settings().synth, partitions=2)
        >>> data.events.columns[:5]
        ['customer_id', 'event_time', 'amount', 'quantity', 'transaction_id']
    """
    ctx = _Context(spark, "retail", customers, start, end, seed, settings, partitions)
    cfg = settings.retail
    segs = list(cfg.segments.values())
    rate = _lit_array([s.purchases_per_month for s in segs])
    median = _lit_array([s.basket_median for s in segs])
    sigma = _lit_array([s.basket_sigma for s in segs])
    items = _lit_array([s.items_mean for s in segs])
    months = _lit_array(list(cfg.month_factors))
    weekday = list(cfg.weekday_weights)
    w_max, w_mean = max(weekday), sum(weekday) / 7
    rate_mult = _lognormal(cfg.customer_sigma, ctx.normal("rate", F.col("id")))
    value_mult = _lognormal(cfg.customer_sigma, ctx.normal("value", F.col("id")))

    periods = ctx.periods().withColumn("value_mult", value_mult)
    intensity = (
        F.get(rate, F.col("seg"))
        * F.col("days")
        / _DAYS_PER_MONTH
        * F.get(months, F.month("lo") - 1)
        * rate_mult
        * (w_max / w_mean)
    )
    candidates = ctx.candidates(periods, intensity)
    keys = (F.col("id"), F.col("k"), F.col("j"))
    day = F.date_add(F.col("lo"), F.floor(ctx.uniform("day", *keys) * F.col("days")).cast("int"))
    events = (
        candidates.withColumn("day", day)
        .where(ctx.uniform("keep", *keys) * w_max < F.get(_lit_array(weekday), F.weekday("day")))
        .withColumn("hour", _pick(ctx.uniform("hour", *keys), [cfg.hour_weights]))
    )
    basket = (
        F.get(median, F.col("seg"))
        * F.col("value_mult")
        * F.exp(F.get(sigma, F.col("seg")) * ctx.normal("basket", *keys))
    )
    p_stop = 1.0 / F.get(items, F.col("seg"))
    extra_items = F.floor(F.log(ctx.uniform("items", *keys)) / F.log(1.0 - p_stop))
    frame = events.select(
        F.col("customer_id"),
        _event_time(F.col("day"), F.col("hour"), ctx.uniform("second", *keys)).alias("event_time"),
        F.greatest(F.round(basket, 2), F.lit(0.01)).alias("amount"),
        (F.lit(1) + extra_items).cast("int").alias("quantity"),
        F.format_string("%s-%03d-%04d", F.col("customer_id"), F.col("k"), F.col("j")).alias(
            "transaction_id"
        ),
        *ctx.lineage(),
    )
    return ctx.result(_conform(frame, TRANSACTIONS.names), sector=None)


def generate_telecom(
    spark: SparkSession,
    *,
    customers: int,
    start: dt.date,
    end: dt.date,
    seed: int,
    settings: SynthSettings,
    partitions: int,
) -> SyntheticDomain:
    """Telecom customers, ``cdrs`` (voice/sms/data) and truth.

    Segments differ in usage mix (voice, sms, data rates), call length, data volume,
    international share, hour-of-day profile (night share) and contact-pool size (distinct
    contacts). Voice and sms rows carry a direction and a counterparty from the customer's
    contact pool (a power law: a few contacts get most calls); data rows carry ``data_mb``.

    Example:
        >>> data = generate_telecom(spark, customers=100, start=dt.date(2024, 1, 1),
        ...                         end=dt.date(2024, 1, 31), seed=1,
        ...                         settings=load_settings().synth, partitions=2)
        >>> data.event_table
        'cdrs'
    """
    ctx = _Context(spark, "telecom", customers, start, end, seed, settings, partitions)
    cfg = settings.telecom
    segs = list(cfg.segments.values())
    total = _lit_array([s.voice_per_day + s.sms_per_day + s.data_per_day for s in segs])
    voice_median = _lit_array([s.voice_median_s for s in segs])
    voice_sigma = _lit_array([s.voice_sigma for s in segs])
    data_median = _lit_array([s.data_median_mb for s in segs])
    data_sigma = _lit_array([s.data_sigma for s in segs])
    intl_share = _lit_array([s.intl_share for s in segs])
    out_share = _lit_array([s.out_share for s in segs])
    contacts = _lit_array([float(s.contacts) for s in segs])
    codes = F.lit([int(c) for c in cfg.intl_country_codes])
    weekday = list(cfg.weekday_weights)
    w_max, w_mean = max(weekday), sum(weekday) / 7
    rate_mult = _lognormal(cfg.customer_sigma, ctx.normal("rate", F.col("id")))

    seg = F.col("seg")
    intensity = F.get(total, seg) * F.col("days") * rate_mult * (w_max / w_mean)
    candidates = ctx.candidates(ctx.periods(), intensity)
    keys = (F.col("id"), F.col("k"), F.col("j"))
    day = F.date_add(F.col("lo"), F.floor(ctx.uniform("day", *keys) * F.col("days")).cast("int"))
    mix = [[s.voice_per_day, s.sms_per_day, s.data_per_day] for s in segs]
    events = (
        candidates.withColumn("day", day)
        .where(ctx.uniform("keep", *keys) * w_max < F.get(_lit_array(weekday), F.weekday("day")))
        .withColumn("hour", _pick(ctx.uniform("hour", *keys), [s.hour_weights for s in segs], seg))
        .withColumn("t", _pick(ctx.uniform("type", *keys), mix, seg))
        .withColumn(
            "intl", (F.col("t") < 2) & (ctx.uniform("intl", *keys) < F.get(intl_share, seg))
        )
        .withColumn(
            "contact",
            F.floor(F.get(contacts, seg) * F.pow(ctx.uniform("contact", *keys), 2.0)),
        )
    )
    talk = F.col("t") < 2
    # A contact's number depends only on the customer and the contact's rank in its pool, so
    # the same contacts recur across events and periods (distinct-contact features work).
    number = F.pmod(ctx.hash("number", F.col("id"), F.col("intl"), F.col("contact")), 10**9)
    n_codes = len(cfg.intl_country_codes)
    country = F.get(
        codes, F.pmod(ctx.hash("country", F.col("id"), F.col("contact")), n_codes).cast("int")
    )
    counterparty = F.when(F.col("intl"), F.format_string("+%d%09d", country, number)).otherwise(
        F.format_string("+%d7%09d", F.lit(cfg.home_country_code), number)
    )
    duration = F.get(voice_median, seg) * F.exp(F.get(voice_sigma, seg) * ctx.normal("dur", *keys))
    volume = F.get(data_median, seg) * F.exp(F.get(data_sigma, seg) * ctx.normal("mb", *keys))
    frame = events.select(
        F.col("customer_id"),
        _event_time(F.col("day"), F.col("hour"), ctx.uniform("second", *keys)).alias("event_time"),
        F.get(F.lit(list(EVENT_TYPES)), F.col("t")).alias("event_type"),
        F.when(
            talk,
            F.when(ctx.uniform("dir", *keys) < F.get(out_share, seg), F.lit("out")).otherwise(
                F.lit("in")
            ),
        ).alias("direction"),
        F.when(F.col("t") == 0, F.greatest(F.round(duration, 0), F.lit(1.0))).alias("duration_s"),
        F.when(F.col("t") == 2, F.greatest(F.round(volume, 3), F.lit(0.001))).alias("data_mb"),
        F.col("intl").alias("is_international"),
        F.when(talk, counterparty).alias("counterparty_id"),
        *ctx.lineage(),
    )
    return ctx.result(_conform(frame, CDRS.names), sector=None)


def generate_energy(
    spark: SparkSession,
    *,
    customers: int,
    start: dt.date,
    end: dt.date,
    seed: int,
    settings: SynthSettings,
    partitions: int,
) -> SyntheticDomain:
    """Energy customers (with ``sector``), ``meter_readings`` and truth.

    Every active customer has one reading per ``interval_minutes`` slot (``reading_time`` is the
    slot's start, ``kwh`` the energy used in it). A reading is the segment's daily energy times
    the customer's scale (log-normal, mean 1), the normalised load shape at that hour, the
    weekend factor, ``1 + amplitude * cos(2 pi (day_of_year - peak_day) / 365.25)`` and a
    log-normal noise with mean 1. ``sector`` follows the segment the customer had when it
    signed up (period 0 for earlier sign-ups), except for a ``sector_noise`` share drawn at
    random; non-residential customers have no age or income band.

    Example:
        >>> data = generate_energy(spark, customers=10, start=dt.date(2024, 1, 1),
        ...                        end=dt.date(2024, 1, 31), seed=1,
        ...                        settings=load_settings().synth, partitions=1)
        >>> data.events.where("minute(reading_time) != 0").count()
        0
    """
    ctx = _Context(spark, "energy", customers, start, end, seed, settings, partitions)
    cfg = settings.energy
    segs = list(cfg.segments.values())
    slots_per_day = 1440 // cfg.interval_minutes
    slot_seconds = cfg.interval_minutes * 60
    shape: list[float] = []
    for s in segs:
        total = sum(s.load_shape)
        shape.extend(v / total for v in s.load_shape)
    shape_arr = _lit_array(shape)
    daily = _lit_array([s.daily_kwh for s in segs])
    amplitude = _lit_array([s.season_amplitude for s in segs])
    peak = _lit_array([float(s.season_peak_day) for s in segs])
    weekend = _lit_array([s.weekend_factor for s in segs])
    scale_sigma = _lit_array([s.customer_sigma for s in segs])

    seg = F.col("seg")
    first = F.unix_date(F.col("lo")).cast("long") * slots_per_day
    last = (F.unix_date(F.col("hi")).cast("long") + 1) * slots_per_day - 1
    slots = ctx.periods().select(
        "id", "customer_id", "k", "seg", F.explode(F.sequence(first, last)).alias("slot")
    )
    day = F.date_from_unix_date(F.floor(F.col("slot") / slots_per_day).cast("int"))
    hour = F.floor(F.pmod(F.col("slot"), F.lit(slots_per_day)) * cfg.interval_minutes / 60)
    season = F.lit(1.0) + F.get(amplitude, seg) * F.cos(
        2 * math.pi * (F.dayofyear("day") - F.get(peak, seg)) / 365.25
    )
    week = F.when(F.weekday("day") >= 5, F.get(weekend, seg)).otherwise(F.lit(1.0))
    scale = F.exp(
        F.get(scale_sigma, seg) * ctx.normal("scale", F.col("id"))
        - F.get(scale_sigma, seg) * F.get(scale_sigma, seg) / 2
    )
    kwh = (
        F.get(daily, seg)
        * scale
        * F.get(shape_arr, seg * 24 + F.col("hour").cast("int"))
        * (cfg.interval_minutes / 60)
        * season
        * week
        * _lognormal(cfg.noise_sigma, ctx.normal("noise", F.col("id"), F.col("slot")))
    )
    frame = (
        slots.withColumn("day", day)
        .withColumn("hour", hour)
        .select(
            F.col("customer_id"),
            F.timestamp_seconds(F.col("slot") * slot_seconds).alias("reading_time"),
            F.round(kwh, 4).alias("kwh"),
            *ctx.lineage(),
        )
    )
    seg_sector = F.lit([s.sector for s in segs])
    return ctx.result(_conform(frame, METER_READINGS.names), sector=(seg_sector, cfg.sector_noise))


# --------------------------------------------------------------------------------------------
# internals


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise UsageError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")


def _domain_settings(settings: SynthSettings, domain: str) -> _DomainSynth:
    _check_domain(domain)
    section: _DomainSynth = getattr(settings, domain)
    return section


def _month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def _add_months(day: dt.date, months: int) -> dt.date:
    index = day.year * 12 + day.month - 1 + months
    return dt.date(index // 12, index % 12 + 1, 1)


def _months(start: dt.date, end: dt.date) -> int:
    return (end.year - start.year) * 12 + end.month - start.month + 1


def _check_weights(key: str, weights: Mapping[str, float]) -> None:
    if not weights:
        raise ConfigError(f"config error: {key} is empty")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ConfigError(f"config error: {key} needs non-negative weights with a positive sum")


def _shares_and_affinity(
    settings: SynthSettings, domain: str
) -> tuple[list[float], list[list[float]]]:
    section = _domain_settings(settings, domain)
    names = list(section.segments)
    shares = [section.segments[n].share for n in names]
    total = sum(shares)
    if abs(total - 1.0) > _SHARE_TOLERANCE:
        raise ConfigError(
            f"config error: synth.{domain}.segments shares sum to {total:.6g}, expected 1"
        )
    index = {n: i for i, n in enumerate(names)}
    affinity = [[1.0] * len(names) for _ in names]
    given: dict[tuple[int, int], float] = {}
    for a, row in section.affinity.items():
        for b, value in row.items():
            for name in (a, b):
                if name not in index:
                    raise ConfigError(
                        f"config error: synth.{domain}.affinity names unknown segment {name!r}"
                    )
            if a == b or value <= 0:
                raise ConfigError(
                    f"config error: synth.{domain}.affinity.{a}.{b} must be positive and "
                    "between two different segments"
                )
            i, j = sorted((index[a], index[b]))
            if given.get((i, j), value) != value:
                raise ConfigError(
                    f"config error: synth.{domain}.affinity gives {a}/{b} two different values"
                )
            given[(i, j)] = value
            affinity[i][j] = affinity[j][i] = value
    return [s / total for s in shares], affinity


def _alias_table(weights: Sequence[float]) -> tuple[list[float], list[int]]:
    """Walker/Vose alias table: column ``i`` keeps ``i`` with ``prob[i]``, else ``alias[i]``."""
    n = len(weights)
    total = float(sum(weights))
    if total <= 0 or min(weights) < 0:
        raise ConfigError(f"weights {list(weights)} must be non-negative with a positive sum")
    scaled = [w * n / total for w in weights]
    prob = [1.0] * n
    alias = list(range(n))
    small = [i for i, v in enumerate(scaled) if v < 1.0]
    large = [i for i, v in enumerate(scaled) if v >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    return prob, alias


def _lit_array(values: Sequence[float]) -> Column:
    return F.lit([float(v) for v in values])


def _pick(u: Column, rows: Sequence[Sequence[float]], row: Column | None = None) -> Column:
    """Index drawn by weight from ``rows[row]`` (or the only row) with one uniform, O(1)."""
    n = len(rows[0])
    probs: list[float] = []
    aliases: list[int] = []
    for weights in rows:
        if len(weights) != n:
            raise ConfigError("weight rows of one draw must have the same length")
        p, a = _alias_table(weights)
        probs.extend(p)
        aliases.extend(a)
    scaled = u * n
    column = F.least(F.floor(scaled).cast("int"), F.lit(n - 1))
    frac = scaled - column
    cell = column if row is None else row * n + column
    return F.when(frac < F.get(_lit_array(probs), cell), column).otherwise(
        F.get(F.lit(aliases), cell)
    )


def _lognormal(sigma: float, z: Column) -> Column:
    """A log-normal multiplier with mean 1 (median ``exp(-sigma^2 / 2)``)."""
    return F.exp(sigma * z - sigma * sigma / 2)


def _event_time(day: Column, hour: Column, u: Column) -> Column:
    seconds = F.unix_date(day).cast("long") * 86400 + hour * 3600 + F.floor(u * 3600)
    return F.timestamp_seconds(seconds)


def _conform(frame: DataFrame, names: Sequence[str]) -> DataFrame:
    return frame.select(*names)


class _Context:
    """Everything one domain's generation shares: parameters, the customer base, its draws."""

    def __init__(
        self,
        spark: SparkSession,
        domain: str,
        customers: int,
        start: dt.date,
        end: dt.date,
        seed: int,
        settings: SynthSettings,
        partitions: int,
    ) -> None:
        check_arguments(
            domain, customers=customers, start=start, end=end, seed=seed, partitions=partitions
        )
        for key in ("regions", "age_bands", "income_bands"):
            _check_weights(f"synth.{key}", getattr(settings, key))
        self.spark = spark
        self.domain = domain
        self.customers = customers
        self.start = start
        self.end = end
        self.seed = seed
        self.settings = settings
        self.partitions = partitions
        self.months = _months(start, end)
        self.ingest = ingest_id(
            domain, customers=customers, start=start, end=end, seed=seed, settings=settings
        )
        shares, affinity = _shares_and_affinity(settings, domain)
        moves = settings.migration_share > 0 and self.months > 1
        self.base = self._base(shares, transition_matrix(shares, affinity) if moves else None)
        log.info(
            "generating %s: %d customers, %s..%s, seed %d, %d partitions (%s)",
            domain,
            customers,
            start,
            end,
            seed,
            partitions,
            self.ingest,
        )

    # -- draws ------------------------------------------------------------------------------
    def hash(self, stream: str, *keys: Column) -> Column:
        """``xxhash64(seed, domain, stream, keys)``: the source of every random draw."""
        return F.xxhash64(F.lit(self.seed).cast("long"), F.lit(self.domain), F.lit(stream), *keys)

    def uniform(self, stream: str, *keys: Column) -> Column:
        """A uniform in (0, 1) from the top 53 bits of :meth:`hash`."""
        h = self.hash(stream, *keys)
        return (F.shiftrightunsigned(h, 11).cast("double") + 0.5) / _TWO_53

    def normal(self, stream: str, *keys: Column) -> Column:
        """A standard normal (Box-Muller) clipped at +-4, so multipliers stay bounded."""
        radius = F.sqrt(-2.0 * F.log(self.uniform(stream + ":r", *keys)))
        z = radius * F.cos(2 * math.pi * self.uniform(stream + ":a", *keys))
        return F.greatest(F.lit(-_Z_CLIP), F.least(F.lit(_Z_CLIP), z))

    def lineage(self) -> list[Column]:
        return [F.lit(SOURCE).alias("_source"), F.lit(self.ingest).alias("_ingest_id")]

    # -- the customer base --------------------------------------------------------------------
    def _base(self, shares: Sequence[float], q: Sequence[Sequence[float]] | None) -> DataFrame:
        section = _domain_settings(self.settings, self.domain)
        s = self.settings
        cid = F.col("id")
        window_days = (self.end - self.start).days + 1
        existing = self.uniform("existing", cid) < s.existing_share
        signup = F.when(
            existing,
            F.date_sub(
                F.lit(self.start),
                (F.floor(self.uniform("signup", cid) * s.history_days) + 1).cast("int"),
            ),
        ).otherwise(
            F.date_add(
                F.lit(self.start), F.floor(self.uniform("signup", cid) * window_days).cast("int")
            )
        )
        if s.lapse_rate > 0:
            per_day = -math.log(1.0 - s.lapse_rate) / _DAYS_PER_MONTH
            wait = F.least(
                F.ceil(-F.log(self.uniform("lapse", cid)) / per_day), F.lit(window_days + 1)
            ).cast("int")
            lapse = F.date_add(F.greatest(F.col("signup_date"), F.lit(self.start)), wait)
            lapse = F.when(lapse <= F.lit(self.end), lapse)
        else:
            lapse = F.lit(None).cast("date")
        first = _pick(self.uniform("segment", cid, F.lit(0)), [shares])
        periods = self.months
        if q is None:
            segments = F.array_repeat(first, periods)
        else:

            def step(acc: Column, k: Column) -> Column:
                last = F.element_at(acc, -1)
                moved = self.uniform("move", cid, k) < s.migration_share
                target = _pick(self.uniform("target", cid, k), q, last)
                return F.concat(acc, F.array(F.when(moved, target).otherwise(last)))

            segments = F.aggregate(F.sequence(F.lit(1), F.lit(periods - 1)), F.array(first), step)
        return (
            self.spark.range(0, self.customers, 1, self.partitions)
            .withColumn("customer_id", F.format_string(f"{section.id_prefix}%07d", cid + 1))
            .withColumn("signup_date", signup)
            .withColumn("lapse_date", lapse)
            .withColumn("segments", segments)
        )

    def periods(self) -> DataFrame:
        """One row per customer and period with the active days ``[lo, hi]`` (``days`` of them)."""
        month0 = F.lit(_month_start(self.start))
        opened = F.add_months(month0, F.col("k"))
        lo = F.greatest(opened, F.lit(self.start), F.col("signup_date"))
        hi = F.least(F.last_day(opened), F.lit(self.end), F.date_sub(F.col("lapse_date"), 1))
        return (
            self.base.select(
                "id",
                "customer_id",
                "signup_date",
                "lapse_date",
                F.posexplode("segments").alias("k", "seg"),
            )
            .withColumn("lo", lo)
            .withColumn("hi", hi)
            .where(F.col("lo") <= F.col("hi"))
            .withColumn("days", F.datediff("hi", "lo") + 1)
        )

    def candidates(self, periods: DataFrame, intensity: Column) -> DataFrame:
        """Explode each customer-period into ``floor(intensity + u)`` candidate events ``j``."""
        count = F.floor(intensity + self.uniform("count", F.col("id"), F.col("k"))).cast("int")
        return (
            periods.withColumn("n", count)
            .where(F.col("n") > 0)
            .withColumn("j", F.explode(F.sequence(F.lit(1), F.col("n"))))
        )

    def truth(self) -> DataFrame:
        names = F.lit(list(_domain_settings(self.settings, self.domain).segments))
        as_of = F.last_day(F.add_months(F.lit(_month_start(self.start)), F.col("k")))
        return (
            self.base.select(
                "customer_id",
                "signup_date",
                "lapse_date",
                F.posexplode("segments").alias("k", "seg"),
            )
            .withColumn("as_of", as_of)
            .where(
                (F.col("as_of") <= F.lit(self.end))
                & (F.col("signup_date") <= F.col("as_of"))
                & (F.col("lapse_date").isNull() | (F.col("lapse_date") > F.col("as_of")))
            )
            .select(
                F.lit(self.domain).alias("domain"),
                "customer_id",
                "as_of",
                F.get(names, F.col("seg")).alias("true_segment"),
            )
        )

    def customer_table(self, sector: tuple[Column, float] | None) -> DataFrame:
        s = self.settings
        cid = F.col("id")

        def attribute(key: str, weights: Mapping[str, float]) -> Column:
            labels = F.lit(list(weights))
            return F.get(labels, _pick(self.uniform(key, cid), [list(weights.values())]))

        region = attribute("region", s.regions)
        age = attribute("age_band", s.age_bands)
        income = attribute("income_band", s.income_bands)
        if sector is None:
            sector_col = F.lit(None).cast("string")
        else:
            seg_sector, noise = sector
            month0 = F.lit(_month_start(self.start))
            k_signup = F.months_between(F.trunc("signup_date", "month"), month0).cast("int")
            k_signup = F.least(F.greatest(k_signup, F.lit(0)), F.lit(self.months - 1))
            at_signup = F.element_at(F.col("segments"), k_signup + 1)
            random_sector = F.get(
                F.lit(list(SECTORS)),
                F.floor(self.uniform("sector", cid) * len(SECTORS)).cast("int"),
            )
            sector_col = F.when(self.uniform("sector_noise", cid) < noise, random_sector).otherwise(
                F.get(seg_sector, at_signup)
            )
            person = sector_col == F.lit("residential")
            age = F.when(person, age)
            income = F.when(person, income)
        frame = self.base.select(
            "customer_id",
            F.lit(self.domain).alias("domain"),
            region.alias("region"),
            age.alias("age_band"),
            income.alias("income_band"),
            sector_col.alias("sector"),
            "signup_date",
            *self.lineage(),
        )
        return _conform(frame, CUSTOMERS.names)

    def result(self, events: DataFrame, *, sector: tuple[Column, float] | None) -> SyntheticDomain:
        return SyntheticDomain(
            domain=self.domain,
            ingest_id=self.ingest,
            customers=self.customer_table(sector),
            events=events,
            truth=self.truth(),
            lifecycle=self.base.select("customer_id", "signup_date", "lapse_date"),
        )
