"""Upper level: the solver objects MAID, FixedAccuracy, HOAG, ISGD and their dispatcher :func:`minimize_bilevel`."""
from .base import BilevelSolver, StopRun
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .fixed import FixedAccuracy
from .history import HISTORY_FIELDS, BilevelResult, history_to_csv
from .hoag import HOAG
from .isgd import ISGD
from .maid import MAID
from .minimize import get_method, minimize_bilevel, register_method
from .options import DEFAULTS, DEPRECATED_OPTIONS, METHODS, RUNTIME_OPTIONS, resolve_options
from .state import BilevelState

__all__ = ["minimize_bilevel", "MAID", "FixedAccuracy", "HOAG", "ISGD", "BilevelSolver", "BilevelState", "StopRun",
           "register_method", "get_method", "BilevelResult", "HISTORY_FIELDS", "history_to_csv", "CheckpointError",
           "load_checkpoint", "save_checkpoint", "DEFAULTS", "DEPRECATED_OPTIONS", "RUNTIME_OPTIONS", "METHODS",
           "resolve_options"]
