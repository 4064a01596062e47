#!/usr/bin/env bash
# Build what a Spark cluster needs into dist/ and print the spark-submit commands that use it:
#   dist/segspark-<version>-py3-none-any.whl  pip-installable on every node (brings the deps)
#   dist/segspark.zip                          for --py-files (the wheel's segspark package)
#   dist/jobs/*.py                             the spark-submit entry points
# Both the wheel and the zip carry conf/*.yaml as segspark/_conf, so a job finds its settings on
# any node without a checkout (SEGSPARK_CONF_DIR still overrides them). The build works on a
# temporary copy: the source tree is left as it was.
#
# Usage: scripts/build-cluster.sh [OUT_DIR]     (default dist; PYTHON picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

die() { echo "build-cluster: $*" >&2; exit 1; }

if [ -n "${PYTHON:-}" ]; then
  python=$PYTHON
elif [ -x .venv/bin/python ]; then
  python=.venv/bin/python
else
  python=python3
fi
command -v "$python" >/dev/null 2>&1 || die "no Python interpreter '$python' (set PYTHON)"

out=${1:-dist}
case "$out" in /*) ;; *) out="$root/$out" ;; esac

stage=$(mktemp -d "${TMPDIR:-/tmp}/segspark-build.XXXXXX")
trap 'rm -rf "$stage"' EXIT

src="$stage/src"
mkdir -p "$src"
cp pyproject.toml README.md "$src/"
cp -R segspark "$src/segspark"
find "$src/segspark" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
find "$src/segspark" -name '*.py[co]' -delete
rm -rf "$src/segspark/_conf"
mkdir "$src/segspark/_conf"
cp conf/*.yaml "$src/segspark/_conf/"

echo "build-cluster: building the wheel with $python" >&2
if ! "$python" -m pip wheel --no-deps --wheel-dir "$stage/wheel" "$src" >"$stage/pip.log" 2>&1; then
  cat "$stage/pip.log" >&2
  die "pip wheel failed (output above)"
fi
wheel=$(find "$stage/wheel" -maxdepth 1 -name 'segspark-*.whl' | head -1)
[ -n "$wheel" ] || die "pip wheel produced no segspark wheel"

mkdir -p "$out"
rm -f "$out"/segspark-*.whl "$out/segspark.zip"
rm -rf "$out/jobs"
cp "$wheel" "$out/"
wheel="$out/$(basename "$wheel")"

# The zip holds exactly the wheel's package files (so both ship the same thing), with sorted
# entries and fixed timestamps so that the same sources give the same bytes.
"$python" - "$wheel" "$out/segspark.zip" <<'PY'
import sys
import zipfile

wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(target, "w") as archive:
    for name in sorted(source.namelist()):
        if name.split("/")[0].endswith(".dist-info") or name.endswith("/"):
            continue
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, source.read(name))
PY

mkdir -p "$out/jobs"
cp jobs/*.py "$out/jobs/"

rel() { case "$1" in "$root"/*) echo "${1#"$root"/}" ;; *) echo "$1" ;; esac; }
zip_path=$(rel "$out/segspark.zip")
jobs_path=$(rel "$out/jobs")
echo "build-cluster: wrote $(rel "$wheel"), $zip_path and $jobs_path/" >&2

delta="--packages io.delta:delta-spark_2.13:4.0.1 \\
  --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension \\
  --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog"
cat <<EOF
Every node needs segspark's Python dependencies: pip install $(rel "$wheel")
(or ship a packed virtualenv with --archives). Then submit any step (generate, ingest, features,
train, score, migrate, run) with the options of the matching segspark subcommand:

# YARN
spark-submit --master yarn --deploy-mode cluster \\
  $delta \\
  --py-files $zip_path \\
  $jobs_path/run.py --lake hdfs:///data/segspark/lake --set lake.backend=spark \\
  --tracking-uri http://MLFLOW_HOST:5000 --domain retail --as-of 2024-06-30

# Kubernetes (an image with segspark's dependencies, e.g. docker/Dockerfile)
spark-submit --master k8s://https://K8S_API_SERVER:6443 --deploy-mode cluster \\
  --conf spark.kubernetes.container.image=segspark:0.1.0 \\
  --conf spark.kubernetes.file.upload.path=s3a://BUCKET/spark-upload \\
  --conf spark.jars.ivy=/tmp/.ivy2 \\
  $delta \\
  --py-files $zip_path \\
  $jobs_path/run.py --lake s3a://BUCKET/segspark/lake --set lake.backend=spark \\
  --tracking-uri http://MLFLOW_HOST:5000 --domain retail --as-of 2024-06-30

# Spark standalone
spark-submit --master spark://SPARK_MASTER:7077 \\
  $delta \\
  --py-files $zip_path \\
  $jobs_path/run.py --lake /shared/segspark/lake --set lake.backend=spark \\
  --tracking-uri http://MLFLOW_HOST:5000 --domain retail --as-of 2024-06-30
EOF
