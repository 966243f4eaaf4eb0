"""Allow ``python -m sicog`` (what torchrun launches)."""

import sys

from sicog.cli import console

sys.exit(console())
