"""Results store of a sweep folder: crash-safe JSON lines, a Parquet table and a manifest.

Layout of ``OUT``::

    OUT/results.jsonl     one JSON object per finished run, appended, flushed and fsync'd as it finishes; each
                          record carries the ``spec_hash`` of the sweep that ran it
    OUT/results.parquet   the same records as a table (scalars + list columns), rewritten at the end of a sweep
    OUT/manifest.json     spec hash(es), config hashes, code version, seeds, machine, dates, and the history of
                          every session (atomically replaced)
    OUT/sweep.json        the expanded sweep (every run config), for reproduction
    OUT/.lock             held (flock) while a sweep runs in OUT, so two sweeps never append at once

A folder holds the results of one spec: the runner refuses to run a different spec into it unless asked to
append (then records of several specs sit side by side, each with its own ``spec_hash``).

Crash safety: a run is "done" exactly when its line is on disk. A process killed mid-write leaves at most a
truncated last line; :class:`ResultsStore` drops it (and truncates the file to the last complete line) when it
opens the folder, so that run is executed again. Records are keyed by config hash; if a hash appears twice
(e.g. a failed run retried), the last record wins. Statuses: ``ok``, ``diverged`` (finished, but the memory
blew up; see :data:`osdn_theory.sweeps.evaluate.DIVERGED_R1`) and ``failed`` (raised; traceback kept).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["FINISHED", "ResultsStore", "code_version", "machine_info", "records_to_frame", "utc_now"]

RESULTS = "results.jsonl"
PARQUET = "results.parquet"
MANIFEST = "manifest.json"
SWEEP = "sweep.json"

#: statuses of a run that finished (a rerun would compute the same thing): never run again on resume
FINISHED = ("ok", "diverged")


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def code_version() -> dict[str, Any]:
    """Package version plus the git commit (and whether the tree is dirty) when run from a checkout."""
    from .. import __version__

    out: dict[str, Any] = {"package": __version__, "git_commit": None, "git_dirty": None}
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        out["git_commit"], out["git_dirty"] = commit or None, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def machine_info() -> dict[str, Any]:
    import numpy
    import torch

    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ResultsStore:
    """Append-only record store of one sweep folder (see the module docstring for the layout).

    Args:
        out: the sweep folder (created if missing).
        repair: truncate an unfinished last line on open (default). Only the process that holds the folder's
            lock (the sweep runner) may repair; a reader such as ``osdn plot`` passes ``repair=False`` and just
            ignores the unfinished line, because the line may still be being written by a running sweep
            (truncating under it would splice the rest of that line onto a cut one and corrupt the file).
    """

    def __init__(self, out: str | Path, *, repair: bool = True):
        if not isinstance(repair, bool):
            raise ValueError(f"repair: expected a bool, got {type(repair).__name__}")
        self.repair = repair
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"out: expected a directory, got an existing file {str(self.out)!r}")
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / RESULTS
        self.dropped_tail = 0  # bytes of a truncated last line removed on open
        self.records: dict[str, dict] = {}
        self._load()
        self._fh = None

    # -- reading -------------------------------------------------------------------------------------------
    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good_end = data.rfind(b"\n") + 1  # everything after the last newline is an unfinished line
        lines = data[:good_end].splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # a last line cut mid-write (newline present but bytes lost)
                    good_end -= len(line) + 1
                    continue
                raise ValueError(
                    f"{self.path.name}: line {i + 1} is not valid JSON and is not the last line; "
                    "the file was edited or corrupted (move it aside to restart the sweep)"
                ) from None
            if not isinstance(rec, dict) or "hash" not in rec or "status" not in rec:
                raise ValueError(
                    f"{self.path.name}: line {i + 1}: expected a record with 'hash' and 'status'"
                )
            self.records[rec["hash"]] = rec
        if good_end < len(data):
            self.dropped_tail = len(data) - good_end
            if not self.repair:
                return
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())

    def done(self, *, include_failed: bool = True) -> set[str]:
        """Hashes with a record (``include_failed=False``: only finished ones, ``ok`` or ``diverged``)."""
        return {h for h, r in self.records.items() if include_failed or r["status"] in FINISHED}

    # -- writing -------------------------------------------------------------------------------------------
    def append(self, record: dict) -> None:
        """Append one record as a JSON line; returns once the line is flushed and fsync'd."""
        if not self.repair:
            raise ValueError("record: this store was opened read-only (repair=False); it cannot append")
        if "hash" not in record or "status" not in record:
            raise ValueError(f"record: expected keys 'hash' and 'status', got {sorted(record)}")
        line = json.dumps(record, sort_keys=True, allow_nan=True, separators=(",", ":"))
        if "\n" in line:  # json.dumps never emits raw newlines; guard anyway
            raise ValueError("record: serialized record contains a newline")
        if self._fh is None:
            self._fh = open(self.path, "ab")
        self._fh.write(line.encode() + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.records[record["hash"]] = record

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- manifest and tables -------------------------------------------------------------------------------
    def write_sweep(self, spec_dict: dict) -> None:
        _atomic_write_json(self.out / SWEEP, spec_dict)

    def read_sweep(self) -> dict:
        p = self.out / SWEEP
        return json.loads(p.read_text()) if p.exists() else {}

    def read_manifest(self) -> dict:
        p = self.out / MANIFEST
        return json.loads(p.read_text()) if p.exists() else {}

    def write_manifest(self, manifest: dict) -> None:
        _atomic_write_json(self.out / MANIFEST, manifest)

    def write_parquet(self, hashes: Iterable[str] | None = None) -> Path:
        """Write ``results.parquet`` from the records (only ``hashes`` if given); returns its path."""
        recs = list(self.records.values())
        if hashes is not None:
            keep = set(hashes)
            recs = [r for r in recs if r["hash"] in keep]
        df = records_to_frame(recs)
        path = self.out / PARQUET
        tmp = path.with_name(path.name + ".tmp")
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        return path


def _flatten(prefix: str, x: Any, out: dict) -> None:
    if isinstance(x, dict):
        for k, v in x.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = x


def records_to_frame(records: Iterable[dict]):
    """Records -> ``pandas.DataFrame``: one row per run; config flattened to dotted columns
    (``stream.family``, ``method.apf.rate.lam``, ``seed``; a training run's ``model.*``, ``task.*``, ...),
    metrics as columns, series as list columns."""
    import pandas as pd

    rows = []
    config_tables = set()
    for r in records:
        row: dict[str, Any] = {
            "hash": r["hash"],
            "status": r["status"],
            "label": r.get("label"),
            "elapsed_s": r.get("elapsed_s"),
            "finished": r.get("finished"),
            "error": r.get("error"),
            "spec_hash": r.get("spec_hash"),
        }
        cfg = r.get("config", {})
        # sweeps: stream, method, seed, metrics (the metric settings: window, recovery_tol, ...);
        # training runs (osdn train): model, task, optim, train, seed, metrics (the evaluation settings)
        other = [k for k in cfg if k not in ("stream", "method", "seed", "metrics")]
        for key in ("stream", "method", *other):
            _flatten(key, cfg.get(key, {}), row)
            config_tables.add(key)
        row["seed"] = cfg.get("seed")
        _flatten("metrics", cfg.get("metrics", {}), row)
        for k, v in (r.get("metrics") or {}).items():
            row[k] = v
        for k, v in (r.get("series") or {}).items():
            row[f"series.{k}"] = v
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in df.columns:  # parquet needs one type per column: stringify mixed config columns
        if df[c].dtype == object and c.startswith(tuple(f"{t}." for t in config_tables)):
            vals = df[c].dropna()
            if len({type(v) for v in vals}) > 1 or any(isinstance(v, list | dict) for v in vals):
                df[c] = df[c].map(lambda v: None if v is None else json.dumps(v, sort_keys=True))
    return df
