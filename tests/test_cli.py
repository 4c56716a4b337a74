"""The ``varlearn`` command line: learn -> params/history/figures -> denoise, resume after SIGKILL, bad input.

The defects of issue 9 have one test each further down (noisy pairs and --size, the PSNR convention,
honest success, --overwrite of a foreign folder, history.csv while the run goes, Ctrl-C in the final
phase, SIGTERM, --threads for numba and BLAS).
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

import varlearn.cli.final as cli_final
import varlearn.cli.learn as cli_learn
from varlearn.backend import cupy_usable
from varlearn.bilevel import HISTORY_FIELDS, CheckpointError, load_checkpoint
from varlearn.cli import main

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASE_FIGURES = ("loss.png", "accuracy.png", "steps.png", "psnr.png", "examples.png")


# --------------------------------------------------------------------------- synthetic data


def piecewise_constant(size, rng, n_rect=3):
    img = np.full((size, size), 0.2)
    for _ in range(n_rect):
        r0, r1 = np.sort(rng.integers(0, size, 2))
        c0, c1 = np.sort(rng.integers(0, size, 2))
        img[r0:r1 + 2, c0:c1 + 2] = rng.uniform(0.1, 0.9)
    return img


def to_uint8(img):
    return np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_pairs(root, n=2, size=24, sigma=0.1, seed=1):
    """clean/imK.png and noisy/imK.png (8-bit), piecewise-constant images with Gaussian noise."""
    rng = np.random.default_rng(seed)
    clean_dir, noisy_dir = Path(root) / "clean", Path(root) / "noisy"
    clean_dir.mkdir(parents=True)
    noisy_dir.mkdir(parents=True)
    for i in range(n):
        img = piecewise_constant(size, rng)
        iio.imwrite(clean_dir / f"im{i}.png", to_uint8(img))
        iio.imwrite(noisy_dir / f"im{i}.png", to_uint8(img + sigma * rng.standard_normal(img.shape)))
    return clean_dir, noisy_dir


def psnr(x, ref):
    return 10 * np.log10(1.0 / np.mean((np.asarray(x, float) - np.asarray(ref, float)) ** 2))


def stderr_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def no_temp_files(folder):
    return [p for p in Path(folder).rglob(".*.tmp")]


LEARN_TINY = ("--max-iter", "3", "--threads", "1", "--quiet")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny learning run (2 pairs of 24x24 images, 3 MAID iterations) shared by several tests."""
    root = tmp_path_factory.mktemp("tiny")
    clean, noisy = write_pairs(root)
    run = root / "run"
    rc = main(["learn", "--clean", str(clean), "--noisy", str(noisy), "--out", str(run), *LEARN_TINY])
    assert rc == 0
    return {"root": root, "clean": clean, "noisy": noisy, "run": run}


# --------------------------------------------------------------------------- end to end


