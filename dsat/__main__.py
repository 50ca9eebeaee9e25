"""``python -m dsat`` is the ``dsat`` command."""

import sys

from dsat.tools.cli import main

sys.exit(main())
