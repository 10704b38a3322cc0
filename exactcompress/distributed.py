"""The exact stage on a Dask cluster (``--workers N``, ``--scheduler ADDRESS``).

Why: the candidates that reach the exact stage are independent questions, so they can
be answered side by side in worker processes, here or on other machines. ``SERIAL``
(the default, ``--workers 1``) is the in-process code of bab.py and exact.py, and
``dask.distributed`` is imported only when a cluster is asked for.

How: a task is one candidate (branch and bound, the neuron MILP) or one layer's
candidates (the network and layer strategies). It gets the network, box and bounds
(scattered once per stage) and a snapshot of the evidence (scattered once per round:
one layer for per-candidate tasks, so that proofs of earlier layers are fixed for later
ones, as in the serial order), rebuilds a NeuronEvidence, runs the serial code on it
with its own seed, and returns what it added: proofs, give-ups with their notes, the
witness points, and the extremes seen. Each finished task's witnesses are checked
against the candidates still queued (the forward-pass test of NeuronEvidence.observe)
and refuted ones are cancelled; at the end of a round every result is merged in
candidate order. A proof is sound wherever it was computed and a witness is a forward
pass, so the states cannot depend on the number of workers; only a time limit can leave
undecided in one run what another decides. A task lost with its worker, or still running
past the time limit, leaves its candidates undecided: nothing is proved without the
task's own result.
"""

from __future__ import annotations

import importlib.util
import logging
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from formulations import DEFAULT_RELU, FormulationSpec

from .bab import STAGE as BAB
from .bab import BabStats, CandidateOutcome, one_thread, prove_candidate, run_bab, with_crown
from .bounds import LayerBounds, pick_device
from .domain import Box
from .errors import ExactCompressError
from .evidence import NeuronEvidence
from .exact import STAGE as MILP
from .exact import (
    STRATEGIES,
    build_model,
    decide_by_extreme,
    open_candidates,
    run_exact_stage,
    run_network_strategy,
)
from .network import ReLUNetwork
from .solvers import solver_factory

if TYPE_CHECKING:
    from distributed import Client, Future

    from .stability import StabilityOptions

Progress = Callable[[str], None]
Candidate = tuple[int, int, str]

INSTALL = "pip install 'exactcompress[dist]'"
#: seconds past the time limit before a task still running is abandoned (undecided)
GRACE = 10.0
#: seconds to wait for --scheduler to answer
CONNECT_TIMEOUT = 10
#: seconds between two looks at the running tasks, and between two progress lines
POLL, PROGRESS_EVERY = 0.05, 5.0
#: the evidence a task needs, copied into each round's snapshot
_FLAGS = ("seen_pos", "seen_neg", "proved_active", "proved_inactive", "given_up")


def require_distributed() -> ModuleType:
    """``dask.distributed``, or a one-line error naming the extra that installs it."""
    try:
        import distributed
    except ImportError:
        raise ExactCompressError(
            f"--workers and --scheduler need dask.distributed: {INSTALL}"
        ) from None
    return distributed


def wanted(workers: int, scheduler: str | None) -> bool:
    """Whether the options ask for a cluster at all."""
    return workers > 1 or bool(scheduler)


@contextmanager
def cluster(workers: int, scheduler: str | None, say: Progress) -> Iterator[Client]:
    """A client of the scheduler at ``scheduler``, or of a LocalCluster of ``workers``
    processes with one thread each (a task is single-threaded: torch threads and solver
    threads of several tasks would only fight over the cores)."""
    dist = require_distributed()
    with ExitStack() as stack:
        if scheduler:
            client = stack.enter_context(_connect(dist, scheduler))
            where = f"scheduler {scheduler}"
        else:
            local = dist.LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=":0",  # any free port: never a clash with another cluster
                silence_logs=logging.ERROR,
            )
            stack.enter_context(local)
            client = stack.enter_context(dist.Client(local))
            where = f"local cluster of {workers} processes"
        say(f"dask: {where}, {len(client.nthreads())} workers, {_dashboard(client, scheduler)}")
        yield client


