"""spark-submit entry point for ``segspark migrate``.

Records how customers moved between two segment snapshots. Takes exactly the options of
``segspark migrate``, global ones such as ``--lake``, ``--conf``, ``--set``, ``--env`` and
``--tracking-uri`` included, and exits with its exit code. Build ``dist/`` first with
``scripts/build-cluster.sh``; then, for example on YARN::

    spark-submit --master yarn --deploy-mode cluster \
        --packages io.delta:delta-spark_2.13:4.0.1 \
        --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension \
        --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog \
        --py-files dist/segspark.zip \
        dist/jobs/migrate.py --lake s3a://bucket/lake --set lake.backend=spark \
        --tracking-uri http://mlflow.example.internal:5000 \
        --domain retail --from 2024-06-30 --to 2024-07-31
"""

from __future__ import annotations

import sys

from segspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["migrate", *sys.argv[1:]]))
