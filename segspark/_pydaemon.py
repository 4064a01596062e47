"""The Python daemon of segspark's local sessions: ``pyspark.daemon``, whose workers no longer
re-read every zip archive on their path before each task.

Before every task, pyspark's worker calls ``importlib.invalidate_caches()``
(``pyspark.worker_util.setup_spark_files``). Up to Python 3.11 that makes each ``zipimporter``
re-read its archive's whole directory at once (CPython gh-103200; lazy from 3.12), and the
worker's path holds three archives: ``pyspark.zip``, py4j's zip and the ``spark-core`` jar, whose
directory alone has thousands of entries. That cost about 0.1 s per task on the benchmark
machine: 64 trivial Python tasks took 4.4 s on 2 cores, and a pandas UDF over 891,000 rows took
3.7 s on 32 partitions against 0.55 s on 2.

Here an archive's directory is re-read only when the file changed (size or modification time),
which is what the invalidation is for; an unchanged archive keeps its directory. Spark starts
this module in place of ``pyspark.daemon`` (``spark.python.daemon.module``, set by
:func:`segspark.session.session_defaults` for local sessions on Python < 3.12); the daemon forks
its workers after the patch, and everything else is pyspark's own.
"""

from __future__ import annotations

import os
import sys
import zipimport
from collections.abc import Callable

__all__ = ["patch_zipimport"]

_Stamp = tuple[int, int]


def _stamp(path: str) -> _Stamp | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def patch_zipimport() -> bool:
    """Make ``zipimporter.invalidate_caches`` re-read an archive only once it changed.

    Returns whether the patch was applied (Python < 3.12 only; later versions invalidate
    lazily). Applying it twice changes nothing.
    """
    if sys.version_info >= (3, 12):
        return False
    cls = zipimport.zipimporter
    if getattr(cls.invalidate_caches, "_segspark", False):
        return True
    reload: Callable[[zipimport.zipimporter], None] = cls.invalidate_caches
    seen: dict[str, _Stamp | None] = {}

    def invalidate_caches(self: zipimport.zipimporter) -> None:
        stamp = _stamp(self.archive)
        if stamp is not None and seen.get(self.archive) == stamp:
            return
        reload(self)
        seen[self.archive] = stamp

    invalidate_caches._segspark = True  # type: ignore[attr-defined]
    cls.invalidate_caches = invalidate_caches  # type: ignore[method-assign]
    return True


if __name__ == "__main__":
    patch_zipimport()
    from pyspark.daemon import manager

    manager()  # type: ignore[no-untyped-call]
