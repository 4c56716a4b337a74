"""varlearn.io: params.json (θ authoritative, natural units checked against it) and the model registry."""
import json
import math

import numpy as np
import pytest

import varlearn as vl
from varlearn import io


@pytest.fixture
def tv_file(tmp_path):
    theta = np.array([-3.25, -4.5])
    path = tmp_path / "params.json"
    record = io.save_params(path, "tv", {"isotropic": False}, theta, status="maxiter", fun=math.inf,
                            history_note=None)
    return path, theta, record


def edit(path, change):
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


# --------------------------------------------------------------------------- params.json


def test_tv_round_trip_is_exact(tv_file):
    path, theta, record = tv_file
    loaded = io.load_params(path)
    assert loaded.model == "tv" and loaded.model_config == {"isotropic": False}
    assert loaded.theta.dtype == np.float64 and np.array_equal(loaded.theta, theta)
    assert isinstance(loaded.regularizer, vl.TotalVariation) and loaded.regularizer.isotropic is False
    assert loaded.params["weight"] == math.exp(-3.25) and loaded.params["smoothing"] == math.exp(-4.5)
    # extra entries are kept; a non-finite float is a string in the file (strict JSON) and a float when read
    text = path.read_text()
    json.loads(text, parse_constant=lambda token: pytest.fail(f"bare {token} in params.json"))
    assert '"fun": "inf"' in text and loaded.record["fun"] == math.inf and loaded.record["status"] == "maxiter"
    assert record["params"] == loaded.params and "authoritative" in record["note"]
    assert not list(path.parent.glob(".*.tmp"))
    # a folder stands for folder/params.json
    assert np.array_equal(io.load_params(path.parent).theta, theta)


def test_foe_round_trip_rebuilds_the_filters_from_theta(tmp_path):
    reg = io.build_model("foe", {"n_filters": 3, "size": 3}, seed=4)
    theta = io.initial_theta("foe", reg) + np.linspace(-0.1, 0.1, reg.n_params)
    io.save_params(tmp_path / "p.json", "foe", {"n_filters": 3, "size": 3}, theta, regularizer=reg)
    loaded = io.load_params(tmp_path / "p.json")
    assert np.array_equal(loaded.theta, theta) and loaded.model_config == {"n_filters": 3, "size": 3}
    # the loaded regularizer (built with another seed) gives the same lower-level objective: θ holds the filters
    x = np.random.default_rng(0).random((1, 8, 8))
    assert loaded.regularizer.value(x, theta) == pytest.approx(reg.value(x, theta), rel=1e-13)
    np.testing.assert_array_equal(np.array(loaded.params["filters"]), np.array(reg.describe(theta)["filters"]))


@pytest.mark.parametrize("field, value, named", [
    ("weight", 0.5, "params.weight"),
    ("smoothing", "big", "params.smoothing"),
    ("isotropic", True, "params.isotropic"),
    ("strength", 2.0, "params.strength"),
])
def test_edited_natural_units_are_refused_naming_the_field(tv_file, field, value, named):
    path, _, _ = tv_file
    edit(path, lambda r: r["params"].__setitem__(field, value))
    with pytest.raises(io.ParamsError) as err:
        io.load_params(path)
    msg = str(err.value)
    assert named in msg and "disagrees with theta" in msg and str(path) in msg and "authoritative" in msg


def test_natural_units_within_rounding_are_accepted_and_deleting_them_is_allowed(tv_file):
    path, theta, _ = tv_file
    edit(path, lambda r: r["params"].__setitem__("weight", r["params"]["weight"] * (1 + 1e-12)))
    assert np.array_equal(io.load_params(path).theta, theta)
    edit(path, lambda r: r["params"].__setitem__("weight", r["params"]["weight"] * (1 + 1e-6)))
    with pytest.raises(io.ParamsError, match="params.weight"):
        io.load_params(path)
    edit(path, lambda r: r.pop("params"))
    assert io.load_params(path).params["weight"] == math.exp(theta[0])


def test_edited_foe_weight_names_the_index(tmp_path):
    reg = io.build_model("foe", {"n_filters": 2, "size": 3})
    path = tmp_path / "p.json"
    io.save_params(path, "foe", {"n_filters": 2, "size": 3}, io.initial_theta("foe", reg), regularizer=reg)
    edit(path, lambda r: r["params"]["weights"].__setitem__(1, 123.0))
    with pytest.raises(io.ParamsError, match=r"params\.weights\[1\] = 123\.0"):
        io.load_params(path)


