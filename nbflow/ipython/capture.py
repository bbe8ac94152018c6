"""Record what a cell shows while it still shows it live, and show it again later.

:class:`OutputTee` wraps ``sys.stdout`` / ``sys.stderr`` writes, the shell's display publisher and its
display hook for the duration of a cell task: every message goes out at once (a long cell streams
its progress as usual) *and* is appended to a list of plain-data records that pickle with the
result. :func:`replay` sends those records out again on a cache hit, in their original order.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["OutputTee", "replay"]

# One record per message: ("stream", name, text) | ("display", data, metadata, transient, update)
# | ("execute_result", data, metadata) | ("clear_output", wait).
Output = tuple[Any, ...]


class _TeeStream:
    """A text stream that forwards everything to ``target`` and records what is written."""

    def __init__(self, target: TextIO, name: str, record: Callable[[str, str], None]) -> None:
        self._target = target
        self._name = name
        self._record = record

    def write(self, text: str) -> int:
        result = self._target.write(text)
        if isinstance(text, str) and text:
            self._record(self._name, text)
        return result

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._target.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, ... of the real stream
        return getattr(self._target, name)


class OutputTee:
    """Context manager: while open, outputs go out live and are appended to :attr:`outputs`."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.outputs: list[Output] = []
        self._saved: list[tuple[Any, str, Any]] = []
        # Above zero while a display message is being sent: a terminal shell prints it to stdout, and
        # that text is part of the display record, not a stream of its own.
        self._in_display = 0

    def _stream(self, name: str, text: str) -> None:
        if self._in_display:
            return
        last = self.outputs[-1] if self.outputs else None
        if last is not None and last[0] == "stream" and last[1] == name:
            self.outputs[-1] = ("stream", name, last[2] + text)  # one record per run of writes
        else:
            self.outputs.append(("stream", name, text))

    def _patch(self, owner: Any, attribute: str, value: Any) -> None:
        # Instance attributes shadow the class's methods; restoring deletes them again, so a display
        # publisher or hook that had no instance attribute is left exactly as it was.
        had = attribute in getattr(owner, "__dict__", {})
        self._saved.append((owner, attribute, getattr(owner, attribute) if had else _ABSENT))
        setattr(owner, attribute, value)

    def __enter__(self) -> OutputTee:
        shell = self.shell
        sys.stdout = _TeeStream(sys.stdout, "stdout", self._stream)
        sys.stderr = _TeeStream(sys.stderr, "stderr", self._stream)
        publisher = shell.display_pub
        publish = publisher.publish
        clear = publisher.clear_output

        def recording_publish(data: Any, metadata: Any = None, *args: Any, **kwargs: Any) -> Any:
            self.outputs.append(
                ("display", dict(data or {}), dict(metadata or {}), kwargs.get("transient"),
                 bool(kwargs.get("update", False)))
            )
            self._in_display += 1
            try:
                return publish(data, metadata, *args, **kwargs)
            finally:
                self._in_display -= 1

        def recording_clear(wait: bool = False) -> Any:
            self.outputs.append(("clear_output", bool(wait)))
            return clear(wait)

        self._patch(publisher, "publish", recording_publish)
        self._patch(publisher, "clear_output", recording_clear)
        hook = shell.displayhook
        write_format_data = hook.write_format_data

        def recording_write(format_dict: Any, md_dict: Any = None) -> Any:
            self.outputs.append(("execute_result", dict(format_dict or {}), dict(md_dict or {})))
            self._in_display += 1
            try:
                return write_format_data(format_dict, md_dict)
            finally:
                self._in_display -= 1

        self._patch(hook, "write_format_data", recording_write)
        write_prompt = hook.write_output_prompt

        def quiet_prompt() -> Any:
            # A terminal shell prints "Out[n]: " here; the replay writes its own prompt.
            self._in_display += 1
            try:
                return write_prompt()
            finally:
                self._in_display -= 1

        self._patch(hook, "write_output_prompt", quiet_prompt)
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            # Shown now, while recorded. Not after an error: nothing is stored then, and IPython shows the
            # figure after the traceback, as for the cell without nbflow.
            _flush_inline_figures()
        _flush()
        if isinstance(sys.stdout, _TeeStream):
            sys.stdout = sys.stdout._target
        if isinstance(sys.stderr, _TeeStream):
            sys.stderr = sys.stderr._target
        for owner, attribute, value in reversed(self._saved):
            if value is _ABSENT:
                try:
                    delattr(owner, attribute)
                except AttributeError:
                    pass
            else:
                setattr(owner, attribute, value)
        self._saved.clear()


