"""The stability pipeline: cheapest evidence first, the MILP only for what is left.

bounds (prove) -> sampling of data, random points and corners (refute) ->
gradient witness search (refute) -> exact stage (prove or refute) -> StabilityReport.
Ctrl-C at any point keeps what was decided and returns an incomplete report.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

import formulations

from . import refute
from .bab import SOUND, certify_solver_proofs
from .bounds import METHODS, LayerBounds, compute_bounds, decide_from_bounds
from .distributed import SERIAL, Executor, executor_for
from .domain import Box
from .errors import ExactCompressError
from .evidence import UNDECIDED, NeuronEvidence
from .exact import check_choice, open_candidates
from .network import ReLUNetwork
from .report import StabilityReport
from .solvers import solver_factory
from .tighten import lp_tighten, tighten_for_exact

Progress = Callable[[str], None]


#: random points and corners forward-passed per round of the sampling stage
SAMPLING_ROUND = 2000
#: --tighten choices: none, or LP bounds of the open neurons before the MILP
TIGHTEN = ("none", "lp")
#: --prover choices: the MILP of a formulation, branch and bound on sound bounds, or both
PROVERS = ("auto", "bab", "milp")
#: --bounds choices: auto tightens only what reaches the exact stage
BOUNDS = ("auto", *METHODS)
#: share of the time left that --bounds auto may spend tightening (seconds without a limit)
TIGHTEN_SHARE, TIGHTEN_CAP = 0.25, 60.0
#: --prover auto: share of the time left for branch and bound, split over the candidates
#: (seconds per candidate without a limit); the MILP gets what it leaves open. On the
#: hard suite the MILP after branch and bound decided none of the leftovers on HiGHS
#: (5x100 L1 2e-4's layer-5 n56: its bound stayed at 0.030 for 180 s against branch and
#: bound's 0.012 after 37 s), so branch and bound gets most of the time: 0.9. n56's
#: search needs about 5000 subdomains: 165-170 s on one thread, 89-111 s in a whole run
#: with --jobs 2 (the run complete in 149-187 s); on one thread beside another 300 s run
#: it was still open at the limit
BAB_SHARE, BAB_CAP = 0.9, 60.0
#: --prover auto solves what branch and bound leaves with the neuron formulation when
#: the formulation is this default one; any other formulation is used as given
AUTO_HANDS_OVER = "network"


@dataclass
class StabilityOptions:
    """Everything that selects a configuration; ``paper()`` gives the NeurIPS 2021 one."""

    formulation: str = "network"
    relu: str = formulations.DEFAULT_RELU  # a name of formulations.relu_names()
    solver: str = "auto"
    bounds: str = "auto"  # interval for the cheap stages, tightened before the exact stage
    prover: str = "auto"
    witness_search: bool = True
    tighten: str = "none"
    samples: int = 10_000
    time_limit: float | None = None
    seed: int = 0
    device: str | None = None
    threads: int | None = None
    #: branch-and-bound threads; None: usable_cores(), so that a report records the number
    jobs: int | None = None
    workers: int = 1  # > 1: a local Dask cluster runs the exact stage's tasks
    scheduler: str | None = None  # address of a running Dask scheduler to use instead
    certify: bool = False
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.time_limit is not None and not self.time_limit >= 0:
            raise ExactCompressError(f"time limit must be >= 0 seconds, got {self.time_limit}")
        if self.samples < 0:
            raise ExactCompressError(f"samples must be >= 0, got {self.samples}")
        if self.bounds not in BOUNDS:
            raise ExactCompressError(
                f"unknown bounds method {self.bounds!r}; choose one of {', '.join(BOUNDS)}"
            )
        if self.prover not in PROVERS:
            raise ExactCompressError(
                f"unknown prover {self.prover!r}; choose one of {', '.join(PROVERS)}"
            )
        if self.jobs is None:
            self.jobs = usable_cores()
        if self.jobs < 1:
            raise ExactCompressError(f"jobs must be >= 1, got {self.jobs}")
        if self.workers < 1:
            raise ExactCompressError(f"workers must be >= 1, got {self.workers}")
        if self.tighten not in TIGHTEN:
            raise ExactCompressError(
                f"unknown tightening {self.tighten!r}; choose one of {', '.join(TIGHTEN)}"
            )

    @classmethod
    def paper(cls, **overrides) -> StabilityOptions:
        """Interval big-M, the data as the only refutation, the network formulation."""
        base = {"bounds": "interval", "prover": "milp", "witness_search": False, "samples": 0}
        return cls(**{**base, **overrides})


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the system says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


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
        formulations.relu_encoding(options.relu)
    except (KeyError, ImportError) as err:
        raise ExactCompressError(str(err.args[0])) from None
    check_choice(spec, options.relu)
    start = time.monotonic()
    ctx = Context(
        evidence=NeuronEvidence(net, box),
        data=data,
        options=options,
        rng=np.random.default_rng(options.seed),
        deadline=start + (float("inf") if options.time_limit is None else options.time_limit),
        say=say,
        spec=spec,
        open_solver=solver_factory(options.solver, options.verbose, options.threads, say),
        executor=executor_for(options, say),
    )
    seconds = dict.fromkeys(STAGE_NAMES, 0.0)
    interrupted = False
    try:
        for stage in STAGES:
            t0 = time.monotonic()
            stage.run(ctx)
            seconds[stage.name] = time.monotonic() - t0
            say(f"{stage.name:8s} {seconds[stage.name]:7.2f} s   {_summary(ctx.evidence)}")
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: keeping what was decided so far")
    finally:
        ctx.executor.close()
    seconds["total"] = time.monotonic() - start
    states = ctx.evidence.states()
    for cand in ctx.candidates:
        layer, j = cand["layer"] - 1, cand["neuron"]
        cand["outcome"] = str(states[layer][j])
        cand["decided_by"] = str(ctx.evidence.decider[layer][j])
        if cand["outcome"] == UNDECIDED and ctx.bounds is not None:
            cand["extremes"] = _extremes(ctx.evidence, ctx.bounds, layer, j)
    milp_stats = dict(ctx.stats.get("milp", {}))
    milp_stats["why_candidates"] = ctx.candidates
    return _report(ctx, seconds, interrupted, milp_stats)


@dataclass
class Context:
    """What the stages share: the evidence they grow, the bounds they tighten, the
    options and the clock. ``stats[stage]`` is what a stage reports for stability.json."""

    evidence: NeuronEvidence
    data: np.ndarray | None
    options: StabilityOptions
    rng: np.random.Generator
    deadline: float
    say: Progress
    spec: formulations.FormulationSpec
    open_solver: Callable
    #: runs the exact stage's provers: in this process, or on a Dask cluster (--workers)
    executor: Executor = SERIAL
    bounds: LayerBounds | None = None
    candidates: list[dict] = field(default_factory=list)
    stats: dict[str, dict] = field(default_factory=dict)

    def exact_candidates(self) -> list[tuple[int, int, str]]:
        return open_candidates(self.evidence)


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: its name (in the log, stability.json's ``seconds`` and
    the benchmark tables), the decider names it may record, and what it does."""

    name: str
    deciders: tuple[str, ...]
    run: Callable[[Context], None]


