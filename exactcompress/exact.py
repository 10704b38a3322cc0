"""The exact stage: drive a formulation's model with a solver adapter until every
candidate is refuted by a witness, proved stable by a bound, or given up.

Three strategies, chosen by the formulation's registration (``STRATEGIES``): "network"
(ISA) solves one model whose objective counts candidates in their unseen state (with a
solver that restarts to drop refuted ones, a gradient search from each of its solutions
refutes many at once); "neuron" (LEO) solves one objective per candidate on a
persistent model, layer by layer; "layer" runs the network strategy on one hidden
layer at a time. Every model is checked against the formulation contract
(``Handle.validate``) before each solve, and proved neurons are fixed through their
ReLU encoding (``Handle.fix_state``), which alone knows its binary's polarity.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from formulations import (
    DEFAULT_RELU,
    FLIP_MARGIN,
    Candidate,
    FormulationError,
    FormulationSpec,
    Handle,
    MILPInput,
)

from . import refute
from .bounds import LayerBounds
from .errors import ExactCompressError
from .evidence import NeuronEvidence
from .solvers import Reaction, SolveNeeds, SolverAdapter

STAGE = "milp"
#: the count objective is integral, and refuted indicators are answered with zero
COUNT_NEEDS = SolveNeeds(integral_objective=True, lazy_constraints=True)
#: seconds between two progress lines of a running exact stage
PROGRESS_EVERY = 5.0
Progress = Callable[[str], None]
AdapterFactory = Callable[[Handle], SolverAdapter]


def open_candidates(evidence: NeuronEvidence) -> list[Candidate]:
    """(layer, neuron, side) for every side of every neuron still to decide."""
    out: list[Candidate] = []
    for layer in range(evidence.net.n_hidden):
        out += [(layer, int(j), "pos") for j in evidence.open_inactive(layer)]
        out += [(layer, int(j), "neg") for j in evidence.open_active(layer)]
    return out


def is_refuted(evidence: NeuronEvidence, cand: Candidate) -> bool:
    """A candidate leaves the search once seen on its unseen side or settled otherwise."""
    layer, j, side = cand
    seen = evidence.seen_pos if side == "pos" else evidence.seen_neg
    return bool(seen[layer][j] or evidence.settled(layer)[j] or evidence.given_up[layer][j])


def prove_candidate(evidence: NeuronEvidence, cand: Candidate) -> None:
    layer, j, side = cand
    evidence.prove(layer, np.array([j]), active=(side == "neg"), stage=STAGE)


def milp_input(evidence: NeuronEvidence, bounds: LayerBounds) -> MILPInput:
    net, box = evidence.net, evidence.box
    return MILPInput(
        net.weights[:-1],
        net.biases[:-1],
        box.lo,
        box.hi,
        bounds.lower,
        bounds.upper,
        evidence.fixed_states(),
    )


def seconds_left(deadline: float) -> float:
    return deadline - time.monotonic()


def build_model(
    spec: FormulationSpec,
    evidence: NeuronEvidence,
    bounds: LayerBounds,
    cands: list[Candidate],
    relu: str,
) -> Handle:
    """The formulation's model of ``cands``, its open neurons in ReLU encoding ``relu``."""
    try:
        return spec.build(milp_input(evidence, bounds), cands, relu=relu)
    except FormulationError as err:
        raise ExactCompressError(f"formulation {spec.name}: {err}") from None


def validate(handle: Handle) -> None:
    """Refuse, in one line, a model the drivers would misread: checked before every
    solve, since the drivers change its objective and fixings between solves."""
    try:
        handle.validate()
    except FormulationError as err:
        raise ExactCompressError(f"{handle.model.name}: {err}") from None


#: harvested MILP solutions kept as starting points of the gradient search
MINING_POOL = 64


class Miner:
    """Gradient search from the MILP's solutions toward the candidates still alive.

    A count-maximising solution need only bring a candidate within FLIP_MARGIN of its
    unseen side, so its forward pass often flips none; a few projected-gradient steps
    from it (refute.gradient_search) usually flip most of them. Every point found is
    forward-passed like any other, so witnesses stay float64 forward passes.
    """

    def __init__(self, evidence: NeuronEvidence, device: str | None = None) -> None:
        self.evidence = evidence
        self.device = device
        self.pool: list[np.ndarray] = []

    def __call__(self, x: np.ndarray, targets: list[Candidate]) -> None:
        x = np.asarray(x, dtype=np.float64)
        if not self.pool or not np.array_equal(self.pool[-1], x):
            self.pool.append(x)
            del self.pool[:-MINING_POOL]
        n = self.evidence.net.n_hidden
        pos = [[] for _ in range(n)]
        neg = [[] for _ in range(n)]
        for layer, j, side in targets:
            (pos if side == "pos" else neg)[layer].append(j)
        if not any(pos) and not any(neg):
            return
        found = refute.gradient_search(
            self.evidence.net,
            self.evidence.box,
            [np.array(p, dtype=int) for p in pos],
            [np.array(q, dtype=int) for q in neg],
            np.array(self.pool),
            device=self.device,
        )
        self.evidence.observe(found, STAGE)


