"""``python -m bench WORKLOAD [options]`` (or ``python bench/run.py ...``): run one workload.

Workloads: ``w1`` (retail features), ``w2`` (k-sweep), ``w3`` (``segspark demo`` phases),
``scale`` (W1 at 10^7, 3·10^7, 10^8). ``python -m bench WORKLOAD --help`` lists the options.
Results go to ``bench/results/<workload>.json`` and ``.md``.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # python bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WORKLOADS = {
    "w1": "bench.w1_features",
    "w2": "bench.w2_ksweep",
    "w3": "bench.w3_demo",
    "scale": "bench.scale",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in WORKLOADS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown workload {argv[0]!r}; one of {', '.join(WORKLOADS)}")
            return 2
        return 0 if argv else 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S"
    )
    module = importlib.import_module(WORKLOADS[argv[0]])
    result: int = module.main(argv[1:])
    return result


if __name__ == "__main__":
    sys.exit(main())
