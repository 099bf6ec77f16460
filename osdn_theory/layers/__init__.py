"""Layers for trained-model experiments: the OSDN attention layer and a tiny recall language model.

>>> from osdn_theory.layers import OSDNAttention, RecallLM           # doctest: +SKIP
>>> layer = OSDNAttention(64, num_heads=2, d_mode="rule", mode="reference")  # doctest: +SKIP
>>> y = layer(torch.randn(2, 16, 64))                               # [2, 16, 64]  # doctest: +SKIP
"""

from .attention import D_MODES, MODES, OSDNAttention, ShortConvolution, ratio_rule_d
from .lm import KINDS, ModelConfig, RecallLM, model_from_dict
from .peers import PEER_KINDS, PeerUnavailable

__all__ = [
    "D_MODES",
    "KINDS",
    "MODES",
    "PEER_KINDS",
    "ModelConfig",
    "OSDNAttention",
    "PeerUnavailable",
    "RecallLM",
    "ShortConvolution",
    "model_from_dict",
    "ratio_rule_d",
]
