"""The notebooks run: each notebooks/*.py (jupytext percent) executed once with nbclient.

Each notebook is converted in memory with jupytext and executed in a kernel running this test's
interpreter (a kernel spec written for the test, first on JUPYTER_PATH, so no user-level
``python3`` spec can point elsewhere; a probe cell checks it). The walkthrough generates its own
lake; the query notebook then runs on that lake. The assertions compare what the cells printed
with the tables read back through ``deltalake``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from segspark.model.metrics import ari_from_contingency

# executing the walkthrough (the first test's setup) takes minutes on two busy cores
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
DOMAIN = "telecom"
D1, D2 = "2024-03-31", "2024-04-30"
KERNEL = "python3"
PROBE = "import sys\nprint('kernel interpreter:', sys.executable)"


def _text(cell: Any) -> str:
    """What a code cell printed to stdout or displayed as text (stderr left out: logs)."""
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream" and output["name"] == "stdout":
            parts.append(output["text"])
        elif "text/plain" in output.get("data", {}):
            parts.append(output["data"]["text/plain"])
    return "".join(parts)


def _images(cell: Any) -> int:
    return sum("image/png" in output.get("data", {}) for output in cell.get("outputs", []))


@dataclass
class Executed:
    """An executed notebook: its cells (with outputs) and the lake it ran on."""

    cells: list[Any]
    lake: Path

    def tagged(self, tag: str) -> Any:
        (cell,) = [c for c in self.cells if tag in c.get("metadata", {}).get("tags", [])]
        return cell

    def text(self, tag: str) -> str:
        return _text(self.tagged(tag))

    def images(self, tag: str) -> int:
        return _images(self.tagged(tag))

    @property
    def stdout(self) -> str:
        return "".join(_text(c) for c in self.cells if c["cell_type"] == "code")


def _execute(name: str, workdir: Path, env: dict[str, str]) -> list[Any]:
    """Execute notebooks/<name>.py in a fresh kernel of this interpreter; returns its cells."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    notebook = jupytext.read(NOTEBOOKS / f"{name}.py")
    assert notebook.metadata["kernelspec"]["name"] == KERNEL
    notebook.cells.append(nbformat.v4.new_code_cell(PROBE))
    kernels = workdir / "jupyter" / "kernels" / KERNEL
    kernels.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "segspark test kernel",
        "language": "python",
    }
    (kernels / "kernel.json").write_text(json.dumps(spec))
    scratch = workdir / "tmp"  # the kernel's temporary files (figures) stay in the test's folder
    scratch.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(workdir / "jupyter"))
        patch.setenv("TMPDIR", str(scratch))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        for key, value in env.items():
            patch.setenv(key, value)
        client = NotebookClient(
            notebook,
            kernel_name=KERNEL,
            timeout=1800,
            startup_timeout=300,
            resources={"metadata": {"path": str(workdir)}},
        )
        client.execute()
    cells = list(notebook.cells)
    assert _text(cells.pop()) == f"kernel interpreter: {sys.executable}\n"
    return cells


def _table(lake: Path, name: str, **equal: str) -> Any:
    """A (small) table as pandas, rows filtered by column values compared as strings.

    Filtered here rather than with ``to_pandas(partitions=...)``, which silently ignores a
    column that is not a partition column (``synthetic_truth`` is partitioned by domain only).
    """
    frame = DeltaTable(str(lake / name)).to_pandas()
    for column, value in equal.items():
        frame = frame[frame[column].astype(str) == value]
    return frame.reset_index(drop=True)


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Executed]:
    workdir = tmp_path_factory.mktemp("walkthrough")
    lake = workdir / "lake"
    cells = _execute(
        "walkthrough",
        workdir,
        {
            "SEGSPARK_ENV": "test",
            "SEGSPARK_WALKTHROUGH_LAKE": str(lake),
            "SEGSPARK_WALKTHROUGH_CUSTOMERS": "150",
        },
    )
    yield Executed(cells, lake)


def test_every_notebook_is_executed_by_this_module() -> None:
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.py")) == ["query_segments", "walkthrough"]


def test_walkthrough_generates_and_computes_features_at_two_dates(walkthrough: Executed) -> None:
    lake = walkthrough.lake
    generated = walkthrough.text("generate")
    for table in ("customers", "cdrs", "synthetic_truth"):
        assert f"{table}: {len(_table(lake, table))} rows\n" in generated
    assert "planted segments: data_heavy, voice_heavy, international, night_owl, light_user\n" in (
        generated
    )
    printed = walkthrough.text("features")
    for as_of in (D1, D2):
        rows = len(_table(lake, f"{DOMAIN}_features", as_of=as_of))
        assert 0 < rows <= 150
        assert f"{DOMAIN}_features @ {as_of}: {rows} customers\n" in printed


def test_walkthrough_k_table_covers_the_sweep_and_names_the_chosen_k(
    walkthrough: Executed,
) -> None:
    printed = walkthrough.text("k-selection")
    header, *rows = printed.split("chosen k = ")[0].strip().splitlines()
    assert header.split() == [
        "k", "silhouette", "silhouette_se", "calinski_harabasz", "davies_bouldin", "wssse",
        "stability_ari", "min_jaccard",
    ]  # fmt: skip
    assert [int(row.split()[0]) for row in rows] == [2, 3, 4, 5, 6]
    chosen = int(re.search(r"chosen k = (\d+)\n", printed).group(1))  # type: ignore[union-attr]
    assert f"-> k={chosen} " in printed  # the rule's own conclusion
    snapshot = _table(walkthrough.lake, "segment_snapshots", domain=DOMAIN, as_of=D1)
    assert snapshot["segment_id"].nunique() == chosen
    assert walkthrough.images("k-selection") == 1