def run_network_strategy(
    evidence: NeuronEvidence,
    spec: FormulationSpec,
    bounds: LayerBounds,
    open_solver: AdapterFactory,
    deadline: float,
    progress: Progress,
    mine: bool = True,
    device: str | None = None,
    relu: str = DEFAULT_RELU,
    layer: int | None = None,
) -> dict:
    """ISA: maximise the number of flipped candidates, drop refuted ones, re-solve
    until the proven bound says none can flip. ``mine=False`` keeps the paper's
    refutation: forward passes of the solutions only, no gradient search from them.
    ``layer`` restricts it to the candidates of that hidden layer."""
    cands = [c for c in open_candidates(evidence) if layer in (None, c[0])]
    stats = {"candidates": len(cands), "solves": 0, "binaries": 0}
    if not cands:
        return stats
    handle = build_model(spec, evidence, bounds, cands, relu)
    stats["binaries"] = handle.n_binaries()
    solver = open_solver(handle)
    solver.load(handle)
    alive = dict.fromkeys(cands)
    objective = handle.model.objective
    refuted_in_solve: list[Candidate] = []
    # Gurobi drops refuted indicators inside one solve (lazy constraints); a solver that
    # restarts for them gets fewer restarts when each solution refutes more
    miner = None if solver.lazy_constraints or not mine else Miner(evidence, device)

    def drop_refuted() -> list[Candidate]:
        gone = [c for c in alive if is_refuted(evidence, c)]
        for c in gone:
            del alive[c]
        refuted_in_solve.extend(gone)
        return gone

    def on_solution(x: np.ndarray, _objective: float) -> Reaction:
        evidence.observe(x, STAGE)
        if miner is not None:
            miner(x, [c for c in alive if not is_refuted(evidence, c)])
        gone = drop_refuted()
        return Reaction(zero=[handle.z[c] for c in gone])

    while alive:
        left = seconds_left(deadline)
        if left <= 0:
            break
        refuted_in_solve.clear()
        validate(handle)
        outcome = solver.maximize(left, on_solution, needs=COUNT_NEEDS)
        stats["solves"] += 1
        drop_refuted()
        for c in cands:
            if c not in alive and not handle.z[c].fixed:
                handle.z[c].fix(0)
        progress(
            f"  milp solve {stats['solves']}: {outcome.status}, bound {outcome.bound:.3g}, "
            f"{len(refuted_in_solve)} refuted, {len(alive)} candidates left"
        )
        if outcome.status in ("optimal", "stopped") and outcome.bound < 1 - 1e-6:
            why = count_inconsistency(evidence, outcome, list(alive))
            for c in alive:
                if why:
                    evidence.give_up(c[0], [c[1]], why)
                else:
                    prove_candidate(evidence, c)
            alive.clear()
        elif outcome.status == "optimal" and not refuted_in_solve:
            # the count can only be raised within FLIP_MARGIN of 0, where no forward pass
            # confirms a flip: settle each such candidate by its own extreme instead
            stuck = [c for c in alive if (solver.value(handle.z[c]) or 0) > 0.5] or list(alive)
            count = objective.expr
            for c in stuck:
                if decide_by_extreme(evidence, handle, solver, c, deadline) == "time_limit":
                    break
                del alive[c]
                handle.z[c].fix(0)
            objective.set_value(count)
        elif outcome.status not in ("optimal", "stopped"):
            break
    for layer, j, _ in alive:
        evidence.give_up(layer, [j], "time limit" if seconds_left(deadline) <= 0 else "solver")
    return stats


