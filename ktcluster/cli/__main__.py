"""``python -m ktcluster.cli``: the same as the ``ktcluster`` command."""

import sys

from . import main

sys.exit(main())
