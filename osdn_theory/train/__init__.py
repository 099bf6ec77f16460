"""Trained tiny-model recall experiments: training files, the training run, results.

>>> from osdn_theory.train import load_train_spec, train_batch   # doctest: +SKIP

Command line: ``osdn train FILE --out DIR`` (resumable; the sweep runner's store, manifest and executors).
"""

from .results import (
    compare_train_results,
    load_train_results,
    plot_accuracy_vs_pairs,
    summary_table,
    write_comparison,
    write_report,
)
from .run import evaluate_model, lr_at, pick_device, train_batch, train_run
from .spec import TrainRun, TrainSpec, load_train_spec, parse_train_spec, run_label

__all__ = [
    "TrainRun",
    "TrainSpec",
    "compare_train_results",
    "evaluate_model",
    "load_train_results",
    "load_train_spec",
    "lr_at",
    "parse_train_spec",
    "pick_device",
    "plot_accuracy_vs_pairs",
    "run_label",
    "summary_table",
    "train_batch",
    "train_run",
    "write_comparison",
    "write_report",
]
