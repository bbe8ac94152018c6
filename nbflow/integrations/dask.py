"""Run submitted task calls on a Dask distributed cluster.

::

    from nbflow.integrations.dask import DaskTaskRunner

    @nbflow.flow(task_runner=DaskTaskRunner())        # a LocalCluster for each flow run
    def sweep(params):
        return [fit.submit(p) for p in params]

    @nbflow.flow(task_runner=DaskTaskRunner(address="tcp://scheduler:8786"))   # an existing cluster
    def big_sweep(params): ...

The engine's driver for every submitted call — cache key, cache lookup, states, events, persistence —
stays in this kernel: only a cache miss is shipped, one attempt at a time, and its result is written to
the store here when it comes back. Retries are the engine's (every retry ships again); a task's timeout is
enforced on the worker, and the kernel also stops waiting (and cancels the attempt) once the attempt has
been running on a worker for longer than the timeout plus a grace period. Functions defined in a notebook
are shipped by value (cloudpickle), so the workers need nbflow and the libraries the task imports, not the
notebook.

Needs the ``dask`` extra: ``pip install "nbflow[dask]"``.
"""

from __future__ import annotations

try:
    import distributed
except ImportError as _error:
    raise ImportError(
        'nbflow.integrations.dask needs Dask distributed; install it with: pip install "nbflow[dask]"'
    ) from _error

import concurrent.futures
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nbflow.engine.runners import TaskRunner
from nbflow.exceptions import ConfigurationError, NbflowError, TaskTimeoutError

if TYPE_CHECKING:
    from nbflow.states import State

__all__ = ["DaskTaskRunner"]

# A small cluster that fits a laptop or a 2-core CI machine: one single-threaded worker process per core
# (at most 2; pure-Python tasks need processes, not threads), listening on loopback only, its HTTP
# endpoints (the dashboard, when bokeh is installed) on a free port, so several kernels never collide.
_CLUSTER_DEFAULTS: dict[str, Any] = {
    "n_workers": max(1, min(2, os.cpu_count() or 1)),
    "threads_per_worker": 1,
    "processes": True,
    "host": "127.0.0.1",
    "dashboard_address": ":0",
}
# The kernel's Dask client is not made the process's default, so the user's own dask.compute calls in
# the notebook are not sent to the flow's cluster behind their back.
_CLIENT_DEFAULTS: dict[str, Any] = {"set_as_default": False}

_marker = threading.local()


