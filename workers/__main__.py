"""``python -m workers`` = the ``sami`` command (for a checkout that is not pip-installed)."""

import sys

from workers.cli import main

sys.exit(main())
