"""benchmarks.device_check, the CPU-against-CUDA check: it must catch what it is there
to catch (bounds that miss a point), and run end to end (CPU against CPU where there is
no GPU, as here in CI)."""

from __future__ import annotations

import json
import sys

import numpy as np
from oracle import random_net

from benchmarks import device_check
from exactcompress.bounds import LayerBounds, compute_bounds
from exactcompress.domain import Box
from exactcompress.io import save_model
from exactcompress.network import ReLUNetwork


def test_misses_counts_points_outside_bounds_and_none_inside():
    rng = np.random.default_rng(0)
    net = ReLUNetwork(*random_net(rng, [6, 10, 10, 2]))
    box = Box.uniform(6)
    pre, err = net.preactivations_with_error(box.sample(500, rng))
    sound = compute_bounds(net, box, "crown", device="cpu")
    assert device_check._misses(sound, pre, err) == 0
    # the sampled range itself, shrunk by a tenth at each end: unsound by construction
    lo = [g.min(0) + 0.1 * (g.max(0) - g.min(0)) for g in pre]
    hi = [g.max(0) - 0.1 * (g.max(0) - g.min(0)) for g in pre]
    assert device_check._misses(LayerBounds(lo, hi), pre, err) > 0


def test_device_check_runs_end_to_end_on_the_cpu(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(1)
    path = tmp_path / "digits28_small.pt"
    save_model(path, ReLUNetwork(*random_net(rng, [784, 12, 12, 10], bias_shift=-0.3)), {})
    out = tmp_path / "check.json"
    argv = ["device_check", "--device", "cpu", "--time-limit", "30", "--points", "200"]
    monkeypatch.setattr(sys, "argv", [*argv, "--json", str(out), str(path)])
    assert device_check.main() == 0
    result = json.loads(out.read_text())["digits28_small"]
    assert set(result["bounds"]) == set(device_check.METHODS)
    assert all(r["misses_cpu"] == r["misses_device"] == 0 for r in result["bounds"].values())
    assert result["pipeline"]["same_states"] is True
    assert "device check: passed" in capsys.readouterr().out
