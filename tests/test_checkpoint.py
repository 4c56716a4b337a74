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
    vl.minimize_bilevel(prob, U, np.array([-4.0, -4.0]), options={"max_iter": max_iter}, checkpoint=ck)
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
        vl.minimize_bilevel(prob, U, np.array([-4.0, -4.0]), options={"max_iter": 4}, resume=bad)


def _set_row(i, key, value):
    return lambda m: m["history"][i].update({key: value})


@pytest.mark.parametrize("edit,match", [
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
])
def test_invalid_metadata_fields_are_named(tmp_path, edit, match):
    _, _, ck = _run(tmp_path)
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
    resumed = vl.minimize_bilevel(prob, U, theta0, options={"budget": math.inf, "max_iter": 2}, resume=ck)
    straight = vl.minimize_bilevel(prob, U, theta0, options={"max_iter": 2})
    assert resumed.nit == straight.nit == 2
    np.testing.assert_allclose(resumed.theta, straight.theta, rtol=0, atol=1e-10)
