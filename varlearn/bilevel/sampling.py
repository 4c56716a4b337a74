r"""Mini-batch samplers for stochastic bilevel learning, with checkpointable state.

Three ways to draw the mini-batch :math:`B_k` of step ``k`` from ``n`` samples:

``"shuffle"`` (default)
    Sampling without replacement, reshuffled per epoch: at the start of each
    epoch a fresh permutation of ``range(n)`` is drawn, and the epoch's batches
    are its consecutive slices of ``batch_size`` indices; the last batch of an
    epoch holds the remaining ``n mod batch_size`` indices when that is not 0
    (batches never straddle two epochs).  Every index appears exactly once per
    epoch.
``"replacement"``
    ``batch_size`` indices drawn i.i.d. uniformly from ``range(n)`` (with
    replacement, also within a batch): the setting of the convergence theory.
    An epoch is ``n`` drawn indices; ``position`` counts the indices drawn in
    the current epoch, and a batch that crosses ``n`` ends the epoch.
``"cyclic"``
    The fixed, unshuffled batches ``[0, b), [b, 2b), ...`` (the last one
    shorter when ``b`` does not divide ``n``), cycled; no randomness.  This is
    what the ISGD authors' code does.

Random draws come from a NumPy ``Generator`` over ``PCG64`` seeded with
``seed``; its ``bit_generator.state`` (two 128-bit integers, kept exact as
JSON integers) together with ``epoch``, ``position`` and the current
permutation is the whole sampler state (:meth:`Sampler.state_dict`), so a
resumed run draws exactly the batches an uninterrupted run would.

References
----------
M. S. Salehi, S. Mukherjee, L. Roberts, M. J. Ehrhardt, "Bilevel learning with
inexact stochastic gradients", SSVM 2025, arXiv 2412.12049.
"""
from __future__ import annotations

import numpy as np

__all__ = ["Sampler", "SAMPLINGS"]

SAMPLINGS = ("shuffle", "replacement", "cyclic")


def _check_int(v, name, low):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    return int(v)


class Sampler:
    """Draws mini-batches of sample indices (see the module docstring for the three kinds).

    Parameters
    ----------
    n : int >= 1
        Number of samples.
    batch_size : int, 1 <= batch_size <= n
    kind : {"shuffle", "replacement", "cyclic"}
    seed : int >= 0
        Seed of the ``PCG64`` generator (unused by ``"cyclic"``).

    Attributes
    ----------
    epoch : int
        Completed epochs (passes over the data).
    position : int
        Indices drawn in the current epoch, in ``[0, n)``.
    """

    def __init__(self, n, batch_size, kind="shuffle", seed=0):
        self.n = _check_int(n, "n", 1)
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        if self.batch_size > self.n:
            raise ValueError(f"batch_size must be at most the number of samples {self.n}, got {batch_size!r}")
        if kind not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {kind!r}")
        self.kind = kind
        self.seed = _check_int(seed, "seed", 0)
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        self.epoch = 0
        self.position = 0
        self.perm = None  # the current epoch's permutation ("shuffle"), drawn when the epoch starts

    def next(self):
        """The next batch: ``(indices, epoch)``.

        ``indices`` is a new 1-D ``int64`` host array; ``epoch`` the (0-based)
        epoch the batch belongs to.  After the call :attr:`epoch` is
        ``epoch + 1`` exactly when the batch completed an epoch.
        """
        n, b = self.n, self.batch_size
        epoch = self.epoch
        if self.kind == "replacement":
            idx = self.rng.integers(0, n, size=b, dtype=np.int64)
            self.position += b
            if self.position >= n:
                self.epoch += 1
                self.position -= n
            return idx, epoch
        if self.kind == "shuffle":
            if self.position == 0:
                self.perm = self.rng.permutation(n).astype(np.int64)
            order = self.perm
        else:
            order = np.arange(n, dtype=np.int64)
        stop = min(self.position + b, n)
        idx = order[self.position:stop].copy()
        self.position = stop
        if stop == n:
            self.epoch += 1
            self.position = 0
        return idx, epoch

    # ------------------------------------------------------------------ state
    def state_dict(self):
        """JSON-serialisable state: ``kind``, ``n``, ``batch_size``, ``seed``, ``epoch``, ``position``,
        ``bit_generator`` (the exact ``PCG64`` state; Python integers).  The permutation is
        :meth:`perm_array`."""
        return {"kind": self.kind, "n": self.n, "batch_size": self.batch_size, "seed": self.seed,
                "epoch": self.epoch, "position": self.position, "bit_generator": self.rng.bit_generator.state}

    def perm_array(self):
        """The current permutation (``int64``, shape ``(n,)``), or an empty array when there is none."""
        return np.zeros(0, np.int64) if self.perm is None else self.perm.copy()

    def load_state_dict(self, state, perm=None):
        """Restore :meth:`state_dict` (and :meth:`perm_array`); raises ``ValueError`` naming a bad field.

        ``kind``, ``n`` and ``batch_size`` must equal this sampler's: a resumed
        run must draw from the same data with the same batches.
        """
        for key in ("kind", "n", "batch_size", "seed"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"sampler state field {key!r} is {state.get(key)!r}, this sampler has "
                                 f"{getattr(self, key)!r}")
        epoch = _check_int(state.get("epoch"), "sampler state field 'epoch'", 0)
        position = _check_int(state.get("position"), "sampler state field 'position'", 0)
        if position >= self.n:
            raise ValueError(f"sampler state field 'position' must be < {self.n}, got {position}")
        bg = state.get("bit_generator")
        inner = bg.get("state") if isinstance(bg, dict) else None
        if (not isinstance(inner, dict) or bg.get("bit_generator") != "PCG64"
                or not all(isinstance(inner.get(k), int) and inner[k] >= 0 for k in ("state", "inc"))):
            raise ValueError(f"sampler state field 'bit_generator' must be a PCG64 state, got {bg!r:.120}")
        p = None
        if perm is not None and np.size(perm):
            p = np.asarray(perm)
            if p.shape != (self.n,) or p.dtype.kind not in "iu" or not np.array_equal(np.sort(p), np.arange(self.n)):
                raise ValueError(f"sampler permutation must be a permutation of range({self.n})")
            p = p.astype(np.int64)
        if self.kind == "shuffle" and position > 0 and p is None:
            raise ValueError("sampler state: a 'shuffle' sampler in the middle of an epoch needs its permutation")
        self.rng.bit_generator.state = bg
        self.epoch, self.position, self.perm = epoch, position, p
