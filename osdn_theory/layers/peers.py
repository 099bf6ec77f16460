"""Peer token mixers from flash-linear-attention (``fla.layers``), imported only when a model asks for one.

``kind = "fla_deltanet"``: ``fla.layers.DeltaNet`` (chunk mode, β, L2-normalized SiLU q/k, short
convolutions, output gate as configured); ``kind = "fla_gated_deltanet"``: ``fla.layers.GatedDeltaNet``
(with its decay gate; value expansion 1 so the widths match). Both get the same hidden size, heads, head
dimension and short-convolution settings as the OSDN layer they are compared with (fla's DeltaNet then has
exactly the parameters of ``d_mode = "none"``: tested). Where ``fla.layers`` is
not importable (``fla-core`` alone ships only the ops), :func:`fla_layer` raises :class:`PeerUnavailable`
with one line saying so; a training run records that as ``status = "skipped"``, and ``osdn train ...
--retry-failed`` runs it once the package is installed.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["PEER_KINDS", "PeerUnavailable", "fla_layer"]

PEER_KINDS = ("fla_deltanet", "fla_gated_deltanet")


class PeerUnavailable(RuntimeError):
    """A peer layer's package is not installed (the run is skipped, not failed)."""


class _Peer(nn.Module):
    """Calls an fla layer as ``mixer(x, cu_seqlens=...)`` and returns its output tensor only."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x, cu_seqlens=None):
        kw: dict[str, Any] = {} if cu_seqlens is None else {"cu_seqlens": cu_seqlens}
        out = self.layer(x, **kw)
        return out[0] if isinstance(out, tuple) else out


def fla_layer(cfg, layer_idx: int) -> nn.Module:
    """The fla layer of ``cfg.kind`` (a :class:`osdn_theory.layers.ModelConfig`), matched in width."""
    try:
        import fla.layers as fl
    except ImportError as err:
        raise PeerUnavailable(
            f"model.kind {cfg.kind!r} needs the flash-linear-attention layers (fla.layers), which are not "
            f"installed here ({err}); install flash-linear-attention to run this peer"
        ) from None
    h, nh, dim = cfg.hidden_size, cfg.num_heads, cfg.dim
    if cfg.kind == "fla_deltanet":
        expand = nh * dim / h
        layer = fl.DeltaNet(
            mode="chunk",
            hidden_size=h,
            expand_k=expand,
            expand_v=expand,
            num_heads=nh,
            use_beta=True,
            use_gate=cfg.use_gate,
            use_short_conv=cfg.use_short_conv,
            conv_size=cfg.conv_size,
            qk_activation="silu",
            qk_norm="l2",
            layer_idx=layer_idx,
        )
    elif cfg.kind == "fla_gated_deltanet":
        layer = fl.GatedDeltaNet(
            mode="chunk",
            hidden_size=h,
            expand_v=1,
            head_dim=dim,
            num_heads=nh,
            use_gate=cfg.use_gate,
            use_short_conv=cfg.use_short_conv,
            conv_size=cfg.conv_size,
            layer_idx=layer_idx,
        )
    else:  # pragma: no cover - ModelConfig checks the kind
        raise ValueError(f"kind: expected one of {list(PEER_KINDS)}, got {cfg.kind!r}")
    return _Peer(layer)
