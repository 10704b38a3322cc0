"""The exact stage: drive a formulation's model with a solver adapter until every
candidate is refuted by a witness, proved stable by a bound, or given up.

Two strategies, chosen by the formulation's registration: "network" (ISA) solves one
model whose objective counts candidates in their unseen state (with a solver that
restarts to drop refuted ones, a gradient search from each of its solutions refutes
many at once); "neuron" (LEO) solves one objective per candidate on a persistent
model, layer by layer.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from formulations import FLIP_MARGIN, Candidate, FormulationSpec, Handle, MILPInput

from . import refute
from .bounds import LayerBounds
from .report import NeuronEvidence
from .solvers import Reaction, SolverAdapter

STAGE = "milp"
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
) -> dict:
    """ISA: maximise the number of flipped candidates, drop refuted ones, re-solve
    until the proven bound says none can flip. ``mine=False`` keeps the paper's
    refutation: forward passes of the solutions only, no gradient search from them."""
    cands = open_candidates(evidence)
    stats = {"candidates": len(cands), "solves": 0, "binaries": 0}
    if not cands:
        return stats
    handle = spec.build(milp_input(evidence, bounds), cands)
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
        outcome = solver.maximize(left, on_solution)
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
            for c in alive:
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
) -> dict:
    """LEO: per candidate, maximise g (or -g) and stop once the sign is settled.
    ``mine`` and ``device`` are accepted for a common signature and unused: each solve
    stops at the first solution that settles its candidate, so there is little to mine."""
    cands = open_candidates(evidence)
    stats = {"candidates": len(cands), "solves": 0, "binaries": 0}
    if not cands:
        return stats
    handle = spec.build(milp_input(evidence, bounds), cands)
    stats["binaries"] = handle.n_binaries()
    solver = open_solver(handle)
    solver.load(handle)
    timed_out = False
    for cand in cands:
        if is_refuted(evidence, cand):
            continue
        status = decide_by_extreme(evidence, handle, solver, cand, deadline)
        stats["solves"] += 1
        if status in ("time_limit", "interrupted", "error"):
            timed_out = True
            break
    if timed_out:
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

    outcome = solver.maximize(left, on_solution, stop_below=-FLIP_MARGIN)
    if is_refuted(evidence, cand):
        return outcome.status
    if outcome.status in ("optimal", "stopped") and outcome.bound < -FLIP_MARGIN:
        prove_candidate(evidence, cand)
        tighten(handle, cand, outcome.bound)
    elif outcome.status == "optimal":
        evidence.give_up(layer, [j], "extreme within tolerance of 0, no witness")
    else:
        evidence.give_up(layer, [j], outcome.status.replace("_", " "))
    return outcome.status


def tighten(handle: Handle, cand: Candidate, bound: float) -> None:
    """A proved neuron is linear or zero from now on, and its proven bound is kept."""
    layer, j, side = cand
    key = (layer, j)
    if key in handle.a:
        handle.a[key].fix(0 if side == "pos" else 1)
    if side == "pos":
        handle.upper[key].set_value(min(handle.upper[key].value, bound))
    else:
        handle.lower[key].set_value(max(handle.lower[key].value, -bound))


STRATEGIES = {"network": run_network_strategy, "neuron": run_neuron_strategy}


def run_exact_stage(
    evidence: NeuronEvidence,
    spec: FormulationSpec,
    bounds: LayerBounds,
    open_solver: AdapterFactory,
    deadline: float,
    progress: Progress,
    mine: bool = True,
    device: str | None = None,
) -> dict:
    """Run the formulation's strategy; ``mine`` lets it search for witnesses from the
    solver's solutions on torch ``device``."""
    strategy = STRATEGIES[spec.strategy]
    return strategy(evidence, spec, bounds, open_solver, deadline, progress, mine, device)
