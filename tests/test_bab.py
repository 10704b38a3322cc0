"""The branch-and-bound prover against independent evidence.

Truth comes from tests/oracle.py (scipy's own MILP, its own bounds); a proof from the
prover must agree with it, a refutation must come with a witness, and a neuron whose
extreme is within 1e-6 of 0 may come out undecided but never wrong.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from oracle import milp_extremes, random_net

from exactcompress import bab
from exactcompress.bab import CandidateOutcome, CandidateSearch, prove_candidate, run_bab
from exactcompress.bounds import interval_bounds
from exactcompress.domain import Box
from exactcompress.network import ReLUNetwork
from exactcompress.report import NeuronEvidence
from exactcompress.stability import StabilityOptions, find_stable_neurons
from exactcompress.tighten import cost_scale, leaf_bound

CPU = torch.device("cpu")
#: CUDA runs where there is a GPU (benchmarks/README.md, *On a GPU*)
DEVICES = [
    CPU,
    pytest.param(
        torch.device("cuda"),
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        id="cuda",
    ),
]


def _net(seed: int, widths=(3, 8, 8, 6, 2)) -> tuple[ReLUNetwork, Box]:
    rng = np.random.default_rng(seed)
    ws, bs = random_net(rng, list(widths), bias_shift=float(rng.normal() * 0.5))
    return ReLUNetwork(ws, bs), Box.uniform(widths[0])


def _truth(net: ReLUNetwork, box: Box, layer: int, j: int) -> tuple[float, float]:
    gmin, gmax = milp_extremes(net.weights, net.biases, box.lo, box.hi, layer, j)
    return float(gmin), float(gmax)


def _every_candidate(net: ReLUNetwork, box: Box):
    """(layer, neuron, side, true min g, true max g) of every neuron past the first layer."""
    for layer in range(1, net.n_hidden):
        for j in range(net.hidden_widths[layer]):
            gmin, gmax = _truth(net, box, layer, j)
            for side in ("pos", "neg"):
                yield layer, j, side, gmin, gmax


def _check(out, evidence, side, gmin, gmax, layer, j) -> None:
    """A proof agrees with the oracle; a refutation is a witness in the box."""
    if out.status == "proved":
        assert (gmax <= 1e-7) if side == "pos" else (gmin >= -1e-7), (layer, j, side)
    elif out.status == "refuted":
        wit = (evidence.witness_pos if side == "pos" else evidence.witness_neg)[layer][j]
        assert evidence.box.contains(wit).all()
        g = evidence.net.preactivations(wit[None])[layer][0, j]
        assert (g > 0) if side == "pos" else (g < 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "seed", [0, 1, 2, *(pytest.param(s, marks=pytest.mark.slow) for s in range(3, 8))]
)
def test_bab_decides_like_the_oracle(seed, device):
    net, box = _net(seed)
    bounds = interval_bounds(net, box)
    decided = 0
    for layer, j, side, gmin, gmax in _every_candidate(net, box):
        evidence = NeuronEvidence(net, box)
        out = prove_candidate(
            evidence, bounds, (layer, j, side), time.monotonic() + 20, device, print
        )
        _check(out, evidence, side, gmin, gmax, layer, j)
        clear = (gmax < -1e-6 or gmax > 1e-6) if side == "pos" else abs(gmin) > 1e-6
        if clear:
            assert out.status in ("proved", "refuted"), (layer, j, side, out)
            decided += 1
    assert decided > 0


def _near_zero_net(seed: int) -> tuple[ReLUNetwork, Box, list[tuple[int, int]]]:
    """A network whose last hidden layer has neurons with max g within 1e-7 of 0: the
    bias of each is moved so that its true maximum sits at +-1e-8 or exactly 0."""
    net, box = _net(seed, (3, 6, 6, 4, 2))
    layer = net.n_hidden - 1
    shifted = []
    for j in range(net.hidden_widths[layer]):
        _, gmax = _truth(net, box, layer, j)
        offset = (-1e-8, 0.0, 1e-8)[j % 3]
        net.biases[layer][j] -= gmax - offset
        shifted.append((layer, j))
    return ReLUNetwork(net.weights, net.biases), box, shifted


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "seed", [0, 1, *(pytest.param(s, marks=pytest.mark.slow) for s in range(2, 6))]
)
def test_neurons_at_zero_are_never_decided_wrongly(seed, device):
    net, box, shifted = _near_zero_net(seed)
    bounds = interval_bounds(net, box)
    for layer, j in shifted:
        gmin, gmax = _truth(net, box, layer, j)
        evidence = NeuronEvidence(net, box)
        out = prove_candidate(
            evidence, bounds, (layer, j, "pos"), time.monotonic() + 2, device, print
        )
        _check(out, evidence, "pos", gmin, gmax, layer, j)
        if gmax > 1e-9:  # really positive somewhere: only a witness may settle it
            assert out.status != "proved"


def test_run_bab_records_proofs_with_its_decider():
    net, box = _net(11, (3, 10, 10, 2))
    bounds = interval_bounds(net, box)
    evidence = NeuronEvidence(net, box)
    cands = [(1, j, side) for j in range(10) for side in ("pos", "neg")]
    stats = run_bab(evidence, bounds, cands, time.monotonic() + 60, print, device="cpu")
    assert stats.proved >= 1 and stats.proved + stats.refuted + stats.undecided <= len(cands)
    for j in range(10):
        gmin, gmax = _truth(net, box, 1, j)
        if evidence.proved_inactive[1][j]:
            assert gmax <= 1e-7 and evidence.decider[1][j] == "bab"
        if evidence.proved_active[1][j]:
            assert gmin >= -1e-7 and evidence.decider[1][j] == "bab"


def test_a_search_resumed_in_short_turns_decides_like_the_oracle():
    """CandidateSearch.advance in 50 ms turns: each turn goes on from the open
    subdomains, and what it ends with agrees with the oracle."""
    net, box = _net(2, (3, 10, 10, 8, 2))
    bounds = interval_bounds(net, box)
    turns_taken = 0
    for j in range(8):
        gmin, gmax = _truth(net, box, 2, j)
        for side in ("pos", "neg"):
            evidence = NeuronEvidence(net, box)
            search = CandidateSearch(evidence, bounds, (2, j, side), CPU, print)
            out, turns = search.advance(time.monotonic() + 0.05), 1
            while out.status == "timeout" and turns < 400:
                domains = out.domains
                out, turns = search.advance(time.monotonic() + 0.05), turns + 1
                assert out.domains >= domains  # went on, did not start again
            turns_taken += turns
            _check(out, evidence, side, gmin, gmax, 2, j)
            assert search.advance(time.monotonic() + 1) is out or out.status == "timeout"
    assert turns_taken > 16  # some searches needed several turns


def _search_in_parts(evidence: NeuronEvidence, bounds, cand, most: int) -> tuple[str, int, int]:
    """A candidate's search handed out at every chance, as on a cluster: each search
    shares once it has two open subdomains (until ``most`` parts were made) and its
    frontier goes on in three parts, each a fresh search; the candidate is proved once
    every part is. Returns the status, the parts made and how many took an LP along."""
    todo: list = [None]
    made, with_lp, ends = 0, 0, []
    while todo:
        search = CandidateSearch(evidence, bounds, cand, CPU, lambda m: None, frontier=todo.pop())
        search.share = lambda made=made: made < most
        out = search.advance(time.monotonic() + 10)
        if out.status == "shared":
            parts = search.frontier(3)
            assert sum(len(p.open_set) for p in parts) == len(search.open_set)
            made += len(parts)
            with_lp += sum(p.lp is not None for p in parts)
            todo += parts
        elif out.status == "refuted":
            return "refuted", made, with_lp
        else:
            ends.append(out.status)
    return ("proved" if set(ends) == {"proved"} else "open"), made, with_lp


@pytest.mark.parametrize("lps", [False, True])
def test_a_search_in_parts_decides_like_the_oracle(lps, monkeypatch):
    """Parts of a frontier, each searched apart (--workers: a long search hands its open
    subdomains to idle workers), prove a candidate only where the oracle agrees, and
    decide what the whole search decides; with subdomain LPs (``lps``), each part goes
    on with the search's LP and its subdomains' bases."""
    # weak back-substitution (no alpha or beta steps) leaves searches worth splitting
    monkeypatch.setattr(bab, "STEPS", 0)
    monkeypatch.setattr(bab, "ROOT_STEPS", 0)
    monkeypatch.setattr(bab, "LP_FROM_LAYER", 1)
    monkeypatch.setattr(bab, "LP_AFTER", 0.0 if lps else None)
    net, box = _net(0, (4, 12, 12, 10, 2))
    bounds = interval_bounds(net, box)
    parts = parts_with_lp = 0
    for layer, j, side, gmin, gmax in _every_candidate(net, box):
        cand = (layer, j, side)
        evidence = NeuronEvidence(net, box)
        status, made, with_lp = _search_in_parts(evidence, bounds, cand, most=30)
        parts += made
        parts_with_lp += with_lp
        _check(CandidateOutcome(status, 0.0, 0, 0, 0.0), evidence, side, gmin, gmax, layer, j)
        whole = prove_candidate(
            NeuronEvidence(net, box), bounds, cand, time.monotonic() + 10, CPU, print
        )
        decided = whole.status if whole.status in ("proved", "refuted") else "open"
        assert status == decided or "open" in (status, decided), (cand, whole)
        clear = (gmax < -1e-6 or gmax > 1e-6) if side == "pos" else abs(gmin) > 1e-6
        assert status != "open" or not clear, cand
    # several searches were split; with LPs, the LP closes most subdomains before a split
    assert parts > 8 or (lps and parts > 2)
    assert parts_with_lp == (parts if lps else 0)


def test_run_bab_shares_a_layer_budget_and_records_each_candidate_once():
    """A budget far below what the candidates need: every candidate is recorded once,
    and its proofs still agree with the oracle."""
    net, box = _net(4, (3, 12, 12, 10, 2))
    bounds = interval_bounds(net, box)
    evidence = NeuronEvidence(net, box)
    cands = [(2, j, side) for j in range(10) for side in ("pos", "neg")]
    said: list[str] = []
    stats = run_bab(evidence, bounds, cands, time.monotonic() + 60, said.append, "cpu", budget=0.05)
    keys = [(o["layer"], o["neuron"], o["side"]) for o in stats.outcomes]
    assert len(keys) == len(set(keys))
    assert stats.proved + stats.refuted + stats.undecided <= len(cands)
    for j in range(10):
        gmin, gmax = _truth(net, box, 2, j)
        if evidence.proved_inactive[2][j]:
            assert gmax <= 1e-7
        if evidence.proved_active[2][j]:
            assert gmin >= -1e-7


class _ScriptedSearch:
    """Stands in for CandidateSearch: neuron 0 never closes (each turn runs to its
    deadline); the others need 0.1 s of work in all, in turns of any length."""

    def __init__(self, evidence, bounds, cand, device, progress, stall=False) -> None:
        self.cand, self.worked = cand, 0.0

    def advance(self, until: float) -> CandidateOutcome:
        start = time.monotonic()
        hard = self.cand[1] == 0
        left = float("inf") if hard else 0.1 - self.worked
        time.sleep(max(0.0, min(left, until - start)))
        self.worked += time.monotonic() - start
        status = "proved" if not hard and self.worked >= 0.1 else "timeout"
        return CandidateOutcome(status, -1.0 if status == "proved" else 1.0, 1, 0, self.worked)


def test_run_bab_turns_do_not_starve_the_candidates_after_a_hard_one(monkeypatch):
    """Serial turns: a candidate that uses its whole share must not eat the turns of
    the ones after it, and the hard one gets the time the easy ones leave."""
    monkeypatch.setattr(bab, "CandidateSearch", _ScriptedSearch)
    monkeypatch.setattr(bab, "with_crown", lambda net, box, bounds, dev: bounds)
    net, box = _net(4, (3, 12, 12, 10, 2))
    evidence = NeuronEvidence(net, box)
    cands = [(2, j, "pos") for j in range(5)]
    stats = run_bab(evidence, None, cands, time.monotonic() + 60, print, "cpu", budget=0.3)
    status = {o["neuron"]: o["status"] for o in stats.outcomes}
    assert status == {0: "timeout", 1: "proved", 2: "proved", 3: "proved", 4: "proved"}
    hard = next(o for o in stats.outcomes if o["neuron"] == 0)
    assert hard["seconds"] > 0.3 + 3 * 0.1  # its own share, then what the others left


class _ThreadWatchingSearch(_ScriptedSearch):
    """_ScriptedSearch that samples, every 10 ms of its turns, how many subdomain LPs
    run_bab lets it solve at once."""

    seen: dict[int, list[int]] = {}

    def advance(self, until: float) -> CandidateOutcome:
        samples = self.seen.setdefault(self.cand[1], [])
        while True:
            samples.append(self.lp_threads())
            out = super().advance(min(until, time.monotonic() + 0.01))
            if out.status != "timeout" or time.monotonic() >= until:
                return out


@pytest.mark.parametrize("jobs", [1, 2])
def test_run_bab_gives_the_threads_of_finished_turns_to_the_lps_of_the_others(jobs, monkeypatch):
    """Two candidates side by side with --jobs 2: the hard one solves its LPs one at a
    time while the easy one's turn runs, two at a time once it is over, within the
    same turn (the only one: its share is the whole time), never more than the jobs;
    with --jobs 1 always one."""
    monkeypatch.setattr(bab, "CandidateSearch", _ThreadWatchingSearch)
    monkeypatch.setattr(bab, "with_crown", lambda net, box, bounds, dev: bounds)
    _ThreadWatchingSearch.seen = {}
    net, box = _net(4, (3, 12, 12, 10, 2))
    evidence = NeuronEvidence(net, box)
    cands = [(2, 0, "pos"), (2, 1, "pos")]
    run_bab(evidence, None, cands, time.monotonic() + 0.5, print, "cpu", budget=0.5, jobs=jobs)
    hard, easy = _ThreadWatchingSearch.seen[0], _ThreadWatchingSearch.seen[1]
    if jobs == 1:
        assert set(hard) == set(easy) == {1}
    else:
        assert set(easy) == {1} and hard[0] == 1 and hard[-1] == 2
        assert hard == sorted(hard)  # once the easy turn is over, never back to one


def test_run_bab_hands_the_time_a_layer_leaves_to_the_next(monkeypatch):
    """An easy layer's unused pool goes to the hard candidate of the layer after it."""
    monkeypatch.setattr(bab, "CandidateSearch", _ScriptedSearch)
    monkeypatch.setattr(bab, "with_crown", lambda net, box, bounds, dev: bounds)
    net, box = _net(4, (3, 12, 12, 10, 2))
    evidence = NeuronEvidence(net, box)
    cands = [(1, j, "pos") for j in range(1, 5)] + [(2, 0, "pos")]
    stats = run_bab(evidence, None, cands, time.monotonic() + 60, print, "cpu", budget=0.3)
    hard = next(o for o in stats.outcomes if o["layer"] == 3)
    assert hard["status"] == "timeout"
    assert hard["seconds"] > 0.3 + 4 * (0.3 - 0.1) - 0.1  # its share and layer 2's leftover


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("prover", ["bab", "auto", "milp"])
def test_provers_agree_through_the_pipeline(prover, device):
    """Every prover gives the oracle's states (up to undecided) on the same network."""
    net, box = _net(5, (4, 12, 12, 8, 2))
    options = StabilityOptions(
        prover=prover, solver="highs", samples=0, witness_search=False, device=str(device)
    )
    report = find_stable_neurons(net, box, None, options)
    assert report.complete
    for layer, states in enumerate(report.states):
        for j, state in enumerate(states):
            gmin, gmax = _truth(net, box, layer, j)
            if state == "stably_inactive":
                assert gmax <= 1e-7
            elif state == "stably_active":
                assert gmin >= -1e-7
            elif state == "unstable":
                assert gmax > 0 > gmin
    proofs = report.extra["proofs"]
    if prover == "bab":
        assert proofs["solver"] == 0