@pytest.mark.parametrize("change, words", [
    (lambda r: r.__setitem__("kind", "something-else"), ["not a varlearn params.json"]),
    (lambda r: r.__setitem__("model", "bm3d"), ["unknown model 'bm3d'", "tv", "foe"]),
    (lambda r: r.__setitem__("model_config", {"isotropic": "yes"}), ["isotropic", "'yes'"]),
    (lambda r: r.__setitem__("model_config", {"colour": 1}), ["unknown configuration", "colour"]),
    (lambda r: r.__setitem__("theta", [1.0, 2.0, 3.0]), ["theta has 3 numbers", "needs 2"]),
    (lambda r: r.__setitem__("theta", [1.0, "x"]), ["theta must be a list of numbers"]),
    (lambda r: r.__setitem__("theta", [1.0, "nan"]), ["non-finite"]),
    (lambda r: r.__setitem__("format_version", 99), ["format version 99"]),
    (lambda r: r.__setitem__("seed", "abc"), ["seed must be a non-negative integer", "'abc'"]),
    (lambda r: r.__setitem__("seed", [1]), ["seed must be", "[1]"]),
])
def test_bad_params_files(tv_file, change, words):
    path, _, _ = tv_file
    edit(path, change)
    with pytest.raises(io.ParamsError) as err:
        io.load_params(path)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_unreadable_files(tmp_path):
    with pytest.raises(io.ParamsError, match="no such file"):
        io.load_params(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(io.ParamsError, match="not valid JSON"):
        io.load_params(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(io.ParamsError, match="does not hold a JSON object"):
        io.load_params(tmp_path / "list.json")
    (tmp_path / "nan.json").write_text('{"kind": "varlearn-params", "theta": [NaN, 1]}')
    with pytest.raises(io.ParamsError, match="not valid JSON"):
        io.load_params(tmp_path / "nan.json")


def test_save_params_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="written by save_params itself"):
        io.save_params(tmp_path / "p.json", "tv", {}, [-5.0, -5.0], params={"weight": 1.0})
    with pytest.raises(io.ParamsError, match="theta has 3 numbers"):
        io.save_params(tmp_path / "p.json", "tv", {}, [-5.0, -5.0, 1.0])
    with pytest.raises(io.ParamsError, match="non-finite"):
        io.save_params(tmp_path / "p.json", "tv", {}, [-5.0, math.nan])
    with pytest.raises(ValueError, match="unknown model"):
        io.save_params(tmp_path / "p.json", "nope", {}, [-5.0, -5.0])
    assert not (tmp_path / "p.json").exists()


# --------------------------------------------------------------------------- registry


def test_builtin_models():
    assert io.model_names()[:2] == ("tv", "foe")
    tv = io.build_model("tv")
    assert isinstance(tv, vl.TotalVariation) and tv.isotropic is True
    assert io.initial_theta("tv", tv).tolist() == [-5.0, -5.0]
    assert io.model_config("foe", {"size": 7}) == {"n_filters": 16, "size": 7}
    assert io.min_image_size("foe", {"size": 7}) == 7 and io.min_image_size("tv") == 2
    a = io.build_model("foe", {"n_filters": 2, "size": 3}, seed=1)
    b = io.build_model("foe", {"n_filters": 2, "size": 3}, seed=1)
    c = io.build_model("foe", {"n_filters": 2, "size": 3}, seed=2)
    assert np.array_equal(io.initial_theta("foe", a), io.initial_theta("foe", b))
    assert not np.array_equal(io.initial_theta("foe", a), io.initial_theta("foe", c))
    assert io.initial_theta("foe", a).shape == (1 + 2 + 2 + 2 * 9,)


@pytest.mark.parametrize("config, words", [
    ({"size": 4}, ["size", "odd", "4"]),
    ({"n_filters": 0}, ["n_filters", "0"]),
    ({"n_filters": 2.5}, ["n_filters", "2.5"]),
    ({"filters": 3}, ["unknown configuration", "'filters'", "n_filters"]),
])
def test_bad_model_configs(config, words):
    with pytest.raises(ValueError) as err:
        io.build_model("foe", config)
    for w in words:
        assert w in str(err.value)


def test_register_a_model_and_save_it(tmp_path):
    from varlearn.operators import FiniteDifference
    from varlearn.potentials import Huber

    def build(config, seed):  # noqa: ARG001
        return vl.PotentialRegularizer(FiniteDifference(), Huber())

    io.register_model("test-huber", build, defaults={}, min_size=lambda c: 3, description="Huber of gradients")
    try:
        with pytest.raises(ValueError, match="already registered"):
            io.register_model("test-huber", build)
        assert "test-huber" in io.model_names() and io.min_image_size("test-huber") == 3
        reg = io.build_model("test-huber")
        theta = io.initial_theta("test-huber", reg)
        assert np.array_equal(theta, np.asarray(reg.init_params(), dtype=np.float64))
        io.save_params(tmp_path / "p.json", "test-huber", {}, theta + 0.5)
        loaded = io.load_params(tmp_path / "p.json")
        assert loaded.model == "test-huber" and np.array_equal(loaded.theta, theta + 0.5)
    finally:
        io._REGISTRY.pop("test-huber", None)
    with pytest.raises(ValueError, match="unknown model 'test-huber'"):
        io.load_params(tmp_path / "p.json")
