"""Stronger ReLU encodings than big-M: the ideal extended formulation (``--relu
extended``) and its partition-based relaxations (``--relu psplit2``, ``psplit4``).

Big-M's LP relaxation of h = max(0, g), g = w.v + b, lets h float far above g when
the inputs v are spread over their box, and that slack, not the constants, is what
stops a solver on wide layers whose bounds are already exact. The disjunctive
formulation splits each group of input terms w_S.v_S into its share s on the active
branch and the rest on the inactive one, each in the group's interval scaled by the
binary. With one group per input it is the ideal extended formulation, whose LP
relaxation is the convex hull of the neuron over its input box (Anderson, Huchette,
Ma, Tjandraatmadja, Vielma, Math. Programming 2020); with P groups it is the P-split
formulation (Tsay, Kronqvist, Thebelt, Misener, NeurIPS 2021), between big-M (P = 1)
and the hull at P extra variables per neuron instead of one per input. With a binary,
every P is exact: the MILP's optimum is the network's.
"""

from __future__ import annotations

import numpy as np
import pyomo.environ as pyo
from pyomo.repn import generate_standard_repn

from formulations import FormulationError, Key, register_relu

#: relative widening of each group's interval: a product or sum rounded inward must
#: not cut off a point of the box
ROUNDING = 1e-12


class Partitioned:
    """h = sum_p s_p + b a >= 0 (active branch), sum_p (t_p - s_p) + b (1 - a) <= 0
    (inactive branch), where t_p = w_S.v_S is group p's term, s_p in [lo_p a, hi_p a]
    and t_p - s_p in [lo_p (1 - a), hi_p (1 - a)] with [lo_p, hi_p] the interval of t_p
    over the input bounds (each s_p scaled to [-1, 1]); binary a = 1 when active. The
    proven bounds [L, U] of g also bound each branch, as mutable parameters.
    ``parts=None``: one group per input."""

    def __init__(self, parts: int | None = None) -> None:
        self.parts = parts

    def binary_value(self, active: bool) -> int:
        return int(active)

    def encode(self, block: pyo.Block, key: Key, g, lower, upper) -> tuple[pyo.Var, pyo.Var]:
        repn = generate_standard_repn(g, compute_values=True)
        if not repn.is_linear():
            raise FormulationError(f"neuron {key}: g is not linear")
        w = np.array([float(c) for c in repn.linear_coefs])
        v = list(repn.linear_vars)
        box = np.array([(x.lb, x.ub) for x in v], dtype=float).reshape(len(v), 2)
        if not np.isfinite(box).all():
            raise FormulationError(f"neuron {key}: a split ReLU needs bounded inputs")
        groups = self.groups(w)
        ends = np.sort(np.stack([w * box[:, 0], w * box[:, 1]], axis=1), axis=1)
        lo = np.array([ends[p, 0].sum() for p in groups])
        hi = np.array([ends[p, 1].sum() for p in groups])
        widen = ROUNDING * (1 + np.array([np.abs(ends[p]).sum() for p in groups]))
        lo, hi = lo - widen, hi + widen
        # each s_p in units of its group's magnitude: a solver drops coefficients under
        # about 1e-9, so lo_p, hi_p of small weights must not be coefficients themselves
        span = np.maximum(np.abs(lo), np.abs(hi))
        scale = np.where(span > 0, span, 1.0)
        lo, hi = lo / scale, hi / scale
        name = f"{key[0]}_{key[1]}"
        h = pyo.Var(bounds=(0.0, max(pyo.value(upper), 0.0)))
        a = pyo.Var(domain=pyo.Binary)
        s = pyo.Var(range(len(groups)), bounds=lambda _, p: (min(lo[p], 0), max(hi[p], 0)))
        cons = pyo.ConstraintList()
        for comp, c in (("h", h), ("a", a), ("s", s), ("split", cons)):
            block.add_component(f"{comp}_{name}", c)
        for p, members in enumerate(groups):
            term = sum(w[i] / scale[p] * v[i] for i in members)
            cons.add(s[p] >= lo[p] * a)
            cons.add(s[p] <= hi[p] * a)
            cons.add(term - s[p] >= lo[p] * (1 - a))
            cons.add(term - s[p] <= hi[p] * (1 - a))
        active = sum(scale[p] * s[p] for p in s) + float(repn.constant) * a
        inactive = g - active
        cons.add(h == active)
        cons.add(inactive <= 0)
        cons.add(active <= upper * a)
        cons.add(inactive >= lower * (1 - a))
        return h, a

    def groups(self, w: np.ndarray) -> list[np.ndarray]:
        """One group per input, or ``parts`` groups of inputs with similar weights
        (sorted, then cut into equal sizes: Tsay et al.'s equal-size strategy)."""
        if self.parts is None:
            return [np.array([i]) for i in range(len(w))]
        return [p for p in np.array_split(np.argsort(w), min(self.parts, len(w))) if len(p)]


register_relu("extended", Partitioned())
register_relu("psplit2", Partitioned(2))
register_relu("psplit4", Partitioned(4))
