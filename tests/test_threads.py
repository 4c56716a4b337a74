"""The package's thread policy (varlearn.set_threads / threads / get_threads) and the compile notice."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import varlearn as vl
from varlearn import _accel


@pytest.fixture(autouse=True)
def restore_policy():
    old = _accel._setting()
    yield
    vl.set_threads(old)


def blas_threads():
    return sorted({lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"})


@pytest.mark.parametrize("bad", [0, -2, 1.5, "x", "", True, None, "2.0"])
def test_bad_thread_counts_are_refused_with_the_value(bad):
    before = _accel._setting()
    with pytest.raises(ValueError, match=r"threads must be a positive integer or 'auto', got") as info:
        vl.set_threads(bad)
    assert repr(bad) in str(info.value)
    assert _accel._setting() == before  # nothing changed


def test_set_threads_caps_kernels_and_blas_together():
    old = vl.set_threads(1)
    assert vl.get_threads() == 1
    assert blas_threads() == [1]
    assert vl.set_threads("3") == 1  # strings are accepted, the previous setting is returned
    assert vl.get_threads() == 3
    assert blas_threads() == [3]
    info = vl.thread_info()
    assert info["setting"] == 3 and info["threads"] == 3 and info["blas"] == 3
    vl.set_threads(old)


def test_threads_context_manager_restores_on_exception():
    vl.set_threads(2)
    with pytest.raises(RuntimeError, match="inside"):
        with vl.threads(1) as n:
            assert n == 1 and vl.get_threads() == 1 and blas_threads() == [1]
            raise RuntimeError("inside")
    assert _accel._setting() == 2
    assert vl.get_threads() == 2 and blas_threads() == [2]


@pytest.mark.parametrize("cores, others, expected", [
    (2, 0.0, 2), (2, 0.4, 2), (2, 0.67, 1), (2, 1.0, 1), (2, 7.5, 1), (8, 2.6, 5), (1, 0.0, 1),
])
def test_auto_uses_the_cores_other_processes_leave_idle(monkeypatch, cores, others, expected):
    monkeypatch.setattr(_accel, "usable_cores", lambda: cores)
    monkeypatch.setattr(_accel, "_others_load", lambda now: others)
    vl.set_threads("auto")
    assert vl.get_threads() == expected
    assert blas_threads() == [1]  # auto: BLAS on one thread, whatever the kernels get


def test_auto_is_re_evaluated_when_due(monkeypatch):
    load = {"others": 0.0}
    monkeypatch.setattr(_accel, "usable_cores", lambda: 2)
    monkeypatch.setattr(_accel, "_others_load", lambda now: load["others"])
    vl.set_threads("auto")
    assert vl.get_threads() == 2
    load["others"] = 1.0  # another job starts
    assert vl.get_threads() == 2  # not before the refresh time
    _accel._state["next_check"] = 0.0
    assert vl.get_threads() == 1
    load["others"] = 0.0
    _accel._state["next_check"] = 0.0
    assert vl.get_threads() == 2


def test_environment_variable_sets_the_initial_policy(monkeypatch):
    monkeypatch.setitem(_accel._state, "setting", None)
    monkeypatch.setenv("VARLEARN_THREADS", "1")
    assert _accel._setting() == 1
    monkeypatch.setitem(_accel._state, "setting", None)
    monkeypatch.setenv("VARLEARN_THREADS", "many")
    with pytest.raises(ValueError, match=r"VARLEARN_THREADS must be a positive integer or 'auto', got 'many'"):
        _accel._setting()
    monkeypatch.setitem(_accel._state, "setting", None)
    monkeypatch.delenv("VARLEARN_THREADS")
    assert _accel._setting() == "auto"


def test_usable_cores_within_the_affinity():
    n = _accel.usable_cores()
    assert 1 <= n <= len(os.sched_getaffinity(0))


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="needs Linux /proc")
def test_own_running_threads_counts_the_caller():
    # the thread reading /proc is running at that moment
    assert _accel._own_running_threads() >= 1
    assert _accel._runnable_others(samples=2, pause=0.0) >= 0.0


@pytest.mark.parametrize("n_threads", [1, 2, 3, 5])
@pytest.mark.parametrize("n_chunks", [1, 2, 7])
def test_run_chunks_covers_every_chunk_once(n_threads, n_chunks):
    seen = []

    def kernel(tag, c0, c1):
        seen.extend((tag, c) for c in range(c0, c1))

    _accel.run_chunks(kernel, n_chunks, ("t",), n_threads)
    assert sorted(seen) == [("t", c) for c in range(n_chunks)]


def test_run_chunks_raises_a_worker_error():
    def kernel(c0, c1):
        if c0 > 0:
            raise ZeroDivisionError(f"chunk {c0}")

    with pytest.raises(ZeroDivisionError, match="chunk"):
        _accel.run_chunks(kernel, 4, (), 2)


def test_run_chunks_from_concurrent_callers_while_the_pool_is_replaced():
    # callers in several threads; the shared pool is replaced (as when a caller needs a bigger
    # one) while the others submit to it: every call must still cover each chunk once
    import threading

    errors = []

    def kernel(out, c0, c1):
        out[c0:c1] += 1

    def caller(k):
        try:
            for i in range(150):
                if i % 3 == 0:
                    _accel._pool["size"] = 0  # the next call builds a new pool
                out = np.zeros(16)
                _accel.run_chunks(kernel, 16, (out,), 2 + (i + k) % 6)
                assert np.array_equal(out, np.ones(16)), out
        except Exception as exc:  # collected: the assertion below names it
            errors.append(repr(exc))

    callers = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in callers), "run_chunks hung"
    assert errors == []


def test_dot_is_independent_of_the_thread_count(rng):
    red = pytest.importorskip("varlearn._reduce_numba")
    a = rng.randn(3 * red._BLOCK + 17)
    b = rng.randn(a.size)
    values = []
    for n in (1, 2, 3):
        with vl.threads(n):
            values.append(red.dot(a, b))
    assert values[0] == values[1] == values[2]
    assert values[0] == pytest.approx(float(np.dot(a, b)), rel=1e-12)


_NOTICE_SCRIPT = textwrap.dedent("""
    import json, logging, sys
    import numpy as np
    records, stages = [], []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logging.getLogger("varlearn").addHandler(Keep())
    logging.getLogger("varlearn").setLevel(logging.INFO)
    from varlearn import _accel
    _accel.on_compile(lambda stage, s: stages.append(stage))
    k = _accel.numba_module("regularizers._kernels.fd_numba")
    x = np.linspace(0, 1, 60).reshape(1, 6, 10)
    k.ISOTROPIC.value(x, 0.1, 0.1)
    k.ANISOTROPIC.value(x, 0.1, 0.1)  # the same kernel: no second compile
    k.ISOTROPIC.fused_grad(x, x, 1.0, 0.1, 0.1, None, 0.0, None, np.empty_like(x))  # a second kernel, no second notice
    print(json.dumps({"records": records, "stages": stages}))
