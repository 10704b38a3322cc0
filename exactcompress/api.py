"""The Python API in a few calls: load, find stable neurons, compress, verify."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import nn

from .domain import Box
from .io import load_network, make_dir, save_model, write_atomic
from .network import ReLUNetwork
from .prune import CompressionSummary
from .prune import compress as prune_network
from .report import StabilityReport, render_report
from .stability import StabilityOptions, find_stable_neurons
from .verify import VerifyResult, verify, witness_points


@dataclass
class CompressionResult:
    """Everything ``compress`` found, with the compressed network as numpy and torch."""

    original: ReLUNetwork
    compressed: ReLUNetwork
    report: StabilityReport
    summary: CompressionSummary
    verification: VerifyResult

    @property
    def module(self) -> nn.Sequential:
        return self.compressed.to_torch()

    def meta(self) -> dict:
        return {
            "stability": self.report.counts(),
            "complete": self.report.complete,
            "parameters_before": self.summary.parameters_before,
            "parameters_after": self.summary.parameters_after,
            "verification": self.verification.to_json(),
        }

    def save(self, outdir: str | os.PathLike, source: str = "") -> None:
        """OUTDIR/{stability.json, compressed.pt, report.md}, each written atomically."""
        make_dir(outdir)
        self.report.save(os.path.join(outdir, "stability.json"))
        save_model(
            os.path.join(outdir, "compressed.pt"),
            self.compressed,
            {"source": source, **self.meta()},
        )
        write_atomic(os.path.join(outdir, "report.md"), render_report(self, source).encode())


def compress(
    model: nn.Module | ReLUNetwork | str | os.PathLike,
    box: Box | None = None,
    data: np.ndarray | None = None,
    options: StabilityOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompressionResult:
    """Find the stable neurons of ``model`` over ``box`` and remove or fold them."""
    net = model if isinstance(model, ReLUNetwork) else load_network(model)
    box = box or Box.uniform(net.widths[0])
    report = find_stable_neurons(net, box, data, options, progress)
    compressed, summary = prune_network(net, report.states, box=box)
    check = verify(net, compressed, box, data=data, witnesses=witness_points(report))
    return CompressionResult(net, compressed, report, summary, check)
