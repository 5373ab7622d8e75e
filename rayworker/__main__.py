"""``python -m rayworker``: the same as the ``rayworker`` command."""

import sys

from rayworker.cli import main

sys.exit(main())
