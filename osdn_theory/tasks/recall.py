"""Multi-query associative recall (MQAR) as token sequences, with a JRT-style and a forgetting variant.

Vocabulary of ``vocab_size`` tokens: ``0`` is the filler, keys are ``1 .. n_k`` and values
``n_k + 1 .. vocab_size − 1`` with ``n_k = (vocab_size − 1) // 2``. A raw sequence of ``seq_len + 1`` tokens
is a context of key–value pairs, then a query region; the model reads ``inputs = raw[:-1]`` and is scored
where the next token is an answer (``labels = raw[1:]`` there, :data:`IGNORE` elsewhere). Example
(``num_kv_pairs = 3``, ``num_queries = 2``, ``seq_len = 13``; ``k·`` keys, ``v·`` values, ``.`` filler)::

    raw     k1 v1 k2 v2 k3 v3 | .  .  k3 v3 .  .  k1 v1
    inputs  k1 v1 k2 v2 k3 v3   .  .  k3 v3 .  .  k1
    labels  -  -  -  -  -  -    -  -  v3 -  -  -  v1

- :class:`MQAR`: as in zoology's multi-query AR: the query region has ``(seq_len + 1 − context) // 2``
  two-token slots, the queries take ``num_queries`` distinct slots drawn with probability
  ``∝ s^(power_a − 1)`` (``s = 1, 2, …``: short gaps after the context are likelier) and ask distinct keys.
- :class:`JRTRecall`: the same with the context repeated ``num_passes`` times before the queries (JRT
  prompts: a causal model reads every pair again after having seen them all once).
- :class:`ForgettingMQAR`: after the context, ``num_overwrites`` of its keys are written again with new
  values; the label is the latest value, and :attr:`RecallBatch.overwritten` marks the queries of
  overwritten keys (a memory that does not forget recalls the stale value there).

Keys within a sequence are distinct, values of the context are distinct, and an overwrite's value differs
from the one it replaces. ``build(seed)`` takes an integer or a tuple of integers (numpy ``SeedSequence``
entropy), so training and held-out data come from disjoint seed streams: ``(seed, 0, step)`` and
``(seed, 1)`` in :mod:`osdn_theory.train`. :func:`brute_force_labels` recomputes the labels with a
dictionary, independently of the generator, for the tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._validate import check_scalar

__all__ = [
    "IGNORE",
    "MQAR",
    "TASKS",
    "ForgettingMQAR",
    "JRTRecall",
    "RecallBatch",
    "brute_force_labels",
    "task_from_dict",
]

#: Label of a position that is not scored (the ``ignore_index`` of ``torch.nn.functional.cross_entropy``).
IGNORE = -100


@dataclass(frozen=True)
class RecallBatch:
    """A batch of recall sequences.

    Attributes:
        inputs: token ids of shape ``[N, T]`` (int64).
        labels: the answer token at each query position, :data:`IGNORE` elsewhere, ``[N, T]`` (int64).
        overwritten: ``[N, T]`` bool, true at queries whose key was overwritten (:class:`ForgettingMQAR`), or
            ``None``.
        context_len: tokens before the query region (the pairs, all passes and overwrites).
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    overwritten: torch.Tensor | None
    context_len: int

    def to(self, device) -> RecallBatch:
        ow = None if self.overwritten is None else self.overwritten.to(device)
        return RecallBatch(self.inputs.to(device), self.labels.to(device), ow, self.context_len)


def _int(name: str, x: Any, lo: int, hi: int | None = None) -> int:
    return int(check_scalar(name, x, lo, hi, integer=True))


def _slot_probs(space: int, power_a: float) -> np.ndarray:
    s = np.arange(1, space + 1, dtype=np.float64)
    p = s ** (power_a - 1.0)
    return p / p.sum()


