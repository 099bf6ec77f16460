"""A tiny language model for recall tasks, and the model table of a training file.

``RecallLM``: token embedding, ``num_layers`` pre-norm blocks ``x ← x + mixer(RMSNorm(x))``,
``x ← x + MLP(RMSNorm(x))`` (MLP: ``W_2 GELU(W_1 x)``, width ``mlp_ratio · hidden_size``), a final RMSNorm and
a head tied to the embedding (``logits = h Eᵀ``). The mixer is :class:`OSDNAttention` (``kind = "osdn"``) or
one of fla's layers (``kind = "fla_deltanet"``, ``"fla_gated_deltanet"``, see :mod:`.peers`), at the same
width, heads, head dimension and depth.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import _desc, check_bool, check_choice, check_scalar
from .attention import D_MODES, MODES, OSDNAttention
from .peers import PEER_KINDS, fla_layer

__all__ = ["KINDS", "ModelConfig", "RecallLM", "model_from_dict"]

#: Model kinds of a training file's ``[[model]]`` tables.
KINDS = ("osdn", *PEER_KINDS)

#: Keys that only ``kind = "osdn"`` takes.
_OSDN_ONLY = ("d_mode", "mode", "chunk_size", "rule_c", "rule_detach", "d_max", "s_max")


@dataclass(frozen=True)
class ModelConfig:
    """The model of a run (a ``[[model]]`` table), validated on construction; errors name the field.

    Attributes:
        kind: ``"osdn"`` (default), ``"fla_deltanet"`` or ``"fla_gated_deltanet"``.
        d_mode: ``"none"`` (DeltaNet), ``"rule"`` or ``"learned"`` (``kind = "osdn"`` only).
        mode: ``"chunk"`` (Triton kernel) or ``"reference"`` (torch recurrence; CPU smoke runs).
        hidden_size, num_layers, num_heads, head_dim (default ``hidden_size // num_heads``): the shape.
        use_short_conv, conv_size, use_gate: as in :class:`OSDNAttention`.
        mlp_ratio: MLP width over ``hidden_size`` (default 2.0; 0 drops the MLP).
        chunk_size, rule_c, rule_detach, d_max, s_max: as in :class:`OSDNAttention` (``s_max`` absent: no
            clip; a training file omits the key for that).
    """

    kind: str = "osdn"
    d_mode: str = "rule"
    mode: str = "chunk"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    head_dim: int | None = None
    use_short_conv: bool = True
    conv_size: int = 4
    use_gate: bool = True
    mlp_ratio: float = 2.0
    chunk_size: int = 64
    rule_c: float = 0.5
    rule_detach: bool = False
    d_max: float = 2.0
    s_max: float | None = None

    def __post_init__(self):
        check_choice("kind", self.kind, KINDS)
        check_choice("d_mode", self.d_mode, D_MODES)
        check_choice("mode", self.mode, MODES)
        h = int(check_scalar("hidden_size", self.hidden_size, 1, None, integer=True))
        check_scalar("num_layers", self.num_layers, 1, None, integer=True)
        nh = int(check_scalar("num_heads", self.num_heads, 1, None, integer=True))
        if self.head_dim is None and h % nh:
            raise ValueError(
                f"num_heads: expected a divisor of hidden_size = {h} (or give head_dim), got {nh}"
            )
        if self.head_dim is not None:
            check_scalar("head_dim", self.head_dim, 1, 256, integer=True)
        check_bool("use_short_conv", self.use_short_conv)
        check_scalar("conv_size", self.conv_size, 1, None, integer=True)
        check_bool("use_gate", self.use_gate)
        check_scalar("mlp_ratio", self.mlp_ratio, 0.0, None)
        check_choice("chunk_size", self.chunk_size, [16, 32, 64])
        check_scalar("rule_c", self.rule_c, 0.0, 2.0, lo_open=True, hi_open=True)
        check_bool("rule_detach", self.rule_detach)
        check_scalar("d_max", self.d_max, 0.0, None, lo_open=True)
        if self.s_max is not None:
            check_scalar("s_max", self.s_max, 0.0, 2.0, lo_open=True, hi_open=True)

    @property
    def dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    def label(self) -> str:
        """``deltanet``, ``osdn-rule`` (``osdn-rule-detached``), ``osdn-learned``, or the peer kind; with a
        write-gain clip ``-smax<value>`` is appended (``osdn-rule-smax1.5``)."""
        if self.kind != "osdn":
            return self.kind
        clip = "" if self.s_max is None else f"-smax{self.s_max:g}"
        if self.d_mode == "none":
            return "deltanet" + clip
        return (
            f"osdn-{self.d_mode}" + ("-detached" if self.d_mode == "rule" and self.rule_detach else "") + clip
        )


def model_from_dict(d: Mapping, where: str = "model") -> ModelConfig:
    """A :class:`ModelConfig` from its table; every error is one line naming ``where.<key>``."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: expected a table, got {d!r}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key; expected some of {sorted(fields)}")
    if d.get("kind", "osdn") != "osdn":
        extra = [k for k in _OSDN_ONLY if k in d]
        if extra:
            raise ValueError(f"{where}.{extra[0]}: only for kind 'osdn', got kind {d.get('kind')!r}")
    try:
        return ModelConfig(**d)
    except ValueError as err:
        raise ValueError(f"{where}.{err}") from None