def test_certify_reproves_milp_proofs_soundly():
    net, box = _net(5, (4, 12, 12, 8, 2))
    options = StabilityOptions(
        prover="milp",
        bounds="interval",
        solver="highs",
        samples=0,
        witness_search=False,
        certify=True,
    )
    report = find_stable_neurons(net, box, None, options)
    stats = report.extra["stages"]["certify"]
    assert stats["checked"] == stats["certified"] + stats["retracted"]
    assert (
        report.extra["proofs"]["solver"]
        == stats["checked"] - stats["certified"] - stats["retracted"]
    )


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("lps", [False, True])
def test_bab_proofs_survive_an_lp_recheck(seed, lps, monkeypatch):
    """Every closed subdomain of a proof is closed again by an LP with safe dual bounds
    (tighten.leaf_bound, its own cuts): HiGHS instead of back-substitution or the
    prover's LP with its root's cuts, the same certificate. With ``lps`` the prover's
    LPs close the subdomains (from the start, back-substitution weakened)."""
    if lps:
        monkeypatch.setattr(bab, "LP_FROM_LAYER", 1)
        monkeypatch.setattr(bab, "LP_AFTER", 0.0)
        monkeypatch.setattr(bab, "ROOT_STEPS", 0)
        monkeypatch.setattr(bab, "STEPS", 0)
    net, box = _net(seed, (3, 8, 8, 2))
    bounds = interval_bounds(net, box)
    rechecked = 0
    for j in range(8):
        for side in ("pos", "neg"):
            leaves: list[dict] = []
            evidence = NeuronEvidence(net, box)
            out = prove_candidate(
                evidence, bounds, (1, j, side), time.monotonic() + 20, CPU, print, leaves=leaves
            )
            if out.status != "proved":
                continue
            sign = 1.0 if side == "pos" else -1.0
            for leaf in leaves:
                if leaf["bound"] < -1e-4:  # clear of the LP bound's safety pad
                    assert leaf_bound(net, box, 1, j, sign, leaf) <= 0
                    rechecked += 1
    assert rechecked > 0


