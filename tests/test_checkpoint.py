"""Atomic writes, the one JSON policy (varlearn._io) and checkpoint integrity (metadata checksum, fields)."""
import hashlib
import io
import json
import math

import numpy as np
import pytest

import varlearn as vl
from varlearn._io import atomic_write_bytes, dump_json, dumps_json, load_json, loads_json
from varlearn.bilevel.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


# ---------------------------------------------------------------------- JSON policy
def _strict(text):
    """Parse as strict JSON: a bare NaN/Infinity token fails."""
    def refuse(tok):
        raise AssertionError(f"bare {tok} in {text!r}")
    return json.loads(text, parse_constant=refuse)


def test_json_nonfinite_round_trip_is_exact_and_valid(tmp_path):
    obj = {"nan": math.nan, "inf": math.inf, "minf": -math.inf, "none": None, "f32": np.float32(0.1),
           "i": np.int64(7), "b": np.bool_(True), "arr": np.array([[1.5, np.nan], [np.inf, -2.0]]),
           "t": (1, 2.5), "nested": [{"x": -math.inf}], "dtype": np.dtype("float32"), "s": "ok"}
    text = dumps_json(obj)
    raw = _strict(text)
    assert raw["nan"] == "nan" and raw["inf"] == "inf" and raw["minf"] == "-inf" and raw["none"] is None
    back = loads_json(text)
    assert math.isnan(back["nan"]) and back["inf"] == math.inf and back["minf"] == -math.inf
    assert back["none"] is None and back["f32"] == float(np.float32(0.1)) and back["i"] == 7 and back["b"] is True
    assert back["arr"][0][0] == 1.5 and math.isnan(back["arr"][0][1]) and back["arr"][1] == [math.inf, -2.0]
    assert back["t"] == [1, 2.5] and back["nested"] == [{"x": -math.inf}] and back["dtype"] == "float32"
    vals = np.random.default_rng(0).standard_normal(50) * 10.0 ** np.arange(-25, 25)
    assert loads_json(dumps_json(vals.tolist())) == vals.tolist()      # floats are read back bit-exactly
    dump_json(tmp_path / "a.json", obj)
    assert dumps_json(load_json(tmp_path / "a.json")) == text


def test_json_refuses_bare_nan_and_unknown_objects():
    with pytest.raises(ValueError, match="bare NaN"):
        loads_json('{"a": NaN}')
    with pytest.raises(TypeError, match="type object"):
        dumps_json({"a": object()})


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    p = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(p, b"old")
    assert p.read_bytes() == b"old"
    with pytest.raises(TypeError):
        atomic_write_bytes(p, "not bytes")
    assert p.read_bytes() == b"old" and [f.name for f in p.parent.iterdir()] == ["f.bin"]


# ---------------------------------------------------------------------- checkpoints
def _run(tmp_path, max_iter=2):
    rng = np.random.RandomState(3)
    clean = np.stack([np.tri(12) * 0.7 for _ in range(2)])
    prob = vl.DenoisingProblem(clean + 0.1 * rng.randn(*clean.shape), vl.TotalVariation())
    U = vl.SquaredError(clean)
    ck = tmp_path / "run.npz"
    vl.minimize_bilevel(prob, U, np.array([-4.0, -4.0]), options={"maxiter": max_iter}, checkpoint=ck)
    return prob, U, ck


def _rewrite(ck, dest, edit, fix_checksum):
    """Copy checkpoint ``ck`` to ``dest`` with ``edit(meta)`` applied to its metadata."""
    with np.load(ck, allow_pickle=False) as z:
        files = {k: z[k] for k in z.files}
    meta = json.loads(str(files["__meta__"][()]))
    edit(meta)
    text = json.dumps(meta)
    files["__meta__"] = np.array(text)
    if fix_checksum:
        files["__meta_sha256__"] = np.array(hashlib.sha256(text.encode()).hexdigest())
    buf = io.BytesIO()
    np.savez(buf, **files)
    dest.write_bytes(buf.getvalue())
    return dest


def test_edited_metadata_is_refused_by_the_checksum(tmp_path):
    prob, U, ck = _run(tmp_path)
    meta, _ = load_checkpoint(ck)
    assert meta["k"] == 2 and len(meta["history"]) == 3
    bad = _rewrite(ck, tmp_path / "edited.npz", lambda m: m.update(k=-3), fix_checksum=False)
    with pytest.raises(CheckpointError, match="metadata checksum does not match"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="metadata checksum"):
        vl.minimize_bilevel(prob, U, np.array([-4.0, -4.0]), options={"maxiter": 4}, resume=bad)


def _set_row(i, key, value):
    return lambda m: m["history"][i].update({key: value})


