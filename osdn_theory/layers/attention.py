"""``OSDNAttention``: a DeltaNet-style token mixer whose write key is ``k̃ = d ⊙ k`` (spec §2).

Per layer, for input ``x: [B, T, hidden_size]`` (``H`` heads of width ``K``)::

    q, k, v = SiLU(conv(W_q x)), SiLU(conv(W_k x)), SiLU(conv(W_v x))    (conv: optional short causal
                                                                          depthwise convolution)
    q, k    = q / ‖q‖, k / ‖k‖                                           (per head)
    β       = sigmoid(W_β x)                                             [B, T, H]
    d       = 1 (d_mode "none": DeltaNet) | ratio rule from (k, β) ("rule") | d_max · sigmoid(W_d x) ("learned")
    o       = OSDN(q, k, v, β, d)                                        (chunk kernel or torch recurrence)
    y       = W_o (RMSNorm(o) ⊙ SiLU(W_g x))                              (gate optional)

``d_mode="rule"`` is the spec's state-free ``ratio`` rule (:class:`osdn_theory.kernels.DRule`, normalized
step ``c``, ``d_1 = 1``, read-out floor ``d_min``); gradients flow through it into ``k`` and ``β`` (or not,
with ``rule_detach=True``).
``d_mode="learned"`` projects ``d`` from the input; ``W_d`` starts at zero, so ``d = d_max / 2 = 1`` and the
layer starts as DeltaNet; with L2-normalized keys and ``d < d_max = 2`` the write gain
``s = β kᵀ(d ⊙ k) < 2β ≤ 2`` stays in the contraction range of claim C4.

``mode="chunk"`` runs :func:`osdn_theory.kernels.chunk_osdn` (Triton; on a CPU only under
``TRITON_INTERPRET=1`` and at tiny sizes); ``mode="reference"`` runs the token-by-token
:func:`osdn_theory.recurrences.osdn_recurrent` in the input dtype (a float64 module computes in float64) and
the rule by :func:`ratio_rule_d`: slow, for tests and CPU smoke runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_bool, check_choice, check_scalar

__all__ = ["D_MODES", "MODES", "OSDNAttention", "ShortConvolution", "positions", "ratio_rule_d"]

D_MODES = ("none", "rule", "learned")
MODES = ("chunk", "reference")


def _wide(z: torch.Tensor) -> torch.Tensor:
    """``z`` in at least float32 (a float64 module keeps float64)."""
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


def positions(cu_seqlens: torch.Tensor | None, T: int, device) -> torch.Tensor | None:
    """Position of each token inside its own sequence, ``[T]`` (int64), for a packed batch; ``None`` without
    ``cu_seqlens``."""
    if cu_seqlens is None:
        return None
    cu = cu_seqlens.to(device=device, dtype=torch.int64)
    lens = cu[1:] - cu[:-1]
    seq = torch.repeat_interleave(torch.arange(lens.numel(), device=device), lens)
    return torch.arange(T, device=device) - cu[:-1][seq]


class ShortConvolution(nn.Module):
    """Causal depthwise convolution over time of width ``kernel_size``, then SiLU.

    ``y_t = SiLU(b + Σ_{j<W} w_{W−1−j} ⊙ x_{t−j})``, where taps reaching before the start of the token's
    sequence (``pos < j``, see :func:`positions`) read zero. Input and output ``[B, T, channels]``.
    """

    def __init__(self, channels: int, kernel_size: int = 4, bias: bool = False):
        super().__init__()
        self.kernel_size = int(check_scalar("conv_size", kernel_size, 1, None, integer=True))
        self.weight = nn.Parameter(torch.empty(channels, self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        bound = self.kernel_size**-0.5  # nn.Conv1d's default for a depthwise filter
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        W, T = self.kernel_size, x.shape[1]
        y = x * self.weight[:, W - 1]
        for j in range(1, min(W, T)):
            shifted = F.pad(x[:, : T - j], (0, 0, j, 0))
            if pos is not None:
                shifted = shifted * (pos >= j).to(x.dtype)[None, :, None]
            y = y + shifted * self.weight[:, W - 1 - j]
        if self.bias is not None:
            y = y + self.bias
        return F.silu(y)


def ratio_rule_d(
    k: torch.Tensor, beta: torch.Tensor, c: float = 0.5, d_init: float = 1.0, d_min: float = 1e-4
):
    """The ratio rule of :class:`osdn_theory.kernels.DRule` in torch, token by token (differentiable).

    ``d_{t+1} = d_t + c (1/β_t − u_tᵀ d_t) u_t / ‖u_t‖²`` with ``u_t = k_t ⊙ k_t`` (unchanged where
    ``u_t = 0``), ``d_1 = d_init``; token ``t`` is written with ``max(d_t, d_min)`` (the carried state is not
    floored).

    Args:
        k: keys of shape ``[B, T, H, K]``; beta: write strengths of shape ``[B, T, H]``.

    Returns:
        ``d`` of shape ``[B, T, H, K]`` in the dtype of ``k``.
    """
    B, T, H, K = k.shape
    u = k * k
    nu2 = (u * u).sum(-1)  # [B, T, H]
    safe = torch.where(nu2 > 0, nu2, torch.ones_like(nu2))
    d = torch.full((B, H, K), float(d_init), dtype=k.dtype, device=k.device)
    out = []
    for t in range(T):
        out.append(d.clamp_min(d_min))
        coef = torch.where(nu2[:, t] > 0, c * (1.0 / beta[:, t] - (u[:, t] * d).sum(-1)) / safe[:, t], 0.0)
        d = d + coef[..., None] * u[:, t]
    return torch.stack(out, 1)


class OSDNAttention(nn.Module):
    """OSDN / DeltaNet attention layer (see the module docstring for the computation).

    Args:
        hidden_size: model width; input and output ``[B, T, hidden_size]``.
        num_heads: heads ``H``.
        head_dim: key and value width ``K`` per head; default ``hidden_size // num_heads`` (must divide).
        d_mode: ``"none"`` (DeltaNet), ``"rule"`` (ratio rule, default) or ``"learned"``.
        mode: ``"chunk"`` (Triton kernel, default) or ``"reference"`` (torch recurrence).
        use_short_conv: short causal convolutions on q, k, v (default True); conv_size: their width (4).
        use_gate: output gate ``SiLU(W_g x)`` (default True).
        chunk_size: chunk size of the kernel, 16, 32 or 64 (default 64).
        rule_c: normalized step of the ratio rule in (0, 2) (default 0.5); rule_d_min: its floor (1e-4).
        rule_detach: ``False`` (default): gradients flow through the rule into ``k`` and ``β``; ``True``: ``d``
            is a constant of the keys (``DRule(detach=True)``), like an optimizer's preconditioner state.
        d_max: upper end of the learned ``d ∈ (0, d_max)`` (default 2.0).
        s_max: optional write-gain clip in (0, 2), C4's safeguard (``None``, default: none): each token's
            write strength ``s = β kᵀ(d ⊙ k)`` is capped at ``s_max`` (``k̃ ← min(1, s_max / s) k̃``), which
            keeps every write inside the contraction range whatever ``d`` the rule produces.
        norm_eps: epsilon of the output RMSNorm.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int | None = None,
        *,
        d_mode: str = "rule",
        mode: str = "chunk",
        use_short_conv: bool = True,
        conv_size: int = 4,
        use_gate: bool = True,
        chunk_size: int = 64,
        rule_c: float = 0.5,
        rule_d_min: float = 1e-4,
        rule_detach: bool = False,
        d_max: float = 2.0,
        s_max: float | None = None,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        hidden_size = int(check_scalar("hidden_size", hidden_size, 1, None, integer=True))
        num_heads = int(check_scalar("num_heads", num_heads, 1, None, integer=True))
        if head_dim is None:
            if hidden_size % num_heads:
                raise ValueError(
                    f"num_heads: expected a divisor of hidden_size = {hidden_size} (or give head_dim), got {num_heads}"
                )
            head_dim = hidden_size // num_heads
        head_dim = int(check_scalar("head_dim", head_dim, 1, 256, integer=True))
        self.d_mode = check_choice("d_mode", d_mode, D_MODES)
        self.mode = check_choice("mode", mode, MODES)
        self.use_short_conv = check_bool("use_short_conv", use_short_conv)
        self.use_gate = check_bool("use_gate", use_gate)
        self.chunk_size = check_choice("chunk_size", chunk_size, [16, 32, 64])
        self.rule_c = check_scalar("rule_c", rule_c, 0.0, 2.0, lo_open=True, hi_open=True)
        self.rule_d_min = check_scalar("rule_d_min", rule_d_min, 0.0, None, lo_open=True)
        self.rule_detach = check_bool("rule_detach", rule_detach)
        self.d_max = check_scalar("d_max", d_max, 0.0, None, lo_open=True)
        self.s_max = (
            None if s_max is None else check_scalar("s_max", s_max, 0.0, 2.0, lo_open=True, hi_open=True)
        )
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, head_dim
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        self.b_proj = nn.Linear(hidden_size, num_heads, bias=False)
        if self.d_mode == "learned":
            self.d_proj = nn.Linear(hidden_size, inner, bias=True)
            nn.init.zeros_(self.d_proj.weight)  # d = d_max / 2 at the start
            nn.init.constant_(self.d_proj.bias, float(torch.logit(torch.tensor(1.0 / self.d_max))))
        if self.use_short_conv:
            self.q_conv = ShortConvolution(inner, conv_size)
            self.k_conv = ShortConvolution(inner, conv_size)
            self.v_conv = ShortConvolution(inner, conv_size)
        if self.use_gate:
            self.g_proj = nn.Linear(hidden_size, inner, bias=False)
        self.o_norm = nn.RMSNorm(head_dim, eps=norm_eps)
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)

    def extra_repr(self) -> str:
        clip = "" if self.s_max is None else f", s_max={self.s_max:g}"
        return f"d_mode={self.d_mode!r}, mode={self.mode!r}, heads={self.num_heads}, head_dim={self.head_dim}{clip}"

    def _rule(self):
        from ..kernels import DRule

        return DRule(c=self.rule_c, d_min=self.rule_d_min, detach=self.rule_detach)

    def features(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None):
        """``(q, k, v, β, d)`` of the layer for ``x: [B, T, hidden_size]``: ``q, k, v: [B, T, H, K]``,
        ``β: [B, T, H]``, ``d: [B, T, H, K]`` or ``None`` (DeltaNet, or the rule computed later)."""
        B, T, _ = x.shape
        H, K = self.num_heads, self.head_dim
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.use_short_conv:
            pos = positions(cu_seqlens, T, x.device)
            q, k, v = self.q_conv(q, pos), self.k_conv(k, pos), self.v_conv(v, pos)
        else:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        q = F.normalize(q.reshape(B, T, H, K), dim=-1, eps=1e-6)
        k = F.normalize(k.reshape(B, T, H, K), dim=-1, eps=1e-6)
        v = v.reshape(B, T, H, K)
        # β in (0, 1]: sigmoid, kept off an exact 0 that the kernels reject
        beta = torch.sigmoid(_wide(self.b_proj(x))).clamp_min(1e-6).to(q.dtype)
        d = None
        if self.d_mode == "learned":
            d = (self.d_max * torch.sigmoid(_wide(self.d_proj(x)))).clamp_min(1e-6).to(q.dtype)
            d = d.reshape(B, T, H, K)
        return q, k, v.to(q.dtype), beta, d

    def _mix_reference(self, q, k, v, beta, d, cu_seqlens):
        from ..recurrences import osdn_recurrent

        T = k.shape[1]
        cu = [0, T] if cu_seqlens is None else [int(c) for c in cu_seqlens.tolist()]
        outs = []
        for a, b in zip(cu[:-1], cu[1:], strict=True):
            sl = slice(a, b)
            ds = d[:, sl] if d is not None else None
            if self.d_mode == "rule":
                ks, bs = (
                    (k[:, sl].detach(), beta[:, sl].detach()) if self.rule_detach else (k[:, sl], beta[:, sl])
                )
                ds = ratio_rule_d(ks, bs, self.rule_c, 1.0, self.rule_d_min)
            o, _ = osdn_recurrent(q[:, sl], k[:, sl], v[:, sl], beta[:, sl], ds, s_max=self.s_max, dtype=None)
            outs.append(o)
        return torch.cat(outs, 1)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """``x: [B, T, hidden_size]`` → ``[B, T, hidden_size]``. ``cu_seqlens``: optional cumulative lengths
        ``[N + 1]`` of sequences packed into ``B = 1``; state, rule and convolution restart at each."""
        if x.ndim != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x: expected shape [B, T, {self.hidden_size}], got {tuple(x.shape)}")
        if cu_seqlens is not None and x.shape[0] != 1:
            raise ValueError(f"cu_seqlens: expected B = 1 (packed sequences), got B = {x.shape[0]}")
        B, T, _ = x.shape
        q, k, v, beta, d = self.features(x, cu_seqlens)
        if self.mode == "chunk":
            from ..kernels import chunk_osdn

            rule = self._rule() if self.d_mode == "rule" else None
            o, _ = chunk_osdn(
                q,
                k,
                v,
                beta,
                d,
                d_rule=rule,
                chunk_size=self.chunk_size,
                cu_seqlens=cu_seqlens,
                s_max=self.s_max,
            )
        else:
            o = self._mix_reference(q, k, v, beta, d, cu_seqlens)
        o = self.o_norm(o)
        if self.use_gate:
            o = o * F.silu(self.g_proj(x)).reshape(o.shape)
        return self.o_proj(o.reshape(B, T, -1).to(x.dtype))
