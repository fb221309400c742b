"""``python -m unireg`` is the ``unireg`` command (used by the workflow inside conda envs)."""

import sys

from .cli import main

sys.exit(main())
