"""``python -m aios.cli``: the ``aios`` command (tests run it so, with the checkout under test)."""

import sys

from aios.cli import main

sys.exit(main())
