"""Exact compression of a ReLU network from the stability state of its hidden neurons.

The transforms (Serra et al., CPAIOR 2020 and NeurIPS 2021) keep the function on the
domain D unchanged, given that the states are true on D:

- a stably inactive neuron always outputs 0: drop it;
- stably active neurons are linear on D, so those whose weight rows depend linearly
  on other active rows are folded into the next layer;
- a layer left with only active neurons is affine on D and is merged into the next
  layer when that does not add parameters (an empty layer always is);
- finally, a neuron whose outgoing weights are all exactly zero is dropped, which is
  what makes a network behind an all-inactive layer collapse to a constant.

Unstable and undecided neurons are never touched, so an incomplete report still
gives a correct (if larger) network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.linalg

from .errors import ExactCompressError
from .network import ReLUNetwork
from .report import ACTIVE, INACTIVE, STATES


@dataclass
class LayerSummary:
    """What happened to one hidden layer of the original network (numbered from 1)."""

    layer: int
    before: int
    inactive_removed: int
    active_folded: int
    dead_removed: int
    after: int
    merged: bool
    fold_residual: float

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class CompressionSummary:
    """Per-layer and overall effect of `compress`.

    ``fold_residual`` is the largest norm of (dependent active row - its combination
    of basis rows): the only approximation the transforms make, bounded by the rank
    tolerance.
    """

    layers: list[LayerSummary]
    parameters_before: int
    parameters_after: int
    hidden_widths_before: list[int]
    hidden_widths_after: list[int]

    @property
    def merged_layers(self) -> list[int]:
        """Original hidden layers (from 1) that were merged into the layer after them."""
        return [s.layer for s in self.layers if s.merged]

    def to_json(self) -> dict:
        return {
            "parameters_before": self.parameters_before,
            "parameters_after": self.parameters_after,
            "hidden_widths_before": list(self.hidden_widths_before),
            "hidden_widths_after": list(self.hidden_widths_after),
            "merged_layers": self.merged_layers,
            "layers": [s.to_json() for s in self.layers],
        }

    def to_markdown(self) -> str:
        rows = [
            "| layer | before | inactive removed | active folded | dead removed | after | merged |",
            "|---:|---:|---:|---:|---:|---:|:---:|",
        ]
        for s in self.layers:
            rows.append(
                f"| {s.layer} | {s.before} | {s.inactive_removed} | {s.active_folded} "
                f"| {s.dead_removed} | {s.after} | {'yes' if s.merged else ''} |"
            )
        share = self.parameters_after / max(1, self.parameters_before)
        rows.append("")
        rows.append(
            f"Parameters: {self.parameters_before} -> {self.parameters_after} "
            f"({100 * share:.1f}% kept); hidden widths {self.hidden_widths_before} -> "
            f"{self.hidden_widths_after}."
        )
        return "\n".join(rows)


def compress(
    net: ReLUNetwork, states: list[np.ndarray], rank_rtol: float = 1e-9
) -> tuple[ReLUNetwork, CompressionSummary]:
    """Smaller network computing the same function as ``net`` on the domain of ``states``.

    ``states[l][j]`` is the state name (report.STATES) of neuron j of hidden layer l.
    ``rank_rtol``: an active row counts as linearly dependent on the others when the
    pivoted-QR diagonal falls below ``rank_rtol`` times the largest one.
    """
    states = _checked_states(net, states)
    ws = [w.copy() for w in net.weights]
    bs = [b.copy() for b in net.biases]
    origin: list[int] = []  # original hidden layer of each hidden layer kept in ws
    summaries = []
    for layer, s in enumerate(states):
        i = len(origin)  # position of this layer in ws: the kept layers come first
        n_inactive, n_folded, residual, affine = _reduce_layer(ws, bs, i, s, rank_rtol)
        merged = affine and _merge_pays(ws[i], ws[i + 1])
        if merged:
            _merge_into_next(ws, bs, i)
        else:
            origin.append(layer)
        summaries.append(
            LayerSummary(layer + 1, s.size, n_inactive, n_folded, 0, 0, merged, residual)
        )
    _drop_dead_neurons(ws, bs, origin, summaries)
    out = ReLUNetwork(ws, bs)
    for pos, layer in enumerate(origin):
        summaries[layer].after = out.hidden_widths[pos]
    summary = CompressionSummary(
        layers=summaries,
        parameters_before=net.n_parameters,
        parameters_after=out.n_parameters,
        hidden_widths_before=net.hidden_widths,
        hidden_widths_after=out.hidden_widths,
    )
    return out, summary


def _checked_states(net: ReLUNetwork, states: list[np.ndarray]) -> list[np.ndarray]:
    """States as object arrays, after checking they match the network and name real states."""
    if len(states) != net.n_hidden:
        raise ExactCompressError(
            f"stability states cover {len(states)} hidden layers, the network has {net.n_hidden}"
        )
    out = []
    for layer, (s, n) in enumerate(zip(states, net.hidden_widths, strict=True)):
        s = np.asarray(s, dtype=object).reshape(-1)
        if s.size != n:
            raise ExactCompressError(
                f"stability states of layer {layer + 1} cover {s.size} neurons, it has {n}"
            )
        bad = [v for v in s if v not in STATES]
        if bad:
            raise ExactCompressError(
                f"layer {layer + 1}: unknown neuron state {bad[0]!r} (expected one of {STATES})"
            )
        out.append(s)
    return out


def _reduce_layer(
    ws: list[np.ndarray], bs: list[np.ndarray], i: int, s: np.ndarray, rank_rtol: float
) -> tuple[int, int, float, bool]:
    """Drop the inactive neurons of layer i and fold its dependent active ones into i+1.

    Returns (inactive removed, active folded, fold residual, layer is now affine on D).
    """
    inactive = s == INACTIVE
    _drop_neurons(ws, bs, i, inactive)
    s = s[~inactive]
    active = np.flatnonzero(s == ACTIVE)
    basis, dependent, coef, residual = _active_basis(ws[i][active], rank_rtol)
    basis, dependent = active[basis], active[dependent]
    _fold(ws, bs, i, basis, dependent, coef)
    folded = np.zeros(s.size, dtype=bool)
    folded[dependent] = True
    _drop_neurons(ws, bs, i, folded)
    affine = bool((s[~folded] == ACTIVE).all())
    return int(inactive.sum()), int(dependent.size), residual, affine


def _active_basis(
    rows: np.ndarray, rank_rtol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Split rows into a basis and dependents with rows[dep] ~= coef @ rows[basis].

    Returns (basis indices, dependent indices, coef of shape (n_dep, rank), largest
    residual norm). Pivoted QR of rows.T picks well-conditioned basis rows first.
    """
    n = rows.shape[0]
    if n == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros((0, 0)), 0.0
    _, r, perm = scipy.linalg.qr(rows.T, mode="economic", pivoting=True)
    diag = np.abs(np.diag(r))
    rank = int((diag > rank_rtol * diag[0]).sum())
    basis, dependent = np.sort(perm[:rank]), np.sort(perm[rank:])
    if dependent.size == 0:
        return basis, dependent, np.zeros((0, rank)), 0.0
    if rank == 0:
        residual = float(np.linalg.norm(rows[dependent], axis=1).max())
        return basis, dependent, np.zeros((dependent.size, 0)), residual
    coef_t = scipy.linalg.lstsq(rows[basis].T, rows[dependent].T)[0]
    misfit = rows[basis].T @ coef_t - rows[dependent].T
    return basis, dependent, coef_t.T, float(np.linalg.norm(misfit, axis=0).max())


