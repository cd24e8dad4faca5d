"""``python tests/difffuzz [options]``: a campaign run by hand (see campaign.py)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from difffuzz.campaign import main  # noqa: E402

sys.exit(main())