class DaskTaskRunner(TaskRunner):
    """Runs the attempts of submitted task calls on a Dask distributed cluster.

    - ``address``: a running scheduler (``"tcp://host:8786"``) to connect to; it is left running when the
      flow ends (only the client is closed).
    - without an address, a :class:`distributed.LocalCluster` is started on the flow run's first cache
      miss (a fully cached run starts none; the first attempts' durations include the start-up) and closed
      when the flow run ends; ``cluster_kwargs`` are passed to it over small defaults (``n_workers`` =
      cores up to 2, ``threads_per_worker=1``, ``processes=True``, loopback only, the dashboard on a free
      port: ``client.dashboard_link``).
    - ``client_kwargs`` are passed to :class:`distributed.Client`; ``client`` uses an existing client
      instead (never closed by nbflow).
    - ``max_in_flight`` bounds how many submitted calls this kernel drives at once (cache lookups run
      here, attempts on the cluster); default 64.

    A flow works on its own copy of the runner (:meth:`duplicate`), so one ``DaskTaskRunner()`` in a
    decorator gives every run of the flow its own cluster.
    """

    # Attempts run on the cluster's workers: the files they read there count when the worker is on this
    # machine (sent back with the outcome); on another machine, or the random numbers they draw, are not
    # seen here (declare files with @task(files=...)). Starting a cluster meanwhile is not the task's.
    runs_attempts_here = False
    reports_reads = True  # a worker on this machine: its file reads count (see _attempt_on_worker)

    #: How long past a task's ``timeout_seconds`` the kernel waits for a running attempt before giving
    #: up on it (the worker's own timeout normally ends it first; this catches a call stuck in C code).
    timeout_grace_seconds: float = 5.0

    def __init__(self, address: str | None = None, cluster_kwargs: dict[str, Any] | None = None,
                 client_kwargs: dict[str, Any] | None = None, *, client: distributed.Client | None = None,
                 max_in_flight: int = 64) -> None:
        if address is not None and (not isinstance(address, str) or not address):
            raise ConfigurationError(
                f"DaskTaskRunner(address={address!r}): give the scheduler's address as a string such as "
                "'tcp://127.0.0.1:8786', or None for a local cluster"
            )
        for name, value in (("cluster_kwargs", cluster_kwargs), ("client_kwargs", client_kwargs)):
            if value is not None and not isinstance(value, dict):
                raise ConfigurationError(f"DaskTaskRunner({name}={value!r}): give a dict of keyword arguments")
        if cluster_kwargs and (address is not None or client is not None):
            raise ConfigurationError(
                "DaskTaskRunner: cluster_kwargs configure the local cluster nbflow starts; with address= or "
                "client= nbflow uses an existing cluster, so leave cluster_kwargs out"
            )
        if client is not None and (address is not None or client_kwargs):
            raise ConfigurationError("DaskTaskRunner: give either client= or address=/client_kwargs=, not both")
        if client is not None and not isinstance(client, distributed.Client):
            raise ConfigurationError(f"DaskTaskRunner(client={client!r}): expected a distributed.Client")
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ConfigurationError(f"DaskTaskRunner(max_in_flight={max_in_flight!r}): give a whole number >= 1")
        self.address = address
        self.cluster_kwargs: dict[str, Any] = dict(cluster_kwargs or {})
        self.client_kwargs: dict[str, Any] = dict(client_kwargs or {})
        self.max_in_flight = max_in_flight
        self._given_client = client
        self._client: distributed.Client | None = None
        self._cluster: distributed.LocalCluster | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._in_flight: set[distributed.Future] = set()
        self._closing = False

    def __repr__(self) -> str:
        where = self.address or ("a given client" if self._given_client is not None else "a local cluster")
        return f"DaskTaskRunner({where})"

    # -- life cycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._pool is None:
                self._closing = False
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.max_in_flight, thread_name_prefix="nbflow-dask",
                    initializer=self._mark_driver,
                )
        if self.address is not None:
            # Connect at once: a wrong address is an error when the flow starts, not a failed task later.
            self.client  # noqa: B018

    def _mark_driver(self) -> None:
        _marker.runner = self

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            # Attempts still on the cluster now belong to a flow that was interrupted: cancel them, so
            # the kernel does not wait for them (a worker already running one finishes it regardless).
            self._closing = True
            in_flight = list(self._in_flight)
            client = self._client
        if in_flight and client is not None:
            try:
                client.cancel(in_flight)
            except Exception:
                pass
        if pool is not None:
            pool.shutdown(wait=True)
        with self._lock:
            client, self._client = self._client, None
            cluster, self._cluster = self._cluster, None
        if client is not None and client is not self._given_client:
            client.close()
        if cluster is not None:
            cluster.close()

    @property
    def client(self) -> distributed.Client:
        """The Dask client, connecting (or starting the local cluster) on first use."""
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> distributed.Client:
        if self._given_client is not None:
            return self._given_client
        client_kwargs = {**_CLIENT_DEFAULTS, **self.client_kwargs}
        if self.address is not None:
            try:
                return distributed.Client(self.address, **client_kwargs)
            except (OSError, TimeoutError) as error:
                raise NbflowError(
                    f"DaskTaskRunner: cannot reach the Dask scheduler at {self.address!r} ({error}); "
                    "check that it runs and the address, or leave address out for a local cluster"
                ) from error
        cluster = distributed.LocalCluster(**{**_CLUSTER_DEFAULTS, **self.cluster_kwargs})
        try:
            client = distributed.Client(cluster, **client_kwargs)
        except BaseException:
            cluster.close()
            raise
        self._cluster = cluster
        return client

    @property
    def cluster(self) -> distributed.LocalCluster | None:
        """The local cluster this runner started, if it started one."""
        return self._cluster

    def submit_work(self, work: Callable[[], State]) -> concurrent.futures.Future[State]:
        pool = self._pool
        if pool is None:
            self.start()
            pool = self._pool
        assert pool is not None
        return pool.submit(work)

    def in_worker(self) -> bool:
        return getattr(_marker, "runner", None) is self

    def duplicate(self) -> DaskTaskRunner:
        runner = DaskTaskRunner(
            self.address, self.cluster_kwargs or None, self.client_kwargs or None, client=self._given_client,
            max_in_flight=self.max_in_flight,
        )
        runner.timeout_grace_seconds = self.timeout_grace_seconds
        return runner

    # -- one attempt on the cluster --------------------------------------------------------------------
    def call_attempt(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                     timeout_seconds: float | None, label: str) -> State:
        """Ship one attempt of ``fn`` to the cluster, wait for it and turn its outcome into a state."""
        from nbflow.engine.file_reads import unwatched
        from nbflow.engine.task_engine import error_summary
        from nbflow.states import Cancelled, Failed

        if self._closing:
            return Cancelled(message="the flow run ended before this attempt was shipped")
        try:
            with unwatched():  # starting a cluster reads its configuration: not the task's reads
                client = self.client
        except Exception as error:
            return Failed(error, message=f"the Dask cluster is not available: {error_summary(error)}")
        key = f"nbflow-{_key_name(label)}-{uuid.uuid4().hex}"
        future: distributed.Future | None = None
        try:
            future = client.submit(_attempt_on_worker, fn, args, kwargs, timeout_seconds, label,
                                   key=key, pure=False)
            with self._lock:
                self._in_flight.add(future)
                closing = self._closing
            if closing:  # shut down between the check above and the submission
                future.cancel()
            outcome = self._wait(client, future, key, timeout_seconds, label)
        except Exception as error:
            if self._closing:
                return Cancelled(error, message="cancelled on Dask: the flow run ended (interrupted)")
            # Not the user's code: the attempt could not be shipped, or its worker died, or its result
            # could not be sent back. A failure all the same, so the task's retries apply.
            return Failed(error, message=f"on Dask: {error_summary(error)}")
        finally:
            if future is not None:
                with self._lock:
                    self._in_flight.discard(future)
        if isinstance(outcome, _LocalTimeout):
            return outcome.state
        return _state_from(outcome, getattr(getattr(fn, "__code__", None), "co_filename", None))

    def _wait(self, client: distributed.Client, future: distributed.Future, key: str,
              timeout_seconds: float | None, label: str) -> Any:
        if timeout_seconds is None:
            return future.result()
        limit = timeout_seconds + self.timeout_grace_seconds
        # The attempt may wait in the cluster's queue first: the kernel's clock starts when it is seen
        # running on a worker (asked only once the limit has passed since submission, then each second).
        wait = limit
        started: float | None = None
        while True:
            try:
                return future.result(timeout=wait)
            except (TimeoutError, distributed.TimeoutError):
                pass
            now = time.monotonic()
            if started is None and _is_running(client, key):
                started = now
            if started is not None and now - started >= limit:
                future.cancel()
                error = TaskTimeoutError(
                    f"{label} timed out after {timeout_seconds:g} s (the Dask worker did not stop it within "
                    f"{self.timeout_grace_seconds:g} s more; the attempt was cancelled)"
                )
                from nbflow.states import TimedOut

                return _LocalTimeout(TimedOut(error, message=str(error)))
            wait = 1.0 if started is None else max(0.05, min(1.0, limit - (now - started)))