def test_jobs_decide_the_same():
    """Candidates proved side by side in threads give the states one at a time gives."""
    net, box = _net(7, (4, 12, 12, 8, 2))
    states = []
    for jobs in (1, 2):
        options = StabilityOptions(prover="bab", samples=0, witness_search=False, jobs=jobs)
        report = find_stable_neurons(net, box, None, options)
        states.append(report.states)
    for a, b in zip(*states):
        assert (a == b).all()


def test_report_lists_exact_stage_candidates_as_typed_records():
    net, box = _net(5, (4, 12, 12, 8, 2))
    options = StabilityOptions(prover="bab", samples=0, witness_search=False)
    report = find_stable_neurons(net, box, None, options)
    cands = report.candidates
    assert cands and all(c.layer >= 1 and c.bounds[0] < 0 < c.bounds[1] for c in cands)
    for c in cands:
        assert c.outcome == report.states[c.layer - 1][c.neuron]
        assert c.decided_by == report.deciders[c.layer - 1][c.neuron]


# ---- linear programs of subdomains ------------------------------------------------------


def test_subdomain_lp_bounds_every_point_of_its_subdomain():
    """The LP bound of a subdomain (its splits fixed in HiGHS' model) is above the target
    at every sampled point that satisfies the splits, and not above the back-substitution
    bound of the same subdomain but for its pad (the LP is the relaxation's optimum,
    back-substitution one dual bound of it): two computations sharing no code agree."""
    from exactcompress.bab_lp import SubdomainLP

    net, box = _net(4, (4, 10, 10, 10, 10, 2))
    layer, j = 3, 0
    bounds = bab.with_crown(net, box, interval_bounds(net, box), CPU)
    fixed = [np.zeros(n, dtype=np.int8) for n in net.hidden_widths]
    prover = bab.CandidateProver(net, box, bounds, fixed, layer, j, 1.0, CPU)
    lower = [t.numpy() for t in prover.root_lower]
    upper = [t.numpy() for t in prover.root_upper]
    lp = SubdomainLP(net, box, layer, j, 1.0, lower, upper)
    rng = np.random.default_rng(0)
    xs = rng.uniform(box.lo, box.hi, size=(20000, 4))
    gs = net.preactivations(xs)
    stopped_early = 0
    for trial in range(6):
        pattern = [g[trial] > 0 for g in gs[:layer]]
        split = []
        for k in range(layer):
            unstable = (lower[k] < 0) & (upper[k] > 0)
            chosen = unstable & (rng.random(len(unstable)) < 0.3)
            split.append(np.where(chosen, np.where(pattern[k], 1, -1), 0).astype(np.int8))
        inside = np.ones(len(xs), dtype=bool)
        for k in range(layer):
            on = split[k] != 0
            inside &= ((gs[k][:, on] > 0) == (split[k][on] > 0)).all(axis=1)
        # stopped as soon as the subdomain shows closed: still a bound, still closing it
        early, _ = lp.bound(split, 10.0)
        value, x = lp.bound(split, 10.0, enough=None)
        assert value is not None and x is not None
        assert gs[layer][inside, j].max() <= value
        assert early is not None and gs[layer][inside, j].max() <= early
        assert early <= 0 if value < -1e-4 else early == pytest.approx(value, abs=1e-7)
        stopped_early += early > value + 1e-6
        root = prover.root()
        root.split = [torch.from_numpy(s)[None] for s in split]
        back, _, _ = prover.bound(root, 30)
        # the LP's bound carries a safety pad of 1e-6 (1 + |value|) in the units of its
        # scaled objective (tighten.REL_PAD, tighten.cost_scale)
        scale = cost_scale(lp.w_row)
        assert value <= float(back[0]) + 2e-6 * (1 / scale + abs(float(back[0])))
    assert stopped_early > 0


