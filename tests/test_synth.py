"""Synthetic generators: determinism, planted truth, realistic shapes and ``segspark generate``.

Statistical checks use a tolerance of four binomial (or sample) standard errors: with the fixed
seeds the outcome is deterministic, and four standard errors keep a correct generator from
failing by bad luck when a parameter or seed changes (two-sided p < 1e-4 per comparison).
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from segspark import synth
from segspark.config import SynthSettings, load_settings
from segspark.errors import ConfigError, UsageError
from segspark.schemas import BRONZE, EVENT_TABLES, SYNTHETIC_TRUTH

DOMAINS = ("retail", "telecom", "energy")
JAN, FEB_END, MAR_END = dt.date(2024, 1, 1), dt.date(2024, 2, 29), dt.date(2024, 3, 31)
Z = 4.0  # standard errors allowed by every statistical check


@pytest.fixture(scope="module")
def settings() -> SynthSettings:
    return load_settings(env="test").synth


def gen(
    spark: SparkSession,
    settings: SynthSettings,
    domain: str,
    *,
    customers: int,
    end: dt.date = MAR_END,
    seed: int = 11,
    partitions: int = 2,
) -> synth.SyntheticDomain:
    return synth.generate(
        spark,
        domain,
        customers=customers,
        start=JAN,
        end=end,
        seed=seed,
        settings=settings,
        partitions=partitions,
    )


def assert_same_rows(a: DataFrame, b: DataFrame) -> None:
    """Equal as multisets: nothing left over either way (one job), and not trivially empty."""
    assert a.exceptAll(b).unionByName(b.exceptAll(a)).count() == 0
    assert a.count() > 0


def fields(df: DataFrame) -> list[tuple[str, str]]:
    return [(f.name, f.dataType.simpleString()) for f in df.schema.fields]


def binomial_tolerance(p: float, n: int) -> float:
    return Z * math.sqrt(p * (1 - p) / n)


# --------------------------------------------------------------------------------------------
# pure helpers


def test_period_ends_are_the_month_ends_inside_the_window() -> None:
    assert synth.period_ends(dt.date(2024, 1, 15), dt.date(2024, 3, 30)) == [
        dt.date(2024, 1, 31),
        dt.date(2024, 2, 29),
    ]
    assert synth.period_ends(dt.date(2023, 12, 31), dt.date(2024, 1, 31)) == [
        dt.date(2023, 12, 31),
        dt.date(2024, 1, 31),
    ]
    assert synth.period_ends(dt.date(2024, 1, 2), dt.date(2024, 1, 30)) == []


def test_transition_matrix_of_equal_shares_is_uniform_among_the_others() -> None:
    q = synth.transition_matrix([0.25] * 4)
    for i, row in enumerate(q):
        assert row == pytest.approx([0.0 if j == i else 1 / 3 for j in range(4)], abs=1e-12)


@pytest.mark.parametrize("domain", DOMAINS)
def test_transition_matrix_keeps_configured_shares_stationary(
    settings: SynthSettings, domain: str
) -> None:
    shares = synth.segment_shares(settings, domain)
    q = synth.domain_transition_matrix(settings, domain)
    names = list(shares)
    for a in names:
        assert q[a][a] == 0.0
        assert sum(q[a].values()) == pytest.approx(1.0, abs=1e-12)
    for b in names:
        inflow = sum(shares[a] * q[a][b] for a in names)
        assert inflow == pytest.approx(shares[b], abs=1e-9)


def test_transition_matrix_rejects_a_share_of_one_half() -> None:
    with pytest.raises(ConfigError, match=r"every share must be below 0\.5"):
        synth.transition_matrix([0.5, 0.3, 0.2])


def test_shares_must_sum_to_one(spark: SparkSession, settings: SynthSettings) -> None:
    segments = dict(settings.retail.segments)
    first = next(iter(segments))
    segments[first] = segments[first].model_copy(update={"share": 0.5})
    bad = settings.model_copy(
        update={"retail": settings.retail.model_copy(update={"segments": segments})}
    )
    with pytest.raises(ConfigError, match=r"synth.retail.segments shares sum to 1.38, expected 1"):
        gen(spark, bad, "retail", customers=10)


def test_bad_arguments_are_rejected_with_a_precise_message(
    spark: SparkSession, settings: SynthSettings
) -> None:
    with pytest.raises(UsageError, match="customers must be a positive integer, got 0"):
        gen(spark, settings, "retail", customers=0)
    with pytest.raises(UsageError, match="start 2024-01-01 is after end 2023-12-31"):
        gen(spark, settings, "retail", customers=5, end=dt.date(2023, 12, 31))
    with pytest.raises(UsageError, match="unknown domain 'banking'"):
        gen(spark, settings, "banking", customers=5)


def test_ingest_id_depends_on_every_generation_parameter(settings: SynthSettings) -> None:
    base: dict[str, Any] = {
        "customers": 10,
        "start": JAN,
        "end": MAR_END,
        "seed": 1,
        "settings": settings,
    }
    first = synth.ingest_id("retail", **base)
    assert first == synth.ingest_id("retail", **base)
    assert first.startswith("synth-") and len(first) == 22
    changed = [
        synth.ingest_id("telecom", **base),
        synth.ingest_id("retail", **{**base, "customers": 11}),
        synth.ingest_id("retail", **{**base, "seed": 2}),
        synth.ingest_id("retail", **{**base, "end": FEB_END}),
        synth.ingest_id(
            "retail",
            **{**base, "settings": settings.model_copy(update={"migration_share": 0.2})},
        ),
    ]
    assert first not in changed and len(set(changed)) == len(changed)


# --------------------------------------------------------------------------------------------
# contract and determinism


@pytest.mark.parametrize("domain", DOMAINS)
def test_schemas_are_the_contract_schemas(
    spark: SparkSession, settings: SynthSettings, domain: str
) -> None:
    data = gen(spark, settings, domain, customers=5)
    event_table = EVENT_TABLES[domain]
    assert sorted(data.tables()) == sorted(["customers", event_table, "synthetic_truth"])
    assert fields(data.customers) == fields_of(BRONZE["customers"])
    assert fields(data.events) == fields_of(BRONZE[event_table])
    assert fields(data.truth) == fields_of(SYNTHETIC_TRUTH)


def fields_of(schema: Any) -> list[tuple[str, str]]:
    return [(f.name, f.dataType.simpleString()) for f in schema.fields]


@pytest.mark.parametrize("domain", DOMAINS)
def test_same_seed_gives_identical_tables_whatever_the_partitioning(
    spark: SparkSession, settings: SynthSettings, domain: str
) -> None:
    size = {"retail": 60, "telecom": 25, "energy": 12}[domain]
    one = gen(spark, settings, domain, customers=size, end=FEB_END, partitions=1)
    three = gen(spark, settings, domain, customers=size, end=FEB_END, partitions=3)
    assert one.ingest_id == three.ingest_id
    for name, frame in one.tables().items():
        assert_same_rows(frame, three.tables()[name].repartition(5))


def test_a_different_seed_gives_different_data(
    spark: SparkSession, settings: SynthSettings
) -> None:
    a = gen(spark, settings, "retail", customers=60, seed=1)
    b = gen(spark, settings, "retail", customers=60, seed=2)
    assert a.events.intersect(b.events).count() == 0
    same_signup = (
        a.customers.alias("a")
        .join(b.customers.alias("b"), "customer_id")
        .where(F.col("a.signup_date") == F.col("b.signup_date"))
        .count()
    )
    assert same_signup <= 3  # two independent draws over ~1100 days rarely coincide


def test_customer_ids_are_unique_across_domains_and_sector_is_energy_only(
    spark: SparkSession, settings: SynthSettings
) -> None:
    frames = [gen(spark, settings, d, customers=30).customers for d in DOMAINS]
    customers = frames[0].unionByName(frames[1]).unionByName(frames[2])
    rows = customers.select("customer_id", "domain", "sector", "age_band", "income_band").collect()
    assert len(rows) == 90
    assert len({r.customer_id for r in rows}) == 90
    prefixes = {"retail": "R", "telecom": "T", "energy": "E"}
    assert all(r.customer_id == f"{prefixes[r.domain]}{int(r.customer_id[1:]):07d}" for r in rows)
    for r in rows:
        if r.domain == "energy":
            assert r.sector in synth.SECTORS
            person = r.sector == "residential"
            assert (r.age_band is not None) == person and (r.income_band is not None) == person
        else:
            assert r.sector is None and r.age_band is not None and r.income_band is not None


# --------------------------------------------------------------------------------------------
# planted truth


@pytest.fixture(scope="module")
def planted(spark: SparkSession, settings: SynthSettings) -> dict[str, dict[str, Any]]:
    """Per domain: segment counts per as_of and (from, to) counts between consecutive as_ofs.

    20,000 customers over three months; only the truth is computed (no events).
    """
    out: dict[str, dict[str, Any]] = {}
    for domain in DOMAINS:
        truth = gen(spark, settings, domain, customers=20_000, seed=5).truth
        counts = Counter(
            {
                (r.as_of, r.true_segment): r["count"]
                for r in truth.groupBy("as_of", "true_segment").count().collect()
            }
        )
        a, b = truth.alias("a"), truth.alias("b")
        pairs = (
            a.join(
                b,
                (F.col("a.customer_id") == F.col("b.customer_id"))
                & (F.col("b.as_of") == F.last_day(F.add_months(F.col("a.as_of"), 1))),
            )
            .groupBy(
                F.col("a.as_of").alias("from_as_of"),
                F.col("a.true_segment").alias("src"),
                F.col("b.true_segment").alias("dst"),
            )
            .count()
            .collect()
        )
        moves = Counter({(r.from_as_of, r.src, r.dst): r["count"] for r in pairs})
        out[domain] = {"counts": counts, "moves": moves}
    return out


@pytest.mark.parametrize("domain", DOMAINS)
def test_planted_segment_shares_match_the_configured_shares(
    planted: dict[str, dict[str, Any]], settings: SynthSettings, domain: str
) -> None:
    counts = planted[domain]["counts"]
    shares = synth.segment_shares(settings, domain)
    as_ofs = synth.period_ends(JAN, MAR_END)
    assert {k[0] for k in counts} == set(as_ofs)
    assert {k[1] for k in counts} == set(shares)
    for as_of in as_ofs:
        n = sum(c for (t, _), c in counts.items() if t == as_of)
        assert 15_000 < n < 20_000  # joiners and lapsers: not everyone is active at every end
        for name, share in shares.items():
            observed = counts[(as_of, name)] / n
            assert abs(observed - share) <= binomial_tolerance(share, n), (as_of, name)


@pytest.mark.parametrize("domain", DOMAINS)
def test_migration_share_and_matrix_match_the_planted_rule(
    planted: dict[str, dict[str, Any]], settings: SynthSettings, domain: str
) -> None:
    moves = planted[domain]["moves"]
    q = synth.domain_transition_matrix(settings, domain)
    m = settings.migration_share
    for from_as_of in synth.period_ends(JAN, MAR_END)[:-1]:
        pairs = {(s, d): c for (t, s, d), c in moves.items() if t == from_as_of}
        stayed = sum(c for (s, d), c in pairs.items() if s == d)
        total = sum(pairs.values())
        assert abs((total - stayed) / total - m) <= binomial_tolerance(m, total)
        for src, row in q.items():
            movers = sum(c for (s, d), c in pairs.items() if s == src and d != src)
            for dst, p in row.items():
                if dst == src:
                    continue
                observed = pairs.get((src, dst), 0) / movers
                assert abs(observed - p) <= binomial_tolerance(p, movers), (src, dst)


# --------------------------------------------------------------------------------------------
# shapes


@pytest.mark.parametrize("domain", DOMAINS)
def test_events_and_truth_stay_inside_each_customers_active_life(
    spark: SparkSession, settings: SynthSettings, domain: str
) -> None:
    size = 80 if domain == "energy" else 300
    data = gen(spark, settings, domain, customers=size)
    life = data.lifecycle
    late = life.where(F.col("signup_date") > F.lit(JAN)).count()
    lapsed = life.where(F.col("lapse_date").isNotNull()).count()
    assert late > 0 and lapsed > 0  # the check below is not vacuous
    time_col = "reading_time" if domain == "energy" else "event_time"
    day = F.to_date(F.col(time_col))
    outside = (
        data.events.join(life, "customer_id")
        .where(
            (day < F.col("signup_date"))
            | (day >= F.col("lapse_date"))
            | (day < F.lit(JAN))
            | (day > F.lit(MAR_END))
        )
        .count()
    )
    assert outside == 0
    truth_outside = (
        data.truth.join(life, "customer_id")
        .where((F.col("as_of") < F.col("signup_date")) | (F.col("as_of") >= F.col("lapse_date")))
        .count()
    )
    assert truth_outside == 0
    # Customers who joined late still produce events once they are active.
    joined = life.where(F.col("signup_date") > F.lit(JAN)).select("customer_id")
    assert data.events.join(joined, "customer_id").select("customer_id").distinct().count() > 0


def test_meter_readings_fill_the_interval_grid(
    spark: SparkSession, settings: SynthSettings
) -> None:
    quarter = settings.model_copy(
        update={"energy": settings.energy.model_copy(update={"interval_minutes": 15})}
    )
    data = gen(spark, quarter, "energy", customers=12, end=dt.date(2024, 1, 31))
    readings = data.events
    total = readings.count()
    off_grid = readings.where(F.unix_timestamp("reading_time") % 900 != 0).count()
    distinct = readings.select("customer_id", "reading_time").distinct().count()
    expected_days = 0
    for r in data.lifecycle.collect():
        first = max(r.signup_date, JAN)
        last = min(dt.date(2024, 1, 31), (r.lapse_date or dt.date.max) - dt.timedelta(days=1))
        expected_days += max(0, (last - first).days + 1)
    assert off_grid == 0
    assert distinct == total == expected_days * 96
    assert readings.where(F.col("kwh") <= 0).count() == 0


def test_retail_purchase_rates_follow_the_segments(
    spark: SparkSession, settings: SynthSettings
) -> None:
    """Mean February purchases per customer active all month match each segment's rate."""
    data = gen(spark, settings, "retail", customers=3000, seed=3)
    feb = data.truth.where(F.col("as_of") == F.lit(FEB_END)).join(data.lifecycle, "customer_id")
    whole = feb.where(
        (F.col("signup_date") < F.lit(dt.date(2024, 2, 1)))
        & (F.col("lapse_date").isNull() | (F.col("lapse_date") > F.lit(FEB_END)))
    )
    bought = (
        data.events.where(F.month("event_time") == 2)
        .groupBy("customer_id")
        .agg(F.count("*").alias("n"))
    )
    stats = (
        whole.join(bought, "customer_id", "left")
        .fillna(0, ["n"])
        .groupBy("true_segment")
        .agg(F.mean("n").alias("mean"), F.stddev("n").alias("sd"), F.count("*").alias("k"))
        .collect()
    )
    cfg = settings.retail
    weekday = cfg.weekday_weights
    feb_days = [dt.date(2024, 2, d) for d in range(1, 30)]
    # Expected count: rate per average month x February's share of a month, each day weighted
    # by its weekday (thinning) and the month factor; the customer multipliers have mean 1.
    day_weight = sum(weekday[d.weekday()] / (sum(weekday) / 7) for d in feb_days)
    assert {r.true_segment for r in stats} == set(cfg.segments)
    for r in stats:
        seg = cfg.segments[r.true_segment]
        expected = seg.purchases_per_month * day_weight / (365.25 / 12) * cfg.month_factors[1]
        assert abs(r["mean"] - expected) <= Z * r.sd / math.sqrt(r.k), r.true_segment