def test_learn_writes_a_complete_run_folder(tiny_run):
    run = tiny_run["run"]
    params = json.loads((run / "params.json").read_text())
    meta, arrays = load_checkpoint(run / "checkpoint.npz")
    # θ survives the JSON round trip exactly and equals the checkpoint's
    assert np.array_equal(np.array(params["theta"]), arrays["theta"])
    assert params["model"] == "tv" and params["model_config"] == {"isotropic": True}
    # stopped on --max-iter: not "success" (the requested accuracy was not met), but exit 0 and a warning
    assert params["nit"] == meta["k"] == 3 and params["status"] == "maxiter" and params["success"] is False
    assert len(params["warnings"]) == 1 and "--max-iter" in params["warnings"][0]
    assert 1 <= params["steps_accepted"] <= 3 and params["theta"] != params["theta0"]
    assert params["params"]["weight"] == pytest.approx(np.exp(params["theta"][0]), rel=1e-12)
    assert params["data"]["source"] == "pairs" and params["data"]["names"] == ["im0", "im1"]
    assert params["data"]["shape"] == [24, 24] and params["method"] == "maid"
    assert params["options"]["maxiter"] == 3 and "numpy" in params["versions"]
    assert params["psnr"]["learned_mean"] > params["psnr"]["noisy_mean"] + 2
    assert "[0, 1]" in params["psnr"]["convention"] and "no clipping" in params["psnr"]["convention"]
    names = [r["name"] for r in params["psnr"]["per_image"]]
    assert names == ["im0", "im1"] and params["files"]["figures"] == [f"figures/{n}" for n in BASE_FIGURES]
    # history.csv: header + one row per outer iteration plus the start
    with open(run / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(HISTORY_FIELDS) and len(rows) == 4
    assert [int(r["iter"]) for r in rows] == [0, 1, 2, 3]
    assert float(rows[-1]["fun"]) == pytest.approx(params["fun"], rel=1e-12)
    # figures: non-empty PNGs
    for name in BASE_FIGURES:
        data = (run / "figures" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
    config = json.loads((run / "config.json").read_text())
    assert config["theta0"] == params["theta0"] == [-5.0, -5.0]
    assert not no_temp_files(run)


def test_denoise_folder_and_single_files(tiny_run, tmp_path, capsys):
    rng = np.random.default_rng(7)
    clean = piecewise_constant(32, rng, n_rect=4)
    noisy = to_uint8(clean + 0.1 * rng.standard_normal(clean.shape))
    inputs = tmp_path / "in"
    inputs.mkdir()
    iio.imwrite(inputs / "square.png", noisy)
    iio.imwrite(inputs / "other.png", noisy[::-1].copy())
    iio.imwrite(inputs / "deep.png", (noisy.astype(np.uint16) * 257))  # 16-bit input
    (inputs / "notes.txt").write_text("not an image: ignored in folders")
    params = tiny_run["run"] / "params.json"

    out = tmp_path / "out"
    assert main(["denoise", "--params", str(params), str(inputs), "--out", str(out), "--threads", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["deep.png", "other.png", "square.png"]
    den = iio.imread(out / "square.png")
    assert den.dtype == np.uint8 and den.shape == (32, 32)
    assert psnr(den / 255.0, clean) > psnr(noisy / 255.0, clean) + 2
    deep = iio.imread(out / "deep.png")
    assert deep.dtype == np.uint16 and np.abs(deep / 65535.0 - den / 255.0).max() < 2.5 / 255
    assert "denoised 3 image(s)" in capsys.readouterr().out

    # single files, and the run folder instead of params.json
    out2 = tmp_path / "out2"
    assert main(["denoise", "--params", str(tiny_run["run"]), str(inputs / "square.png"), str(inputs / "other.png"),
                 "--out", str(out2), "--quiet"]) == 0
    assert sorted(p.name for p in out2.iterdir()) == ["other.png", "square.png"]
    np.testing.assert_array_equal(iio.imread(out2 / "square.png"), den)

    # existing outputs are kept unless --overwrite
    assert main(["denoise", "--params", str(params), str(inputs / "square.png"), "--out", str(out2)]) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and "exists" in lines[0] and "--overwrite" in lines[0]
    assert main(["denoise", "--params", str(params), str(inputs / "square.png"), "--out", str(out2),
                 "--overwrite", "--quiet"]) == 0
    assert not no_temp_files(out) and not no_temp_files(out2)


def test_learn_foe_with_sigma_draws_filters(tmp_path):
    clean, _ = write_pairs(tmp_path, n=2, size=16)
    run = tmp_path / "foe"
    assert main(["learn", "--model", "foe", "--filters", "2", "--filter-size", "3", "--clean", str(clean),
                 "--sigma", "0.1", "--out", str(run), "--max-iter", "2", "--threads", "1", "--quiet"]) == 0
    params = json.loads((run / "params.json").read_text())
    assert params["model"] == "foe" and params["model_config"] == {"n_filters": 2, "size": 3}
    assert len(params["theta"]) == 1 + 2 * 2 + 2 * 9 and len(params["params"]["filters"]) == 2
    assert params["data"]["source"] == "sigma" and params["data"]["sigma"] == 0.1
    assert (run / "figures" / "filters.png").read_bytes().startswith(PNG_MAGIC)
    # θ0 holds the filters drawn from --seed (default 0); the natural units are θ's, the filters included
    from varlearn import FieldOfExperts

    theta0 = FieldOfExperts(n_filters=2, size=3, rng=0).init_params()
    assert params["theta0"] == theta0.tolist() and params["theta"] != params["theta0"]
    np.testing.assert_array_equal(np.array(params["params"]["filters"]).ravel(), params["theta"][5:])


def test_info_reports_versions_threads_and_gpu(capsys):
    import varlearn
    from varlearn import _accel

    assert main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"varlearn {varlearn.__version__}" and f"numpy {np.__version__}" in lines
    threads = [line for line in lines if line.startswith("threads: ")]
    assert len(threads) == 1 and f"-> {_accel.get_threads()} kernel thread(s)" in threads[0]
    gpu = [line for line in lines if line.startswith("GPU: ")]
    assert gpu == ["GPU: usable (--backend cupy)"] if cupy_usable() else gpu[0].startswith("GPU: not usable: ")


# --------------------------------------------------------------------------- interruption


def _checkpoint_k(path):
    try:
        meta, _ = load_checkpoint(path)
    except CheckpointError:
        return -1
    return meta["k"]


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    # 20 outer iterations of ~30 ms each here: the kill lands well inside the run
    clean, noisy = write_pairs(tmp_path, n=2, size=64, seed=3)
    common = ["--clean", str(clean), "--noisy", str(noisy), "--max-iter", "20", "--threads", "1", "--quiet",
              "--checkpoint-interval", "0"]
    run = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "varlearn.cli", "learn", *common, "--out", str(run)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = run / "checkpoint.npz"
    k = -1
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            k = _checkpoint_k(ckpt) if ckpt.exists() else -1
            if k >= 2:
                break
            time.sleep(0.003)
        running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=30)
    assert running, f"the run ended before it could be killed: {err.decode()[-500:]}"
    assert 2 <= _checkpoint_k(ckpt) < 20
    assert not (run / "params.json").exists()
    json.loads((run / "config.json").read_text())  # complete

    # an existing run folder is refused without --resume / --overwrite
    assert main(["learn", *common, "--out", str(run)]) == 2

    # resume in a fresh interpreter through ``python -m varlearn``
    done = subprocess.run([sys.executable, "-m", "varlearn", "learn", "--resume", str(run), "--threads", "1",
                           "--quiet"], cwd=tmp_path, env=env, capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode()[-800:]

    full = tmp_path / "full"
    assert main(["learn", *common, "--out", str(full)]) == 0

    resumed = json.loads((run / "params.json").read_text())
    uninterrupted = json.loads((full / "params.json").read_text())
    assert resumed["nit"] == uninterrupted["nit"] == 20
    np.testing.assert_allclose(resumed["theta"], uninterrupted["theta"], rtol=0, atol=1e-10)
    assert resumed["n_lower_iter"] == uninterrupted["n_lower_iter"]
    meta, arrays = load_checkpoint(ckpt)
    assert meta["k"] == 20 and np.array_equal(arrays["theta"], np.array(resumed["theta"]))
    with open(run / "history.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 21
    for name in BASE_FIGURES:
        assert (run / "figures" / name).read_bytes().startswith(PNG_MAGIC)
    assert not no_temp_files(run)


# --------------------------------------------------------------------------- bad input: exit 2, one line


def _expect_usage_error(capsys, argv, *words):
    rc = main([str(a) for a in argv])
    lines = stderr_lines(capsys)
    assert rc == 2, lines
    assert len(lines) == 1, lines
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    return lines[0]


def test_mismatched_file_names(tmp_path, capsys):
    clean, noisy = write_pairs(tmp_path)
    (noisy / "im1.png").rename(noisy / "zzz.png")
    _expect_usage_error(capsys, ["learn", "--clean", clean, "--noisy", noisy, "--out", tmp_path / "r"],
                        "do not pair up", "im1", "zzz")
    assert not (tmp_path / "r").exists()


def test_mismatched_sizes(tmp_path, capsys):
    clean, noisy = write_pairs(tmp_path)
    iio.imwrite(noisy / "im1.png", np.zeros((20, 24), np.uint8))
    _expect_usage_error(capsys, ["learn", "--clean", clean, "--noisy", noisy, "--out", tmp_path / "r"],
                        "im1", "24x24", "20x24")


def test_non_image_file(tmp_path, capsys):
    clean, noisy = write_pairs(tmp_path)
    (clean / "im1.png").write_bytes(b"this is not a PNG file")
    _expect_usage_error(capsys, ["learn", "--clean", clean, "--noisy", noisy, "--out", tmp_path / "r"],
                        "im1.png", "not an image")


def test_empty_folder(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_usage_error(capsys, ["learn", "--clean", empty, "--sigma", "0.1", "--out", tmp_path / "r"],
                        "no image files", str(empty))


def test_nan_in_float_tiff(tmp_path, capsys):
    clean = tmp_path / "clean"
    clean.mkdir()
    img = np.full((24, 24), 0.5, np.float32)
    img[3, 4] = np.nan
    iio.imwrite(clean / "a.tif", img, plugin="tifffile")
    _expect_usage_error(capsys, ["learn", "--clean", clean, "--sigma", "0.1", "--out", tmp_path / "r"],
                        "a.tif", "NaN")


def test_unknown_model(tmp_path, capsys):
    _expect_usage_error(capsys, ["learn", "--model", "bm3d", "--out", tmp_path / "r"], "--model", "bm3d")


@pytest.mark.skipif(cupy_usable(), reason="CuPy is usable here")
def test_gpu_requested_without_cupy(tmp_path, capsys):
    _expect_usage_error(capsys, ["learn", "--backend", "cupy", "--out", tmp_path / "r"], "--backend cupy",
                        "not usable")
    _expect_usage_error(capsys, ["denoise", "--backend", "cupy", "--params", tmp_path / "p.json", tmp_path,
                                 "--out", tmp_path / "o"], "not usable")


@pytest.mark.parametrize("sigma", ["-0.1", "nan", "0"])
def test_bad_sigma(tmp_path, capsys, sigma):
    clean, _ = write_pairs(tmp_path)
    _expect_usage_error(capsys, ["learn", "--clean", clean, f"--sigma={sigma}", "--out", tmp_path / "r"], "--sigma")


@pytest.mark.parametrize("argv, words", [
    (["--clean", "{clean}"], ["--noisy", "--sigma"]),
    (["--noisy", "{noisy}"], ["--noisy needs --clean"]),
    (["--clean", "{clean}", "--noisy", "{noisy}", "--sigma", "0.1"], ["not both"]),
    (["--clean", "{root}/missing", "--sigma", "0.1"], ["--clean", "no such folder"]),
    (["--step0", "-1"], ["--step0"]),
    (["--max-iter", "0"], ["--max-iter"]),
    (["--method", "hoag", "--delta0", "0.1"], ["--delta0", "hoag"]),
    (["--model", "foe", "--filter-size", "4"], ["--filter-size", "odd"]),
    (["--model", "tv", "--filters", "3"], ["--filters", "foe"]),
    (["--size", "0"], ["--size"]),
    (["--images", "camera,nosuchimage"], ["nosuchimage"]),
    (["--clean", "{clean}", "--sigma", "0.1", "--crop", "40"], ["crop", "24x24"]),
    (["--dtype", "float16"], ["--dtype", "float16"]),
])
def test_bad_learn_arguments(tmp_path, capsys, argv, words):
    clean, noisy = write_pairs(tmp_path)
    fill = {"clean": str(clean), "noisy": str(noisy), "root": str(tmp_path)}
    argv = [a.format(**fill) for a in argv]
    extra = [] if "--max-iter" in argv else ["--max-iter", "1"]
    _expect_usage_error(capsys, ["learn", *argv, "--out", tmp_path / "r", *extra, "--quiet"], *words)
    assert not (tmp_path / "r").exists()


def test_existing_out_and_resume_errors(tiny_run, tmp_path, capsys):
    run = tiny_run["run"]
    _expect_usage_error(capsys, ["learn", "--out", run], "not empty", "--resume", "--overwrite")
    _expect_usage_error(capsys, ["learn", "--resume", tmp_path], "config.json")
    _expect_usage_error(capsys, ["learn", "--resume", tmp_path / "nowhere"], "no such folder")
    _expect_usage_error(capsys, ["learn", "--resume", run, "--model", "foe"], "--model", "cannot be changed")
    _expect_usage_error(capsys, ["learn"], "--out")
    # a corrupted checkpoint is reported, never loaded
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((run / "config.json").read_bytes())
    (broken / "checkpoint.npz").write_bytes((run / "checkpoint.npz").read_bytes()[:200])
    _expect_usage_error(capsys, ["learn", "--resume", broken, "--quiet"], "checkpoint", "truncated or corrupted")
    (broken / "config.json").write_text("{not json")
    _expect_usage_error(capsys, ["learn", "--resume", broken], "config.json", "not valid JSON")


def test_denoise_bad_input(tiny_run, tmp_path, capsys):
    params = tiny_run["run"] / "params.json"
    img = tmp_path / "a.png"
    iio.imwrite(img, np.zeros((24, 24), np.uint8))
    _expect_usage_error(capsys, ["denoise", "--params", tmp_path / "none.json", img, "--out", tmp_path / "o"],
                        "no such file")
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "varlearn-params", "model": "tv", "model_config": {}, "theta": [1, 2, 3]}')
    _expect_usage_error(capsys, ["denoise", "--params", bad, img, "--out", tmp_path / "o"], "theta", "3")
    _expect_usage_error(capsys, ["denoise", "--params", params, tmp_path / "missing.png", "--out", tmp_path / "o"],
                        "missing.png", "no such file")
    junk = tmp_path / "junk.png"
    junk.write_text("no image")
    _expect_usage_error(capsys, ["denoise", "--params", params, junk, "--out", tmp_path / "o"], "junk.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_usage_error(capsys, ["denoise", "--params", params, empty, "--out", tmp_path / "o"], "no image files")
    _expect_usage_error(capsys, ["denoise", "--params", params, img, "--out", tmp_path / "o", "--tol", "-1"],
                        "--tol")
    _expect_usage_error(capsys, ["denoise", "--params", params, img, "--out", tmp_path / "o", "--bit-depth", "0"],
                        "--bit-depth must be", "got 0")
    # θ is authoritative: a params.json whose natural units were edited is refused, naming the field
    edited = json.loads(params.read_text())
    edited["params"]["weight"] *= 10
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    _expect_usage_error(capsys, ["denoise", "--params", tmp_path / "edited.json", img, "--out", tmp_path / "o"],
                        "params.weight", "disagrees with theta", "authoritative")
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- issue 9: quick runs and their helpers

FAST = ("--threads", "1", "--no-figures", "--checkpoint-interval", "0")


@pytest.fixture
def pairs16(tmp_path):
    """Two 16x16 pairs: every learning run on them takes well under a second (no figures)."""
    return write_pairs(tmp_path, n=2, size=16, seed=5)


def learn_argv(pairs, out, *extra):
    clean, noisy = pairs
    return ["learn", "--clean", str(clean), "--noisy", str(noisy), "--out", str(out), *FAST, *extra]


def on_iteration(monkeypatch, k, action, seen=None):
    """Run ``action()`` in the optimiser's callback after outer iteration ``k`` (its checkpoint is written).

    ``seen``: a list that gets the iteration number of every callback.
    """
    real = cli_learn.minimize_bilevel

    def wrapped(*args, callback=None, **kwargs):
        def cb(r):
            callback(r)
            if seen is not None:
                seen.append(r.nit)
            if r.nit == k:
                action()

        return real(*args, callback=cb, **kwargs)

    monkeypatch.setattr(cli_learn, "minimize_bilevel", wrapped)


def ctrl_c():
    raise KeyboardInterrupt


def history_rows(run):
    with open(Path(run) / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_quick_interrupt_then_resume_matches_an_uninterrupted_run(pairs16, tmp_path, monkeypatch, capsys):
    """Smoke version of the SIGKILL test (in-process Ctrl-C after iteration 3 of 6, then --resume)."""
    run = tmp_path / "cut"
    on_iteration(monkeypatch, 3, ctrl_c)
    assert main(learn_argv(pairs16, run, "--max-iter", "6", "--quiet")) == 130
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("varlearn: interrupted (Ctrl-C): ")
    assert f"varlearn learn --resume {run}" in lines[0] and "checkpoint" in lines[0]
    assert load_checkpoint(run / "checkpoint.npz")[0]["k"] == 3 and not (run / "params.json").exists()
    monkeypatch.undo()
    assert main(["learn", "--resume", str(run), *FAST, "--quiet"]) == 0
    full = tmp_path / "full"
    assert main(learn_argv(pairs16, full, "--max-iter", "6", "--quiet")) == 0
    resumed, uninterrupted = (json.loads((r / "params.json").read_text()) for r in (run, full))
    assert resumed["nit"] == uninterrupted["nit"] == 6
    np.testing.assert_allclose(resumed["theta"], uninterrupted["theta"], rtol=0, atol=1e-10)
    assert resumed["n_lower_iter"] == uninterrupted["n_lower_iter"]
    assert [int(r["iter"]) for r in history_rows(run)] == list(range(7))
    assert resumed["files"]["figures"] == [] and not (run / "figures").exists()


def test_noisy_pairs_cannot_be_resized(pairs16, tmp_path, capsys, monkeypatch):
    """Resizing noisy images averages the noise away: --size is refused with --noisy before any image is read."""
    import varlearn.datasets

    def no_loading(*args, **kwargs):
        raise AssertionError("the images were read before the refusal")

    monkeypatch.setattr(varlearn.datasets, "load_pairs", no_loading)
    line = _expect_usage_error(capsys, learn_argv(pairs16, tmp_path / "r", "--size", "8"), "--size 8x8",
                               "--noisy", "noise", "--crop")
    assert line.startswith("varlearn: error: ")
    assert not (tmp_path / "r").exists()
    monkeypatch.undo()
    # a crop keeps the noise as it is: accepted
    assert main(learn_argv(pairs16, tmp_path / "c", "--crop", "12", "--max-iter", "1", "--quiet")) == 0
    params = json.loads((tmp_path / "c" / "params.json").read_text())
    assert params["data"]["shape"] == [12, 12] and params["data"]["crop"] == [12, 12]
    assert params["data"]["size"] is None


def test_readme_never_resizes_noisy_pairs():
    text = (REPO / "README.md").read_text()
    for line in text.splitlines():
        if "varlearn learn" in line and "--noisy" in line:
            assert "--size" not in line, line


def test_summary_states_the_psnr_convention(pairs16, tmp_path, capsys):
    assert main(learn_argv(pairs16, tmp_path / "r", "--max-iter", "1")) == 0
    out = capsys.readouterr().out
    assert "mean PSNR" in out and "images in [0, 1], not clipped" in out
    params = json.loads((tmp_path / "r" / "params.json").read_text())
    # the reported value is the unclipped PSNR of the noisy images (the noise here overshoots [0, 1] nowhere
    # after 8-bit rounding, so this is the plain definition)
    clean = np.stack([iio.imread(pairs16[0] / f"im{i}.png") / 255.0 for i in range(2)])
    noisy = np.stack([iio.imread(pairs16[1] / f"im{i}.png") / 255.0 for i in range(2)])
    assert params["psnr"]["noisy_mean"] == pytest.approx(np.mean([psnr(noisy[i], clean[i]) for i in range(2)]),
                                                         rel=1e-12)


def test_a_run_stopped_on_a_limit_warns_and_exits_0(pairs16, tmp_path, capsys):
    assert main(learn_argv(pairs16, tmp_path / "r", "--max-iter", "2", "--quiet")) == 0
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("varlearn: warning: ")
    assert "maxiter" in lines[0] and "--max-iter" in lines[0] and "requested accuracy" in lines[0]
    assert main(learn_argv(pairs16, tmp_path / "b", "--budget", "150", "--quiet")) == 0
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and "budget_exhausted" in lines[0] and "--budget" in lines[0]
    params = json.loads((tmp_path / "b" / "params.json").read_text())
    assert params["status"] == "budget_exhausted" and params["success"] is False


def test_a_run_without_an_accepted_step_says_theta_is_theta0(pairs16, tmp_path, capsys):
    # a first step of 1e6 is rejected by every backtracking try: θ stays θ0
    assert main(learn_argv(pairs16, tmp_path / "r", "--max-iter", "1", "--step0", "1e6", "--quiet")) == 0
    lines = stderr_lines(capsys)
    assert len(lines) == 2 and "maxiter" in lines[0]
    assert lines[1].startswith("varlearn: warning: no step was accepted") and "θ0" in lines[1]
    params = json.loads((tmp_path / "r" / "params.json").read_text())
    assert params["theta"] == params["theta0"] == [-5.0, -5.0] and params["steps_accepted"] == 0
    assert params["success"] is False and any("no step was accepted" in w for w in params["warnings"])


def test_outcome_of_each_status():
    from varlearn.bilevel import minimize_bilevel  # noqa: F401  (the statuses below are minimize_bilevel's)
    from varlearn.results import Result

    rows = [{"iter": 0, "accepted": None}, {"iter": 1, "accepted": True}]
    opts = {"max_iter": 1, "budget": 10.0, "time_limit": 5.0}
    for status, lib_success, success, exit_ok, n_lines in [
            ("gradient_tol", True, True, True, 0), ("accuracy_floor", True, True, True, 0),  # certified
            ("accuracy_floor", False, False, True, 1),
            ("maxiter", True, False, True, 1), ("maxiter", False, False, True, 1),  # old and new library flag
            ("budget_exhausted", True, False, True, 1), ("time_limit", False, False, True, 1),
            ("linesearch_failed", False, False, False, 0), ("lower_failed", False, False, False, 0)]:
        res = Result(status=status, success=lib_success, history=rows, nit=1, options=opts)
        got = cli_final.outcome(res)
        assert got[:2] == (success, exit_ok) and len(got[2]) == n_lines, (status, lib_success, got)
    none_accepted = Result(status="maxiter", success=True, history=[rows[0], {"iter": 1, "accepted": False}],
                           nit=1, options=opts)
    assert "no step was accepted" in cli_final.outcome(none_accepted)[2][-1]


def test_overwrite_refuses_a_folder_that_is_not_a_varlearn_run(pairs16, tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"my": "own config"}')
    (foreign / "history.csv").write_text("a,b\n1,2\n")
    (foreign / "notes.txt").write_text("keep me")
    _expect_usage_error(capsys, learn_argv(pairs16, foreign, "--overwrite"), "--overwrite", "not a varlearn run",
                        str(foreign))
    assert (foreign / "config.json").read_text() == '{"my": "own config"}'
    assert (foreign / "history.csv").read_text() == "a,b\n1,2\n" and (foreign / "notes.txt").exists()
    (foreign / "config.json").unlink()
    _expect_usage_error(capsys, learn_argv(pairs16, foreign, "--overwrite"), "not a varlearn run")
    assert (foreign / "history.csv").exists()

    # a varlearn run is replaced; files varlearn did not write stay
    run = tmp_path / "run"
    assert main(learn_argv(pairs16, run, "--max-iter", "1", "--quiet")) == 0
    (run / "notes.txt").write_text("keep me too")
    first = json.loads((run / "config.json").read_text())
    assert main(learn_argv(pairs16, run, "--max-iter", "2", "--overwrite", "--quiet")) == 0
    params = json.loads((run / "params.json").read_text())
    assert params["nit"] == 2 and (run / "notes.txt").read_text() == "keep me too"
    assert json.loads((run / "config.json").read_text())["options"]["maxiter"] == 2 != first["options"]["maxiter"]
    capsys.readouterr()


def test_history_csv_is_written_while_the_run_goes(pairs16, tmp_path, monkeypatch):
    run = tmp_path / "r"
    seen = {}

    def look():
        seen["rows"] = history_rows(run)
        raise KeyboardInterrupt

    on_iteration(monkeypatch, 2, look)
    assert main(learn_argv(pairs16, run, "--max-iter", "5", "--quiet")) == 130
    # during iteration 2's callback the file already held the start and iterations 1 and 2 ...
    assert [int(r["iter"]) for r in seen["rows"]] == [0, 1, 2]
    assert list(seen["rows"][0]) == list(HISTORY_FIELDS)
    # ... and after the interruption it matches the checkpoint's history
    meta, _ = load_checkpoint(run / "checkpoint.npz")
    rows = history_rows(run)
    assert len(rows) == len(meta["history"]) == 3
    assert [float(r["fun"]) for r in rows] == pytest.approx([h["fun"] for h in meta["history"]], rel=1e-12)
    assert not no_temp_files(run)


def test_ctrl_c_in_the_final_phase(pairs16, tmp_path, monkeypatch, capsys):
    run = tmp_path / "r"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_final, "_write_figures", interrupted)
    clean, noisy = pairs16
    argv = ["learn", "--clean", str(clean), "--noisy", str(noisy), "--out", str(run), "--threads", "1",
            "--max-iter", "2", "--quiet"]  # with figures: the interruption comes while they are drawn
    assert main(argv) == 130
    lines = stderr_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith("varlearn: interrupted (Ctrl-C): ") and "interrupted: interrupted" not in lines[0]
    assert "final phase" in lines[0] and f"--resume {run}" in lines[0]
    assert not (run / "params.json").exists() and load_checkpoint(run / "checkpoint.npz")[0]["k"] == 2
    monkeypatch.undo()
    # resuming redoes only the final phase
    assert main(["learn", "--resume", str(run), *FAST, "--quiet"]) == 0
    params = json.loads((run / "params.json").read_text())
    assert params["nit"] == 2 and np.array_equal(params["theta"], load_checkpoint(run / "checkpoint.npz")[1]["theta"])


def test_sigterm_is_handled_like_ctrl_c(pairs16, tmp_path, monkeypatch, capsys):
    run = tmp_path / "r"
    on_iteration(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    old = signal.getsignal(signal.SIGTERM)
    assert main(learn_argv(pairs16, run, "--max-iter", "5", "--quiet")) == 143
    assert signal.getsignal(signal.SIGTERM) is old  # the handler is removed again
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("varlearn: terminated (SIGTERM): ")
    assert f"varlearn learn --resume {run}" in lines[0]
    assert load_checkpoint(run / "checkpoint.npz")[0]["k"] == 2 and len(history_rows(run)) == 3
    monkeypatch.undo()
    assert main(["learn", "--resume", str(run), *FAST, "--quiet"]) == 0
    assert json.loads((run / "params.json").read_text())["nit"] == 5


def _blas_threads():
    from threadpoolctl import threadpool_info

    return sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})


def test_threads_caps_numba_and_blas_together(pairs16, tmp_path, monkeypatch):
    from varlearn import _accel

    seen = {}

    def record():
        seen["kernels"] = _accel.get_threads()
        seen["blas"] = _blas_threads()

    on_iteration(monkeypatch, 1, record)
    old = _accel.set_threads(2)
    try:
        assert _blas_threads() == [2]
        assert main(learn_argv(pairs16, tmp_path / "r", "--max-iter", "1", "--quiet")) == 0
        assert _accel.thread_info()["setting"] == 2 and _blas_threads() == [2]  # the setting is restored
    finally:
        _accel.set_threads(old)
    assert seen == {"kernels": 1, "blas": [1]}
    params = json.loads((tmp_path / "r" / "params.json").read_text())
    assert params["threads"] == 1 and params["thread_policy"]["setting"] == 1


def test_compile_notice_is_one_line_before_the_first_compile(capsys):
    from varlearn import _accel
    from varlearn.cli.progress import Progress, compile_notice

    # the hook is what numba's compile listener calls; here it is called as the listener would
    with Progress(3, "learn", enabled=False) as bar, compile_notice(enabled=True, progress=bar):
        _accel._notify("start", None)
        _accel._notify("end", 1.5)
    _accel._notify("start", None)  # after the block: nothing
    assert stderr_lines(capsys) == [f"varlearn: {_accel.COMPILE_NOTICE}"]
    with compile_notice(enabled=False):  # --quiet
        _accel._notify("start", None)
    assert stderr_lines(capsys) == []


def test_twelve_bit_images_need_bit_depth(tmp_path, capsys):
    """12-bit data in 16-bit files would be scaled by 65535 into a nearly black image: refused, --bit-depth named."""
    rng = np.random.default_rng(2)
    clean_dir, noisy_dir = tmp_path / "clean", tmp_path / "noisy"
    clean_dir.mkdir()
    noisy_dir.mkdir()
    for i in range(2):
        img = piecewise_constant(16, rng)
        noisy = np.clip(img + 0.1 * rng.standard_normal(img.shape), 0, 1)
        iio.imwrite(clean_dir / f"im{i}.png", np.rint(img * 4095).astype(np.uint16))
        iio.imwrite(noisy_dir / f"im{i}.png", np.rint(noisy * 4095).astype(np.uint16))
    argv = learn_argv((clean_dir, noisy_dir), tmp_path / "r", "--max-iter", "1", "--quiet")
    line = _expect_usage_error(capsys, argv, "im0.png", "--bit-depth 12")
    assert "bit_depth" not in line.replace("--bit-depth", "")
    assert main([*argv, "--bit-depth", "12"]) == 0
    params = json.loads((tmp_path / "r" / "params.json").read_text())
    assert params["data"]["bit_depth"] == 12 and params["psnr"]["noisy_mean"] < 25  # the noise is all there
    capsys.readouterr()
    out = tmp_path / "den"
    _expect_usage_error(capsys, ["denoise", "--params", tmp_path / "r", noisy_dir, "--out", out], "--bit-depth 12")
    assert main(["denoise", "--params", str(tmp_path / "r"), str(noisy_dir), "--out", str(out), "--bit-depth", "12",
                 "--quiet", "--threads", "1"]) == 0
    assert iio.imread(out / "im0.png").dtype == np.uint16


# --------------------------------------------------------------------------- issue 14: --method isgd

ISGD_FAST = ("--threads", "1", "--no-figures")


@pytest.fixture
def pairs4(tmp_path):
    """Four 16x16 pairs: batches of 2 give two ISGD steps per epoch."""
    return write_pairs(tmp_path, n=4, size=16, seed=7)


def isgd_argv(pairs, out, *extra):
    clean, noisy = pairs
    return ["learn", "--clean", str(clean), "--noisy", str(noisy), "--out", str(out), "--method", "isgd", *ISGD_FAST,
            *extra]


@pytest.mark.parametrize("extra, words", [
    (["--batch-size", "0"], ["--batch-size", "got 0"]),
    (["--batch-size", "5"], ["--batch-size 5", "larger", "(4)"]),
    (["--optimizer", "rmsprop"], ["--optimizer", "rmsprop"]),
    (["--step-schedule", "cubic"], ["--step-schedule", "cubic"]),
    (["--eps-schedule", "exp"], ["--eps-schedule", "exp"]),
    (["--q", "-0.5"], ["--q", "-0.5"]),
    (["--p", "inf"], ["--p", "inf"]),
    (["--epochs", "0"], ["--epochs", "got 0"]),
    (["--image-budget", "0"], ["--image-budget", "got 0"]),
    (["--checkpoint-every", "0"], ["--checkpoint-every", "got 0"]),
    (["--checkpoint-interval", "1"], ["--checkpoint-interval", "isgd", "--checkpoint-every"]),
    (["--max-iter", "0"], ["--max-iter", "got 0"]),
    (["--step0", "-1"], ["--step0", "-1"]),
    (["--delta0", "0.1"], ["--delta0", "isgd"]),
    (["--workers", "0"], ["--workers", "got 0"]),
    (["--scheduler", "no-such-file"], ["--scheduler", "no-such-file"]),
    (["--workers", "2", "--scheduler", "tcp://localhost:1"], ["--scheduler", "not allowed with", "--workers"]),
])
def test_isgd_bad_arguments(pairs4, tmp_path, capsys, extra, words):
    _expect_usage_error(capsys, isgd_argv(pairs4, tmp_path / "r", *extra), *words)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("extra, words", [
    (["--batch-size", "2"], ["--batch-size applies to --method isgd only", "hoag"]),
    (["--epochs", "2", "--q", "1"], ["--q, --epochs apply to --method isgd only"]),
])
def test_isgd_flags_with_another_method(pairs4, tmp_path, capsys, extra, words):
    clean, noisy = pairs4
    argv = ["learn", "--clean", clean, "--noisy", noisy, "--out", tmp_path / "r", "--method", "hoag", *extra]
    _expect_usage_error(capsys, argv, *words)
    assert not (tmp_path / "r").exists()


def test_isgd_run_folder_progress_and_options(pairs4, tmp_path, capsys):
    run = tmp_path / "r"
    argv = isgd_argv(pairs4, run, "--batch-size", "2", "--optimizer", "adam", "--step-schedule", "constant",
                     "--eps-schedule", "log", "--p", "0.25", "--q", "0", "--epochs", "2", "--seed", "3")
    assert main(argv) == 0
    err = capsys.readouterr().err
    # progress: the epoch and the image-iterations, and where the work ran
    assert "method isgd, batches of 2, in this process" in err
    assert "epoch 1" in err and "image-it" in err
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "isgd" and config["execution"] == {"workers": None, "scheduler": None}
    assert config["options"] == {"seed": 3, "batch_size": 2, "optimizer": "adam", "step_schedule": "constant",
                                 "q": 0.0, "eps_schedule": "log", "p": 0.25, "max_epochs": 2,
                                 "step0": cli_learn.stochastic.ADAM_STEP0}
    params = json.loads((run / "params.json").read_text())
    assert params["status"] == "maxiter" and params["success"] is False  # the epoch limit (developer.md statuses)
    assert params["nit"] == params["steps_accepted"] == 4 and params["epoch"] == 2  # 2 epochs of 4 images / 2
    assert len(params["warnings"]) == 1 and "2 epochs, --epochs" in params["warnings"][0]
    assert params["options"]["optimizer"] == "adam" and params["options"]["batch_size"] == 2
    rows = history_rows(run)
    assert len(rows) == 4 and [int(r["epoch"]) for r in rows] == [0, 0, 1, 1]
    assert all(int(r["n_images"]) == 2 for r in rows)
    assert float(rows[-1]["image_cost"]) == params["image_cost"] > float(rows[0]["image_cost"]) > 0
    assert [float(r["step"]) for r in rows] == [cli_learn.stochastic.ADAM_STEP0] * 4  # constant schedule
    # the loss written is the full training loss at the final solve, and the run denoised
    assert params["psnr"]["learned_mean"] > params["psnr"]["noisy_mean"] + 1
    x_final = json.loads((run / "params.json").read_text())["fun"]
    assert x_final > 0 and "fun_batch" in params


def test_isgd_interrupt_then_resume_matches_an_uninterrupted_run(pairs4, tmp_path, monkeypatch, capsys):
    """Ctrl-C after step 5 of 6 (checkpoint at step 4), --resume: the same θ bit for bit, the same costs."""
    cut, full = tmp_path / "cut", tmp_path / "full"
    common = ("--batch-size", "2", "--epochs", "3", "--checkpoint-every", "2", "--quiet")
    on_iteration(monkeypatch, 5, ctrl_c)
    assert main(isgd_argv(pairs4, cut, *common)) == 130
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and f"varlearn learn --resume {cut}" in lines[0]
    assert load_checkpoint(cut / "checkpoint.npz")[0]["k"] == 4 and not (cut / "params.json").exists()
    monkeypatch.undo()
    _expect_usage_error(capsys, ["learn", "--resume", cut, "--batch-size", "1"], "--batch-size", "cannot be changed")
    steps = []
    on_iteration(monkeypatch, -1, lambda: None, seen=steps)
    assert main(["learn", "--resume", str(cut), *ISGD_FAST, "--quiet"]) == 0
    assert steps == [5, 6]  # the resumed session recomputed only the steps after the checkpoint
    monkeypatch.undo()
    assert main(isgd_argv(pairs4, full, *common)) == 0
    resumed, uninterrupted = (json.loads((r / "params.json").read_text()) for r in (cut, full))
    assert resumed["nit"] == uninterrupted["nit"] == 6
    assert resumed["theta"] == uninterrupted["theta"]
    assert resumed["image_cost"] == uninterrupted["image_cost"]
    assert [r["image_cost"] for r in history_rows(cut)] == [r["image_cost"] for r in history_rows(full)]
    # more epochs on resume: the run continues where it stopped
    assert main(["learn", "--resume", str(cut), "--epochs", "4", *ISGD_FAST, "--quiet"]) == 0
    more = json.loads((cut / "params.json").read_text())
    assert more["nit"] == 8 and more["epoch"] == 4 and more["theta"] != resumed["theta"]
    assert json.loads((cut / "config.json").read_text())["options"]["max_epochs"] == 4


def test_isgd_on_a_dask_scheduler_matches_the_in_process_run(pairs4, tmp_path, capsys):
    """--scheduler ADDRESS: one worker gets each batch as one task, so θ equals the in-process run's."""
    distributed = pytest.importorskip("distributed")
    common = ("--batch-size", "2", "--epochs", "2")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:
        address = cluster.scheduler_address
        assert main(isgd_argv(pairs4, tmp_path / "dask", *common, "--scheduler", address)) == 0
        err = capsys.readouterr().err
        assert f"on the Dask cluster at {address}" in err
    assert main(isgd_argv(pairs4, tmp_path / "here", *common, "--quiet")) == 0
    dask_run, here = (json.loads((tmp_path / r / "params.json").read_text()) for r in ("dask", "here"))
    assert json.loads((tmp_path / "dask" / "config.json").read_text())["execution"] == {"workers": None,
                                                                                       "scheduler": address}
    assert dask_run["options"]["executor"] == "DaskExecutor" and here["options"]["executor"] == "serial"
    assert dask_run["nit"] == here["nit"] == 4 and dask_run["image_cost"] == here["image_cost"]
    np.testing.assert_allclose(dask_run["theta"], here["theta"], rtol=1e-10, atol=0)


@pytest.mark.slow
def test_isgd_on_a_local_cluster_of_two_workers(pairs4, tmp_path, capsys):
    """--workers 2: a LocalCluster of two processes; per-image tasks certify each image, so θ agrees to the solves."""
    pytest.importorskip("distributed")
    common = ("--batch-size", "2", "--epochs", "2")
    assert main(isgd_argv(pairs4, tmp_path / "w", *common, "--workers", "2")) == 0
    assert "on a Dask LocalCluster of 2 workers" in capsys.readouterr().err
    assert main(isgd_argv(pairs4, tmp_path / "here", *common, "--quiet")) == 0
    w, here = (json.loads((tmp_path / r / "params.json").read_text()) for r in ("w", "here"))
    assert w["nit"] == here["nit"] == 4
    np.testing.assert_allclose(w["theta"], here["theta"], rtol=1e-2)
    # a scheduler that is not there: bad input (after the connection timeout), one line, no run folder
    capsys.readouterr()
    _expect_usage_error(capsys, isgd_argv(pairs4, tmp_path / "gone", *common, "--scheduler", "tcp://127.0.0.1:9"),
                        "--scheduler tcp://127.0.0.1:9", "cannot connect")
    assert not (tmp_path / "gone").exists()


def test_resume_of_a_run_folder_written_with_max_iter(pairs16, tmp_path, capsys):
    """config.json of an older varlearn names the option max_iter: resume renames it, with no DeprecationWarning."""
    run = tmp_path / "old"
    assert main(learn_argv(pairs16, run, "--max-iter", "2", "--quiet")) == 0
    cfg = json.loads((run / "config.json").read_text())
    cfg["options"]["max_iter"] = cfg["options"].pop("maxiter")
    (run / "config.json").write_text(json.dumps(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert main(["learn", "--resume", str(run), "--max-iter", "3", *FAST, "--quiet"]) == 0
    options = json.loads((run / "config.json").read_text())["options"]
    assert options["maxiter"] == 3 and "max_iter" not in options
    assert json.loads((run / "params.json").read_text())["nit"] == 3


def test_image_budget_stops_maid_too(pairs16, tmp_path, capsys):
    """--image-budget is the equal-cost limit of every method: MAID stops after the iteration that reaches it."""
    run = tmp_path / "r"
    assert main(learn_argv(pairs16, run, "--image-budget", "300", "--max-iter", "1000", "--quiet")) == 0
    params = json.loads((run / "params.json").read_text())
    assert params["status"] == "budget_exhausted" and params["options"]["image_budget"] == 300
    assert len(params["warnings"]) == 1
    assert "image budget of 300 image-iterations, --image-budget" in params["warnings"][0]
    costs = [float(r["image_cost"]) for r in history_rows(run)]
    assert costs[-1] >= 300 > costs[-2]
    assert all(c % 2 == 0 for c in costs)  # in process, one iteration on the stack of 2 images costs 2
