"""``python -m nbflow.cli``: the same as the ``nbflow`` console script."""

from __future__ import annotations

import sys

from nbflow.cli import main

sys.exit(main())