def test_telecom_usage_mix_night_and_international_shares_follow_the_segments(
    spark: SparkSession, settings: SynthSettings
) -> None:
    data = gen(spark, settings, "telecom", customers=120, end=dt.date(2024, 1, 31), seed=4)
    seg_of = data.truth.select("customer_id", "true_segment")
    night = F.hour("event_time").isin(22, 23, 0, 1, 2, 3, 4, 5)
    talk = F.col("event_type").isin("voice", "sms")
    rows = (
        data.events.join(seg_of, "customer_id")
        .groupBy("true_segment")
        .agg(
            F.count("*").alias("n"),
            F.sum(night.cast("int")).alias("night"),
            F.sum((F.col("event_type") == "data").cast("int")).alias("data"),
            F.sum(talk.cast("int")).alias("talk"),
            F.sum((talk & F.col("is_international")).cast("int")).alias("intl"),
        )
        .collect()
    )
    # Every event's hour, type and international flag are drawn independently from the
    # configured weights, so these shares are binomial.
    assert {r.true_segment for r in rows} == set(settings.telecom.segments)
    for r in rows:
        seg = settings.telecom.segments[r.true_segment]
        hours = seg.hour_weights
        p_night = sum(hours[h] for h in (22, 23, 0, 1, 2, 3, 4, 5)) / sum(hours)
        p_data = seg.data_per_day / (seg.voice_per_day + seg.sms_per_day + seg.data_per_day)
        assert abs(r.night / r.n - p_night) <= binomial_tolerance(p_night, r.n)
        assert abs(r.data / r.n - p_data) <= binomial_tolerance(p_data, r.n)
        p_intl = seg.intl_share
        assert abs(r.intl / r.talk - p_intl) <= binomial_tolerance(p_intl, r.talk)


