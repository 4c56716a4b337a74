"""scripts/reproduce_isgd.py --quick: ISGD against MAID at equal image cost, on TV and FoE (issue 14).

One quick run (4 Kodak images of 32x32 for TV, 8 crops of 24x24 with a 2-filter FoE) is shared by the
tests below; they check what the comparison rests on: every run spent the same image budget and every
compared θ was reached at that cost or less (within one step of it), the summaries and claims are those of
the recorded runs, the learning did something, and the files are consistent with each other.
"""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from varlearn.datasets import shared_data_dir

REPO = Path(__file__).resolve().parents[1]
KODAK = shared_data_dir("kodak")
pytestmark = pytest.mark.skipif(KODAK is None, reason="no local copy of the Kodak images (shared/data/kodak)")


def _script():
    spec = importlib.util.spec_from_file_location("reproduce_isgd", REPO / "scripts" / "reproduce_isgd.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("isgd")
    mod = _script()
    assert mod.main(["--quick", "--data-dir", str(KODAK), "--out", str(out), "--threads", "1"]) == 0
    return out, json.loads((out / "metrics.json").read_text()), mod


def _runs(metrics, name):
    return [r for r in metrics["problems"][name]["runs"] if not r.get("skipped")]


def _problem(quick, name):
    """The metrics block of problem ``name`` and its runs."""
    metrics = quick[1]
    return metrics["problems"][name], _runs(metrics, name)


@pytest.mark.parametrize("name", ["tv", "foe"])
def test_every_run_is_compared_at_equal_image_cost(quick, name):
    _, metrics, mod = quick
    block = metrics["problems"][name]
    budget = block["image_budget"]
    assert budget == mod.QUICK_BUDGET[name]
    runs = _runs(metrics, name)
    methods = {r["method"] for r in runs}
    assert methods == {"maid", "isgd"}
    optimizers = {(r["options"]["optimizer"], r["options"]["step_schedule"]) for r in runs if r["method"] == "isgd"}
    assert optimizers == {("sgd", "poly"), ("sgd", "constant"), ("adam", "poly"), ("adam", "constant")}
    for r in runs:
        # the run spent the budget (it stops after the step that reaches it) ...
        assert r["status"] == "budget_exhausted" and r["image_cost"] >= budget, r["label"]
        assert r["image_cost"] - budget <= r["max_step_cost"]
        # ... and each compared θ was reached at the fraction's cost or less, within one step of it
        assert [p["fraction"] for p in r["points"]] == metrics["fractions"]
        for p in r["points"]:
            assert p["target"] == pytest.approx(p["fraction"] * budget)
            assert p["cost"] <= p["target"] and p["target"] - p["cost"] <= r["max_step_cost"], (r["label"], p)
        if r["method"] == "isgd":  # small steps: the quarter-budget point is not θ0 by construction
            assert r["max_step_cost"] < budget / 4
    final = [r["points"][-1]["cost"] for r in runs]
    assert max(final) - min(final) <= max(r["max_step_cost"] for r in runs)
    # ISGD's image cost is per image: a batch of b images costs b per iteration, MAID's N per iteration
    n = block["scale"]["n_images"] if name == "tv" else block["scale"]["n_crops"]
    maid = next(r for r in runs if r["method"] == "maid")
    assert maid["image_cost"] % n == 0 and all(p["cost"] % n == 0 for p in maid["points"])
    b = next(r for r in runs if r["method"] == "isgd")["options"]["batch_size"]
    assert b < n


@pytest.mark.parametrize("name", ["tv", "foe"])
def test_summary_and_claims_are_those_of_the_runs(quick, name):
    metrics = quick[1]
    block, runs = _problem(quick, name)
    summary = block["summary"]
    assert set(summary) == {r["label"] for r in runs}
    for label, s in summary.items():
        mine = [r for r in runs if r["label"] == label]
        for i, frac in enumerate(metrics["fractions"]):
            values = [r["points"][i]["f_train"] for r in mine]
            assert s["f_median"][f"{frac:g}"] == pytest.approx(float(np.median(values)), rel=1e-12)
        for h, v in s["heldout_median"].items():
            assert v == pytest.approx(float(np.median([r["heldout"][h]["psnr_mean"] for r in mine])), rel=1e-12)
    c = block["claims"]["isgd_vs_maid"]
    isgd = {k: v["f_median"]["1"] for k, v in summary.items() if v["method"] == "isgd"}
    best = min(isgd, key=isgd.get)
    assert c["best_isgd"] == best
    assert c["f_difference_at_budget"] == pytest.approx(isgd[best] - summary["MAID"]["f_median"]["1"], rel=1e-12)
    assert c["lower_loss_at_budget"] == (isgd[best] < summary["MAID"]["f_median"]["1"])
    for pair in block["claims"]["adam_vs_sgd"]:
        assert pair["adam_better"] == (pair["adam"] < pair["sgd"])


@pytest.mark.parametrize("name", ["tv", "foe"])
def test_learning_improves_on_theta0_and_on_the_noisy_images(quick, name):
    block, runs = _problem(quick, name)
    f0 = block["f_theta0"]
    # every run's loss at the budget is below f(θ0), and the best run denoises the held-out images
    assert all(r["points"][-1]["f_train"] < f0 for r in runs), [(r["label"], r["points"][-1]["f_train"]) for r in runs]
    held = next(iter(block["noisy"].keys() - {"train"}))
    best = max(r["heldout"][held]["psnr_mean"] for r in runs)
    assert best > block["noisy"][held]["psnr_mean"] + 1.0
    # the evaluated θ of a 2-parameter TV run is stored and lies near the start for none of the runs
    if name == "tv":
        assert all(np.linalg.norm(np.array(r["theta"]) - np.array([-5.0, -5.0])) > 0.1 for r in runs)


def test_scale_and_figures_are_recorded(quick):
    out, metrics, _ = quick
    assert metrics["quick"] is True
    tv, foe = metrics["problems"]["tv"]["scale"], metrics["problems"]["foe"]["scale"]
    assert tv["n_images"] == 4 and tv["size"] == 32 and tv["quick"] is True
    assert foe["n_crops"] == len(foe["crops"]) == 8 and foe["crop"] == 24 and foe["n_filters"] == 2
    assert all(c.split(":")[0] in foe["train_images"] for c in foe["crops"])
    assert not set(foe["train_images"]) & set(foe["heldout"]["kodak1-4"])
    for name in ("tv", "foe"):
        png = out / metrics["problems"][name]["figure"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
