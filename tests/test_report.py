"""``segspark report``: one self-contained HTML page, checked as text and in headless Chromium.

The lake holds two retail snapshots (2024-02-29, 2024-03-31) and a later telecom one, written
with the DESIGN.md table contract: three retail segments, the third withheld (fewer than
``privacy.min_segment_size`` = 10 customers), a migration matrix with two flows too small to show
(and one more hidden so that the small ones cannot be derived from a segment's total), and
drift rows on both sides of ``snapshots.psi_moderate`` (0.10) and ``psi_retrain`` (0.25).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from segspark.errors import UsageError
from segspark.lake import Lake
from segspark.report import (
    SECTION_TITLES,
    ReportOptions,
    drift_flag,
    format_share,
    format_value,
    heat_color,
    k_metrics_from_histories,
    normalise_k_metrics,
)

Cli = Callable[..., tuple[int, str, str]]

D1, D2, D3 = dt.date(2024, 2, 29), dt.date(2024, 3, 31), dt.date(2024, 4, 30)
TRICKY = 'Big <Spenders> & "Co"'
SECRET_IDS = ["CUST-SECRET-0001", "CUST-SECRET-0002", "CUST-SECRET-0003", "TEL-SECRET-0009"]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_TIMEOUT_S = 120

SNAPSHOTS = (
    "domain string, as_of date, customer_id string, segment_id int, segment_name string, "
    "model_name string, model_version string, run_id string"
)
PROFILES = (
    "domain string, as_of date, segment_id int, segment_name string, customers long, "
    "share double, value double, value_share double, withheld boolean"
)
FEATURE_PROFILES = (
    "domain string, as_of date, segment_id int, feature string, mean double, z_score double"
)
MATRIX = (
    "domain string, from_as_of date, to_as_of date, from_segment_id int, to_segment_id int, "
    "customers long, share_of_from double, value double"
)
DRIFT = "domain string, from_as_of date, to_as_of date, kind string, name string, psi double"

# (segment_id, feature, mean, z_score) at D2; segment 2 is withheld (nulls).
SCORES = [
    (0, "recency_days", 8.5, -1.10),
    (0, "frequency", 14.0, 1.85),
    (0, "monetary_total", 422.83, 2.31),
    (0, "basket_size", 3.1, 0.12),
    (1, "recency_days", 61.0, 0.40),
    (1, "frequency", 2.0, -0.95),
    (1, "monetary_total", 12.5, -1.20),
    (1, "basket_size", 2.9, 0.05),
    (2, "recency_days", None, None),
    (2, "frequency", None, None),
    (2, "monetary_total", None, None),
    (2, "basket_size", None, None),
]
# (from_segment_id, to_segment_id, customers, share_of_from) between D1 and D2.
FLOWS = [
    (0, 0, 1000, 0.909),
    (0, 1, 60, 0.0545),
    (0, None, 40, 0.0364),
    (1, 1, 640, 0.8101),
    (1, None, 150, 0.1899),
    (None, 0, 180, None),
    (None, 1, 52, None),
    (2, 2, 3, 0.6),
    (2, 0, 2, 0.4),
]
K_ROWS = [
    {"k": 2, "silhouette": 0.41, "calinski_harabasz": 812.0, "davies_bouldin": 0.92,
     "wssse": 5400.0, "stability_ari": 0.88},
    {"k": 3, "silhouette": 0.52, "calinski_harabasz": 1020.5, "davies_bouldin": 0.71,
     "wssse": 3100.0, "stability_ari": 0.91},
    {"k": 4, "silhouette": 0.47, "calinski_harabasz": 990.0, "davies_bouldin": 0.80,
     "wssse": 2500.0, "stability_ari": 0.79},
    {"k": 5, "silhouette": 0.39, "calinski_harabasz": 940.0, "davies_bouldin": 0.95,
     "wssse": 2200.0, "stability_ari": 0.70},
]  # fmt: skip


def _build_lake(lake: Lake, *, history: bool = True) -> None:
    """The five segment tables; ``history=False``: only the retail snapshot of D1."""
    spark = lake.spark
    dates = [D1, D2] if history else [D1]
    snaps = [
        ("retail", d, cid, sid, name, "segspark-retail", "1", "run-1")
        for d in dates
        for cid, sid, name in [
            (SECRET_IDS[0], 0, "High-Value Loyal"),
            (SECRET_IDS[1], 1, TRICKY),
            (SECRET_IDS[2], 2, "Small"),
        ]
    ]
    if history:
        snaps.append(
            ("telecom", D3, SECRET_IDS[3], 0, "Telecom Only", "segspark-telecom", "1", "r")
        )
    lake.write(
        "segment_snapshots",
        spark.createDataFrame(snaps, SNAPSHOTS),
        partition_by=["domain", "as_of"],
    )
    profiles = [
        ("retail", D1, 0, "High-Value Loyal", 1100, 0.55, 450000.0, 0.69, False),
        ("retail", D1, 1, TRICKY, 890, 0.445, 201000.0, 0.31, False),
        ("retail", D1, 2, "Small", None, None, None, None, True),
    ]
    if history:
        profiles += [
            ("retail", D2, 0, "High-Value Loyal", 1240, 0.62, 524310.25, 0.7312, False),
            ("retail", D2, 1, TRICKY, 752, 0.376, 192700.0, 0.2688, False),
            ("retail", D2, 2, "Small", None, None, None, None, True),
            ("telecom", D3, 0, "Telecom Only", 5000, 1.0, None, None, False),
        ]
    lake.write(
        "segment_profiles",
        spark.createDataFrame(profiles, PROFILES),
        partition_by=["domain", "as_of"],
    )
    scores = [("retail", dates[-1], *row) for row in SCORES]
    if history:
        scores.append(("telecom", D3, 0, "sms_per_day", 3.0, 0.0))
    lake.write(
        "segment_feature_profiles",
        spark.createDataFrame(scores, FEATURE_PROFILES),
        partition_by=["domain", "as_of"],
    )
    if not history:
        return
    lake.write(
        "segment_migration_matrix",
        spark.createDataFrame(
            [("retail", D1, D2, f, t, n, s, None) for f, t, n, s in FLOWS]
            + [("telecom", D2, D3, 0, 0, 4999, 1.0, None)],
            MATRIX,
        ),
        partition_by=["domain", "from_as_of", "to_as_of"],
    )
    lake.write(
        "segment_drift",
        spark.createDataFrame(
            [
                ("retail", D1, D2, "share", "segment_id", 0.031),
                ("retail", D1, D2, "feature", "monetary_total", 0.27),
                ("retail", D1, D2, "feature", "recency_days", 0.12),
                ("retail", D1, D2, "feature", "basket<size>", 0.01),
                ("telecom", D2, D3, "feature", "sms_per_day", 0.9),
            ],
            DRIFT,
        ),
        partition_by=["domain", "from_as_of", "to_as_of"],
    )


def _card(page: str, segment_id: int) -> str:
    match = re.search(
        rf'<article class="card[^"]*" data-segment="{segment_id}">(.*?)</article>', page, re.S
    )
    assert match, f"no card for segment {segment_id}"
    return match.group(1)


def _section(page: str, key: str) -> str:
    match = re.search(rf'<section id="{key}">(.*?)</section>', page, re.S)
    assert match, f"no section {key}"
    return match.group(1)


def _report(cli: Cli, tmp_path: Path, *args: str) -> tuple[str, str]:
    out = tmp_path / "report.html"
    k_file = tmp_path / "k_metrics.json"
    k_file.write_text(json.dumps(K_ROWS))
    code, stdout, stderr = cli(
        "report", "--domain", "retail", "--out", str(out), "--k-metrics", str(k_file), *args
    )
    assert (code, stderr) == (0, ""), stderr
    return out.read_text(encoding="utf-8"), stdout


# --- the page as text --------------------------------------------------------------------------


def test_report_defaults_to_the_domains_latest_snapshot(
    lake: Lake, cli: Cli, tmp_path: Path
) -> None:
    _build_lake(lake)
    page, stdout = _report(cli, tmp_path)
    out = tmp_path / "report.html"
    assert stdout == f"report for retail @ 2024-03-31: 3 segments (1 withheld) -> {out}\n"
    assert "<title>Customer segments: retail, 2024-03-31</title>" in page
    assert "Snapshot of 2024-03-31; compared with 2024-02-29." in page


def test_report_has_every_section_title_in_order(lake: Lake, cli: Cli, tmp_path: Path) -> None:
    _build_lake(lake)
    # The heatmap follows the configured feature order (asserted below), whatever conf/ says.
    order = "model.features=[recency_days, frequency, monetary_total, basket_size]"
    page, _ = _report(cli, tmp_path, "--chosen-k", "3", "--set", order)
    positions = [
        page.index(f'<section id="{key}"><h2>{title}</h2>') for key, title in SECTION_TITLES.items()
    ]
    assert positions == sorted(positions)
    assert list(SECTION_TITLES.values()) == [
        "Segments",
        "Segment sizes over time",
        "Profile heatmap",
        "Segment migration",
        "Drift",
        "Choosing the number of segments (k selection)",
    ]

    # Cards: exact figures, top three features by |z|, and no aggregates for the withheld one.
    first = _card(page, 0)
    assert "High-Value Loyal</h3>" in first
    for label, text in [
        ("Customers", "1,240"),
        ("Share of customers", "62.0%"),
        ("Value (sum of monetary_total, currency)", "524,310"),
        ("Share of value", "73.1%"),
    ]:
        assert f"<dt>{label}</dt><dd>{text}</dd>" in first
    features = re.findall(
        r'<span class="feature"[^>]*>([^<]+)</span> <span class="z">z ([^<]+)<', first
    )
    assert features == [
        ("monetary total", "+2.31"),
        ("frequency", "+1.85"),
        ("recency days", "-1.10"),
    ]
    assert "(above average, mean 423)" in first
    second = _card(page, 1)
    assert "Big &lt;Spenders&gt; &amp; &quot;Co&quot;</h3>" in second
    for label, text in [
        ("Customers", "752"),
        ("Share of customers", "37.6%"),
        ("Share of value", "26.9%"),
    ]:
        assert f"<dt>{label}</dt><dd>{text}</dd>" in second
    assert "192,700" in second
    withheld = _card(page, 2)
    assert 'class="card withheld"' in page
    assert "withheld for privacy (fewer than 10 customers" in withheld
    assert "<dl" not in withheld and "z " not in withheld and "%" not in withheld

    # Sizes: one bar per visible (date, segment); the withheld segment is not drawn.
    sizes = _section(page, "sizes")
    assert sizes.count('class="size-bar"') == 4
    assert "High-Value Loyal at 2024-02-29: 1,100 customers" in sizes
    assert "High-Value Loyal at 2024-03-31: 1,240 customers" in sizes
    assert 'data-segment="2"' not in sizes

    # Heatmap: two visible segments x four features, in the configured feature order.
    heat = _section(page, "heatmap")
    assert heat.count('class="heat-cell"') == 8
    columns = re.findall(r'class="axis col-label"[^>]*>(?:<title>.*?</title>)?([^<]+)</text>', heat)
    assert columns == ["recency days", "frequency", "monetary total", "basket size"]
    assert "High-Value Loyal, monetary total: z +2.31" in heat

    # Migration: six flows drawn; the two below 10 customers (out of the withheld segment) are
    # left out, and so is the smallest other flow into High-Value Loyal (New customers, 180),
    # else 2 = its size minus its shown inflows would give away the Small -> High-Value flow.
    migration = _section(page, "migration")
    assert migration.count('class="flow"') == 6
    titles = re.findall(r'<path class="flow"[^>]*><title>([^<]+)</title>', migration)
    assert sorted(html.unescape(t) for t in titles) == sorted(
        [
            "High-Value Loyal → High-Value Loyal: 1,000 customers",
            f"High-Value Loyal → {TRICKY}: 60 customers",
            "High-Value Loyal → Lapsed: 40 customers",
            f"{TRICKY} → {TRICKY}: 640 customers",
            f"{TRICKY} → Lapsed: 150 customers",
            f"New customers → {TRICKY}: 52 customers",
        ]
    )
    table_rows = re.findall(
        r'<tr class="flow-row"><td>([^<]*)</td><td>([^<]*)</td><td class="num">([^<]*)</td>'
        r'<td class="num">([^<]*)</td></tr>',
        migration,
    )
    assert [tuple(html.unescape(c) for c in row) for row in table_rows] == [
        ("High-Value Loyal", "High-Value Loyal", "1,000", "90.9%"),
        (TRICKY, TRICKY, "640", "81.0%"),
        (TRICKY, "Lapsed", "150", "19.0%"),
        ("High-Value Loyal", TRICKY, "60", "5.5%"),
        ("New customers", TRICKY, "52", ""),
        ("High-Value Loyal", "Lapsed", "40", "3.6%"),
    ]
    assert "3 flow(s) are not shown: flows of fewer than 10 customers, flows of" in migration
    assert "New customers (52)" in migration and "Lapsed (190)" in migration

    # Drift: retail rows only, largest PSI first, flagged against both thresholds.
    drift = re.findall(
        r'<tr class="drift-row([^"]*)"><td>([^<]*)</td><td>([^<]*)</td><td class="num">'
        r"([^<]*)</td><td>([^<]*)</td></tr>",
        _section(page, "drift"),
    )
    assert drift == [
        (" flagged significant", "feature", "monetary_total", "0.270",
         "significant shift (retraining recommended)"),
        (" flagged moderate", "feature", "recency_days", "0.120", "moderate shift"),
        ("", "share", "segment_id", "0.031", ""),
        ("", "feature", "basket&lt;size&gt;", "0.010", ""),
    ]  # fmt: skip

    # k selection: one curve per metric, one point per k, the chosen k marked.
    k_section = _section(page, "k-selection")
    assert k_section.count('class="k-curve"') == 5
    assert k_section.count('class="k-point"') == 20
    assert k_section.count('class="chosen"') == 5
    assert re.findall(r'data-metric="([a-z_]+)"', k_section) == [
        "silhouette", "calinski_harabasz", "davies_bouldin", "wssse", "stability_ari",
    ]  # fmt: skip
    assert "<title>k = 3: silhouette 0.52</title>" in k_section
    assert (
        '<tr class=chosen-k><td class="num">3</td><td class="num">0.52</td>'
        '<td class="num">1020</td><td class="num">0.71</td><td class="num">3100</td>'
        '<td class="num">0.91</td></tr>'
    ) in k_section


def test_report_is_self_contained_and_holds_no_customer_data(
    lake: Lake, cli: Cli, tmp_path: Path
) -> None:
    _build_lake(lake)
    page, _ = _report(cli, tmp_path)
    assert "http://" not in page and "https://" not in page
    assert "//" not in page  # not even a protocol-relative address
    assert re.search(r"<(script|link|img|iframe|object|embed)\b", page) is None
    assert re.search(r"\b(src|href)\s*=", page) is None
    assert "@import" not in page and "url(" not in page
    for secret in SECRET_IDS:
        assert secret not in page
    assert "Telecom Only" not in page and "sms_per_day" not in page
    assert TRICKY not in page and "<Spenders>" not in page and "basket<size>" not in page


# --- the page in a browser ---------------------------------------------------------------------

_PROBE = """<script>
const drawn = {};
for (const cls of ["size-bar", "heat-cell", "sankey-node", "flow", "k-curve", "k-point"]) {
  drawn[cls] = [...document.querySelectorAll("svg ." + cls)].filter((el) => {
    const box = el.getBoundingClientRect();
    return box.width > 0 && box.height > 0;
  }).length;
}
drawn.svg = [...document.querySelectorAll("svg")].filter(
  (el) => el.getBoundingClientRect().width > 100).length;
