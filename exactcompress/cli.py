"""The ``exactcompress`` command: demo, train, stability, prune, compress, evaluate."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

import formulations

from .bench_cli import add_bench_parser, cmd_bench
from .check import add_check_parser, cmd_check
from .domain import Box
from .errors import ExactCompressError
from .stability import PROVERS, TIGHTEN, StabilityOptions


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def registered_names() -> tuple[list[str], list[str]]:
    """(formulations, ReLU encodings) for --help; a formulation module that fails to
    import is reported when a formulation is looked up, not by every command's parser."""
    try:
        formulations.discover()
    except ImportError:
        pass
    return sorted(formulations.FORMULATIONS), sorted(formulations.RELU_ENCODINGS)


#: defaults of the stability options, shown in --help; every such option's argparse
#: default is None, so options_from can tell what the user gave (see there)
DEFAULTS = StabilityOptions()


def add_stability_options(p: argparse.ArgumentParser) -> None:
    forms, relus = registered_names()
    p.add_argument("model", help="model file: .pt/.tar checkpoint, state dict or weights.dat")
    p.add_argument(
        "--domain", default=None, help="LO:HI for every input, or a .npy/.txt (2, n) file"
    )
    p.add_argument(
        "--formulation",
        default=None,
        help=f"{' | '.join(forms)} | NAME of a module or entry point that registers it "
        f"(default {DEFAULTS.formulation})",
    )
    p.add_argument(
        "--relu",
        default=None,
        choices=relus,
        help="ReLU encoding of the formulations built on formulations.build_layers "
        f"(default {DEFAULTS.relu})",
    )
    p.add_argument(
        "--solver", default=None, help="auto (default) | highs | gurobi | scip | cbc | glpk | cplex"
    )
    p.add_argument("--time-limit", type=float, default=None, metavar="S", help="total seconds")
    p.add_argument("--data", default=None, help="dataset name (its training split) or a .npy file")
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/CIFAR files")
    p.add_argument(
        "--bounds",
        default=None,
        help="auto = interval for the cheap stages, alpha-CROWN and LP bounds for the neurons "
        "the exact stage models | interval | crown | alpha-crown "
        f"(default {DEFAULTS.bounds})",
    )
    p.add_argument(
        "--prover",
        default=None,
        choices=PROVERS,
        help="exact stage: bab = branch and bound on sound bounds, milp = the formulation's "
        "MILP, auto = branch and bound first, the MILP for what it leaves "
        f"(default {DEFAULTS.prover}; milp with --paper)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="threads for branch and bound: candidates of a layer side by side, and the "
        "subdomain LPs of a candidate left alone N at a time (default: the cores this "
        "process may use)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="run the exact stage's candidates as tasks on a local Dask cluster of N worker "
        "processes (default 1: in this process; needs exactcompress[dist])",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run them on the workers of a running Dask scheduler (tcp://host:8786)",
    )
    p.add_argument(
        "--certify",
        action="store_true",
        default=None,
        help="re-prove every MILP proof by branch and bound in sound arithmetic; "
        "a proof that cannot be re-proved becomes undecided",
    )
    p.add_argument(
        "--tighten",
        default=None,
        choices=TIGHTEN,
        help="lp: tighten the open neurons' bounds by LP (HiGHS) before the MILP",
    )
    p.add_argument(
        "--witness-search",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="gradient search for witnesses before the MILP (default on, off with --paper)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help=f"random points and corners to try (default {DEFAULTS.samples}, 0 with --paper)",
    )
    p.add_argument(
        "--paper",
        action="store_true",
        help="the NeurIPS 2021 configuration: interval bounds, data only, network formulation; "
        "options given explicitly still win",
    )
    p.add_argument("--device", default=None, help="torch device for bounds and witness search")
    p.add_argument("--threads", type=int, default=None, help="solver threads")
    p.add_argument("--seed", type=int, default=None, help=f"default {DEFAULTS.seed}")
    p.add_argument("--verbose", action="store_true", default=None, help="show the solver's log")


def options_from(args: argparse.Namespace) -> StabilityOptions:
    """Options given on the command line win over ``--paper``'s, which win over the
    defaults. Every option named like a StabilityOptions field is read: its argparse
    default must be None, which means "not given"."""
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(StabilityOptions)
        if getattr(args, f.name, None) is not None
    }
    return StabilityOptions.paper(**given) if args.paper else StabilityOptions(**given)


def load_data(spec: str | None, data_dir: str | None, n_inputs: int) -> np.ndarray | None:
    if spec is None:
        return None
    if spec.endswith(".npy"):
        try:
            x = np.load(spec)
        except (OSError, ValueError) as err:
            raise ExactCompressError(f"cannot read data file {spec}: {err}") from None
    else:
        from .data import load_dataset

        x, _ = load_dataset(spec, "train", data_dir)
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if x.shape[1] != n_inputs:
        raise ExactCompressError(
            f"data {spec} has {x.shape[1]} features but the network takes {n_inputs} inputs"
        )
    return x


