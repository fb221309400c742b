"""``python -m unireg.cli`` is the ``unireg`` command as well (like ``python -m unireg``)."""

import sys

from . import main

sys.exit(main())
