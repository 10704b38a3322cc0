"""VNN-LIB export of the neurons that reached the exact stage (``--export-vnnlib DIR``).

So that any VNN-COMP verifier (alpha-beta-CROWN, Marabou, NeuralSAT, ...) can re-check
a claim independently of this package: per hidden layer L that has such neurons, an
ONNX network computing the pre-activations of layer L (``layerL.onnx``, float64, input
``X`` of shape (1, n0), output ``Y`` of shape (1, n_L)), and per neuron and side a
VNN-LIB property whose input constraints are the domain and whose output constraint is
the counterexample: ``Y_j >= margin`` for a candidate for stably inactive, ``Y_j <=
-margin`` for one for stably active. A verifier answering "unsat" (no counterexample)
proves g_j < margin (or > -margin) on the whole box. ``instances.csv`` lists them in
VNN-COMP's format (onnx, vnnlib, timeout).

The ONNX graph is built by ``onnx_io.network_model`` with the ``onnx`` package (extra
``exactcompress[onnx]``) from MatMul, Add and Relu nodes only, in float64, so that it
matches the package's forward pass to rounding.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from .domain import Box
from .io import make_dir, write_atomic
from .network import ReLUNetwork
from .onnx_io import network_model

#: the output condition's distance from 0, as the MILP's flip margin
MARGIN = 1e-5


def layer_model(net: ReLUNetwork, layer: int):
    """ONNX model of x -> pre-activations of hidden ``layer`` (from 0), in float64, with
    the fixed input shape (1, n0) that VNN-COMP tools expect."""
    upto = ReLUNetwork(net.weights[: layer + 1], net.biases[: layer + 1])
    return network_model(upto, [1, net.widths[0]], graph_name=f"exactcompress_layer{layer + 1}")


def property_text(
    box: Box, n_out: int, neuron: int, claim: str, margin: float = MARGIN, note: str = ""
) -> str:
    """VNN-LIB text whose counterexample contradicts ``claim`` (stably_inactive/_active)."""
    if claim not in ("stably_inactive", "stably_active"):
        raise ValueError(f"claim must be stably_inactive or stably_active, got {claim!r}")
    lines = [f"; {note}"] if note else []
    lines += [f"(declare-const X_{i} Real)" for i in range(box.dim)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, (lo, hi) in enumerate(zip(box.lo, box.hi)):
        lines += [f"(assert (>= X_{i} {float(lo)!r}))", f"(assert (<= X_{i} {float(hi)!r}))"]
    if claim == "stably_inactive":
        lines.append(f"(assert (>= Y_{neuron} {float(margin)!r}))")
    else:
        lines.append(f"(assert (<= Y_{neuron} {-float(margin)!r}))")
    return "\n".join(lines) + "\n"


@dataclass
class Exported:
    """One exported claim: its files and what an 'unsat' answer proves."""

    layer: int  # from 1
    neuron: int
    claim: str
    onnx: str
    vnnlib: str


def export_candidates(
    net: ReLUNetwork,
    box: Box,
    candidates: list[dict],
    outdir: str | os.PathLike,
    margin: float = MARGIN,
    timeout: float = 300.0,
) -> list[Exported]:
    """Write the ONNX networks and VNN-LIB properties of ``candidates`` (the report's
    ``extra["milp"]["why_candidates"]``: layer from 1, neuron, never_seen) to ``outdir``."""
    make_dir(outdir)
    out: list[Exported] = []
    models: dict[int, str] = {}
    for cand in candidates:
        layer, j = int(cand["layer"]), int(cand["neuron"])
        if layer not in models:
            path = os.path.join(outdir, f"layer{layer}.onnx")
            write_atomic(path, layer_model(net, layer - 1).SerializeToString())
            models[layer] = path
        never = cand.get("never_seen", ["active", "inactive"])
        for seen, claim in (("active", "stably_inactive"), ("inactive", "stably_active")):
            if seen not in never:
                continue
            path = os.path.join(outdir, f"layer{layer}_neuron{j}_{claim}.vnnlib")
            note = (
                f"exactcompress: layer {layer} neuron {j}, claim {claim}; unsat proves "
                + (f"g < {margin!r}" if claim == "stably_inactive" else f"g > {-margin!r}")
                + " on the whole box"
            )
            text = property_text(box, net.hidden_widths[layer - 1], j, claim, margin, note)
            write_atomic(path, text.encode())
            out.append(Exported(layer, j, claim, models[layer], path))
    rows = [f"{os.path.basename(e.onnx)},{os.path.basename(e.vnnlib)},{timeout:g}" for e in out]
    write_atomic(os.path.join(outdir, "instances.csv"), ("\n".join(rows) + "\n").encode())
    return out


# ---- reading back (for tests and users' scripts) -----------------------------------

_ASSERT = re.compile(r"\(assert \((<=|>=) ([XY])_(\d+) (\S+)\)\)")
_DECLARE = re.compile(r"\(declare-const ([XY])_(\d+) Real\)")


@dataclass
class Property:
    """A parsed property of the simple form this module writes: a box on X and one
    bound on one output Y_j."""

    lo: np.ndarray
    hi: np.ndarray
    n_out: int
    output: int
    sense: str  # ">=" or "<="
    value: float


def read_property(path: str | os.PathLike) -> Property:
    """Parse a VNN-LIB file with box input constraints and one output constraint."""
    with open(path) as f:
        text = f.read()
    declared = {"X": 0, "Y": 0}
    for kind, _ in _DECLARE.findall(text):
        declared[kind] += 1
    lo, hi = np.full(declared["X"], -np.inf), np.full(declared["X"], np.inf)
    outputs = []
    for sense, kind, idx, value in _ASSERT.findall(text):
        i, v = int(idx), float(value)
        if kind == "X":
            (lo if sense == ">=" else hi)[i] = v
        else:
            outputs.append((i, sense, v))
    if len(outputs) != 1:
        raise ValueError(f"{path}: expected one output constraint, found {len(outputs)}")
    i, sense, v = outputs[0]
    return Property(lo, hi, declared["Y"], i, sense, v)
