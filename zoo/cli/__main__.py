"""`python -m zoo.cli ...`: the `zoo` command without its console script."""

import sys

from zoo.cli import main

sys.exit(main())
