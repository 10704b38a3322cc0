"""The stability pipeline: cheapest evidence first, the MILP only for what is left.

bounds (prove) -> sampling of data, random points and corners (refute) ->
gradient witness search (refute) -> exact stage (prove or refute) -> StabilityReport.
Ctrl-C at any point keeps what was decided and returns an incomplete report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

import formulations

from . import refute
from .bounds import LayerBounds, compute_bounds, decide_from_bounds
from .domain import Box
from .errors import ExactCompressError
from .exact import run_exact_stage
from .network import ReLUNetwork
from .report import NeuronEvidence, StabilityReport
from .solvers import solver_factory
from .tighten import lp_tighten

Progress = Callable[[str], None]


#: random points and corners forward-passed per round of the sampling stage
SAMPLING_ROUND = 2000
#: --tighten choices: none, or LP bounds of the open neurons before the MILP
TIGHTEN = ("none", "lp")


@dataclass
class StabilityOptions:
    """Everything that selects a configuration; ``paper()`` gives the NeurIPS 2021 one."""

    formulation: str = "network"
    solver: str = "auto"
    bounds: str = "interval"  # fastest overall: benchmarks/README.md, bounds and LP tightening
    witness_search: bool = True
    tighten: str = "none"
    samples: int = 10_000
    time_limit: float | None = None
    seed: int = 0
    device: str | None = None
    threads: int | None = None
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.time_limit is not None and not self.time_limit >= 0:
            raise ExactCompressError(f"time limit must be >= 0 seconds, got {self.time_limit}")
        if self.samples < 0:
            raise ExactCompressError(f"samples must be >= 0, got {self.samples}")
        if self.tighten not in TIGHTEN:
            raise ExactCompressError(
                f"unknown tightening {self.tighten!r}; choose one of {', '.join(TIGHTEN)}"
            )

    @classmethod
    def paper(cls, **overrides) -> StabilityOptions:
        """Interval big-M, the data as the only refutation, the network formulation."""
        base = {"bounds": "interval", "witness_search": False, "samples": 0}
        return cls(**{**base, **overrides})


def find_stable_neurons(
    net: ReLUNetwork,
    box: Box | None = None,
    data: np.ndarray | None = None,
    options: StabilityOptions | None = None,
    progress: Progress | None = None,
) -> StabilityReport:
    """Classify every hidden neuron over ``box`` (default [0, 1]^n)."""
    options = options or StabilityOptions()
    say = progress or (lambda _msg: None)
    box = box or Box.uniform(net.widths[0])
    box.check_dim(net.widths[0])
    if data is not None:
        data = np.asarray(data, dtype=np.float64).reshape(len(data), -1)
        if data.shape[1] != net.widths[0]:
            raise ExactCompressError(
                f"data has {data.shape[1]} features but the network takes {net.widths[0]} inputs"
            )
    try:
        spec = formulations.get(options.formulation)
    except (KeyError, ImportError) as err:
        raise ExactCompressError(str(err.args[0])) from None
    open_solver = solver_factory(options.solver, options.verbose, options.threads, say)

    evidence = NeuronEvidence(net, box)
    seconds = {"bounds": 0.0, "refute": 0.0, "witness": 0.0, "lp": 0.0, "milp": 0.0}
    start = time.monotonic()
    deadline = start + (float("inf") if options.time_limit is None else options.time_limit)
    rng = np.random.default_rng(options.seed)
    interrupted, milp_stats = False, {}
    stage_names = [
        ("bounds", lambda: _bounds_stage(evidence, options)),
        ("refute", lambda: _sampling_stage(evidence, data, options, rng)),
        ("witness", lambda: _witness_stage(evidence, data, options, rng)),
        ("lp", lambda: _lp_stage(evidence, bounds, options, deadline, say)),
    ]
    bounds: LayerBounds | None = None
    candidates: list[dict] = []
    try:
        for name, run in stage_names:
            t0 = time.monotonic()
            result = run()
            seconds[name] = time.monotonic() - t0
            if name in ("bounds", "lp"):
                bounds = result
            say(f"{name:8s} {seconds[name]:7.2f} s   {_summary(evidence)}")
        candidates = _milp_candidates(evidence, bounds)
        t0 = time.monotonic()
        milp_stats = run_exact_stage(
            evidence,
            spec,
            bounds,
            open_solver,
            deadline,
            say,
            mine=options.witness_search,
            device=options.device,
        )
        seconds["milp"] = time.monotonic() - t0
        say(f"{'milp':8s} {seconds['milp']:7.2f} s   {_summary(evidence)}")
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: keeping what was decided so far")
    seconds["total"] = time.monotonic() - start
    states = evidence.states()
    for cand in candidates:
        cand["outcome"] = str(states[cand["layer"] - 1][cand["neuron"]])
    milp_stats["why_candidates"] = candidates
    return _report(evidence, options, box, seconds, interrupted, milp_stats, open_solver)


def _bounds_stage(evidence: NeuronEvidence, options: StabilityOptions) -> LayerBounds:
    bounds = compute_bounds(evidence.net, evidence.box, options.bounds, options.device)
    active, inactive = decide_from_bounds(bounds)
    for layer, (pa, pi) in enumerate(zip(active, inactive)):
        evidence.prove(layer, np.flatnonzero(pi), active=False, stage="bounds")
        evidence.prove(layer, np.flatnonzero(pa & ~pi), active=True, stage="bounds")
    return bounds


def _lp_stage(
    evidence: NeuronEvidence,
    bounds: LayerBounds,
    options: StabilityOptions,
    deadline: float,
    say: Progress,
) -> LayerBounds:
    if options.tighten != "lp" or evidence.n_open() == 0:
        return bounds
    return lp_tighten(evidence, bounds, options.bounds, deadline, options.device, say)[0]


def _sampling_stage(
    evidence: NeuronEvidence, data: np.ndarray | None, options: StabilityOptions, rng
) -> None:
    if data is not None:
        for chunk in np.array_split(data, max(1, len(data) // 4096)):
            evidence.observe(chunk, "data")
    # in rounds, so that a network the data already settled pays for no sampling at all
    left = options.samples
    while left > 0 and evidence.n_open() > 0:
        n = min(left, SAMPLING_ROUND)
        n_corners = n // 10
        evidence.observe(
            refute.sampling_points(evidence.box, n - n_corners, n_corners, rng), "sampling"
        )
        left -= n


def _witness_stage(
    evidence: NeuronEvidence, data: np.ndarray | None, options: StabilityOptions, rng
) -> None:
    if not options.witness_search or evidence.n_open() == 0:
        return
    net, box = evidence.net, evidence.box
    evidence.observe(
        refute.first_layer_extremes(net, box, evidence.open_inactive(0), evidence.open_active(0)),
        "witness",
    )
    starts = [refute.sampling_points(box, 256, 64, rng)]
    if data is not None and len(data):
        starts.append(data[rng.choice(len(data), size=min(len(data), 512), replace=False)])
    push_pos = [evidence.open_inactive(layer) for layer in range(net.n_hidden)]
    push_neg = [evidence.open_active(layer) for layer in range(net.n_hidden)]
    if sum(len(p) for p in push_pos + push_neg):
        found = refute.gradient_search(
            net, box, push_pos, push_neg, np.concatenate(starts), device=options.device
        )
        evidence.observe(found, "witness")


def _milp_candidates(evidence: NeuronEvidence, bounds: LayerBounds) -> list[dict]:
    """Each neuron about to reach the MILP, and why no earlier stage could decide it:
    its bounds cross 0, and no point tried put it on the side it was never seen on."""
    out = []
    for layer in range(evidence.net.n_hidden):
        lo, up = bounds.lower[layer], bounds.upper[layer]
        for j in sorted(set(evidence.open_inactive(layer)) | set(evidence.open_active(layer))):
            never = [
                s
                for s, seen in (("active", evidence.seen_pos), ("inactive", evidence.seen_neg))
                if not seen[layer][j]
            ]
            gmax, gmin = evidence.g_max[layer][j], evidence.g_min[layer][j]
            seen = (
                f"pre-activation seen in [{gmin:.3g}, {gmax:.3g}]"
                if np.isfinite(gmax)
                else "no point tried"
            )
            out.append(
                {
                    "layer": layer + 1,
                    "neuron": int(j),
                    "never_seen": never,
                    "bounds": [float(lo[j]), float(up[j])],
                    "seen_range": [float(gmin), float(gmax)] if np.isfinite(gmax) else None,
                    "why": f"bounds [{lo[j]:.3g}, {up[j]:.3g}] cross 0; never seen "
                    f"{' or '.join(never)} in {evidence.n_observed} points ({seen})",
                }
            )
    return out


def _summary(evidence: NeuronEvidence) -> str:
    states = evidence.states()
    counts = {
        k: sum(int((s == k).sum()) for s in states)
        for k in ("stably_active", "stably_inactive", "unstable")
    }
    return (
        f"active {counts['stably_active']}, inactive {counts['stably_inactive']}, "
        f"unstable {counts['unstable']}, open {evidence.n_open()}"
    )


def _report(
    evidence: NeuronEvidence,
    options: StabilityOptions,
    box: Box,
    seconds: dict,
    interrupted: bool,
    milp_stats: dict,
    open_solver,
) -> StabilityReport:
    deciders = [list(map(str, d)) for d in evidence.decider]
    decided_by: dict[str, int] = {}
    for d in evidence.decider:
        for name in d:
            if name:
                decided_by[name] = decided_by.get(name, 0) + 1
    witnesses = _witness_table(evidence)
    notes = [f"layer {k + 1} neuron {j}: {why}" for (k, j), why in sorted(evidence.notes.items())]
    return StabilityReport(
        widths=evidence.net.widths,
        domain=box.to_json(),
        formulation=options.formulation,
        solver=getattr(open_solver, "chosen", options.solver),
        states=evidence.states(),
        decided_by=decided_by,
        seconds=seconds,
        deciders=deciders,
        witnesses=witnesses,
        notes=notes,
        interrupted=interrupted,
        extra={"options": asdict(options), "milp": milp_stats},
    )


def _witness_table(evidence: NeuronEvidence) -> dict:
    """Witness inputs of the unstable neurons, each distinct point stored once."""
    points: list[list[float]] = []
    index: dict[bytes, int] = {}
    layers = []
    for layer in range(evidence.net.n_hidden):
        unstable = evidence.unstable(layer)
        entry = {}
        for side, wit in (
            ("pos", evidence.witness_pos[layer]),
            ("neg", evidence.witness_neg[layer]),
        ):
            refs = {}
            for j, x in wit.items():
                if unstable[j]:
                    key = x.tobytes()
                    if key not in index:
                        index[key] = len(points)
                        points.append(x.tolist())
                    refs[str(j)] = index[key]
            entry[side] = refs
        layers.append(entry)
    return {"points": points, "layers": layers}
