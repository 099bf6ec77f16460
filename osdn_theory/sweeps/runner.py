"""Run a sweep: skip finished runs, batch the rest by shape, execute, record each run as it finishes.

Resumable by construction: the results file is the only source of truth for "done" (see
:mod:`osdn_theory.sweeps.store`). Kill the process at any point and rerun the same command: finished runs are
read back, a truncated last line is dropped, and only the missing runs execute. A run that raises is recorded
with ``status = "failed"`` and its traceback, and the sweep goes on (``retry_failed=True`` runs it again).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from .evaluate import evaluate_batch, stack_key
from .executors import check_executor_args, make_executor
from .spec import RunConfig, SweepSpec, load_spec
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


def _manifest(spec: SweepSpec, store: ResultsStore, prev: dict, session: dict) -> dict:
    recs = store.records
    hashes = spec.hashes
    sessions = list(prev.get("sessions", [])) + [session]
    return {
        "sweep": spec.name,
        "spec_file": Path(spec.source).name if spec.source else None,
        "spec_sha256": spec.source_sha256,
        "created": prev.get("created", session["started"]),
        "updated": utc_now(),
        "code_version": code_version(),
        "machine": machine_info(),
        "metrics_settings": spec.metrics,
        "n_runs": len(hashes),
        "n_ok": sum(1 for h in hashes if recs.get(h, {}).get("status") == "ok"),
        "n_failed": sum(1 for h in hashes if recs.get(h, {}).get("status") == "failed"),
        "seeds": sorted({r.seed for r in spec.runs}),
        "runs": {r.hash: {"label": r.label(), "seed": r.seed} for r in spec.runs},
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
) -> SweepSummary:
    """Execute the missing runs of ``spec`` into the folder ``out`` (see the module docstring).

    Args:
        spec: a :class:`SweepSpec` or the path of a sweep file.
        out: results folder (created if missing; reused to resume).
        executor: ``"local"`` (process pool, default), ``"serial"`` or ``"dask"``.
        workers: worker processes (default: CPU count); for ``dask`` without ``scheduler``, local workers.
        scheduler: Dask scheduler address (``executor="dask"`` only).
        max_runs: execute at most this many missing runs in this invocation (``None``: all).
        retry_failed: execute again runs recorded as failed.
        batch_size: runs stacked per task (default: the sweep file's ``batch_size``).
        progress: show a tqdm bar with done/failed/ETA.
    """
    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    if max_runs is not None and (isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 0):
        raise ValueError(f"max_runs: expected a non-negative integer, got {max_runs!r}")
    # Checked up front: a resumed sweep with nothing left to run must still reject bad arguments.
    check_executor_args(executor, workers, scheduler)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: expected a directory, got an existing file {str(out)!r}")
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        return _run_locked(
            spec, out, executor, workers, scheduler, max_runs, retry_failed, batch_size, progress
        )


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


def _run_locked(spec, out, executor, workers, scheduler, max_runs, retry_failed, batch_size, progress):
    t0 = time.perf_counter()
    store = ResultsStore(out)
    prev = store.read_manifest()
    session = {
        "started": utc_now(),
        "executor": executor,
        "workers": workers,
        "dropped_tail_bytes": store.dropped_tail,
    }
    store.write_sweep({"name": spec.name, "runs": [dict(r.to_dict(), hash=r.hash) for r in spec.runs]})
    finished = store.done(include_failed=not retry_failed)
    skipped = sum(1 for r in spec.runs if r.hash in finished)
    pending = [r for r in spec.runs if r.hash not in finished]
    if max_runs is not None:
        pending = pending[:max_runs]
    store.write_manifest(_manifest(spec, store, prev, dict(session, status="running")))

    executed = failed = 0
    failed_hashes: list[str] = []
    if pending:
        from tqdm.auto import tqdm

        batches = plan_batches(pending, batch_size or spec.batch_size)
        ex = make_executor(executor, workers=workers, scheduler=scheduler)
        bar = tqdm(total=len(pending), desc=f"sweep {spec.name}", unit="run", disable=not progress)
        bar.set_postfix(done=skipped, failed=0, total=len(spec.runs))
        try:
            futs = {}
            for b in batches:
                futs[ex.submit(evaluate_batch, [r.to_dict() for r in b])] = b
            for fut in ex.as_completed(list(futs)):
                batch = futs[fut]
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
                    store.append(rec)
                    executed += 1
                    if rec["status"] != "ok":
                        failed += 1
                        failed_hashes.append(rec["hash"])
                bar.update(len(records))
                bar.set_postfix(done=skipped + executed - failed, failed=failed, total=len(spec.runs))
        finally:
            bar.close()
            ex.shutdown(cancel=True)
            store.close()
    session.update(finished=utc_now(), executed=executed, failed=failed)
    store.write_manifest(_manifest(spec, store, prev, dict(session, status="finished")))
    if store.records:
        store.write_parquet(spec.hashes)
    return SweepSummary(
        out=Path(out),
        total=len(spec.runs),
        skipped=skipped,
        executed=executed,
        failed=failed,
        elapsed_s=time.perf_counter() - t0,
        failed_hashes=failed_hashes,
        failed_recorded=sum(1 for h in spec.hashes if store.records.get(h, {}).get("status") == "failed"),
    )
