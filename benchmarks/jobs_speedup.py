"""Exact-stage seconds (the report's bab + milp) with ``--jobs 1`` and ``--jobs N``
(threads on this machine), side by side in one run (benchmarks/README.md, *Threads on
one machine*).

Usage: ``python -m benchmarks.jobs_speedup N MODEL.pt [MODEL.pt ...]`` (the hard suite's
cached models, e.g. ``bench-results/models/digits28_5x100_l1-0.0002_s0_e40.pt``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.cluster_speedup import exact_run


def main(jobs: int, paths: list[str]) -> None:
    print(f"model | exact s, 1 job | exact s, {jobs} jobs | speed-up | complete | same states")
    for path in map(Path, paths):
        one, many = (exact_run(path, None, n) for n in (1, jobs))
        print(
            f"{path.stem} | {one.seconds:.1f} | {many.seconds:.1f} | "
            f"{one.seconds / many.seconds:.2f}x | {one.complete}/{many.complete} | "
            f"{one.states == many.states}",
            flush=True,
        )


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
