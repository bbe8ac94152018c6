"""What users see of nbflow when their code fails or gets a warning: their own frames and lines.

A failing task's exception passes through nbflow's engine on its way back to the caller. The frames it
passes are marked with ``__tracebackhide__`` (honoured by IPython's tracebacks, its debugger, and pytest),
and the frames between the engine and the task's function are dropped from the traceback itself, so a
plain ``python script.py`` shows the user's frames with at most the two where the call enters nbflow.
``NBFLOW_DEBUG=1`` (read when nbflow is imported) keeps every frame, for debugging nbflow itself.

Warnings about a user's call (an argument that cannot be fingerprinted, an argument changed in place...)
are attributed to the first frame outside nbflow: the line of the call, not a line of nbflow's source.
"""

from __future__ import annotations

import itertools
import os
import sys
import warnings
from types import FrameType, TracebackType

__all__ = ["HIDE_FRAMES", "hide_internal_frames", "warn_at_caller"]

#: Whether nbflow's frames are hidden from the tracebacks of task failures (not with ``NBFLOW_DEBUG=1``).
HIDE_FRAMES = os.environ.get("NBFLOW_DEBUG", "").strip().lower() not in {"1", "true", "yes", "on", "y", "t"}

# The package's directory with a trailing separator: a sibling named e.g. "nbflow_extras" is not nbflow.
_NBFLOW_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _hidden(frame: FrameType) -> bool:
    # The name check first: reading f_locals builds a dict, and most frames never set the marker.
    return "__tracebackhide__" in frame.f_code.co_varnames and bool(frame.f_locals.get("__tracebackhide__"))


def hide_internal_frames(error: BaseException) -> BaseException:
    """Drop the frames marked ``__tracebackhide__`` from ``error``'s traceback (in place) and return it.

    Called where the engine catches a task's exception and again before it raises it to the caller (a
    failure raised twice would otherwise carry the frames of both raises). A traceback of nbflow's frames
    only (an error of nbflow's own making) is kept whole."""
    if not HIDE_FRAMES:
        return error
    kept: list[TracebackType] = []
    tb = error.__traceback__
    dropped = False
    while tb is not None:
        if _hidden(tb.tb_frame):
            dropped = True
        else:
            kept.append(tb)
        tb = tb.tb_next
    if not dropped or not kept:
        return error
    for outer, inner in itertools.pairwise(kept):
        outer.tb_next = inner
    kept[-1].tb_next = None
    error.__traceback__ = kept[0]
    return error


def _front_ends() -> tuple[str, ...]:
    """The directories of IPython and the kernel, where loaded."""
    prefixes = []
    for name in ("IPython", "ipykernel"):
        where = getattr(sys.modules.get(name), "__file__", None)
        if where:
            prefixes.append(os.path.dirname(os.path.abspath(where)) + os.sep)
    return tuple(prefixes)


def _caller() -> FrameType | None:
    """The user's frame a warning about the current call belongs to: the innermost frame outside nbflow;
    and when that is IPython's (a ``%%task`` cell calls nbflow from IPython's magic machinery), the cell
    that ran the magic, if it is on the stack (a module-level frame beyond IPython's and the kernel's)."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_NBFLOW_DIR):
        frame = frame.f_back
    front_ends = _front_ends()
    if frame is None or not front_ends or not frame.f_code.co_filename.startswith(front_ends):
        return frame
    beyond: FrameType | None = frame
    while beyond is not None and beyond.f_code.co_filename.startswith((_NBFLOW_DIR, *front_ends)):
        beyond = beyond.f_back
    # Auto mode runs cells with no frame of theirs on the stack (the kernel's event loop is next).
    return beyond if beyond is not None and beyond.f_code.co_name == "<module>" else frame


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """Warn at the line of the user's code that called into nbflow, however deep in nbflow this runs
    (a fixed ``stacklevel`` points into nbflow when the call came through a flow, a map or a retry).
    The frame is chosen here rather than with ``skip_file_prefixes`` (Python 3.12), for one behaviour on
    every version and the ``%%task`` case above."""
    frame = _caller()
    if frame is None:  # called from nbflow alone (a thread nbflow started): no user line to name
        warnings.warn(message, category, stacklevel=2)
        return
    module_globals = frame.f_globals
    # What warnings.warn does for the frame it picks: the module's registry keeps "once per line" working.
    registry = module_globals.setdefault("__warningregistry__", {})
    where = (message, category, frame.f_code.co_filename, frame.f_lineno)
    module = module_globals.get("__name__", "<string>")
    try:
        warnings.warn_explicit(*where, module=module, registry=registry, module_globals=module_globals)
    except ImportError:
        # The module's loader cannot give its source (``python -c``'s __main__ has the built-in importer as
        # its loader, which refuses): warn without it, as warnings.warn itself does for such a frame.
        warnings.warn_explicit(*where, module=module, registry=registry)