def _lp_searches_agree_with_the_oracle(
    net: ReLUNetwork, box: Box, threads: int, device: torch.device = CPU
):
    """Every candidate's search with ``threads`` subdomain LPs at a time, each decision
    checked against scipy's MILP; returns the LP calls, cuts and LP copies made."""
    bounds = interval_bounds(net, box)
    calls = cuts = copies = 0
    for layer, j, side, gmin, gmax in _every_candidate(net, box):
        evidence = NeuronEvidence(net, box)
        search = CandidateSearch(evidence, bounds, (layer, j, side), device, lambda m: None)
        search.lp_threads = lambda: threads
        with bab.one_thread():
            out = search.advance(time.monotonic() + 10)
        if search.lp is not None:
            calls += search.lp_calls
            cuts += search.lp.n_cuts()
            copies += len(search._lp_copies)
        _check(out, evidence, side, gmin, gmax, layer, j)
    return calls, cuts, copies


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bab_with_subdomain_lps_decides_like_the_oracle(seed, device, monkeypatch):
    """Subdomains closed by their LP with ideal cuts (here every subdomain's, on every
    layer, from the start) are closed soundly: every decision agrees with scipy's MILP."""
    monkeypatch.setattr(bab, "LP_FROM_LAYER", 1)
    monkeypatch.setattr(bab, "LP_AFTER", 0.0)
    calls, cuts, _ = _lp_searches_agree_with_the_oracle(*_net(seed), threads=1, device=device)
    assert calls > 0 and cuts > 0


