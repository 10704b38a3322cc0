"""LP tightening of the candidates' bounds (``--tighten lp``).

Between the witness stage and the MILP, every neuron still open is bounded by the
LP relaxation of the layers before it, layer by layer: each ReLU already proved
stable is linear (active) or zero (inactive), each other one is replaced by its
triangle relaxation over its bounds (tighter than the LP relaxation of big-M),

    h >= 0,  h >= g,  h <= s g + t   (s = U / (U - L), the line through (L, 0), (U, U)).

Only the side that matters is solved: max g for a neuron never seen active, min g
for one never seen inactive. One HiGHS model grows by a layer at a time and only
its objective changes between solves, so every solve warm-starts from the last basis.

Soundness. HiGHS' optimum is only accurate to its tolerances, so it is never used
as a bound. Its row duals y are used instead: for ANY y, with r = c - A^T y,

    min {c.z : rl <= A z <= ru, lz <= z <= uz}
        >=  sum_i y_i (rl_i if y_i > 0 else ru_i) + sum_j min(r_j lz_j, r_j uz_j)

(Neumaier and Shcherbina 2004), whatever y's optimality or feasibility; every
variable has finite bounds, so the right side is finite. It is evaluated in float64
and widened by a bound on its rounding error (Higham, ch. 3, as in bounds.py), then
by a safety pad of 1e-6 (1 + |value|); a neuron is decided only when the padded
bound is on the other side of 0, so no neuron within the pad of 0 is ever decided.
The tolerance-based padding by feasibility tolerances times row norms is not needed:
the bound above does not assume a feasible or optimal y.

The bounds found (padded outward) are intersected with the stage's bounds, so they
never loosen, and the MILP's big-M constants shrink; when a layer's bounds changed,
the layers after it are re-propagated with interval or CROWN bounds from them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import highspy
import numpy as np
import scipy.sparse as sp
import torch

from .bounds import (
    EPS64,
    ROW_CHUNK,
    LayerBounds,
    _BackSubstitution,
    alpha_crown_bounds,
    pick_device,
    rounding_margin,
)
from .evidence import NeuronEvidence
from .network import ReLUNetwork

STAGE = "lp"
#: relative safety pad added outwards to every LP bound before it is used, in the units
#: of the scaled objective (``cost_scale``: largest coefficient near 1), so that it is
#: the same share of a bound whatever the scale of the weights: 1e-6 (1 + |value|) of
#: an L1-regularised layer whose g is about 1e-4 was 1% of its range, and held
#: 4x200's layer-3 n154 open at bounds of 8.5e-7 to 9.5e-7 for a minute
REL_PAD = 1e-6
INF = highspy.kHighsInf
#: statuses whose duals ``extreme`` turns into a bound: the optimum, or the dual simplex
#: stopped where its objective passed the ``enough`` asked for
SOLVED = (highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kObjectiveBound)
#: ``extreme(enough=...)`` lets HiGHS stop this far (relatively) past ``enough``, so that
#: the safe bound of where it stopped, a little looser than HiGHS' objective, still
#: reaches ``enough`` once the pad is added
STOP_MARGIN = 1e-5

Progress = Callable[[str], None]


class RelaxationLP:
    """The triangle relaxation of the first hidden layers as one growing HiGHS model.

    Columns: the inputs x, then per added layer its pre-activations g (for every
    neuron not proved inactive) and an output h for every neuron not proved stable
    (an active neuron's output is its g column). ``out_cols[k][j]`` is the column of
    neuron j's output in layer k, -1 when it is 0.
    """

    def __init__(self, lo: np.ndarray, hi: np.ndarray) -> None:
        #: options that hold for every solve (``set_option``), given again to a copy
        self.options: dict[str, object] = {}
        self.highs = highspy.Highs()
        self.set_option("output_flag", False)
        # warm starts after a change of objective beat presolving each solve anew
        self.set_option("presolve", "off")
        self.col_lo = np.zeros(0)
        self.col_hi = np.zeros(0)
        self.row_lo = np.zeros(0)
        self.row_hi = np.zeros(0)
        self._blocks: list[sp.csr_matrix] = []
        self._matrix: sp.csr_matrix | None = None
        self.out_cols: list[np.ndarray] = []
        #: per added layer: its triangle-relaxed neurons, their g columns, their h
        #: columns and the rows of their h - g >= 0 (what a subdomain's split changes)
        self.triangles: list[tuple[np.ndarray, ...]] = []
        self.inputs = self.add_cols(np.asarray(lo, float), np.asarray(hi, float))
        self._cost_cols = np.zeros(0, dtype=np.int32)
        #: rows when HiGHS first solved the model: its scaling was computed on those
        self._scaled_rows: int | None = None

    @property
    def n_cols(self) -> int:
        return self.col_lo.size

    def set_option(self, name: str, value: object) -> None:
        """A HiGHS option for every solve of this model and of its copies and unpickled
        twins (``time_limit`` and ``objective_bound`` are set by each ``extreme``)."""
        self.options[name] = value
        self.highs.setOptionValue(name, value)

    def clone(self) -> RelaxationLP:
        """An independent copy of the model as it stands (its own HiGHS instance, same
        options, its own bound arrays), so that two threads can solve the same relaxation
        at once: highspy releases the GIL while HiGHS runs. The copy starts with no basis
        (set one with ``highs.setBasis``: a basis of the original fits it)."""
        twin = copy.copy(self)
        for name in ("col_lo", "col_hi", "row_lo", "row_hi"):
            setattr(twin, name, getattr(self, name).copy())
        twin._blocks = list(self._blocks)
        twin.out_cols = list(self.out_cols)
        twin.triangles = list(self.triangles)
        twin.options = dict(self.options)
        twin._load()
        return twin

    def __getstate__(self) -> dict:
        """Everything but the HiGHS instance, which does not pickle: the arrays hold the
        whole model, and ``__setstate__`` builds it again (a frontier part shipped to
        another worker keeps its candidate's LP and cuts, see ``bab.Frontier``)."""
        state = self.__dict__.copy()
        del state["highs"]
        state["_matrix"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._load()

    def _load(self) -> None:
        """A new HiGHS instance holding the model as the arrays describe it, no cost.

        HiGHS computes its scaling at a model's first solve and only extends it to rows
        added later, so the new instance gets its scaling from the rows the model had
        then (a zero-iteration solve before the later rows go in). Scaled with its cuts, a
        copy of 5x100's layer-5 n56 LP took 950 simplex iterations per subdomain where
        the original took 275 (the same 40 subdomains from their parents' bases)."""
        self.highs = highspy.Highs()
        for name, value in self.options.items():
            self.highs.setOptionValue(name, value)
        n, empty = self.n_cols, np.zeros(0, dtype=np.int32)
        self.highs.addCols(n, np.zeros(n), self.col_lo, self.col_hi, 0, empty, empty, np.zeros(0))
        self._cost_cols = np.zeros(0, dtype=np.int32)
        m = self.row_lo.size
        first = m if self._scaled_rows is None else min(self._scaled_rows, m)
        a = self.matrix()
        self._pass_rows(a[:first], self.row_lo[:first], self.row_hi[:first])
        if first < m:
            limit = self.highs.getOptions().simplex_iteration_limit
            self.highs.setOptionValue("simplex_iteration_limit", 0)
            self.highs.run()
            self.highs.setOptionValue("simplex_iteration_limit", limit)
            self._pass_rows(a[first:], self.row_lo[first:], self.row_hi[first:])

    def _pass_rows(self, csr: sp.csr_matrix, lo: np.ndarray, hi: np.ndarray) -> None:
        """Rows lo <= csr z <= hi into the HiGHS instance (the arrays are the caller's)."""
        if csr.shape[0]:
            self.highs.addRows(
                csr.shape[0],
                lo,
                hi,
                csr.nnz,
                csr.indptr[:-1].astype(np.int32),
                csr.indices.astype(np.int32),
                csr.data.astype(np.float64),
            )

    def add_cols(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        n = lo.size
        idx = np.arange(self.n_cols, self.n_cols + n, dtype=np.int32)
        if n:
            empty = np.zeros(0, dtype=np.int32)
            self.highs.addCols(n, np.zeros(n), lo, hi, 0, empty, empty, np.zeros(0))
        self.col_lo = np.concatenate([self.col_lo, lo])
        self.col_hi = np.concatenate([self.col_hi, hi])
        return idx

    def add_rows(self, triplets: tuple, lo: np.ndarray, hi: np.ndarray) -> None:
        """Rows lo <= A z <= hi with A given as (values, (rows, columns))."""
        csr = sp.csr_matrix(triplets, shape=(lo.size, self.n_cols))
        csr.sort_indices()
        self._pass_rows(csr, lo, hi)
        self._blocks.append(csr)
        self._matrix = None
        self.row_lo = np.concatenate([self.row_lo, lo])
        self.row_hi = np.concatenate([self.row_hi, hi])

    def matrix(self) -> sp.csr_matrix:
        if self._matrix is None:
            n = self.n_cols
            blocks = [b if b.shape[1] == n else _widen(b, n) for b in self._blocks]
            self._matrix = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, n))
        return self._matrix

    def previous_outputs(self) -> np.ndarray:
        return self.out_cols[-1] if self.out_cols else self.inputs

    def add_layer(
        self,
        w: np.ndarray,
        b: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        fixed: np.ndarray,
        constrain: bool = False,
    ) -> None:
        """g = W h_prev + b with g in [lower, upper]; h = relu(g) relaxed as above.

        A neuron fixed inactive has output 0; with ``constrain`` its g <= 0 is also a
        constraint (a branch-and-bound split), otherwise it is not modelled at all."""
        prev = self.previous_outputs()
        live_in = np.flatnonzero(prev >= 0)
        split_off = (fixed < 0) & constrain
        if constrain:
            upper = np.where(fixed < 0, np.minimum(upper, 0.0), upper)
            lower = np.where(fixed > 0, np.maximum(lower, 0.0), lower)
        inactive = (fixed < 0) | (upper <= 0)
        active = ~inactive & ((fixed > 0) | (lower >= 0))
        unstable = ~inactive & ~active
        live = np.flatnonzero(~inactive | split_off)
        g_lo = np.where(active, np.maximum(lower, 0.0), lower)[live]
        g_cols = self.add_cols(g_lo, upper[live])
        # rows g_j - W_j h_prev = b_j
        sub = w[np.ix_(live, live_in)]
        r, c = np.nonzero(sub)
        rows = np.concatenate([np.arange(live.size), r])
        cols = np.concatenate([g_cols, prev[live_in][c]])
        vals = np.concatenate([np.ones(live.size), -sub[r, c]])
        self.add_rows((vals, (rows, cols)), b[live], b[live])
        out = np.full(w.shape[0], -1, dtype=np.int64)
        out[live] = g_cols
        out[split_off] = -1  # g <= 0 is kept as the column's bound; the output is 0
        uns = np.flatnonzero(unstable)
        if uns.size:
            lo_u, up_u = lower[uns], upper[uns]
            h_cols = self.add_cols(np.zeros(uns.size), up_u)
            g_of = out[uns]
            slope, shift = upper_line(lo_u, up_u)
            k = np.arange(uns.size)
            self.triangles.append((uns, g_of, h_cols, self.row_lo.size + k))
            # h - g >= 0 and h - s g <= t
            rows = np.concatenate([k, k, uns.size + k, uns.size + k])
            cols = np.concatenate([h_cols, g_of, h_cols, g_of])
            vals = np.concatenate(
                [np.ones(uns.size), -np.ones(uns.size), np.ones(uns.size), -slope]
            )
            self.add_rows(
                (vals, (rows, cols)),
                np.concatenate([np.zeros(uns.size), np.full(uns.size, -INF)]),
                np.concatenate([np.full(uns.size, INF), shift]),
            )
            out[uns] = h_cols
        else:
            self.triangles.append((uns,) * 4)  # no triangle in this layer
        self.out_cols.append(out)

    def extreme(
        self,
        w_row: np.ndarray,
        bias: float,
        maximize: bool,
        time_limit: float,
        enough: float | None = None,
    ) -> tuple[float | None, np.ndarray | None]:
        """Sound bound on max (or min) of w_row . h_prev + bias over the relaxation, and
        the LP's input point; (None, None) when HiGHS does not report an optimum.
        With ``enough``, HiGHS' dual simplex may stop before the optimum once its
        objective shows the max at most (the min at least) ``enough``: the bound is then
        the safe dual bound of the duals it stopped at (every bound here is), and the
        point is not an optimum (a subdomain that closes needs no more)."""
        prev = self.previous_outputs()
        live = np.flatnonzero(prev >= 0)
        cols = prev[live].astype(np.int32)
        scale = cost_scale(w_row[live])
        coef = w_row[live] * scale
        bias = float(bias) * scale
        if enough is not None:
            enough = enough * scale
        sign = -1.0 if maximize else 1.0
        stale = np.setdiff1d(self._cost_cols, cols)
        if stale.size:
            self.highs.changeColsCost(stale.size, stale, np.zeros(stale.size))
        self.highs.changeColsCost(cols.size, cols, sign * coef)
        self._cost_cols = cols
        # HiGHS measures its time limit against the run time of all solves of this model
        # so far, not of this one: the limit is that plus ours
        limit = self.highs.getRunTime() + max(float(time_limit), 1e-3)
        self.highs.setOptionValue("time_limit", limit)
        stop = INF
        if enough is not None:  # HiGHS minimises sign * coef . z = value -+ bias
            stop = bias - enough if maximize else enough - bias
            stop += STOP_MARGIN * (1.0 + abs(stop))
        self.highs.setOptionValue("objective_bound", stop)
        if self._scaled_rows is None:
            self._scaled_rows = self.row_lo.size
        self.highs.run()
        if self.highs.getModelStatus() not in SOLVED:
            return None, None
        sol = self.highs.getSolution()
        cost = np.zeros(self.n_cols)
        cost[cols] = sign * coef
        low = self.safe_min(cost, np.asarray(sol.row_dual, dtype=np.float64))
        if not np.isfinite(low):
            return None, None
        x = np.asarray(sol.col_value, dtype=np.float64)[self.inputs]
        # max = -min(-c.z) + b, min = min(c.z) + b, then the outward pad, all in scaled
        # units; dividing by a power of two is exact
        value = (-low if maximize else low) + bias
        value += (1 if maximize else -1) * (2 * EPS64 * (abs(low) + abs(bias)) + 1e-300)
        pad = REL_PAD * (1.0 + abs(value))
        return (value + pad if maximize else value - pad) / scale, x

    def proves_empty(self) -> bool:
        """Whether the last solve's dual ray is a Farkas certificate that the model has no
        point: the safe bound below, for cost 0, is above 0 for the ray or its negation
        (any y gives a valid bound, so trying both is sound). HiGHS' infeasible status
        alone proves nothing."""
        if self.highs.getModelStatus() != highspy.HighsModelStatus.kInfeasible:
            return False
        _, has_ray, ray = self.highs.getDualRay()
        ray = np.asarray(ray, dtype=np.float64)
        if not has_ray or not np.isfinite(ray).all() or not ray.any():
            return False
        ray = ray / np.abs(ray).max()
        zero = np.zeros(self.n_cols)
        return any(self.safe_min(zero, s * ray) > 0 for s in (1.0, -1.0))

    def safe_min(self, cost: np.ndarray, y: np.ndarray) -> float:
        """A rigorous lower bound on min cost.z over the model from the duals y."""
        a = self.matrix()
        m, n = a.shape
        y = np.where(np.isfinite(y), y, 0.0)
        y = np.where((y > 0) & ~np.isfinite(self.row_lo), 0.0, y)
        y = np.where((y < 0) & ~np.isfinite(self.row_hi), 0.0, y)
        side = np.where(y > 0, self.row_lo, np.where(y < 0, self.row_hi, 0.0))
        side = np.where(np.isfinite(side), side, 0.0)
        row_terms = y * side
        r = cost - a.T @ y
        col_terms = np.minimum(r * self.col_lo, r * self.col_hi)
        value = row_terms.sum() + col_terms.sum()
        z_mag = np.maximum(np.abs(self.col_lo), np.abs(self.col_hi))
        mass = (
            (np.abs(cost) + abs(a).T @ np.abs(y)) @ z_mag
            + np.abs(row_terms).sum()
            + np.abs(col_terms).sum()
        )
        return float(value - 2 * (m + n + 4) * EPS64 * mass - 1e-300)


def cost_scale(coef: np.ndarray) -> float:
    """The power of two that brings the largest |coefficient| of an objective near 1.

    HiGHS scales rows and columns but not the objective, and its dual feasibility
    tolerance (1e-7) is absolute: on a layer-2 neuron of an L1-regularised 2x800 network
    (weights up to 2.3e-5) the unscaled triangle LP took 30596 simplex iterations against
    4515 scaled. A power of two keeps the scaling exact."""
    big = float(np.abs(coef).max()) if coef.size else 0.0
    if not np.isfinite(big) or big == 0.0:
        return 1.0
    return float(2.0 ** np.clip(-np.round(np.log2(big)), -60, 60))


def _widen(block: sp.csr_matrix, n: int) -> sp.csr_matrix:
    return sp.csr_matrix((block.data, block.indices, block.indptr), shape=(block.shape[0], n))


def upper_line(lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slope and shift of a line above relu on [L, U] (L < 0 < U), valid for the
    stored slope: the shift is the smallest valid at both ends, inflated by 8 eps
    for the rounding of that formula (as in bounds._relaxation)."""
    slope = upper / (upper - lower)
    shift = np.maximum(-slope * lower, upper * (1 - slope)) * (1 + 8 * EPS64)
    return slope, shift


def narrow(lower: np.ndarray, upper: np.ndarray, j: int, value: float, maximize: bool) -> bool:
    """Take a sound LP bound of neuron j (its max when ``maximize``, else its min) where it
    is tighter than the one held; says whether it was."""
    if maximize and value < upper[j]:
        upper[j] = value
        return True
    if not maximize and value > lower[j]:
        lower[j] = value
        return True
    return False


def repropagate(net, box, bounds: LayerBounds, layer: int, method: str, device=None) -> LayerBounds:
    """Bounds of the layers after ``layer`` recomputed from the (tighter) bounds of the
    layers up to it: interval arithmetic when ``method`` is interval, else CROWN;
    intersected with ``bounds``, so never looser."""
    if layer + 1 >= net.n_hidden:
        return bounds
    dev = pick_device(device)
    with torch.no_grad():
        if method == "interval":
            lower, upper = list(bounds.lower), list(bounds.upper)
            lo = torch.from_numpy(bounds.lower[layer]).to(dev).clamp_min(0.0)
            hi = torch.from_numpy(bounds.upper[layer]).to(dev).clamp_min(0.0)
            for k, (w, b) in enumerate(net.tensors(dev)[layer + 1 : -1], start=layer + 1):
                mid, rad = (hi + lo) / 2, (hi - lo) / 2
                w_abs = w.abs()
                center, spread = mid @ w.T + b, rad @ w_abs.T
                margin = rounding_margin(w_abs, mid.abs() + rad, b)
                g_lo, g_hi = center - spread - margin, center + spread + margin
                lower[k], upper[k] = g_lo.cpu().numpy(), g_hi.cpu().numpy()
                # intersect before going on: the next layer starts from the tightest
                lower[k] = np.maximum(lower[k], bounds.lower[k])
                upper[k] = np.minimum(upper[k], bounds.upper[k])
                lo = torch.from_numpy(lower[k]).to(dev).clamp_min(0.0)
                hi = torch.from_numpy(upper[k]).to(dev).clamp_min(0.0)
            return LayerBounds(lower, upper)
        state = _BackSubstitution(net, box, dev, bounds)
        for k in range(layer + 1, net.n_hidden):
            relax = state.relaxations(k)
            rows = state.target_rows(k).split(ROW_CHUNK)
            state.tighten(k, torch.cat([state.upper_rows(c, relax) for c in rows]))
        return bounds.intersect(state.result())


def lp_tighten(
    evidence: NeuronEvidence,
    bounds: LayerBounds,
    method: str = "crown",
    deadline: float = float("inf"),
    device=None,
    progress: Progress | None = None,
) -> tuple[LayerBounds, dict]:
    """Tighten the open neurons' bounds by LP, proving those whose bound excludes a side.

    Returns the new bounds (never looser than ``bounds``) and counts of what was done.
    Layer 1's bounds are already exact up to rounding, so its neurons are not solved.
    """
    say = progress or (lambda _msg: None)
    net, box = evidence.net, evidence.box
    lower = [v.copy() for v in bounds.lower]
    upper = [v.copy() for v in bounds.upper]
    stats = {"solves": 0, "proved": 0, "refuted": 0, "tightened": 0}
    has_open = [
        evidence.open_inactive(k).size + evidence.open_active(k).size > 0
        for k in range(net.n_hidden)
    ]
    last = max((k for k, o in enumerate(has_open) if o), default=0)
    if last == 0:
        return LayerBounds(lower, upper), stats
    lp = RelaxationLP(box.lo, box.hi)
    fixed = evidence.fixed_states()
    lp.add_layer(net.weights[0], net.biases[0], lower[0], upper[0], fixed[0])
    for layer in range(1, last + 1):
        w, b = net.weights[layer], net.biases[layer]
        changed = False
        jobs = [(int(j), True) for j in evidence.open_inactive(layer)]
        jobs += [(int(j), False) for j in evidence.open_active(layer)]
        for j, maximize in sorted(jobs):
            if time.monotonic() >= deadline:
                say("  lp: time limit, the MILP gets the bounds found so far")
                return LayerBounds(lower, upper), stats
            seen = evidence.seen_pos if maximize else evidence.seen_neg
            if seen[layer][j] or evidence.settled(layer)[j]:
                continue
            value, x = lp.extreme(w[j], float(b[j]), maximize, deadline - time.monotonic())
            stats["solves"] += 1
            if value is None:
                continue
            stats["refuted"] += evidence.observe(x, STAGE)
            if narrow(lower[layer], upper[layer], j, value, maximize):
                stats["tightened"] += 1
                changed = True
            if maximize and value < 0:
                evidence.prove(layer, [j], active=False, stage=STAGE)
                stats["proved"] += 1
            elif not maximize and value > 0:
                evidence.prove(layer, [j], active=True, stage=STAGE)
                stats["proved"] += 1
        if changed:
            new = repropagate(net, box, LayerBounds(lower, upper), layer, method, device)
            lower, upper = new.lower, new.upper
            for k in range(layer + 1, net.n_hidden):
                before = int(evidence.settled(k).sum())
                evidence.prove(k, np.flatnonzero(upper[k] <= 0), active=False, stage=STAGE)
                pa = (lower[k] >= 0) & ~(upper[k] <= 0)
                evidence.prove(k, np.flatnonzero(pa), active=True, stage=STAGE)
                stats["proved"] += int(evidence.settled(k).sum()) - before
        if layer < last:
            fixed = evidence.fixed_states()
            lp.add_layer(w, b, lower[layer], upper[layer], fixed[layer])
    say(
        f"  lp: {stats['solves']} solves, {stats['proved']} proved, "
        f"{stats['refuted']} refuted, {stats['tightened']} bounds tightened"
    )
    return LayerBounds(lower, upper), stats


#: LP tightening skips neurons whose influence on the candidates is below this share of
#: the most influential one of their layer
INFLUENCE_FLOOR = 1e-3


def candidate_influence(
    evidence: NeuronEvidence, bounds: LayerBounds, deepest: int, device=None
) -> list[np.ndarray]:
    """Per layer, how much each neuron's relaxation loosens the candidates' CROWN bounds:
    the sum over candidates of |coefficient on h| times the triangle's height. Tightening
    a neuron with no influence cannot help the exact stage."""
    from .bab import CandidateProver, kept_coefficients

    net = evidence.net
    out = [np.zeros(n) for n in net.hidden_widths]
    fixed = evidence.fixed_states()
    dev = pick_device(device)
    cands = [(k, int(j), "pos") for k in range(deepest + 1) for j in evidence.open_inactive(k)]
    cands += [(k, int(j), "neg") for k in range(deepest + 1) for j in evidence.open_active(k)]
    with torch.no_grad():
        for layer, j, side in cands:
            if layer == 0:
                continue
            prover = CandidateProver(
                net, evidence.box, bounds, fixed, layer, j, 1.0 if side == "pos" else -1.0, dev
            )
            for k, lam in enumerate(kept_coefficients(prover, prover.root())):
                lo, up = bounds.lower[k], bounds.upper[k]
                height = np.where((lo < 0) & (up > 0), up * -lo / np.maximum(up - lo, 1e-300), 0)
                out[k] += np.abs(lam[0].cpu().numpy()) * height
    return out


def tighten_for_exact(
    evidence: NeuronEvidence,
    bounds: LayerBounds,
    deepest: int,
    deadline: float = float("inf"),
    device=None,
    progress: Progress | None = None,
) -> tuple[LayerBounds, dict]:
    """Tight bounds for the exact stage: alpha-CROWN, then one LP per side of every
    unstable neuron of layers 2..deepest (the neurons that get a binary or a split in
    the exact stage), layer by layer so that each layer's tighter bounds tighten the
    next one's relaxation; widest relaxations first, until ``deadline``.

    Layer 1 is exact under interval arithmetic already. Returns bounds never looser
    than ``bounds`` and counts of what was done; decides nothing by itself (the
    caller reads stable neurons off the new bounds).
    """
    say = progress or (lambda _msg: None)
    net, box = evidence.net, evidence.box
    stats = {"lp_solves": 0, "tightened": 0, "alpha_crown": False}
    if deepest < 1:
        return bounds, stats
    head = ReLUNetwork(net.weights[: deepest + 2], net.biases[: deepest + 2])
    if time.monotonic() < deadline:
        # below the deepest layer every unstable neuron feeds a candidate; in it, only
        # the candidates themselves matter
        fixed = evidence.fixed_states()
        only = [
            np.flatnonzero((bounds.lower[k] < 0) & (bounds.upper[k] > 0) & (fixed[k] == 0))
            for k in range(deepest)
        ]
        only.append(np.union1d(evidence.open_inactive(deepest), evidence.open_active(deepest)))
        tight = alpha_crown_bounds(head, box, device=device, only=only)
        lower = [
            np.maximum(a, b)
            for a, b in zip(bounds.lower, tight.lower + bounds.lower[deepest + 1 :])
        ]
        upper = [
            np.minimum(a, b)
            for a, b in zip(bounds.upper, tight.upper + bounds.upper[deepest + 1 :])
        ]
        stats["alpha_crown"] = True
    else:
        lower, upper = [v.copy() for v in bounds.lower], [v.copy() for v in bounds.upper]
    fixed = evidence.fixed_states()
    influence = candidate_influence(evidence, LayerBounds(lower, upper), deepest, device)
    lp = RelaxationLP(box.lo, box.hi)
    lp.add_layer(net.weights[0], net.biases[0], lower[0], upper[0], fixed[0])
    for layer in range(1, deepest):
        w, b = net.weights[layer], net.biases[layer]
        lo, up = lower[layer], upper[layer]
        open_ = np.flatnonzero((lo < 0) & (up > 0) & (fixed[layer] == 0))
        score = influence[layer][open_]
        order = open_[np.argsort(-score)]
        order = order[np.sort(-score)[: order.size] <= -INFLUENCE_FLOOR * score.max(initial=0)]
        changed = False
        for j in order:
            for maximize in (True, False):
                if time.monotonic() >= deadline:
                    break
                value, x = lp.extreme(w[j], float(b[j]), maximize, deadline - time.monotonic())
                stats["lp_solves"] += 1
                if value is None:
                    continue
                evidence.observe(x, "tighten")
                if narrow(lower[layer], upper[layer], j, value, maximize):
                    stats["tightened"] += 1
                    changed = True
        if changed:
            new = repropagate(net, box, LayerBounds(lower, upper), layer, "crown", device)
            lower, upper = new.lower, new.upper
        lp.add_layer(w, b, lower[layer], upper[layer], fixed[layer])
        if time.monotonic() >= deadline:
            say("  tighten: time share used up, the exact stage gets the bounds found so far")
            break
    say(
        f"  tighten: alpha-CROWN{'' if stats['alpha_crown'] else ' skipped'}, "
        f"{stats['lp_solves']} LP solves, {stats['tightened']} bounds tightened"
    )
    return LayerBounds(lower, upper), stats


def leaf_bound(
    net: ReLUNetwork, box, layer: int, neuron: int, sign: float, leaf: dict, cut_rounds: int = 5
) -> float:
    """Safe LP upper bound of sign * g (layer, neuron) over one closed subdomain of the
    branch and bound (``bab.prove_candidate(leaves=...)``): its splits as constraints,
    its intermediate bounds for the triangles, and ``cut_rounds`` rounds of ideal cuts
    separated for this leaf alone (the prover's LPs close subdomains with cuts). An
    independent re-check of a BaB proof, by HiGHS with the safe dual bound above
    instead of back-substitution; -inf when a checked certificate shows the subdomain
    empty, +inf when HiGHS reports nothing else useful."""
    from .ideal_cuts import IdealCuts

    lp = RelaxationLP(box.lo, box.hi)
    for k in range(layer):
        split = np.asarray(leaf["split"][k], dtype=np.int8)
        lp.add_layer(
            net.weights[k], net.biases[k], leaf["lower"][k], leaf["upper"][k], split, constrain=True
        )
    w, b = sign * net.weights[layer][neuron], sign * float(net.biases[layer][neuron])
    cuts = IdealCuts(lp, net.weights, net.biases)
    value = cuts.rounds(lambda limit: lp.extreme(w, b, True, limit)[0], cut_rounds, 60.0)
    if value is not None:
        return value
    # an empty subdomain (contradicting splits) closes by a checked Farkas certificate
    return -float("inf") if lp.proves_empty() else float("inf")
