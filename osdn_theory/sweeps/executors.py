"""Executor backends of a sweep: in-process (serial), a local process pool, and Dask.

Every backend exposes the same two calls used by the runner: ``submit(fn, *args) -> future`` and
``as_completed(futures)`` yielding futures as they finish (each with ``.result()``), plus ``shutdown()``;
``serial`` and ``local`` also ``next_done(timeout)`` (the runner's wait for the next result: the next task
to end, or ``None`` after ``timeout`` seconds).

- ``serial``: runs each task in the calling process when its result is asked for (debugging, tiny sweeps,
  notebooks).
- ``local`` (default): :class:`concurrent.futures.ProcessPoolExecutor` with ``workers`` processes
  (default: the CPU count), ``spawn`` start method.
- ``dask``: a :class:`dask.distributed.Client` connected to ``scheduler`` (an address such as
  ``tcp://host:8786``; given up after ``connect_timeout`` seconds), or, without an address, to a fresh
  ``LocalCluster(n_workers=workers, threads_per_worker=1)``. A sweep that sees no live worker for
  ``worker_timeout`` seconds stops. On a SLURM cluster start the workers with dask-jobqueue and pass the
  address::

      from dask_jobqueue import SLURMCluster
      cluster = SLURMCluster(cores=1, processes=1, memory="4GB", walltime="02:00:00")
      cluster.scale(jobs=32)
      print(cluster.scheduler_address)   # then: osdn sweep FILE --out DIR --executor dask --scheduler ADDR

Every task runs with ``threads`` torch threads (default 1, serial included): runs are many and small, so one
thread per run and one run per core is the fastest layout. Measured on a shared 2-core machine,
``sweeps/shift_families.py`` (80 runs): serial with 1 thread 10.2 s, serial with 2 threads (torch's default
there, and this executor's behaviour before threads were pinned) 47.4 s, local pool with 1 worker 13.7 s. :class:`EnvironmentProblem` is raised for what the environment, not the
sweep, got wrong (an unreachable scheduler, no live workers).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = [
    "EXECUTORS",
    "EnvironmentProblem",
    "DaskExecutor",
    "LocalExecutor",
    "SerialExecutor",
    "check_executor_args",
    "make_executor",
]

EXECUTORS = ("local", "serial", "dask")


class EnvironmentProblem(RuntimeError):
    """The machine, the cluster or the file system stopped the sweep (not its spec or its arguments)."""


def _threaded(threads: int, fn: Callable, *args: Any) -> Any:
    """Run ``fn(*args)`` with ``threads`` torch intra-op threads, then restore the caller's setting."""
    import torch

    old = torch.get_num_threads()
    if old != threads:
        torch.set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def _worker_init(threads: int = 1, parent: int | None = None) -> None:
    """Pool worker set-up: ignore SIGINT, exit when the parent dies (a killed sweep leaves no orphans), then
    ``threads`` torch threads.

    SIGINT: Ctrl-C reaches the whole process group. A worker that died of it broke the pool (every run in flight
    then failed with ``BrokenProcessPool``, and the pool killed the other workers, a training run in the middle
    of saving its checkpoint included). The sweep's main process decides instead: it stops its workers with
    SIGTERM, on which a training run finishes its step, saves its checkpoint and exits.

    ``parent`` is the pool owner's pid, taken in the parent: a worker still starting up (imports take
    seconds on a loaded machine) when the sweep is killed has already been handed to another parent, and a
    pid read here would be that one's, so the worker would never notice (seen as a flaky CI failure)."""
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked by the parent while it started us (LocalExecutor.submit)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a pending one is now dropped

    parent = os.getppid() if parent is None else parent

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, name="osdn-parent-watch", daemon=True).start()
    import torch

    torch.set_num_threads(threads)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread, where the platform allows (processes started meanwhile inherit it)."""
    import signal

    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _Deferred:
    """A task of the serial executor: runs when first asked for its result (so results are recorded one by one
    as they finish, exactly as with the parallel executors)."""

    def __init__(self, fn: Callable, args: tuple):
        self._fn, self._args = fn, args
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None

    def run(self) -> None:
        if self._done:
            return
        try:
            self._value = self._fn(*self._args)
        except Exception as err:  # noqa: BLE001 - handed to the caller by result()
            self._error = err
        self._done = True

    def result(self) -> Any:
        self.run()
        if self._error is not None:
            raise self._error
        return self._value


class SerialExecutor:
    """Runs tasks in this process, one at a time, in submission order, as ``as_completed`` asks for them
    (each with ``threads`` torch threads; the process's own setting is restored after each task)."""

    name = "serial"
    workers = 1

    def __init__(self, threads: int = 1):
        self.threads = threads
        self._queue: collections.deque[_Deferred] = collections.deque()

    def submit(self, fn: Callable, *args: Any) -> _Deferred:
        task = _Deferred(_threaded, (self.threads, fn, *args))
        self._queue.append(task)
        return task

    def as_completed(self, futures: Iterable[_Deferred]) -> Iterator[_Deferred]:
        for f in futures:
            f.run()
            yield f

    def next_done(self, timeout: float | None = None) -> _Deferred | None:
        """Run the earliest submitted task not yet returned and return it (``None`` when none is left).
        ``timeout`` is ignored: the task runs here, and Ctrl-C interrupts it directly."""
        while self._queue:
            task = self._queue.popleft()
            if not task._done:  # not already run by as_completed or result()
                task.run()
                return task
        return None

    def shutdown(self, cancel: bool = False, notify: Callable[[str], None] | None = None) -> None:
        pass


class LocalExecutor:
    """A process pool on this machine (``spawn`` start method; each worker uses ``threads`` torch threads)."""

    name = "local"

    def __init__(self, workers: int | None = None, threads: int = 1):
        self.workers = workers or os.cpu_count() or 1
        self.threads = threads
        self._pool = cf.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=mp.get_context("spawn"),
            initializer=_worker_init,
            initargs=(threads, os.getpid()),
        )
        self._done: queue.SimpleQueue[cf.Future] = queue.SimpleQueue()

    def submit(self, fn: Callable, *args: Any) -> cf.Future:
        """The pool starts its workers here, in this thread, as tasks come. SIGINT is blocked meanwhile: the
        signal mask is inherited through ``fork`` and ``exec``, so a Ctrl-C that reaches a worker while it is
        still importing (before :func:`_worker_init` ignores SIGINT; seconds on a loaded machine) waits,
        pending, and is then dropped, instead of killing the worker and breaking the pool. A Ctrl-C to this
        process meanwhile is delivered when ``submit`` returns."""
        with _sigint_blocked():
            fut = self._pool.submit(fn, *args)
        fut.add_done_callback(self._done.put)  # in the pool's thread, once, when the task ends
        return fut

    def as_completed(self, futures: Iterable[cf.Future]) -> Iterator[cf.Future]:
        return cf.as_completed(list(futures))

    def next_done(self, timeout: float | None = None) -> cf.Future | None:
        """The next submitted task to end, in the order they end, or ``None`` if none ends within ``timeout``
        seconds (the runner polls, so that Ctrl-C is taken between waits). Each task is returned once; the
        cost does not grow with the number of tasks out."""
        try:
            return self._done.get(timeout=timeout)
        except queue.Empty:
            return None

    def shutdown(self, cancel: bool = False, notify: Callable[[str], None] | None = None) -> None:
        """``cancel=False``: wait for every submitted task. ``cancel=True`` (an interrupt, an error, or the
        end of a sweep whose results are all in): drop the tasks not started and stop the workers now with
        SIGTERM. ``concurrent.futures`` would otherwise still run the tasks already in its call queue (up to
        ``workers + 1``) and the interpreter's exit would wait for them: minutes of training runs after a
        Ctrl-C on a GPU machine.

        A training run that gets SIGTERM finishes its step and saves its checkpoint before it exits, so this
        waits for every worker to end, however long the step takes: returning earlier let the sweep's process
        exit, and a worker whose parent is gone exits at once (:func:`_worker_init`), losing the step and
        the save (seen as a flaky CI failure on a loaded machine, where the old 5 s wait was too short).
        ``notify`` is told once when workers are still running after a second. Ctrl-C during the wait kills
        them at once (losing what they trained since their last checkpoint) and is passed on."""
        if not cancel:
            self._pool.shutdown(wait=True)
            return
        procs = list((getattr(self._pool, "_processes", None) or {}).values())  # no public way
        terminate = getattr(self._pool, "terminate_workers", None)  # Python >= 3.14
        if terminate is not None:
            terminate()
        else:
            self._pool.shutdown(wait=False, cancel_futures=True)
            for p in procs:
                if p.is_alive():
                    p.terminate()
        try:
            soon = time.monotonic() + 1.0
            for p in procs:
                p.join(timeout=max(0.0, soon - time.monotonic()))
            alive = [p for p in procs if p.is_alive()]
            if alive and notify is not None:
                notify(
                    f"stopping: waiting for {len(alive)} worker(s) to finish the step in progress and save "
                    "(Ctrl-C again stops them at once, losing what they trained since their last checkpoint)"
                )
            for p in alive:
                p.join()
        except KeyboardInterrupt:
            for p in procs:
                if p.is_alive():
                    p.kill()
            for p in procs:
                p.join(timeout=5)
            raise


