"""Which trained networks leave work for the exact stage: the survey behind the hard suite.

A network belongs in the hard suite only if some neuron survives interval bounds,
sampling and the gradient witness search. That depends on the training run, so each
candidate recipe is trained (cached like the suite's networks) and run through the
cheap stages with a 1 s exact stage; the neurons that reached it are counted.

    python -m benchmarks.hard_survey [--cache DIR] [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from exactcompress.domain import Box
from exactcompress.stability import StabilityOptions, find_stable_neurons

from .suite import DEFAULT_CACHE, TrainRecipe, arch_label, load, trained

D28, RGB = "digits28", "digits-rgb32"

#: every recipe tried (the suite's training recipe unless a learning rate is given)
SURVEY: tuple[TrainRecipe, ...] = (
    TrainRecipe(D28, (100,) * 3, 2e-4),
    TrainRecipe(D28, (100,) * 4, 1e-4),
    TrainRecipe(D28, (100,) * 4, 2e-4),
    TrainRecipe(D28, (100,) * 5, 1e-4),
    TrainRecipe(D28, (100,) * 5, 2e-4),
    TrainRecipe(D28, (100,) * 6, 1e-4),
    TrainRecipe(D28, (100,) * 6, 2e-4),
    TrainRecipe(D28, (100,) * 6, 1.5e-4),
    TrainRecipe(D28, (100,) * 7, 5e-5),
    TrainRecipe(D28, (100,) * 7, 1e-4),
    TrainRecipe(D28, (64,) * 8, 2e-5),
    TrainRecipe(D28, (64,) * 8, 5e-5),
    TrainRecipe(D28, (64,) * 8, 1e-4),
    TrainRecipe(D28, (64,) * 8, 2e-4),
    TrainRecipe(D28, (100,) * 8, 2e-5),
    TrainRecipe(D28, (100,) * 8, 5e-5),
    TrainRecipe(D28, (100,) * 8, 1e-4),
    TrainRecipe(D28, (200,) * 4, 1e-4),
    TrainRecipe(D28, (200,) * 4, 2e-4),
    TrainRecipe(D28, (200,) * 5, 1e-4),
    TrainRecipe(D28, (150,) * 6, 1e-4),
    TrainRecipe(D28, (400,) * 2, 1.5e-4),
    TrainRecipe(D28, (400,) * 2, 3e-4),
    TrainRecipe(D28, (800,) * 2, 1e-4),
    TrainRecipe(D28, (800,) * 2, 2e-4),
    TrainRecipe(RGB, (100,) * 2, 1e-4),
    TrainRecipe(RGB, (100,) * 2, 2e-4),
    TrainRecipe(RGB, (100,) * 2, 3e-4),
    TrainRecipe(RGB, (200,) * 2, 1e-4),
    TrainRecipe(RGB, (200,) * 2, 2e-4),
    TrainRecipe(RGB, (400,) * 2, 1e-4),
    TrainRecipe(RGB, (400,) * 2, 2e-4),
    TrainRecipe(RGB, (100,) * 3, 2e-4),
    TrainRecipe(RGB, (100,) * 4, 1e-4),
    TrainRecipe(D28, (64,) * 8, 1e-4, lr=0.02),
    TrainRecipe(D28, (100,) * 8, 1e-4, lr=0.02),
    TrainRecipe(D28, (100,) * 8, 1e-4, lr=0.01),
)


def survey_one(recipe: TrainRecipe, cache: Path) -> dict:
    """Train (or reuse) one network and count the neurons that reach the exact stage."""
    lm = load(trained(recipe), cache)
    options = StabilityOptions(prover="milp", bounds="interval", solver="highs", time_limit=1)
    t0 = time.monotonic()
    report = find_stable_neurons(lm.net, Box.uniform(lm.net.widths[0]), lm.train_x, options)
    why = report.extra.get("milp", {}).get("why_candidates", [])
    per_layer = Counter(c["layer"] for c in why)
    return {
        "dataset": recipe.dataset,
        "arch": arch_label(recipe.arch),
        "l1": f"{recipe.l1:g}",
        "lr": f"{recipe.lr:g}",
        "accuracy": f"{100 * float(lm.meta.get('test_accuracy', 0.0)):.1f}",
        "candidates": len(why),
        "layers": ", ".join(f"L{k}: {v}" for k, v in sorted(per_layer.items())) or "–",
        "unstable": report.counts()["unstable"],
        "seconds": f"{time.monotonic() - t0:.1f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default=str(DEFAULT_CACHE))
    parser.add_argument("--only", default="", help="recipes whose cache file name has this")
    args = parser.parse_args()
    keys = (
        "dataset",
        "arch",
        "l1",
        "lr",
        "accuracy",
        "candidates",
        "layers",
        "unstable",
        "seconds",
    )
    print("| " + " | ".join(keys) + " |")
    print("|" + " --- |" * len(keys))
    for recipe in SURVEY:
        if args.only in recipe.filename:
            row = survey_one(recipe, Path(args.cache))
            print("| " + " | ".join(str(row[k]) for k in keys) + " |", flush=True)


if __name__ == "__main__":
    main()
