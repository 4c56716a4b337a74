"""``scripts/reproduce_stn.py --quick``: STN against random and grid search at equal cost (tiny scale).

Checks what holds at that scale: the STN denoiser beats its noisy input on the
test images, the searches stay within the STN's cost with
``K = floor(C_STN / C_trial)`` trials, the continued random search starts with
the equal-cost trials, and metrics.json agrees with itself (means over seeds,
the best trial, the figures), and the MAID-learned FoE baseline beats the
noisy input on the same test images.  Skips when the Kodak images are absent.
"""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from varlearn._io import load_json
from varlearn.datasets import shared_data_dir

KODAK = shared_data_dir("kodak")
needs_kodak = pytest.mark.skipif(
    KODAK is None or not all((KODAK / f"kodim{i:02d}.png").is_file() for i in range(1, 25)),
    reason="Kodak images not found by varlearn.datasets.shared_data_dir (set VARLEARN_SHARED_DATA)")


def _script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_stn.py"
    spec = importlib.util.spec_from_file_location("reproduce_stn", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check(out, metrics, n_seeds):
    assert load_json(out / "metrics.json")["sigmas"].keys() == metrics["sigmas"].keys()
    for name in metrics["figures"].values():
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, name
    for key, entry in metrics["sigmas"].items():
        assert entry["sigma"] == pytest.approx(float(key) / 255)
        runs = entry["runs"]
        assert len(runs) == n_seeds and len({r["seed"] for r in runs}) == n_seeds
        for r in runs:
            stn = r["stn"]
            assert stn["test"]["psnr_mean"] > stn["test"]["noisy_psnr_mean"] + 0.5
            assert stn["n_steps"] == metrics["scale"]["steps"] and stn["status"] == "max_steps"
            assert stn["val_psnr"] == pytest.approx(max(h["val_psnr"] for h in stn["history"]), rel=1e-12)
            for kind in ("random", "grid"):
                s = r[kind]
                k = math.floor(stn["cost"] / s["trial_cost"] * (1 + 1e-12))
                assert s["n_trials"] == k >= 1
                eq = s["trials"][:k]
                assert s["cost"] == pytest.approx(sum(t["cost"] for t in eq)) and s["cost"] <= stn["cost"]
                assert s["val_psnr"] == pytest.approx(max(t["val_psnr"] for t in eq), rel=1e-12)
                assert all(t["cost"] == pytest.approx(s["trial_cost"]) for t in s["trials"])
                assert s["curve"]["best_val_psnr"] == pytest.approx(
                    list(np.maximum.accumulate([t["val_psnr"] for t in s["trials"]])))
            factor = metrics["scale"]["factor"]
            assert len(r["random"]["trials"]) == math.floor(factor * stn["cost"] / r["random"]["trial_cost"])
            assert len(r["grid"]["trials"]) == r["grid"]["n_trials"]  # a grid is not continued
            for t in r["random"]["trials"]:
                assert -1 <= t["values"]["noise"] <= 1 and 1e-7 * (1 - 1e-9) <= t["values"]["weight_decay"] <= 1e-3
        summ = entry["summary"]
        for m in ("stn", "random", "grid"):
            vals = [r[m]["test"]["psnr_mean"] for r in runs]
            assert summ[m]["test_psnr"]["mean"] == pytest.approx(np.mean(vals))
            assert summ[m]["test_psnr"]["std"] == pytest.approx(np.std(vals))
        assert summ["stn"]["beats_random"] == sum(r["stn"]["val_psnr"] > r["random"]["val_psnr"] for r in runs)
        assert summ["noisy_psnr"] == pytest.approx(runs[0]["stn"]["test"]["noisy_psnr_mean"])


def _check_foe(out, metrics):
    """The FoE baseline: MAID spent its budget, beats the noisy test images, and metrics.json holds it."""
    saved = load_json(out / "metrics.json")["sigmas"]
    budget = metrics["scale"]["foe_budget"]
    for key, entry in metrics["sigmas"].items():
        foe = entry["baselines"]["foe_maid"]
        assert saved[key]["baselines"]["foe_maid"]["test"]["psnr_mean"] == pytest.approx(foe["test"]["psnr_mean"])
        assert foe["status"] == "budget_exhausted" and budget <= foe["cost"] < 2 * budget
        assert len(foe["theta"]) == foe["scale"]["n_params"] and foe["scale"]["crop"] == metrics["scale"]["foe_crop"]
        assert foe["test"]["psnr_mean"] > entry["summary"]["noisy_psnr"] + 0.5
        assert foe["train"]["psnr_mean"] > foe["test"]["psnr_mean"] - 5  # the crops are denoised as well
        assert entry["summary"]["foe_maid"]["test_psnr"] == foe["test"]["psnr_mean"]


@needs_kodak
def test_quick_reproduction_without_tv(tmp_path):
    metrics = _script().main(["--quick", "--no-tv", "--out", str(tmp_path), "--data-dir", str(KODAK),
                              "--threads", "1"])
    _check(tmp_path, metrics, n_seeds=2)
    _check_foe(tmp_path, metrics)
    assert metrics["scale"]["test_images"] == [f"kodim0{i}.png" for i in range(1, 5)] + ["camera", "moon"]
    pool = {f"kodim{i:02d}.png" for i in range(5, 25)}
    assert set(metrics["scale"]["train_images"]) | set(metrics["scale"]["val_images"]) <= pool
    assert not set(metrics["scale"]["train_images"]) & set(metrics["scale"]["val_images"])


@needs_kodak
def test_baselines_only(tmp_path):
    """``--no-stn``: the FoE baseline alone (no runs, no figures), on the test noise of the full script."""
    metrics = _script().main(["--quick", "--no-stn", "--no-tv", "--out", str(tmp_path), "--data-dir", str(KODAK),
                              "--foe-budget", "1000"])
    _check_foe(tmp_path, metrics)
    for entry in metrics["sigmas"].values():
        assert entry["runs"] == [] and set(entry["baselines"]) == {"foe_maid"}
        assert set(entry["summary"]) == {"noisy_psnr", "foe_maid"} and entry["baselines"]["foe_maid"]["cost"] >= 1000
    assert metrics["figures"] == {}
    off = _script().main(["--quick", "--no-stn", "--no-tv", "--out", str(tmp_path / "off"), "--data-dir", str(KODAK),
                          "--foe-budget", "0"])
    assert all(e["baselines"] == {} for e in off["sigmas"].values())


@pytest.mark.slow
@needs_kodak
def test_quick_reproduction_with_tv_baselines(tmp_path):
    metrics = _script().main(["--quick", "--out", str(tmp_path), "--data-dir", str(KODAK), "--threads", "1"])
    _check(tmp_path, metrics, n_seeds=2)
    _check_foe(tmp_path, metrics)
    for entry in metrics["sigmas"].values():
        s = entry["summary"]
        assert s["chambolle"]["test_psnr"] > s["noisy_psnr"] and s["tv_maid"]["test_psnr"] > s["noisy_psnr"]


def test_bad_arguments_exit_2(tmp_path, capsys):
    mod = _script()
    for argv, word in ((["--sigmas", "x"], "--sigmas"), (["--sigmas", "0"], "--sigmas"),
                       (["--n-val", "3", "--n-train", "3"], "--n-val"), (["--patch-size", "100"], "--patch-size"),
                       (["--factor", "0.5"], "--factor"), (["--steps", "0"], "--steps"),
                       (["--foe-budget", "-1"], "--foe-budget"), (["--foe-crop", "2"], "--foe-crop"),
                       (["--foe-crop", "64"], "--foe-crop"), (["--foe-filters", "0"], "--foe-filters")):
        with pytest.raises(SystemExit) as exc:
            mod.main(["--quick", "--out", str(tmp_path / "o"), *argv])
        assert exc.value.code == 2
        assert word in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
