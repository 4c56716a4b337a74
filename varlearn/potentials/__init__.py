r"""Potentials :math:`\varphi(t; \nu)`: scalar ones applied elementwise, and a group potential.

A *scalar* potential acts on each entry of ``t``; a *group* potential
(:class:`GroupSmoothedL1`, :attr:`Potential.group_axis` ``= -3``) acts on the
vectors along one axis of ``t`` (the channel axis of an operator output
``(..., C, H, W)``), so its value sums that axis away.  Every potential has at
most one positive shape parameter :math:`\nu` (a smoothing or scale;
:class:`Quadratic` has none and ignores it).

``t`` is an array of any namespace (NumPy or CuPy); ``nu`` is a positive
scalar or an array broadcastable against ``t`` (against the reduced shape for
a group potential's value).  Results follow ``t``'s namespace.  Every array
method takes ``out=None``: the result is written into ``out`` when given
(``out`` may be ``t`` itself, or ``v`` for :meth:`Potential.hess_apply`) and
returned.

The bound constants (``d1_max``, ``d2_max``, ``d2_min``, ``d3_max``,
``d2_dnu_max``) are what the regularizer bounds of
:mod:`varlearn.regularizers.composite` are built from; for a group potential
:math:`|\cdot|` is the Euclidean norm of the group vector and a second
derivative is the group Hessian, measured in operator norm.

References
----------
.. [1] L. I. Rudin, S. Osher, E. Fatemi, "Nonlinear total variation based noise removal
   algorithms", Physica D 60 (1992) 259-268.
.. [2] C. R. Vogel, M. E. Oman, "Iterative methods for total variation denoising",
   SIAM J. Sci. Comput. 17 (1996) 227-238 (the smoothing :math:`\sqrt{t^2+\nu^2}`).
.. [3] P. J. Huber, "Robust estimation of a location parameter", Ann. Math. Statist. 35
   (1964) 73-101.
.. [4] S. Roth, M. J. Black, "Fields of Experts", Int. J. Comput. Vision 82 (2009) 205-229
   (the Student-t expert).
.. [5] M. J. Ehrhardt, L. Roberts, "Inexact derivative-free optimization for bilevel
   learning", J. Math. Imaging Vis. 63 (2021) 580-600 (smoothed TV in bilevel learning).
"""
from .base import Potential
from .classic import Huber, LogStudentT, Quadratic
from .smoothed import GroupSmoothedL1, SmoothedL1

__all__ = ["Potential", "SmoothedL1", "GroupSmoothedL1", "Huber", "LogStudentT", "Quadratic",
           "POTENTIALS", "GROUP_POTENTIALS"]

#: registry of the scalar potentials, used by the test suite and by name elsewhere
POTENTIALS = {
    "smoothed_l1": SmoothedL1,
    "huber": Huber,
    "log_student_t": LogStudentT,
    "quadratic": Quadratic,
}

#: registry of the group potentials
GROUP_POTENTIALS = {"group_smoothed_l1": GroupSmoothedL1}