class _LocalTimeout:
    __slots__ = ("state",)

    def __init__(self, state: State) -> None:
        self.state = state


def _is_running(client: distributed.Client, key: str) -> bool:
    try:
        stacks = client.call_stack(keys=[key])
    except Exception:
        return True  # the cluster cannot say: count the attempt as running rather than wait forever
    return any(key in tasks for tasks in (stacks or {}).values())


def _key_name(label: str) -> str:
    # "task 'fit'" -> "fit": readable Dask keys (the dashboard groups tasks by this prefix).
    name = label.split(" ", 1)[-1].strip("'\"")
    return re.sub(r"[^A-Za-z0-9_.]+", "_", name)[:60] or "task"


def _attempt_on_worker(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                       timeout_seconds: float | None, label: str) -> tuple[str, str, str | None, str, Any, Any]:
    """Runs on a Dask worker: one attempt under nbflow's timeout, its outcome returned by value (an
    exception travels with its traceback), so the kernel builds the state and applies the retries; with
    the files it read and the worker's host (its reads count in the kernel when that is this machine)."""
    from nbflow.engine import file_reads
    from nbflow.engine.task_engine import call_to_state

    state, seen = file_reads.watched(call_to_state, fn, args, kwargs, timeout_seconds, label)
    reads = (socket.gethostname(), seen)
    data = state.result(raise_on_failure=False) if state.has_result() else None
    if isinstance(data, BaseException):
        import tblib.pickling_support

        # Pickle the traceback with the exception (and its causes): the kernel's run record shows the
        # user's frames as they ran on the worker.
        tblib.pickling_support.install(data)
    where = _worker_address()
    return state.type.value, state.name, state.message, where, data, reads


def _worker_address() -> str:
    try:
        address = distributed.get_worker().address
    except ValueError:  # not in a worker (a test calling this directly)
        address = "?"
    return f"{address} (pid {os.getpid()})"


def _state_from(outcome: tuple[str, str, str | None, str, Any, Any], filename: str | None) -> State:
    from nbflow.engine.file_reads import current as current_recorder
    from nbflow.states import State, StateType

    type_value, name, message, where, data, (host, reads) = outcome
    recorder = current_recorder()  # the call's: its entry depends on what the worker read, if it can be seen
    if recorder is not None and host == socket.gethostname():
        recorder.take(reads)
    if name == "Completed" and message is None:
        message = f"ran on Dask worker {where}"
    if isinstance(data, BaseException) and filename:
        _restore_filenames(data, filename)
    return State(type=StateType(type_value), name=name, message=message).with_data(data)


_SHIPPED_FILENAME = "<dynamic-code>"


def _restore_filenames(error: BaseException, filename: str) -> None:
    """Give the frames of functions shipped by value their file back, so tracebacks show source lines.

    cloudpickle names the file of every function it ships by value ``<dynamic-code>``; those functions
    come from the task's own module (a notebook's cells, a script), whose file the kernel knows.
    """
    import tblib

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        tb = current.__traceback__
        if tb is not None:
            data = tblib.Traceback(tb).as_dict()
            changed = False
            entry: dict[str, Any] | None = data
            while entry is not None:
                code = entry["tb_frame"]["f_code"]
                if code.get("co_filename") == _SHIPPED_FILENAME:
                    code["co_filename"] = filename
                    changed = True
                entry = entry.get("tb_next")
            if changed:
                current.__traceback__ = tblib.Traceback.from_dict(data).as_traceback()
        current = current.__cause__ or current.__context__