def cheap_bounds(options: StabilityOptions) -> str:
    """The bounds method of the cheap stages: ``auto`` keeps them at interval arithmetic
    and tightens only what reaches the exact stage."""
    return "interval" if options.bounds == "auto" else options.bounds


def _bounds_stage(ctx: Context) -> None:
    evidence, options = ctx.evidence, ctx.options
    ctx.bounds = compute_bounds(evidence.net, evidence.box, cheap_bounds(options), options.device)
    _prove_from_bounds(evidence, ctx.bounds, "bounds")


def _prove_from_bounds(evidence: NeuronEvidence, bounds: LayerBounds, stage: str) -> int:
    """Record every open neuron whose bounds do not cross 0; returns how many."""
    before = sum(int(evidence.settled(k).sum()) for k in range(evidence.net.n_hidden))
    active, inactive = decide_from_bounds(bounds)
    for layer, (pa, pi) in enumerate(zip(active, inactive)):
        pi = pi & ~evidence.settled(layer)
        pa = pa & ~pi & ~evidence.settled(layer)
        evidence.prove(layer, np.flatnonzero(pi), active=False, stage=stage)
        evidence.prove(layer, np.flatnonzero(pa), active=True, stage=stage)
    return sum(int(evidence.settled(k).sum()) for k in range(evidence.net.n_hidden)) - before