def test_energy_load_shapes_follow_the_segments(
    spark: SparkSession, settings: SynthSettings
) -> None:
    data = gen(spark, settings, "energy", customers=60, end=dt.date(2024, 1, 31), seed=6)
    seg_of = data.truth.select("customer_id", "true_segment")
    by_hour = (
        data.events.join(seg_of, "customer_id")
        .groupBy("true_segment", F.hour("reading_time").alias("hour"))
        .agg(F.sum("kwh").alias("s"), F.sum(F.col("kwh") ** 2).alias("s2"))
        .collect()
    )
    sums: dict[str, dict[int, tuple[float, float]]] = {}
    for r in by_hour:
        sums.setdefault(r.true_segment, {})[r.hour] = (r.s, r.s2)
    assert set(sums) == set(settings.energy.segments)
    cv = math.sqrt(math.exp(settings.energy.noise_sigma**2) - 1)
    for name, hours in sums.items():
        seg = settings.energy.segments[name]
        total = sum(s for s, _ in hours.values())
        shape = [w / sum(seg.load_shape) for w in seg.load_shape]
        for hour, (s, s2) in hours.items():
            # Season, weekend and the customer's scale multiply whole days, so the hour's share
            # of the load is the configured shape up to the readings' log-normal noise (mean 1,
            # coefficient of variation cv), whose relative error over a kWh-weighted sum is
            # cv / sqrt(n_eff), n_eff being Kish's effective number of readings.
            n_eff = s * s / s2
            tolerance = Z * cv / math.sqrt(n_eff) * shape[hour]
            assert abs(s / total - shape[hour]) <= tolerance, (name, hour)


