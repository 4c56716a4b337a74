"""``python -m varlearn``: the ``varlearn`` command line (see :mod:`varlearn.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
