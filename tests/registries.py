"""A fixture that leaves the formulation and ReLU-encoding registries as it found them,
so a test may register, drop in or hide formulations freely. It discovers first: a
module imported during a test registers once only, so it must be in the snapshot."""

from __future__ import annotations

import pytest

from formulations import registry


@pytest.fixture
def clean_registries():
    registry.discover()
    tables = (registry.FORMULATIONS, registry.RELU_ENCODINGS, registry.UNAVAILABLE)
    saved = [dict(t) for t in tables]
    yield
    for table, copy in zip(tables, saved):
        table.clear()
        table.update(copy)
