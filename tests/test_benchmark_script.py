"""Smoke test of ``scripts/benchmark_lower.py`` (tiny sizes; no timing is asserted)."""
import importlib.util
import json
import math
import os

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "benchmark_lower.py")


def _load():
    spec = importlib.util.spec_from_file_location("benchmark_lower", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _times(node):
    """Every number stored under a ``times`` key, anywhere in the JSON tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "times":
                for t in v.values():
                    yield from (x for x in t.values() if isinstance(x, (int, float)))
            else:
                yield from _times(v)
    elif isinstance(node, list):
        for v in node:
            yield from _times(v)


@pytest.mark.slow
def test_benchmark_quick_numpy(tmp_path, capsys):
    out = tmp_path / "bench.json"
    mod = _load()
    assert mod.main(["--quick", "--backend", "numpy", "--repeat", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Exponent" in printed and "tv_aniso" in printed
    data = json.loads(out.read_text())
    tv = [r for r in data["results"] if r["model"].startswith("tv")]
    # two TV forms x two sizes x two dtypes, NumPy only
    assert len(tv) == 8
    assert {r["backend"] for r in tv} == {"numpy"}
    for r in tv:
        for key in ("copy", "grad", "hvp", "fista_step", "fista_iter", "fista_iter_ref", "grad_ref"):
            assert key in r["times"]
        assert r["fista_iterations"] > 1
        assert r["peak_memory_stacks"] > 0
    times = list(_times(data["results"]))
    assert len(times) >= 8 * 7
    assert all(math.isfinite(t) and t > 0 for t in times)
    lg = [r for r in data["results"] if r["model"] == "logistic"]
    assert len(lg) == 2 and {r["dtype"] for r in lg} == {"float32", "float64"}
    for r in lg:
        assert set(r["times"]) == {"copy", "grad", "value", "hvp", "grad_ref"}
        # the class-major gradient is the reference gradient, up to rounding
        assert r["grad_rel_diff_to_ref"] < (1e-4 if r["dtype"] == "float32" else 1e-12)
    assert "logistic regression" in printed
    assert len(data["exponents"]) == 4
    assert all(math.isfinite(f["fista_step"]) for f in data["exponents"])


def test_benchmark_rejects_unknown_backend():
    mod = _load()
    with pytest.raises(SystemExit):
        mod.main(["--backend", "tpu"])


def test_benchmark_smoke(tmp_path, capsys):
    """Default-run version: float64 only, no FoE, a small logistic problem."""
    out = tmp_path / "bench.json"
    mod = _load()
    assert mod.main(["--quick", "--backend", "numpy", "--dtype", "float64", "--repeat", "1", "--fista-iters", "4",
                     "--foe-backend", "none", "--logistic-rows", "300", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Exponent" in printed
    data = json.loads(out.read_text())
    tv = [r for r in data["results"] if r["model"].startswith("tv")]
    assert len(tv) == 4 and {r["dtype"] for r in tv} == {"float64"}
    assert not [r for r in data["results"] if r["model"] == "foe"]
    for r in tv:
        assert 4 <= r["fista_iterations"] <= 5 and r["ratios_to_copy"]["fista_iter"] > 0
        assert r["times"]["grad"]["best"] <= r["times"]["grad"]["median"]
    # the user's composition is timed against anisotropic TV, and finds the same kernel
    users = [r["user_composition"] for r in tv if "user_composition" in r]
    assert len(users) == 2 and all(r["model"] == "tv_aniso" for r in tv if "user_composition" in r)
    for u in users:
        assert u["kernel"] == ("FiniteDifference+SmoothedL1 (numba)" if importlib.util.find_spec("numba") else None)
        assert u["ratio"] == pytest.approx(u["fista_iter_user"] / u["fista_iter_builtin"])
        assert math.isfinite(u["ratio"]) and u["ratio"] > 0
    assert "User composition PotentialRegularizer(FiniteDifference(), SmoothedL1())" in printed
    (lg,) = [r for r in data["results"] if r["model"] == "logistic"]
    assert lg["settings"] == {"n": 300, "d": 144, "c": 10} and lg["grad_rel_diff_to_ref"] < 1e-12
    assert len(data["exponents"]) == 2 and all(math.isfinite(f["grad"]) for f in data["exponents"])
