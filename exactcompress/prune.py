"""Exact compression of a ReLU network from the stability state of its hidden neurons.

The transforms (Serra et al., CPAIOR 2020 and NeurIPS 2021) keep the function on the
domain D unchanged, given that the states are true on D:

- a stably inactive neuron always outputs 0: drop it;
- stably active neurons are linear on D, so those whose weight rows depend linearly
  on other active rows are folded into the next layer, but only when a sound bound
  on what the fold changes over D (interval arithmetic on the layer's input box,
  rounding included) is negligible next to the outputs it feeds: a row that the
  rank test calls dependent but is not (a tiny residual times a huge outgoing
  weight) is kept instead;
- a layer left with only active neurons is affine on D and is merged into the next
  layer when that does not add parameters (an empty layer always is);
- finally, a neuron whose outgoing weights are all exactly zero is dropped, which is
  what makes a network behind an all-inactive layer collapse to a constant.

Unstable and undecided neurons are never touched, so an incomplete report still
gives a correct (if larger) network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.linalg

from .bounds import EPS64, interval_bounds
from .domain import Box
from .errors import ExactCompressError
from .network import ReLUNetwork
from .report import ACTIVE, INACTIVE, STATES

#: a fold must change every pre-activation it feeds by at most this fraction of that
#: pre-activation's size over the domain (|W| |h| + |b|, the scale of its own rounding)
FOLD_RTOL = 1e-11


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
    fold_bound: float = 0.0
    fold_bound_rel: float = 0.0
    fold_refused: int = 0

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class CompressionSummary:
    """Per-layer and overall effect of `compress`.

    ``fold_residual`` is the largest norm of (dependent active row - its combination
    of basis rows): the only approximation the transforms make. ``fold_bound`` is a
    sound bound, over the whole domain, on how much the folds of a layer change the
    pre-activations of the next layer (``fold_bound_rel``: the same divided by their
    size), and ``fold_refused`` counts rows the rank test called dependent that were
    kept because that bound was not negligible. ``channels``: per convolution layer,
    its channel counts before and after (``conv_prune``); empty for a dense network.
    """

    layers: list[LayerSummary]
    parameters_before: int
    parameters_after: int
    hidden_widths_before: list[int]
    hidden_widths_after: list[int]
    channels: list[dict] = field(default_factory=list)

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
            **({"channels": self.channels} if self.channels else {}),
        }

    def to_markdown(self) -> str:
        rows = [
            "| layer | before | inactive removed | active folded | dead removed | after | merged "
            "| fold error bound (rel) |",
            "|---:|---:|---:|---:|---:|---:|:---:|---|",
        ]
        for s in self.layers:
            rows.append(
                f"| {s.layer} | {s.before} | {s.inactive_removed} | {s.active_folded} "
                f"| {s.dead_removed} | {s.after} | {'yes' if s.merged else ''} "
                f"| {_fold_cell(s)} |"
            )
        share = self.parameters_after / max(1, self.parameters_before)
        rows.append("")
        rows.append(
            f"Parameters: {self.parameters_before} -> {self.parameters_after} "
            f"({100 * share:.1f}% kept); hidden widths {self.hidden_widths_before} -> "
            f"{self.hidden_widths_after}."
        )
        return "\n".join(rows + _channel_rows(self.channels))


def _channel_rows(channels: list[dict]) -> list[str]:
    """The convolution layers' channel table (none for a dense network)."""
    if not channels:
        return []
    rows = [
        "",
        "| conv layer | H x W | channels before | inactive removed | dead removed | after "
        "| stably inactive neurons | positions zeroed in next Linear |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in channels:
        rows.append(
            f"| {c['layer']} | {c['shape'][0]} x {c['shape'][1]} | {c['channels_before']} "
            f"| {c['inactive_channels_removed']} | {c['dead_channels_removed']} "
            f"| {c['channels_after']} | {c['stably_inactive_neurons']} "
            f"| {c['positions_zeroed_in_next_linear']} |"
        )
    rows += ["", "Stably active convolution neurons are kept (not folded)."]
    return rows


def _fold_cell(s: LayerSummary) -> str:
    if not s.active_folded and not s.fold_refused:
        return ""
    cell = f"{s.fold_bound:.2g} ({s.fold_bound_rel:.2g})"
    return cell + (f", {s.fold_refused} kept" if s.fold_refused else "")


def compress(
    net: ReLUNetwork,
    states: list[np.ndarray],
    rank_rtol: float = 1e-9,
    box: Box | None = None,
    fold_rtol: float = FOLD_RTOL,
) -> tuple[ReLUNetwork, CompressionSummary]:
    """Smaller network computing the same function as ``net`` on the domain of ``states``.

    ``states[l][j]`` is the state name (report.STATES) of neuron j of hidden layer l,
    true on the domain ``box`` (default [0, 1]^n, the package's default domain).
    ``rank_rtol``: an active row is a candidate for folding when the pivoted-QR
    diagonal falls below ``rank_rtol`` times the largest one; it is folded only when
    the proved change of the next layer stays below ``fold_rtol`` of its size.
    """
    box = box if box is not None else Box.uniform(net.widths[0])
    box.check_dim(net.widths[0])
    if net.convs is not None:
        from .conv_prune import compress_conv

        return compress_conv(net, states, rank_rtol, box, fold_rtol)
    states = _checked_states(net, states)
    ws = [w.copy() for w in net.weights]
    bs = [b.copy() for b in net.biases]
    origin: list[int] = []  # original hidden layer of each hidden layer kept in ws
    summaries = []
    for layer, s in enumerate(states):
        i = len(origin)  # position of this layer in ws: the kept layers come first
        summary = LayerSummary(layer + 1, s.size, 0, 0, 0, 0, False, 0.0)
        affine = _reduce_layer(ws, bs, i, s, box, rank_rtol, fold_rtol, summary)
        summary.merged = affine and _merge_pays(ws[i], ws[i + 1])
        if summary.merged:
            _merge_into_next(ws, bs, i)
        else:
            origin.append(layer)
        summaries.append(summary)
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
    ws: list[np.ndarray],
    bs: list[np.ndarray],
    i: int,
    s: np.ndarray,
    box: Box,
    rank_rtol: float,
    fold_rtol: float,
    summary: LayerSummary,
) -> bool:
    """Drop the inactive neurons of layer i and fold its dependent active ones into i+1,
    filling in ``summary``; returns whether the layer is now affine on D."""
    inactive = s == INACTIVE
    _drop_neurons(ws, bs, i, inactive)
    s = s[~inactive]
    active = np.flatnonzero(s == ACTIVE)
    basis, dependent, coef, residual = _active_basis(ws[i][active], rank_rtol)
    basis, dependent = active[basis], active[dependent]
    chosen = np.zeros(0, dtype=int)
    if dependent.size:
        h_mag, out_size = _magnitudes(ws, bs, i, box)
        chosen, bound = _safe_folds(ws, bs, i, basis, dependent, coef, h_mag, out_size, fold_rtol)
        summary.fold_bound = float(bound.max(initial=0.0))
        summary.fold_bound_rel = float((bound / np.maximum(out_size, 1e-300)).max(initial=0.0))
    folded = np.zeros(s.size, dtype=bool)
    folded[dependent[chosen]] = True
    _drop_neurons(ws, bs, i, folded)
    summary.inactive_removed = int(inactive.sum())
    summary.active_folded = int(chosen.size)
    summary.fold_refused = int(dependent.size - chosen.size)
    summary.fold_residual = residual
    return bool((s[~folded] == ACTIVE).all())


