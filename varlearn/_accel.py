"""Optional accelerators and the one thread policy of the package.

Accelerators
------------
The pure array-API code paths are the reference; accelerated kernels (numba on
NumPy arrays, fused CUDA kernels on CuPy arrays) are used when available and
enabled.  The kernels of composed regularizers are registered against the
(operator, potential) pair they accelerate, in
:mod:`varlearn.regularizers._kernels`; :func:`numba_module` imports a numba
kernel module (``None`` without numba).  ``VARLEARN_ACCEL=0`` in the
environment, or :func:`set_accelerated(False) <set_accelerated>`, forces the
reference paths (the tests compare both).

Threads
-------
One setting caps every CPU thread pool varlearn uses: the threads that run the
numba kernels (a small pool of Python threads, each running a serial
``nogil`` kernel on its share of the rows) and the BLAS / OpenMP pools of the
loaded libraries (through threadpoolctl).  It is ``"auto"`` (default) or a
positive integer:

- :func:`set_threads` sets it (``n`` or ``"auto"``), returns the previous one;
- :func:`threads` is the same as a context manager (restores on exit);
- :func:`get_threads` is the number of kernel threads in effect now;
  :func:`thread_info` gives the whole picture (setting, kernel and BLAS
  threads, usable cores, the CPU load of other processes);
- the environment variable ``VARLEARN_THREADS`` (``N`` or ``auto``) is the
  initial setting.

``n`` threads means: the numba kernels run on ``n`` threads, BLAS and OpenMP
on ``n`` threads.  ``"auto"`` runs the kernels on the cores that other
processes leave idle (at least one) and BLAS / OpenMP on one thread.  The idle
cores are the usable cores (CPU affinity and the cgroup CPU quota) minus the
CPU time other processes use, rounded to whole cores.  On Linux the load is
measured from ``/proc`` (the runnable threads of other processes at the first
use, then the busy time of all cores minus this process's own CPU time,
re-evaluated at most every :data:`REFRESH_SECONDS` while varlearn computes);
elsewhere from the 1-minute load average.

Why one BLAS thread: OpenBLAS threads spin-wait between calls and wait for
each other inside a call, so on a machine where another job keeps a core busy,
or next to the kernel threads, multithreaded BLAS made the runs of this
package 5-20x slower (``scripts/benchmark_threads.py``: a FoE run 172 s with
two BLAS threads, 11-15 s with one), while the gain it can bring on an idle
machine is at most the number of cores on the BLAS part of the work.  The
kernel threads sleep while they wait and share the work out dynamically (a
thread slowed by another job does less of it), so a wrong guess of the idle
cores costs little.  Ask for ``n`` explicitly to give BLAS ``n`` threads.

The limits are applied the first time varlearn computes (any call that looks
up the array backend) and stay in force for the process; ``set_threads``
applies them at once.  The kernels' results do not depend on the number of
threads: the work is split into blocks of rows whose partial sums are added in
a fixed order.

Compile notice
--------------
numba compiles a kernel the first time it is called with a new dtype (only the
dtype in use is compiled) and caches it on disk (``cache=True``), so a compile
happens on the first run only.  Just before the first compilation in a process,
varlearn logs ``COMPILE_NOTICE`` ("compiling numba kernels (first run only)…")
at INFO level on the logger ``"varlearn"`` and calls the callbacks registered
with :func:`on_compile`: ``callback("start", None)`` before the first compile
and ``callback("end", seconds)`` after each compilation of a kernel
(``seconds``: that compile's wall time).  A front end that wants one line on
the terminal either shows INFO records of ``"varlearn"`` or registers a
callback::

    from varlearn import _accel
    _accel.on_compile(lambda stage, s: stage == "start" and print(_accel.COMPILE_NOTICE))
"""
from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import math
import os
import threading
import time

logger = logging.getLogger("varlearn")

