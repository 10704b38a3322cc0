"""The stability.json contract and report.md: what a run decided, and why.

``StabilityReport`` is what stability.json holds; ``render_report`` writes report.md
from a compression result. The evidence the stages gather lives in ``evidence.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .errors import ExactCompressError
from .evidence import ACTIVE, INACTIVE, STATES, UNDECIDED, UNSTABLE, NeuronEvidence

if TYPE_CHECKING:
    from .api import CompressionResult

__all__ = [
    "ACTIVE",
    "FORMAT",
    "INACTIVE",
    "STATES",
    "UNDECIDED",
    "UNSTABLE",
    "NeuronEvidence",
    "ExactCandidate",
    "StabilityReport",
    "render_report",
]

FORMAT = "exactcompress.stability/1"


@dataclass(frozen=True)
class ExactCandidate:
    """A neuron no cheap stage decided: why (``never_seen`` states, ``bounds`` crossing 0,
    the ``seen_range`` of its pre-activation over the points tried), its final state
    (``outcome``) and the stage that decided it (``decided_by``, '' when undecided)."""

    layer: int  # from 1
    neuron: int
    never_seen: tuple[str, ...]
    bounds: tuple[float, float]
    seen_range: tuple[float, float] | None
    why: str
    outcome: str
    decided_by: str
    #: undecided only: each open extreme of g, {extreme, seen, bound, bound_by}
    extremes: tuple[dict, ...] = ()

    @classmethod
    def from_json(cls, d: dict) -> ExactCandidate:
        seen = d.get("seen_range")
        return cls(
            int(d["layer"]),
            int(d["neuron"]),
            tuple(d.get("never_seen", ())),
            (float(d["bounds"][0]), float(d["bounds"][1])),
            None if seen is None else (float(seen[0]), float(seen[1])),
            str(d.get("why", "")),
            str(d.get("outcome", UNDECIDED)),
            str(d.get("decided_by", "")),
            tuple(d.get("extremes", ())),
        )


@dataclass
class StabilityReport:
    """What stability.json holds, plus the witnesses that let anyone re-check it."""

    widths: list[int]
    domain: dict
    formulation: str
    solver: str
    states: list[np.ndarray]
    decided_by: dict[str, int]
    seconds: dict[str, float]
    deciders: list[list[str]] = field(default_factory=list)
    witnesses: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.interrupted and all((s != UNDECIDED).all() for s in self.states)

    @property
    def candidates(self) -> list[ExactCandidate]:
        """The neurons that reached the exact stage, as stability.json's
        ``milp.why_candidates`` records them."""
        return [
            ExactCandidate.from_json(c)
            for c in self.extra.get("milp", {}).get("why_candidates", [])
        ]

    def indices(self, layer: int, state: str) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.states[layer] == state)]

    def counts(self) -> dict[str, int]:
        return {k: sum(int((s == k).sum()) for s in self.states) for k in STATES}

    def to_json(self) -> dict:
        layers = []
        for layer in range(len(self.states)):
            entry = {"layer": layer + 1}
            entry.update({k: self.indices(layer, k) for k in STATES})
            layers.append(entry)
        return {
            "format": FORMAT,
            "widths": list(self.widths),
            "domain": self.domain,
            "formulation": self.formulation,
            "solver": self.solver,
            "complete": self.complete,
            "interrupted": self.interrupted,
            "layers": layers,
            "decided_by": dict(self.decided_by),
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "deciders": self.deciders,
            "witnesses": self.witnesses,
            "notes": self.notes,
            **self.extra,
        }

    @classmethod
    def from_json(cls, data: dict) -> StabilityReport:
        if data.get("format") != FORMAT:
            raise ExactCompressError(
                f"not a stability file (format {data.get('format')!r}, expected {FORMAT!r})"
            )
        widths = [int(w) for w in data["widths"]]
        states = []
        for layer, entry in enumerate(data["layers"]):
            s = np.full(widths[layer + 1], UNDECIDED, dtype=object)
            for k in (ACTIVE, INACTIVE, UNSTABLE):
                s[np.asarray(entry.get(k, []), dtype=int)] = k
            states.append(s)
        known = {
            "format",
            "widths",
            "domain",
            "formulation",
            "solver",
            "complete",
            "interrupted",
            "layers",
            "decided_by",
            "seconds",
            "deciders",
            "witnesses",
            "notes",
        }
        return cls(
            widths=widths,
            domain=data.get("domain", {}),
            formulation=data.get("formulation", ""),
            solver=data.get("solver", ""),
            states=states,
            decided_by=data.get("decided_by", {}),
            seconds=data.get("seconds", {}),
            deciders=data.get("deciders", []),
            witnesses=data.get("witnesses", {}),
            notes=data.get("notes", []),
            interrupted=bool(data.get("interrupted", False)),
            extra={k: v for k, v in data.items() if k not in known},
        )

    def save(self, path: str) -> None:
        from .io import write_atomic

        write_atomic(path, json.dumps(self.to_json(), indent=1).encode())

    @classmethod
    def load(cls, path: str) -> StabilityReport:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as err:
            raise ExactCompressError(f"cannot read stability file {path}: {err}") from None
        return cls.from_json(data)


MAX_CANDIDATE_ROWS = 200


def milp_candidates_section(candidates: list[dict]) -> list[str]:
    """Which neurons reached the exact stage, why the cheaper stages left them, and how
    the exact stage (tighten, bab, milp) decided each."""
    lines = ["## Candidates that reached the exact stage", ""]
    if not candidates:
        return lines + ["None: the bounds and the points tried decided every neuron.", ""]
    outcomes: dict[str, int] = {}
    for c in candidates:
        outcomes[c["outcome"]] = outcomes.get(c["outcome"], 0) + 1
    lines += [
        f"{len(candidates)} neurons; outcome: "
        + ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())),
        "",
        "| layer | neuron | never seen | bounds | seen range | outcome | decided by |",
        "|---:|---:|---|---|---|---|---|",
    ]
    for c in candidates[:MAX_CANDIDATE_ROWS]:
        lo, up = c["bounds"]
        seen = (
            "none tried" if c["seen_range"] is None else "[{:.3g}, {:.3g}]".format(*c["seen_range"])
        )
        lines.append(
            f"| {c['layer']} | {c['neuron']} | {' or '.join(c['never_seen'])} | "
            f"[{lo:.3g}, {up:.3g}] | {seen} | {c['outcome']} | {c.get('decided_by') or '-'} |"
        )
    if len(candidates) > MAX_CANDIDATE_ROWS:
        lines.append(f"\n... {len(candidates) - MAX_CANDIDATE_ROWS} more in stability.json")
    lines += [
        "",
        "Bounds that cross 0 prove nothing, and no point tried showed the state "
        "in 'never seen', so neither bounds nor sampling could decide these.",
        "",
    ]
    return lines + undecided_section(candidates)


def undecided_section(candidates: list[dict]) -> list[str]:
    """Where each undecided neuron's open extreme lies: the gap the exact stage left."""
    rows = [(c, e) for c in candidates for e in c.get("extremes", ())]
    if not rows:
        return []
    lines = [
        "## Undecided: where the open extremes lie",
        "",
        "Each open extreme of g lies between the most extreme value a point showed and the "
        "best bound a stage reached (`milp`: the solver's bound, not a proof). A neuron is "
        "decided once the bound crosses 0 (stable) or a point does (unstable).",
        "",
        "| layer | neuron | extreme | seen | bound | bound by | gap |",
        "|---:|---:|---|---:|---:|---|---:|",
    ]
    for c, e in rows[:MAX_CANDIDATE_ROWS]:
        seen = "-" if e["seen"] is None else f"{e['seen']:.4g}"
        gap = "-" if e["seen"] is None else f"{abs(e['bound'] - e['seen']):.3g}"
        lines.append(
            f"| {c['layer']} | {c['neuron']} | {e['extreme']} g | {seen} | {e['bound']:.4g} | "
            f"{e['bound_by']} | {gap} |"
        )
    return lines + [""]


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
        decided = sum(rep.decided_by.get(name, 0) for name in stage_deciders().get(stage, ()))
        lines.append(f"| {stage} | {sec:.3f} | {decided if stage != 'total' else ''} |")
    lines += ["", "## Verification", "", result.verification.summary(), ""]
    lines += milp_candidates_section(rep.extra.get("milp", {}).get("why_candidates", []))
    if rep.notes:
        lines += ["## Undecided neurons", ""] + [f"- {n}" for n in rep.notes] + [""]
    return "\n".join(lines)


def stage_deciders() -> dict[str, tuple[str, ...]]:
    """Each stage's name and the deciders it may record, from the one list of stages."""
    from .stability import STAGES

    return {stage.name: stage.deciders for stage in STAGES}