@pytest.mark.parametrize("seed", [0, 2])
def test_subdomain_lps_two_at_a_time_decide_like_the_oracle(seed, monkeypatch):
    """Two subdomain LPs at once, on the LP and its copy in a second thread (--jobs 2
    with one candidate left), close subdomains as soundly as one at a time. Weak
    back-substitution (no alpha or beta steps) leaves more subdomains to the LPs."""
    for name, value in (("LP_FROM_LAYER", 1), ("LP_AFTER", 0.0), ("STEPS", 0), ("ROOT_STEPS", 0)):
        monkeypatch.setattr(bab, name, value)
    net, box = _net(seed, (4, 12, 12, 10, 2))
    calls, _, copies = _lp_searches_agree_with_the_oracle(net, box, threads=2)
    assert calls > 0 and copies > 0


def _random_split(root, lower, upper, rng, share: float) -> list[np.ndarray]:
    """A subdomain's splits: about ``share`` of each layer's unstable neurons split, each
    to a random side (contradicting splits included)."""
    split = [s.copy() for s in root]
    for k in range(len(root)):
        free = np.flatnonzero((lower[k] < 0) & (upper[k] > 0))
        pick = free[rng.random(free.size) < share]
        split[k][pick] = rng.choice([-1, 1], size=pick.size)
    return split


