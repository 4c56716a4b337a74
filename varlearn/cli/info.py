"""``varlearn info``: versions, backends and whether a GPU is usable."""
from __future__ import annotations

import platform

from ..backend import cupy_unusable_reason, cupy_usable
from .common import versions
from .errors import EXIT_OK

NAME = "info"
HELP = "versions, backends and GPU availability"
DESCRIPTION = "Print versions, backends and whether a GPU is usable."


def add_arguments(parser):  # noqa: ARG001  (no options)
    return None


def run(args):  # noqa: ARG001
    from .. import _accel

    v = versions(include_cupy=False)
    lines = [f"varlearn {v['varlearn']}", f"python {v['python']} ({platform.platform()})"]
    for name in ("numpy", "scipy", "scikit-image", "matplotlib", "imageio"):
        lines.append(f"{name} {v[name]}" if v[name] else f"{name} not installed")
    if v.get("numba"):
        state = "enabled" if _accel.accelerated() else "disabled (VARLEARN_ACCEL=0)"
        lines.append(f"numba {v['numba']} (CPU kernels {state})")
    else:
        lines.append("numba not installed (CPU kernels off: pip install 'varlearn[fast]')")
    t = _accel.thread_info()
    lines.append(f"threads: setting {t['setting']} -> {t['threads']} kernel thread(s), BLAS {t['blas']} "
                 f"({t['cores']} usable core(s), other processes use {t['others_load']:g}; --threads N|auto)")
    usable = cupy_usable()
    try:
        import cupy

        lines.append(f"cupy {cupy.__version__}")
    except Exception:  # noqa: BLE001
        lines.append("cupy not installed (GPU backend: pip install 'varlearn[gpu]')")
    lines.append("backends: numpy" + (", cupy" if usable else ""))
    lines.append("GPU: usable (--backend cupy)" if usable else f"GPU: not usable: {cupy_unusable_reason()}")
    print("\n".join(lines))
    return EXIT_OK