__all__ = [
    "set_accelerated", "accelerated", "numba_module",
    "set_threads", "get_threads", "threads", "thread_info", "sync_threads", "run_chunks",
    "on_compile", "COMPILE_NOTICE", "REFRESH_SECONDS",
]

_enabled = os.environ.get("VARLEARN_ACCEL", "1") not in ("0", "false", "False", "no")
_cache: dict = {}


def set_accelerated(flag: bool) -> bool:
    """Enable or disable the accelerated kernels; returns the previous setting."""
    global _enabled
    old = _enabled
    _enabled = bool(flag)
    return old


def accelerated() -> bool:
    """Whether accelerated kernels are enabled."""
    return _enabled


def _module_path(name):
    return name if name.startswith("varlearn.") else f"varlearn.{name}"


def numba_module(name):
    """Import the numba kernel module ``name`` (``varlearn.<name>`` or a full ``varlearn.`` path), or ``None``.

    ``None`` when numba is not installed or the accelerators are disabled.
    """
    if not _enabled:
        return None
    key = ("numba", name)
    if key not in _cache:
        try:
            _install_compile_listener()
            _cache[key] = importlib.import_module(_module_path(name))
        except ImportError as exc:
            logger.info("numba kernels unavailable (%s); using the NumPy reference path", exc)
            _cache[key] = None
    return _cache[key]


# ====================================================================== thread policy
#: Seconds between two re-evaluations of the ``"auto"`` thread count.
REFRESH_SECONDS = 2.0

_lock = threading.RLock()
_state = {
    "setting": None,      # "auto" or an int; None until read from VARLEARN_THREADS
    "threads": None,      # kernel threads in effect
    "blas": None,         # BLAS / OpenMP threads applied through threadpoolctl
    "blas_key": None,     # (threads, loaded libraries) of the last application
    "next_check": 0.0,    # time.monotonic() of the next auto re-evaluation
    "sample": None,       # (wall, busy seconds of all cores, own CPU seconds) for the next delta
    "others": 0.0,        # CPU (in cores) used by other processes at the last evaluation
}


def _parse_threads(n, name):
    if isinstance(n, str):
        text = n.strip().lower()
        if text == "auto":
            return "auto"
        try:
            n = int(text)
        except ValueError:
            raise ValueError(f"{name} must be a positive integer or 'auto', got {n!r}") from None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive integer or 'auto', got {n!r}")
    return n


def _setting():
    if _state["setting"] is None:
        _state["setting"] = _parse_threads(os.environ.get("VARLEARN_THREADS", "auto"), "VARLEARN_THREADS")
    return _state["setting"]


def usable_cores() -> int:
    """Cores this process may run on: the CPU affinity, capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _proc_busy_seconds():
    """Busy CPU seconds of all cores since boot (``/proc/stat``), or ``None``."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal (guest is counted in user)
    vals = [int(v) for v in fields[1:9]]
    busy = vals[0] + vals[1] + vals[2] + vals[5] + vals[6] + vals[7]
    return busy / os.sysconf("SC_CLK_TCK")


def _own_running_threads():
    n = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/stat") as fh:
                # the state follows the parenthesised command name
                if fh.read().rsplit(")", 1)[1].split()[0] == "R":
                    n += 1
    except (OSError, IndexError):
        return None
    return n


