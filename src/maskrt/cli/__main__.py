"""`python -m maskrt.cli`."""

import sys

from maskrt.cli import main

sys.exit(main())