def run_neuron_strategy(
    evidence: NeuronEvidence,
    spec: FormulationSpec,
    bounds: LayerBounds,
    open_solver: AdapterFactory,
    deadline: float,
    progress: Progress,
    mine: bool = True,
    device: str | None = None,
    relu: str = DEFAULT_RELU,
) -> dict:
    """LEO: per candidate, maximise g (or -g) and stop once the sign is settled.
    ``mine`` and ``device`` are accepted for a common signature and unused: each solve
    stops at the first solution that settles its candidate, so there is little to mine."""
    cands = open_candidates(evidence)
    stats = {"candidates": len(cands), "solves": 0, "binaries": 0}
    if not cands:
        return stats
    handle = build_model(spec, evidence, bounds, cands, relu)
    stats["binaries"] = handle.n_binaries()
    solver = open_solver(handle)
    solver.load(handle)
    overhead = 0.0  # seconds a solve ran past its share (the model's update before it)
    for i, cand in enumerate(cands):
        if is_refuted(evidence, cand):
            continue
        # an equal share of what is left: a hard first candidate cannot starve the rest,
        # and what an easy one leaves goes to those after it
        left = len(cands) - i
        share = max(0.0, seconds_left(deadline) - overhead * left) / left
        start = time.monotonic()
        status = decide_by_extreme(evidence, handle, solver, cand, min(deadline, start + share))
        overhead = max(overhead, time.monotonic() - start - share)
        stats["solves"] += 1
        if status in ("interrupted", "error"):
            break
    for layer, j, _ in open_candidates(evidence):
        evidence.give_up(layer, [j], "time limit")
    progress(f"  neuron formulation: {stats['solves']} solves")
    return stats


def decide_by_extreme(
    evidence: NeuronEvidence, handle: Handle, solver: SolverAdapter, cand: Candidate, deadline
) -> str:
    """Maximise g (side "pos") or -g ("neg") until its sign is settled; returns the
    solve's status. Mining: every solution found is forward-passed for witnesses."""
    layer, j, side = cand
    left = seconds_left(deadline)
    if left <= 0:
        evidence.give_up(layer, [j], "time limit")
        return "time_limit"
    g = handle.g[(layer, j)]
    handle.model.objective.set_value(g if side == "pos" else -g)

    def on_solution(x: np.ndarray, _objective: float) -> Reaction:
        evidence.observe(x, STAGE)
        return Reaction(stop=is_refuted(evidence, cand))

    validate(handle)
    outcome = solver.maximize(left, on_solution, stop_below=-FLIP_MARGIN, needs=SolveNeeds())
    if is_refuted(evidence, cand):
        return outcome.status
    evidence.reach(layer, j, side, outcome.bound, STAGE)
    why = extreme_inconsistency(evidence, outcome, cand)
    if outcome.status in ("optimal", "stopped") and outcome.bound < -FLIP_MARGIN and why:
        evidence.give_up(layer, [j], why)
    elif outcome.status in ("optimal", "stopped") and outcome.bound < -FLIP_MARGIN:
        prove_candidate(evidence, cand)
        tighten(handle, cand, outcome.bound)
    elif outcome.status == "optimal":
        evidence.give_up(layer, [j], "extreme within tolerance of 0, no witness")
    else:
        bound = f" (solver bound {outcome.bound:.3g})" if np.isfinite(outcome.bound) else ""
        evidence.give_up(layer, [j], outcome.status.replace("_", " ") + bound)
    return outcome.status


class Heartbeat:
    """A progress line every PROGRESS_EVERY seconds while the exact stage runs, so that a
    long solve shows it is alive: elapsed time, candidates left, proved and refuted so
    far, and the solver's current bound where its callbacks report one."""

    def __init__(self, evidence: NeuronEvidence, progress: Progress, solver=None) -> None:
        self.evidence, self.progress, self.solver = evidence, progress, solver
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._counts0 = self._counts()

    def _counts(self) -> tuple[int, int]:
        ev = self.evidence
        proved = sum(
            int((ev.proved_active[k] | ev.proved_inactive[k]).sum()) for k in range(len(ev.decider))
        )
        unstable = sum(int(ev.unstable(k).sum()) for k in range(len(ev.decider)))
        return proved, unstable

    def _run(self) -> None:
        while not self._stop.wait(PROGRESS_EVERY):
            proved, unstable = self._counts()
            bound = getattr(self.solver, "live_bound", None)
            self.progress(
                f"  milp {time.monotonic() - self.start:5.0f} s: "
                f"{len(open_candidates(self.evidence))} candidates left, "
                f"{proved - self._counts0[0]} proved, {unstable - self._counts0[1]} refuted"
                + ("" if bound is None or not np.isfinite(bound) else f", solver bound {bound:.4g}")
            )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _tolerance(bound: float) -> float:
    return 1e-6 * (1.0 + abs(bound))


def extreme_inconsistency(evidence: NeuronEvidence, outcome, cand: Candidate) -> str:
    """Why a bound on s g from the solver cannot be a proof, or '' when nothing contradicts
    it: its own incumbent, or any point forward-passed so far, above the bound."""
    layer, j, side = cand
    seen = evidence.g_max[layer][j] if side == "pos" else -evidence.g_min[layer][j]
    tol = _tolerance(outcome.bound)
    if outcome.best is not None and outcome.best > outcome.bound + tol:
        return f"solver inconsistency: incumbent {outcome.best:.6g} above bound {outcome.bound:.6g}"
    if seen > outcome.bound + tol:
        return (
            f"solver inconsistency: a forward pass reaches {seen:.6g}, "
            f"above bound {outcome.bound:.6g}"
        )
    return ""


