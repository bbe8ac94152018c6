"""Process-wide pieces the engine shares: the open result store, the session run, value summaries."""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from nbflow import _pid
from nbflow import settings as _settings
from nbflow.runs import RunRecord, StateEntry, history, new_id
from nbflow.states import state_name

if TYPE_CHECKING:
    from nbflow.store.interface import Store

__all__ = ["ResultTracker", "finish_session", "get_store", "session_run", "session_tracker", "summarize"]

_lock = threading.Lock()
_store: Store | None = None


def get_store() -> Store:
    """The result store of the configured ``NBFLOW_HOME``, opened on first use.

    A store that cannot be opened at all (an unreadable secret key, a directory that cannot be created)
    is replaced by an :class:`~nbflow.store.interface.UnavailableStore`, with one warning: tasks then run
    uncached, and the notebook goes on.
    """
    global _store
    store = _store
    if store is None:
        with _lock:
            if _store is None:
                from nbflow.exceptions import ConfigurationError
                from nbflow.store import ResultStore

                try:
                    _store = ResultStore.from_settings(_settings.get_settings())
                except ConfigurationError as error:
                    import warnings

                    from nbflow.exceptions import NbflowWarning
                    from nbflow.store.interface import UnavailableStore

                    warnings.warn(f"{error}; tasks run without caching until it can be opened (fix the cause, "
                                  "then restart the kernel)", NbflowWarning, stacklevel=4)
                    _store = UnavailableStore(str(error))
            store = _store
    return store


def _reopen(_: _settings.Settings | None) -> None:
    global _store, _session
    with _lock:
        if _store is not None:
            _store.close()
            _store = None
        # The session run belongs to the old home's history (flushed at exit); the new home gets
        # a session run of its own on the next task call.
        _session = None


_settings.on_change(_reopen)

_session: RunRecord | None = None


def session_run() -> RunRecord:
    """The run that records task calls made outside any flow: one per process (or kernel)."""
    global _session
    run = _session
    if run is None or run.pid != _pid.pid:  # a forked child starts a session run of its own
        with _lock:
            if _session is None or _session.pid != os.getpid():
                now = time.time()
                _session = RunRecord(
                    id=new_id(), flow_name="session", kind="session", state=state_name("Running"),
                    state_type="RUNNING", start_time=now, source=_session_source(),
                    history=[StateEntry("Running", "RUNNING", now)],
                )
            run = _session
    return run


def _session_source() -> str | None:
    # A script's path; in a Jupyter kernel, the notebook's (the server names it in the environment).
    main = sys.modules.get("__main__")
    return getattr(main, "__file__", None) or os.environ.get("JPY_SESSION_NAME") or None


def finish_session() -> None:
    """End this process's session run (Completed, or Failed if a task failed) and write history now."""
    _end_session()
    flush_store()
    history().flush()


def flush_store() -> None:
    """Commit the deferred saves of the open store now (a failure warns; the calls' states say so too)."""
    store = _store
    if store is not None:
        store.flush_quietly()


def _end_session() -> None:
    run = _session
    if run is None or run.end_time is not None or run.pid != os.getpid():
        return
    if not run.task_run_count:
        return
    failed = run.failed_task_runs > 0
    run.state = state_name("Failed" if failed else "Completed")
    run.state_type = "FAILED" if failed else "COMPLETED"
    run.end_time = time.time()
    run.history.append(StateEntry(run.state, run.state_type, run.end_time))
    history().mark(run)


def _at_exit() -> None:
    try:
        finish_session()
    except Exception:
        pass
    store = _store
    if store is not None:
        try:
            store.close()  # writes the hit counts it batched
        except Exception:
            pass


# Registered after nbflow.runs' own handler, so it runs first (atexit is last-in, first-out).
atexit.register(_at_exit)


class ResultTracker(Protocol):
    """Links task calls made outside any flow into one graph (a flow does this with its own context)."""

    def remember_result(self, value: Any, task_run_id: str) -> None: ...

    def upstream_of(self, arguments: dict[str, Any]) -> list[str]: ...


# Set by a front door that wants edges between calls made outside flows (the IPython extension does,
# for the calls and cell tasks of one kernel); None costs the engine one attribute check per call.
session_tracker: ResultTracker | None = None


def frontend_hook(run: RunRecord) -> None:
    """Let the notebook UI show a top-level flow run that is starting (a live graph in the cell).

    Only inside a Jupyter kernel with ``display`` on. The import is dynamic on purpose: the UI uses the
    core, never the reverse, and scripts or plain IPython never import widget code. Never raises.
    """
    if "ipykernel" not in sys.modules or not _settings.get_settings().display:
        return
    try:
        import importlib

        importlib.import_module("nbflow.ui.auto").on_flow_start(run)
    except Exception:  # a display problem must never fail the flow
        import logging

        logging.getLogger("nbflow").debug("could not display the task graph", exc_info=True)


_SCALARS = (bool, int, float, complex, type(None))


def summarize(value: Any, limit: int = 80) -> str:
    """A short, cheap description of a value for run records: never calls an expensive ``repr``.

    Never raises: a value whose ``repr``, ``len`` or attributes fail is described by its type alone.
    """
    exact = type(value)
    if exact is float or (exact is int and -(10**15) < value < 10**15) or value is None or exact is bool:
        return repr(value)  # the most common arguments and results, first (this runs on every call)
    try:
        return _summarize(value, limit)
    except Exception:
        return f"<{type(value).__qualname__}>"


def _summarize(value: Any, limit: int) -> str:
    if isinstance(value, int) and value.bit_length() > 1024:
        # repr of a huge int is slow (and raises past sys.get_int_max_str_digits()); it would be cut anyway.
        text = f"int[{value.bit_length()} bits]"
    elif isinstance(value, _SCALARS):
        text = repr(value)
    elif isinstance(value, str):
        text = repr(value) if len(value) <= limit else repr(value[: limit - 5]) + "..."
    elif isinstance(value, (bytes, bytearray, list, tuple, set, frozenset, dict)):
        text = f"{type(value).__name__}[{len(value)}]"
    else:
        kind = type(value).__qualname__
        shape = getattr(value, "shape", None)
        if isinstance(shape, tuple):
            dtype = getattr(value, "dtype", None)
            text = f"{kind} shape={shape}" + (f" dtype={dtype}" if dtype is not None and kind == "ndarray" else "")
        else:
            text = f"<{kind}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
