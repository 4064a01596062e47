"""Reusable pieces of the benchmark harness.

* :class:`Worker`: an engine in its own process (a warm SparkSession, a DuckDB connection...),
  driven by the harness with picklable calls, so each engine's memory is measured apart and the
  harness process stays small.
* :class:`RssSampler`: samples the resident set size of a process and its children (the driver's
  Python process and its JVM) during a run and keeps the peak.
* :func:`alternate`: runs the contenders in turn (A B C A B C ...) and keeps every timing.
* :func:`machine_info`, :func:`write_json`, :func:`markdown_table`, :func:`write_markdown`.
* :func:`ensure_retail_dataset`: generated retail transactions, cached outside the repository.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
#: Generated data lives outside the repository; override with BENCH_DATA.
DATA = Path(os.environ.get("BENCH_DATA", "/work/bench-data"))


# --------------------------------------------------------------------------------------------
# Memory sampling
# --------------------------------------------------------------------------------------------


def _tree_pids(pid: int) -> list[int]:
    try:
        import psutil
    except ImportError:
        return _proc_tree_pids(pid)
    try:
        proc = psutil.Process(pid)
        return [pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.Error:
        return []


def _proc_tree_pids(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            children.setdefault(_parent(int(entry)), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (0 when it is gone)."""
    try:
        import psutil

        try:
            return int(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            return 0
    except ImportError:
        try:
            with open(f"/proc/{pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0


def _executable(pid: int) -> str:
    """The file name of the program ``pid`` runs ("" when it is gone or unreadable)."""
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return ""


def _parent(pid: int) -> int:
    """The parent of ``pid`` (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _is_jvm(pid: int) -> bool:
    return _executable(pid) == "java"


def _shares_a_jvm(pid: int, executable: str) -> bool:
    """Whether ``pid`` (running ``executable``) is a JVM's child that has not yet run its own
    program.

    The JVM starts processes (Spark's Python daemon, Hadoop's shell commands) with
    ``posix_spawn``, whose child shares the JVM's memory until it executes its program: its
    resident set reads as the JVM's whole. A sample taken in that moment counted the JVM twice,
    under the name of the spawning thread (a 3·10^7 step's "Python" peak read 3.6 GiB once in
    nine runs, against 0.9 GiB in the others).
    """
    # while the child becomes its program, /proc may not name its executable at all
    return executable in ("java", "") and _is_jvm(_parent(pid))


class RssSampler:
    """Peak resident set size of process trees, sampled on a background thread.

    ``roots`` returns the root pids to sample at each tick (their children are included, so a
    Python driver's JVM counts). Peaks are kept for the whole tree, the JVM processes and the
    others (Python) separately.

    Example:
        >>> with RssSampler(lambda: [os.getpid()]) as sampler:
        ...     work()
        >>> sampler.peak["total"]
    """

    def __init__(self, roots: Callable[[], Iterable[int]], *, interval_s: float = 0.1) -> None:
        self.roots = roots
        self.interval_s = interval_s
        self.peak = {"total": 0, "jvm": 0, "python": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        jvm = other = 0
        for root in self.roots():
            for pid in _tree_pids(root):
                # read before the size: a spawned child that runs its program in between is
                # skipped or small, never counted at the JVM's size
                executable = _executable(pid)
                if _shares_a_jvm(pid, executable):
                    continue
                size = rss_bytes(pid)
                if executable == "java":
                    jvm += size
                else:
                    other += size
        self.peak["total"] = max(self.peak["total"], jvm + other)
        self.peak["jvm"] = max(self.peak["jvm"], jvm)
        self.peak["python"] = max(self.peak["python"], other)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# --------------------------------------------------------------------------------------------
# Engines in worker processes
# --------------------------------------------------------------------------------------------


def _serve(conn: Any, setup: Callable[[], Any]) -> None:
    state = setup()
    conn.send(("ready", None))
    while True:
        message = conn.recv()
        if message is None:
            break
        func, kwargs = message
        try:
            conn.send(("ok", func(state, **kwargs)))
        except BaseException as exc:  # report, keep serving
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    teardown = getattr(state, "close", None)
    if callable(teardown):
        teardown()


class Worker:
    """An engine kept warm in its own (spawned) process.

    ``setup`` (a module-level function) builds the engine's state in the child; :meth:`call`
    runs ``func(state, **kwargs)`` there and returns its (picklable) result.
    """

    def __init__(self, name: str, setup: Callable[[], Any]) -> None:
        self.name = name
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, setup), name=f"bench-{name}")
        started = time.perf_counter()
        self.process.start()
        status, _ = self._conn.recv()
        self.startup_s = time.perf_counter() - started
        if status != "ready":
            raise RuntimeError(f"worker {name} failed to start")

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def call(self, func: Callable[..., Any], **kwargs: Any) -> Any:
        self._conn.send((func, kwargs))
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"{self.name}: {value}")
        return value

    def close(self) -> None:
        if self.process.is_alive():
            self._conn.send(None)
            self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()


# --------------------------------------------------------------------------------------------
# Alternating runs
# --------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """One timed run: seconds, peak RSS of the measured processes, and anything reported."""

    seconds: float
    peak_rss: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


#: A contender: a name and a callable doing one run and returning its measurement.
Contender = tuple[str, Callable[[], Measurement]]


def alternate(contenders: Sequence[Contender], repeat: int) -> dict[str, list[Measurement]]:
    """Run every contender once per round, in turn, for ``repeat`` rounds (A B A B ...)."""
    runs: dict[str, list[Measurement]] = {name: [] for name, _ in contenders}
    for round_ in range(repeat):
        for name, run in contenders:
            m = run()
            runs[name].append(m)
            log.info(
                "round %d/%d %-22s %8.2f s  peak %s MiB",
                round_ + 1,
                repeat,
                name,
                m.seconds,
                m.peak_rss.get("total", 0) // 2**20,
            )
    return runs


def timed_call(worker: Worker, func: Callable[..., Any], **kwargs: Any) -> Measurement:
    """Run ``func`` in ``worker``: wall time measured inside the worker, RSS sampled outside.

    ``func`` returns ``(seconds, extra)``.
    """
    with RssSampler(lambda: [worker.pid]) as sampler:
        seconds, extra = worker.call(func, **kwargs)
    return Measurement(seconds, dict(sampler.peak), extra)


def timed_subprocess(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None
) -> Measurement:
    """Run a command; its wall time (process start included) and its tree's peak RSS."""
    merged = {**os.environ, **(env or {})}
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(argv),
        env=merged,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with RssSampler(lambda: [proc.pid]) as sampler:
        out, err = proc.communicate()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {proc.returncode}: {err.strip().splitlines()[-5:]}"
        )
    return Measurement(seconds, dict(sampler.peak), {"stdout": out})


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def summarize(runs: Mapping[str, list[Measurement]]) -> dict[str, dict[str, Any]]:
    """Median seconds, every run's seconds and the peak RSS over the runs, per contender."""
    out: dict[str, dict[str, Any]] = {}
    for name, ms in runs.items():
        if not ms:
            continue
        out[name] = {
            "median_s": round(median(m.seconds for m in ms), 3),
            "runs_s": [round(m.seconds, 3) for m in ms],
            "peak_rss_mib": {
                key: round(max(m.peak_rss.get(key, 0) for m in ms) / 2**20, 1)
                for key in ("total", "jvm", "python")
            },
        }
    return out


# --------------------------------------------------------------------------------------------
# Machine, results
# --------------------------------------------------------------------------------------------


def _version(module: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _java_version() -> str | None:
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (out.stderr or out.stdout).strip().splitlines()
    return lines[0] if lines else None


def machine_info() -> dict[str, Any]:
    """Cores, RAM, CPU model, load and the versions of the engines compared."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(_ram_bytes() / 2**30, 1),
        "cpu_model": _cpu_model(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "java": _java_version(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
        "versions": {
            name: _version(name)
            for name in ("pyspark", "deltalake", "duckdb", "polars", "scikit-learn", "pyarrow")
        },
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "segspark"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
    except OSError:
        return None
    commit = out.stdout.strip() or None
    if commit and dirty.stdout.strip():
        commit += "+dirty"
    return commit


def _segspark_source() -> str | None:
    """Where the measured segspark is imported from (the commit above is the repo's)."""
    import importlib.util

    spec = importlib.util.find_spec("segspark")
    return str(Path(spec.origin).parent) if spec and spec.origin else None


def envelope(workload: str, argv: Sequence[str]) -> dict[str, Any]:
    """The header of every results file: workload, date, command, commit and machine."""
    return {
        "workload": workload,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join([workload, *argv]),
        "commit": git_commit(),
        "segspark_source": _segspark_source(),
        "machine": machine_info(),
    }


def write_json(name: str, payload: Mapping[str, Any], out_dir: Path = RESULTS) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def tenths(values: Iterable[float]) -> str:
    """Numbers to a tenth, for a table cell: ``3.4 4.1 3.6``."""
    return " ".join(f"{v:.1f}" for v in values)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(payload: Mapping[str, Any]) -> str:
    m = payload["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    load = m.get("load_average_at_start")
    return (
        f"{payload['date']} · {m['cores']} cores, {m['ram_gib']} GiB, {m['cpu_model']} · "
        f"load average at start {load} · {versions} · commit {payload.get('commit')}"
    )


def write_markdown(name: str, title: str, payload: Mapping[str, Any], body: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    text = f"# {title}\n\n{machine_line(payload)}\n\n`{payload['command']}`\n\n{body.rstrip()}\n"
    path.write_text(text)
    return path


def parse_rows(text: str) -> int:
    """``1e7``, ``3e7``, ``100000000`` -> an int."""
    value = float(text)
    if value < 1 or value != int(value):
        raise ValueError(f"not a row count: {text!r}")
    return int(value)


def rows_label(rows: int) -> str:
    """``10_000_000`` -> ``1e7``; ``30_000_000`` -> ``3e7``."""
    exponent = len(str(rows)) - 1
    mantissa = rows / 10**exponent
    return f"{mantissa:g}e{exponent}"


# --------------------------------------------------------------------------------------------
# Generated retail data
# --------------------------------------------------------------------------------------------

#: Generated history: six years, a low monthly lapse rate, so a customer averages about 162.5
#: transactions (measured on the generator with these settings: 14,666,734 rows for 90,253
#: customers) and ~10^8 rows take ~6.2·10^5 customers. (The lakes before 2026-11-23 were
#: generated with the planted segments' earlier purchase rates (b71fadb), 110.8 transactions each.)
RETAIL_START = dt.date(2019, 1, 1)
RETAIL_END = dt.date(2024, 12, 31)
RETAIL_SET = ("synth.lapse_rate=0.005",)
ROWS_PER_CUSTOMER = 162.5


@dataclass(frozen=True)
class Dataset:
    """A generated retail lake: its root, nominal and actual rows, and the as_of to use."""

    lake: Path
    nominal_rows: int
    rows: int
    customers: int
    as_of: dt.date

    @property
    def transactions(self) -> Path:
        return self.lake / "transactions"

    def files(self) -> list[str]:
        """The Parquet files of the transactions table's current version."""
        from deltalake import DeltaTable

        uris = DeltaTable(str(self.transactions)).file_uris()
        return [u.removeprefix("file://") for u in uris]


def segspark_command() -> list[str]:
    return [str(Path(sys.executable).with_name("segspark"))]


def ensure_retail_dataset(nominal_rows: int, *, data_dir: Path = DATA) -> Dataset:
    """The generated retail lake with about ``nominal_rows`` transactions (generated if absent).

    The lake ``<data_dir>/retail-<label>`` is generated once with ``segspark generate`` and
    reused: generation at 10^8 rows takes a quarter of an hour on two cores.
    """
    label = rows_label(nominal_rows)
    lake = data_dir / f"retail-{label}"
    if not (lake / "transactions" / "_delta_log").is_dir():
        customers = max(100, round(nominal_rows / ROWS_PER_CUSTOMER))
        log.info("generating %s (%s customers) into %s", label, f"{customers:,}", lake)
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [*segspark_command(), "--lake", str(lake)]
        for setting in RETAIL_SET:
            argv += ["--set", setting]
        argv += [
            "generate",
            "--domain",
            "retail",
            "--customers",
            str(customers),
            "--start",
            RETAIL_START.isoformat(),
            "--end",
            RETAIL_END.isoformat(),
        ]
        subprocess.run(argv, check=True)
    dataset = Dataset(
        lake,
        nominal_rows,
        _records(lake / "transactions"),
        _records(lake / "customers"),
        RETAIL_END,
    )
    drift = size_drift(dataset)
    if drift:
        log.warning("%s", drift)
    return dataset


#: How far a lake's transactions may stray from its nominal size before the benchmark warns.
SIZE_TOLERANCE = 0.1


def size_drift(dataset: Dataset) -> str | None:
    """A warning when ``dataset`` holds not about its nominal rows, else ``None``.

    Lakes are sized as nominal rows / :data:`ROWS_PER_CUSTOMER` customers, a rate measured on
    the generator. When the generator's purchase rates change, the constant goes stale and a
    "10^7" lake silently holds another size (1.47·10^7 once, 9d940ae); results report the
    actual rows, but the sizes stop being the ones the goals name.

    Example:
        >>> size_drift(Dataset(Path("retail-1e7"), 10**7, 14_666_734, 90_253, RETAIL_END))
        'retail-1e7 holds 14,666,734 transactions, 46.7% more than its nominal ...'
    """
    if dataset.nominal_rows <= 0 or dataset.customers <= 0:
        return None
    if abs(dataset.rows - dataset.nominal_rows) <= SIZE_TOLERANCE * dataset.nominal_rows:
        return None
    off = dataset.rows / dataset.nominal_rows - 1
    return (
        f"{dataset.lake.name} holds {dataset.rows:,} transactions, {abs(off):.1%} "
        f"{'more' if off > 0 else 'fewer'} than its nominal {dataset.nominal_rows:,}: "
        f"{dataset.rows / dataset.customers:.1f} per customer against ROWS_PER_CUSTOMER "
        f"{ROWS_PER_CUSTOMER}. Update the constant and delete the lake to regenerate it."
    )


def _records(table: Path) -> int:
    import pyarrow as pa
    from deltalake import DeltaTable

    actions = pa.table(DeltaTable(str(table)).get_add_actions(flatten=True))
    return sum(int(v) for v in actions.column("num_records").to_pylist())
