"""marimo's persistent cache (``mo.persistent_cache``) as a peer of the benchmarks, where it installs (it is in
the ``bench`` extra; a benchmark without it prints "marimo: not installed" in its place).

Outside a marimo notebook only the decorator form works: ``with mo.persistent_cache(...)`` needs marimo's
runtime (``ContextNotInitializedError`` in a plain script), and the decorator applied at the top level of a
script run as ``__main__`` fails while hashing (that module's ``__builtins__`` is a module, not a dict). It works
applied inside a function, as here: it keys a call by the function's source and its arguments, and writes one
pickle per entry under ``save_path/<function name>/`` (written to a sibling, then renamed in; no fsync).

``frame_result`` is the marimo variant of ``bench_strings.py``'s section 4 (``result_worker``): a task returning a
DataFrame with string columns, stored in one process and loaded in a fresh one.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable
from typing import Any

NAME = "marimo"
LABEL = "marimo persistent_cache"
NOT_INSTALLED = "marimo: not installed"
clock = time.perf_counter


def installed() -> bool:
    """Whether marimo can be imported here (checked without importing it)."""
    return importlib.util.find_spec("marimo") is not None


def persistent(fn: Callable[..., Any], home: str) -> Any:
    """``fn`` under ``@mo.persistent_cache(save_path=home)``.

    The decorator reads the scope its references resolve in from a fixed number of frames above it: applied in
    ``_decorate``, that is always this function's locals, whoever calls ``persistent``."""
    import marimo as mo

    # Outside a notebook, marimo warns on every new cached function that no 'app' is in scope (its stderr only).
    logging.getLogger("marimo").setLevel(logging.ERROR)
    return _decorate(mo, fn, home)


def _decorate(mo: Any, fn: Callable[..., Any], home: str) -> Any:
    return mo.persistent_cache(save_path=home)(fn)


def state(call: Any, before: int) -> str:
    """"Cached" when the calls since ``before`` hits were all hits, as nbflow's state names it."""
    return "Cached" if call.hits > before else "Miss"


# -- bench_strings.py, section 4: a DataFrame result with string columns -----------------------------------------

_FRAMES: dict[int, Any] = {}


def stored_frame(seed: int) -> Any:
    """The task whose result is stored: a frame built before the clock started (its own work: a lookup). Its
    global ``_FRAMES`` is not part of marimo's key (not in the scope the decorator read), so the key is the
    function's source and the seed, as ``bench_strings.py`` keys nbflow's task by the seed alone."""
    return _FRAMES[seed]


def frame_result(params: dict[str, Any]) -> dict[str, Any]:
    """One store or one fresh-process load of the DataFrame result by marimo, with ``bench_strings.py``'s
    ``result_worker`` parameters (``home``, ``rows``, ``dtype``, ``step``: "store" or "hit"); this process is new.
    Store: the call's time with the frame already built (what storing adds); hit: a fresh process's call, after
    a warm-up on a tiny entry of the same task. Without marimo: ``{"seconds": None, "missing": NOT_INSTALLED}``."""
    if not installed():
        return {"seconds": None, "missing": NOT_INSTALLED}
    import pandas  # noqa: F401 (imported before any clock starts, as a task's warm-up call imports it)
    from bench_strings import make_frame

    home, rows, dtype, step = params["home"], params["rows"], params["dtype"], params["step"]
    if step == "store":
        _FRAMES.update({0: make_frame(0, 10, dtype), 1: make_frame(1, rows, dtype)})
    call = persistent(stored_frame, home)
    call(0)  # warm-up: imports, the store, a tiny entry of the same task
    before = call.hits
    started = clock()
    frame = call(1)
    seconds = clock() - started
    if step == "hit" and state(call, before) != "Cached":
        raise RuntimeError("marimo: a fresh process did not hit the entry an earlier one stored")
    return {"seconds": seconds, "rows": len(frame)}
