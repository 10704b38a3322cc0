"""Evidence about every hidden neuron: what the stages have seen and proved.

A neuron is *unstable* only when two float64 forward passes of inputs in the domain
put it strictly on both sides of 0 (the inputs are kept as witnesses), and *stable*
only when some stage proved it; everything else is *undecided*.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from .domain import Box
from .errors import ExactCompressError
from .network import ReLUNetwork

ACTIVE, INACTIVE, UNSTABLE, UNDECIDED = "stably_active", "stably_inactive", "unstable", "undecided"
STATES = (ACTIVE, INACTIVE, UNSTABLE, UNDECIDED)


@dataclass
class NeuronEvidence:
    """Mutable record of what the pipeline has seen and proved, layer by layer.

    ``seen_pos``/``seen_neg``: a witness put the neuron strictly above/below 0.
    ``proved_active``/``proved_inactive``: a bound or a solver proved g >= 0 / g <= 0.
    ``decider``: name of the stage that settled the neuron ('' while open).
    """

    net: ReLUNetwork
    box: Box
    seen_pos: list[np.ndarray] = field(init=False)
    seen_neg: list[np.ndarray] = field(init=False)
    proved_active: list[np.ndarray] = field(init=False)
    proved_inactive: list[np.ndarray] = field(init=False)
    decider: list[np.ndarray] = field(init=False)
    witness_pos: list[dict[int, np.ndarray]] = field(init=False)
    witness_neg: list[dict[int, np.ndarray]] = field(init=False)
    given_up: list[np.ndarray] = field(init=False)
    g_max: list[np.ndarray] = field(init=False)
    g_min: list[np.ndarray] = field(init=False)
    n_observed: int = field(init=False, default=0)
    notes: dict[tuple[int, int], str] = field(default_factory=dict)
    #: solver proofs re-proved in sound arithmetic (--certify)
    certified: set[tuple[int, int]] = field(default_factory=set)
    #: the best upper bound of s g a stage reached on an open question, by (layer,
    #: neuron, side): side "pos" asks whether g > 0 somewhere (s = +1), "neg" whether
    #: g < 0 (s = -1); -> (bound, stage). What an undecided neuron's report quotes.
    reached: dict[tuple[int, int, str], tuple[float, str]] = field(default_factory=dict)
    #: observe, prove and give_up may be called from several threads (--jobs)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def __post_init__(self) -> None:
        widths = self.net.hidden_widths
        self.seen_pos = [np.zeros(n, bool) for n in widths]
        self.seen_neg = [np.zeros(n, bool) for n in widths]
        self.proved_active = [np.zeros(n, bool) for n in widths]
        self.proved_inactive = [np.zeros(n, bool) for n in widths]
        self.given_up = [np.zeros(n, bool) for n in widths]
        self.decider = [np.full(n, "", dtype=object) for n in widths]
        self.witness_pos = [{} for _ in widths]
        self.witness_neg = [{} for _ in widths]
        # the extremes seen so far say how close sampling came to refuting a candidate
        self.g_max = [np.full(n, -np.inf) for n in widths]
        self.g_min = [np.full(n, np.inf) for n in widths]

    # ---- evidence --------------------------------------------------------------
    def observe(self, x: np.ndarray, stage: str) -> int:
        """Forward-pass inputs (clipped into the domain); returns how many became unstable.

        A point witnesses a side only when its float64 pre-activation is beyond the
        pass's rounding error bound, so that the real-valued network agrees on the sign.
        """
        x = self.box.clip(np.atleast_2d(np.asarray(x, dtype=np.float64)))
        if x.shape[0] == 0:
            return 0
        newly = 0
        self.n_observed += x.shape[0]
        gs, errs = self.net.preactivations_with_error(x)
        for layer, (g, err) in enumerate(zip(gs, errs)):
            np.maximum(self.g_max[layer], g.max(axis=0), out=self.g_max[layer])
            np.minimum(self.g_min[layer], g.min(axis=0), out=self.g_min[layer])
            before = self.unstable(layer)
            for seen, wit, mask in (
                (self.seen_pos[layer], self.witness_pos[layer], g > err),
                (self.seen_neg[layer], self.witness_neg[layer], g < -err),
            ):
                hit = mask.any(axis=0) & ~seen
                for j in np.flatnonzero(hit):
                    wit[int(j)] = x[int(np.argmax(mask[:, j]))].copy()
                seen |= hit
            became = self.unstable(layer) & ~before
            self._check_consistent(layer)
            self.decider[layer][became] = stage
            newly += int(became.sum())
        return newly

    def prove(self, layer: int, neurons: np.ndarray, active: bool, stage: str) -> None:
        """Record a proof that g >= 0 (active) or g <= 0 (inactive) over the domain."""
        with self.lock:
            self._prove(layer, neurons, active, stage)

    def _prove(self, layer: int, neurons: np.ndarray, active: bool, stage: str) -> None:
        neurons = np.asarray(neurons, dtype=int)
        if neurons.size == 0:
            return
        target = self.proved_active[layer] if active else self.proved_inactive[layer]
        fresh = neurons[~self.settled(layer)[neurons]]
        target[neurons] = True
        self.decider[layer][fresh] = stage
        self._check_consistent(layer)

    def reach(self, layer: int, j: int, side: str, bound: float, stage: str) -> None:
        """Keep ``bound`` (an upper bound of s g, see ``reached``) if it is the best yet."""
        if not np.isfinite(bound):
            return
        with self.lock:
            old = self.reached.get((layer, j, side))
            if old is None or bound < old[0]:
                self.reached[(layer, j, side)] = (float(bound), stage)

    def give_up(self, layer: int, neurons: np.ndarray, why: str) -> None:
        """Stop trying to decide these neurons (they stay undecided)."""
        with self.lock:
            self._give_up(layer, neurons, why)

    def _give_up(self, layer: int, neurons: np.ndarray, why: str) -> None:
        for j in np.asarray(neurons, dtype=int):
            self.given_up[layer][j] = True
            self.notes.setdefault((layer, int(j)), why)

    def retract(self, layer: int, j: int, why: str) -> None:
        """Withdraw a proof that could not be confirmed: the neuron becomes undecided."""
        self.proved_active[layer][j] = self.proved_inactive[layer][j] = False
        self.decider[layer][j] = ""
        self.given_up[layer][j] = True
        self.notes[(layer, int(j))] = why

    def sound_fixed_states(self, sound: tuple[str, ...]) -> list[np.ndarray]:
        """``fixed_states`` restricted to proofs by the ``sound`` deciders or certified."""
        out = []
        for layer, fixed in enumerate(self.fixed_states()):
            keep = np.isin(self.decider[layer], sound)
            keep |= np.array([(layer, j) in self.certified for j in range(fixed.size)], dtype=bool)
            out.append(np.where(keep, fixed, 0).astype(np.int8))
        return out

    def _check_consistent(self, layer: int) -> None:
        bad = (self.proved_inactive[layer] & self.seen_pos[layer]) | (
            self.proved_active[layer] & self.seen_neg[layer]
        )
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise ExactCompressError(
                f"internal inconsistency: layer {layer + 1} neuron {j} was proved stable "
                "but a witness shows the other state; please report this network"
            )

    # ---- queries ---------------------------------------------------------------
    def unstable(self, layer: int) -> np.ndarray:
        return self.seen_pos[layer] & self.seen_neg[layer]

    def settled(self, layer: int) -> np.ndarray:
        return self.unstable(layer) | self.proved_active[layer] | self.proved_inactive[layer]

    def open_inactive(self, layer: int) -> np.ndarray:
        """Candidates for stably inactive: never seen positive, not settled, not given up."""
        return np.flatnonzero(~self.seen_pos[layer] & ~self.settled(layer) & ~self.given_up[layer])

    def open_active(self, layer: int) -> np.ndarray:
        """Candidates for stably active: never seen negative, not settled, not given up."""
        return np.flatnonzero(~self.seen_neg[layer] & ~self.settled(layer) & ~self.given_up[layer])

    def n_open(self) -> int:
        return sum(
            int((~self.settled(layer) & ~self.given_up[layer]).sum())
            for layer in range(len(self.seen_pos))
        )

    def fixed_states(self) -> list[np.ndarray]:
        """+1 proved active, -1 proved inactive, 0 otherwise (what a formulation may fix)."""
        return [
            np.where(pi, -1, np.where(pa, 1, 0)).astype(np.int8)
            for pa, pi in zip(self.proved_active, self.proved_inactive)
        ]

    def states(self) -> list[np.ndarray]:
        """Final state name of every neuron; g == 0 everywhere counts as inactive."""
        out = []
        for layer in range(len(self.seen_pos)):
            s = np.full(self.seen_pos[layer].size, UNDECIDED, dtype=object)
            s[self.proved_active[layer]] = ACTIVE
            s[self.proved_inactive[layer]] = INACTIVE
            s[self.unstable(layer)] = UNSTABLE
            out.append(s)
        return out
