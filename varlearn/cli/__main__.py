"""``python -m varlearn.cli``: the same as ``python -m varlearn``."""
import sys

from . import main

sys.exit(main())
