"""W3 end to end: ``segspark demo`` timed phase by phase.

Each run starts ``segspark --lake <fresh folder> demo`` as a subprocess and reads its progress
lines (``[cumulative s] domain stage detail (stage s)``). Per run it reports every stage's
seconds (generate, one ``run`` per as_of date, report), the gaps between stages (the first gap
is the SparkSession start; the later ones print the profile and migration tables), the time
before the first progress line and after the last one (interpreter start and imports, exit),
the whole wall time, and the peak RSS of the process tree (Python + JVM). No peer runs the
same job; the figures are segspark's own, median over ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import common

log = logging.getLogger("bench.w3")

WORKLOAD = "w3"
_LINE = re.compile(
    r"^\[\s*(?P<at>[\d.]+)s\] (?P<domain>\S+)\s+(?P<stage>\S+)\s+(?P<detail>.*) "
    r"\((?P<took>[\d.]+)s\)$"
)


def phases(stdout: str, wall_s: float) -> list[tuple[str, float, str]]:
    """``(phase, seconds, detail)`` from the demo's progress lines, gaps and edges included."""
    out: list[tuple[str, float, str]] = []
    previous = 0.0
    seen: dict[tuple[str, str], int] = {}
    for line in stdout.splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        at, took = float(match["at"]), float(match["took"])
        domain, stage = match["domain"], match["stage"]
        gap = max(0.0, at - took - previous)
        if not out:
            out.append(("session start", gap, "SparkSession and lake before the first stage"))
        elif gap > 0.05:
            out.append((f"{domain} before {stage}", gap, "printing tables, settings"))
        seen[(domain, stage)] = seen.get((domain, stage), 0) + 1
        name = f"{domain} {stage}"
        if stage == "run":
            name += f" #{seen[(domain, stage)]}"
        out.append((name, took, match["detail"].strip()))
        previous = at
    if out:
        out.append(("start-up and exit", max(0.0, wall_s - previous), "interpreter, imports"))
    return out


def run_demo(customers: int | None, scratch: Path) -> common.Measurement:
    lake = Path(tempfile.mkdtemp(prefix="demo-", dir=scratch))
    argv = [*common.segspark_command(), "--lake", str(lake), "demo"]
    if customers is not None:
        argv += ["--customers", str(customers)]
    try:
        m = common.timed_subprocess(argv)
    finally:
        shutil.rmtree(lake, ignore_errors=True)
    m.extra["phases"] = phases(m.extra.pop("stdout"), m.seconds)
    return m


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench w3", description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=1, help="demo runs (default 1)")
    p.add_argument(
        "--customers", type=int, default=None, help="customers per domain (default: the demo's)"
    )
    p.add_argument("--name", default=WORKLOAD, help="results file name (default w3)")
    p.add_argument("--data-dir", type=Path, default=common.DATA, help="scratch folder")
    return p


def render(payload: dict[str, Any]) -> str:
    rows = [
        [name, p["median_s"], common.tenths(p["runs_s"]), p["detail"]]
        for name, p in payload["phases"].items()
    ]
    total = payload["total"]
    rows.append(["**total (wall)**", total["median_s"], common.tenths(total["runs_s"]), ""])
    return (
        common.markdown_table(["phase", "median s", "runs (s)", "detail"], rows)
        + f"\n\nPeak RSS of the demo process tree: {total['peak_rss_mib']['total']:.0f} MiB "
        f"(JVM {total['peak_rss_mib']['jvm']:.0f}, Python {total['peak_rss_mib']['python']:.0f}).\n"
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-w3-", dir=args.data_dir))
    try:
        runs = common.alternate([("demo", lambda: run_demo(args.customers, scratch))], args.repeat)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    demo_runs = runs["demo"]
    payload = common.envelope(WORKLOAD, argv)
    collected: dict[str, dict[str, Any]] = {}
    for m in demo_runs:
        for name, seconds, detail in m.extra["phases"]:
            entry = collected.setdefault(name, {"runs_s": [], "detail": detail})
            entry["runs_s"].append(round(seconds, 2))
    for entry in collected.values():
        entry["median_s"] = round(common.median(entry["runs_s"]), 2)
    payload["phases"] = collected
    payload["total"] = common.summarize(runs)["demo"]
    common.write_json(args.name, payload)
    common.write_markdown(
        args.name, "W3 end to end: segspark demo phases", payload, render(payload)
    )
    print(render(payload))
    return 0