def recall_tokens(
    rng: np.random.Generator,
    *,
    num_examples: int,
    vocab_size: int,
    seq_len: int,
    num_kv_pairs: int,
    num_queries: int,
    num_passes: int = 1,
    num_overwrites: int = 0,
    power_a: float = 0.01,
) -> RecallBatch:
    """Generate a :class:`RecallBatch` (arguments as in :class:`MQAR`; validated by the task classes)."""
    n_k = (vocab_size - 1) // 2
    n_v = vocab_size - 1 - n_k
    N, Q, P, M = num_kv_pairs, num_queries, num_passes, num_overwrites
    ctx = 2 * N * P + 2 * M
    space = (seq_len + 1 - ctx) // 2
    probs = _slot_probs(space, power_a)
    raw = np.zeros((num_examples, seq_len + 1), dtype=np.int64)
    labels = np.full((num_examples, seq_len), IGNORE, dtype=np.int64)
    over = np.zeros((num_examples, seq_len), dtype=bool)
    for n in range(num_examples):
        keys = rng.choice(n_k, N, replace=False) + 1
        vals = rng.choice(n_v, N, replace=False) + 1 + n_k
        pairs = np.stack([keys, vals], 1).reshape(-1)
        raw[n, : 2 * N * P] = np.tile(pairs, P)
        latest = vals.copy()
        if M:
            which = rng.choice(N, M, replace=False)
            shift = rng.integers(1, n_v, size=M)  # a new value, never the old one
            new = (latest[which] - 1 - n_k + shift) % n_v + 1 + n_k
            latest[which] = new
            raw[n, 2 * N * P : ctx] = np.stack([keys[which], new], 1).reshape(-1)
        slots = rng.choice(space, Q, replace=False, p=probs)
        asked = rng.choice(N, Q, replace=False)
        pos = ctx + 2 * slots
        raw[n, pos] = keys[asked]
        raw[n, pos + 1] = latest[asked]
        labels[n, pos] = latest[asked]
        if M:
            over[n, pos] = np.isin(asked, which)
    return RecallBatch(
        torch.from_numpy(raw[:, :-1].copy()),
        torch.from_numpy(labels),
        torch.from_numpy(over) if M else None,
        ctx,
    )