def _lp_stage(ctx: Context) -> None:
    evidence, options = ctx.evidence, ctx.options
    if options.tighten != "lp" or evidence.n_open() == 0 or not evidence.net.is_dense:
        return  # convolutions (sparse layers): the LP relaxation is built from dense rows
    ctx.bounds, ctx.stats["lp"] = lp_tighten(
        evidence, ctx.bounds, cheap_bounds(options), ctx.deadline, options.device, ctx.say
    )


def _tighten_stage(ctx: Context) -> None:
    """With ``--bounds auto``: tight bounds for the neurons the exact stage will model,
    paid only when candidates reach it; they also decide some candidates outright."""
    ctx.candidates = _exact_candidates(ctx.evidence, ctx.bounds)
    cands = ctx.exact_candidates()
    if ctx.options.bounds != "auto" or not cands or not ctx.evidence.net.is_dense:
        return  # convolutions (sparse layers): the MILP gets the cheap bounds
    deepest = max(layer for layer, _, _ in cands)
    deadline = _share(ctx.deadline, TIGHTEN_SHARE, TIGHTEN_CAP)
    ctx.bounds, stats = tighten_for_exact(
        ctx.evidence, ctx.bounds, deepest, deadline, ctx.options.device, ctx.say
    )
    stats["proved"] = _prove_from_bounds(ctx.evidence, ctx.bounds, "tighten")
    ctx.stats["tighten"] = stats


def _bab_stage(ctx: Context) -> None:
    cands = ctx.exact_candidates()
    options = ctx.options
    if options.prover not in ("bab", "auto") or not cands or not ctx.evidence.net.is_dense:
        return  # convolutions (sparse layers): branch and bound is dense-only, the MILP decides
    alone = options.prover == "bab"
    budget = float("inf") if alone else _bab_budget(ctx.deadline, len(cands))
    stats = ctx.executor.run_bab(
        ctx.evidence,
        ctx.bounds,
        cands,
        ctx.deadline,
        ctx.say,
        device=options.device,
        budget=budget,
        give_up=alone,
        jobs=options.jobs,
    )
    ctx.stats["bab"] = stats.to_json()


def _milp_stage(ctx: Context) -> None:
    options = ctx.options
    if options.prover not in ("milp", "auto") or not ctx.exact_candidates():
        return
    spec = ctx.spec
    if options.prover == "auto" and spec.name == AUTO_HANDS_OVER:
        # what branch and bound leaves is a few hard candidates: one MILP each, which can
        # stop as soon as its sign is settled, beats one count-maximising model on HiGHS
        spec = formulations.get("neuron")
        ctx.say("  auto: the candidates left go to one MILP each (neuron formulation)")
    ctx.stats["milp"] = ctx.executor.run_exact_stage(
        ctx.evidence,
        spec,
        ctx.bounds,
        ctx.open_solver,
        ctx.deadline,
        ctx.say,
        mine=options.witness_search,
        device=options.device,
        relu=options.relu,
    )
    ctx.stats["milp"]["formulation"] = spec.name


def _certify_stage(ctx: Context) -> None:
    """``--certify``: re-prove every MILP proof by branch and bound in sound arithmetic;
    a neuron whose re-proof fails goes back to undecided."""
    if not ctx.options.certify:
        return
    ctx.stats["certify"] = certify_solver_proofs(
        ctx.evidence, ctx.bounds, ctx.deadline, ctx.say, ctx.options.device
    )


def _share(deadline: float, share: float, cap: float) -> float:
    """A deadline ``share`` of the time left (at most ``cap`` seconds without a limit)."""
    now = time.monotonic()
    if not np.isfinite(deadline):
        return now + cap
    return now + share * max(0.0, deadline - now)


def _bab_budget(deadline: float, n_candidates: int) -> float:
    """Seconds of branch and bound per candidate before ``auto`` hands it to the MILP."""
    now = time.monotonic()
    if not np.isfinite(deadline):
        return BAB_CAP
    return max(1.0, BAB_SHARE * max(0.0, deadline - now) / max(1, n_candidates))


def _sampling_stage(ctx: Context) -> None:
    evidence, data, options, rng = ctx.evidence, ctx.data, ctx.options, ctx.rng
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


