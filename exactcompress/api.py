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
from .report import StabilityReport
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


#: the stage names of the report's timings, and the deciders each one covers
STAGE_DECIDERS = {
    "bounds": ("bounds",),
    "refute": ("data", "sampling"),
    "witness": ("witness",),
    "lp": ("lp",),
    "milp": ("milp",),
}
MAX_CANDIDATE_ROWS = 200


def milp_candidates_section(candidates: list[dict]) -> list[str]:
    """Which neurons reached the MILP, why the cheaper stages left them, and the outcome."""
    lines = ["## Candidates that reached the MILP", ""]
    if not candidates:
        return lines + ["None: the bounds and the points tried decided every neuron.", ""]
    outcomes: dict[str, int] = {}
    for c in candidates:
        outcomes[c["outcome"]] = outcomes.get(c["outcome"], 0) + 1
    lines += [
        f"{len(candidates)} neurons; outcome: "
        + ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())),
        "",
        "| layer | neuron | never seen | bounds | seen range | outcome |",
        "|---:|---:|---|---|---|---|",
    ]
    for c in candidates[:MAX_CANDIDATE_ROWS]:
        lo, up = c["bounds"]
        seen = (
            "none tried" if c["seen_range"] is None else "[{:.3g}, {:.3g}]".format(*c["seen_range"])
        )
        lines.append(
            f"| {c['layer']} | {c['neuron']} | {' or '.join(c['never_seen'])} | "
            f"[{lo:.3g}, {up:.3g}] | {seen} | {c['outcome']} |"
        )
    if len(candidates) > MAX_CANDIDATE_ROWS:
        lines.append(f"\n... {len(candidates) - MAX_CANDIDATE_ROWS} more in stability.json")
    lines += [
        "",
        "Bounds that cross 0 prove nothing, and no point tried showed the state "
        "in 'never seen', so neither bounds nor sampling could decide these.",
        "",
    ]
    return lines


def render_report(result: CompressionResult, source: str = "") -> str:
    rep, summ = result.report, result.summary
    counts = rep.counts()
    lines = [
        "# exactcompress report",
        "",
        f"- model: {source or '(in memory)'}",
        f"- domain: {rep.domain}",
        f"- formulation: {rep.formulation}, solver: {rep.solver}",
        f"- complete: {rep.complete}" + (" (interrupted)" if rep.interrupted else ""),
        f"- neurons: {counts['stably_active']} stably active, {counts['stably_inactive']} stably "
        f"inactive, {counts['unstable']} unstable, {counts['undecided']} undecided",
        "",
        "## Layers",
        "",
        summ.to_markdown(),
        "",
        "The fold error bound is a sound bound over the whole domain on how much folding "
        "a layer's dependent active neurons changes the next layer's pre-activations "
        "(relative: divided by their size |W| |h| + |b|); a row whose bound was not "
        'negligible is kept ("kept").',
        "",
        "## Stages",
        "",
        "| stage | seconds | neurons decided |",
        "|---|---:|---:|",
    ]
    for stage, sec in rep.seconds.items():
        decided = sum(rep.decided_by.get(name, 0) for name in STAGE_DECIDERS.get(stage, ()))
        lines.append(f"| {stage} | {sec:.3f} | {decided if stage != 'total' else ''} |")
    lines += ["", "## Verification", "", result.verification.summary(), ""]
    lines += milp_candidates_section(rep.extra.get("milp", {}).get("why_candidates", []))
    if rep.notes:
        lines += ["## Undecided neurons", ""] + [f"- {n}" for n in rep.notes] + [""]
    return "\n".join(lines)
