"""Linear programs for branch-and-bound subdomains: the bound beta-CROWN approaches.

A subdomain's back-substitution bound (bab.py) is the Lagrangian dual of one linear
program, the triangle relaxation of the layers before the candidate with the
subdomain's splits, at the alpha and beta found by a few projected gradient steps.
Deep in the tree of a deep network those steps stop far from the optimum: measured on
a 4x100 network's layer-4 candidate after 30 s of branch and bound, open subdomains
bounded at 2e-3 to 3e-3 whose linear programs are at -9e-4 to 1e-3 (300 steps still
leave 3e-4 to 1e-3). The linear program itself closes them, and with ideal cuts
(``ideal_cuts.py``, separated at the root) far more of them.

One HiGHS model per candidate holds the root's relaxation (``tighten.RelaxationLP``),
with cuts an indicator column per triangle neuron; a subdomain only changes the bounds
of its split neurons' columns and rows (an active split makes h - g >= 0 an equality,
g >= 0 and z = 1, an inactive one h = 0, g <= 0 and z = 0), so each solve warm-starts
from the last basis or its parent's. The bound is HiGHS' duals turned into a
rigorous bound (``RelaxationLP.safe_min``), so a subdomain it closes is closed in sound
arithmetic, like one closed by back-substitution; HiGHS' word alone closes nothing.
"""

from __future__ import annotations

import copy

import highspy
import numpy as np

from .domain import Box
from .ideal_cuts import IdealCuts
from .network import ReLUNetwork
from .tighten import INF, RelaxationLP

#: HiGHS' simplex_dual_edge_weight_strategy for subdomain LPs: Devex. Dual steepest
#: edge (HiGHS' choice) pays for its weights over long solves, while a subdomain's LP
#: is a short re-solve, mostly from a basis it did not build. 5x100's layer-5 n56 alone,
#: two searches side by side: proved in 169 s with Devex (3752 LPs, 38 ms each), open
#: at 170 s with steepest edge (1962 LPs, 79 ms each, bound 1.9e-3)
PRICING = 1


#: HiGHS' basis statuses by their codes (``.value``)
_STATUSES = {s.value: s for s in highspy.HighsBasisStatus.__members__.values()}


class PortableBasis:
    """A HiGHS basis as two arrays of status codes: ``HighsBasis`` does not pickle, and
    a subdomain's basis goes with it when its frontier is shipped to another worker (a
    part's LPs then start from their parents' bases, not cold)."""

    def __init__(self, basis: highspy.HighsBasis) -> None:
        self.cols = np.array([s.value for s in basis.col_status], np.int8)
        self.rows = np.array([s.value for s in basis.row_status], np.int8)

    def to_highs(self) -> highspy.HighsBasis:
        basis = highspy.HighsBasis()
        basis.col_status = [_STATUSES[c] for c in self.cols.tolist()]
        basis.row_status = [_STATUSES[r] for r in self.rows.tolist()]
        basis.valid = True
        return basis


def portable(bases: list) -> list[PortableBasis | None]:
    """These bases (HighsBasis, PortableBasis or None) in a form that pickles, each
    distinct one converted once (siblings share their parent's: a few ms each on a
    5x100 candidate's LP)."""
    done: dict[int, PortableBasis] = {}
    out = []
    for basis in bases:
        if isinstance(basis, highspy.HighsBasis):
            if id(basis) not in done:
                done[id(basis)] = PortableBasis(basis)
            basis = done[id(basis)]
        out.append(basis)
    return out


