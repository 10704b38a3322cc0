"""Which --bounds is fastest overall, and does --tighten lp pay? Side by side in one run.

    python -m benchmarks.bounds_and_tightening [--time-limit S] [--repeat N] [--models a,b]

Runs the whole stability pipeline (solver HiGHS, formulations network and neuron) on
four networks with --bounds interval | crown | alpha-crown, each with --tighten none
and lp, plus the paper configuration (StabilityOptions.paper()) with and without lp.
Prints Markdown tables of seconds and ratios, and asserts that every complete run
finds the same stable sets (and that incomplete runs contradict none of them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from exactcompress.data import load_dataset
from exactcompress.io import load_network
from exactcompress.stability import StabilityOptions, find_stable_neurons

from .suite import DEFAULT_CACHE, REPO, TrainRecipe, load, trained

BOUNDS = ("interval", "crown", "alpha-crown")
TIGHTEN = ("none", "lp")
FORMULATIONS = ("network", "neuron")
CIFAR = REPO / ".." / "shared" / "reference-models" / "cifar10-pruned" / "pruned_checkpoint_120.tar"

RECIPES = {
    "digits-3x32-l1=1e-3": TrainRecipe("digits", (32, 32, 32), 1e-3),
    "digits28-2x100-l1=3e-4": TrainRecipe("digits28", (100, 100), 3e-4),
    "digits28-2x100-l1=0": TrainRecipe("digits28", (100, 100), 0.0),
}


def configs() -> list[tuple[str, dict]]:
    """(label, StabilityOptions overrides): the full pipeline per bounds and tightening,
    then the paper's configuration with and without lp."""
    out = [(f"{b}/{t}", {"bounds": b, "tighten": t}) for b in BOUNDS for t in TIGHTEN]
    out += [(f"paper/{t}", {"paper": True, "tighten": t}) for t in TIGHTEN]
    return out


def load_models(names: list[str] | None, say) -> dict:
    models = {}
    for name, recipe in RECIPES.items():
        if names and name not in names:
            continue
        loaded = load(trained(recipe), DEFAULT_CACHE, say=say)
        x, _ = load_dataset(recipe.dataset, "train")
        models[name] = (loaded.net, np.asarray(x, dtype=np.float64))
    if (not names or "cifar10-pruned" in names) and CIFAR.is_file():
        x, _ = load_dataset("digits-rgb32", "train")
        models["cifar10-pruned"] = (load_network(str(CIFAR)), np.asarray(x, dtype=np.float64))
    return models


def run_one(net, x, formulation: str, overrides: dict, time_limit: float) -> dict:
    overrides = dict(overrides)
    paper = overrides.pop("paper", False)
    common = {"formulation": formulation, "solver": "highs", "time_limit": time_limit}
    options = (
        StabilityOptions.paper(**common, **overrides)
        if paper
        else StabilityOptions(**common, **overrides)
    )
    t0 = time.monotonic()
    report = find_stable_neurons(net, None, x, options)
    wall = time.monotonic() - t0
    lp_proved = sum(
        int(d == "lp" and s in ("stably_active", "stably_inactive"))
        for deciders, states in zip(report.deciders, report.states)
        for d, s in zip(deciders, states)
    )
    return {
        "seconds": wall,
        "stages": {k: round(v, 3) for k, v in report.seconds.items()},
        "complete": report.complete,
        "states": [list(map(str, s)) for s in report.states],
        "counts": report.counts(),
        "candidates": report.extra.get("milp", {}).get("candidates", 0),
        "lp_proved": lp_proved,
        "decided_by": report.decided_by,
    }


def check_agreement(results: dict) -> list[str]:
    """Every complete run of a model has the same states; incomplete runs agree where
    they decided. Returns one line per model."""
    lines = []
    for model, runs in results.items():
        complete = [(k, r) for k, r in runs.items() if r["complete"]]
        ref_key, ref = complete[0] if complete else next(iter(runs.items()))
        for key, r in runs.items():
            for layer, (got, want) in enumerate(zip(r["states"], ref["states"])):
                for j, (g, w) in enumerate(zip(got, want)):
                    if "undecided" not in (g, w):
                        assert g == w, (
                            f"{model} {key} layer {layer + 1} neuron {j}: {g}, but {ref_key}: {w}"
                        )
        n_inc = len(runs) - len(complete)
        lines.append(
            f"- {model}: {len(complete)} complete runs identical"
            + (f", {n_inc} incomplete runs agree on what they decided" if n_inc else "")
            + f" ({ref['counts']['stably_active']} stably active, "
            f"{ref['counts']['stably_inactive']} stably inactive, "
            f"{ref['counts']['unstable']} unstable)"
        )
    return lines