def _fold(
    ws: list[np.ndarray],
    bs: list[np.ndarray],
    i: int,
    basis: np.ndarray,
    dependent: np.ndarray,
    coef: np.ndarray,
) -> None:
    """Rewrite layer i+1 so that it no longer reads the dependent active neurons of layer i.

    On D every active neuron equals its pre-activation, so for a dependent j
    h_j = sum_k coef_jk (h_k - b_k) + b_j with k over basis neurons (all active).
    """
    if dependent.size == 0:
        return
    out_dep = ws[i + 1][:, dependent]
    bs[i + 1] += out_dep @ (bs[i][dependent] - coef @ bs[i][basis])
    ws[i + 1][:, basis] += out_dep @ coef


def _drop_neurons(ws: list[np.ndarray], bs: list[np.ndarray], i: int, mask: np.ndarray) -> None:
    """Delete the masked neurons of hidden layer i (rows of W_i, b_i; columns of W_{i+1})."""
    if not mask.any():
        return
    keep = ~mask
    ws[i] = ws[i][keep]
    bs[i] = bs[i][keep]
    ws[i + 1] = np.ascontiguousarray(ws[i + 1][:, keep])


def _merge_pays(w: np.ndarray, w_next: np.ndarray) -> bool:
    """Merging an affine layer (weights w) into the next does not add parameters.

    An empty layer is always merged: it carries nothing but forces a zero-width layer.
    """
    before = w.size + w.shape[0] + w_next.size
    after = w_next.shape[0] * w.shape[1]
    return w.shape[0] == 0 or after <= before


def _merge_into_next(ws: list[np.ndarray], bs: list[np.ndarray], i: int) -> None:
    """Replace layers i and i+1 by their composition (layer i must be affine on D)."""
    bs[i + 1] = ws[i + 1] @ bs[i] + bs[i + 1]
    ws[i + 1] = ws[i + 1] @ ws[i]
    del ws[i], bs[i]


def _drop_dead_neurons(
    ws: list[np.ndarray], bs: list[np.ndarray], origin: list[int], summaries: list[LayerSummary]
) -> None:
    """Last to first, drop neurons no later layer reads (zero outgoing column).

    A layer emptied this way is merged, which zeroes the columns of the layer before.
    """
    for i in range(len(origin) - 1, -1, -1):
        dead = ~(ws[i + 1] != 0).any(axis=0)
        _drop_neurons(ws, bs, i, dead)
        summary = summaries[origin[i]]
        summary.dead_removed = int(dead.sum())
        if ws[i].shape[0] == 0:
            _merge_into_next(ws, bs, i)
            summary.merged = True
            del origin[i]