_MAID_EDITS = [
    (lambda m: m.update(k=-3), "field 'k' must be an integer >= 0, got -3"),
    (lambda m: m.update(k=2.5), "field 'k'"),
    (lambda m: m.update(n_lower=-1), "field 'n_lower'"),
    (lambda m: m.update(n_cg=True), "field 'n_cg'"),
    (lambda m: m.update(elapsed="nan"), "field 'elapsed'"),
    (lambda m: m.update(eps=0.0), "field 'eps' must be a positive number"),
    (lambda m: m.update(method="adam"), "field 'method'"),
    (lambda m: m.update(x_shape=[2, 0, 12]), "field 'x_shape'"),
    (lambda m: m.pop("n_params"), "field 'n_params' is missing"),
    (lambda m: m.update(k=5), "'history' has 3 rows, expected k \\+ 1 = 6"),
    (_set_row(1, "iter", 7), r"'history\[1\].iter' is 7, expected 1"),
    (_set_row(2, "cost", -10), r"'history\[2\].cost' must be an integer >= 0"),
    (lambda m: m.update(n_params=3), "array 'theta' has shape \\(2,\\), expected \\(3,\\)"),
]


def _set_counter(name, value):
    return lambda m: m["counters"].update({name: value})


_ISGD_EDITS = [
    (lambda m: m.update(k=-1), "field 'k' must be an integer >= 0, got -1"),
    (lambda m: m.update(epoch=1.5), "field 'epoch'"),
    (_set_counter("image_cg_iter", -4), "field 'counters' must be a JSON object of integers >= 0"),
    (lambda m: m["counters"].pop("eval_cost"), "field 'counters'"),
    (lambda m: m.update(fingerprint="abc"), "field 'fingerprint' must be a SHA-256 hex digest"),
    (lambda m: m["sampler"].pop("bit_generator"), "field 'sampler'"),
    (lambda m: m.update(schedules={"step": {}}), "field 'schedules'"),
    (lambda m: m.update(warm_saved="yes"), "field 'warm_saved'"),
    (lambda m: m.update(noise={"mode": "fixed"}), "field 'noise' must be null or a JSON object with mode, seed"),
    (lambda m: m.pop("evaluations"), "field 'evaluations' is missing"),
    (lambda m: m.update(k=7), "'history' has 3 rows, expected k = 7"),
    (_set_row(2, "iter", 0), r"'history\[2\].iter' is 0, expected 2"),
    (lambda m: m.update(adam_t=0), "'adam_m' and 'adam_v' must be present exactly when adam_t > 0"),
    (lambda m: m.update(x_shape=[4, 12, 12]), r"array 'sampler_perm' has shape \(5,\), expected \(4,\)"),
    (lambda m: m.update(n_params=3), r"array 'theta' has shape \(2,\), expected \(3,\)"),
]


@pytest.mark.parametrize("method,edit,match", [("maid", *e) for e in _MAID_EDITS] + [("isgd", *e) for e in _ISGD_EDITS])
def test_invalid_metadata_fields_are_named(tmp_path, method, edit, match):
    _, _, ck = (_run if method == "maid" else _isgd_run)(tmp_path)
    bad = _rewrite(ck, tmp_path / "bad.npz", edit, fix_checksum=True)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(bad)


def test_save_refuses_invalid_bilevel_metadata(tmp_path):
    _, _, ck = _run(tmp_path)
    meta, arrays = load_checkpoint(ck)
    meta["k"] = -3
    with pytest.raises(CheckpointError, match="field 'k'"):
        save_checkpoint(tmp_path / "new.npz", meta, arrays)
    assert not (tmp_path / "new.npz").exists()
    # a checkpoint of another kind is stored as given, and its metadata round-trips (NaN/inf included)
    save_checkpoint(tmp_path / "other.npz", {"kind": "other", "x": math.nan, "y": -math.inf}, {"a": np.arange(3)})
    m2, a2 = load_checkpoint(tmp_path / "other.npz")
    assert math.isnan(m2["x"]) and m2["y"] == -math.inf and a2["a"].tolist() == [0, 1, 2]


def test_checkpoint_size_is_dominated_by_the_warm_starts(tmp_path):
    """The module docstring's size statement: about three image stacks (plus small metadata)."""
    prob, _, ck = _run(tmp_path, max_iter=1)
    _, arrays = load_checkpoint(ck)
    stack = int(np.prod(prob.x_shape)) * 8
    big = [k for k, a in arrays.items() if a.size == np.prod(prob.x_shape)]
    assert sorted(big) == ["q_warm", "x_current", "x_warm"]
    assert 3 * stack < ck.stat().st_size < 3 * stack + 20_000


