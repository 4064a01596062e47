"""spark-submit entry point for ``segspark features``.

Computes per-customer features at a date. Takes exactly the options of ``segspark features``,
global ones such as ``--lake``, ``--conf``, ``--set``, ``--env`` and ``--tracking-uri`` included,
and exits with its exit code. Build ``dist/`` first with ``scripts/build-cluster.sh``; then, for
example on YARN::

    spark-submit --master yarn --deploy-mode cluster \
        --packages io.delta:delta-spark_2.13:4.0.1 \
        --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension \
        --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog \
        --py-files dist/segspark.zip \
        dist/jobs/features.py --lake s3a://bucket/lake --set lake.backend=spark \
        --tracking-uri http://mlflow.example.internal:5000 \
        --domain retail --as-of 2024-06-30
"""

from __future__ import annotations

import sys

from segspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["features", *sys.argv[1:]]))
