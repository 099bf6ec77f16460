"""Run a sweep: skip finished runs, batch the rest by shape, execute, record each run as it finishes.

Resumable by construction: the results file is the only source of truth for "done" (see
:mod:`osdn_theory.sweeps.store`). Kill the process at any point and rerun the same command: finished runs are
read back, a truncated last line is dropped, and only the missing runs execute. A run that raises is recorded
with ``status = "failed"`` and its traceback, and the sweep goes on (``retry_failed=True`` runs it again).

One folder, one spec: the runs already in ``out`` must come from the same spec (the same runs with the same
metric settings: :attr:`SweepSpec.spec_hash`), or the sweep is refused before anything is written, unless
``append_different_spec=True``. ``manifest.json`` keeps every session: spec hash, code version, plugins (each
with its SHA-256), executor,
counts, start and end, and its final state (``finished``, ``stopped`` when ``stop_after`` ended it with runs
left, ``interrupted``, ``error`` with the message, or ``killed`` when a later session found it still marked
``running``).

``stop_after`` (seconds) is for a machine held for a fixed time: no run starts after it, the runs in flight
finish and are recorded, and the rest stay pending for the next invocation, so nothing is lost (an
interrupt loses the runs in flight).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .evaluate import evaluate_batch, evaluate_with_plugins, stack_key
from .executors import EnvironmentProblem, check_executor_args, make_executor
from .spec import RunConfig, SweepSpec, canonical_json, load_spec, spec_hash
from .store import ResultsStore, code_version, machine_info, utc_now

__all__ = ["SweepSummary", "plan_batches", "run_sweep"]


@dataclass
class SweepSummary:
    """What one invocation of :func:`run_sweep` did."""

    out: Path
    total: int  # runs in the sweep
    skipped: int  # already recorded before this invocation
    executed: int  # recorded by this invocation
    failed: int  # of which failed
    elapsed_s: float
    failed_hashes: list[str] = field(default_factory=list)
    failed_recorded: int = (
        0  # runs of the sweep whose latest record is a failure (this or earlier invocations)
    )
    diverged: int = 0  # recorded by this invocation with status "diverged"
    diverged_recorded: int = 0  # runs of the sweep recorded as diverged (this or earlier invocations)
    stopped: bool = False  # stop_after ended this invocation with runs left

    @property
    def remaining(self) -> int:
        return self.total - self.skipped - self.executed


def plan_batches(runs: list[RunConfig], batch_size: int) -> list[list[RunConfig]]:
    """Group runs that share method, metric settings and stream shapes (seeds, and stream-value grids such as
    ``condition`` or ``noise``) into batches of ≤ ``batch_size`` runs.

    Such runs stack along the batch dimension B of the d-scan and memory recurrence (:func:`stack_key`).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    groups: dict[str, list[RunConfig]] = {}
    for r in runs:
        groups.setdefault(stack_key(r.to_dict()), []).append(r)
    out = []
    for g in groups.values():
        out += [g[i : i + batch_size] for i in range(0, len(g), batch_size)]
    # biggest batches first: better load balance at the tail of the sweep
    out.sort(key=len, reverse=True)
    return out