def test_a_copy_of_a_subdomain_lp_bounds_like_it_and_apart_from_it():
    """A copy (for a second thread) holds the same model, cuts included: it gives the
    original's bounds on the same subdomains, and bounding a subdomain on one leaves the
    other's model as it was, also when both solve at once in two threads."""
    from concurrent.futures import ThreadPoolExecutor

    net, box, lower, upper, lp = _deep_lp(seed=1, cuts=True)
    root = [np.zeros(len(lo), dtype=np.int8) for lo in lower]
    lp.strengthen(root, 3, 10.0)
    twin = lp.clone()
    assert twin.n_cuts() == lp.n_cuts() > 0
    assert twin.lp.highs is not lp.lp.highs
    rng = np.random.default_rng(3)
    splits = [_random_split(root, lower, upper, rng, 0.25) for _ in range(8)]

    def bounds(model, order):
        return {i: model.bound(splits[i], 10.0, enough=None)[0] for i in order}

    alone = bounds(lp, range(8))
    with ThreadPoolExecutor(2) as pool:  # the copy the other way round, at the same time
        mine, theirs = pool.map(bounds, (lp, twin), (range(8), range(7, -1, -1)))
    for i in range(8):
        assert (alone[i] is None) == (mine[i] is None) == (theirs[i] is None)
        if alone[i] is not None:
            assert mine[i] == pytest.approx(alone[i], abs=1e-7 * (1 + abs(alone[i])))
            assert theirs[i] == pytest.approx(alone[i], abs=1e-7 * (1 + abs(alone[i])))


def test_a_pickled_subdomain_lp_and_its_bases_bound_like_the_original():
    """A frontier part shipped to another worker takes the search's LP, cuts included,
    and its subdomains' bases (``Frontier.lp``, ``bab_lp.PortableBasis``): unpickled, the
    LP gives the original's bounds, and a subdomain solved again from its own shipped
    basis needs no simplex iteration (a cold start needs many)."""
    import pickle

    from exactcompress.bab_lp import portable

    net, box, lower, upper, lp = _deep_lp(seed=1, cuts=True)
    root = [np.zeros(len(lo), dtype=np.int8) for lo in lower]
    lp.strengthen(root, 3, 10.0)
    twin = pickle.loads(pickle.dumps(lp))
    assert twin.n_cuts() == lp.n_cuts() > 0 and twin.lp.options == lp.lp.options
    rng = np.random.default_rng(5)
    cold = 0
    for _ in range(6):
        split = _random_split(root, lower, upper, rng, 0.2)
        value = lp.bound(split, 10.0, enough=None)[0]
        basis = pickle.loads(pickle.dumps(portable([lp.last_basis()])))[0]
        fresh = pickle.loads(pickle.dumps(lp))
        again = fresh.bound(split, 10.0, basis, enough=None)[0]
        assert fresh.lp.highs.getInfo().simplex_iteration_count == 0
        cold_value = twin.bound(split, 10.0, enough=None)[0]
        cold += twin.lp.highs.getInfo().simplex_iteration_count
        for other in (again, cold_value):
            assert other == pytest.approx(value, abs=1e-7 * (1 + abs(value)))
    assert cold > 0


