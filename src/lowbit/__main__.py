"""``python -m lowbit ...`` (and ``torchrun -m lowbit ...``): the ``lowbit`` command line."""

import sys

from .cli import main

sys.exit(main())
