"""A real in-process IPython shell with the nbflow extension loaded, and its display messages recorded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def shell() -> Iterator[Any]:
    from IPython.core.displaypub import CapturingDisplayPublisher
    from IPython.testing.globalipapp import get_ipython

    ip = get_ipython()
    ip.reset(new_session=False)
    saved_publisher = ip.display_pub
    ip.display_pub = CapturingDisplayPublisher()
    # A terminal shell formats text only; a notebook kernel formats rich types too.
    saved_types = ip.display_formatter.active_types
    ip.display_formatter.active_types = ["text/plain", "text/html", "image/png"]
    ip.run_line_magic("load_ext", "nbflow")
    yield ip
    if "nbflow" in ip.extension_manager.loaded:
        ip.run_line_magic("unload_ext", "nbflow")
    ip.display_pub = saved_publisher
    ip.display_formatter.active_types = saved_types
    ip.reset(new_session=False)

