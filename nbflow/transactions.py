"""Transactions: task results that become visible together, or not at all.

::

    with nbflow.transaction():
        write_table(df)      # @write_table.on_rollback undoes it if a later task fails
        publish(df)

Inside a transaction, the results of the tasks that run are *staged*: later tasks in the same
transaction see them, the store does not. When the block ends normally the transaction commits: staged
results are written to the store and the ``on_commit`` hooks run. When it raises, the staged results are
dropped, the ``on_rollback`` hooks of the tasks that completed inside run in reverse order, those task
runs end ``RolledBack``, and the exception propagates.

A transaction opened inside another hands its work to the parent on success: it is written when the
outermost one commits. ``commit_mode="eager"`` writes each result as soon as its task completes (a
rollback still runs the hooks, but cannot unwrite); ``"off"`` never writes.

With a ``key`` and ``isolation_level="serializable"``, the transaction holds an inter-process lock on the
key for its whole block: two kernels entering the same key at once run it one after the other, and the
second finds the first's results committed (its tasks hit the cache; ``txn.is_committed()`` is true when
a value was committed under the key with :meth:`Transaction.stage`).
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from nbflow.context import _transaction
from nbflow.exceptions import ConfigurationError, NbflowWarning

if TYPE_CHECKING:
    from nbflow.runs import RunRecord, TaskRunRecord
    from nbflow.states import State
    from nbflow.tasks import Task

__all__ = ["CommitMode", "IsolationLevel", "Transaction", "TransactionState", "commit_alone", "get_transaction",
           "transaction"]

_log = logging.getLogger("nbflow")
_MISSING: Any = object()


class CommitMode(str, enum.Enum):
    """When staged results reach the store."""

    EAGER = "eager"
    LAZY = "lazy"
    OFF = "off"


class IsolationLevel(str, enum.Enum):
    """``serializable`` holds a lock on the transaction's key across processes; ``read_committed`` none."""

    READ_COMMITTED = "read_committed"
    SERIALIZABLE = "serializable"


class TransactionState(str, enum.Enum):
    PENDING = "pending"
    ACTIVE = "active"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"


@dataclass
class _Staged:
    key: str
    value: Any
    task_run: TaskRunRecord | None
    run: RunRecord | None
    state: State | None
    save_options: dict[str, Any]


@dataclass
class _Done:
    task: Task[..., Any]
    task_run: TaskRunRecord
    run: RunRecord


def _enum(kind: type[enum.Enum], value: Any, name: str) -> Any:
    try:
        return kind(value.value if isinstance(value, enum.Enum) else value)
    except ValueError:
        choices = ", ".join(repr(member.value) for member in kind)
        raise ConfigurationError(f"nbflow.transaction: {name}={value!r} is not one of {choices}") from None


