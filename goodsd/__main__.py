"""Lets `python -m goodsd` behave exactly like the `goodsd` console script."""

import sys

from goodsd.cli import main

sys.exit(main())