def test_energy_sector_follows_the_segment_at_signup(
    spark: SparkSession, settings: SynthSettings
) -> None:
    data = gen(spark, settings, "energy", customers=2000, end=dt.date(2024, 1, 31), seed=8)
    sector_of = F.create_map(
        *[x for n, s in settings.energy.segments.items() for x in (F.lit(n), F.lit(s.sector))]
    )
    # Customers who signed up before the window have their period-0 segment in the January truth.
    joined = (
        data.customers.where(F.col("signup_date") < F.lit(JAN))
        .join(data.truth, "customer_id")
        .select((F.col("sector") == sector_of[F.col("true_segment")]).cast("int").alias("same"))
        .agg(F.sum("same").alias("same"), F.count("*").alias("n"))
        .first()
    )
    assert joined is not None
    # Noise draws a sector uniformly from four, which matches the segment's a quarter of the time.
    expected = 1 - settings.energy.sector_noise * 3 / 4
    assert abs(joined.same / joined.n - expected) <= binomial_tolerance(expected, joined.n)


# --------------------------------------------------------------------------------------------
# the command


def test_generate_command_writes_the_tables_and_is_repeatable(
    cli: Any, lake: Any, spark: SparkSession, settings: SynthSettings
) -> None:
    args = ("generate", "--domain", "retail", "--customers", "40", "--seed", "5")
    code, out, err = cli(*args)
    assert (code, err) == (0, "")
    expected = gen(spark, settings, "retail", customers=40, seed=5)
    counts = {name: frame.count() for name, frame in expected.tables().items()}
    assert out.splitlines() == [
        f"customers: {counts['customers']} rows written (domain retail, version 0)",
        f"transactions: {counts['transactions']} rows written (domain retail, version 0)",
        f"synthetic_truth: {counts['synthetic_truth']} rows written (domain retail, version 0)",
    ]
    for name, frame in expected.tables().items():
        assert_same_rows(lake.read(name).select(*frame.columns), frame)

    code, out, _ = cli("generate", "--domain", "energy", "--customers", "3", "--end", "2024-01-31")
    assert code == 0 and "meter_readings: " in out
    code, out, _ = cli(*args)
    assert code == 0
    assert out.splitlines()[0] == (
        f"customers: {counts['customers']} rows written (domain retail, version 2)"
    )
    # Re-running replaced only the retail partitions, with identical content.
    for name in ("customers", "synthetic_truth"):
        assert_same_rows(lake.read(name, version=1), lake.read(name))
        assert lake.read(name).where(F.col("domain") == "energy").count() > 0
    assert_same_rows(lake.read("transactions", version=0), lake.read("transactions"))
    assert lake.version("transactions") == 1


def test_generate_command_rejects_bad_arguments(cli: Any, lake_root: Any) -> None:
    code, _, err = cli("generate", "--domain", "retail", "--customers", "0")
    assert code == 2
    assert err.strip() == "segspark: error: customers must be a positive integer, got 0"
    code, _, err = cli("generate", "--domain", "retail", "--customers", "5", "--start", "2024-13")
    assert code == 2 and "not an ISO date" in err
    assert list(lake_root.iterdir()) == []
