"""Which cells auto mode runs normally instead of as cell tasks, read from the cell's code alone.

A cache hit restores what a cell bound and replays what it showed and the settings it changed (see
:mod:`nbflow.ipython.settings_effects`). A cell whose effect is something else — a shell command, a magic,
``input()``, a logging configuration, a module attribute set — would be skipped by a hit without that effect
happening, so it runs normally, and :func:`static_reason` says why in words for its status line.
"""

from __future__ import annotations

import ast
from typing import Any

__all__ = ["only_nbflow_magics", "static_reason"]

# Calls that change process-wide state a hit would not set again (settings_effects replays the others).
_UNREPLAYED = {
    "logging.basicConfig": "configures logging",
    "logging.config.dictConfig": "configures logging",
    "logging.config.fileConfig": "configures logging",
    "sys.setrecursionlimit": "sets the recursion limit",
    "np.seterr": "sets NumPy's error handling", "numpy.seterr": "sets NumPy's error handling",
    "locale.setlocale": "sets the locale",
    "importlib.reload": "reloads a module",
    "os.umask": "sets the file mode mask",
    "os.putenv": "sets an environment variable behind os.environ's back",
    "os.unsetenv": "unsets an environment variable behind os.environ's back",
    "sklearn.set_config": "sets scikit-learn's global configuration",
    "torch.manual_seed": "seeds torch's global generator", "torch.set_default_dtype": "sets torch's default dtype",
    "tf.random.set_seed": "seeds TensorFlow's global generator",
    "signal.signal": "installs a signal handler", "atexit.register": "registers an exit handler",
    "sys.settrace": "installs a trace function", "sys.setprofile": "installs a profile function",
    "faulthandler.enable": "enables faulthandler",
}
# The same, by what follows the module's name (whatever the notebook imported it as).
_UNREPLAYED_TAILS = {name.split(".", 1)[1]: what for name, what in _UNREPLAYED.items()}
_KEYBOARD = {"input": "reads the keyboard (input())", "getpass": "reads a password",
             "getpass.getpass": "reads a password", "breakpoint": "starts the debugger"}
_NBFLOW_MAGICS = frozenset({"nbflow", "load_ext", "reload_ext", "unload_ext"})


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _ipython_call(node: ast.Call) -> tuple[str, str] | None:
    """``get_ipython().METHOD('ARG', ...)`` -> (METHOD, ARG): how IPython writes magics and ``!`` commands."""
    func = node.func
    if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call) and isinstance(func.value.func, ast.Name)
            and func.value.func.id == "get_ipython"):
        first = node.args[0] if node.args else None
        argument = first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else ""
        return func.attr, argument
    return None


def _has_top_level_await(tree: ast.Module) -> bool:
    def visit(node: ast.AST) -> bool:
        if isinstance(node, (ast.Await, ast.AsyncFor, ast.AsyncWith)):
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            return False
        return any(visit(child) for child in ast.iter_child_nodes(node))

    return any(visit(statement) for statement in tree.body)


def only_nbflow_magics(tree: ast.Module) -> bool:
    """The cell is nothing but ``%nbflow ...`` / ``%load_ext nbflow`` lines: nbflow's own, not the notebook's."""
    if not tree.body:
        return False
    for statement in tree.body:
        call = statement.value if isinstance(statement, ast.Expr) else None
        found = _ipython_call(call) if isinstance(call, ast.Call) else None
        if found is None or found[0] != "run_line_magic" or found[1] not in _NBFLOW_MAGICS:
            return False
    return True


def static_reason(tree: ast.Module, namespace: dict[str, Any]) -> str:
    """Why the cell (as IPython parsed it) must run normally; "" when it can run as a cell task."""
    import types

    imported = {alias.asname or alias.name.split(".")[0] for statement in tree.body
                if isinstance(statement, ast.Import) for alias in statement.names}

    def is_module(name: str) -> bool:
        return name in imported or isinstance(namespace.get(name), types.ModuleType)

    if _has_top_level_await(tree):
        return "it uses top-level await"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            found = _ipython_call(node)
            if found is not None:
                method, argument = found
                if method in ("system", "getoutput"):
                    return "it runs a shell command (!)"
                if method == "run_line_magic":
                    return f"it runs the magic %{argument}"
                if method == "run_cell_magic":
                    return f"it runs the cell magic %%{argument}"
                return "it calls get_ipython()"
            name = _dotted(node.func)
            if not name:
                continue
            if name in _KEYBOARD:
                return f"it {_KEYBOARD[name]}"
            what = _UNREPLAYED.get(name)
            if what is None and "." in name:  # `np.seterr` for `numpy.seterr`, `pl.reload`...
                root, rest = name.split(".", 1)
                what = _UNREPLAYED_TAILS.get(rest)
                if what is not None and not is_module(root):
                    what = None
            if what is not None:
                return f"it {what} ({name}()), which a cache hit would not do again"
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                        and is_module(target.value.id)):
                    return (f"it sets {target.value.id}.{target.attr}, a module attribute a cache hit would not "
                            "set again")
    return ""