def test_a_root_lp_cut_short_by_its_turn_is_resumed_not_rebuilt(monkeypatch):
    """A turn that ends before the candidate's root LP is solved keeps its open
    subdomains (no restart without an LP bound) and the half-solved model; the next try
    resumes that same model, restarts once with a root bound, and decides like scipy's
    MILP."""
    from exactcompress.bab_lp import SubdomainLP

    monkeypatch.setattr(bab, "LP_FROM_LAYER", 1)
    monkeypatch.setattr(bab, "LP_AFTER", 0.0)
    real = SubdomainLP.strengthen
    models: list[SubdomainLP] = []

    def first_try_runs_out(self, split, rounds, time_limit):
        models.append(self)
        return None if len(models) == 1 else real(self, split, rounds, time_limit)

    monkeypatch.setattr(SubdomainLP, "strengthen", first_try_runs_out)
    net, box = _net(1)
    bounds = interval_bounds(net, box)
    resumed = 0
    for layer, j, side, gmin, gmax in _every_candidate(net, box):
        models.clear()
        said: list[str] = []
        evidence = NeuronEvidence(net, box)
        search = CandidateSearch(evidence, bounds, (layer, j, side), CPU, said.append)
        with bab.one_thread():
            out = search.advance(time.monotonic())  # a turn over before it starts
            if out.status == "timeout":
                assert models and search.lp is None and len(search.open_set) == 1
                out = search.advance(time.monotonic() + 10)
        _check(out, evidence, side, gmin, gmax, layer, j)
        if len(models) >= 2:
            resumed += 1
            assert models[0] is models[1] is search.lp
            restarts = [m for m in said if "again from the root" in m]
            assert len(restarts) == 1 and "no bound" not in restarts[0]
    assert resumed > 0


def _two_sided_net() -> tuple[ReLUNetwork, Box]:
    """x in [0, 1]; g_a = x - 0.5 and g_b = 0.2 - x are both unstable, and both active
    only where x >= 0.5 and x <= 0.2: nowhere."""
    w1 = np.array([[1.0], [-1.0]])
    b1 = np.array([-0.5, 0.2])
    w2 = np.array([[1.0, 1.0]])
    b2 = np.array([-0.1])
    w3, b3 = np.ones((1, 1)), np.zeros(1)
    return ReLUNetwork([w1, w2, w3], [b1, b2, b3]), Box(np.zeros(1), np.ones(1))


def _lp_of(net: ReLUNetwork, box: Box):
    from exactcompress.bab_lp import SubdomainLP

    bounds = interval_bounds(net, box)
    return SubdomainLP(net, box, 1, 0, 1.0, bounds.lower[:1], bounds.upper[:1])


def test_an_empty_subdomain_closes_by_a_checked_certificate():
    """Splits that contradict close their subdomain (-inf) by HiGHS' dual ray checked in
    float64, the LP re-check of a leaf agrees, and a feasible split set is bounded by
    the brute-force maximum; emptiness is confirmed by a dense grid."""
    net, box = _two_sided_net()
    xs = np.linspace(0, 1, 100001)[:, None]
    g1 = net.preactivations(xs)[0]
    assert not ((g1[:, 0] >= 0) & (g1[:, 1] >= 0)).any()
    lp = _lp_of(net, box)
    empty = [np.array([1, 1], dtype=np.int8)]
    value, x = lp.bound(empty, 10.0)
    assert value == -np.inf and x is None
    bounds = interval_bounds(net, box)
    leaf = {"split": empty, "lower": bounds.lower[:1], "upper": bounds.upper[:1]}
    assert leaf_bound(net, box, 1, 0, 1.0, leaf) == -np.inf
    feasible = [np.array([1, -1], dtype=np.int8)]
    value, _ = lp.bound(feasible, 10.0)
    inside = (g1[:, 0] >= 0) & (g1[:, 1] <= 0)
    assert value is not None and net.preactivations(xs)[1][inside, 0].max() <= value


