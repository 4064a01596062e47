"""Scale curve: W1 at 10^7, 3·10^7 and 10^8 transactions; time per row and driver memory.

For each size it runs W1's ``segspark agg`` (warm session, the aggregation alone), ``duckdb agg``
(the peer, for the ratio) and ``segspark step`` (``segspark features`` as a process, JVM start
included), alternately, in fresh engines per size (each in-process engine warmed up by
untimed runs until its time settles, as in W1), and reports nanoseconds per transaction and
the peak resident set size of the driver (its Python process plus its JVM, sampled every
0.1 s during each run). Flatness is the largest over the smallest time per row (goal: <= 1.2)
and the largest over the smallest peak memory.

``--reuse`` takes sizes already measured in ``bench/results/w1.json`` (same contenders) from
there instead of running them again.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from bench import common, w1_features

log = logging.getLogger("bench.scale")

WORKLOAD = "scale"
CONTENDERS = ("segspark agg", "duckdb agg", "segspark step")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__.split("\n")[0])
    p.add_argument("--rows", default="1e7,3e7,1e8", help="sizes (default 1e7,3e7,1e8)")
    p.add_argument("--repeat", type=int, default=3, help="timed rounds per size (default 3)")
    p.add_argument(
        "--reuse", action="store_true", help="take sizes already in bench/results/w1.json"
    )
    p.add_argument("--no-check", action="store_true", help="skip the equality check")
    p.add_argument("--name", default=WORKLOAD, help="results file name (default scale)")
    p.add_argument("--data-dir", type=Path, default=common.DATA, help="generated data cache")
    return p


def _reusable(rows: int) -> dict[str, Any] | None:
    path = common.RESULTS / "w1.json"
    if not path.exists():
        return None
    payload = json.loads(path.read_text())
    label = f"retail-{common.rows_label(rows)}"
    for entry in payload.get("datasets", []):
        if entry["dataset"] == label and all(c in entry["results"] for c in CONTENDERS):
            entry = dict(entry)
            entry["from"] = f"w1.json of {payload['date']}"
            return entry
    return None


def curve(datasets: list[dict[str, Any]]) -> dict[str, Any]:
    """Per size: ns/row and peak RSS of each Spark contender; flatness across the sizes."""
    points = []
    for entry in datasets:
        r = entry["results"]
        point: dict[str, Any] = {"dataset": entry["dataset"], "rows": entry["rows"]}
        for name in CONTENDERS:
            if name in r:
                point[name] = {
                    "median_s": r[name]["median_s"],
                    "ns_per_row": r[name]["ns_per_row"],
                    "peak_rss_mib": r[name]["peak_rss_mib"],
                }
        point["segspark agg / duckdb agg"] = entry["ratios"].get("segspark agg / duckdb agg")
        warmup = entry.get("warmup_s", {}).get("segspark agg")
        point["agg_warmup_s"] = None if warmup is None else w1_features.warmup_runs(warmup)
        points.append(point)
    flat: dict[str, Any] = {}
    for name in ("segspark agg", "segspark step"):
        present = [p[name] for p in points if name in p]
        if len(present) < 2:
            continue
        ns = [p["ns_per_row"] for p in present]
        mem = [p["peak_rss_mib"]["total"] for p in present]
        flat[name] = {
            "ns_per_row_max_over_min": round(max(ns) / min(ns), 2),
            "ns_per_row_last_over_first": round(ns[-1] / ns[0], 2),
            "peak_rss_max_over_min": round(max(mem) / min(mem), 2),
        }
    return {"points": points, "flatness": flat}


def render(payload: dict[str, Any]) -> str:
    rows = []
    for p in payload["curve"]["points"]:
        agg, step = p.get("segspark agg"), p.get("segspark step")
        rows.append(
            [
                f"{p['rows']:,}",
                agg and agg["median_s"],
                agg and agg["ns_per_row"],
                agg and round(agg["peak_rss_mib"]["total"]),
                step and step["median_s"],
                step and step["ns_per_row"],
                step and round(step["peak_rss_mib"]["total"]),
                p.get("segspark agg / duckdb agg"),
                common.tenths(p.get("agg_warmup_s") or []),
            ]
        )
    table = common.markdown_table(
        [
            "transactions",
            "agg s",
            "agg ns/row",
            "agg driver peak MiB",
            "step s",
            "step ns/row",
            "step driver peak MiB",
            "agg / DuckDB",
            "agg warm-up runs s (untimed)",
        ],
        rows,
    )
    notes = [
        f"- {name}: time per row max/min {f['ns_per_row_max_over_min']} "
        f"(largest/smallest size {f['ns_per_row_last_over_first']}), "
        f"peak memory max/min {f['peak_rss_max_over_min']}"
        for name, f in payload["curve"]["flatness"].items()
    ]
    return (
        table + "\n\nFlatness (goal: time per row within 1.2, memory flat):\n\n" + "\n".join(notes)
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    sizes = [common.parse_rows(r) for r in args.rows.split(",")]
    payload = common.envelope(WORKLOAD, argv)
    datasets: list[dict[str, Any]] = []
    for rows in sizes:
        reused = _reusable(rows) if args.reuse else None
        if reused is not None:
            log.info("%s: reusing %s", reused["dataset"], reused["from"])
            datasets.append(reused)
            continue
        w1_args = w1_features.parser().parse_args(
            [
                "--rows",
                str(rows),
                "--repeat",
                str(args.repeat),
                "--contenders",
                ",".join(CONTENDERS),
                "--data-dir",
                str(args.data_dir),
                *(["--no-check"] if args.no_check else []),
            ]
        )
        datasets.extend(w1_features.run(w1_args, argv)["datasets"])
    payload["datasets"] = datasets
    payload["curve"] = curve(datasets)
    common.write_json(args.name, payload)
    body = render(payload) + "\n\n" + w1_features.render(payload)
    common.write_markdown(
        args.name, "Scale curve: W1 from 10^7 to 10^8 transactions", payload, body
    )
    print(render(payload))
    return 0
