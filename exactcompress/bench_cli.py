"""``exactcompress bench``: the benchmark sweep from the command line.

The benchmarks package is imported only when the command runs, so the other
subcommands start without loading it (and matplotlib with it).
"""

from __future__ import annotations

import argparse
import sys

from .errors import ExactCompressError
from .io import make_dir

SUITES = ("paper", "quick", "pipeline", "hard", "bounds", "conv")
_DEFAULT_TIME_LIMIT = {
    "paper": 300.0,
    "quick": 30.0,
    "pipeline": 120.0,
    "hard": 300.0,
    "bounds": 60.0,
    "conv": 60.0,
}
#: per suite, the (configs, formulations, solvers) run unless the command names them
_DEFAULTS = {
    "hard": (["full", "milp-interval", "paper"], ["network"], ["highs"]),
    "bounds": (
        [
            "interval", "interval-lp", "crown", "crown-lp", "alpha-crown", "alpha-crown-lp",
            "paper", "paper-lp",
        ],
        ["network", "neuron"],
        ["highs"],
    ),
    "conv": (["full"], ["neuron"], ["highs"]),
}  # fmt: skip
_DEFAULT_SETTINGS = (["full", "paper"], ["network", "neuron"], ["highs", "gurobi"])


def _names(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return names


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"time limit must be positive, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text}")
    return value


def add_bench_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="benchmark formulations x solvers x stage configs on a suite of networks",
        description="Sweep the suite (trained on demand, cached) and the reference models; "
        "results.csv grows run by run, so an interrupted sweep resumes where it stopped.",
    )
    p.add_argument(
        "--suite",
        choices=SUITES,
        default="paper",
        help="paper: the paper's shapes and L1 levels on digits stand-ins plus the reference "
        "models (hours); quick: six networks (minutes); pipeline: where the paper's "
        "configuration is slow, for full-pipeline/paper ratios; hard: networks whose "
        "neurons reach the exact stage (configs full, milp-interval, paper; network; highs); "
        "bounds: which --bounds and --tighten pay, on four networks",
    )
    p.add_argument("--quick", action="store_true", help="same as --suite quick")
    p.add_argument("--models", nargs="+", default=[], metavar="PATH", help="extra model files")
    p.add_argument(
        "--no-suite", action="store_true", help="only the --models files, no built-in networks"
    )
    p.add_argument(
        "--formulations", type=_names, default=None, metavar="LIST", help="default network,neuron"
    )
    p.add_argument(
        "--solvers", type=_names, default=None, metavar="LIST", help="default highs,gurobi"
    )
    p.add_argument(
        "--configs",
        type=_names,
        default=None,
        metavar="LIST",
        help="full = StabilityOptions(), full-lp = with --tighten lp, milp-interval = "
        "--prover milp --bounds interval, bab = --prover bab, paper = StabilityOptions.paper() "
        "(default full,paper)",
    )
    p.add_argument(
        "--time-limit",
        type=_seconds,
        default=None,
        metavar="S",
        help="seconds per run (default 30 with --quick, 120 with --suite pipeline, 300 otherwise)",
    )
    p.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="DIR",
        help="results folder (default bench-results/SUITE, bench-results/full for paper)",
    )
    # the option's name before every writing subcommand took -o
    p.add_argument("--out", dest="output", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--cache",
        default="bench-results/models",
        metavar="DIR",
        help="trained suite networks are kept here",
    )
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/CIFAR files")
    p.add_argument(
        "--workers",
        type=_count,
        default=1,
        metavar="N",
        help="run the sweep's runs side by side on a local Dask cluster of N worker processes, "
        "one run per process (default 1: one after another here; needs exactcompress[dist])",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run them on the workers of a running Dask scheduler (tcp://host:8786)",
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--verbose", action="store_true", help="show each run's stage log")
    return p


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks import runner, suite

    name = "quick" if args.quick else args.suite
    builders = {
        "paper": lambda: suite.paper_suite() + suite.reference_models(),
        "quick": suite.quick_suite,
        "pipeline": suite.pipeline_suite,
        "hard": suite.hard_suite,
        "bounds": suite.bounds_suite,
        "conv": suite.conv_suite,
    }
    models = [] if args.no_suite else builders[name]()
    models += suite.user_models(args.models)
    if not models:
        raise ExactCompressError("nothing to benchmark: --no-suite needs --models")
    out = args.output or f"bench-results/{'full' if name == 'paper' else name}"
    make_dir(out)  # an unusable folder is a one-line error before any run
    limit = args.time_limit if args.time_limit is not None else _DEFAULT_TIME_LIMIT[name]
    configs, formulations, solvers = _DEFAULTS.get(name, _DEFAULT_SETTINGS)
    result = runner.sweep(
        models,
        out,
        configs=args.configs or configs,
        formulations=args.formulations or formulations,
        solvers=args.solvers or solvers,
        time_limit=limit,
        cache_dir=args.cache,
        data_dir=args.data_dir,
        plots=not args.no_plots,
        verbose=args.verbose,
        workers=args.workers,
        scheduler=args.scheduler,
    )
    for problem in result.problems:
        print(f"exactcompress bench: {problem}", file=sys.stderr)
    print(f"{result.ran} runs now, {len(result.rows)} in {result.csv_path}")
    print(f"report: {result.report_path}")
    if result.interrupted:
        return 130
    return 1 if result.problems else 0