def _magnitudes(
    ws: list[np.ndarray], bs: list[np.ndarray], i: int, box: Box
) -> tuple[np.ndarray, np.ndarray]:
    """(bound on |h_{i-1}| over D, size |W_{i+1}| |h_i| + |b_{i+1}| of each next
    pre-activation), by sound interval arithmetic on the network kept so far."""
    prefix = ReLUNetwork(ws[: i + 2], bs[: i + 2])
    bounds = interval_bounds(prefix, box, device="cpu")
    h_mag = [np.maximum(np.abs(box.lo), np.abs(box.hi))]
    h_mag += [np.maximum(u, 0.0) for u in bounds.upper]
    return h_mag[i], np.abs(ws[i + 1]) @ h_mag[i + 1] + np.abs(bs[i + 1])


def _safe_folds(
    ws: list[np.ndarray],
    bs: list[np.ndarray],
    i: int,
    basis: np.ndarray,
    dependent: np.ndarray,
    coef: np.ndarray,
    h_mag: np.ndarray,
    out_size: np.ndarray,
    fold_rtol: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Fold the dependent rows whose combined proved error stays within tolerance.

    Rows go in by increasing estimated error (|outgoing weight| times |residual| |h|)
    while the estimates add up to at most half the tolerance; the fold is then done
    and its error bounded soundly, dropping the last row until the bound passes.
    Returns (positions in ``dependent`` folded, error bound per next pre-activation).
    """
    rows = ws[i]
    misfit = np.abs(rows[dependent] - coef @ rows[basis]) @ h_mag  # per dependent row
    est = np.abs(ws[i + 1][:, dependent]) * misfit  # (outputs, dependent)
    limit = fold_rtol * out_size
    order = np.argsort((est / np.maximum(limit, 1e-300)[:, None]).max(axis=0), kind="stable")
    total = np.cumsum(est[:, order], axis=1)
    n = int((total <= 0.5 * limit[:, None]).all(axis=0).sum())
    w_next, b_next = ws[i + 1].copy(), bs[i + 1].copy()
    while True:
        chosen = np.sort(order[:n])
        ws[i + 1], bs[i + 1] = w_next.copy(), b_next.copy()
        _fold(ws, bs, i, basis, dependent[chosen], coef[chosen])
        bound = fold_error_bound(
            w_next, b_next, ws[i + 1], bs[i + 1], rows, bs[i], basis, dependent[chosen], h_mag
        )
        if n == 0 or (bound <= limit).all():
            return chosen, bound
        n -= 1


def fold_error_bound(
    w_old: np.ndarray,
    b_old: np.ndarray,
    w_new: np.ndarray,
    b_new: np.ndarray,
    w: np.ndarray,
    b: np.ndarray,
    basis: np.ndarray,
    folded: np.ndarray,
    h_mag: np.ndarray,
) -> np.ndarray:
    """Sound bound, per row of the next layer, on |new - old pre-activation| over D.

    With the layer's active neurons linear (h_k = w_k . h + b_k), the new layer reads
    the basis with weights changed by D = w_new - w_old and no longer reads the folded
    ones, so the change is M h + c with M = D w_B - w_old_F w_F and
    c = D b_B - w_old_F b_F + (b_new - b_old): bounded by |M| |h| + |c| plus the
    float64 rounding of computing M and c (Higham's gamma, doubled as in bounds.py).
    ``h_mag`` bounds |h| over D.
    """
    if folded.size == 0:
        return np.zeros(w_old.shape[0])
    d = w_new[:, basis] - w_old[:, basis]  # exact up to one rounding each (|err| <= eps |d|)
    db = b_new - b_old
    left = np.hstack([d, -w_old[:, folded]])
    right_w = np.vstack([w[basis], w[folded]])
    right_b = np.concatenate([b[basis], b[folded]])
    m, c = left @ right_w, left @ right_b + db
    k, n = left.shape[1] + 1, w.shape[1]
    mass = np.abs(left) @ (np.abs(right_w) @ h_mag + np.abs(right_b)) + np.abs(db)
    value = np.abs(m) @ h_mag + np.abs(c)
    return (
        value * (1 + 2 * (n + 4) * EPS64)
        + 2 * (k + 6) * EPS64 * mass * (1 + 2 * (n + 4) * EPS64)
        + 1e-300
    )


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