def test_a_dual_ray_proves_nothing_about_a_model_with_points(monkeypatch):
    """The emptiness check trusts no ray: on a model with points, no vector HiGHS could
    hand back (here random ones, with the infeasible status faked) passes it."""
    import highspy

    net, box = _two_sided_net()
    lp = _lp_of(net, box)
    value, _ = lp.bound([np.array([1, -1], dtype=np.int8)], 10.0)
    assert value is not None
    highs = lp.lp.highs
    rng = np.random.default_rng(0)
    n_rows = highs.getNumRow()
    monkeypatch.setattr(
        highs, "getModelStatus", lambda: highspy.HighsModelStatus.kInfeasible, raising=False
    )
    for _ in range(200):
        ray = rng.normal(size=n_rows) * 10.0 ** rng.uniform(-3, 3)
        monkeypatch.setattr(highs, "getDualRay", lambda r=ray: (None, True, r), raising=False)
        assert not lp.lp.proves_empty()


def _deep_lp(seed: int = 4, cuts: bool = False):
    """A 4-hidden-layer network, its root bounds before layer 4 and the LP of layer 4's
    neuron 0 over them."""
    from exactcompress.bab_lp import SubdomainLP

    net, box = _net(seed, (4, 10, 10, 10, 10, 2))
    bounds = bab.with_crown(net, box, interval_bounds(net, box), CPU)
    fixed = [np.zeros(n, dtype=np.int8) for n in net.hidden_widths]
    prover = bab.CandidateProver(net, box, bounds, fixed, 3, 0, 1.0, CPU)
    lower = [t.numpy() for t in prover.root_lower]
    upper = [t.numpy() for t in prover.root_upper]
    return net, box, lower, upper, SubdomainLP(net, box, 3, 0, 1.0, lower, upper, cuts)


def test_a_child_lp_from_its_parents_basis_gives_the_same_bound():
    """Warm-starting a subdomain's LP from its parent's basis changes where the simplex
    starts, not the bound: the same value as a solve started elsewhere."""
    _, _, lower, upper, warm = _deep_lp()
    *_, cold = _deep_lp()
    rng = np.random.default_rng(1)
    parent = [np.zeros(len(lo), dtype=np.int8) for lo in lower]
    warm.bound(parent, 10.0, enough=None)
    basis = warm.last_basis()
    assert basis is not None
    for _ in range(6):
        k = int(rng.integers(0, 3))
        free = np.flatnonzero((lower[k] < 0) & (upper[k] > 0) & (parent[k] == 0))
        child = [s.copy() for s in parent]
        child[k][rng.choice(free)] = rng.choice([-1, 1])
        a, _ = warm.bound(child, 10.0, basis, enough=None)
        b, _ = cold.bound(child, 10.0, enough=None)
        assert (a is None) == (b is None)
        if a is not None:
            assert abs(a - b) <= 1e-7 * (1 + abs(b))


def test_the_lp_branching_hint_names_a_free_loose_neuron():
    """The LP's suggested split is a free unstable neuron whose triangle the optimum
    uses (h above relu(g) there), and there is none once every neuron is split."""
    net, box, lower, upper, lp = _deep_lp()
    split = [np.zeros(len(lo), dtype=np.int8) for lo in lower]
    value, _ = lp.bound(split, 10.0, enough=None)
    assert value is not None
    hint = lp.branching_hint()
    sizes = np.cumsum([0] + [len(lo) for lo in lower])
    k = int(np.searchsorted(sizes, hint, side="right")) - 1
    j = hint - sizes[k]
    assert lower[k][j] < 0 < upper[k][j]
    sol = lp.lp.highs.getSolution()
    z = np.asarray(sol.col_value)
    uns, g_cols, h_cols, _ = lp.lp.triangles[k]
    at = int(np.flatnonzero(uns == j)[0])
    assert z[h_cols[at]] > max(z[g_cols[at]], 0.0) + 1e-9
    # every unstable neuron split as at one point of the box: a subdomain with a point
    point = net.preactivations(box.lo[None] + 0.37 * (box.hi - box.lo)[None])
    every = [
        np.where((lo < 0) & (up > 0), np.where(g[0] > 0, 1, -1), 0).astype(np.int8)
        for lo, up, g in zip(lower, upper, point)
    ]
    value, _ = lp.bound(every, 10.0, enough=None)
    assert value is not None and value > -np.inf
    assert lp.branching_hint() == -1
