"""Upper level: MAID, fixed-accuracy descent and HOAG (:func:`minimize_bilevel`)."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .minimize import HISTORY_FIELDS, BilevelResult, history_to_csv, minimize_bilevel
from .options import DEFAULTS, METHODS, resolve_options

__all__ = ["minimize_bilevel", "BilevelResult", "HISTORY_FIELDS", "history_to_csv", "CheckpointError",
           "load_checkpoint", "save_checkpoint", "DEFAULTS", "METHODS", "resolve_options"]