def cell(r: dict) -> str:
    return f"{r['seconds']:.2f}" + ("" if r["complete"] else "*")


def ratio(a: dict, b: dict) -> str:
    return f"{a['seconds'] / b['seconds']:.2f}"


def tables(results: dict) -> str:
    labels = [label for label, _ in configs()]
    rows = [(m, f) for m in results for f in FORMULATIONS if any(k[0] == f for k in results[m])]
    out = ["Seconds (whole pipeline; `*` = incomplete at the time limit):", ""]
    out.append("| model | formulation | " + " | ".join(labels) + " |")
    out.append("| --- | --- |" + " ---: |" * len(labels))
    totals = {label: 0.0 for label in labels}
    for m, f in rows:
        runs = results[m]
        out.append(f"| {m} | {f} | " + " | ".join(cell(runs[(f, lab)]) for lab in labels) + " |")
        for lab in labels:
            totals[lab] += runs[(f, lab)]["seconds"]
    out.append("| **total** | | " + " | ".join(f"**{totals[lab]:.2f}**" for lab in labels) + " |")
    ratio_cols = [
        ("crown/interval", ("crown/none", "interval/none")),
        ("alpha/interval", ("alpha-crown/none", "interval/none")),
        ("alpha/crown", ("alpha-crown/none", "crown/none")),
        ("lp/none interval", ("interval/lp", "interval/none")),
        ("lp/none crown", ("crown/lp", "crown/none")),
        ("lp/none alpha", ("alpha-crown/lp", "alpha-crown/none")),
        ("lp/none paper", ("paper/lp", "paper/none")),
    ]
    out += ["", "Ratios of seconds (< 1: the first is faster):", ""]
    out.append("| model | formulation | " + " | ".join(c for c, _ in ratio_cols) + " |")
    out.append("| --- | --- |" + " ---: |" * len(ratio_cols))
    for m, f in rows:
        runs = results[m]
        cells = [ratio(runs[(f, a)], runs[(f, b)]) for _, (a, b) in ratio_cols]
        out.append(f"| {m} | {f} | " + " | ".join(cells) + " |")
    out.append(
        "| **total** | | "
        + " | ".join(f"**{totals[a] / totals[b]:.2f}**" for _, (a, b) in ratio_cols)
        + " |"
    )
    out += ["", "Neurons reaching the MILP (candidates) / proved by the LP stage:", ""]
    out.append("| model | formulation | " + " | ".join(labels) + " |")
    out.append("| --- | --- |" + " ---: |" * len(labels))
    for m, f in rows:
        runs = results[m]
        cells = [
            f"{runs[(f, lab)]['candidates']} / {runs[(f, lab)]['lp_proved']}" for lab in labels
        ]
        out.append(f"| {m} | {f} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bounds_and_tightening")
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per run")
    p.add_argument("--models", default=None, help="comma-separated subset of the models")
    p.add_argument("--formulations", default=",".join(FORMULATIONS))
    p.add_argument("--repeat", type=int, default=1, help="runs per setting; the fastest counts")
    p.add_argument("--json", default=None, help="also write the raw results here")
    args = p.parse_args(argv)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    models = load_models(args.models.split(",") if args.models else None, say)
    formulations = args.formulations.split(",")
    results: dict = {}
    t_all = time.monotonic()
    for name, (net, x) in models.items():
        results[name] = {}
        for f in formulations:
            for label, overrides in configs():
                tries = [run_one(net, x, f, overrides, args.time_limit) for _ in range(args.repeat)]
                check_agreement({name: {(f, f"try {i}"): t for i, t in enumerate(tries)}})
                r = min(tries, key=lambda t: t["seconds"])
                results[name][(f, label)] = r
                say(
                    f"{name:24s} {f:8s} {label:18s} {r['seconds']:7.2f} s"
                    f"{'' if r['complete'] else ' (incomplete)'}  candidates {r['candidates']}"
                    f"  lp proved {r['lp_proved']}  {r['stages']}"
                )
    agreement = check_agreement(results)
    print(tables(results))
    print()
    print("Stable sets:")
    print("\n".join(agreement))
    print(f"\nwhole run: {time.monotonic() - t_all:.0f} s")
    if args.json:
        raw = {m: {f"{f}|{lab}": r for (f, lab), r in runs.items()} for m, runs in results.items()}
        Path(args.json).write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
