"""Branch and bound on sound bounds: the exact stage without a MILP solver (``--prover bab``).

A candidate t of hidden layer L is proved stably inactive by an upper bound of g_t
that is <= 0 over the domain (stably active: an upper bound of -g_t <= 0). When the
root bound does not get there, the unstable ReLUs of layers < L are split, one at a
time, into an active (g >= 0) and an inactive (g <= 0) subdomain, and each subdomain
is bounded again; the candidate is proved once every subdomain is closed.

Bounds of a subdomain (beta-CROWN, Wang et al. 2021, without its input-split part):

- the intermediate bounds of layers < L are the root bounds (the exact stage's tight
  ones, intersected with CROWN's), clamped by the splits (an active split has
  lower >= 0, an inactive one upper <= 0);
- a split neuron is linear (active) or zero (inactive); every other unstable neuron
  is relaxed by its triangle, with an optimised lower slope alpha in [0, 1];
- each split constraint s g >= 0 enters the bound with a multiplier beta >= 0:
  max f over the subdomain <= max over the relaxation of f + beta s g.

Any alpha in [0, 1] and beta >= 0 give a valid bound, so they are optimised by
projected gradient steps and the best bound seen is kept. A deep candidate that this
does not close within LP_AFTER seconds starts again from the root with linear
programs: every subdomain's LP, the same relaxation strengthened by ideal cuts
(``bab_lp.py``, ``ideal_cuts.py``), is solved before the subdomain is split. Every
bound is evaluated in float64 and widened by a bound on its rounding error (the analysis of
``exactcompress.bounds``): a closed subdomain is a proof in sound arithmetic, not a
solver's floating-point word. The point where the final linear bound is maximised is
forward-passed as a witness candidate, and gradient search is started from the most
promising subdomains, so a neuron that can flip is usually refuted on the way.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from . import refute
from .bab_lp import SubdomainLP, portable
from .bounds import EPS64, Adam, LayerBounds, _relaxation, crown_bounds, pick_device
from .domain import Box
from .evidence import NeuronEvidence
from .network import ReLUNetwork

STAGE = "bab"
#: deciders whose proofs rest on sound float64 arithmetic (a MILP proof rests on a solver)
SOUND = ("bounds", "lp", "tighten", "bab")
Progress = Callable[[str], None]
Candidate = tuple[int, int, str]

#: Adam step sizes: alpha lives in [0, 1]; beta is in units of the target's weights
ALPHA_LR, BETA_LR = 0.1, 0.1
#: subdomains split together in one batch (each gives two children)
BATCH = 256
#: projected Adam steps on alpha and beta per batch (more at the root)
STEPS, ROOT_STEPS = 8, 30
#: steps for a subdomain with nothing left to split: its bound is a linear program's
#: Lagrangian dual, which projected gradient reaches slowly but surely
LEAF_STEPS = 300
#: filtered smart branching: splits tried per subdomain (the best BaBSR-like scores);
#: 1 is plain BaBSR
FSB_TOP = 32
#: linear programs of open subdomains (bab_lp.py, with ideal cuts): once a search has
#: spent LP_AFTER seconds on back-substitution, it starts again from the root, and from
#: then on every subdomain's LP is solved before the subdomain is split; None turns them
#: off. Most candidates close sooner by back-substitution alone (2-3 s on 5x100). 4x100's
#: layer-4 n28 is proved after about 1000 subdomains in 10-16 s this way (49 subdomains
#: in 12 s with LPs from the start), where triangle LPs on a share of the search's time
#: left it open after 300 s. The restart drops a frontier of hundreds of subdomains that
#: have no parent basis to warm-start from and whose ancestors an LP would have closed
#: (LPs on that frontier instead of a restart still left n28 open at 300 s)
LP_AFTER: float | None = 3.0
#: ... only for candidates with at least this many layers before them: one layer's
#: back-substitution bound is near its LP already, while the LP's first solve on a wide
#: layer costs seconds (5 s on 2x800, for no gain measured)
LP_FROM_LAYER = 2
#: split a subdomain whose LP left it open where that LP suggests (bab_lp.py), not by FSB
LP_BRANCH = True
#: rounds of ideal cuts (ideal_cuts.py) separated at the root of a candidate's LP, 0 for
#: none; the cuts stay in its LP for every subdomain. On 4x100's last candidate five
#: rounds took the root LP from 8.0e-3 to 4.3e-3; of 40 subdomains left open by 60 s of
#: back-substitution, the LP with these cuts closed all 40, the triangle LP 20
CUT_ROUNDS = 5
#: time limit of one subdomain's linear program (a cold start takes the longest)
LP_SECONDS = 5.0
#: gradient search from the most promising subdomains every this many batches
SEARCH_EVERY = 8
#: --prover auto: a candidate whose worst open bound has not moved STALL_PROGRESS of the
#: way to 0 after STALL_SECONDS goes to the MILP instead
STALL_SECONDS, STALL_PROGRESS = 10.0, 0.1
#: the shortest turn a candidate gets when run_bab shares time left over
MIN_SLICE = 1.0
#: seconds between two progress lines
PROGRESS_EVERY = 5.0


@dataclass
class CandidateOutcome:
    """How one candidate's branch and bound ended."""

    status: str  # proved | refuted | timeout | stuck | stalled
    bound: float  # best global upper bound of s g when it stopped (<= 0 when proved)
    domains: int  # subdomains bounded
    depth: int  # most splits on one path
    seconds: float


@dataclass
class _Relax:
    """Per-subdomain linear bounds of relu(g_k): low g <= relu(g) <= up g + shift.

    Tensors are (B, 1, n_k) so that they broadcast over the rows of each subdomain;
    ``sign`` is the split direction (+1 active, -1 inactive, 0 free), ``mass`` bounds
    |W_k| |h_{k-1}| + |b_k| (the scale of the rounding errors of the substitution).
    """

    up: torch.Tensor
    shift: torch.Tensor
    low: torch.Tensor
    free: torch.Tensor
    sign: torch.Tensor
    mass: torch.Tensor


