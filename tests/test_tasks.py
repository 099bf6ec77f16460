"""Token-level recall tasks: determinism per seed, labels against a brute-force decoder, layout, config errors."""

from __future__ import annotations

import pytest
import torch

from osdn_theory.tasks import IGNORE, MQAR, ForgettingMQAR, JRTRecall, brute_force_labels, task_from_dict

TASKS = [
    MQAR(vocab_size=64, num_kv_pairs=8, seq_len=48, num_examples=16),
    MQAR(vocab_size=40, num_kv_pairs=6, num_queries=3, seq_len=21, power_a=1.0, num_examples=16),
    JRTRecall(vocab_size=64, num_kv_pairs=5, seq_len=40, num_passes=3, num_examples=16),
    ForgettingMQAR(vocab_size=64, num_kv_pairs=8, num_overwrites=3, seq_len=56, num_examples=16),
    ForgettingMQAR(vocab_size=12, num_kv_pairs=5, num_overwrites=5, seq_len=30, num_examples=16),
]
IDS = ["mqar", "mqar-Q3-uniform", "jrt-P3", "forget-3", "forget-all-small-vocab"]


@pytest.mark.parametrize("task", TASKS, ids=IDS)
def test_deterministic_per_seed(task):
    a, b = task.build(3), task.build(3)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    c = task.build((3, 0, 1))
    assert not torch.equal(a.inputs, c.inputs)
    assert torch.equal(c.inputs, task.build((3, 0, 1)).inputs)
    assert not torch.equal(task.build((3, 0, 1)).inputs, task.build((3, 1)).inputs)  # train vs held-out


@pytest.mark.parametrize("task", TASKS, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_labels_match_brute_force_decoder(task, seed):
    b = task.build(seed)
    assert b.inputs.shape == b.labels.shape == (task.num_examples, task.seq_len)
    assert b.inputs.dtype == b.labels.dtype == torch.int64
    assert torch.equal(brute_force_labels(b.inputs, b.context_len), b.labels)
    assert ((b.labels != IGNORE).sum(1) == task.queries).all()
    n_k = (task.vocab_size - 1) // 2
    ans = b.labels[b.labels != IGNORE]
    assert ((ans > n_k) & (ans < task.vocab_size)).all()  # answers are value tokens
    asked = b.inputs[b.labels != IGNORE]
    assert ((asked >= 1) & (asked <= n_k)).all()  # queries are key tokens


@pytest.mark.parametrize("task", TASKS, ids=IDS)
def test_context_layout(task):
    """Keys distinct in a sequence, the context repeated num_passes times, overwrites change the value."""
    b = task.build(5)
    N = task.num_kv_pairs
    P = getattr(task, "num_passes", 1)
    for row, over, lab in zip(
        b.inputs.tolist(),
        b.overwritten if b.overwritten is not None else [None] * len(b.inputs),
        b.labels,
        strict=True,
    ):
        pairs = row[: 2 * N]
        assert len(set(pairs[0::2])) == N and len(set(pairs[1::2])) == N
        assert row[: 2 * N * P] == pairs * P
        if over is not None:
            M = task.num_overwrites
            ow = row[2 * N * P : 2 * N * P + 2 * M]
            old = dict(zip(pairs[0::2], pairs[1::2], strict=True))
            assert all(old[k] != v for k, v in zip(ow[0::2], ow[1::2], strict=True))
            q = (lab != IGNORE).nonzero().flatten().tolist()
            assert [bool(over[p]) for p in q] == [row[p] in ow[0::2] for p in q]


def test_power_law_gaps_favour_early_slots():
    near = MQAR(vocab_size=256, num_kv_pairs=4, seq_len=200, power_a=0.01, num_examples=256).build(0)
    flat = MQAR(vocab_size=256, num_kv_pairs=4, seq_len=200, power_a=1.0, num_examples=256).build(0)
    pos_near = (near.labels != IGNORE).nonzero()[:, 1].double().mean()
    pos_flat = (flat.labels != IGNORE).nonzero()[:, 1].double().mean()
    assert (
        pos_near < pos_flat - 30
    )  # uniform slots average ~100; the power law keeps queries near the context


@pytest.mark.parametrize(
    "table, key",
    [
        ({"name": "mqar", "num_kv_pairs": 0}, "task.num_kv_pairs"),
        ({"name": "mqar", "num_kv_pairs": 40, "vocab_size": 64}, "task.num_kv_pairs"),
        ({"name": "mqar", "num_kv_pairs": 8, "num_queries": 9}, "task.num_queries"),
        ({"name": "mqar", "num_kv_pairs": 8, "seq_len": 30}, "task.seq_len"),
        ({"name": "mqar", "seq_len": 64.0}, "task.seq_len"),
        ({"name": "mqar", "power_a": 0.0}, "task.power_a"),
        ({"name": "mqar", "num_examples": 0}, "task.num_examples"),
        ({"name": "mqar", "num_passes": 2}, "task.num_passes"),
        ({"name": "jrt", "num_passes": 1}, "task.num_passes"),
        ({"name": "forgetting", "num_overwrites": 9}, "task.num_overwrites"),
        ({"name": "nope"}, "task.name"),
    ],
)
def test_bad_configs_name_the_key(table, key):
    with pytest.raises(ValueError) as err:
        task_from_dict(table)
    msg = str(err.value)
    assert msg.startswith(key + ":") and "\n" not in msg


def test_brute_force_decoder_is_independent():
    """The decoder reads a hand-written sequence (filler 0, keys 1..3, values 4..6)."""
    inputs = torch.tensor([[1, 4, 2, 5, 2, 6, 0, 0, 2, 6, 1]])
    expect = torch.full((1, 11), IGNORE)
    expect[0, 8], expect[0, 10] = 6, 4  # 2 was overwritten by 6; 1 keeps 4
    assert torch.equal(brute_force_labels(inputs, context_len=6), expect)
