"""Registries of formulations and ReLU encodings, and where to look for more.

A name is looked up as registered; when it is not, every module of ``formulations/``
is imported and every entry point of the group ``exactcompress.formulations`` is
loaded (each registers itself on import), and the name is looked up again. So a
module dropped into ``formulations/`` and a separately installed package are both
found by name, with no edit anywhere else.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil

from .base import Build, FormulationSpec, ReluEncoding

#: entry-point group of third-party formulations and encodings: each entry point names a
#: module (or object) whose import registers them
ENTRY_POINT_GROUP = "exactcompress.formulations"

FORMULATIONS: dict[str, FormulationSpec] = {}
RELU_ENCODINGS: dict[str, ReluEncoding] = {}
#: name -> why it is not registered (an optional dependency missing), said when asked for
UNAVAILABLE: dict[str, str] = {}


def register(
    name: str,
    strategy: str,
    build: Build,
    description: str = "",
    relus: tuple[str, ...] | None = None,
) -> FormulationSpec:
    """Make ``build`` available as ``--formulation name``, solved by driver ``strategy``;
    ``relus`` limits the ``--relu`` encodings it accepts (checked before any stage runs)."""
    if not isinstance(strategy, str) or not strategy:
        raise ValueError(f"strategy must name a driver, got {strategy!r}")
    spec = FormulationSpec(name, strategy, build, description, relus)
    FORMULATIONS[name] = spec
    UNAVAILABLE.pop(name, None)
    return spec


def register_relu(name: str, encoding: ReluEncoding) -> ReluEncoding:
    """Make ``encoding`` available as ``--relu name`` to every formulation built on
    ``formulations.relu.build_layers``."""
    if not isinstance(encoding, ReluEncoding):
        raise TypeError(f"{encoding!r} lacks encode() and binary_value() of a ReluEncoding")
    RELU_ENCODINGS[name] = encoding
    return encoding


def mark_unavailable(name: str, reason: str) -> None:
    """Say ``reason`` (one line) when formulation ``name`` is asked for but cannot be."""
    UNAVAILABLE[name] = reason


def discover() -> None:
    """Import every module of this package and load every entry point of the group,
    so that each registers itself."""
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        module = f"{__package__}.{info.name}"
        try:
            importlib.import_module(module)
        except Exception as err:  # a user's module: name it rather than hide the cause
            raise ImportError(f"formulation module {module} failed to import: {err}") from err
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as err:
            raise ImportError(
                f"entry point {entry.name} = {entry.value} of {ENTRY_POINT_GROUP} "
                f"failed to load: {err}"
            ) from err


def get(name: str) -> FormulationSpec:
    """The formulation registered as ``name``, discovering more when it is not yet."""
    if name not in FORMULATIONS:
        discover()
    if name in FORMULATIONS:
        return FORMULATIONS[name]
    if name in UNAVAILABLE:
        raise KeyError(UNAVAILABLE[name])
    raise KeyError(f"unknown formulation {name!r}; registered: {', '.join(sorted(FORMULATIONS))}")


def relu_encoding(name: str) -> ReluEncoding:
    """The ReLU encoding registered as ``name``, discovering more when it is not yet."""
    if name not in RELU_ENCODINGS:
        discover()
    try:
        return RELU_ENCODINGS[name]
    except KeyError:
        raise KeyError(
            f"unknown ReLU encoding {name!r}; registered: {', '.join(relu_names())}"
        ) from None


def relu_names() -> list[str]:
    """Every ReLU encoding there is, after discovery (the choices of ``--relu``)."""
    discover()
    return sorted(RELU_ENCODINGS)


def formulation_names() -> list[str]:
    """Every formulation there is, after discovery."""
    discover()
    return sorted(FORMULATIONS)