class Transaction:
    """One transaction; make it with :func:`transaction` and use it as a context manager."""

    def __init__(self, key: str | None = None, commit_mode: CommitMode | str = "lazy",
                 isolation_level: IsolationLevel | str = "read_committed", lock_timeout: float | None = None) -> None:
        if key is not None and (not isinstance(key, str) or not key):
            raise ConfigurationError(f"nbflow.transaction: key={key!r} must be a non-empty string or None")
        self.key = key
        self.commit_mode: CommitMode = _enum(CommitMode, commit_mode, "commit_mode")
        self.isolation_level: IsolationLevel = _enum(IsolationLevel, isolation_level, "isolation_level")
        if self.isolation_level is IsolationLevel.SERIALIZABLE and key is None:
            raise ConfigurationError(
                "nbflow.transaction(isolation_level='serializable') needs a key: the lock is taken on it, "
                "e.g. nbflow.transaction(key='daily-report', isolation_level='serializable')"
            )
        if lock_timeout is not None and (isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float))
                                         or lock_timeout < 0):
            raise ConfigurationError(f"nbflow.transaction: lock_timeout={lock_timeout!r} must be seconds >= 0")
        self.lock_timeout = lock_timeout
        self.state = TransactionState.PENDING
        self.parent: Transaction | None = None
        self._values: dict[str, Any] = {}
        self._staged: dict[str, _Staged] = {}
        self._done: list[_Done] = []
        self._mutex = threading.Lock()
        self._token: Any = None
        self._lock_file: int | None = None
        self._futures: list[Any] = []  # calls submitted inside: the transaction ends after them
        # Hooks given to stage(): called (with this transaction) when it commits / rolls back.
        self._commit_hooks: list[TransactionHook] = []
        self._rollback_hooks: list[TransactionHook] = []

    def __repr__(self) -> str:
        return f"Transaction(key={self.key!r}, state={self.state.value!r})"

    # -- values shared with hooks -------------------------------------------------------------------
    def set(self, name: str, value: Any) -> None:
        """Keep ``value`` under ``name`` for the hooks (``txn.get(name)``) of this transaction."""
        self._values[name] = value

    def get(self, name: str, default: Any = _MISSING) -> Any:
        """A value set with :meth:`set` here or in an enclosing transaction; ``default`` if none was."""
        txn: Transaction | None = self
        while txn is not None:
            if name in txn._values:
                return txn._values[name]
            txn = txn.parent
        if default is _MISSING:
            raise KeyError(f"transaction has no value {name!r}; set it with txn.set({name!r}, value) first")
        return default

    # -- a value of the transaction's own key ------------------------------------------------------
    def is_committed(self) -> bool:
        """Whether this transaction committed, or — for one with a key, before it ends — whether a value was
        already committed under its key (by an earlier run, or another process): the test Prefect code
        writes at the top of ``with transaction(key=...) as txn:`` to skip work done before."""
        if self.state is TransactionState.COMMITTED:
            return True
        if self.key is None or self.state is TransactionState.ROLLED_BACK:
            return False
        from nbflow.engine.runtime import get_store

        return get_store().probe(self._store_key()) is not None

    def is_rolled_back(self) -> bool:
        """Whether this transaction rolled back (its block raised)."""
        return self.state is TransactionState.ROLLED_BACK

    def is_active(self) -> bool:
        """Whether the transaction's block is running."""
        return self.state is TransactionState.ACTIVE

    def is_pending(self) -> bool:
        """Whether the transaction has not been entered yet."""
        return self.state is TransactionState.PENDING

    def read(self) -> Any:
        """The value committed under this transaction's key."""
        if self.key is None:
            raise ConfigurationError("Transaction.read(): this transaction has no key")
        from nbflow.engine.runtime import get_store

        store = get_store()
        record = store.probe(self._store_key())
        if record is None:
            raise KeyError(f"nothing was committed under transaction key {self.key!r}")
        return store.load(self._store_key(), record)

    def stage(self, value: Any = None, on_commit_hooks: Iterable[TransactionHook] = (),
              on_rollback_hooks: Iterable[TransactionHook] = ()) -> None:
        """Stage ``value`` under the transaction's key, committed with the rest (see :meth:`read`), and
        register hooks ``hook(transaction)`` to run when the transaction commits or rolls back (rollback
        hooks newest first). Without a key only the hooks are kept (there is nowhere to commit a value)."""
        from nbflow.tasks import _check_hooks

        commit_hooks = _check_hooks(on_commit_hooks, "on_commit_hooks", "Transaction.stage")
        rollback_hooks = _check_hooks(on_rollback_hooks, "on_rollback_hooks", "Transaction.stage")
        if self.key is None and value is not None:
            raise ConfigurationError(
                "Transaction.stage(value): this transaction has no key to commit the value under; give one, "
                "e.g. nbflow.transaction(key='daily-report')"
            )
        with self._mutex:
            self._commit_hooks.extend(commit_hooks)
            self._rollback_hooks.extend(rollback_hooks)
        if self.key is not None:
            self.stage_result(self._store_key(), value, None, None, task_name=f"transaction:{self.key}")

    def _store_key(self) -> str:
        import xxhash

        return xxhash.xxh3_128_hexdigest(f"transaction|{self.key}".encode())

    # -- used by the engine -------------------------------------------------------------------------
    @property
    def stages_results(self) -> bool:
        """Whether results are staged (lazy, off) rather than written at once (eager)."""
        return self.commit_mode is not CommitMode.EAGER

    def stage_result(self, key: str, value: Any, task_run: TaskRunRecord | None, run: RunRecord | None,
                     state: State | None = None, **save_options: Any) -> None:
        with self._mutex:
            self._staged[key] = _Staged(key, value, task_run, run, state, save_options)

    def staged_value(self, key: str) -> tuple[Any] | None:
        """``(value,)`` for a result staged under ``key`` here or in an enclosing transaction (read your
        own writes), else None."""
        txn: Transaction | None = self
        while txn is not None:
            staged = txn._staged.get(key)
            if staged is not None:
                return (staged.value,)
            txn = txn.parent
        return None

    def add_future(self, future: Any) -> None:
        with self._mutex:
            self._futures.append(future)

    def add_task_run(self, task: Task[..., Any], task_run: TaskRunRecord, run: RunRecord) -> None:
        with self._mutex:
            self._done.append(_Done(task, task_run, run))

    # -- the block ----------------------------------------------------------------------------------
    def __enter__(self) -> Transaction:
        if self.state is not TransactionState.PENDING:
            raise ConfigurationError(f"{self!r} was already used; open a new nbflow.transaction()")
        self.parent = _transaction.get()
        if self.isolation_level is IsolationLevel.SERIALIZABLE:
            self._acquire_lock()
        self._token = _transaction.set(self)
        self.state = TransactionState.ACTIVE
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            with self._mutex:
                futures, self._futures = self._futures, []
            if futures:
                # Their results (or their rollback hooks) belong to this transaction: wait for them.
                import concurrent.futures

                concurrent.futures.wait([future._future for future in futures])
            if error is None:
                self.commit()
            else:
                self.rollback()
        finally:
            _transaction.reset(self._token)
            self._release_lock()

    def commit(self) -> None:
        """Write the staged results (or hand them to the parent) and run the ``on_commit`` hooks."""
        with self._mutex:
            staged, self._staged = list(self._staged.values()), {}
            done, self._done = self._done, []
            commit_hooks, self._commit_hooks = self._commit_hooks, []
            rollback_hooks, self._rollback_hooks = self._rollback_hooks, []
        parent = self.parent
        if parent is not None and parent.state is TransactionState.ACTIVE:
            with parent._mutex:
                for item in staged:
                    parent._staged[item.key] = item
                parent._done.extend(done)
                parent._commit_hooks.extend(commit_hooks)
                parent._rollback_hooks.extend(rollback_hooks)
            parent._values.update({k: v for k, v in self._values.items() if k not in parent._values})
            self.state = TransactionState.COMMITTED
            return
        if self.commit_mode is not CommitMode.OFF:
            self._write(staged)
        self.state = TransactionState.COMMITTED
        for finished in done:
            self._run_hooks(finished, "on_commit")
        self._call(commit_hooks, "on_commit")

    def _write(self, staged: list[_Staged]) -> None:
        from nbflow.engine.runtime import get_store
        from nbflow.exceptions import PersistError, SerializationError
        from nbflow.runs import history

        store = get_store()
        for item in staged:
            try:
                store.save(item.key, item.value, **item.save_options)
            except (SerializationError, PersistError) as error:
                import warnings

                warnings.warn(f"{error} — committed without this result.", NbflowWarning, stacklevel=4)
                continue
            if item.state is not None:
                item.state.persisted = True
            if item.task_run is not None and item.run is not None:
                item.task_run.persisted = True
                history().mark(item.run, item.task_run)

    def rollback(self) -> None:
        """Drop the staged results, run ``on_rollback`` hooks newest first, end those task runs RolledBack."""
        from nbflow.states import RolledBack

        with self._mutex:
            self._staged = {}
            done, self._done = self._done, []
            self._commit_hooks = []
            rollback_hooks, self._rollback_hooks = self._rollback_hooks, []
        self.state = TransactionState.ROLLED_BACK
        self._call(list(reversed(rollback_hooks)), "on_rollback")
        for item in reversed(done):
            self._run_hooks(item, "on_rollback")
            _mark_rolled_back(item, RolledBack(f"transaction {self.key or ''} rolled back".replace("  ", " ")))

    def _run_hooks(self, item: _Done, which: str) -> None:
        for hook in getattr(item.task, f"{which}_hooks"):
            try:
                hook(self)
            except Exception:
                _log.exception("%s hook %r of task %r raised", which, hook, item.task.name)

    def _call(self, hooks: list[TransactionHook], which: str) -> None:
        for hook in hooks:
            try:
                hook(self)
            except Exception:
                _log.exception("%s hook %r of %r raised", which, hook, self)

    # -- inter-process lock on the key --------------------------------------------------------------
    def _acquire_lock(self) -> None:
        self._lock_file = lock_key(str(self.key), self.lock_timeout, f"transaction {self.key!r}")

    def _release_lock(self) -> None:
        fd, self._lock_file = self._lock_file, None
        if fd is not None:
            unlock_key(fd)


