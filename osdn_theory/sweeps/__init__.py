"""Sweeps of APF forgetting schedules (and other methods) on synthetic streams: spec, runner, executors, store.

>>> from osdn_theory.sweeps import load_spec, run_sweep            # doctest: +SKIP
>>> run_sweep(load_spec("sweeps/apf_piecewise.toml"), "results/apf_piecewise", workers=2)  # doctest: +SKIP

Command line: ``osdn sweep FILE --out DIR`` (resumable) and ``osdn plot DIR``.
"""

from .evaluate import evaluate_batch, evaluate_runs
from .executors import EXECUTORS, make_executor
from .runner import SweepSummary, plan_batches, run_sweep
from .spec import DEFAULT_METRICS, RunConfig, SweepSpec, config_hash, load_spec, method_label, parse_spec
from .store import ResultsStore, records_to_frame

__all__ = [
    "DEFAULT_METRICS",
    "EXECUTORS",
    "ResultsStore",
    "RunConfig",
    "SweepSpec",
    "SweepSummary",
    "config_hash",
    "evaluate_batch",
    "evaluate_runs",
    "load_spec",
    "make_executor",
    "method_label",
    "parse_spec",
    "plan_batches",
    "records_to_frame",
    "run_sweep",
]