""")


def test_compile_notice_once_and_only_when_compiling(tmp_path):
    pytest.importorskip("numba")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"), VARLEARN_THREADS="1")
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", _NOTICE_SCRIPT], env=env, capture_output=True, text=True,
                             timeout=300, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    cold, warm = runs
    assert cold["records"].count(_accel.COMPILE_NOTICE) == 1
    assert cold["stages"][0] == "start" and cold["stages"].count("start") == 1
    assert cold["stages"].count("end") >= 2
    # the second process loads the kernels from the on-disk cache: no compile, no notice
    assert _accel.COMPILE_NOTICE not in warm["records"]
    assert warm["stages"] == []


def test_auto_does_not_override_a_callers_blas_limit(monkeypatch):
    from threadpoolctl import threadpool_limits

    monkeypatch.setattr(_accel, "usable_cores", lambda: 2)
    monkeypatch.setattr(_accel, "_others_load", lambda now: 0.0)
    vl.set_threads("auto")
    assert blas_threads() == [1]
    with threadpool_limits(limits=3, user_api="blas"):
        _accel._state["next_check"] = 0.0  # a re-evaluation is due
        assert vl.get_threads() == 2
        assert blas_threads() == [3]
    assert blas_threads() == [1]


def test_others_load_subtracts_this_process(monkeypatch):
    """Busy time of all cores minus this process's CPU time, over the time since the last sample."""
    busy = {"all": 100.0, "own": 10.0}
    monkeypatch.setattr(_accel, "_proc_busy_seconds", lambda: busy["all"])
    monkeypatch.setattr(_accel.time, "process_time", lambda: busy["own"])
    monkeypatch.setattr(_accel, "_runnable_others", lambda: 0.25)
    monkeypatch.setitem(_accel._state, "sample", None)
    assert _accel._others_load(1000.0) == 0.25  # no earlier sample: the runnable threads of others
    busy.update({"all": 103.0, "own": 11.0})  # 2 s later: 3 busy core-seconds, 1 of them ours
    assert _accel._others_load(1002.0) == pytest.approx(1.0)
    busy.update({"all": 103.5, "own": 11.5})  # only this process was busy
    assert _accel._others_load(1004.0) == pytest.approx(0.0)
    busy.update({"all": 103.6})
    assert _accel._others_load(1004.1) == 0.25  # too short a window: the snapshot again