_ABSENT: Any = object()


def _flush_inline_figures() -> None:
    """Show pending inline matplotlib figures now, while the tee records (not after the cell ends)."""
    backend = sys.modules.get("matplotlib_inline.backend_inline")
    if backend is None or "matplotlib.pyplot" not in sys.modules:
        return
    try:
        backend.flush_figures()
    except Exception:
        pass


def replay(shell: Any, outputs: list[Output], last_value: Any = None) -> None:
    """Show recorded outputs again, in order, through the shell's own streams, publisher and hook.

    ``last_value``, when given, is the value behind the recorded ``Out[n]``: it becomes ``_`` and
    ``Out[n]`` again, as if the display hook had shown it.
    """
    for output in outputs:
        kind = output[0]
        if kind == "stream":
            stream = sys.stdout if output[1] == "stdout" else sys.stderr
            stream.write(output[2])
            # Consecutive writes to one stream are one record: the next record is another stream or a
            # display, which must not overtake this text (the kernel sends each stream when it is flushed).
            try:
                stream.flush()
            except Exception:
                pass
        elif kind == "display":
            _flush()
            kwargs: dict[str, Any] = {}
            if output[3]:
                kwargs["transient"] = output[3]
            if output[4]:
                kwargs["update"] = True
            shell.display_pub.publish(output[1], output[2], **kwargs)
        elif kind == "execute_result":
            _flush()
            hook = shell.displayhook
            # The hook's own steps, with the recorded bundle instead of a freshly formatted value:
            # the result is shown as Out[n] exactly as on the first run.
            hook.start_displayhook()
            hook.write_output_prompt()
            if last_value is not None:
                hook.update_user_ns(last_value)
                hook.fill_exec_result(last_value)
            hook.write_format_data(output[1], output[2])
            hook.finish_displayhook()
        elif kind == "clear_output":
            shell.display_pub.clear_output(output[1])
    _flush()


def _flush() -> None:
    """Send what the streams hold. A kernel's flush waits for its I/O thread (~90 µs each, even with nothing
    written), so a stream known to hold nothing is left alone."""
    for stream in (sys.stdout, sys.stderr):
        if not pending(stream):
            continue
        try:
            stream.flush()
        except Exception:
            pass


def pending(stream: Any) -> bool:
    """Whether ``stream`` may hold text not sent yet (False only when that is known: ipykernel's streams)."""
    stream = getattr(stream, "_target", stream)  # through a tee
    buffers = getattr(stream, "_buffers", None)
    if not isinstance(buffers, dict):
        return True
    try:
        return any(buffer.tell() for buffer in list(buffers.values()))
    except Exception:
        return True


def publish_quietly(shell: Any, data: dict[str, Any], metadata: dict[str, Any], display_id: str | None = None,
                    update: bool = False) -> None:
    """Publish a display (with an id, when given), without the kernel's flush of empty streams before it (see
    ``_flush``)."""
    _flush()
    publisher = shell.display_pub
    kwargs: dict[str, Any] = {"transient": {"display_id": display_id}} if display_id is not None else {}
    if update:
        kwargs["update"] = True
    quiet = hasattr(publisher, "_flush_streams") and not any(pending(s) for s in (sys.stdout, sys.stderr))
    if quiet:
        publisher._flush_streams = _nothing  # an instance attribute, deleted again below
    try:
        publisher.publish(data, metadata, **kwargs)
    finally:
        if quiet:
            try:
                del publisher._flush_streams
            except AttributeError:
                pass


def _nothing() -> None:
    return None
