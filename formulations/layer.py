"""Layer formulation (the seed's per-layer variant of ISA): one network-formulation
MILP per hidden layer, in order.

The "layer" driver builds the model of a layer's candidates only after every earlier
layer is settled, so the neurons proved there enter it fixed (linear or absent, no
binary) and later models are smaller than the single network model; the price is one
model, and at least one solve, per layer with candidates.
"""

from __future__ import annotations

from formulations import network, register

register(
    "layer",
    "layer",
    network.build,
    "one network-formulation MILP per hidden layer, earlier layers settled first (seed variant)",
)
