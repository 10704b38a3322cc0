"""Exact-stage seconds in process, on a 1-worker and on a 2-worker local Dask cluster,
side by side in one run (benchmarks/README.md, *On a cluster*).

The clusters are started before the runs, as a user's long-lived ``dask scheduler``
would be, so their start is not counted; "exact" is the report's bab + milp seconds.
Usage: ``python -m benchmarks.cluster_speedup [--repeat N] MODEL.pt [MODEL.pt ...]``
(the hard suite's cached models, e.g.
``bench-results/models/digits28_2x800_l1-0.0002_s0_e40.pt``). With ``--repeat N`` each
model's three runs are made N times in turn and the medians are printed: a long exact
stage's 2-worker time moves by a quarter from run to run (which subdomains go to which
part of a spread search depends on timing).
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from exactcompress.cli import load_data
from exactcompress.distributed import local_cluster
from exactcompress.io import load_model_file
from exactcompress.stability import StabilityOptions, find_stable_neurons


@dataclass
class ExactRun:
    seconds: float  # bab + milp seconds of the report
    complete: bool
    states: str  # the report's layers, to check that runs agree


def exact_run(path: Path, scheduler: str | None, jobs: int | None = None) -> ExactRun:
    """One default run (HiGHS, 300 s) of a hard-suite model."""
    net, _ = load_model_file(path)
    data = load_data("digits-rgb32" if "rgb32" in path.name else "digits28", None, net.widths[0])
    options = StabilityOptions(time_limit=300, solver="highs", scheduler=scheduler, jobs=jobs)
    report = find_stable_neurons(net, data=data, options=options)
    seconds = report.seconds.get("bab", 0.0) + report.seconds.get("milp", 0.0)
    states = json.dumps(report.to_json()["layers"], sort_keys=True)
    return ExactRun(seconds, report.complete, states)


def main(paths: list[str], repeat: int = 1) -> None:
    clusters = {n: local_cluster(n) for n in (1, 2)}
    print("model | in process s | 1 worker s | 2 workers s | 1 worker / 2 workers | same states")
    try:
        for path in map(Path, paths):
            rows, same, states = [], True, set()
            for _ in range(repeat):
                # in process on one thread, as each cluster task runs (--jobs adds threads)
                runs = [exact_run(path, None, jobs=1)]
                runs += [exact_run(path, clusters[n].scheduler_address) for n in (1, 2)]
                rows.append([r.seconds for r in runs])
                states |= {r.states for r in runs}
                complete = all(r.complete for r in runs)
                same &= len(states) == 1
                if len(states) > 1 or not complete:  # which runs, to tell a time limit apart
                    print(
                        f"  {path.stem}: states differ or a run is incomplete; complete "
                        f"(in process, 1 worker, 2 workers): {[r.complete for r in runs]}; "
                        f"seconds {[round(r.seconds, 1) for r in runs]}",
                        flush=True,
                    )
            s0, s1, s2 = (statistics.median(col) for col in zip(*rows))
            ratio = statistics.median(r[1] / r[2] for r in rows)
            print(
                f"{path.stem} | {s0:.2f} | {s1:.2f} | {s2:.2f} | {ratio:.2f}x | {same}",
                flush=True,
            )
    finally:
        for cluster in clusters.values():
            cluster.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model files (.pt)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per model (medians)")
    args = parser.parse_args()
    main(args.models, args.repeat)