_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()
_held_paths: dict[int, threading.Lock] = {}


def lock_key(key: str, timeout: float | None, what: str) -> int:
    """Take the exclusive lock of ``key`` — among the processes using this ``NBFLOW_HOME`` (a lock file) and
    among this process's threads (``flock`` locks belong to open files, so two threads of one process
    would not exclude each other) — waiting at most ``timeout`` seconds (None: for as long as it takes);
    returns what :func:`unlock_key` needs."""
    import fcntl

    import xxhash

    from nbflow.settings import get_settings

    digest = xxhash.xxh3_64_hexdigest(key.encode())
    with _thread_locks_guard:
        local = _thread_locks.setdefault(digest, threading.Lock())
    deadline = None if timeout is None else time.monotonic() + timeout
    if not local.acquire(timeout=-1 if timeout is None else timeout):
        from nbflow.exceptions import NbflowError

        raise NbflowError(f"{what}: another thread held its lock for more than {timeout:g} s")
    try:
        directory = get_settings().home / "locks"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(directory / f"{digest}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except BaseException:
        local.release()
        raise
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                if deadline is not None and time.monotonic() >= deadline:
                    from nbflow.exceptions import NbflowError

                    raise NbflowError(
                        f"{what}: another process held its lock for more than {timeout:g} s") from None
                time.sleep(0.05)
    except BaseException:
        # Whatever ends the wait (a timeout, an error, Ctrl-C in a blocking flock): the key's thread lock and
        # the file are let go, or every later call of the key would wait on them for ever.
        os.close(fd)
        local.release()
        raise
    _held_paths[fd] = local
    return fd


def unlock_key(fd: int) -> None:
    """Release a lock :func:`lock_key` took."""
    import fcntl

    local = _held_paths.pop(fd, None)
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    finally:
        if local is not None:
            local.release()


def _mark_rolled_back(item: _Done, state: Any) -> None:
    from nbflow import events
    from nbflow.runs import StateEntry, history

    task_run = item.task_run
    from nbflow.states import state_name

    task_run.state = state_name(state.name, state.type)
    task_run.state_type = state.type.value
    task_run.persisted = False
    task_run.history.append(StateEntry(state.name, state.type.value, time.time(), state.message))
    if events.has_subscribers():
        events.publish(events.Event("task_run", state, item.run, task_run, name=state.name, type=state.type,
                                    message=state.message))
    history().mark(item.run, task_run)


def transaction(key: str | None = None, commit_mode: CommitMode | str = "lazy",
                isolation_level: IsolationLevel | str = "read_committed", *,
                lock_timeout: float | None = None) -> Transaction:
    """Open a transaction (use with ``with``): the results of the tasks inside are stored together on
    success, dropped on an exception (running the tasks' ``on_rollback`` hooks). See the module doc."""
    return Transaction(key, commit_mode, isolation_level, lock_timeout)


def get_transaction() -> Transaction | None:
    """The innermost open transaction, or None."""
    return _transaction.get()


def commit_alone(task: Task[..., Any], key: str | None) -> None:
    """A task call completed outside any transaction: as in Prefect, where every call has a transaction of
    its own that commits when it succeeds, its ``on_commit`` hooks run now, given a committed transaction
    (its ``key`` is the call's cache key). Its ``on_rollback`` hooks never run: nothing rolls back."""
    txn = Transaction()
    txn.key = None if key is None else f"task:{key}"
    txn.state = TransactionState.COMMITTED
    for hook in task.on_commit_hooks:
        try:
            hook(txn)
        except Exception:
            _log.exception("on_commit hook %r of task %r raised", hook, task.name)


# Hook type for on_commit / on_rollback: called with the transaction.
TransactionHook = Callable[[Transaction], Any]
