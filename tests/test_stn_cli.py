"""``varlearn stn`` and ``varlearn denoise`` with STN runs, and :mod:`varlearn.stn.io`.

Every run here is tiny (a few clean 40x40 images, 2-3 layer networks, a few
dozen steps); the default-size run that must beat its noisy input clearly is
marked slow and has a smoke version.
"""
import csv
import hashlib
import json
import math

import numpy as np
import pytest

from varlearn._io import load_json
from varlearn.bilevel.checkpoint import load_checkpoint
from varlearn.cli import main
from varlearn.datasets import builtin_images
from varlearn.stn import DnCNNSTN, VariationalSTN
from varlearn.stn import experiment as X
from varlearn.stn.hyperparameters import Hyperparameter, HyperParameters
from varlearn.stn.io import STNParamsError, denoise_stn, is_stn_params, load_stn, save_stn

TINY = ["--steps", "40", "--depth", "3", "--channels", "8", "--batch-size", "8", "--patch-size", "16",
        "--val-patch-size", "24", "--eval-every", "10", "--threads", "1", "--quiet", "--no-figures"]


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory):
    import imageio.v3 as iio

    d = tmp_path_factory.mktemp("clean")
    for name, img in zip(("camera", "moon", "coins", "astronaut", "brick"),
                         builtin_images(["camera", "moon", "coins", "astronaut", "brick"], size=40)):
        iio.imwrite(d / f"{name}.png", np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8))
    return d


