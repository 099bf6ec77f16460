"""Executor backends of a sweep: in-process (serial), a local process pool, and Dask.

Every backend exposes the same two calls used by the runner: ``submit(fn, *args) -> future`` and
``as_completed(futures)`` yielding futures as they finish (each with ``.result()``), plus ``shutdown()``.

- ``serial``: runs each task in the calling process at ``submit`` time (debugging, tiny sweeps, notebooks).
- ``local`` (default): :class:`concurrent.futures.ProcessPoolExecutor` with ``workers`` processes
  (default: the CPU count), ``spawn`` start method, one torch thread per worker.
- ``dask``: a :class:`dask.distributed.Client` connected to ``scheduler`` (an address such as
  ``tcp://host:8786``), or, without an address, to a fresh ``LocalCluster(n_workers=workers,
  threads_per_worker=1)``. On a SLURM cluster start the workers with dask-jobqueue and pass the address::

      from dask_jobqueue import SLURMCluster
      cluster = SLURMCluster(cores=1, processes=1, memory="4GB", walltime="02:00:00")
      cluster.scale(jobs=32)
      print(cluster.scheduler_address)   # then: osdn sweep FILE --out DIR --executor dask --scheduler ADDR
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = [
    "EXECUTORS",
    "DaskExecutor",
    "LocalExecutor",
    "SerialExecutor",
    "check_executor_args",
    "make_executor",
]

EXECUTORS = ("local", "serial", "dask")


def _worker_init() -> None:
    """Pool worker set-up: one torch thread, and exit when the parent dies (a killed sweep leaves no orphans)."""
    import threading
    import time

    import torch

    torch.set_num_threads(1)
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="osdn-parent-watch", daemon=True).start()


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
    """Runs tasks in this process, one at a time, in submission order, as ``as_completed`` asks for them."""

    name = "serial"
    workers = 1

    def submit(self, fn: Callable, *args: Any) -> _Deferred:
        return _Deferred(fn, args)

    def as_completed(self, futures: Iterable[_Deferred]) -> Iterator[_Deferred]:
        for f in futures:
            f.run()
            yield f

    def shutdown(self, cancel: bool = False) -> None:
        pass


class LocalExecutor:
    """A process pool on this machine (``spawn`` start method; each worker uses one torch thread)."""

    name = "local"

    def __init__(self, workers: int | None = None):
        self.workers = workers or os.cpu_count() or 1
        self._pool = cf.ProcessPoolExecutor(
            max_workers=self.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init
        )

    def submit(self, fn: Callable, *args: Any) -> cf.Future:
        return self._pool.submit(fn, *args)

    def as_completed(self, futures: Iterable[cf.Future]) -> Iterator[cf.Future]:
        return cf.as_completed(list(futures))

    def shutdown(self, cancel: bool = False) -> None:
        self._pool.shutdown(wait=not cancel, cancel_futures=cancel)


class DaskExecutor:
    """Tasks on a Dask cluster: ``scheduler`` address, or a new ``LocalCluster`` with ``workers`` workers."""

    name = "dask"

    def __init__(self, scheduler: str | None = None, workers: int | None = None):
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as err:  # pragma: no cover - depends on the installed extras
            raise ValueError(
                "executor: 'dask' needs dask[distributed]; install the extra: pip install 'osdn_theory[dask]'"
            ) from err
        self._cluster = None
        if scheduler:
            self.client = Client(scheduler)
        else:
            self._cluster = LocalCluster(
                n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, dashboard_address=None
            )
            self.client = Client(self._cluster)
        self.workers = max(1, len(self.client.scheduler_info().get("workers", {})))

    def submit(self, fn: Callable, *args: Any):
        return self.client.submit(fn, *args, pure=False)

    def as_completed(self, futures: Iterable[Any]) -> Iterator[Any]:
        from dask.distributed import as_completed

        return iter(as_completed(list(futures)))

    def shutdown(self, cancel: bool = False) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def check_executor_args(kind: str, workers: int | None, scheduler: str | None) -> None:
    """Raise ``ValueError`` naming the argument if ``kind``/``workers``/``scheduler`` cannot build an executor."""
    if kind not in EXECUTORS:
        raise ValueError(f"executor: expected one of {list(EXECUTORS)}, got {kind!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers: expected a positive integer, got {workers!r}")
    if scheduler is not None and kind != "dask":
        raise ValueError(f"scheduler: only used with executor 'dask', got executor {kind!r}")


def make_executor(kind: str = "local", *, workers: int | None = None, scheduler: str | None = None):
    """Build an executor by name: ``"local"`` (default), ``"serial"`` or ``"dask"``."""
    check_executor_args(kind, workers, scheduler)
    if kind == "serial":
        return SerialExecutor()
    if kind == "local":
        return LocalExecutor(workers)
    return DaskExecutor(scheduler, workers)