class _Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        h = cfg.hidden_size
        self.norm1 = nn.RMSNorm(h, eps=1e-5)
        if cfg.kind == "osdn":
            self.mixer = OSDNAttention(
                h,
                cfg.num_heads,
                cfg.head_dim,
                d_mode=cfg.d_mode,
                mode=cfg.mode,
                use_short_conv=cfg.use_short_conv,
                conv_size=cfg.conv_size,
                use_gate=cfg.use_gate,
                chunk_size=cfg.chunk_size,
                rule_c=cfg.rule_c,
                rule_detach=cfg.rule_detach,
                d_max=cfg.d_max,
                s_max=cfg.s_max,
            )
        else:
            self.mixer = fla_layer(cfg, layer_idx)
        width = int(round(cfg.mlp_ratio * h))
        self.mlp = None
        if width:
            self.norm2 = nn.RMSNorm(h, eps=1e-5)
            self.mlp = nn.Sequential(
                nn.Linear(h, width, bias=False), nn.GELU(), nn.Linear(width, h, bias=False)
            )

    def forward(self, x, cu_seqlens=None):
        x = x + self.mixer(self.norm1(x), cu_seqlens=cu_seqlens)
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x


class RecallLM(nn.Module):
    """Tiny causal language model (see the module docstring).

    Args:
        vocab_size: tokens.
        config: a :class:`ModelConfig` or its table.

    ``forward(input_ids [B, T], cu_seqlens=None)`` returns logits ``[B, T, vocab_size]``;
    ``forward(input_ids, positions=mask)`` with a boolean ``mask [B, T]`` returns only the logits of the marked
    positions, ``[mask.sum(), vocab_size]`` (row-major order): the output projection of a recall task's few
    answer positions instead of all ``B·T`` (the same values, with the projection and the softmax done only
    where a loss is taken).
    """

    def __init__(self, vocab_size: int, config: ModelConfig | Mapping | None = None):
        super().__init__()
        vocab_size = int(check_scalar("vocab_size", vocab_size, 1, None, integer=True))
        cfg = config if isinstance(config, ModelConfig) else model_from_dict(config or {})
        self.config = cfg
        self.embed = nn.Embedding(vocab_size, cfg.hidden_size)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(_Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = nn.RMSNorm(cfg.hidden_size, eps=1e-5)

    def forward(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.is_floating_point():
            raise ValueError(f"input_ids: expected an integer tensor [B, T], got {_desc(input_ids)}")
        if positions is not None and (
            not isinstance(positions, torch.Tensor)
            or positions.dtype != torch.bool
            or positions.shape != input_ids.shape
        ):
            raise ValueError(
                f"positions: expected a bool tensor of the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {_desc(positions)}"
            )
        x = self.embed(input_ids)
        for blk in self.blocks:
            x = blk(x, cu_seqlens)
        if positions is not None:
            x = x[positions.to(x.device)]
        return F.linear(self.norm(x), self.embed.weight)