@dataclass
class _Domains:
    """A set of subdomains, one row each: splits, intermediate bounds, alpha, beta."""

    split: list[torch.Tensor]
    lower: list[torch.Tensor]
    upper: list[torch.Tensor]
    alpha: list[torch.Tensor]
    beta: list[torch.Tensor]
    bound: torch.Tensor
    depth: torch.Tensor
    #: per subdomain, the basis of its own or its nearest ancestor's linear program (or
    #: None): a child's LP differs from its parent's by one split, so warm-starting from
    #: the parent's basis takes a few simplex iterations (80 against 1000 from an
    #: unrelated subdomain's, measured on 4x100)
    basis: list
    #: per subdomain, the split its LP suggests (an index into the concatenated layers,
    #: -1 for none): the free neuron whose triangle the LP optimum leans on most
    hint: torch.Tensor
    #: per subdomain, whether its linear program is due before it may be split (set for
    #: the restarted root and every child left open once the search has its LP, cleared
    #: once solved): an LP that closes it spares the whole subtree a split would grow
    lp_due: torch.Tensor

    def __len__(self) -> int:
        return int(self.bound.shape[0])

    def take(self, idx: torch.Tensor) -> _Domains:
        return _Domains(
            [t[idx] for t in self.split],
            [t[idx] for t in self.lower],
            [t[idx] for t in self.upper],
            [t[idx] for t in self.alpha],
            [t[idx] for t in self.beta],
            self.bound[idx],
            self.depth[idx],
            [self.basis[i] for i in idx.tolist()],
            self.hint[idx],
            self.lp_due[idx],
        )

    def to(self, dev: torch.device) -> _Domains:
        """A copy on ``dev`` whose LP bases pickle (``bab_lp.portable``), for another
        process."""

        def move(ts: list[torch.Tensor]) -> list[torch.Tensor]:
            return [t.to(dev) for t in ts]

        return _Domains(
            move(self.split),
            move(self.lower),
            move(self.upper),
            move(self.alpha),
            move(self.beta),
            self.bound.to(dev),
            self.depth.to(dev),
            portable(self.basis),
            self.hint.to(dev),
            self.lp_due.to(dev),
        )

    @staticmethod
    def cat(parts: list[_Domains]) -> _Domains:
        def join(name: str) -> list[torch.Tensor]:
            lists = [getattr(p, name) for p in parts]
            return [torch.cat(ts) for ts in zip(*lists)]

        return _Domains(
            join("split"),
            join("lower"),
            join("upper"),
            join("alpha"),
            join("beta"),
            torch.cat([p.bound for p in parts]),
            torch.cat([p.depth for p in parts]),
            [b for p in parts for b in p.basis],
            torch.cat([p.hint for p in parts]),
            torch.cat([p.lp_due for p in parts]),
        )


@dataclass
class Frontier:
    """Some of one candidate's open subdomains, for another search to go on from (a task
    on another worker): the candidate is proved once every part of its frontier is."""

    open_set: _Domains  # on the CPU, its LP bases portable
    #: the candidate's root bound (what ``stall`` measures progress from)
    root_bound: float
    #: the search's ``SubdomainLP`` (its cuts included) pickled, when it had one: a part
    #: goes on with the same LP, its subdomains' LPs starting from their bases. Pickled
    #: once for all parts, and built again only where a part runs
    lp: bytes | None = None

    @property
    def bound(self) -> float:
        return float(self.open_set.bound.max())


@dataclass
class BabStats:
    """Totals of one exact-stage run of the prover, for stability.json."""

    candidates: int = 0
    proved: int = 0
    refuted: int = 0
    undecided: int = 0
    domains: int = 0
    max_depth: int = 0
    #: frontier parts sent out as tasks of their own (--workers: a candidate spread over
    #: idle workers); 0 in process
    parts: int = 0
    outcomes: list[dict] = field(default_factory=list)

    def record(self, cand: Candidate, out: CandidateOutcome) -> None:
        layer, j, side = cand
        self.domains += out.domains
        self.max_depth = max(self.max_depth, out.depth)
        self.proved += out.status == "proved"
        self.refuted += out.status == "refuted"
        self.undecided += out.status not in ("proved", "refuted")
        self.outcomes.append(
            {
                "layer": layer + 1,
                "neuron": j,
                "side": side,
                "status": out.status,
                "bound": out.bound,
                "domains": out.domains,
                "seconds": round(out.seconds, 3),
            }
        )

    def to_json(self) -> dict:
        return {
            "candidates": self.candidates,
            "proved": self.proved,
            "refuted": self.refuted,
            "undecided": self.undecided,
            "domains": self.domains,
            "max_depth": self.max_depth,
            "parts": self.parts,
        }


