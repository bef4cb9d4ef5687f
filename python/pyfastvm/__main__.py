"""`python -m pyfastvm`: the same as the `pyfastvm` command."""

import sys

from .cli import main

sys.exit(main())