@dataclass(frozen=True)
class MQAR:
    """Multi-query associative recall (see the module docstring for the layout).

    Attributes:
        vocab_size: tokens, ``≥ 5`` (filler, keys, values); at least ``2 · num_kv_pairs + 1``.
        num_kv_pairs: key–value pairs in the context, ``≥ 1``.
        num_queries: queries (distinct keys), ``1 ≤ num_queries ≤ num_kv_pairs``; default all pairs.
        seq_len: model input length ``T``; the query region must hold ``num_queries`` two-token slots.
        power_a: exponent of the query-slot distribution ``∝ s^(power_a − 1)`` in (0, 1]; 1 is uniform,
            zoology's default 0.01 puts most queries right after the context.
        num_examples: sequences per ``build``.
    """

    vocab_size: int = 8192
    num_kv_pairs: int = 8
    num_queries: int | None = None
    seq_len: int = 64
    power_a: float = 0.01
    num_examples: int = 64

    name = "mqar"

    def _passes(self) -> int:
        return 1

    def _overwrites(self) -> int:
        return 0

    def __post_init__(self):
        _int("vocab_size", self.vocab_size, 5)
        n = _int("num_kv_pairs", self.num_kv_pairs, 1)
        if n > (self.vocab_size - 1) // 2:
            raise ValueError(
                f"num_kv_pairs: expected at most (vocab_size - 1) // 2 = {(self.vocab_size - 1) // 2} distinct "
                f"keys, got {n}"
            )
        if self.num_queries is not None:
            _int("num_queries", self.num_queries, 1, n)
        _int("seq_len", self.seq_len, 2)
        check_scalar("power_a", self.power_a, 0.0, 1.0, lo_open=True)
        _int("num_examples", self.num_examples, 1)
        need = self.context_len + 2 * self.queries - 1
        if self.seq_len < need:
            raise ValueError(
                f"seq_len: expected at least {need} (context {self.context_len} tokens + {self.queries} query "
                f"slots of 2 tokens − 1), got {self.seq_len}"
            )

    @property
    def queries(self) -> int:
        return self.num_kv_pairs if self.num_queries is None else self.num_queries

    @property
    def context_len(self) -> int:
        return 2 * self.num_kv_pairs * self._passes() + 2 * self._overwrites()

    def build(self, seed: int | Sequence[int]) -> RecallBatch:
        """``num_examples`` sequences; the same ``seed`` (an integer or a tuple of integers) gives the same batch."""
        rng = np.random.default_rng(seed)
        return recall_tokens(
            rng,
            num_examples=self.num_examples,
            vocab_size=self.vocab_size,
            seq_len=self.seq_len,
            num_kv_pairs=self.num_kv_pairs,
            num_queries=self.queries,
            num_passes=self._passes(),
            num_overwrites=self._overwrites(),
            power_a=self.power_a,
        )

    def to_dict(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class JRTRecall(MQAR):
    """MQAR with the context repeated ``num_passes ≥ 2`` times before the queries (JRT-style prompts)."""

    num_passes: int = 2

    name = "jrt"

    def _passes(self) -> int:
        return self.num_passes

    def __post_init__(self):
        _int("num_passes", self.num_passes, 2)
        super().__post_init__()


@dataclass(frozen=True)
class ForgettingMQAR(MQAR):
    """MQAR whose context is followed by ``num_overwrites`` (``1 ≤ · ≤ num_kv_pairs``) new bindings of
    already-seen keys; the label of a query is the key's latest value."""

    num_overwrites: int = 4

    name = "forgetting"

    def _overwrites(self) -> int:
        return self.num_overwrites

    def __post_init__(self):
        n = self.num_kv_pairs if isinstance(self.num_kv_pairs, int) else None
        _int("num_overwrites", self.num_overwrites, 1, n)
        super().__post_init__()


#: Task names of a training file's ``[[task]]`` tables.
TASKS: dict[str, type[MQAR]] = {"mqar": MQAR, "jrt": JRTRecall, "forgetting": ForgettingMQAR}


def task_from_dict(d: Mapping, where: str = "task") -> MQAR:
    """Build a task from its table (``{"name": "mqar", "num_kv_pairs": 16, ...}``); every error names
    ``where.<key>``."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: expected a table with a 'name', got {d!r}")
    name = d.get("name")
    if name not in TASKS:
        raise ValueError(f"{where}.name: expected one of {list(TASKS)}, got {name!r}")
    cls = TASKS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields - {"name"})
    if unknown:
        raise ValueError(
            f"{where}.{unknown[0]}: unknown key for task {name!r}; expected some of {sorted(fields)}"
        )
    try:
        return cls(**{k: v for k, v in d.items() if k != "name"})
    except ValueError as err:
        raise ValueError(f"{where}.{err}") from None


def brute_force_labels(inputs: torch.Tensor, context_len: int) -> torch.Tensor:
    """Labels recomputed by reading each sequence with a dictionary (independent of the generator).

    The context (``inputs[:, :context_len]``) is read as key–value pairs, a later pair overwriting an earlier
    one; in the query region every nonzero token at an even offset is a query whose label is its key's value.

    Args:
        inputs: token ids of shape ``[N, T]``; context_len: tokens of the context.

    Returns:
        labels of shape ``[N, T]`` (int64), :data:`IGNORE` where nothing is asked.
    """
    out = torch.full(inputs.shape, IGNORE, dtype=torch.int64)
    for n, row in enumerate(inputs.tolist()):
        memory: dict[int, int] = {}
        for i in range(0, context_len, 2):
            memory[row[i]] = row[i + 1]
        for p in range(context_len, len(row), 2):
            if row[p] != 0:
                out[n, p] = memory[row[p]]
    return out
