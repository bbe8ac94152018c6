"""Whether this code runs in a Jupyter kernel: the one test of it, for everything that displays."""

from __future__ import annotations

import sys

__all__ = ["in_kernel"]


def in_kernel() -> bool:
    """True inside a Jupyter kernel (a display reaches a front-end); False in a terminal IPython, a plain
    script, or a process that merely imported ipykernel (a test run, a tool). IPython is not imported here:
    a process that never imported it is in no kernel."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None
