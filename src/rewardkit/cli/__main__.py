"""`python -m rewardkit.cli ...`: the same command line as the `rewardkit` script."""

import sys

from rewardkit.cli import main

sys.exit(main())