def cmd_stability(args: argparse.Namespace) -> int:
    from .io import check_writable, load_network
    from .stability import find_stable_neurons

    if args.json:
        check_writable(args.json)
    net = load_network(args.model)
    box = Box.parse(args.domain, net.widths[0])
    box.check_dim(net.widths[0])
    data = load_data(args.data, args.data_dir, net.widths[0])
    report = find_stable_neurons(net, box, data, options_from(args), say)
    print_counts(report)
    if args.json:
        report.save(args.json)
        say(f"wrote {args.json}")
    if args.export_vnnlib:
        from .vnnlib import export_candidates

        cands = report.extra.get("milp", {}).get("why_candidates", [])
        done = export_candidates(net, box, cands, args.export_vnnlib)
        say(f"wrote {len(done)} VNN-LIB properties to {args.export_vnnlib}")
    return 0 if not report.interrupted else 130


def print_counts(report) -> None:
    for layer, states in enumerate(report.states):
        c = {
            k: int((states == k).sum())
            for k in ("stably_active", "stably_inactive", "unstable", "undecided")
        }
        print(
            f"layer {layer + 1}: {len(states)} neurons, {c['stably_active']} stably active, "
            f"{c['stably_inactive']} stably inactive, {c['unstable']} unstable, "
            f"{c['undecided']} undecided"
        )
    for cand in report.candidates:
        for e in cand.extremes:
            seen = "nothing seen" if e["seen"] is None else f"seen {e['seen']:.4g}"
            print(
                f"undecided: layer {cand.layer} neuron {cand.neuron}: {e['extreme']} g "
                f"between {seen} and bound {e['bound']:.4g} ({e['bound_by']})"
            )
    print(f"complete: {str(report.complete).lower()}, {report.seconds.get('total', 0):.2f} s")


def cmd_prune(args: argparse.Namespace) -> int:
    from .io import load_model_file, save_model
    from .prune import compress
    from .report import StabilityReport

    net, _ = load_model_file(args.model)
    report = StabilityReport.load(args.stability)
    if report.widths != net.widths:
        raise ExactCompressError(
            f"{args.stability} is for widths {report.widths}, the model has {net.widths}"
        )
    box = Box.from_json(report.domain, net.widths[0]) if report.domain else None
    compressed, summary = compress(net, report.states, box=box)
    save_model(args.output, compressed, {"source": str(args.model), "stability": report.counts()})
    print(summary.to_markdown())
    say(f"wrote {args.output}")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from .api import compress
    from .io import load_model_file, make_dir

    net, source = load_model_file(args.model)
    box = Box.parse(args.domain, net.widths[0])
    box.check_dim(net.widths[0])
    data = load_data(args.data, args.data_dir, net.widths[0])
    make_dir(args.output)  # before the work, not after it
    if args.onnx:
        from .onnx_io import require_onnx

        require_onnx("--onnx")
        if not net.is_dense:  # said before the work, not after it
            raise ExactCompressError(
                "--onnx: ONNX export of convolution layers is not supported yet; "
                "run without --onnx (compressed.pt holds the compressed network)"
            )
    result = compress(net, box, data, options_from(args), say)
    written = "stability.json, compressed.pt, report.md"
    if args.onnx:
        result.verification = write_onnx(result, box, data, source, args.output)
        written += ", compressed.onnx"
    result.save(args.output, str(args.model))
    print_counts(result.report)
    print(result.summary.to_markdown())
    print(result.verification.summary())
    say(f"wrote {args.output}/{written}")
    if not result.verification.ok:
        raise ExactCompressError(
            "verification failed: the compressed network differs; please report"
        )
    return 0 if not result.report.interrupted else 130


def write_onnx(result, box: Box, data: np.ndarray | None, source: dict, outdir: str):
    """OUTDIR/compressed.onnx (float64; an ONNX model's input and output names and
    shape), and the verification again with it run in onnxruntime as a second engine."""
    from .onnx_io import save_onnx
    from .verify import verify, witness_points

    path = os.path.join(outdir, "compressed.onnx")
    save_onnx(path, result.compressed, source)
    witnesses = witness_points(result.report)
    return verify(
        result.original, result.compressed, box, data, witnesses=witnesses, onnx_model=path
    )


def cmd_train(args: argparse.Namespace) -> int:
    from .io import check_writable, save_model
    from .train import train

    arch = parse_arch(args.arch)
    check_writable(args.output)

    def show(epoch: int, loss: float) -> None:
        say(f"epoch {epoch:3d}/{args.epochs}  loss {loss:.4f}")

    net, meta = train(
        args.dataset,
        arch,
        l1=args.l1,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        data_dir=args.data_dir,
        progress=show,
    )
    save_model(args.output, net, meta)
    print(f"test accuracy {100 * meta['test_accuracy']:.2f}%  -> {args.output}")
    return 0