def _connect(dist: ModuleType, scheduler: str) -> Client:
    """A client of a running scheduler; one that cannot be reached is a one-line error."""
    try:
        return dist.Client(scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as err:
        raise ExactCompressError(
            f"cannot reach the Dask scheduler at {scheduler}: {' '.join(str(err).split())}"
        ) from None


def _dashboard(client: Client, scheduler: str | None) -> str:
    if scheduler or importlib.util.find_spec("bokeh"):
        return f"dashboard {client.dashboard_link}"
    return "dashboard off (pip install bokeh for it)"


class SerialExecutor:
    """The exact stage in this process: today's code path, and the default."""

    run_bab = staticmethod(run_bab)
    run_exact_stage = staticmethod(run_exact_stage)

    def close(self) -> None:
        """Nothing to release."""


SERIAL = SerialExecutor()


def executor_for(options: StabilityOptions, say: Progress) -> Executor:
    """The executor of ``options.workers``/``options.scheduler``; a missing
    dask.distributed is an error now, before any work."""
    if not wanted(options.workers, options.scheduler):
        return SERIAL
    require_distributed()
    executor = DaskExecutor(options, say)
    if options.scheduler:
        executor.start()  # a wrong address fails now, not after the cheap stages
    return executor


# ---- what travels to a task and back ------------------------------------------------


@dataclass
class Shared:
    """What every task of a stage reads: scattered once."""

    net: ReLUNetwork
    box: Box
    bounds: LayerBounds


@dataclass
class TaskResult:
    """What one task added to its copy of the evidence."""

    witnesses: np.ndarray
    proofs: list[tuple[int, int, bool]]  # (layer, neuron, active)
    notes: dict[tuple[int, int], str]  # given up, and why
    g_max: list[np.ndarray]
    g_min: list[np.ndarray]
    reached: dict = field(default_factory=dict)  # NeuronEvidence.reached
    outcome: CandidateOutcome | None = None
    stats: dict = field(default_factory=dict)
    solver: str | None = None


@dataclass
class Snapshot:
    """The evidence flags a task starts from (a round's view of the client's evidence)."""

    flags: dict[str, list[np.ndarray]]

    @classmethod
    def of(cls, evidence: NeuronEvidence) -> Snapshot:
        return cls({name: [a.copy() for a in getattr(evidence, name)] for name in _FLAGS})

    def restore(self, shared: Shared) -> NeuronEvidence:
        evidence = NeuronEvidence(shared.net, shared.box)
        for name, arrays in self.flags.items():
            setattr(evidence, name, [a.copy() for a in arrays])
        return evidence

    def changes(self, evidence: NeuronEvidence, **extra: Any) -> TaskResult:
        """Proofs, give-ups and witnesses in ``evidence`` that the snapshot lacks."""
        points: dict[bytes, np.ndarray] = {}
        proofs, notes = [], {}
        for layer in range(evidence.net.n_hidden):
            for side, seen in (("pos", "seen_pos"), ("neg", "seen_neg")):
                wit = evidence.witness_pos if side == "pos" else evidence.witness_neg
                for j, x in wit[layer].items():
                    if not self.flags[seen][layer][j]:
                        points.setdefault(x.tobytes(), x)
            for active, name in ((True, "proved_active"), (False, "proved_inactive")):
                new = getattr(evidence, name)[layer] & ~self.flags[name][layer]
                proofs += [(layer, int(j), active) for j in np.flatnonzero(new)]
            for j in np.flatnonzero(evidence.given_up[layer] & ~self.flags["given_up"][layer]):
                notes[(layer, int(j))] = evidence.notes.get((layer, int(j)), "")
        dim = evidence.box.dim
        witnesses = np.array(list(points.values())) if points else np.empty((0, dim))
        return TaskResult(
            witnesses, proofs, notes, evidence.g_max, evidence.g_min, evidence.reached, **extra
        )


@dataclass(frozen=True)
class Job:
    """One task: a candidate (``bab``, ``neuron``) or one layer's candidates (``shard``)."""

    kind: str
    cands: tuple[Candidate, ...]

    @property
    def label(self) -> str:
        layer, j, side = self.cands[0]
        if self.kind == "shard":
            return f"layer {layer + 1} ({len(self.cands)} candidates)"
        return f"layer {layer + 1} neuron {j} ({side})"


@dataclass(frozen=True)
class Settings:
    """A stage's options as a task needs them; ``deadline`` is wall-clock (time.time),
    so that it means the same on every machine with a synchronised clock."""

    deadline: float
    seed: int
    device: str | None
    budget: float = float("inf")
    give_up: bool = True
    spec: FormulationSpec | None = None
    relu: str = DEFAULT_RELU
    solver: str = "auto"
    threads: int | None = None
    mine: bool = True


def absorb(evidence: NeuronEvidence, result: TaskResult, stage: str) -> None:
    """Merge one task's result into the client's evidence."""
    if len(result.witnesses):
        evidence.observe(result.witnesses, stage)
    for layer, (hi, lo) in enumerate(zip(result.g_max, result.g_min)):
        np.maximum(evidence.g_max[layer], hi, out=evidence.g_max[layer])
        np.minimum(evidence.g_min[layer], lo, out=evidence.g_min[layer])
    for (layer, j, side), (bound, by) in result.reached.items():
        evidence.reach(layer, j, side, bound, by)
    for layer, j, active in result.proofs:
        evidence.prove(layer, [j], active=active, stage=stage)
    for (layer, j), why in result.notes.items():
        evidence.give_up(layer, [j], why)


def refuted_by(net: ReLUNetwork, box: Box, points: np.ndarray, cands: list[Candidate]) -> set:
    """The candidates that ``points`` show on their unseen side, by NeuronEvidence's test."""
    if not len(points) or not cands:
        return set()
    gs, errs = net.preactivations_with_error(box.clip(points))
    out = set()
    for cand in cands:
        layer, j, side = cand
        g, err = gs[layer][:, j], errs[layer][:, j]
        if bool(((g > err) if side == "pos" else (g < -err)).any()):
            out.add(cand)
    return out


# ---- tasks (run on the workers) -------------------------------------------------------


def _quiet(_msg: str) -> None:
    """Workers keep their progress lines to themselves; the client reports per task."""


def _local(wall_deadline: float) -> float:
    return time.monotonic() + (wall_deadline - time.time())


def _wall(deadline: float) -> float:
    return time.time() + (deadline - time.monotonic())


def _seed(seed: int, job: Job) -> None:
    """Each task's own seed, from the run's seed and the task's candidates only, so that
    any randomness in a search does not depend on which worker ran it, or when."""
    value = zlib.crc32(f"{seed}:{job.kind}:{job.cands}".encode())
    torch.manual_seed(value)
    np.random.seed(value)


def bab_task(shared: Shared, snap: Snapshot, job: Job, s: Settings) -> TaskResult:
    """Branch and bound on one candidate, as ``bab.run_bab`` does for each."""
    evidence = snap.restore(shared)
    _seed(s.seed, job)
    (cand,) = job.cands
    layer, j, side = cand
    deadline = min(_local(s.deadline), time.monotonic() + s.budget)
    if time.monotonic() >= deadline:
        if s.give_up:
            evidence.give_up(layer, [j], "time limit")
        return snap.changes(evidence)
    with one_thread():
        out = prove_candidate(
            evidence,
            shared.bounds,
            cand,
            deadline,
            pick_device(s.device),
            _quiet,
            stall=not s.give_up,
        )
    if out.status == "proved":
        evidence.prove(layer, [j], active=(side == "neg"), stage=BAB)
    elif out.status != "refuted" and s.give_up:
        why = "time limit" if out.status == "timeout" else "branch and bound stuck"
        evidence.give_up(layer, [j], f"{why} (bound {out.bound:.3g})")
    return snap.changes(evidence, outcome=out)


def neuron_task(shared: Shared, snap: Snapshot, job: Job, s: Settings) -> TaskResult:
    """One candidate's MILP extreme (the neuron strategy, on a model of that candidate)."""
    evidence = snap.restore(shared)
    _seed(s.seed, job)
    (cand,) = job.cands
    handle = build_model(s.spec, evidence, shared.bounds, [cand], s.relu)
    make = solver_factory(s.solver, threads=s.threads, say=_quiet)
    solver = make(handle)
    solver.load(handle)
    decide_by_extreme(evidence, handle, solver, cand, _local(s.deadline))
    stats = {"solves": 1, "binaries": handle.n_binaries()}
    return snap.changes(evidence, stats=stats, solver=make.chosen)


def shard_task(shared: Shared, snap: Snapshot, job: Job, s: Settings) -> TaskResult:
    """The network strategy on one layer's candidates (a shard of the network model)."""
    evidence = snap.restore(shared)
    _seed(s.seed, job)
    make = solver_factory(s.solver, threads=s.threads, say=_quiet)
    stats = run_network_strategy(
        evidence,
        s.spec,
        shared.bounds,
        make,
        _local(s.deadline),
        _quiet,
        s.mine,
        s.device,
        s.relu,
        layer=job.cands[0][0],
    )
    return snap.changes(evidence, stats=stats, solver=getattr(make, "chosen", None))


TASKS = {"bab": bab_task, "neuron": neuron_task, "shard": shard_task}
Merge = Callable[[Job, "TaskResult | str"], None]


# ---- the client side ------------------------------------------------------------------


class DaskExecutor:
    """The exact stage's candidates as tasks on a Dask cluster. The cluster starts on
    first use, so a run whose cheap stages decide everything starts none; ``close``
    stops it (or disconnects from ``--scheduler``)."""

    def __init__(self, options: StabilityOptions, say: Progress) -> None:
        self.options, self.say = options, say
        self._stack = ExitStack()
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        return self.start()

    def start(self) -> Client:
        """Start the local cluster, or connect to the scheduler, unless done already."""
        if self._client is None:
            self._client = self._stack.enter_context(
                cluster(self.options.workers, self.options.scheduler, self.say)
            )
        return self._client

    def close(self) -> None:
        self._stack.close()
        self._client = None

    def run_bab(
        self,
        evidence: NeuronEvidence,
        bounds: LayerBounds,
        candidates: list[Candidate],
        deadline: float,
        progress: Progress,
        device=None,
        budget: float = float("inf"),
        give_up: bool = True,
        jobs: int = 1,
    ) -> BabStats:
        """``bab.run_bab`` with one task per candidate, layer by layer (``jobs`` is the
        cluster's size here)."""
        stats = BabStats(candidates=len(candidates))
        bounds = with_crown(evidence.net, evidence.box, bounds, pick_device(device))
        shared = self._share(evidence, bounds)
        s = Settings(_wall(deadline), self.options.seed, device, budget, give_up)

        def merge(job: Job, result: TaskResult | str) -> None:
            layer, j, side = job.cands[0]
            if isinstance(result, TaskResult):
                absorb(evidence, result, BAB)
                if result.outcome is None:
                    stats.undecided += 1
                    return
                stats.record(job.cands[0], result.outcome)
                out = result.outcome
                progress(
                    f"  bab {job.label}: {out.status} after {out.domains} subdomains, "
                    f"{out.seconds:.1f} s; {stats.proved} proved, {stats.refuted} refuted"
                )
            elif result != "refuted":
                if give_up:
                    evidence.give_up(layer, [j], result)
                stats.undecided += 1
                progress(f"  bab {job.label}: {result}")

        for layer in sorted({c[0] for c in candidates}):
            todo = [c for c in sorted(candidates) if c[0] == layer and not _closed(evidence, c)]
            self._round(evidence, shared, [Job("bab", (c,)) for c in todo], s, deadline, merge)
        return stats

    def run_exact_stage(
        self,
        evidence: NeuronEvidence,
        spec: FormulationSpec,
        bounds: LayerBounds,
        open_solver: Callable,
        deadline: float,
        progress: Progress,
        mine: bool = True,
        device: str | None = None,
        relu: str = DEFAULT_RELU,
    ) -> dict:
        """``exact.run_exact_stage`` with one task per candidate (neuron strategy, layer
        by layer) or per layer shard (network and layer strategies, all at once).
        ``binaries`` is the largest model's count."""
        if spec.strategy not in STRATEGIES:
            return run_exact_stage(
                evidence, spec, bounds, open_solver, deadline, progress, mine, device, relu
            )
        cands = open_candidates(evidence)
        stats = {"candidates": len(cands), "solves": 0, "binaries": 0}
        if not cands:
            return stats
        shared = self._share(evidence, bounds)
        s = Settings(
            _wall(deadline),
            self.options.seed,
            device,
            spec=spec,
            relu=relu,
            solver=self.options.solver,
            threads=self.options.threads,
            mine=mine,
        )

        def merge(job: Job, result: TaskResult | str) -> None:
            if isinstance(result, TaskResult):
                absorb(evidence, result, MILP)
                stats["solves"] += result.stats.get("solves", 0)
                stats["binaries"] = max(stats["binaries"], result.stats.get("binaries", 0))
                if result.solver and getattr(open_solver, "chosen", None) is None:
                    open_solver.chosen = result.solver
                progress(f"  milp {job.label}: done, {stats['solves']} solves so far")
            elif result != "refuted":
                for layer, j, _ in job.cands:
                    evidence.give_up(layer, [j], result)
                progress(f"  milp {job.label}: {result}")

        layers = sorted({c[0] for c in cands})
        if spec.strategy == "neuron":
            for layer in layers:
                todo = [c for c in open_candidates(evidence) if c[0] == layer]
                jobs = [Job("neuron", (c,)) for c in todo]
                self._round(evidence, shared, jobs, s, deadline, merge)
        else:
            jobs = [Job("shard", tuple(c for c in cands if c[0] == k)) for k in layers]
            self._round(evidence, shared, jobs, s, deadline, merge)
        return stats

    # ---- rounds -----------------------------------------------------------------
    def _share(self, evidence: NeuronEvidence, bounds: LayerBounds) -> Future:
        shared = Shared(evidence.net, evidence.box, bounds)
        return self.client.scatter(shared, broadcast=True, hash=False)

    def _round(
        self,
        evidence: NeuronEvidence,
        shared: Future,
        jobs: list[Job],
        s: Settings,
        deadline: float,
        merge: Merge,
    ) -> None:
        """Run ``jobs`` from one snapshot of ``evidence`` and merge their results in job
        order, also when Ctrl-C stops the round (then unfinished jobs stay open)."""
        if not jobs:
            return
        client = self.client
        snap = client.scatter(Snapshot.of(evidence), broadcast=True, hash=False)
        tag = uuid.uuid4().hex[:8]
        pending = {
            client.submit(
                TASKS[job.kind],
                shared,
                snap,
                job,
                s,
                key=f"exactcompress-{job.kind}-{job.label.replace(' ', '-')}-{tag}",
                pure=False,
            ): job
            for job in jobs
        }
        results: dict[Job, TaskResult | str] = {}
        try:
            self._collect(evidence, pending, results, deadline)
        finally:
            for fut in pending:
                fut.cancel()
            for job in jobs:
                if job in results:
                    merge(job, results[job])

    def _collect(
        self,
        evidence: NeuronEvidence,
        pending: dict[Future, Job],
        results: dict[Job, TaskResult | str],
        deadline: float,
    ) -> None:
        """Wait for the tasks; a finished task's witnesses cancel the queued tasks whose
        candidates they all refute; past the time limit (and GRACE) the rest is abandoned."""
        last_say = time.monotonic()
        n = len(pending)
        while pending:
            done = [f for f in pending if f.status != "pending"]
            if not done:
                if time.monotonic() > deadline + GRACE:
                    for job in pending.values():
                        results[job] = "time limit"
                    return
                if time.monotonic() - last_say >= PROGRESS_EVERY:
                    last_say = time.monotonic()
                    self.say(f"  dask: {n - len(pending)} of {n} tasks done")
                time.sleep(POLL)
                continue
            for fut in done:
                job = pending.pop(fut)
                results[job] = _result(fut)
                if isinstance(results[job], TaskResult):
                    self._cancel_refuted(evidence, results[job].witnesses, pending, results)

    @staticmethod
    def _cancel_refuted(
        evidence: NeuronEvidence,
        points: np.ndarray,
        pending: dict[Future, Job],
        results: dict[Job, TaskResult | str],
    ) -> None:
        cands = [c for job in pending.values() for c in job.cands]
        gone = refuted_by(evidence.net, evidence.box, points, cands)
        for fut, job in list(pending.items()):
            if gone.issuperset(job.cands):
                fut.cancel()
                del pending[fut]
                results[job] = "refuted"


#: what runs the exact stage's provers (stability.Context.executor)
Executor = SerialExecutor | DaskExecutor


def _closed(evidence: NeuronEvidence, cand: Candidate) -> bool:
    """Settled, or already seen on the side the candidate would prove impossible."""
    layer, j, side = cand
    seen = evidence.seen_pos if side == "pos" else evidence.seen_neg
    return bool(evidence.settled(layer)[j] or seen[layer][j])


def _result(fut: Future) -> TaskResult | str:
    """The task's result, or why it has none: its worker was lost. Any other error in a
    task is raised here, as it would be in the serial code."""
    dist = require_distributed()
    try:
        return fut.result()
    except (dist.KilledWorker, dist.client.FutureCancelledError) as err:
        return f"worker lost ({type(err).__name__})"
