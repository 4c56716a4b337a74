"""Self-Tuning Networks (MacKay et al., ICLR 2019) for learned denoisers, on NumPy or CuPy.

* :mod:`varlearn.stn.layers`: convolution, STN-gated convolution and linear
  layers, ReLU and per-example channel dropout, with hand-written backward passes.
* :mod:`varlearn.stn.models`: the :class:`STNModel` protocol and the models
  ``"dncnn"`` (:class:`DnCNNSTN`), ``"vn"`` (:class:`VariationalSTN`) and
  ``"linear"`` (:class:`LinearSTN`), :func:`model_from_config`.

The hyperparameter container, the trainer and the baselines live in
:mod:`varlearn.stn.hyperparameters`, :mod:`varlearn.stn.train` and
:mod:`varlearn.stn.baselines` (imported on use).
"""
from .layers import STNConv2d, STNLinear, conv2d, conv2d_backward
from .models import MODELS, DnCNNSTN, LinearSTN, STNModel, VariationalSTN, model_from_config

__all__ = [
    "STNModel", "DnCNNSTN", "VariationalSTN", "LinearSTN", "MODELS", "model_from_config",
    "STNConv2d", "STNLinear", "conv2d", "conv2d_backward",
]
