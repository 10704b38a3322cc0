"""The acceptance targets, read from the *Targets* table of benchmarks/README.md.

The README is where a reader looks for what the benchmarks must show, so it is the
one place the numbers live; the report quotes them back from here. A missing or
malformed row fails loudly at import rather than silently checking nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).with_name("README.md")
SECTION = "## Targets"


@dataclass(frozen=True)
class Targets:
    speedup: float
    worst: float
    slow_paper_s: float
    hard_limit_s: float
    hard_slow_s: float
    #: per input size, the largest (layers, width) shapes that must complete
    hard_scope: dict[int, tuple[tuple[int, int], ...]]


def _rows(text: str) -> dict[str, str]:
    """The `name | value` cells of the first table under SECTION."""
    start = text.find(SECTION + "\n")
    if start < 0:
        raise RuntimeError(f"{README}: no '{SECTION}' section")
    rows: dict[str, str] = {}
    for line in text[start:].splitlines()[1:]:
        if line.startswith("## "):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1]
    return rows


def _scope(cell: str) -> dict[int, tuple[tuple[int, int], ...]]:
    """'784: 2x800, 5x100; 3072: 2x400' -> {784: ((2, 800), (5, 100)), 3072: ((2, 400),)}."""
    scope = {}
    for part in cell.split(";"):
        inputs, shapes = part.split(":")
        scope[int(inputs)] = tuple(
            tuple(int(n) for n in s.strip().split("x")) for s in shapes.split(",")
        )
    return scope


def load(path: Path = README) -> Targets:
    rows = _rows(path.read_text(encoding="utf-8"))
    try:
        return Targets(
            speedup=float(rows["speedup"]),
            worst=float(rows["worst"]),
            slow_paper_s=float(rows["slow_paper_s"]),
            hard_limit_s=float(rows["hard_limit_s"]),
            hard_slow_s=float(rows["hard_slow_s"]),
            hard_scope=_scope(rows["hard_scope"]),
        )
    except (KeyError, ValueError) as e:
        raise RuntimeError(f"{path}: '{SECTION}' table: bad or missing row ({e})") from e


TARGETS = load()