document.body.setAttribute("data-drawn", JSON.stringify(drawn));
</script></body>"""


def _chromium() -> Path:
    if CHROMIUM.is_file():
        return CHROMIUM
    reason = f"headless Chromium is not installed ({CHROMIUM}; Debian: apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must render the report")
    pytest.skip(reason)


def _run_chromium(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(_chromium()),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / f'profile-{name}'}",
        *args,
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium {name} did not finish in {CHROMIUM_TIMEOUT_S} s")
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _hex(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def test_report_renders_its_charts_in_headless_chromium(
    lake: Lake, cli: Cli, tmp_path: Path
) -> None:
    _chromium()
    _build_lake(lake)
    page, _ = _report(cli, tmp_path, "--chosen-k", "3")

    # The report has no script of its own: a copy with a probe measures the laid-out elements.
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE), encoding="utf-8")
    dom = _run_chromium(tmp_path, "dom", "--dump-dom", probe.as_uri()).stdout
    match = re.search(r'data-drawn="([^"]+)"', dom)
    assert match, dom[:500]
    assert json.loads(html.unescape(match.group(1))) == {
        "size-bar": 4,
        "heat-cell": 8,
        "sankey-node": 6,
        "flow": 6,
        "k-curve": 5,
        "k-point": 20,
        "svg": 8,
    }

    from PIL import Image

    shot = tmp_path / "report.png"
    _run_chromium(
        tmp_path,
        "shot",
        "--hide-scrollbars",
        "--window-size=1280,4200",
        f"--screenshot={shot}",
        (tmp_path / "report.html").as_uri(),
    )
    with Image.open(shot) as image:
        assert image.size == (1280, 4200)
        colors = {rgb for _, rgb in image.convert("RGB").getcolors(maxcolors=1 << 20) or []}
    # Segment 0's bars and nodes, and the strongest heatmap cells (z +2.31, z -1.20) are painted.
    for color in ("#4e79a7", heat_color(2.31)[0], heat_color(-1.20)[0]):
        assert _hex(color) in colors, color
    assert len(colors) > 200


# --- notes, errors and helpers -----------------------------------------------------------------


def test_report_of_a_first_snapshot_notes_what_it_cannot_show(
    lake: Lake, cli: Cli, tmp_path: Path
) -> None:
    _build_lake(lake, history=False)
    out = tmp_path / "first.html"
    code, stdout, stderr = cli("report", "--domain", "retail", "--out", str(out))
    assert (code, stderr) == (0, "")
    assert stdout == f"report for retail @ 2024-02-29: 3 segments (1 withheld) -> {out}\n"
    page = out.read_text(encoding="utf-8")
    assert (
        '<p class="note">2024-02-29 is the first snapshot: there is no migration to show yet.</p>'
    ) in _section(page, "migration")
    assert "there is no drift to measure yet" in _section(page, "drift")
    assert "No k-selection metrics were given" in _section(page, "k-selection")
    assert "<svg" not in _section(page, "k-selection")
    assert "<dt>Customers</dt><dd>1,100</dd>" in _card(page, 0)


def test_report_at_a_date_without_a_snapshot_is_a_usage_error(
    lake: Lake, cli: Cli, tmp_path: Path
) -> None:
    _build_lake(lake, history=False)
    out = tmp_path / "r.html"
    code, stdout, stderr = cli(
        "report", "--domain", "retail", "--as-of", "2024-01-31", "--out", str(out)
    )
    assert (code, stdout) == (2, "")
    assert stderr == (
        "segspark: error: no segment snapshot for retail at 2024-01-31 "
        "(latest snapshots: 2024-02-29)\n"
    )
    assert not out.exists()


def test_report_without_segment_tables_is_a_one_line_usage_error(
    cli: Cli, lake_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r.html"
    code, stdout, stderr = cli("report", "--domain", "retail", "--out", str(out))
    assert (code, stdout) == (2, "")
    assert stderr == (
        f"segspark: error: table 'segment_snapshots' does not exist in the lake {lake_root}\n"
    )
    assert not out.exists() and list(tmp_path.glob(".r.html*")) == []


def test_report_rejects_bad_k_metrics_before_reading_the_lake(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "k.json"
    bad.write_text(json.dumps([{"k": 2, "silhouette": 0.4}, {"k": 2, "silhouette": 0.5}]))
    code, _, stderr = cli(
        "report", "--domain", "retail", "--out", str(tmp_path / "r.html"), "--k-metrics", str(bad)
    )
    assert (code, stderr) == (2, "segspark: error: k metrics: k=2 appears twice\n")
    bad.write_text("{not json")
    code, _, stderr = cli(
        "report", "--domain", "retail", "--out", str(tmp_path / "r.html"), "--k-metrics", str(bad)
    )
    assert code == 2
    assert stderr.startswith(f"segspark: error: --k-metrics {bad} is not valid JSON:")


def test_report_refuses_an_out_folder_that_does_not_exist(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "missing" / "r.html"
    code, _, stderr = cli("report", "--domain", "retail", "--out", str(out))
    assert (code, stderr) == (
        2,
        f"segspark: error: --out {out}: folder {out.parent} does not exist\n",
    )


def test_k_metrics_are_validated_and_sorted_by_k() -> None:
    rows: list[dict[str, Any]] = [
        {"k": "3", "silhouette": "0.5", "wssse": "", "run_id": "x"},
        {"k": 2.0, "silhouette": 0.4, "davies_bouldin": float("nan")},
    ]
    assert normalise_k_metrics(rows) == [
        {"k": 2.0, "silhouette": 0.4},
        {"k": 3.0, "silhouette": 0.5},
    ]
    with pytest.raises(UsageError, match=r"k metrics row 1 has no integer k: 2\.5"):
        normalise_k_metrics([{"k": 2.5}])
    with pytest.raises(UsageError, match="k metrics row 1: silhouette is not a number: 'high'"):
        normalise_k_metrics([{"k": 2, "silhouette": "high"}])


def test_k_metrics_from_mlflow_histories_use_the_step_as_k() -> None:
    histories = {
        "silhouette": [(3, 0.5), (2, 0.4), (3, 0.55)],
        "wssse": [(2, 9.0)],
        "chosen_k": [(0, 3.0)],
    }
    assert k_metrics_from_histories(histories) == [
        {"k": 2.0, "silhouette": 0.4, "wssse": 9.0},
        {"k": 3.0, "silhouette": 0.55},
    ]


def test_drift_flags_and_number_formats() -> None:
    options = ReportOptions(
        min_segment_size=10, psi_moderate=0.10, psi_retrain=0.25, top_features=3
    )
    assert [drift_flag(p, options) for p in (None, 0.05, 0.10, 0.11, 0.25, 0.26)] == [
        "", "", "", "moderate", "moderate", "significant",
    ]  # fmt: skip
    assert [format_value(v) for v in (524310.25, 99.5, -1234.5, 0.125)] == [
        "524,310", "99.50", "-1,234", "0.12",
    ]  # fmt: skip
    assert format_share(0.7312) == "73.1%"
