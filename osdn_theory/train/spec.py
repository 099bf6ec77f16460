"""Training files: ``[[model]] × [[task]] × [[optim]] × seeds`` grids, validated and hashed like sweep files.

Example (TOML)::

    name = "recall_smoke"
    seeds = [0, 1]

    [train]                 # the step budget and batch, shared by every run
    steps = 200
    batch_size = 32
    eval_every = 50         # held-out accuracy every 50 steps (and at the end)

    [metrics]               # evaluation settings
    eval_examples = 256

    [[model]]
    d_mode = "none"         # DeltaNet; kind = "osdn" is the default
    hidden_size = 64
    grid = {d_mode = ["none", "rule", "learned"]}

    [[task]]
    name = "mqar"
    vocab_size = 256
    seq_len = 64
    grid = {num_kv_pairs = [4, 8]}

    [[optim]]
    lr = 3e-3

Every entry may carry a ``grid`` table (key → list, expanded as a cartesian product); a top-level ``[grid]``
does the same over ``model.*``, ``task.*``, ``optim.*`` and ``train.*`` of every run. A run's config is
``{"model", "task", "optim", "train", "seed", "metrics"}`` as written in the file (defaults are not filled
in, so a new default never changes an old run's identity); its hash is :func:`osdn_theory.sweeps.config_hash`
of that, and the spec hash the hash of the sorted run hashes, exactly as for sweeps, so the sweep runner's
store, manifest and resume logic apply unchanged. Every error is one ``ValueError`` line naming the key
(``model[0].hidden_size``, ``task[1].seq_len``, ``train.steps``).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from .._validate import check_choice, check_scalar
from ..layers.lm import model_from_dict
from ..sweeps.spec import _canon, _entries, _seeds, config_hash, expand_grid, spec_hash
from ..tasks import task_from_dict

__all__ = [
    "DEFAULT_EVAL",
    "DEFAULT_OPTIM",
    "DEFAULT_TRAIN",
    "TrainRun",
    "TrainSpec",
    "eval_settings",
    "load_train_spec",
    "optim_settings",
    "parse_train_spec",
    "train_settings",
]

#: ``[train]`` defaults: optimiser steps, sequences per step, evaluation interval (0: only at the end),
#: training-loss points (mean over ``log_every`` steps), precision (``fp32`` or ``bf16`` autocast on a GPU).
DEFAULT_TRAIN: dict[str, Any] = {
    "steps": 1000,
    "batch_size": 64,
    "eval_every": 100,
    "log_every": 10,
    "precision": "fp32",
}
#: ``[[optim]]`` defaults: AdamW, linear warm-up then cosine decay to ``min_lr_ratio · lr``, gradient clip.
DEFAULT_OPTIM: dict[str, Any] = {
    "name": "adamw",
    "lr": 1e-3,
    "weight_decay": 0.1,
    "beta1": 0.9,
    "beta2": 0.98,
    "warmup_steps": 50,
    "schedule": "cosine",
    "min_lr_ratio": 0.1,
    "grad_clip": 1.0,
}
#: ``[metrics]`` defaults: held-out sequences for accuracy (drawn from the seed stream ``(seed, 1)``).
DEFAULT_EVAL: dict[str, Any] = {"eval_examples": 512}

_TOP_KEYS = {"name", "description", "seeds", "train", "metrics", "model", "task", "optim", "grid"}


def _fill(defaults: dict, given: Mapping | None, where: str) -> dict:
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key; expected some of {sorted(defaults)}")
    return {**defaults, **given}


def train_settings(d: Mapping | None, where: str = "train") -> dict:
    """The ``[train]`` table with defaults filled in, validated."""
    t = _fill(DEFAULT_TRAIN, d, where)
    for k in ("steps", "batch_size", "log_every"):
        check_scalar(f"{where}.{k}", t[k], 1, None, integer=True)
    check_scalar(f"{where}.eval_every", t["eval_every"], 0, None, integer=True)
    check_choice(f"{where}.precision", t["precision"], ["fp32", "bf16"])
    return t


def optim_settings(d: Mapping | None, where: str = "optim") -> dict:
    """An ``[[optim]]`` table with defaults filled in, validated."""
    o = _fill(DEFAULT_OPTIM, d, where)
    check_choice(f"{where}.name", o["name"], ["adamw"])
    check_scalar(f"{where}.lr", o["lr"], 0.0, None, lo_open=True)
    check_scalar(f"{where}.weight_decay", o["weight_decay"], 0.0, None)
    for k in ("beta1", "beta2"):
        check_scalar(f"{where}.{k}", o[k], 0.0, 1.0, hi_open=True)
    check_scalar(f"{where}.warmup_steps", o["warmup_steps"], 0, None, integer=True)
    check_choice(f"{where}.schedule", o["schedule"], ["cosine", "constant"])
    check_scalar(f"{where}.min_lr_ratio", o["min_lr_ratio"], 0.0, 1.0)
    check_scalar(f"{where}.grad_clip", o["grad_clip"], 0.0, None)
    return o


def eval_settings(d: Mapping | None, where: str = "metrics") -> dict:
    """The ``[metrics]`` table with defaults filled in, validated."""
    m = _fill(DEFAULT_EVAL, d, where)
    check_scalar(f"{where}.eval_examples", m["eval_examples"], 1, None, integer=True)
    return m


@dataclass(frozen=True)
class TrainRun:
    """One training run: model, task, optimiser and training tables, a seed and the evaluation settings."""

    model: dict
    task: dict
    optim: dict
    train: dict
    seed: int
    metrics: dict

    def to_dict(self) -> dict:
        return {
            "model": copy.deepcopy(self.model),
            "task": copy.deepcopy(self.task),
            "optim": copy.deepcopy(self.optim),
            "train": copy.deepcopy(self.train),
            "seed": self.seed,
            "metrics": dict(self.metrics),
        }

    @property
    def hash(self) -> str:
        h = self.__dict__.get("_hash")
        if h is None:
            h = self.__dict__["_hash"] = config_hash(self.to_dict())
        return h

    def label(self) -> str:
        return run_label(self.to_dict())


def run_label(cfg: Mapping) -> str:
    """``mqar(kv=16,T=256)/osdn-rule(h=64)/seed0``-style label of a run config."""
    m = model_from_dict(cfg.get("model", {}))
    t = task_from_dict(cfg.get("task", {}))
    extra = f",passes={t.num_passes}" if hasattr(t, "num_passes") else ""
    extra += f",over={t.num_overwrites}" if hasattr(t, "num_overwrites") else ""
    return f"{t.name}(kv={t.num_kv_pairs},T={t.seq_len}{extra})/{m.label()}(h={m.hidden_size})/seed{cfg.get('seed')}"


@dataclass
class TrainSpec:
    """A parsed training file (the same attributes the sweep runner reads from a sweep spec)."""

    name: str
    runs: list[TrainRun]
    metrics: dict
    batch_size: int = 1
    source: str = ""
    source_sha256: str = ""
    raw: dict = field(default_factory=dict)

    @property
    def hashes(self) -> list[str]:
        return [r.hash for r in self.runs]

    @property
    def spec_hash(self) -> str:
        return spec_hash(self.hashes)


def _expand(raw: Mapping, key: str) -> list[tuple[str, dict]]:
    out = []
    entries = _entries(raw.get(key), key) or [{}]
    for i, e in enumerate(entries):
        g = e.pop("grid", None)
        out += [(f"{key}[{i}]", x) for x in expand_grid(e, g, f"{key}[{i}]")]
    return out


def parse_train_spec(raw: Mapping, *, source: str = "<dict>") -> TrainSpec:
    """Validate a training dict (the content of a training file) and expand it into runs."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"train file: expected a table at the top level, got {type(raw).__name__}")
    raw = _canon(raw, "train file")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown top-level key; expected some of {sorted(_TOP_KEYS)}")
    name = raw.get("name", Path(source).stem if source else "train")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")
    if "seeds" not in raw:
        raise ValueError("seeds: expected a list of seeds, e.g. seeds = [0, 1, 2]")
    seeds = _seeds(raw["seeds"])
    if "task" not in raw:
        raise ValueError('task: expected at least one [[task]] table, e.g. name = "mqar"')
    train = dict(raw.get("train") or {})
    train_settings(train)
    metrics = dict(raw.get("metrics") or {})
    eval_settings(metrics)
    grid = raw.get("grid")
    if grid:
        for k in grid:
            if not k.startswith(("model.", "task.", "optim.", "train.")):
                raise ValueError(
                    f"grid.{k}: expected a key starting with 'model.', 'task.', 'optim.' or 'train.'"
                )
    cells: list[dict] = []
    models, tasks, optims = _expand(raw, "model"), _expand(raw, "task"), _expand(raw, "optim")
    for (wm, m), (wt, t), (wo, o) in itertools.product(models, tasks, optims):
        base = {"model": m, "task": t, "optim": o, "train": train}
        for cfg in expand_grid(base, grid, "grid") if grid else [base]:
            where_m = wm if not grid else f"{wm} (with grid)"
            model_from_dict(cfg["model"], where_m)
            task_from_dict(cfg["task"], wt if not grid else f"{wt} (with grid)")
            optim_settings(cfg["optim"], wo if not grid else f"{wo} (with grid)")
            train_settings(cfg["train"], "train" if not grid else "train (with grid)")
            cells.append(cfg)
    # seeds outermost: a sweep cut short holds whole replicates of the grid (every model and cell for the first
    # seeds), not every seed of the first models only
    runs: dict[str, TrainRun] = {}
    for seed in seeds:
        for cfg in cells:
            r = TrainRun(cfg["model"], cfg["task"], cfg["optim"], cfg["train"], seed, metrics)
            runs.setdefault(r.hash, r)
    return TrainSpec(
        name=name,
        runs=list(runs.values()),
        metrics=metrics,
        source=source,
        source_sha256=config_hash(raw),
        raw=raw,
    )


def load_train_spec(path: str | Path) -> TrainSpec:
    """Read a training file (``.toml``) and :func:`parse_train_spec` it."""
    p = Path(path)
    if not p.is_file() or p.suffix != ".toml":
        raise ValueError(f"train file: expected an existing .toml file, got {str(path)!r}")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"train file {p.name}: invalid TOML: {err}") from None
    return parse_train_spec(raw, source=str(p))
