"""`python -m rewardkit.cli ...`: the same command line as the `rewardkit` script."""

from rewardkit.cli import entry

entry()
