"""`python -m pruning.cli ...` is the `surgery` command."""

import sys

from pruning.cli import main

sys.exit(main())
