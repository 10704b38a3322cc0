"""The formulation contract: registration, discovery (modules, entry points), the
README's example against the brute force, Handle.validate, and one-line errors."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pyomo.environ as pyo
import pytest
from oracle import milp_states, random_net
from registries import clean_registries  # noqa: F401  (fixture)

import formulations
from exactcompress import Box, ReLUNetwork, StabilityOptions, find_stable_neurons
from exactcompress.cli import main
from exactcompress.errors import ExactCompressError
from exactcompress.io import save_model
from formulations import FormulationError, network

README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = pytest.mark.usefixtures("clean_registries")


def readme_example() -> str:
    """The first Python block of the README's "Adding a formulation" section."""
    section = README.read_text().split("## Adding a formulation", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def saved_net(tmp_path: Path, seed: int, widths: list[int]) -> tuple[Path, list, list]:
    w, b = random_net(np.random.default_rng(seed), widths, bias_shift=-0.3)
    save_model(str(tmp_path / "net.pt"), ReLUNetwork(w, b), {})
    return tmp_path / "net.pt", w, b


def test_readme_example_is_found_by_name_and_exact(tmp_path, monkeypatch):
    """Dropped into formulations/, the README's module is found by --formulation and
    --relu; its binary means *inactive*, so the neuron driver's fixing of proved
    neurons must go through the encoding to agree with the brute force."""
    (tmp_path / "my_formulation.py").write_text(readme_example())
    monkeypatch.setattr(formulations, "__path__", [*formulations.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "formulations.my_formulation", raising=False)
    model, w, b = saved_net(tmp_path, 5, [4, 10, 10, 10, 2])
    out = tmp_path / "s.json"
    args = ["stability", str(model), "--paper", "--solver", "highs", "--json", str(out)]
    assert main([*args, "--formulation", "my-neuron", "--relu", "bigm-tri"]) == 0
    saved = json.loads(out.read_text())
    assert saved["formulation"] == "my-neuron" and saved["options"]["relu"] == "bigm-tri"
    assert saved["complete"] and saved["milp"]["candidates"] > 0
    truth = milp_states(w, b, np.zeros(4), np.ones(4))
    for layer, want in zip(saved["layers"], truth):
        for state in ("stably_active", "stably_inactive", "unstable"):
            assert all(want[j] in (state, "ambiguous") for j in layer[state])


THIRD_PARTY = """
import formulations
from formulations import network

formulations.register("third-party", "network", network.build, "from an installed package")
"""


def test_installed_package_is_found_through_its_entry_point(tmp_path, monkeypatch):
    """A separately installed package (a module and its .dist-info on sys.path) that
    declares an entry point of the group is found by --formulation NAME."""
    site = tmp_path / "site"
    (site / "thirdparty_form-1.0.dist-info").mkdir(parents=True)
    (site / "thirdparty_form.py").write_text(THIRD_PARTY)
    info = site / "thirdparty_form-1.0.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-form\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{formulations.ENTRY_POINT_GROUP}]\nthird-party = thirdparty_form\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "thirdparty_form", raising=False)
    model, _, _ = saved_net(tmp_path, 2, [3, 8, 8, 2])
    out = tmp_path / "s.json"
    args = ["stability", str(model), "--formulation", "third-party", "--paper", "--solver", "highs"]
    assert main([*args, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["formulation"] == "third-party"


VARIANT_MODULE = """
import formulations
from formulations import network

formulations.register("dropped-in", "network", network.build, "a module dropped into formulations/")
"""


def test_module_dropped_into_the_package_is_found_by_name(tmp_path, monkeypatch):
    (tmp_path / "dropped_in_variant.py").write_text(VARIANT_MODULE)
    monkeypatch.setattr(formulations, "__path__", [*formulations.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "formulations.dropped_in_variant", raising=False)
    model, _, _ = saved_net(tmp_path, 2, [3, 8, 8, 2])
    out = tmp_path / "s.json"
    args = ["stability", str(model), "--formulation", "dropped-in", "--paper", "--solver", "highs"]
    assert main([*args, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["formulation"] == "dropped-in"


def test_relu_choices_are_the_registered_encodings(capsys):
    with pytest.raises(SystemExit):
        main(["stability", "--help"])
    assert re.search(r"--relu \{([^}]*)\}", capsys.readouterr().out).group(1).split(",") == (
        formulations.relu_names()
    )
    assert {"bigm", "extended"} <= set(formulations.relu_names())


def test_unknown_names_are_one_line_errors(tmp_path, capsys):
    model, w, b = saved_net(tmp_path, 0, [3, 4, 2])
    assert main(["stability", str(model), "--formulation", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown formulation 'nope'" in err and "network, neuron" in err and "\n" not in err
    with pytest.raises(ExactCompressError, match="unknown ReLU encoding 'nope'.*bigm"):
        find_stable_neurons(ReLUNetwork(w, b), options=StabilityOptions(relu="nope"))


def test_missing_optional_dependency_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "omlt", None)  # import omlt now fails
    monkeypatch.delitem(sys.modules, "formulations.omlt_peer", raising=False)
    formulations.FORMULATIONS.pop("omlt", None)
    with pytest.raises(KeyError) as err:
        formulations.get("omlt")
    message = err.value.args[0]
    assert "needs the optional package omlt" in message and "[peers]" in message
    assert "\n" not in message


def contract_breaking(mutate):
    """A network-formulation build whose model ``mutate`` puts out of contract."""

    def build(data, candidates, relu=formulations.DEFAULT_RELU):
        handle = network.build(data, candidates, relu)
        mutate(handle)
        return handle

    return build


def minimise(handle):
    handle.model.objective.sense = pyo.minimize


def fixed_bounds(handle):
    key = next(iter(handle.a))
    handle.lower[key] = float(pyo.value(handle.lower[key]))


def forget_encoding(handle):
    handle.relu.pop(next(iter(handle.a)))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (minimise, "sense=maximize"),
        (fixed_bounds, "not a mutable Param"),
        (forget_encoding, "its encoding in relu"),
    ],
)
def test_a_model_out_of_contract_is_refused_before_it_is_solved(mutate, message):
    w, b = random_net(np.random.default_rng(5), [4, 10, 10, 2], bias_shift=-0.3)
    formulations.register("broken", "network", contract_breaking(mutate))
    options = StabilityOptions.paper(formulation="broken", solver="highs")
    with pytest.raises(ExactCompressError, match=message):
        find_stable_neurons(ReLUNetwork(w, b), Box.uniform(4), options=options)


def test_a_strategy_without_a_driver_is_refused():
    w, b = random_net(np.random.default_rng(5), [4, 6, 2])
    formulations.register("no-driver", "nope", network.build)
    options = StabilityOptions.paper(formulation="no-driver", solver="highs")
    said: list[str] = []
    with pytest.raises(ExactCompressError, match="strategy 'nope'; strategies: network"):
        find_stable_neurons(
            ReLUNetwork(w, b), Box.uniform(4), options=options, progress=said.append
        )
    assert said == []  # refused before any stage ran


def test_validate_wants_one_binary_per_open_neuron():
    w, b = random_net(np.random.default_rng(1), [3, 5, 4, 2], bias_shift=-0.3)
    lower = [np.full(5, -10.0), np.full(4, -10.0)]
    upper = [np.full(5, 10.0), np.full(4, 10.0)]
    fixed = [np.zeros(5, np.int8), np.zeros(4, np.int8)]
    data = formulations.MILPInput(w[:-1], b[:-1], np.zeros(3), np.ones(3), lower, upper, fixed)
    handle = network.build(data, [(1, 0, "pos")])
    handle.validate()
    first, second = list(handle.a)[:2]
    handle.a[second] = handle.a[first]
    with pytest.raises(FormulationError, match="share one binary"):
        handle.validate()
    del handle.model.objective
    with pytest.raises(FormulationError, match="objective"):
        handle.validate()


def test_register_relu_wants_the_protocol():
    with pytest.raises(TypeError, match="ReluEncoding"):
        formulations.register_relu("half", object())