def _runnable_others(samples=5, pause=0.002):
    """Mean number of runnable threads of other processes (``/proc/loadavg``), or ``None``."""
    total = 0.0
    for i in range(samples):
        try:
            with open("/proc/loadavg") as fh:
                running = int(fh.read().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return None
        own = _own_running_threads()
        if own is None:
            return None
        total += max(0, running - own)
        if i + 1 < samples:
            time.sleep(pause)
    return total / samples


def _others_load(now):
    """CPU (in cores) that other processes use now, by the best measure available."""
    busy = _proc_busy_seconds()
    own = time.process_time()
    prev = _state["sample"]
    _state["sample"] = None if busy is None else (now, busy, own)
    if busy is not None and prev is not None and now - prev[0] >= 0.5:
        return max(0.0, ((busy - prev[1]) - (own - prev[2])) / (now - prev[0]))
    others = _runnable_others()
    if others is not None:
        return others
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def _auto_threads(now):
    cores = usable_cores()
    others = _others_load(now)
    _state["others"] = others
    return max(1, min(cores, cores - int(others + 0.5)))


def _apply_blas(n):
    """Cap the BLAS and OpenMP pools of the loaded libraries at ``n`` threads.

    Only when ``n`` or the set of loaded libraries changed since the last call,
    so that a ``threadpoolctl.threadpool_limits`` block of the caller is not
    overridden while the setting stays the same.
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a declared dependency
        return
    controller = ThreadpoolController()
    key = (n, tuple(sorted(lib.filepath for lib in controller.lib_controllers)))
    if key != _state["blas_key"]:
        controller.limit(limits=n)
        _state["blas_key"] = key
    _state["blas"] = n


def _resolve(force=False):
    now = time.monotonic()
    setting = _setting()
    if setting == "auto":
        if not force and _state["threads"] is not None and now < _state["next_check"]:
            return _state["threads"]
        n = _auto_threads(now)
        _state["next_check"] = now + REFRESH_SECONDS
    else:
        n = setting
    if n != _state["threads"]:
        logger.debug("varlearn threads: %d (setting %r, other processes use %.2f cores)",
                     n, setting, _state["others"])
    _state["threads"] = n
    # applied on every evaluation: libraries loaded since the last one get capped too
    _apply_blas(1 if setting == "auto" else n)
    return n


def sync_threads() -> int:
    """Apply the thread policy (re-evaluating ``"auto"`` when due); returns the kernel threads.

    Cheap between evaluations (one clock read); called by the array-backend
    look-up and the kernels.
    """
    if _state["threads"] is not None and (_state["setting"] != "auto" or time.monotonic() < _state["next_check"]):
        return _state["threads"]
    with _lock:
        return _resolve()


def set_threads(n="auto"):
    """Cap the threads of the numba kernels and of BLAS / OpenMP together.

    Parameters
    ----------
    n : int or "auto"
        A positive number of threads, or ``"auto"``: the cores that other
        processes leave idle (see the module docstring).

    Returns
    -------
    int or "auto"
        The previous setting.

    Raises
    ------
    ValueError
        If ``n`` is neither a positive integer nor ``"auto"``.
    """
    value = _parse_threads(n, "threads")
    with _lock:
        old = _setting()
        _state["setting"] = value
        _state["blas_key"] = None  # an explicit call always (re)applies the BLAS cap
        _resolve(force=True)
    return old


def get_threads() -> int:
    """Number of threads the numba kernels run on now (the policy applied)."""
    return sync_threads()


@contextlib.contextmanager
def threads(n):
    """Context manager: :func:`set_threads` ``(n)`` inside the block, the previous setting after.

    Yields the number of kernel threads in effect.
    """
    old = set_threads(n)
    try:
        yield get_threads()
    finally:
        set_threads(old)


def thread_info() -> dict:
    """The thread policy in effect: ``setting``, ``threads`` (kernels), ``blas``, ``cores``, ``others_load``."""
    n = sync_threads()
    return {"setting": _setting(), "threads": n, "blas": _state["blas"], "cores": usable_cores(),
            "others_load": round(_state["others"], 2)}


# ---------------------------------------------------------------------- kernel thread pool
_pool = {"executor": None, "size": 0, "pid": None}
_pool_lock = threading.Lock()
_PARTS_PER_THREAD = 2


def _executor(workers):
    """The shared pool, replaced by a bigger one (or a new one after a fork) when needed.

    A replaced pool is not shut down: another caller may be submitting to it at
    that moment; its idle threads exit once it is garbage collected.
    """
    with _pool_lock:
        ex = _pool["executor"]
        if ex is None or _pool["size"] < workers or _pool["pid"] != os.getpid():
            from concurrent.futures import ThreadPoolExecutor

            ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="varlearn-kernel")
            _pool.update(executor=ex, size=workers, pid=os.getpid())
        return ex


def run_chunks(kernel, n_chunks, args, n_threads=None):
    """Call ``kernel(*args, c0, c1)`` over ``range(n_chunks)`` in parallel, each chunk exactly once.

    ``kernel`` must release the GIL (numba ``nogil=True``) and write only its
    own chunks' outputs.  ``n_threads`` defaults to :func:`get_threads`.  The
    chunks are cut into ``_PARTS_PER_THREAD`` contiguous parts per thread that
    the threads (the calling one included) take in turn, and the call returns
    as soon as every part is done: a thread that shares its core with another
    job, or that wakes up late, does less of the work (or none) instead of
    holding up the call.  Threads waiting for work sleep (nothing spins).
    The first exception raised by a part is re-raised.
    """
    n = get_threads() if n_threads is None else int(n_threads)
    n = max(1, min(n, n_chunks))
    if n == 1:
        kernel(*args, 0, n_chunks)
        return
    n_parts = min(n_chunks, _PARTS_PER_THREAD * n)
    bounds = [(i * n_chunks) // n_parts for i in range(n_parts + 1)]
    counter = itertools.count()  # next() on it is atomic under the GIL
    lock = threading.Lock()
    finished = threading.Event()
    state = {"done": 0, "error": None}

    def work():
        for i in iter(counter.__next__, None):
            if i >= n_parts:
                return
            try:
                kernel(*args, bounds[i], bounds[i + 1])
            except BaseException as exc:  # re-raised by the caller
                state["error"] = state["error"] or exc
            with lock:
                state["done"] += 1
                if state["done"] == n_parts:
                    finished.set()

    ex = _executor(n - 1)
    for _ in range(n - 1):
        try:
            ex.submit(work)
        except RuntimeError:  # interpreter shutting down: the calling thread does the rest
            break
    work()
    finished.wait()
    if state["error"] is not None:
        raise state["error"]


# ====================================================================== compile notice
COMPILE_NOTICE = "compiling numba kernels (first run only)…"
_callbacks: list = []
_listener = {"installed": False, "announced": False, "depth": 0, "t0": 0.0}


def on_compile(callback):
    """Register ``callback(stage, seconds)`` for numba compilations of varlearn kernels.

    ``stage`` is ``"start"`` (``seconds`` is ``None``), called once per process
    just before the first compilation, or ``"end"`` after each kernel's
    compilation (``seconds``: its wall time).  Returns a function that removes
    the callback.
    """
    _callbacks.append(callback)

    def remove():
        with contextlib.suppress(ValueError):
            _callbacks.remove(callback)

    return remove


def _notify(stage, seconds):
    for cb in list(_callbacks):
        try:
            cb(stage, seconds)
        except Exception:  # a front end's display must never break a computation
            logger.exception("compile callback %r failed", cb)


def _install_compile_listener():
    if _listener["installed"]:
        return
    from numba.core import event

    class _CompileListener(event.Listener):
        def on_start(self, ev):
            disp = ev.data.get("dispatcher")
            if not getattr(getattr(disp, "py_func", None), "__module__", "").startswith("varlearn."):
                return
            if _listener["depth"] == 0:
                _listener["t0"] = time.perf_counter()
                if not _listener["announced"]:
                    _listener["announced"] = True
                    logger.info(COMPILE_NOTICE)
                    _notify("start", None)
            _listener["depth"] += 1

        def on_end(self, ev):
            disp = ev.data.get("dispatcher")
            if not getattr(getattr(disp, "py_func", None), "__module__", "").startswith("varlearn."):
                return
            _listener["depth"] -= 1
            if _listener["depth"] == 0:
                seconds = time.perf_counter() - _listener["t0"]
                logger.debug("compiled %s in %.1f s", disp.py_func.__qualname__, seconds)
                _notify("end", seconds)

    event.register("numba:compile", _CompileListener())
    _listener["installed"] = True
