"""The torch paths on CUDA against the same paths on the CPU, on the same networks, side
by side in one run (benchmarks/README.md, *On a GPU*).

For each model: every bounds method on both devices, each checked for soundness against
float64 forward passes on the CPU (the data and random points of the box, with their
rounding error) and compared with the other device; the witness search from the same
starts on both devices, each witness re-checked on the CPU; and the whole default
pipeline (bounds, sampling, witness search, branch and bound, MILP with HiGHS) on both
devices. Bounds that miss a point, a witness search point outside the box, or two
complete runs with different states fail the check (exit status 1); a flip is counted
only where the CPU forward pass shows it beyond rounding. Speed is reported as CPU and
CUDA seconds side by side.

Usage: ``python -m benchmarks.device_check [--device cuda] [--time-limit S] [--json F]
MODEL.pt ...`` (the hard suite's cached models). ``--device cpu`` runs the same checks
CPU against CPU, to try the script where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from exactcompress.bounds import LayerBounds, compute_bounds, decide_from_bounds
from exactcompress.cli import load_data
from exactcompress.domain import Box
from exactcompress.io import load_model_file
from exactcompress.network import ReLUNetwork
from exactcompress.refute import gradient_search
from exactcompress.stability import StabilityOptions, find_stable_neurons

METHODS = ("interval", "crown", "alpha-crown")


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _misses(bounds: LayerBounds, pre: list[np.ndarray], err: list[np.ndarray]) -> int:
    """Points whose pre-activation is certainly outside its bounds (beyond rounding)."""
    return sum(
        int(((g + e < lo) | (g - e > hi)).sum())
        for lo, hi, g, e in zip(bounds.lower, bounds.upper, pre, err)
    )


def _stable_counts(bounds: LayerBounds) -> list[int]:
    """[stably active, stably inactive] neurons by these bounds, all layers together."""
    return [sum(int(m.sum()) for m in side) for side in decide_from_bounds(bounds)]


def check_bounds(net: ReLUNetwork, box: Box, points: np.ndarray, device: str) -> dict:
    pre, err = net.preactivations_with_error(points)
    rows = {}
    for method in METHODS:
        cpu, t_cpu = _timed(compute_bounds, net, box, method, device="cpu")
        dev, t_dev = _timed(compute_bounds, net, box, method, device=device)
        gap = max(
            float(np.max(np.abs(np.concatenate([a - b for a, b in zip(x, y)]))))
            for x, y in ((cpu.lower, dev.lower), (cpu.upper, dev.upper))
        )
        rows[method] = {
            "misses_cpu": _misses(cpu, pre, err),
            "misses_device": _misses(dev, pre, err),
            "max_gap": gap,
            "active_inactive_cpu": _stable_counts(cpu),
            "active_inactive_device": _stable_counts(dev),
            "seconds_cpu": t_cpu,
            "seconds_device": t_dev,
        }
    return rows


def check_witnesses(net: ReLUNetwork, box: Box, starts: np.ndarray, device: str) -> dict:
    """Push every neuron both ways from the same starts; count each side's flips."""
    every = [np.arange(w) for w in net.hidden_widths]
    row = {}
    for name, dev in (("cpu", "cpu"), ("device", device)):
        pts, secs = _timed(gradient_search, net, box, every, every, starts, device=dev)
        pre, err = net.preactivations_with_error(pts)
        row[f"outside_box_{name}"] = int((~box.contains(pts)).sum())
        row[f"flipped_up_{name}"] = sum(int(((g - e) > 0).any(0).sum()) for g, e in zip(pre, err))
        row[f"flipped_down_{name}"] = sum(int(((g + e) < 0).any(0).sum()) for g, e in zip(pre, err))
        row[f"seconds_{name}"] = secs
    return row


def check_pipeline(net: ReLUNetwork, data: np.ndarray, device: str, limit: float) -> dict:
    row = {}
    for name, dev in (("cpu", "cpu"), ("device", device)):
        options = StabilityOptions(time_limit=limit, solver="highs", device=dev)
        report, secs = _timed(find_stable_neurons, net, data=data, options=options)
        out = report.to_json()
        row[f"complete_{name}"] = report.complete
        row[f"states_{name}"] = json.dumps(out["layers"], sort_keys=True)
        row[f"decided_by_{name}"] = out["decided_by"]
        row[f"seconds_{name}"] = {k: round(v, 3) for k, v in report.seconds.items()}
        row[f"total_{name}"] = secs
    both = row["complete_cpu"] and row["complete_device"]
    row["same_states"] = row["states_cpu"] == row["states_device"] if both else None
    return row


def failures(model: str, result: dict) -> list[str]:
    bad = []
    for method, row in result["bounds"].items():
        if row["misses_cpu"] or row["misses_device"]:
            bad.append(f"{model}: {method} bounds miss points {row}")
    w = result["witnesses"]
    if w["outside_box_cpu"] or w["outside_box_device"]:
        bad.append(f"{model}: witnesses outside the box {w}")
    if result.get("pipeline", {}).get("same_states") is False:
        bad.append(f"{model}: complete runs with different states")
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--time-limit", type=float, default=120.0)
    parser.add_argument("--points", type=int, default=2000, help="random points per model")
    parser.add_argument("--no-pipeline", action="store_true")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args()
    results, bad = {}, []
    print("model | method | misses cpu/device | max gap | stable cpu/device | cpu s / device s")
    for path in map(Path, args.models):
        net, _ = load_model_file(path)
        spec = "digits-rgb32" if "rgb32" in path.name else "digits28"
        data = load_data(spec, None, net.widths[0])
        box = Box.uniform(net.widths[0])
        rng = np.random.default_rng(0)
        points = np.concatenate([data, box.sample(args.points, rng)])
        result = {"bounds": check_bounds(net, box, points, args.device)}
        for method, r in result["bounds"].items():
            print(
                f"{path.stem} | {method} | {r['misses_cpu']}/{r['misses_device']} | "
                f"{r['max_gap']:.2e} | {sum(r['active_inactive_cpu'])}/"
                f"{sum(r['active_inactive_device'])} | "
                f"{r['seconds_cpu']:.3f} / {r['seconds_device']:.3f}",
                flush=True,
            )
        result["witnesses"] = w = check_witnesses(net, box, data[:256], args.device)
        print(
            f"{path.stem} | witnesses | flips up {w['flipped_up_cpu']}/{w['flipped_up_device']}, "
            f"down {w['flipped_down_cpu']}/{w['flipped_down_device']} | "
            f"{w['seconds_cpu']:.2f} / {w['seconds_device']:.2f} s",
            flush=True,
        )
        if not args.no_pipeline:
            result["pipeline"] = p = check_pipeline(net, data, args.device, args.time_limit)
            print(
                f"{path.stem} | pipeline | complete {p['complete_cpu']}/{p['complete_device']} | "
                f"same states {p['same_states']} | {p['total_cpu']:.1f} / {p['total_device']:.1f}"
                f" s | seconds cpu {p['seconds_cpu']} device {p['seconds_device']}",
                flush=True,
            )
        results[path.stem] = result
        bad += failures(path.stem, result)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    for line in bad:
        print("FAIL", line)
    print("device check:", "FAILED" if bad else "passed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
