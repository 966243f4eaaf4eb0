"""Allow ``python -m sicog`` (what torchrun launches)."""

import sys

from sicog.cli import main

sys.exit(main())