def test_walkthrough_profiles_every_segment_of_the_snapshot(walkthrough: Executed) -> None:
    printed = walkthrough.text("profiles")
    lake = walkthrough.lake
    snapshot = _table(lake, "segment_snapshots", domain=DOMAIN, as_of=D1)
    sizes = snapshot.groupby("segment_id").size()
    profiles = _table(lake, "segment_profiles", domain=DOMAIN, as_of=D1).sort_values("segment_id")
    assert list(profiles["segment_id"]) == sorted(sizes.index)
    assert f"segspark-{DOMAIN} v1: k={len(profiles)}, {len(snapshot)} customers\n" in printed
    lines = []
    for p in profiles.itertuples(index=False):
        if p.withheld:
            size = "withheld"
        else:
            assert p.customers == sizes[p.segment_id]
            size = f"{sizes[p.segment_id]} customers ({p.share:.1%})"
        lines.append(f"segment {p.segment_id}: {p.segment_name}: {size}")
    assert [line for line in printed.splitlines() if line.startswith("segment ")] == lines
    assert walkthrough.images("profiles") == 2  # the z-score heat map and the sizes


def test_walkthrough_scores_recovery_against_the_planted_segments(walkthrough: Executed) -> None:
    printed = walkthrough.text("recovery")
    snapshot = _table(walkthrough.lake, "segment_snapshots", domain=DOMAIN, as_of=D1)
    truth = _table(walkthrough.lake, "synthetic_truth", domain=DOMAIN, as_of=D1)
    joined = snapshot.merge(truth[["customer_id", "true_segment"]], on="customer_id")
    counts = joined.groupby(["segment_id", "true_segment"]).size()
    planted = ["data_heavy", "voice_heavy", "international", "night_owl", "light_user"]
    ari = ari_from_contingency({(int(s), planted.index(t)): int(n) for (s, t), n in counts.items()})
    assert printed.splitlines()[-1] == f"adjusted Rand index vs the planted segments: {ari:.3f}"
    header, _, *rows = printed.splitlines()[:-1]
    columns = sorted(set(joined["true_segment"]))
    assert header.split() == ["true_segment", *columns]
    table = {int(r.split()[0]): [int(v) for v in r.split()[1:]] for r in rows}
    assert table == {
        int(s): [int(counts.get((s, t), 0)) for t in columns]
        for s in sorted(set(snapshot.segment_id))
    }


def test_walkthrough_migration_totals_match_the_migration_tables(walkthrough: Executed) -> None:
    printed = walkthrough.text("migration")
    moves = _table(walkthrough.lake, "segment_migrations", domain=DOMAIN)
    assert set(moves["from_as_of"].astype(str)) == {D1}
    assert set(moves["to_as_of"].astype(str)) == {D2}
    first = set(_table(walkthrough.lake, "segment_snapshots", domain=DOMAIN, as_of=D1).customer_id)
    second = set(_table(walkthrough.lake, "segment_snapshots", domain=DOMAIN, as_of=D2).customer_id)
    assert len(moves) == len(first | second)
    assert f"customers in either snapshot: {len(moves)}\n" in printed
    known = moves["from_segment_id"].notna() & moves["to_segment_id"].notna()
    same = known & (moves["from_segment_id"] == moves["to_segment_id"])
    expected = (
        f"stayed: {int(same.sum())}, moved: {int((known & ~same).sum())}, "
        f"new: {len(second - first)}, lapsed: {len(first - second)}\n"
    )
    assert expected in printed
    assert walkthrough.images("migration") == 1
    drift = walkthrough.text("drift")
    assert drift.splitlines()[-1] in {"retraining recommended", "no retraining needed"}
    assert len(re.findall(r"^PSI (share|feature):\S+: \d+\.\d{3}$", drift, re.M)) == 5


def test_query_notebook_reads_the_walkthrough_lake(walkthrough: Executed, tmp_path: Path) -> None:
    lake = walkthrough.lake
    cells = _execute(
        "query_segments", tmp_path, {"SEGSPARK_ENV": "test", "SEGSPARK_LAKE": str(lake)}
    )
    notebook = Executed(cells, lake)
    printed = notebook.stdout
    tables = sorted(p.name for p in lake.iterdir() if (p / "_delta_log").is_dir())
    assert f"tables: {tables}\n" in printed
    profiles = _table(lake, "segment_profiles", domain=DOMAIN, as_of=D2)
    flat = " ".join(printed.split())
    for row in profiles.itertuples(index=False):
        size = "NaN" if row.withheld else f"{int(row.customers)}(\\.0)?"
        line = rf"{DOMAIN} {row.segment_id} {re.escape(row.segment_name)} {size} "
        assert re.search(line, flat), line
    matrix = _table(lake, "segment_migration_matrix", domain=DOMAIN)

    def total(keep: Any) -> str:
        values = [int(n) for n, keep_row in zip(matrix["customers"], keep, strict=True) if keep_row]
        return str(sum(values)) if values else "NULL"

    src, dst = matrix["from_segment_id"], matrix["to_segment_id"]
    known = src.notna() & dst.notna()
    row = "|".join(
        ["", DOMAIN, D1, D2, total(src.isna()), total(dst.isna()),
         total(known & (src != dst)), total(known & (src == dst)), ""]
    )  # fmt: skip
    assert row in printed.replace(" ", "")
    first = _table(lake, "segment_snapshots", domain=DOMAIN, as_of=D1)
    assert f"|{DOMAIN}|{D1}|{len(first)}|" in printed.replace(" ", "")