def _mismatch(spec: SweepSpec, store: ResultsStore, prev: dict) -> str | None:
    """Why the folder's results are not this spec's (``None`` when they are, or when there are none).

    The folder's specs are the ``spec_hash`` values of its records; records written before spec hashes were
    kept count as the spec of the manifest's ``runs`` (the spec hash of those run hashes).
    """
    if not store.records:
        return None
    legacy = [h for h, r in store.records.items() if not r.get("spec_hash")]
    folder = {r["spec_hash"] for r in store.records.values() if r.get("spec_hash")}
    legacy_hash = spec_hash(list(prev.get("runs") or legacy)) if legacy else None
    if legacy_hash:
        folder.add(legacy_hash)
    if folder == {spec.spec_hash}:
        return None
    others = sorted(folder - {spec.spec_hash})
    n_other = sum(1 for r in store.records.values() if (r.get("spec_hash") or legacy_hash) != spec.spec_hash)
    names = {h: v.get("sweep") for h, v in (prev.get("specs") or {}).items()}
    if not names and prev.get("sweep") and legacy:
        names = {h: prev["sweep"] for h in others}
    what = ", ".join(f"{h[:12]}" + (f" ({names[h]!r})" if names.get(h) else "") for h in others)
    settings = {canonical_json(r.get("config", {}).get("metrics", {})) for r in store.records.values()}
    mine = canonical_json(spec.metrics)
    diff = ""
    if settings and mine not in settings:
        old = json.loads(sorted(settings)[0])
        keys = sorted(k for k in set(old) | set(spec.metrics) if old.get(k) != spec.metrics.get(k))
        if keys:
            diff = (
                " (metric settings differ: "
                + ", ".join(f"{k} {old.get(k)!r} there, {spec.metrics.get(k)!r} here" for k in keys)
                + ")"
            )
    return (
        f"out: {str(store.out)!r} holds {n_other} result(s) of another sweep spec [{what}], not of this one "
        f"[{spec.spec_hash[:12]} ({spec.name!r})]{diff}; mixing them would mix their figures. Use a new "
        "--out folder, or --append-different-spec to add this sweep beside them (each record keeps its spec hash)"
    )


def _plugin_records(spec: SweepSpec) -> list[dict]:
    """What the manifest keeps of each plugin: its entry, where it was found and its SHA-256."""
    keys = ("entry", "path", "module", "sha256", "sweep_file")
    return [{k: p[k] for k in keys if p.get(k) is not None} for p in getattr(spec, "plugins", [])]


def _count_on_disk(session: dict, path: Path, offset: int) -> None:
    """Set the session's ``executed``/``failed``/``diverged`` from the complete lines that this session added to
    ``results.jsonl`` (after byte ``offset``): on an interrupt the counters in memory can lag the file (Ctrl-C
    between a record's fsync and its count), and the manifest must say what is on disk."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return
    counts = {"executed": 0, "failed": 0, "diverged": 0}
    for line in data.split(b"\n")[:-1]:  # the part after the last newline is not a complete record
        try:
            status = json.loads(line).get("status")
        except ValueError:
            continue
        counts["executed"] += 1
        if status in ("failed", "diverged"):
            counts[status] += 1
    session.update(counts)


def _session_counts(session: dict) -> dict:
    return {k: session[k] for k in ("runs", "skipped", "planned", "executed", "failed", "diverged")}


def _manifest(spec: SweepSpec, store: ResultsStore, prev: dict, sessions: list[dict]) -> dict:
    """The folder's manifest: every spec that ran here, the union of their runs, and the session history."""
    recs = store.records
    runs = {h: dict(v) for h, v in (prev.get("runs") or {}).items()}
    legacy_hash = spec_hash(list(runs)) if runs and not prev.get("specs") else None
    for v in runs.values():
        v.setdefault("specs", [legacy_hash] if legacy_hash else [])
    for r in spec.runs:
        v = runs.setdefault(r.hash, {"label": r.label(), "seed": r.seed, "specs": []})
        if spec.spec_hash not in v["specs"]:
            v["specs"].append(spec.spec_hash)
    specs = {h: dict(v) for h, v in (prev.get("specs") or {}).items()}
    if legacy_hash and legacy_hash not in specs:
        specs[legacy_hash] = {
            "sweep": prev.get("sweep"),
            "spec_file": prev.get("spec_file"),
            "spec_sha256": prev.get("spec_sha256"),
            "metrics_settings": prev.get("metrics_settings"),
        }
    specs[spec.spec_hash] = {
        "sweep": spec.name,
        "spec_file": Path(spec.source).name if spec.source else None,
        "spec_sha256": spec.source_sha256,
        "metrics_settings": spec.metrics,
        "plugins": _plugin_records(spec),
    }

    def counts(hashes) -> dict:
        st = [recs.get(h, {}).get("status") for h in hashes]
        return {
            "n_runs": len(st),
            "n_ok": st.count("ok"),
            "n_diverged": st.count("diverged"),
            "n_failed": st.count("failed"),
        }

    for h, v in specs.items():
        v.update(counts([r for r, x in runs.items() if h in x["specs"]]))
    settings = {canonical_json(v.get("metrics_settings")) for v in specs.values()}
    return {
        "format": 2,
        "sweep": spec.name,
        "spec_hash": spec.spec_hash,
        "spec_file": Path(spec.source).name if spec.source else None,
        "spec_sha256": spec.source_sha256,
        "specs": specs,
        "mixed": len(specs) > 1,
        "created": prev.get("created", sessions[-1]["started"]),
        "updated": utc_now(),
        "code_version": sessions[-1]["code_version"],
        "machine": machine_info(),
        # one setting for the folder, or None when specs with different settings were appended here
        "metrics_settings": spec.metrics if len(settings) == 1 else None,
        **counts(list(runs)),
        "seeds": sorted({v["seed"] for v in runs.values()}),
        "runs": runs,
        "sessions": sessions,
    }


