"""``python -m tlora_analysis.study DIR NAME THREADS``: one cell in its own process (the local executor)."""

import sys

from .execute import _cell_main

sys.exit(_cell_main(sys.argv[1:]))