def parse_arch(spec: str) -> list[int | str]:
    if "conv" in spec:  # convolutions first: conv16-conv32/s2-100
        from .train import parse_arch as parse_conv_arch

        return parse_conv_arch(spec)
    try:
        arch = [int(v) for v in spec.replace("x", "-").split("-") if v]
    except ValueError:
        raise ExactCompressError(f"--arch {spec!r} is not widths like 100-100") from None
    if not arch or min(arch) < 1:
        raise ExactCompressError(f"--arch {spec!r} needs at least one positive width")
    return arch


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .io import load_model_file
    from .train import accuracy

    net, meta = load_model_file(args.model)
    dataset = args.dataset or meta.get("dataset")
    if not dataset:
        raise ExactCompressError("the model records no dataset: pass --dataset")
    x, y = load_dataset(dataset, "test", args.data_dir)
    if x.shape[1] != net.widths[0]:
        raise ExactCompressError(
            f"{dataset} has {x.shape[1]} features, the model takes {net.widths[0]}"
        )
    print(
        f"{dataset} test accuracy {100 * accuracy(net, x, y):.2f}% "
        f"({net.n_parameters} parameters, widths {net.widths})"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .api import compress
    from .data import load_dataset
    from .io import make_dir, save_model
    from .train import accuracy, train

    t0 = time.monotonic()
    outdir = args.output or tempfile.mkdtemp(prefix="exactcompress-demo-")
    make_dir(outdir)  # before training: an unusable folder fails at once, in one line
    say("1/3 training a 64-32-32-10 network on scikit-learn's digits with L1 = 2e-3 ...")
    net, meta = train("digits", [32, 32], l1=2e-3, epochs=40, seed=args.seed)
    save_model(os.path.join(outdir, "model.pt"), net, meta)
    say(f"    test accuracy {100 * meta['test_accuracy']:.2f}%")
    say("2/3 finding stable neurons over [0, 1]^64 and compressing ...")
    x_train, _ = load_dataset("digits", "train")
    result = compress(net, Box.uniform(64), x_train.astype(np.float64), StabilityOptions(), say)
    result.save(outdir, "model.pt")
    say("3/3 results")
    x_test, y_test = load_dataset("digits", "test")
    print_counts(result.report)
    print(result.summary.to_markdown())
    print(result.verification.summary())
    print(
        f"accuracy before {100 * accuracy(net, x_test, y_test):.2f}%, "
        f"after {100 * accuracy(result.compressed, x_test, y_test):.2f}%"
    )
    print(f"outputs in {outdir}  ({time.monotonic() - t0:.1f} s)")
    return 0 if result.verification.ok else 1


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": cmd_demo,
    "train": cmd_train,
    "stability": cmd_stability,
    "prune": cmd_prune,
    "compress": cmd_compress,
    "evaluate": cmd_evaluate,
    "bench": cmd_bench,
    "check": cmd_check,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exactcompress", description="Exact compression of ReLU networks by neuron stability."
    )
    parser.add_argument("--traceback", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train a small L1 net on digits, compress it, verify")
    p.add_argument(
        "-o", "--output", default=None, help="folder for the outputs (default: a temp dir)"
    )
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("train", help="train a fully connected ReLU classifier with L1")
    p.add_argument("--dataset", default="digits")
    p.add_argument(
        "--arch", default="100-100", help="hidden widths, e.g. 100-100, or conv16-conv32/s2-100"
    )
    p.add_argument("--l1", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("-o", "--output", required=True)

    p = sub.add_parser("stability", help="classify every hidden neuron over the domain")
    add_stability_options(p)
    p.add_argument(
        "-o", "--json", "--output", dest="json", default=None, help="write stability.json here"
    )
    p.add_argument(
        "--export-vnnlib",
        default=None,
        metavar="DIR",
        help="ONNX + VNN-LIB files of the neurons that reached the exact stage",
    )

    p = sub.add_parser("prune", help="compress a model with a stability.json")
    p.add_argument("model")
    p.add_argument("stability")
    p.add_argument("-o", "--output", required=True)

    p = sub.add_parser("compress", help="stability + prune + verify into OUTDIR")
    add_stability_options(p)
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also write OUTDIR/compressed.onnx (float64) and verify it in onnxruntime",
    )

    p = sub.add_parser("evaluate", help="test accuracy of a model")
    p.add_argument("model")
    p.add_argument("--dataset", default=None)
    p.add_argument("--data-dir", default=None)

    add_bench_parser(sub)
    add_check_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ExactCompressError as err:
        if args.traceback:
            raise
        print(f"exactcompress: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("exactcompress: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
