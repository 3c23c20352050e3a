"""``python -m symbi_cli`` is the same as ``symbi``."""

import sys

from symbi_cli.main import main

sys.exit(main())