class CandidateProver:
    """Branch and bound for one target row c . g_L + const (c = +-e_j) over the box."""

    def __init__(
        self,
        net: ReLUNetwork,
        box: Box,
        bounds: LayerBounds,
        fixed: list[np.ndarray],
        layer: int,
        neuron: int,
        sign: float,
        device: torch.device,
    ) -> None:
        self.dev = device
        self.layer = layer
        self.target = (layer, neuron, sign)
        params = net.tensors(device)
        self.params = params[:layer]
        w, b = params[layer]
        self.target_w = (sign * w[neuron]).reshape(1, 1, -1)
        self.target_b = (sign * b[neuron]).reshape(1, 1)
        self.scale = float(w[neuron].abs().max().clamp_min(1e-12))
        self.lo = torch.from_numpy(box.lo).to(device)
        self.hi = torch.from_numpy(box.hi).to(device)
        self.box_mag = torch.maximum(self.lo.abs(), self.hi.abs())
        self.root_lower, self.root_upper = [], []
        for k in range(layer):
            lo = torch.from_numpy(bounds.lower[k]).to(device).clone()
            up = torch.from_numpy(bounds.upper[k]).to(device).clone()
            f = torch.from_numpy(np.asarray(fixed[k])).to(device)
            lo = torch.where(f > 0, lo.clamp_min(0.0), lo)
            up = torch.where(f < 0, up.clamp_max(0.0), up)
            self.root_lower.append(lo)
            self.root_upper.append(up)

    # ---- bounds --------------------------------------------------------------------
    def root(self) -> _Domains:
        one = [t[None].clone() for t in self.root_lower]
        return _Domains(
            [torch.zeros_like(t, dtype=torch.int8) for t in one],
            one,
            [t[None].clone() for t in self.root_upper],
            [_crown_alpha(lo, up) for lo, up in zip(one, self.root_upper)],
            [torch.zeros_like(t) for t in one],
            torch.full((1,), torch.inf, dtype=torch.float64, device=self.dev),
            torch.zeros(1, dtype=torch.int64, device=self.dev),
            [None],
            torch.full((1,), -1, dtype=torch.int64, device=self.dev),
            torch.zeros(1, dtype=torch.bool, device=self.dev),
        )

    def _mass(self, k: int, upper: list[torch.Tensor]) -> torch.Tensor:
        w, b = self.params[k]
        h_mag = self.box_mag[None] if k == 0 else upper[k - 1].clamp_min(0)
        return (h_mag @ w.abs().T + b.abs())[:, None, :]

    def _relax(
        self,
        k: int,
        lower: torch.Tensor,
        upper: torch.Tensor,
        split: torch.Tensor,
        alpha: torch.Tensor | None,
        mass: torch.Tensor,
    ) -> _Relax:
        r = _relaxation(lower, upper, mass)
        free = r.unstable
        low = r.low_slope if alpha is None else torch.where(free, alpha, r.low_slope)
        up, shift, sign = r.up_slope, r.up_shift, split.to(upper.dtype)
        return _Relax(up[:, None], shift[:, None], low[:, None], free[:, None], sign[:, None], mass)

    def _backward(
        self,
        relax: list[_Relax],
        coef: torch.Tensor,
        const: torch.Tensor,
        beta: list[torch.Tensor] | None = None,
        keep: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Sound upper bound of coef . h_{K-1} + const over each subdomain (B, R rows).

        Returns the bound (B, R), the coefficients on the input (B, R, n0) and, with
        ``keep``, the coefficients on h_k of every layer (for branching scores).
        """
        err = torch.zeros_like(const)
        kept: list[torch.Tensor] = [None] * len(relax)  # type: ignore[list-item]
        for k in range(len(relax) - 1, -1, -1):
            w, b = self.params[k]
            r = relax[k]
            if keep:
                kept[k] = coef
            pos, neg = coef.clamp_min(0), coef.clamp_max(0)
            d = pos * r.up + neg * r.low
            d_mag = pos * r.up - neg * r.low
            if beta is not None:
                d = d + beta[k][:, None] * r.sign
                d_mag = d_mag + beta[k][:, None] * r.sign.abs()
            lifted = (pos * r.shift).sum(-1)
            mass = (d_mag * r.mass).sum(-1) + const.abs() + lifted
            err = err + 2 * (w.shape[0] + 4) * EPS64 * mass + 1e-300
            const = const + lifted + d @ b
            coef = d @ w
        value = (coef.clamp_min(0) * self.hi).sum(-1) + (coef.clamp_max(0) * self.lo).sum(-1)
        value = value + const
        mass = (coef.abs() * self.box_mag).sum(-1) + const.abs()
        value = value + err + 2 * (coef.shape[-1] + 4) * EPS64 * mass + 1e-300
        return value, coef, kept

    def intermediate(
        self, dom: _Domains
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Intermediate bounds of every subdomain: its parent's, clamped by its splits;
        also which subdomains turned out empty. Re-computing them by CROWN per subdomain
        was measured 10-25x slower per subdomain for bounds no tighter than the root's
        LP-tightened ones, so the split constraints act through beta alone."""
        lower = [
            torch.where(split > 0, lo.clamp_min(0.0), lo) for lo, split in zip(dom.lower, dom.split)
        ]
        upper = [
            torch.where(split < 0, up.clamp_max(0.0), up) for up, split in zip(dom.upper, dom.split)
        ]
        empty = torch.zeros(len(dom), dtype=torch.bool, device=self.dev)
        for lo, up in zip(lower, upper):
            empty |= (lo > up).any(dim=1)
        return lower, upper, empty

    def bound(self, dom: _Domains, steps: int) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Optimise alpha and beta of each subdomain; returns the best sound bound, the
        input point maximising the final linear bound, and per-layer coefficients."""
        lower, upper, empty = self.intermediate(dom)
        dom.lower, dom.upper = lower, upper
        masses = [self._mass(k, upper) for k in range(self.layer)]
        alpha = [a.clone().requires_grad_() for a in dom.alpha]
        beta = [b.clone().requires_grad_() for b in dom.beta]
        groups = [
            ([t for t in alpha if t.numel()], ALPHA_LR),
            ([t for t in beta if t.numel()], BETA_LR * self.scale),
        ]
        groups = [g for g in groups if g[0]]
        opt = Adam(groups) if groups else None
        best = torch.full((len(dom),), torch.inf, dtype=torch.float64, device=self.dev)
        best_x = self.lo.expand(len(dom), -1).clone()
        best_alpha = [a.detach().clone() for a in alpha]
        best_beta = [b.detach().clone() for b in beta]
        kept: list = []
        n0 = self.lo.shape[0]
        for step in range(steps + 1):
            relax = [
                self._relax(k, lower[k], upper[k], dom.split[k], alpha[k], masses[k])
                for k in range(self.layer)
            ]
            value, coef, kept = self._backward(
                relax,
                self.target_w.expand(len(dom), 1, -1),
                self.target_b.expand(len(dom), 1),
                beta,
                keep=True,
            )
            value = value[:, 0]
            with torch.no_grad():
                better = value < best
                best = torch.where(better, value.detach(), best)
                x = torch.where(coef[:, 0] > 0, self.hi, self.lo).reshape(-1, n0)
                best_x = torch.where(better[:, None], x, best_x)
                for kept_a, a in zip(best_alpha, alpha):
                    kept_a[better] = a.detach()[better]
                for kept_b, b in zip(best_beta, beta):
                    kept_b[better] = b.detach()[better]
            if opt is None or step == steps or bool((best <= 0).all()):
                break
            opt.zero_grad()
            value.sum().backward()
            opt.step()
            with torch.no_grad():
                for a in alpha:
                    a.clamp_(0.0, 1.0)
                for b in beta:
                    b.clamp_(min=0.0)
        dom.alpha, dom.beta = best_alpha, best_beta
        # a subdomain is inside its parent, so the parent's bound holds for it too
        best = torch.minimum(best, dom.bound)
        best = torch.where(empty, torch.full_like(best, -torch.inf), best)
        dom.bound = best
        kept = [k.detach()[:, 0] for k in kept]
        return best, best_x, kept

    # ---- branching -----------------------------------------------------------------
    def _scores(self, dom: _Domains, kept: list[torch.Tensor]) -> torch.Tensor:
        """BaBSR-like score of every neuron of layers < L, (B, sum n_k): how much of the
        bound the neuron's relaxation adds; -1 where there is nothing to split."""
        scores = []
        for k in range(self.layer):
            lo, up = dom.lower[k], dom.upper[k]
            free = (lo < 0) & (up > 0) & (dom.split[k] == 0)
            lam = kept[k]
            width = torch.where(free, up - lo, torch.ones_like(up))
            shift = -up * lo / width
            a = dom.alpha[k]
            gap = torch.maximum(-a * lo, (1 - a) * up)
            s = lam.clamp_min(0) * shift + (-lam).clamp_min(0) * gap
            scores.append(torch.where(free, s + 1e-12 * width, torch.full_like(s, -1.0)))
        return torch.cat(scores, dim=1)

    def _split(self, dom: _Domains, flat: torch.Tensor, direction: int) -> _Domains:
        """Copies of ``dom`` with neuron ``flat`` (an index into the concatenated layers,
        one per subdomain) split in ``direction``, its multiplier starting at 0."""
        # only splits and multipliers change; the rest is shared (never written in place)
        child = replace(
            dom,
            split=[s.clone() for s in dom.split],
            beta=[b.clone() for b in dom.beta],
            depth=dom.depth + 1,
            hint=torch.full_like(dom.hint, -1),
        )
        offset = 0
        for k in range(self.layer):
            n = child.split[k].shape[1]
            rows = torch.nonzero((flat >= offset) & (flat < offset + n)).reshape(-1)
            if rows.numel():
                child.split[k][rows, flat[rows] - offset] = direction
                child.beta[k][rows, flat[rows] - offset] = 0.0
            offset += n
        return child

    def _quick_bound(self, dom: _Domains) -> torch.Tensor:
        """One back-substitution with the subdomains' current alpha and beta: what a
        split would give before any optimisation (for choosing the split)."""
        lower, upper, empty = self.intermediate(dom)
        relax = [
            self._relax(k, lower[k], upper[k], dom.split[k], dom.alpha[k], self._mass(k, upper))
            for k in range(self.layer)
        ]
        value, _, _ = self._backward(
            relax,
            self.target_w.expand(len(dom), 1, -1),
            self.target_b.expand(len(dom), 1),
            dom.beta,
        )
        return torch.where(empty, torch.full_like(value[:, 0], -torch.inf), value[:, 0])

    def _filtered_choice(self, dom: _Domains, score: torch.Tensor) -> torch.Tensor:
        """Filtered smart branching (FSB, as in alpha-beta-CROWN): of the FSB_TOP best
        scores of each subdomain, the split whose worse child has the lowest quick bound.
        The score alone can favour a neuron whose relaxation is loose but not where the
        bound's maximiser sits; splitting it then leaves one child's bound unchanged."""
        top = min(FSB_TOP, score.shape[1])
        cand_score, cand = score.topk(top, dim=1)
        if top == 1:
            return cand[:, 0]
        worst = []
        for c in range(top):
            kids = [self._split(dom, cand[:, c], d) for d in (1, -1)]
            worst.append(self._quick_bound(_Domains.cat(kids)).reshape(2, -1).max(dim=0).values)
        cost = torch.stack(worst, dim=1)
        cost = torch.where(cand_score < 0, torch.full_like(cost, torch.inf), cost)
        return cand.gather(1, cost.argmin(dim=1, keepdim=True))[:, 0]

    def branch(self, dom: _Domains, kept: list[torch.Tensor]) -> tuple[_Domains, torch.Tensor]:
        """Split each subdomain on one free unstable neuron, chosen by filtered smart
        branching; returns the children (active halves first) and which parents had
        nothing left to split."""
        score = self._scores(dom, kept)
        stuck = score.max(dim=1).values < 0
        keep = torch.nonzero(~stuck).reshape(-1)
        dom, score = dom.take(keep), score[keep]
        # a subdomain with a hint from its LP (still free to split) takes it; filtered
        # smart branching chooses for the others only
        hinted = (dom.hint >= 0) & (score.gather(1, dom.hint.clamp_min(0)[:, None])[:, 0] >= 0)
        hinted &= LP_BRANCH
        flat = dom.hint.clone()
        rest = torch.nonzero(~hinted).reshape(-1)
        if rest.numel() == len(dom):
            flat = self._filtered_choice(dom, score)
        elif rest.numel():
            flat[rest] = self._filtered_choice(dom.take(rest), score[rest])
        children = [self._split(dom, flat, direction) for direction in (1, -1)]
        return _Domains.cat(children), stuck


def undecided_note(status: str, bound: float) -> str:
    """The note of a candidate a search left open ("timeout", "stuck" or "stalled")."""
    why = "time limit" if status == "timeout" else "branch and bound stuck"
    return f"{why} (bound {bound:.3g})"


def with_crown(net: ReLUNetwork, box: Box, bounds: LayerBounds, device) -> LayerBounds:
    """``bounds`` intersected with CROWN's: subdomains keep their root's intermediate
    bounds, so these should be as tight as one cheap pass makes them."""
    return bounds.intersect(crown_bounds(net, box, device))


@contextmanager
def one_thread() -> Iterator[None]:
    """Branch and bound runs many small tensor operations, for which torch's thread pool
    costs more than it gives (30x slower seen on 2 busy cores); --jobs runs candidates
    and subdomain LPs side by side instead."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _crown_alpha(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    return (upper > -lower).to(upper.dtype)


def prove_candidate(
    evidence: NeuronEvidence,
    bounds: LayerBounds,
    cand: Candidate,
    deadline: float,
    device: torch.device,
    progress: Progress,
    fixed: list[np.ndarray] | None = None,
    stall: bool = False,
    leaves: list[dict] | None = None,
) -> CandidateOutcome:
    """Branch and bound on one candidate until it is proved, refuted or ``deadline``
    (one ``CandidateSearch.advance``; see there for the arguments)."""
    search = CandidateSearch(evidence, bounds, cand, device, progress, fixed, stall, leaves)
    return search.advance(deadline)


class CandidateSearch:
    """One candidate's branch and bound, resumable: ``advance(deadline)`` works until the
    candidate is decided or ``deadline`` and a later call goes on from the open
    subdomains, so that ``run_bab`` can hand the time easy candidates leave to hard ones.

    Proofs are not recorded here (the caller does, decider ``bab``); every bounded
    subdomain offers its maximiser of the linear bound to ``evidence`` as a witness, and
    gradient search runs from the most promising subdomains every SEARCH_EVERY batches.
    ``fixed`` (default: every state proved so far) are the neuron states the bounds may
    rely on. With ``stall``, a search whose worst open bound has not come STALL_PROGRESS
    of the way from the root bound to 0 after STALL_SECONDS of its own time stops
    ("stalled"), so that another prover gets the time. ``leaves``, when given, receives
    every closed subdomain (its splits and intermediate bounds): the proof's certificate,
    which ``tighten.leaf_bound`` re-checks by LP with safe dual bounds.

    Spreading one candidate over several workers (distributed.py): a search started from
    a ``frontier`` part covers only those subdomains, so its "proved" proves the part,
    not the candidate, and it records no reached bound (the caller takes the worst of
    all parts). Once ``share()`` says yes, a search with at least two open subdomains
    stops ("shared") and ``frontier(n)`` hands them out as parts.
    """

    def __init__(
        self,
        evidence: NeuronEvidence,
        bounds: LayerBounds,
        cand: Candidate,
        device: torch.device,
        progress: Progress,
        fixed: list[np.ndarray] | None = None,
        stall: bool = False,
        leaves: list[dict] | None = None,
        frontier: Frontier | None = None,
    ) -> None:
        layer, j, side = cand
        self.evidence, self.cand, self.progress = evidence, cand, progress
        self.stall, self.leaves = stall, leaves
        self.seen = evidence.seen_pos if side == "pos" else evidence.seen_neg
        states = evidence.fixed_states() if fixed is None else fixed
        sign = 1.0 if side == "pos" else -1.0
        self.prover = CandidateProver(
            evidence.net, evidence.box, bounds, states, layer, j, sign, device
        )
        self.lp: SubdomainLP | None = None  # set once its root LP is solved (the restart)
        self._unsolved_lp: SubdomainLP | None = None  # built, its root LP not solved yet
        self.bab_seconds = self.lp_seconds = 0.0  # back-substitution and LP time
        self.lp_calls = 0
        #: how many subdomain LPs to solve side by side, asked before each batch
        #: (``run_bab`` hands a search the threads that finished turns leave); copies of
        #: ``lp`` for the other threads
        self.lp_threads: Callable[[], int] = lambda: 1
        self._lp_copies: list[SubdomainLP] = []
        self.last_say = time.monotonic()  # of the last progress line
        self.turn_start = 0.0  # when the current advance() began
        self.open_set: _Domains | None = None  # None until the root is bounded
        self.root: _Domains | None = None  # the bounded root, for a restart with LPs
        self.root_bound = float("inf")
        #: asked before each batch: whether to stop and hand the open subdomains out
        self.share: Callable[[], bool] = lambda: False
        self.whole = frontier is None  # the candidate's whole domain, not a part of it
        if frontier is not None:
            self.open_set = frontier.open_set.to(device)
            self.root_bound = frontier.root_bound
            if frontier.lp is not None:
                self.lp = pickle.loads(frontier.lp)
        self.domains = self.depth = self.batches = 0
        self.seconds = 0.0
        self.outcome: CandidateOutcome | None = None  # set once decided or given up

    def refuted(self) -> bool:
        layer, j, _ = self.cand
        return bool(self.seen[layer][j])

    def advance(self, deadline: float) -> CandidateOutcome:
        """Work until decided (proved, refuted), given up (stuck, stalled) or
        ``deadline`` ("timeout": ``advance`` again to go on)."""
        if self.outcome is not None:
            return self.outcome
        start = time.monotonic()
        status, bound = self._run(deadline, start)
        self.seconds += time.monotonic() - start
        out = CandidateOutcome(status, bound, self.domains, self.depth, self.seconds)
        if status not in ("proved", "refuted") and self.whole:
            layer, j, side = self.cand
            self.evidence.reach(layer, j, side, bound, STAGE)
        if status not in ("timeout", "shared"):
            self.outcome = out
        return out

    def frontier(self, parts: int) -> list[Frontier]:
        """The open subdomains in at most ``parts`` parts, each with its share of the
        hardest (dealt out by bound, highest first)."""
        dom = self.open_set
        order = torch.argsort(dom.bound, descending=True)
        cpu = torch.device("cpu")
        lp = None if self.lp is None else pickle.dumps(self.lp)
        return [
            Frontier(dom.take(order[p::parts]).to(cpu), self.root_bound, lp)
            for p in range(min(parts, len(dom)))
        ]

    def _run(self, deadline: float, start: float) -> tuple[str, float]:
        prover, evidence = self.prover, self.evidence
        layer, j, _ = self.cand
        if self.open_set is None:
            with torch.no_grad():
                root = prover.root()
            bound, x, _ = prover.bound(root, ROOT_STEPS)
            self.domains = 1
            evidence.observe(x.cpu().numpy(), STAGE)
            if self.refuted():
                return "refuted", float(bound[0])
            if bool(bound[0] <= 0):
                _keep_leaves(self.leaves, root, bound <= 0)
                return "proved", float(bound[0])
            if layer == 0:  # nothing to split: the root bound is the exact extreme
                return "stuck", float(bound[0])
            self.open_set, self.root_bound = root, float(bound[0])
            self.root = root.take(torch.zeros(1, dtype=torch.int64, device=self.prover.dev))
        self.turn_start = start
        while True:
            self._restart_with_lps(deadline)
            worst = float(self.open_set.bound.max())
            now = time.monotonic()
            if now >= deadline:
                return "timeout", worst
            if len(self.open_set) > 1 and self._shareable() and self.share():
                return "shared", worst
            if (
                self.stall
                and self.seconds + now - start > STALL_SECONDS
                and worst > (1 - STALL_PROGRESS) * self.root_bound
            ):
                return "stalled", worst
            # the subdomains with the highest bounds: hardest to close, likeliest to flip
            k = min(BATCH, len(self.open_set))
            order = torch.argsort(self.open_set.bound, descending=True)
            batch, rest = self.open_set.take(order[:k]), self.open_set.take(order[k:])
            batch, closed_bound = self._solve_due_lps(batch, deadline)
            if self.refuted():
                return "refuted", worst
            if len(batch) == 0:
                self.open_set = rest
                if len(rest) == 0:
                    return "proved", closed_bound
                continue
            batch_start = time.monotonic()
            with torch.no_grad():
                kept = kept_coefficients(prover, batch)
                children, stuck = prover.branch(batch, kept)
            if bool(stuck.any()):
                # nothing left to split: every ReLU before the layer is fixed, so only the
                # multipliers can close these
                final = batch.take(torch.nonzero(stuck).reshape(-1))
                final_bound, x, _ = prover.bound(final, LEAF_STEPS)
                evidence.observe(x.cpu().numpy(), STAGE)
                if self.refuted():
                    return "refuted", float(final_bound.max())
                if bool((final_bound > 0).any()):
                    return "stuck", float(final_bound.max())
                _keep_leaves(self.leaves, final, final_bound <= 0)
            if len(children) == 0:
                self.open_set = rest
                if len(rest) == 0:
                    return "proved", float(batch.bound.max())
                continue
            bound, x, _ = prover.bound(children, STEPS)
            self.bab_seconds += time.monotonic() - batch_start
            children.lp_due = (bound > 0) & (self.lp is not None)
            self.domains += len(children)
            self.depth = max(self.depth, int(children.depth.max()))
            xs = x.cpu().numpy()
            evidence.observe(xs, STAGE)
            self.batches += 1
            if not self.refuted() and self.batches % SEARCH_EVERY == 1:
                _gradient_from(evidence, xs[np.argsort(-bound.cpu().numpy())[:4]], *self.cand)
            if self.refuted():
                return "refuted", float(bound.max())
            _keep_leaves(self.leaves, children, bound <= 0)
            still = children.take(torch.nonzero(bound > 0).reshape(-1))
            self.open_set = _Domains.cat([rest, still]) if len(rest) else still
            if len(self.open_set) == 0:
                return "proved", float(bound.max())
            self._say()

    def _lp_coming(self) -> bool:
        """Whether the search gets subdomain LPs."""
        return LP_AFTER is not None and self.prover.layer >= LP_FROM_LAYER

    def _shareable(self) -> bool:
        """Whether the open subdomains may be handed out: not while subdomain LPs are
        still to come (a part started on a frontier from before the LP restart repeats
        what left 4x100's n28 open at 300 s, see LP_AFTER). Once the search has its LP,
        the parts take it along with their subdomains' bases (``Frontier.lp``): without
        them each part built the LP and its cuts again and solved its subdomains' LPs
        cold (5x100 L1 2e-4's n56 on 2 workers: 259 task-seconds in 7 tasks against
        147 s in one)."""
        return self.lp is not None or not self._lp_coming()

    def _say(self) -> None:
        """A progress line every PROGRESS_EVERY seconds."""
        now = time.monotonic()
        if now - self.last_say < PROGRESS_EVERY or self.open_set is None:
            return
        self.last_say = now
        layer, j, _ = self.cand
        self.progress(
            f"  bab layer {layer + 1} neuron {j}: {self.domains} subdomains bounded, "
            f"{len(self.open_set)} open, depth {self.depth}, "
            f"worst bound {float(self.open_set.bound.max()):.3g}, "
            f"{self.lp_calls} LPs, {self.seconds + now - self.turn_start:.0f} s"
        )

    def _solve_due_lps(self, dom: _Domains, deadline: float) -> tuple[_Domains, float]:
        """Solve the linear programs due (``lp_due``) of these subdomains before they are
        split, highest bound first, ``lp_threads`` at a time; returns the subdomains
        still open and the highest bound of those it closed. Solving them here rather
        than when they are made spends LPs only on subdomains that reach the top of the
        open set (each one it closes is a subtree never grown)."""
        none = -float("inf")
        if self.lp is None or not bool(dom.lp_due.any()):
            return dom, none
        order = torch.argsort(dom.bound, descending=True).tolist()
        due = [i for i in order if dom.lp_due[i]]
        splits = {i: [t[i].cpu().numpy() for t in dom.split] for i in due}
        todo = iter(due)
        results: dict[int, tuple] = {}
        lock, stop = threading.Lock(), threading.Event()

        def drain(lp: SubdomainLP, main: bool) -> None:
            """Solve due subdomains on this model until none is left or time is up."""
            while not stop.is_set():
                with lock:
                    i = next(todo, None)
                now = time.monotonic()
                if i is None or now >= deadline or self.refuted():
                    return
                value, x = lp.bound(splits[i], min(LP_SECONDS, deadline - now), dom.basis[i])
                open_ = value is not None and value > 0
                hint = lp.branching_hint() if LP_BRANCH and open_ else None
                results[i] = (value, x, lp.last_basis(), hint)
                with lock:
                    self.lp_seconds += time.monotonic() - now
                    self.lp_calls += 1
                if main:
                    self._say()

        models = self._lp_models(min(self.lp_threads(), len(due)))
        with ThreadPoolExecutor(len(models) - 1) if len(models) > 1 else nullcontext() as pool:
            others = [pool.submit(drain, lp, False) for lp in models[1:]]
            try:
                drain(models[0], True)  # in this thread, so that Ctrl-C stops it at once
            finally:
                stop.set()  # the other threads finish the LP they are in
                for f in others:
                    f.result()
        bound, points = dom.bound.clone(), []
        for i, (value, x, basis, hint) in results.items():
            dom.lp_due[i] = False
            dom.basis[i] = basis or dom.basis[i]
            if hint is not None:
                dom.hint[i] = hint
            if value is not None and value < bound[i]:
                bound[i] = value
            if x is not None:
                points.append(x)
        if points:
            self.evidence.observe(np.array(points), STAGE)
        dom.bound = bound  # never above the bound it had
        closed = bound <= 0
        _keep_leaves(self.leaves, dom, closed)
        closed_bound = float(bound[closed].max()) if bool(closed.any()) else none
        return dom.take(torch.nonzero(~closed).reshape(-1)), closed_bound

    def _lp_models(self, n: int) -> list[SubdomainLP]:
        """``n`` independent copies of the candidate's LP (``SubdomainLP.clone``), the
        first the LP itself; copies are made once and kept."""
        while len(self._lp_copies) < n - 1:
            self._lp_copies.append(self.lp.clone())
        return [self.lp, *self._lp_copies[: n - 1]]

    def _restart_with_lps(self, deadline: float) -> None:
        """Past LP_AFTER seconds of back-substitution (on a deep enough candidate): build
        the LP and start again from the root, every subdomain's LP due (see LP_AFTER)."""
        if self.lp is not None or not self._lp_coming() or self.bab_seconds < LP_AFTER:
            return
        left_open = len(self.open_set)
        root_lp = self._build_lp(deadline)
        if root_lp is None:  # the turn ended first: keep the frontier, go on next turn
            return
        root = self.root.take(torch.zeros(1, dtype=torch.int64, device=self.prover.dev))
        root.lp_due[:] = True
        self.open_set = root
        if self.leaves is not None:  # the proof is the new tree's leaves
            self.leaves.clear()
        layer, j, _ = self.cand
        self.progress(
            f"  bab layer {layer + 1} neuron {j}: {left_open} subdomains open after "
            f"{self.bab_seconds:.0f} s of back-substitution; again from the root with "
            f"subdomain LPs (root LP with {self.lp.n_cuts()} ideal cuts: {root_lp:.3g})"
        )

    def _build_lp(self, deadline: float) -> float | None:
        """The candidate's subdomain LP over the root's bounds, with CUT_ROUNDS rounds of
        ideal cuts separated at the root; returns the root's LP bound and sets
        ``self.lp``, or returns None when the turn (at most LP_SECONDS) ended first. The
        unsolved model is kept and the next call resumes from its last basis: with 43
        candidates sharing a layer, turns of a few seconds never solved a root LP in one
        go, and restarting without one threw the frontier away for nothing."""
        p = self.prover
        start = time.monotonic()
        if self._unsolved_lp is None:
            lower = [t.cpu().numpy() for t in p.root_lower]
            upper = [t.cpu().numpy() for t in p.root_upper]
            net, box = self.evidence.net, self.evidence.box
            cuts = CUT_ROUNDS > 0
            self._unsolved_lp = SubdomainLP(net, box, *p.target, lower, upper, cuts=cuts)
        lp = self._unsolved_lp
        root = [np.zeros(t.shape[0], dtype=np.int8) for t in p.root_lower]
        limit = max(0.0, min(LP_SECONDS, deadline - start))
        if CUT_ROUNDS > 0:
            value = lp.strengthen(root, CUT_ROUNDS, limit)
        else:
            value, _ = lp.bound(root, limit)
        self.lp_seconds += time.monotonic() - start
        if value is not None:
            self.lp, self._unsolved_lp = lp, None
        return value


def _keep_leaves(leaves: list[dict] | None, dom: _Domains, closed: torch.Tensor) -> None:
    if leaves is None:
        return
    for i in torch.nonzero(closed).reshape(-1).tolist():
        leaves.append(
            {
                "split": [t[i].cpu().numpy() for t in dom.split],
                "lower": [t[i].cpu().numpy() for t in dom.lower],
                "upper": [t[i].cpu().numpy() for t in dom.upper],
                "bound": float(dom.bound[i]),
            }
        )


def kept_coefficients(prover: CandidateProver, dom: _Domains) -> list[torch.Tensor]:
    """Per-layer coefficients of the final bound at the stored alpha and beta."""
    masses = [prover._mass(k, dom.upper) for k in range(prover.layer)]
    relax = [
        prover._relax(k, dom.lower[k], dom.upper[k], dom.split[k], dom.alpha[k], masses[k])
        for k in range(prover.layer)
    ]
    _, _, kept = prover._backward(
        relax,
        prover.target_w.expand(len(dom), 1, -1),
        prover.target_b.expand(len(dom), 1),
        dom.beta,
        keep=True,
    )
    return [k[:, 0] for k in kept]


def _gradient_from(
    evidence: NeuronEvidence, starts: np.ndarray, layer: int, j: int, side: str
) -> None:
    """Gradient search toward the candidate's unseen side from the given points."""
    n = evidence.net.n_hidden
    pos = [np.zeros(0, dtype=int) for _ in range(n)]
    neg = [np.zeros(0, dtype=int) for _ in range(n)]
    (pos if side == "pos" else neg)[layer] = np.array([j])
    found = refute.gradient_search(
        evidence.net,
        evidence.box,
        pos,
        neg,
        starts,
        steps=20,
        starts_per_candidate=4,
        device="cpu",
    )
    evidence.observe(found, STAGE)


def run_bab(
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
    """Branch and bound on every candidate, layer by layer, so that each proof fixes a
    neuron for the candidates of later layers.

    Each layer gets ``budget`` seconds per candidate and what the layers before it left
    unused (its pool, within ``deadline``), shared in rounds: first ``budget`` each, then
    what is left of the pool split evenly over the candidates still open, which resume
    where they stopped, so the time an easy candidate leaves goes to the hard ones, of
    its layer or a later one (5x100's hardest candidate is in its last layer). With
    ``give_up`` the candidates left open are marked undecided (the ``bab`` prover
    alone); without it they stay open for the MILP (``auto``), and stalled searches
    leave the rounds early. ``jobs`` candidates run side by side in threads, and the
    threads that fewer candidates leave (fewer than ``jobs`` in a round, or once the
    others' turns are over) solve the subdomain LPs of those still searching;
    ``evidence`` is thread-safe, so a witness found by one is seen by all."""
    dev = pick_device(device)
    stats = BabStats(candidates=len(candidates))
    start = time.monotonic()
    lock = threading.Lock()
    bounds = with_crown(evidence.net, evidence.box, bounds, dev)

    def still_open(cand: Candidate) -> bool:
        layer, j, side = cand
        seen = evidence.seen_pos if side == "pos" else evidence.seen_neg
        return not (evidence.settled(layer)[j] or seen[layer][j])

    def finish(cand: Candidate, out: CandidateOutcome) -> None:
        layer, j, side = cand
        if out.status == "proved":
            evidence.prove(layer, [j], active=(side == "neg"), stage=STAGE)
        elif out.status != "refuted" and give_up:
            evidence.give_up(layer, [j], undecided_note(out.status, out.bound))
        with lock:
            stats.record(cand, out)
            progress(
                f"  bab layer {layer + 1} neuron {j} ({side}): {out.status} after "
                f"{out.domains} subdomains, {out.seconds:.1f} s; "
                f"{time.monotonic() - start:.0f} s in bab, {stats.proved} proved, "
                f"{stats.refuted} refuted"
            )

    unfinished = 0  # turns of the current round not over yet (running or queued)

    def lp_threads() -> int:
        """The jobs that no unfinished turn holds go to subdomain LPs, shared evenly."""
        return max(1, jobs // max(1, min(jobs, unfinished)))

    def turn(cand: Candidate, search: CandidateSearch | None, share: float, end: float):
        """One turn of one candidate, ``share`` seconds from when it starts (turns run one
        after another, or ``jobs`` at a time); returns its search while it stays open."""
        nonlocal unfinished
        try:
            if not still_open(cand):
                return None  # refuted by another candidate's witness meanwhile
            search = search or CandidateSearch(
                evidence, bounds, cand, dev, progress, stall=not give_up
            )
            search.lp_threads = lp_threads
            out = search.advance(min(end, time.monotonic() + share))
            if out.status != "timeout" or time.monotonic() >= end:
                finish(cand, out)
                return None
            return cand, search
        finally:
            with lock:
                unfinished -= 1

    # one job runs in this thread, so that Ctrl-C stops it at once
    with one_thread(), ThreadPoolExecutor(jobs) if jobs > 1 else nullcontext() as pool:
        run = pool.map if pool is not None else map
        pool_end = start
        for layer in sorted({c[0] for c in candidates}):
            mine = sorted(c for c in candidates if c[0] == layer)
            todo: list[tuple[Candidate, CandidateSearch | None]] = [
                (c, None) for c in mine if still_open(c)
            ]
            pool_end += budget * len(mine)
            end = min(deadline, pool_end)
            share = budget
            while todo:
                now = time.monotonic()
                if now >= end:  # the layer's share is spent before these got a turn
                    for cand, search in todo:
                        out = search.advance(now) if search else None
                        if out is not None:
                            finish(cand, out)
                        elif still_open(cand):
                            if give_up:
                                evidence.give_up(cand[0], [cand[1]], "time limit")
                            stats.undecided += 1
                    break
                parallel = min(max(1, jobs), len(todo))
                share = min(share, max(MIN_SLICE, (end - now) * parallel / len(todo)))
                unfinished = len(todo)
                turns = list(run(lambda item, a=(share, end): turn(*item, *a), todo))
                todo = [item for item in turns if item is not None]
                share = float("inf")
                if todo and time.monotonic() < end:
                    progress(
                        f"  bab layer {layer + 1}: {len(todo)} candidates go on, "
                        f"{end - time.monotonic():.0f} s of the layer's share left"
                    )
    return stats


def certify_solver_proofs(
    evidence: NeuronEvidence,
    bounds: LayerBounds,
    deadline: float,
    progress: Progress,
    device=None,
) -> dict:
    """Re-prove every MILP proof by branch and bound (``--certify``), shallowest first,
    relying only on states proved in sound arithmetic or already re-proved; a neuron
    whose re-proof fails or runs out of time goes back to undecided."""
    dev = pick_device(device)
    bounds = with_crown(evidence.net, evidence.box, bounds, dev)
    stats = {"checked": 0, "certified": 0, "retracted": 0}
    for layer in range(evidence.net.n_hidden):
        proved = evidence.proved_active[layer] | evidence.proved_inactive[layer]
        for j in np.flatnonzero(proved & (evidence.decider[layer] == "milp")):
            j = int(j)
            side = "pos" if evidence.proved_inactive[layer][j] else "neg"
            stats["checked"] += 1
            out = None
            if time.monotonic() < deadline:
                with one_thread():
                    out = prove_candidate(
                        evidence,
                        bounds,
                        (layer, j, side),
                        deadline,
                        dev,
                        progress,
                        fixed=evidence.sound_fixed_states(SOUND),
                    )
            if out is not None and out.status == "proved":
                evidence.certified.add((layer, j))
                stats["certified"] += 1
            else:
                why = "time limit" if out is None else out.status
                evidence.retract(layer, j, f"MILP proof not re-proved soundly ({why})")
                stats["retracted"] += 1
    progress(
        f"  certify: {stats['certified']} of {stats['checked']} MILP proofs re-proved soundly, "
        f"{stats['retracted']} back to undecided"
    )
    return stats


def certify(
    net: ReLUNetwork,
    box: Box,
    claims: list[tuple[int, int, bool]],
    time_limit: float | None = None,
    device=None,
) -> dict[tuple[int, int], str]:
    """Re-prove stability claims (layer from 0, neuron, active) without trusting them:
    shallowest first, each relying only on the claims re-proved before it, starting from
    interval bounds. Returns "proved", "refuted" (a witness shows the other state) or
    "unknown" per claim; the time limit is shared by all claims."""
    from .bounds import interval_bounds

    deadline = time.monotonic() + (float("inf") if time_limit is None else time_limit)
    evidence = NeuronEvidence(net, box)
    dev = pick_device(device)
    bounds = with_crown(net, box, interval_bounds(net, box, dev), dev)
    out: dict[tuple[int, int], str] = {}
    with one_thread():
        for layer, j, active in sorted(claims):
            side = "neg" if active else "pos"
            if time.monotonic() >= deadline:
                out[(layer, j)] = "unknown"
                continue
            result = prove_candidate(
                evidence, bounds, (layer, j, side), deadline, dev, lambda _m: None
            )
            if result.status == "proved":
                evidence.prove(layer, [j], active=active, stage=STAGE)
                out[(layer, j)] = "proved"
            else:
                out[(layer, j)] = "refuted" if result.status == "refuted" else "unknown"
    return out