def test_budget_inside_the_first_iteration_checkpoints_and_resumes(tmp_path):
    """A budget that runs out inside outer iteration 0 leaves k = 0 and no history row: the
    checkpoint must still load, and resuming from it must reach the uninterrupted result."""
    rng = np.random.RandomState(3)
    clean = np.stack([np.tri(12) * 0.7 for _ in range(2)])
    prob = vl.DenoisingProblem(clean + 0.1 * rng.randn(*clean.shape), vl.TotalVariation())
    U = vl.SquaredError(clean)
    ck = tmp_path / "early.npz"
    theta0 = np.array([-4.0, -4.0])
    first = vl.minimize_bilevel(prob, U, theta0, options={"budget": 5}, checkpoint=ck)
    assert first.status == "budget_exhausted" and not first.success and first.nit == 0
    meta, _ = load_checkpoint(ck)
    assert meta["k"] == 0 and meta["history"] == []
    resumed = vl.minimize_bilevel(prob, U, theta0, options={"budget": math.inf, "maxiter": 2}, resume=ck)
    straight = vl.minimize_bilevel(prob, U, theta0, options={"maxiter": 2})
    assert resumed.nit == straight.nit == 2
    np.testing.assert_allclose(resumed.theta, straight.theta, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------- ISGD checkpoints
def _isgd_run(tmp_path, **opts):
    from varlearn.bilevel.isgd import ISGD

    rng = np.random.RandomState(5)
    clean = np.stack([np.tri(12) * (0.5 + 0.1 * k) for k in range(5)])
    prob = vl.DenoisingProblem(clean + 0.1 * rng.randn(*clean.shape), vl.TotalVariation(isotropic=False))
    U = vl.SquaredError(clean)
    ck = tmp_path / "isgd.npz"
    ISGD(**{"maxiter": 3, "batch_size": 2, "optimizer": "adam", **opts}).run(prob, U, np.array([-4.0, -4.0]),
                                                                           checkpoint=ck)
    return prob, U, ck


def test_isgd_checkpoint_holds_the_documented_state(tmp_path):
    _, _, ck = _isgd_run(tmp_path)
    meta, arrays = load_checkpoint(ck)
    assert meta["k"] == 3 and meta["adam_t"] == 3 and meta["epoch"] == 1 and meta["pos"] == 0  # batches 2, 2, 1
    assert meta["sampler"]["bit_generator"]["bit_generator"] == "PCG64" and meta["warm_saved"] is True
    assert sorted(arrays) == ["adam_m", "adam_v", "sampler_perm", "theta", "warm_idx", "warm_q", "warm_x"]
    assert arrays["sampler_perm"].dtype == np.int64 and sorted(arrays["sampler_perm"]) == list(range(5))
    assert sorted(arrays["warm_idx"].tolist()) == [0, 1, 2, 3, 4] and arrays["warm_x"].shape == (5, 12, 12)


def test_truncated_isgd_checkpoint_is_refused_on_resume(tmp_path):
    from varlearn.bilevel.isgd import ISGD

    prob, U, ck = _isgd_run(tmp_path)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        ISGD(maxiter=6).run(prob, U, np.array([-4.0, -4.0]), resume=cut)


def test_data_fingerprint_follows_the_data():
    from varlearn.bilevel.checkpoint import data_fingerprint

    clean = np.random.default_rng(1).random((3, 8, 8))
    p = vl.DenoisingProblem(clean + 0.1, vl.TotalVariation())
    fp = data_fingerprint(p, vl.SquaredError(clean))
    assert fp == data_fingerprint(vl.DenoisingProblem(clean + 0.1, vl.TotalVariation()), vl.SquaredError(clean.copy()))
    other = clean.copy()
    other[2, 7, 7] += 1e-12
    assert fp != data_fingerprint(p, vl.SquaredError(other))
    assert fp != data_fingerprint(p, vl.SquaredError(clean.astype(np.float32)))


def test_format_version_1_still_loads_and_others_are_refused(tmp_path):
    """Version 1 (before the metadata checksum) loads, its arrays still checked; unknown versions are refused."""
    prob, U, ck = _run(tmp_path)
    with np.load(ck, allow_pickle=False) as z:
        files = {k: z[k] for k in z.files if k != "__meta_sha256__"}
    meta = json.loads(str(files["__meta__"][()]))

    def write(name, version, with_meta_sum=False, **extra):
        m = dict(meta, format_version=version)
        text = json.dumps(m)
        out = dict(files, __meta__=np.array(text), **extra)
        if with_meta_sum:
            out["__meta_sha256__"] = np.array(hashlib.sha256(text.encode()).hexdigest())
        buf = io.BytesIO()
        np.savez(buf, **out)
        (tmp_path / name).write_bytes(buf.getvalue())
        return tmp_path / name

    old = write("v1.npz", 1)
    m1, a1 = load_checkpoint(old)
    assert m1["format_version"] == 1 and m1["k"] == 2 and a1["theta"].shape == (2,)
    resumed = vl.minimize_bilevel(prob, U, np.array([-4.0, -4.0]), options={"maxiter": 3}, resume=old)
    assert resumed.nit == 3
    with pytest.raises(CheckpointError, match="a version-1 checkpoint has no metadata checksum"):
        load_checkpoint(write("v1sum.npz", 1, with_meta_sum=True))
    with pytest.raises(CheckpointError, match=r"format version 99, expected 2 \(or 1\)"):
        load_checkpoint(write("v99.npz", 99, with_meta_sum=True))
    with pytest.raises(CheckpointError, match="array checksums do not match"):
        load_checkpoint(write("v1bad.npz", 1, theta=np.array([0.0, 0.0])))