class SubdomainLP:
    """The LP bound of sign * g (layer, neuron) over one subdomain at a time.

    ``lower``/``upper`` are the root's intermediate bounds of layers < ``layer``, with
    every proved state already folded in (``bab.CandidateProver`` keeps them so);
    subdomains differ from the root only by their splits."""

    def __init__(
        self,
        net: ReLUNetwork,
        box: Box,
        layer: int,
        neuron: int,
        sign: float,
        lower: list[np.ndarray],
        upper: list[np.ndarray],
        cuts: bool = False,
    ) -> None:
        self.lp = RelaxationLP(box.lo, box.hi)
        self.lp.set_option("simplex_dual_edge_weight_strategy", PRICING)
        for k in range(layer):
            free = np.zeros(len(lower[k]), dtype=np.int8)
            self.lp.add_layer(net.weights[k], net.biases[k], lower[k], upper[k], free)
        self.lower, self.upper = lower, upper
        #: with ``cuts``: indicator columns, then the ideal cuts ``strengthen`` separates
        self.cuts = IdealCuts(self.lp, net.weights, net.biases) if cuts else None
        self.w_row = sign * net.weights[layer][neuron]
        self.bias = sign * float(net.biases[layer][neuron])

    def clone(self) -> SubdomainLP:
        """A copy with its own HiGHS model (``RelaxationLP.clone``), cuts included, for a
        second thread: subdomains bounded by either give the same bounds. Cuts
        ``strengthen`` adds later go to one copy only."""
        twin = copy.copy(self)
        twin.lp = self.lp.clone()
        if self.cuts is not None:
            twin.cuts = copy.copy(self.cuts)
            twin.cuts.lp = twin.lp
        return twin

    def bound(
        self,
        split: list[np.ndarray],
        time_limit: float,
        basis: highspy.HighsBasis | PortableBasis | None = None,
        enough: float | None = 0.0,
    ) -> tuple[float | None, np.ndarray | None]:
        """Sound upper bound of sign * g over the subdomain with these splits (+1 active,
        -1 inactive, 0 free, per neuron of each layer), and the LP's input point; -inf
        for a subdomain that a checked Farkas certificate shows empty (contradicting
        splits, which back-substitution cannot see: the six highest open subdomains of
        a 4x100 candidate's tree after 60 s were all empty); (None, None)
        when HiGHS reports nothing else useful. A bound <= ``enough`` (0: the
        subdomain closes) need not be the LP's optimum: HiGHS stops once its duals
        show one (``enough=None`` for the optimum). ``basis`` (``last_basis`` of the parent
        subdomain) is where the simplex starts, else from the last solve's; any basis
        gives the same bound, only sooner or later."""
        lp = self.lp
        if isinstance(basis, PortableBasis):
            basis = basis.to_highs()
        if basis is not None:
            lp.highs.setBasis(basis)
        for k, (uns, g_cols, h_cols, ge_rows) in enumerate(lp.triangles):
            if not uns.size:
                continue
            s = split[k][uns]
            lo, up = self.lower[k][uns], self.upper[k][uns]
            g_lo = np.where(s > 0, 0.0, lo)
            g_hi = np.where(s < 0, 0.0, up)
            h_hi = np.where(s < 0, 0.0, up)
            ge_hi = np.where(s > 0, 0.0, INF)
            cols = np.concatenate([g_cols, h_cols]).astype(np.int32)
            col_lo = np.concatenate([g_lo, np.zeros(uns.size)])
            col_hi = np.concatenate([g_hi, h_hi])
            lp.highs.changeColsBounds(cols.size, cols, col_lo, col_hi)
            lp.col_lo[cols], lp.col_hi[cols] = col_lo, col_hi
            rows = ge_rows.astype(np.int32)
            lp.highs.changeRowsBounds(rows.size, rows, np.zeros(uns.size), ge_hi)
            lp.row_hi[rows] = ge_hi
            if self.cuts is not None:  # the indicator is the split's state
                z = self.cuts.z_cols[k].astype(np.int32)
                z_lo, z_hi = (s > 0).astype(np.float64), (s >= 0).astype(np.float64)
                lp.highs.changeColsBounds(z.size, z, z_lo, z_hi)
                lp.col_lo[z], lp.col_hi[z] = z_lo, z_hi
        value, x = lp.extreme(self.w_row, self.bias, True, time_limit, enough)
        if value is None and lp.proves_empty():
            return -float("inf"), None
        return value, x

    def strengthen(self, split: list[np.ndarray], rounds: int, time_limit: float) -> float | None:
        """Bound the subdomain, add the ideal cuts its optimum violates, bound again, up to
        ``rounds`` times (``IdealCuts.rounds``); returns the last bound. The cuts stay:
        they hold in every subdomain."""
        if self.cuts is None:
            raise ValueError("strengthen needs a SubdomainLP built with cuts=True")
        return self.cuts.rounds(lambda limit: self.bound(split, limit)[0], rounds, time_limit)

    def n_cuts(self) -> int:
        """How many ideal cuts the model holds (big-M rows not counted)."""
        return 0 if self.cuts is None else self.cuts.n_cuts

    def last_basis(self) -> object | None:
        """The basis of the last solve, when it ended optimal (for its children)."""
        if self.lp.highs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return None
        return self.lp.highs.getBasis()

    def branching_hint(self) -> int:
        """The split that removes the last optimum of an open subdomain for the highest
        estimated gain: over the free triangle neurons, the duals of the rows above h
        (upper line; with cuts also big-M rows and cuts) times
        how far h sits above relu(g) (either split cuts that off); an index into the
        concatenated layers, -1 when no triangle is loose."""
        highs = self.lp.highs
        if highs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return -1
        sol = highs.getSolution()
        z = np.asarray(sol.col_value, dtype=np.float64)
        y = np.asarray(sol.row_dual, dtype=np.float64)
        extra = self.cuts.upper_duals(y) if self.cuts is not None else None
        best, pick, offset = 0.0, -1, 0
        for k, (uns, g_cols, h_cols, ge_rows) in enumerate(self.lp.triangles):
            if uns.size:
                gap = z[h_cols] - np.maximum(z[g_cols], 0.0)
                lean = np.abs(y[ge_rows + uns.size])
                if extra is not None:
                    lean = lean + extra[k]
                score = lean * gap
                i = int(np.argmax(score))
                if score[i] > best:
                    best, pick = float(score[i]), offset + int(uns[i])
            offset += self.lower[k].size
        return pick