def run_sweep(
    spec: SweepSpec | str | Path,
    out: str | Path,
    *,
    executor: str = "local",
    workers: int | None = None,
    scheduler: str | None = None,
    max_runs: int | None = None,
    retry_failed: bool = False,
    batch_size: int | None = None,
    progress: bool = True,
    threads: int = 1,
    connect_timeout: float = 10.0,
    worker_timeout: float = 60.0,
    append_different_spec: bool = False,
    evaluate: Callable[[list[dict]], list[dict]] | None = None,
    stop_after: float | None = None,
) -> SweepSummary:
    """Execute the missing runs of ``spec`` into the folder ``out`` (see the module docstring).

    Args:
        spec: a :class:`SweepSpec` or the path of a sweep file.
        out: results folder (created if missing; reused to resume). A folder holding results of another spec
            (different runs, or the same runs with other metric settings) is refused with a ``ValueError``.
        executor: ``"local"`` (process pool, default), ``"serial"`` or ``"dask"``.
        workers: worker processes (default: CPU count) for ``local``, or for ``dask`` without ``scheduler``
            (local workers); rejected where it has no effect (``serial``, a Dask ``scheduler``).
        scheduler: Dask scheduler address (``executor="dask"`` only).
        max_runs: execute at most this many missing runs in this invocation (``None``: all).
        retry_failed: execute again runs recorded as failed.
        batch_size: runs stacked per task (default: the sweep file's ``batch_size``).
        progress: show a tqdm bar with done/failed/ETA.
        threads: torch threads per task, every executor (default 1).
        connect_timeout: seconds to reach a Dask ``scheduler``; worker_timeout: seconds a Dask cluster may
            have no live worker.
        append_different_spec: allow adding this spec's runs to a folder holding another spec's results.
        evaluate: the task each executor runs, ``run dicts -> records`` (picklable; never raising), in batches
            of ``batch_size`` runs in spec order; default :func:`evaluate_batch` on runs batched by
            :func:`plan_batches` (``osdn train`` passes its training task here).
        stop_after: seconds after which no further run starts (executors ``serial`` and ``local``); the runs
            in flight finish and are recorded, the rest stay pending (the session's state is ``stopped``).
            ``None``: no limit.

    Raises:
        ValueError: bad arguments, or a folder of another spec.
        EnvironmentProblem: the folder cannot be written (read-only, full), the scheduler cannot be
            reached, or no worker is alive. The manifest's last session then records ``state = "error"``.
        KeyboardInterrupt: passed on after the manifest records ``state = "interrupted"``.
    """
    if isinstance(spec, str | Path):  # else a parsed spec: a SweepSpec, or a training spec (osdn train)
        spec = load_spec(spec)
    if max_runs is not None and (isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 0):
        raise ValueError(f"max_runs: expected a non-negative integer, got {max_runs!r}")
    # Checked up front: a resumed sweep with nothing left to run must still reject bad arguments.
    check_executor_args(executor, workers, scheduler, threads)
    for name, v in (("connect_timeout", connect_timeout), ("worker_timeout", worker_timeout)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
            raise ValueError(f"{name}: expected a positive number of seconds, got {v!r}")
    if stop_after is not None:
        if isinstance(stop_after, bool) or not isinstance(stop_after, int | float) or not stop_after > 0:
            raise ValueError(f"stop_after: expected a positive number of seconds, got {stop_after!r}")
        if executor == "dask":
            raise ValueError("stop_after: supported with executor 'serial' or 'local', got executor 'dask'")
    if not isinstance(append_different_spec, bool):
        raise ValueError(f"append_different_spec: expected a bool, got {append_different_spec!r}")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: expected a directory, got an existing file {str(out)!r}")
    opts = {
        "executor": executor,
        "workers": workers,
        "scheduler": scheduler,
        "max_runs": max_runs,
        "retry_failed": retry_failed,
        "batch_size": batch_size,
        "progress": progress,
        "threads": threads,
        "connect_timeout": connect_timeout,
        "worker_timeout": worker_timeout,
        "append": append_different_spec,
        "evaluate": evaluate,
        "stop_after": stop_after,
    }
    with _os_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        with _exclusive(out):
            return _run_locked(spec, out, **opts)


def _os_error_message(out: Path, err: OSError) -> str:
    why = err.strerror or str(err)
    hint = {
        errno.ENOSPC: "free some space",
        errno.EDQUOT: "free some space",
        errno.EACCES: "make it writable or choose another --out",
        errno.EPERM: "make it writable or choose another --out",
        errno.EROFS: "the file system is read-only; choose another --out",
    }.get(err.errno, "check the folder")
    where = f" ({err.filename})" if err.filename else ""
    return (
        f"out: cannot write to {str(out)!r}{where}: {why}; {hint}, then rerun the same command "
        "(finished runs are kept)"
    )


@contextlib.contextmanager
def _os_errors(out: Path):
    """Turn a file-system error on the results folder into one :class:`EnvironmentProblem` line."""
    try:
        yield
    except OSError as err:
        if isinstance(err, EnvironmentProblem):  # pragma: no cover - EnvironmentProblem is no OSError
            raise
        raise EnvironmentProblem(_os_error_message(out, err)) from err


@contextlib.contextmanager
def _exclusive(out: Path):
    """Hold an exclusive lock on ``out/.lock`` so two sweeps never append to one folder at once.

    The operating system releases the lock when the process dies, so a killed sweep never blocks its rerun.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield
        return
    with open(out / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ValueError(f"out: another sweep is running in {str(out)!r} (its .lock is held)") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _sweep_json(spec: SweepSpec, store: ResultsStore) -> dict:
    """``sweep.json``: every run config that was asked for in this folder, each with the specs that asked."""
    old = store.read_sweep()
    runs = {r["hash"]: r for r in old.get("runs", []) if isinstance(r, dict) and "hash" in r}
    legacy = spec_hash(list(runs)) if runs and "specs" not in old else None
    for r in runs.values():
        r.setdefault("specs", [legacy] if legacy else [])
    for r in spec.runs:
        e = runs.setdefault(r.hash, dict(r.to_dict(), hash=r.hash, specs=[]))
        if spec.spec_hash not in e["specs"]:
            e["specs"].append(spec.spec_hash)
    specs = dict(old.get("specs") or ({legacy: old.get("name")} if legacy else {}))
    specs[spec.spec_hash] = spec.name
    return {"name": spec.name, "spec_hash": spec.spec_hash, "specs": specs, "runs": list(runs.values())}


def _run_locked(
    spec,
    out,
    *,
    executor,
    workers,
    scheduler,
    max_runs,
    retry_failed,
    batch_size,
    progress,
    threads,
    connect_timeout,
    worker_timeout,
    append,
    evaluate=None,
    stop_after=None,
):
    t0 = time.perf_counter()
    store = ResultsStore(out)
    prev = store.read_manifest()
    why = _mismatch(spec, store, prev)
    if why and not append:
        raise ValueError(why)
    sessions = list(prev.get("sessions", []))
    for old in sessions:  # we hold the folder's lock: a session still "running" was killed
        if old.get("state", old.get("status")) == "running":
            old["state"] = "killed"
            old.pop("status", None)
    finished = store.done(include_failed=not retry_failed)
    skipped = sum(1 for r in spec.runs if r.hash in finished)
    pending = [r for r in spec.runs if r.hash not in finished]
    if max_runs is not None:
        pending = pending[:max_runs]
    session = {
        "started": utc_now(),
        "finished": None,
        "state": "running",
        "error": None,
        "spec_hash": spec.spec_hash,
        "sweep": spec.name,
        "spec_file": Path(spec.source).name if spec.source else None,
        "code_version": code_version(),
        "plugins": _plugin_records(spec),
        "executor": executor,
        "workers": workers,
        "scheduler": scheduler,
        "threads": threads,
        "appended_to_other_spec": bool(why),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "dropped_tail_bytes": store.dropped_tail,
        "runs": len(spec.runs),
        "skipped": skipped,
        "planned": len(pending),
        "executed": 0,
        "failed": 0,
        "diverged": 0,
        "stop_after": stop_after,
    }
    sessions.append(session)
    start_bytes = store.path.stat().st_size if store.path.exists() else 0

    def write_manifest() -> None:
        store.write_manifest(_manifest(spec, store, prev, sessions))

    store.write_sweep(_sweep_json(spec, store))
    write_manifest()

    failed_hashes: list[str] = []
    try:
        if pending:
            _execute(
                spec,
                store,
                pending,
                session,
                failed_hashes,
                executor=executor,
                workers=workers,
                scheduler=scheduler,
                threads=threads,
                connect_timeout=connect_timeout,
                worker_timeout=worker_timeout,
                batch_size=batch_size or spec.batch_size,
                progress=progress,
                skipped=skipped,
                evaluate=evaluate,
                stop_after=stop_after,
            )
        if store.records:
            store.write_parquet()
    except BaseException as err:
        _count_on_disk(session, store.path, start_bytes)
        if isinstance(err, KeyboardInterrupt):
            session["state"] = "interrupted"
        else:
            session["state"] = "error"
            msg = _os_error_message(out, err) if isinstance(err, OSError) else str(err)
            session["error"] = f"{type(err).__name__}: {msg}"
        session["finished"] = utc_now()
        with contextlib.suppress(OSError):  # a full disk may refuse this too: the last manifest then stays
            write_manifest()
        raise
    finally:
        store.close()
    session.update(finished=utc_now(), state="stopped" if session.get("stopped") else "finished")
    write_manifest()
    return SweepSummary(
        out=Path(out),
        total=len(spec.runs),
        skipped=skipped,
        executed=session["executed"],
        failed=session["failed"],
        elapsed_s=time.perf_counter() - t0,
        failed_hashes=failed_hashes,
        failed_recorded=sum(1 for h in spec.hashes if store.records.get(h, {}).get("status") == "failed"),
        diverged=session["diverged"],
        diverged_recorded=sum(1 for h in spec.hashes if store.records.get(h, {}).get("status") == "diverged"),
        stopped=session["state"] == "stopped",
    )


#: How often the main process of a pool sweep looks for Ctrl-C while it waits for results (seconds).
POLL_S = 0.2


class _InterruptsBetweenWaits:
    """Ctrl-C in the main process of a pool sweep is taken between waits, never inside one.

    That process spends its time in ``concurrent.futures.wait``. Python's default SIGINT handler raises
    ``KeyboardInterrupt`` wherever the main thread is, inside the pool's locking included; once on a GPU
    machine the shutdown that followed failed with ``RuntimeError: release unlocked lock``, so the session was
    recorded as an error instead of an interruption and the report was not redrawn. While active, the first
    SIGINT only sets :attr:`asked`, which :meth:`check` (called after each wait of at most ``POLL_S``) turns
    into ``KeyboardInterrupt``; a second SIGINT raises at once. Installed only in the main thread and only over
    Python's own handler (an ignored SIGINT stays ignored, a caller's handler is left alone); restored on
    exit."""

    def __init__(self, active: bool):
        self.active = (
            active
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        )
        self.asked = False
        self._installed = False

    def __enter__(self):
        if self.active:
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._installed = False

    def _handle(self, signum, frame) -> None:
        if self.asked:  # asked twice: at once
            raise KeyboardInterrupt
        self.asked = True

    def check(self) -> None:
        if self.asked:
            raise KeyboardInterrupt


class _Raised:
    """Stands for a task whose submission raised: ``result()`` raises that error."""

    def __init__(self, err: Exception):
        self.err = err

    def result(self):
        raise self.err


def _execute(
    spec,
    store,
    pending,
    session,
    failed_hashes,
    *,
    executor,
    workers,
    scheduler,
    threads,
    connect_timeout,
    worker_timeout,
    batch_size,
    progress,
    skipped,
    evaluate=None,
    stop_after=None,
) -> None:
    """Run ``pending`` on the executor, appending each record as it arrives and counting into ``session``.

    Without ``stop_after`` every task is submitted at once. With it, at most ``workers + 1`` tasks are out at a
    time and none is submitted once ``stop_after`` seconds have passed (``session["stopped"]`` says so): no
    task is ever cancelled, so a pool that breaks still fails its tasks cleanly (``concurrent.futures`` of
    Python 3.11 hangs when it breaks holding cancelled futures).

    Ctrl-C: in a pool sweep the main process takes it between waits (:class:`_InterruptsBetweenWaits`) and
    stops the workers with SIGTERM (they ignore SIGINT: a training run then finishes its step, saves its
    checkpoint and exits); ``KeyboardInterrupt`` is passed on."""
    from tqdm.auto import tqdm

    if evaluate is None:
        evaluate, batches = evaluate_batch, plan_batches(pending, batch_size)
    else:
        batches = [pending[i : i + batch_size] for i in range(0, len(pending), batch_size)]
    ex = make_executor(
        executor,
        workers=workers,
        scheduler=scheduler,
        threads=threads,
        connect_timeout=connect_timeout,
        worker_timeout=worker_timeout,
    )
    bar = tqdm(total=len(pending), desc=f"sweep {spec.name}", unit="run", disable=not progress)
    bar.set_postfix(done=skipped, failed=0, total=len(spec.runs))
    plugins = list(getattr(spec, "plugins", None) or [])

    def submit(b):  # with plugins, each task imports them first (spawned and Dask workers too)
        args = [r.to_dict() for r in b]
        if plugins:
            return ex.submit(evaluate_with_plugins, plugins, args, evaluate)
        return ex.submit(evaluate, args)

    def record(fut, batch) -> None:
        try:
            records = fut.result()
        except Exception as err:  # the worker itself died (evaluate_batch never raises)
            import traceback

            tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            records = [
                {
                    "hash": r.hash,
                    "label": r.label(),
                    "status": "failed",
                    "config": r.to_dict(),
                    "error": f"{type(err).__name__}: {err}",
                    "traceback": tb,
                    "finished": utc_now(),
                }
                for r in batch
            ]
        for rec in records:
            rec["spec_hash"] = spec.spec_hash
            store.append(rec)
            session["executed"] += 1
            if rec["status"] == "failed":
                session["failed"] += 1
                failed_hashes.append(rec["hash"])
            elif rec["status"] == "diverged":
                session["diverged"] += 1
        bar.update(len(records))
        bar.set_postfix(
            done=skipped + session["executed"] - session["failed"],
            failed=session["failed"],
            total=len(spec.runs),
        )

    guard = _InterruptsBetweenWaits(active=ex.name == "local")
    pending_out: dict = {}
    try:
        with guard:
            if ex.name == "dask":  # its as_completed polls (and watches for lost workers) itself
                futs = {submit(b): b for b in batches}
                for fut in ex.as_completed(list(futs)):
                    record(fut, futs[fut])
                return
            deadline = math.inf if stop_after is None else time.monotonic() + stop_after
            window = len(batches) if stop_after is None else (ex.workers or 1) + (ex.name == "local")
            todo = iter(batches)  # with stop_after: a queued task keeps the workers busy, and no more
            left = len(batches)
            while True:
                while left and len(pending_out) < window and time.monotonic() < deadline:
                    b = next(todo)
                    left -= 1
                    try:
                        pending_out[submit(b)] = b
                    except Exception as err:  # e.g. a pool broken by a crashed worker: recorded as failed
                        record(_Raised(err), b)
                if not pending_out:
                    break
                fut = ex.next_done(timeout=POLL_S)
                guard.check()
                if fut is not None:
                    record(fut, pending_out.pop(fut))
            if left:
                session["stopped"] = f"stop_after = {stop_after:g} s reached"
    finally:
        bar.close()
        ex.shutdown(cancel=True, notify=lambda msg: print(msg, file=sys.stderr, flush=True))
