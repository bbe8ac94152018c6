"""nbflow in IPython and Jupyter: ``%load_ext nbflow`` adds the ``%%task`` and ``%nbflow`` magics.

``%%task [NAME] [options]`` runs a cell as a task: cached across kernel restarts (keyed by the cell's
normalized code, the notebook functions it calls and the fingerprints of the variables it reads),
retried, timed out and recorded in the run history like a call of an ``@nbflow.task`` function. See
:mod:`nbflow.ipython.cells` for what a cache hit restores and :mod:`nbflow.ipython.magics` for the
``%nbflow`` commands.

Loading the extension also opens the kernel's session run and links cell tasks and task calls made
outside flows into one graph (:mod:`nbflow.ipython.session`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["auto_mode", "load_ipython_extension", "unload_ipython_extension"]

_ATTRIBUTE = "_nbflow_session"


def load_ipython_extension(shell: Any) -> None:
    """Register the magics and the session graph in ``shell``; loading again changes nothing."""
    if getattr(shell, _ATTRIBUTE, None) is not None:
        return
    from nbflow.engine import runtime
    from nbflow.ipython.magics import nbflow_magic, task_magic
    from nbflow.ipython.session import Session

    session = Session()

    def task(line: str, cell: str) -> Any:
        return task_magic(shell, session, line, cell)

    def nbflow(line: str) -> Any:
        return nbflow_magic(shell, session, line)

    task.__doc__ = task_magic.__doc__
    nbflow.__doc__ = nbflow_magic.__doc__
    shell.register_magic_function(task, magic_kind="cell", magic_name="task")
    shell.register_magic_function(nbflow, magic_kind="line", magic_name="nbflow")
    setattr(shell, _ATTRIBUTE, session)
    runtime.session_tracker = session.tracker
    runtime.session_run()
    from nbflow.settings import get_settings

    if get_settings().auto:
        mode = auto_mode(shell, create=True)
        assert mode is not None
        mode.enable()


def auto_mode(shell: Any, create: bool = False) -> Any:
    """The :class:`~nbflow.ipython.auto.AutoMode` of ``shell`` (None before the extension is loaded, or before
    auto mode was first turned on unless ``create``)."""
    session = getattr(shell, _ATTRIBUTE, None)
    if session is None:
        return None
    if session.auto is None and create:
        from nbflow.ipython.auto import AutoMode

        session.auto = AutoMode(shell, session)
    return session.auto


def unload_ipython_extension(shell: Any) -> None:
    """Remove the magics and the session graph again."""
    session = getattr(shell, _ATTRIBUTE, None)
    if session is None:
        return
    from nbflow.engine import runtime

    if session.auto is not None:
        session.auto.disable()
    magics = shell.magics_manager.magics
    magics["cell"].pop("task", None)
    magics["line"].pop("nbflow", None)
    if runtime.session_tracker is session.tracker:
        runtime.session_tracker = None
    setattr(shell, _ATTRIBUTE, None)
