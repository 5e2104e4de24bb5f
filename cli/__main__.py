"""``python -m cli`` = the ``sami`` command (for a checkout that is not pip-installed)."""

import sys

from cli.main import main

sys.exit(main())