class DaskExecutor:
    """Tasks on a Dask cluster: ``scheduler`` address, or a new ``LocalCluster`` with ``workers`` workers.

    ``connect_timeout``: seconds to reach the scheduler before giving up; ``worker_timeout``: seconds the
    cluster may have no live worker (at start or while tasks are pending) before the sweep stops. Both raise
    :class:`EnvironmentProblem`.
    """

    name = "dask"

    def __init__(
        self,
        scheduler: str | None = None,
        workers: int | None = None,
        *,
        threads: int = 1,
        connect_timeout: float = 10.0,
        worker_timeout: float = 60.0,
    ):
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as err:  # pragma: no cover - depends on the installed extras
            raise ValueError(
                "executor: 'dask' needs dask[distributed]; install the extra: pip install 'osdn_theory[dask]'"
            ) from err
        self.threads = threads
        self.worker_timeout = worker_timeout
        self.scheduler = scheduler
        self._cluster = None
        self.client = None
        if scheduler:
            try:
                self.client = Client(scheduler, timeout=connect_timeout)
            except (OSError, TimeoutError) as err:
                raise EnvironmentProblem(
                    f"scheduler: cannot reach the Dask scheduler at {scheduler!r} within {connect_timeout:g} s "
                    f"({type(err).__name__}); is it running? (--connect-timeout sets the wait)"
                ) from None
        else:
            self._cluster = LocalCluster(
                n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, dashboard_address=None
            )
            self.client = Client(self._cluster)
        try:
            self.client.wait_for_workers(1, timeout=worker_timeout)
        except (OSError, TimeoutError):
            self.shutdown()
            raise EnvironmentProblem(self._no_workers_message()) from None
        self.workers = max(1, self._live_workers())

    def _live_workers(self) -> int:
        try:
            return len(self.client.scheduler_info().get("workers", {}))
        except (OSError, TimeoutError):
            return 0

    def _no_workers_message(self) -> str:
        where = self.scheduler or "the local cluster"
        return (
            f"workers: no live Dask worker at {where} for {self.worker_timeout:g} s; start workers (e.g. "
            "dask-worker ADDRESS, or SLURMCluster(...).scale(jobs=N)) and rerun the same command to resume "
            "(--worker-timeout sets the wait)"
        )

    def submit(self, fn: Callable, *args: Any):
        return self.client.submit(_threaded, self.threads, fn, *args, pure=False)

    def as_completed(self, futures: Iterable[Any]) -> Iterator[Any]:
        """Futures as they finish; raises :class:`EnvironmentProblem` once no live worker has been seen for
        ``worker_timeout`` seconds while tasks are pending."""
        from dask.distributed import wait

        pending = set(futures)
        last_seen = time.monotonic()
        poll = min(2.0, max(0.1, self.worker_timeout / 4))
        while pending:
            try:
                done, pending = wait(pending, timeout=poll, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = set()
            yield from done
            if done or self._live_workers() > 0:
                last_seen = time.monotonic()
            elif time.monotonic() - last_seen > self.worker_timeout:
                raise EnvironmentProblem(self._no_workers_message())

    def shutdown(self, cancel: bool = False, notify: Callable[[str], None] | None = None) -> None:
        if self.client is not None:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def check_executor_args(kind: str, workers: int | None, scheduler: str | None, threads: int = 1) -> None:
    """Raise ``ValueError`` naming the argument if ``kind``/``workers``/``scheduler``/``threads`` cannot build
    an executor, or ask for something the executor would ignore (``workers`` with ``serial`` or with a Dask
    ``scheduler``, whose workers are started elsewhere)."""
    if kind not in EXECUTORS:
        raise ValueError(f"executor: expected one of {list(EXECUTORS)}, got {kind!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers: expected a positive integer, got {workers!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected a positive integer, got {threads!r}")
    if scheduler is not None and kind != "dask":
        raise ValueError(f"scheduler: only used with executor 'dask', got executor {kind!r}")
    if workers is not None and kind == "serial":
        raise ValueError("workers: has no effect with executor 'serial' (one run at a time in this process)")
    if workers is not None and scheduler is not None:
        raise ValueError(
            "workers: has no effect with a Dask scheduler (its workers are started with the cluster, "
            "e.g. SLURMCluster(...).scale(jobs=N))"
        )


def make_executor(
    kind: str = "local",
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    threads: int = 1,
    connect_timeout: float = 10.0,
    worker_timeout: float = 60.0,
):
    """Build an executor by name: ``"local"`` (default), ``"serial"`` or ``"dask"`` (see the module docstring)."""
    check_executor_args(kind, workers, scheduler, threads)
    for name, v in (("connect_timeout", connect_timeout), ("worker_timeout", worker_timeout)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
            raise ValueError(f"{name}: expected a positive number of seconds, got {v!r}")
    if kind == "serial":
        return SerialExecutor(threads)
    if kind == "local":
        return LocalExecutor(workers, threads)
    return DaskExecutor(
        scheduler, workers, threads=threads, connect_timeout=connect_timeout, worker_timeout=worker_timeout
    )
