"""`python -m splitserve` runs the command line."""

import sys

from splitserve.cli import main

sys.exit(main())
