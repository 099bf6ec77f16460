"""Token-level recall tasks for trained models: MQAR, its JRT-style variant and a forgetting variant.

>>> from osdn_theory.tasks import MQAR
>>> batch = MQAR(vocab_size=64, num_kv_pairs=4, seq_len=24, num_examples=2).build(seed=0)
>>> batch.inputs.shape, batch.labels.shape
(torch.Size([2, 24]), torch.Size([2, 24]))

Every task is a frozen dataclass validated on construction (a bad field raises one ``ValueError`` line
naming it) whose ``build(seed)`` calls a free generator function and returns a :class:`RecallBatch`.
"""

from .recall import (
    IGNORE,
    MQAR,
    TASKS,
    ForgettingMQAR,
    JRTRecall,
    RecallBatch,
    brute_force_labels,
    task_from_dict,
)

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
