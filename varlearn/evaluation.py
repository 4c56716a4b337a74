"""Evaluation of learned denoisers: tight lower-level solves, image quality, TV baselines, grid search.

* :class:`TightSolver`: f(θ) = U(x̂(θ)) from lower-level solves to a fixed
  tight tolerance, warm-started from the previous solve;
* :func:`image_quality`: PSNR (mean of per-image values and of the whole
  batch) and mean SSIM from :mod:`varlearn.metrics`;
* :func:`evaluate_theta`: one tight solve at θ and its image quality;
* :func:`chambolle_best`, :func:`chambolle_baseline`:
  :func:`skimage.restoration.denoise_tv_chambolle` at the weight that
  maximises the mean training PSNR, evaluated on held-out images;
* :func:`grid_search_2d`: the optimum of a 2-parameter f(θ) by a coarse grid,
  a fine grid around its best point and a Nelder–Mead polish.

Clipping: the image-quality numbers here clip the estimate to [0, 1]
(``clip=True`` of :mod:`varlearn.metrics`), as the MAID reference code does;
the dictionaries say so in ``"clipped": True``.

References
----------
A. Chambolle, "An algorithm for total variation minimization and applications",
J. Math. Imaging Vis. 20:89-97, 2004 (``denoise_tv_chambolle``).

J. A. Nelder and R. Mead, "A simplex method for function minimization",
Comput. J. 7(4):308-313, 1965 (the polish of :func:`grid_search_2d`).
"""
from __future__ import annotations

import time

import numpy as np

from .backend import to_device, to_numpy
from .metrics import mean_psnr, psnr, ssim
from .solvers import solve_lower

__all__ = ["TightSolver", "image_quality", "evaluate_theta", "chambolle_best", "chambolle_baseline",
           "grid_search_2d", "CLIP"]

#: the image-quality numbers clip the estimate to [0, 1] (as the MAID reference code)
CLIP = True


def image_quality(x, clean):
    """``{"psnr_mean", "psnr_batch", "ssim_mean", "clipped"}`` of ``x`` against ``clean`` (stacks).

    ``psnr_mean`` is the mean of per-image PSNRs, ``psnr_batch`` the PSNR of
    one MSE over all pixels, ``ssim_mean`` the mean per-image SSIM; ``x`` is
    clipped to [0, 1] first (``clipped``: True).
    """
    return {"psnr_mean": mean_psnr(x, clean, clip=CLIP), "psnr_batch": psnr(x, clean, clip=CLIP),
            "ssim_mean": ssim(x, clean, clip=CLIP), "clipped": CLIP}


class TightSolver:
    """f(θ) = U(x̂(θ)) from lower-level solves to the fixed tolerance ``tol``, warm-started.

    Each :meth:`solve` starts from ``x0`` or else from the previous solution;
    ``n_solves`` and ``n_iter`` count the solves and their FISTA iterations.
    A solve stops by the rule of :func:`~varlearn.solve_lower` (certified
    distance ``<= tol``) or at ``maxiter`` iterations.
    """

    def __init__(self, problem, upper, tol, maxiter=100000):
        self.problem, self.upper, self.tol, self.maxiter = problem, upper, tol, maxiter
        self.x = None
        self.n_solves = 0
        self.n_iter = 0

    def solve(self, theta, x0=None, tol=None):
        """The :class:`~varlearn.results.Result` of one lower-level solve at ``theta`` (host or device)."""
        th = to_device(np.asarray(to_numpy(theta), dtype=np.float64), self.problem.xp)
        r = solve_lower(self.problem, th, tol or self.tol, x0=x0 if x0 is not None else self.x,
                        maxiter=self.maxiter)
        self.x = r.x
        self.n_solves += 1
        self.n_iter += r.nit
        return r

    def f(self, theta, x0=None, tol=None):
        """U(x̂(θ)) as a float."""
        return float(self.upper.value(self.solve(theta, x0=x0, tol=tol).x))


def evaluate_theta(problem, upper, theta, tol, x0=None, maxiter=50000):
    """One solve of ``problem`` at ``theta`` to ``tol``: :func:`image_quality`, ``f``, iterations, status.

    ``upper`` must be a :class:`~varlearn.SquaredError` (its ``clean`` images
    are the reference).
    """
    r = TightSolver(problem, upper, tol, maxiter=maxiter).solve(theta, x0=x0)
    out = image_quality(r.x, upper.clean)
    out.update(f=float(upper.value(r.x)), solve_iter=int(r.nit), solve_status=r.status)
    return out


def _chambolle(noisy, weight):
    from skimage.restoration import denoise_tv_chambolle

    return np.stack([denoise_tv_chambolle(y, weight=weight) for y in to_numpy(noisy)])


