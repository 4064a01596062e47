"""Every step re-run with the same inputs leaves the same table contents (row hashes).

``run_id`` (the MLflow run that wrote a snapshot row) is left out of the hashes: a re-run is a
new run. A retrain also registers a new model version, so ``model_version`` is left out of the
hashes after ``train`` as well.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from deltalake import DeltaTable

from ._support import D1, D2, D3, DOMAIN, LINEAGE, digest, ok, segspark, tables
from .conftest import Baseline

CDRS = """\
customer_id,event_time,event_type,direction,duration_s,data_mb,is_international,counterparty_id
c1,2024-01-05 10:00:00,voice,out,61,,false,+441
c1,2024-01-05 11:00:00,data,,,12.5,false,
c2,2024-01-06 09:30:00,SMS,in,,,false,+442
c2,2024-01-06 09:30:00,SMS,in,,,false,+442
c3,not a time,voice,out,10,,false,+443
c4,2024-01-07 08:00:00,fax,out,10,,false,+444
c5,2024-01-07 08:00:00,voice,out,-3,,false,+445
"""


def _versions(root: Path) -> dict[str, int]:
    return {t: int(DeltaTable(str(root / t)).version()) for t in tables(root)}


def test_ingesting_the_same_file_again_adds_nothing(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    source = tmp_path / "in" / "cdrs.csv"
    source.parent.mkdir()
    source.write_text(textwrap.dedent(CDRS))
    args = ("ingest", "--domain", DOMAIN, "--input")
    first = ok(root, *args, str(source))
    assert first.splitlines()[0] == (
        "read 7 rows: accepted 3, quarantined 4 (duplicate_in_input 1, negative:duration_s 1, "
        "unknown_value:event_type 1, unparseable:event_time 1)"
    )
    hashes = {t: digest(root, t) for t in ("cdrs", "cdrs_quarantine")}
    versions = _versions(root)
    # the same file again, and the same bytes under another name
    copy = tmp_path / "elsewhere.csv"
    shutil.copy(source, copy)
    for again in (source, copy):
        out = ok(root, *args, str(again))
        assert out.startswith(f"input {again} was already ingested"), out
        assert {t: digest(root, t) for t in hashes} == hashes
        assert _versions(root) == versions


@pytest.mark.slow
def test_features_snapshot_migration_and_run_again_leave_the_same_tables(
    baseline: Baseline,
) -> None:
    # The baseline lake is used as it is: its rows were already captured by the fixture.
    root = baseline.root
    content = {t: digest(root, t, exclude={"run_id"}) for t in tables(root)}
    steps = [
        ("features", "--domain", DOMAIN, "--as-of", D2),
        ("score", "--domain", DOMAIN, "--as-of", D2),
        ("migrate", "--domain", DOMAIN, "--from", D1, "--to", D2),
        ("run", "--domain", DOMAIN, "--as-of", D3),
    ]
    written = {
        "features": [f"{DOMAIN}_features"],
        "score": ["segment_snapshots", "segment_profiles", "segment_feature_profiles"],
        "migrate": ["segment_migrations", "segment_migration_matrix", "segment_drift"],
        "run": [f"{DOMAIN}_features", "segment_snapshots", "segment_migrations"],
    }
    for step in steps:
        before = _versions(root)
        ok(root, *step)
        after = _versions(root)
        # each step really wrote its tables again (a new version) ...
        assert all(after[t] == before[t] + 1 for t in written[step[0]]), (step, before, after)
        # ... with the same contents, and touched nothing else
        assert {t: digest(root, t, exclude={"run_id"}) for t in tables(root)} == content, step


@pytest.mark.slow
def test_retraining_the_same_date_leaves_the_same_segments(baseline: Baseline) -> None:
    root = baseline.root
    content = {t: digest(root, t, exclude=LINEAGE) for t in tables(root)}
    result = segspark(root, "train", "--domain", DOMAIN, "--as-of", D1)
    assert result.code == 0, result.err
    assert {t: digest(root, t, exclude=LINEAGE) for t in tables(root)} == content