def _witness_stage(ctx: Context) -> None:
    evidence, data, options, rng = ctx.evidence, ctx.data, ctx.options, ctx.rng
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
            net,
            box,
            push_pos,
            push_neg,
            np.concatenate(starts),
            device=options.device,
            deadline=ctx.deadline,
        )
        evidence.observe(found, "witness")


#: the pipeline, cheapest evidence first; names are read by the CLI, report and benchmarks
STAGES: tuple[Stage, ...] = (
    Stage("bounds", ("bounds",), _bounds_stage),
    Stage("refute", ("data", "sampling"), _sampling_stage),
    Stage("witness", ("witness",), _witness_stage),
    Stage("lp", ("lp",), _lp_stage),
    Stage("tighten", ("tighten",), _tighten_stage),
    Stage("bab", ("bab",), _bab_stage),
    Stage("milp", ("milp",), _milp_stage),
    Stage("certify", (), _certify_stage),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
#: every decider name a report may hold
DECIDERS: tuple[str, ...] = tuple(d for s in STAGES for d in s.deciders)
SOUND_DECIDERS = SOUND


def _exact_candidates(evidence: NeuronEvidence, bounds: LayerBounds) -> list[dict]:
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


def _extremes(evidence: NeuronEvidence, bounds: LayerBounds, layer: int, j: int) -> list[dict]:
    """Where an undecided neuron's open extremes lie: between the most extreme value
    seen (a point shows it) and the best bound any stage reached (what was proved, or
    the solver's word where ``bound_by`` is ``milp``). ``max`` asks whether g > 0
    somewhere (the neuron was never seen active), ``min`` whether g < 0."""
    out = []
    sides = (("pos", "max", evidence.seen_pos), ("neg", "min", evidence.seen_neg))
    for side, extreme, seen_side in sides:
        if seen_side[layer][j]:
            continue
        s = 1.0 if side == "pos" else -1.0
        seen = evidence.g_max[layer][j] if side == "pos" else evidence.g_min[layer][j]
        final = bounds.upper[layer][j] if side == "pos" else bounds.lower[layer][j]
        bound, by = s * float(final), "bounds"
        reached = evidence.reached.get((layer, j, side))
        if reached is not None and reached[0] < bound:
            bound, by = reached
        out.append(
            {
                "extreme": extreme,
                "seen": float(seen) if np.isfinite(seen) else None,
                "bound": s * bound,
                "bound_by": by,
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


def _report(ctx: Context, seconds: dict, interrupted: bool, milp_stats: dict) -> StabilityReport:
    evidence, options = ctx.evidence, ctx.options
    deciders = [list(map(str, d)) for d in evidence.decider]
    decided_by: dict[str, int] = {}
    for d in evidence.decider:
        for name in d:
            if name:
                decided_by[name] = decided_by.get(name, 0) + 1
    notes = [f"layer {k + 1} neuron {j}: {why}" for (k, j), why in sorted(evidence.notes.items())]
    stages = {name: stats for name, stats in ctx.stats.items() if name != "milp"}
    return StabilityReport(
        widths=evidence.net.widths,
        domain=evidence.box.to_json(),
        formulation=options.formulation,
        solver=getattr(ctx.open_solver, "chosen", options.solver),
        states=evidence.states(),
        decided_by=decided_by,
        seconds=seconds,
        deciders=deciders,
        witnesses=_witness_table(evidence),
        notes=notes,
        interrupted=interrupted,
        extra={
            "options": asdict(options),
            "milp": milp_stats,
            "stages": stages,
            "proofs": _proof_kinds(evidence),
            **({} if evidence.net.convs is None else {"shapes": evidence.net.shapes}),
        },
    )


def _proof_kinds(evidence: NeuronEvidence) -> dict:
    """How many stable claims rest on sound arithmetic and how many on a solver's word."""
    stable = [
        evidence.proved_active[k] | evidence.proved_inactive[k]
        for k in range(len(evidence.decider))
    ]
    kinds = {"sound": 0, "solver": 0}
    solver = []
    for layer, (mask, names) in enumerate(zip(stable, evidence.decider)):
        for j in np.flatnonzero(mask):
            if names[j] in SOUND_DECIDERS or (layer, int(j)) in evidence.certified:
                kinds["sound"] += 1
            else:
                kinds["solver"] += 1
                solver.append([layer + 1, int(j)])
    return {**kinds, "solver_neurons": solver}


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