def chambolle_best(noisy, clean, quick=False):
    """The ``denoise_tv_chambolle`` weight maximising the mean PSNR of ``noisy`` against ``clean``.

    A geometric grid over [0.01, 0.5] (12 points, ``quick``; else 31), then a
    finer one over [w/1.15, w·1.15] (5 or 15 points) around the best.  Returns
    ``(weight, psnr, details)``.
    """
    clean = to_numpy(clean)

    def score(w):
        return mean_psnr(_chambolle(noisy, w), clean, clip=CLIP)

    grid = np.geomspace(0.01, 0.5, 12 if quick else 31)
    scores = [score(w) for w in grid]
    w = float(grid[int(np.argmax(scores))])
    fine = np.geomspace(w / 1.15, w * 1.15, 5 if quick else 15)
    fs = [score(v) for v in fine]
    k = int(np.argmax(fs))
    return float(fine[k]), float(fs[k]), {"grid": grid, "grid_psnr": scores, "fine": fine, "fine_psnr": fs}


def chambolle_baseline(noisy_tr, clean_tr, noisy_te, clean_te, quick=False):
    """:func:`chambolle_best` on the training images, evaluated (:func:`image_quality`) on the held-out ones."""
    t0 = time.perf_counter()
    w, psnr_train, details = chambolle_best(noisy_tr, clean_tr, quick)
    out = {"weight": w, "train_psnr_mean": psnr_train, "search": details,
           "search_time": time.perf_counter() - t0,
           "note": "skimage denoise_tv_chambolle (isotropic TV, Chambolle's projection) per image, weight "
                   "chosen by mean PSNR on the training images"}
    out.update(image_quality(_chambolle(noisy_te, w), to_numpy(clean_te)))
    return out


def _grid(solver, g0, g1, tol, x_start=None):
    """f on the grid g0 x g1, warm-started along each row.

    Each row starts from ``x_start`` when it is given, else from the solution
    at the first point of the previous row (the first row from the solver's
    last solution).
    """
    F = np.full((g0.size, g1.size), np.nan)
    row_start = x_start
    for i, a in enumerate(g0):
        x = row_start
        for j, b in enumerate(g1):
            r = solver.solve((a, b), x0=x, tol=tol)
            F[i, j] = float(solver.upper.value(r.x))
            x = r.x
            if j == 0 and x_start is None:
                row_start = r.x
    return F


def grid_search_2d(solver, coarse, fine_half, fine_n, nm_fev, coarse_tol=None):
    """Minimise a 2-parameter f(θ) (a :class:`TightSolver`): coarse grid, fine grid, Nelder–Mead.

    Parameters
    ----------
    solver : TightSolver
    coarse : (array, array)
        The coarse grid values of θ0 and θ1, solved to ``coarse_tol``
        (default ``solver.tol``).
    fine_half : (float, float)
        Half-widths of the fine grid (``fine_n`` x ``fine_n`` points, solved
        to ``solver.tol``) around the best coarse point.
    nm_fev : int
        Function evaluations of the Nelder–Mead polish (``xatol`` 1e-4,
        ``fatol`` 1e-8) from the best fine point.

    Returns
    -------
    (theta_star, f_star, details)
        ``details`` holds both grids and their values, the Nelder–Mead result
        and the solve counts.
    """
    from scipy.optimize import minimize

    g0, g1 = (np.asarray(g, dtype=float) for g in coarse)
    coarse_tol = coarse_tol or solver.tol
    F = _grid(solver, g0, g1, coarse_tol)
    i, j = np.unravel_index(np.nanargmin(F), F.shape)
    best = (float(g0[i]), float(g1[j]))
    f0 = np.linspace(best[0] - fine_half[0], best[0] + fine_half[0], fine_n)
    f1 = np.linspace(best[1] - fine_half[1], best[1] + fine_half[1], fine_n)
    solver.solve(best)
    Ff = _grid(solver, f0, f1, solver.tol, x_start=solver.x)
    i2, j2 = np.unravel_index(np.nanargmin(Ff), Ff.shape)
    start = np.array([f0[i2], f1[j2]])
    solver.solve(start)
    simplex = np.array([start, start + [fine_half[0] / 5, 0.0], start + [0.0, fine_half[1] / 5]])
    res = minimize(solver.f, start, method="Nelder-Mead",
                   options={"xatol": 1e-4, "fatol": 1e-8, "maxfev": nm_fev, "initial_simplex": simplex})
    theta_star = np.asarray(res.x, dtype=float)
    f_star = solver.f(theta_star)
    details = {
        "coarse": {"theta0": g0, "theta1": g1, "f": F, "best": best, "tol": coarse_tol},
        "fine": {"theta0": f0, "theta1": f1, "f": Ff, "best": [float(f0[i2]), float(f1[j2])],
                 "f_best": float(Ff[i2, j2])},
        "nelder_mead": {"nfev": int(res.nfev), "success": bool(res.success), "message": str(res.message)},
        "tol": solver.tol, "n_solves": solver.n_solves, "n_lower_iter": solver.n_iter,
    }
    return theta_star, f_star, details