def count_inconsistency(evidence: NeuronEvidence, outcome, alive: list[Candidate]) -> str:
    """Why a count bound below 1 cannot prove the candidates still alive, or '': the
    incumbent counts a flip above the bound and its forward pass brings a live candidate
    within FLIP_MARGIN of its unseen side (a flip of a refuted one is no contradiction)."""
    if outcome.best is None or outcome.best <= outcome.bound + _tolerance(outcome.bound):
        return ""
    if outcome.x is None:
        return f"solver inconsistency: incumbent {outcome.best:.6g} above bound {outcome.bound:.6g}"
    g = evidence.net.preactivations(evidence.box.clip(np.atleast_2d(outcome.x)))
    for layer, j, side in alive:
        value = g[layer][0, j] if side == "pos" else -g[layer][0, j]
        if value >= -FLIP_MARGIN:
            return (
                f"solver inconsistency: the incumbent counts {outcome.best:.6g} flips, "
                f"bound {outcome.bound:.6g}"
            )
    return ""


def tighten(handle: Handle, cand: Candidate, bound: float) -> None:
    """A proved neuron is linear or zero from now on, and its proven bound is kept."""
    layer, j, side = cand
    key = (layer, j)
    handle.fix_state(key, active=(side == "neg"))
    if side == "pos":
        handle.upper[key].set_value(min(handle.upper[key].value, bound))
    else:
        handle.lower[key].set_value(max(handle.lower[key].value, -bound))


def run_layer_strategy(
    evidence: NeuronEvidence,
    spec: FormulationSpec,
    bounds: LayerBounds,
    open_solver: AdapterFactory,
    deadline: float,
    progress: Progress,
    mine: bool = True,
    device: str | None = None,
    relu: str = DEFAULT_RELU,
) -> dict:
    """The seed's per-layer ISA: the network strategy on one hidden layer's candidates
    at a time, in order, so each layer's model is built with the neurons proved in the
    layers before it fixed."""
    stats = {"candidates": 0, "solves": 0, "binaries": 0}
    for layer in range(evidence.net.n_hidden):
        neurons = sorted({j for k, j, _ in open_candidates(evidence) if k == layer})
        if not neurons:
            continue
        if seconds_left(deadline) <= 0:
            evidence.give_up(layer, neurons, "time limit")
            continue
        progress(f"  layer {layer + 1}: {len(neurons)} neurons open")
        part = run_network_strategy(
            evidence, spec, bounds, open_solver, deadline, progress, mine, device, relu, layer
        )
        for key in stats:
            stats[key] += part[key]
    return stats


#: strategy name (``FormulationSpec.strategy``) -> the driver that solves its models
STRATEGIES = {
    "network": run_network_strategy,
    "neuron": run_neuron_strategy,
    "layer": run_layer_strategy,
}


def check_choice(spec: FormulationSpec, relu: str) -> None:
    """Refuse a formulation whose driver does not exist or that cannot take ``relu``:
    called before any stage runs, so that a bad choice costs no minutes of bounds."""
    if spec.strategy not in STRATEGIES:
        raise ExactCompressError(
            f"formulation {spec.name} asks for strategy {spec.strategy!r}; "
            f"strategies: {', '.join(STRATEGIES)}"
        )
    if spec.relus is not None and relu not in spec.relus:
        raise ExactCompressError(
            f"formulation {spec.name} takes --relu {', '.join(spec.relus)}, not {relu}"
        )


def run_exact_stage(
    evidence: NeuronEvidence,
    spec: FormulationSpec,
    bounds: LayerBounds,
    open_solver: AdapterFactory,
    deadline: float,
    progress: Progress,
    mine: bool = True,
    device: str | None = None,
    relu: str = DEFAULT_RELU,
) -> dict:
    """Run the formulation's strategy; ``mine`` lets it search for witnesses from the
    solver's solutions on torch ``device``; ``relu`` names the ReLU encoding."""
    check_choice(spec, relu)
    strategy = STRATEGIES[spec.strategy]
    with Heartbeat(evidence, progress) as heartbeat:

        def opening(handle: Handle) -> SolverAdapter:
            heartbeat.solver = open_solver(handle)
            return heartbeat.solver

        return strategy(
            evidence, spec, bounds, opening, deadline, progress, mine, device, relu=relu
        )
