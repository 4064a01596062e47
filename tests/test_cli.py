"""The command line: help for every subcommand, global options anywhere, exit codes."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import pytest

from segspark.cli import COMMANDS, main


def _run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_top_level_help_lists_every_subcommand() -> None:
    code, out, _ = _run("--help")
    assert code == 0
    for name in COMMANDS:
        assert f"    {name} " in out


@pytest.mark.parametrize("name", COMMANDS)
def test_each_subcommand_has_help_with_the_global_options(name: str) -> None:
    code, out, _ = _run(name, "--help")
    assert code == 0
    assert out.startswith(f"usage: segspark {name}")
    for option in ("--lake", "--conf", "--set", "--tracking-uri", "--verbose"):
        assert option in out


def test_unknown_subcommand_is_a_usage_error() -> None:
    code, _, err = _run("frobnicate")
    assert code == 2
    assert "invalid choice: 'frobnicate'" in err


def test_global_options_work_after_the_subcommand(cli: Any, lake_root: Any) -> None:
    code, out, err = cli("maintain")
    assert (code, err) == (0, "")
    assert out == f"no tables under {lake_root}\n"


def test_maintain_reports_each_table(cli: Any, lake: Any, spark: Any) -> None:
    lake.write("t", spark.createDataFrame([(1,)], "v int"))
    lake.write("t", spark.createDataFrame([(2,)], "v int"))
    code, out, err = cli("maintain", "--table", "t")
    assert (code, err) == (0, "")
    assert out == (
        "t: compacted 2 file(s), checkpoint at version 2, vacuumed 0 file(s), "
        "removed 0 unfinished write(s)\n"
    )
    assert sorted(r.v for r in lake.read("t").collect()) == [1, 2]
    code, _, err = cli("maintain", "--retention-hours", "1")
    assert code == 2
    assert err == (
        "segspark: error: retention of 1 h is below the safe 168 h; pass --force to vacuum "
        "anyway (time travel to older versions is lost)\n"
    )