@pytest.fixture(scope="module")
def stn_run(clean_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(["stn", "--clean", str(clean_dir), "--out", str(run), "--val", "2", "--warmup", "2", *TINY]) == 0
    return run


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ---------------------------------------------------------------------------- bad arguments
BAD = [
    (["--steps", "0"], "--steps"), (["--epochs", "-1"], "--epochs"), (["--budget", "0"], "--budget"),
    (["--time-limit", "nan"], "--time-limit"), (["--depth", "1"], "--depth"), (["--channels", "0"], "--channels"),
    (["--model", "vn", "--depth", "3"], "--depth"), (["--model", "vn", "--filter-size", "4"], "--filter-size"),
    (["--model", "vn", "--stages", "0"], "--stages"), (["--tune", "lambda"], "--tune"),
    (["--tune", "noise,noise"], "--tune"), (["--val", "0"], "--val"), (["--val", "5"], "--val"),
    (["--seed", "-1"], "--seed"), (["--sigma", "0"], "--sigma"), (["--lr", "0"], "--lr"),
    (["--hyper-lr", "inf"], "--hyper-lr"), (["--batch-size", "0"], "--batch-size"),
    (["--patch-size", "64"], "--patch-size"), (["--val-patch-size", "41"], "--val-patch-size"),
    (["--warmup", "-2"], "--warmup"), (["--eval-every", "0"], "--eval-every"),
    (["--baseline", "random"], "--baseline random"), (["--baseline", "grid", "--budget", "1e6"], "--baseline grid"),
    (["--grid-over", "dropout", "--baseline", "grid", "--budget", "1e6", "--steps", "3"], "--grid-over"),
    (["--model", "mlp"], "--model"), (["--threads", "0"], "--threads"), (["--size", "0"], "--size"),
]


@pytest.mark.parametrize("extra,flag", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_argument_exits_2_naming_it(clean_dir, tmp_path, capsys, extra, flag):
    argv = ["stn", "--clean", str(clean_dir), "--out", str(tmp_path / "r"), "--quiet", *extra]
    if "--size" in extra:
        argv = ["stn", "--out", str(tmp_path / "r"), "--quiet", *extra]
    assert main(argv) == 2
    assert flag in _err(capsys)
    assert not (tmp_path / "r" / "model.npz").exists()


def test_bad_folders_exit_2(clean_dir, stn_run, tmp_path, capsys):
    assert main(["stn", "--clean", str(tmp_path / "none"), "--out", str(tmp_path / "r")]) == 2
    assert "--clean" in _err(capsys)
    assert main(["stn", "--clean", str(clean_dir)]) == 2
    assert "--out" in _err(capsys)
    assert main(["stn", "--clean", str(clean_dir), "--out", str(stn_run)]) == 2  # not empty
    assert "--resume" in _err(capsys)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    assert main(["stn", "--clean", str(clean_dir), "--out", str(other), "--overwrite"]) == 2
    assert "--overwrite" in _err(capsys) and (other / "keep.txt").exists()
    assert main(["stn", "--resume", str(tmp_path / "nothing")]) == 2
    assert "--resume" in _err(capsys)
    assert main(["stn", "--resume", str(stn_run), "--depth", "4"]) == 2
    assert "--depth" in _err(capsys)
    assert main(["stn", "--baseline", "random", "--match", str(other), "--out", str(tmp_path / "b")]) == 2
    assert "--match" in _err(capsys)
    assert main(["stn", "--match", str(stn_run), "--out", str(tmp_path / "b")]) == 2
    assert "--match" in _err(capsys)


# ---------------------------------------------------------------------------- a run and its folder
def test_run_folder_contents(stn_run):
    cfg = load_json(stn_run / "config.json")
    rec = load_json(stn_run / "params.json")
    assert cfg["kind"] == "varlearn-stn-config" and cfg["mode"] == "stn"
    names = {f"{n}.png" for n in ("camera", "moon", "coins", "astronaut", "brick")}
    assert set(cfg["split"]["train"]) | set(cfg["split"]["val"]) == names
    assert not set(cfg["split"]["train"]) & set(cfg["split"]["val"]) and len(cfg["split"]["val"]) == 2
    res = rec["results"]
    assert res["n_steps"] == 40 and res["status"] == "max_steps" and res["success"] is True
    with open(stn_run / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30, 40]
    best = max(rows, key=lambda r: float(r["val_psnr"]))
    assert res["best_val_psnr"] == pytest.approx(float(best["val_psnr"]), rel=1e-12)
    # the λ applied is the one the selected weights were evaluated at
    assert rec["hyper"]["u"] == pytest.approx([float(best["u_noise"]), float(best["u_weight_decay"])], rel=1e-12)
    digest = hashlib.sha256((stn_run / "model.npz").read_bytes()).hexdigest()
    assert rec["weights"]["sha256"] == digest
    _assert_written_weights_are_the_best(stn_run)
    v = res["val_images"]
    assert v["names"] == cfg["split"]["val"] and len(v["psnr"]) == 2
    assert v["psnr_mean"] > v["noisy_psnr_mean"] + 1.0  # smoke: even 40 steps of a tiny net denoise


def _assert_written_weights_are_the_best(run):
    """model.npz holds the selected weights (the checkpoint's best/ arrays), not the last step's."""
    _, arrays = load_checkpoint(run / "checkpoint.npz")
    with np.load(run / "model.npz", allow_pickle=False) as weights:
        assert set(weights.files) == {k[5:] for k in arrays if k.startswith("best/")}
        for k in weights.files:
            np.testing.assert_array_equal(weights[k], arrays["best/" + k])


def test_written_model_is_the_best_evaluation_not_the_last(clean_dir, tmp_path):
    """A too-large learning rate makes the untrained network (step 0) the best: that one is written."""
    run = tmp_path / "run"
    assert main(["stn", "--clean", str(clean_dir), "--out", str(run), "--val", "2", "--warmup", "2", "--lr", "0.05",
                 *TINY]) == 0
    rec = load_json(run / "params.json")
    assert rec["results"]["best_step"] == 0 and rec["results"]["n_steps"] == 40
    _assert_written_weights_are_the_best(run)


def test_denoise_with_stn_run_equals_the_library(stn_run, clean_dir, tmp_path, capsys):
    import imageio.v3 as iio

    noisy_dir = tmp_path / "noisy"
    noisy_dir.mkdir()
    x = iio.imread(clean_dir / "moon.png") / 255.0
    y = np.clip(x + 0.1 * np.random.default_rng(3).standard_normal(x.shape), 0, 1)
    iio.imwrite(noisy_dir / "moon.png", np.rint(y * 255).astype(np.uint8))
    assert main(["denoise", str(noisy_dir), "--params", str(stn_run), "--out", str(tmp_path / "d"), "--quiet"]) == 0
    got = iio.imread(tmp_path / "d" / "moon.png")
    loaded = load_stn(stn_run)
    y8 = (iio.imread(noisy_dir / "moon.png") / 255.0).astype(np.float32)
    want = np.rint(np.clip(denoise_stn(y8, loaded.model, loaded.hyper).astype(np.float64), 0, 1) * 255)
    np.testing.assert_array_equal(got, want.astype(np.uint8))
    assert main(["denoise", str(noisy_dir), "--params", str(stn_run), "--out", str(tmp_path / "d"), "--quiet"]) == 2
    assert "--overwrite" in _err(capsys)


def test_resume_equals_uninterrupted(stn_run, clean_dir, tmp_path):
    a, b = stn_run, tmp_path / "b"  # the same arguments; b stops half-way and is resumed
    common = ["stn", "--clean", str(clean_dir), "--val", "2", "--warmup", "2", *TINY]  # warm-up independent of --steps
    half = [v if v != "40" else "20" for v in common]
    assert main(half + ["--out", str(b)]) == 0
    assert load_json(b / "params.json")["results"]["n_steps"] == 20
    assert main(["stn", "--resume", str(b), "--steps", "40", "--quiet", "--no-figures", "--threads", "1"]) == 0
    ra, rb = load_json(a / "params.json"), load_json(b / "params.json")
    assert ra["hyper"]["u"] == rb["hyper"]["u"] and ra["results"]["n_steps"] == rb["results"]["n_steps"] == 40
    assert ra["results"]["cost"] == rb["results"]["cost"]
    with np.load(a / "model.npz") as za, np.load(b / "model.npz") as zb:
        for k in za.files:
            np.testing.assert_array_equal(za[k], zb[k])


def test_baseline_match_is_equal_cost(stn_run, tmp_path):
    out = tmp_path / "rs"
    assert main(["stn", "--baseline", "random", "--match", str(stn_run), "--out", str(out), "--quiet",
                 "--threads", "1"]) == 0
    stn = load_json(stn_run / "params.json")["results"]
    res = load_json(out / "params.json")["results"]
    assert res["n_trials"] == math.floor(stn["cost"] / res["trial_cost"]) >= 1
    assert res["cost"] <= stn["cost"] and res["budget"] == stn["cost"]
    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == res["n_trials"]
    assert res["best_val_psnr"] == pytest.approx(max(float(r["val_psnr"]) for r in rows), rel=1e-12)
    for r in rows:  # the points lie in the search boxes
        assert -1.0 <= float(r["lam_noise"]) <= 1.0 and 1e-7 <= float(r["lam_weight_decay"]) <= 1e-3
    assert (out / "figures" / "cost.png").stat().st_size > 1000
    best = max(rows, key=lambda r: float(r["val_psnr"]))
    assert is_stn_params(out)
    assert load_stn(out).lam == pytest.approx({k: float(best[f"lam_{k}"]) for k in ("noise", "weight_decay")})


def test_vn_model_trains(clean_dir, tmp_path):
    out = tmp_path / "vn"
    argv = ["stn", "--clean", str(clean_dir), "--out", str(out), "--model", "vn", "--stages", "2", "--filters", "4",
            "--filter-size", "3", "--steps", "4", "--batch-size", "4", "--patch-size", "16", "--val-patch-size", "24",
            "--quiet", "--threads", "1"]
    assert main(argv) == 0
    rec = load_json(out / "params.json")
    assert rec["model_config"]["model"] == "vn" and rec["receptive_radius"] == 2 * 2 * 1
    assert all((out / "figures" / n).stat().st_size > 1000 for n in ("val_psnr.png", "schedules.png",
                                                                       "examples.png"))


@pytest.mark.slow
def test_default_short_run_clearly_beats_the_noisy_input(tmp_path):
    """The defaults (built-in images, 300 steps): a minute or two on 2 cores, several dB better than noisy."""
    out = tmp_path / "default"
    assert main(["stn", "--out", str(out), "--quiet"]) == 0
    v = load_json(out / "params.json")["results"]["val_images"]
    assert v["psnr_mean"] > v["noisy_psnr_mean"] + 4.0


# ---------------------------------------------------------------------------- varlearn.stn.io
def _hyper():
    return HyperParameters([Hyperparameter("noise", 0.3, (-1.5, 1.5), transform="identity"),
                            Hyperparameter("weight_decay", 1e-4, (1e-9, 1e-2), transform="log", per_example=False)])


def _gated(model):
    rng = np.random.default_rng(0)
    for k, v in model.params.items():
        if k.endswith(".A"):  # non-zero hypernet maps: λ changes the output
            v[...] = 0.3 * rng.standard_normal(v.shape)
    return model


@pytest.mark.parametrize("model", [DnCNNSTN(2, depth=3, channels=4, rng=1),
                                   VariationalSTN(2, n_stages=2, n_filters=3, size=3, rng=1)], ids=["dncnn", "vn"])
def test_tiled_denoising_equals_one_pass(model):
    _gated(model)
    y = np.random.default_rng(1).random((2, 37, 29)).astype(np.float32)
    full = denoise_stn(y, model, _hyper(), tile=1000)
    np.testing.assert_allclose(denoise_stn(y, model, _hyper(), tile=8), full, atol=2e-6)
    assert np.abs(denoise_stn(y, model, _hyper(), values={"noise": -1.0}) - full).max() > 1e-4  # λ is applied
    np.testing.assert_array_equal(denoise_stn(y[0], model, _hyper(), tile=1000), full[0])


def test_save_load_round_trip_and_refusals(tmp_path):
    model, hy = _gated(DnCNNSTN(2, depth=3, channels=4, rng=2)), _hyper()
    rec = save_stn(tmp_path, model, hy, sigma=0.1, values={"noise": -0.25}, results={"x": 1})
    assert rec["lam"]["noise"] == pytest.approx(-0.25) and hy.values()["noise"] == pytest.approx(0.3)
    loaded = load_stn(tmp_path)
    y = np.random.default_rng(0).random((1, 20, 20)).astype(np.float32)
    np.testing.assert_array_equal(denoise_stn(y, loaded.model, loaded.hyper),
                                  denoise_stn(y, model, hy, values={"noise": -0.25}))
    assert loaded.sigma == 0.1 and loaded.record["results"] == {"x": 1}
    with pytest.raises(ValueError, match="lam are written"):
        save_stn(tmp_path, model, hy, sigma=0.1, lam={})
    with pytest.raises(ValueError, match="sigma"):
        save_stn(tmp_path, model, hy, sigma=-1)
    p = tmp_path / "params.json"
    good = p.read_text()
    edited = json.loads(good)
    edited["lam"]["noise"] = 0.9
    p.write_text(json.dumps(edited))
    with pytest.raises(STNParamsError, match="lam.noise"):
        load_stn(tmp_path)
    p.write_text(good)
    w = tmp_path / "model.npz"
    w.write_bytes(w.read_bytes()[:-3] + b"xyz")
    with pytest.raises(STNParamsError, match="checksum"):
        load_stn(tmp_path)
    w.unlink()
    with pytest.raises(STNParamsError, match="weights file"):
        load_stn(tmp_path)
    p.write_text(json.dumps({"kind": "varlearn-params"}))
    assert not is_stn_params(tmp_path)
    with pytest.raises(STNParamsError, match="not a varlearn STN"):
        load_stn(tmp_path)


def test_split_and_hyper_helpers():
    tr, va = X.split_by_image(10, 3, seed=4)
    assert len(va) == 3 and sorted(tr + va) == list(range(10)) and X.split_by_image(10, 3, seed=4) == (tr, va)
    assert X.split_by_image(10, 3, seed=5) != (tr, va)
    with pytest.raises(ValueError, match="n_val"):
        X.split_by_image(4, 4, seed=0)
    hy = X.make_hyper(["weight_decay", "noise"], init={"noise": 0.5})
    assert hy.names == ["weight_decay", "noise"] and hy.values()["noise"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="lambda"):
        X.make_hyper(["lambda"])
    with pytest.raises(ValueError, match="not tuned"):
        X.make_hyper(["noise"], init={"dropout": 0.1})


def test_hyper_at_row_takes_the_rows_lambda():
    hy = X.make_hyper(["noise", "weight_decay"])
    row = {"u_noise": -0.4, "u_weight_decay": math.log(3e-6), "sigma_noise": 0.2, "sigma_weight_decay": 0.7}
    h = X.hyper_at_row(hy, row)
    assert h.values() == pytest.approx({"noise": -0.4, "weight_decay": 3e-6})
    assert h.sigma == pytest.approx([0.2, 0.7])
    assert hy.values() == pytest.approx({"noise": 0.0, "weight_decay": 1e-5})  # the container is not changed


def test_time_limit_is_the_training_time(clean_dir, tmp_path):
    """--time-limit 1 trains for (at least, and about) one second, then reports the limit."""
    out = tmp_path / "tl"
    argv = ["stn", "--clean", str(clean_dir), "--out", str(out), "--time-limit", "1", *TINY[2:]]
    assert main(argv) == 0
    res = load_json(out / "params.json")["results"]
    assert res["status"] == "time_limit" and res["success"] is False
    assert 1.0 <= res["wall_time"] < 30.0  # a limit counted twice stopped at half of it
