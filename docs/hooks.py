"""A build hook: nbflow's docstrings use reStructuredText roles (``:class:`Task```, ``:func:`~nbflow.task```),
which mkdocstrings renders as text around a code span. Show the code span alone, as the last dotted part
when the role asked for that with ``~``."""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|exc|data|obj|const):<code>(~)?([^<]*)</code>")


def _code(match: re.Match[str]) -> str:
    name = match.group(2)
    return f"<code>{name.rsplit('.', 1)[-1] if match.group(1) else name}</code>"


def on_page_content(html: str, **_: Any) -> str:
    return _ROLE.sub(_code, html)
