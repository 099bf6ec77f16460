"""The state-free ``ratio`` rule for the preconditioner ``d`` (spec §5, claim C5), run as a delta rule.

With ``u_t = k_t ⊙ k_t`` and the normalized step ``η_t = c / (2 β_t² ‖u_t‖²)`` the rule is

    d_{t+1} = d_t + c · (1/β_t − u_tᵀ d_t) · u_t / ‖u_t‖²,      d_1 = d_init,

i.e. a delta rule on a one-column memory with key ``û_t = u_t / ‖u_t‖``, strength ``c`` and value
``1 / (β_t ‖u_t‖)`` (tokens with ``u_t = 0`` leave ``d`` unchanged). Token ``t`` is written with ``d_t``
(the value *before* its own update).

The scan runs in four launches (kernels in :mod:`.d_scan`), six when it runs segment-parallel (below):

1. ``_d_prep_kernel``: one pass over ``k`` and ``β`` forms ``û``, the strength and the value (in column 0 of
   a 16-wide value, since ``tl.dot`` needs at least 16 columns).
2. :func:`.gram_solve.gram_solve`: ``A⁻¹`` of every chunk (chunks are independent).
3. :func:`.wy_factors.wy_factors`: ``W = T Û`` and ``Ũ = T v`` with ``T = A⁻¹ diag(c)`` (only column 0 of ``Ũ``
   is used).
4. ``_d_scan_kernel``: one program per (sequence, head) carries the ``K``-vector state ``h`` (fp32; fp64 for
   fp64 input) in registers through the chunks of its sequence. Per chunk of ``C`` rows::

       U = Ũ₀ − W h                          (one scalar per row)
       d_r = h + Σ_{i<r} U_i û_i              (exclusive cumulative sum over the rows)
       h ← h + Σ_i U_i û_i

   and stores ``max(d_r, d_min)``. The state of a one-column memory is only ``K`` numbers, so the
   inter-chunk recurrence needs no ``[K, V]`` tile and no dot; the state pass and the read-out that it
   replaces ran as two launches and wrote every chunk's state to memory.

   With ``Launch(rule_readout="separate")`` (opt-in, not yet timed on a GPU) the scan is split in two: the
   sequential ``_d_scan_kernel`` (with ``SEPARATE``) computes ``U`` and carries ``h`` but stores only each
   chunk's entering state and ``U``, and ``_d_readout_kernel`` (one program per chunk and head, in parallel) forms ``d_r`` from them.
   The exclusive cumulative sum over the rows and the ``C × K`` store leave the sequential path, which is
   what limits the rule at long sequences with few heads (16 programs at ``(2, 16384, 8, 128)``). Same
   arithmetic: ``d`` and its gradients are bit-identical to the fused scan's under the interpreter.

**Segment-parallel scan** (``segment_chunks``; default ``None``, the sequential scan: the segment-parallel
kernels are verified under the Triton interpreter; timed on an H200 on 2026-12-05 they gave no gain: 1–3 %
faster at T = 16384 and 65536 with B·H = 16, 2.5× slower at B·H = 64 (``docs/kernels.md``), because
composing the ``K × K`` maps costs as much as the scan they shorten, so they stay opt-in). With one program
per sequence and head,
a long sequence with few heads leaves most of the GPU idle (16 programs at ``B·H = 16``). The chunk map
``h ← (I − Ûᵀ W) h + Ûᵀ Ũ₀`` is affine, so the sequence is cut into segments of ``G`` chunks and

a. ``_d_seg_map_kernel`` (column blocks × segments × heads, in parallel) composes each segment's map
   ``h_end = M h_start + r`` (``M = Π (I − Ûₙᵀ Wₙ)``, ``[K, K]``; ``r`` from ``h_start = 0``) with two
   ``C × K × 64`` dots per chunk;
b. ``_d_seg_carry_kernel`` (one program per sequence and head) carries ``h`` across the segments
   (``h ← M h + r``: one ``K × K`` matrix-vector product per segment) and stores each segment's entering state;
c. ``_d_scan_kernel`` restarts in every segment from its entering state (segments × heads programs) and
   writes ``d`` exactly as above.

``"auto"`` takes ``G = max(4, ⌈NC·H / 256⌉)`` (about 256 programs in c., a function of the shape only) and
no segments where no sequence is longer than ``G`` chunks. Segment maps are formed in the accumulator dtype
with tf32 products for 16-bit keys (IEEE for float32, fp64 for float64), so only round-off changes; the
backward does the same for its reverse scan (``_d_bwd_seg_map_kernel``, the carry in reverse, the reverse
chunk scan restarted per segment).

The chunk size of the scan (:attr:`DRule.chunk_size`) may differ from that of :func:`chunk_osdn`.
Measured on an H200 (B=4, T=4096, H=16, K=128, bf16; whole :func:`d_ratio_scan`, ms, C = 16/32/64):
0.486/0.436/0.486 (``benchmarks/results/tune_h200_2026-11-27_run8b.json``). Timed separately while the
design was chosen (not kept in a results file): the former state pass + read-out 0.51/0.42/0.42 once the
host synchronisation caused by a host-to-device copy of ``d_init`` was removed from both (0.66/0.53/0.50
with it); fp32 1.01/0.98/4.4 against 1.56/1.45/7.8; the scan kernel alone 0.29/0.23/0.23 ms, the rest is
stages 1–3, of which :func:`.gram_solve.gram_solve` is the largest.
Positivity: ``d`` is floored at read-out only, ``max(d_t, d_min)``; the carried state is not floored, which
keeps the scan affine (spec §5).

Gradients: by default ``d`` is differentiable with respect to ``k``, ``β`` and a ``d_init`` tensor. The
forward then also stores the unfloored ``d`` and each token's update coefficient, and the backward is one
three more launches: the adjoint recurrence of the scan in chunk form, with the forward's ``A⁻¹`` — each
chunk's affine map of the adjoint in parallel (``_d_bwd_local_kernel``), a reverse scan that carries only
the ``K``-vector adjoint across chunks (``_d_bwd_scan_kernel``), and the token gradients in parallel
(``_d_bwd_grads_kernel``); exact, no autograd through a loop. ``detach=True`` (:class:`DRule`, :func:`d_ratio_scan`)
makes ``d`` a constant of the keys, like an optimizer's preconditioner state.

"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validate import as_tensor, check_choice, check_scalar
from . import _checks
from ._checks import check_chunk_size, check_cu_seqlens, check_keys, check_like, check_validate
from ._common import wide_dtype
from .config import Launch, check_launch
from .d_scan import scan_forward
from .d_scan_bwd import d_scan_backward
from .tables import chunk_tables, segment_tables

__all__ = ["DRule", "d_ratio_scan"]


def _check_d_init(d_init):
    """``d_init``: a positive finite number or a floating tensor with positive finite entries."""
    if isinstance(d_init, torch.Tensor):
        t = as_tensor("d_init", d_init)
        if t.numel() == 0:
            raise ValueError(f"d_init: expected a non-empty tensor, got shape {tuple(t.shape)}")
        if not bool((torch.isfinite(t) & (t > 0)).all()):
            raise ValueError(
                f"d_init: expected positive finite entries, got min {float(t.min()):.6g}, max {float(t.max()):.6g}"
            )
        return t
    return check_scalar("d_init", d_init, 0.0, None, lo_open=True)


#: Programs the segment-parallel scan aims for under ``segment_chunks="auto"`` (about two per multiprocessor
#: of an H100/H200), and the fewest chunks a segment gets.
_AUTO_PROGRAMS = 256
_AUTO_MIN_CHUNKS = 4


def check_segment_chunks(segment_chunks):
    """``segment_chunks``: ``"auto"``, ``None`` or a positive int."""
    if segment_chunks is None or segment_chunks == "auto":
        return segment_chunks
    if isinstance(segment_chunks, bool) or not isinstance(segment_chunks, int) or segment_chunks < 1:
        raise ValueError(f"segment_chunks: expected 'auto', None or a positive int, got {segment_chunks!r}")
    return segment_chunks


def _segments(segment_chunks, cu_seqlens, B, T, C, H, NC, device):
    """The segment tables of the scan, or ``None`` for one sequential scan per sequence and head (``None``, or
    no sequence longer than one segment). ``"auto"``: segments of ``max(4, ⌈NC·H / 256⌉)`` chunks, so that
    about 256 sequence·head·segment programs run (depends on the shape only, never on the device)."""
    if segment_chunks is None:
        return None
    G = segment_chunks
    if G == "auto":
        G = max(_AUTO_MIN_CHUNKS, -(-NC * H // _AUTO_PROGRAMS))
    cu = None if cu_seqlens is None else cu_seqlens.tolist()  # one host read (the packed path reads anyway)
    longest = T if cu is None else max(b - a for a, b in zip(cu[:-1], cu[1:], strict=True))
    if -(-longest // C) <= G:
        return None
    return segment_tables(cu, B, T, C, G, device)


class _RatioScan(torch.autograd.Function):
    """``d`` of the rule with exact gradients to ``k``, ``β`` and ``d_init`` (see ``_d_bwd_*_kernel``)."""

    @staticmethod
    def forward(ctx, k, beta, h0, c, d_min, C, tables, flag, launch, segs):
        d, saved = scan_forward(k, beta, h0, c, d_min, C, tables, flag, keep=True, launch=launch, segs=segs)
        ai, h_raw, ucoef, c_t, d_min_t = saved
        ctx.save_for_backward(k, beta, ai, h_raw, ucoef, c_t, d_min_t)
        ctx.meta = (C, tables, h0.shape, launch, segs)
        return d

    @staticmethod
    def backward(ctx, gd):
        """See :func:`.d_scan_bwd.d_scan_backward`."""
        _checks.poll()
        C, tables, h0_shape, launch, segs = ctx.meta
        gk, gb, gh0 = d_scan_backward(
            gd.contiguous(), ctx.saved_tensors, C, tables, h0_shape, ctx.needs_input_grad[2], launch=launch,
            segs=segs,
        )  # fmt: skip
        return gk, gb, gh0, None, None, None, None, None, None, None


def d_ratio_scan(
    k,
    beta,
    *,
    c: float,
    d_init,
    d_min: float,
    cu_seqlens=None,
    chunk_size: int = 64,
    validate=True,
    detach: bool = False,
    segment_chunks=None,
    launch: Launch | None = None,
):
    """``d`` of shape ``[B, T, H, K]`` (dtype of ``k``) from the ratio rule; see the module docstring.

    Args:
        k: keys of shape ``[B, T, H, K]`` (contiguous; CUDA, or CPU under the Triton interpreter).
        beta: write strengths of shape ``[B, T, H]`` in (0, 1], dtype and device of ``k``.
        c: normalized step in (0, 2).
        d_init: ``d_1``: a positive number, or a tensor broadcastable to ``[N, H, K]`` (``N`` sequences:
            ``B``, or the number of packed sequences), e.g. ``[K]`` or ``[H, K]``.
        d_min: read-out floor ``> 0``.
        cu_seqlens: optional ``[N + 1]`` packed-sequence offsets (integer tensor, ``B = 1``). Default ``None``.
        chunk_size: chunk size of the scan, one of 16, 32, 64 (default 64).
        validate: check ``β ∈ (0, 1]`` and finite keys, as :func:`chunk_osdn` does (``True``: in the first
            kernel, reported without a host synchronisation; ``"sync"``: at the call; ``False``: not checked).
        detach: ``False`` (default): ``d`` is differentiable with respect to ``k``, ``β`` and a ``d_init``
            tensor when they require gradients (exact gradients through the rule and its read-out floor, by a
            reverse scan); ``True``: ``d`` is detached (a constant of the keys).
        segment_chunks: ``None`` (default), ``"auto"`` or a positive int. ``None``: the scan carries its
            ``K``-vector state through the chunks one after another, one program per sequence and head; with segments of
            ``segment_chunks`` chunks it runs segment-parallel instead (each segment's affine map in parallel,
            the state carried across segments, the scan restarted in every segment). ``"auto"`` picks
            segments so that about 256 programs run, and none where that would not split a sequence. Only
            speed and round-off change (the segment maps' products are tf32 for 16-bit keys).
        launch: optional :class:`osdn_theory.kernels.config.Launch` (the kernels' launch configurations for this
            call); default ``None``: each kernel's own rule.
    """
    validate = check_validate(validate)
    launch = check_launch(launch)
    if not isinstance(detach, bool):
        raise ValueError(f"detach: expected a bool, got {type(detach).__name__} {detach!r}")
    _checks.poll()
    k = check_keys(k)
    B, T, H, K = k.shape
    beta = check_like("beta", beta, k, [B, T, H], "[B, T, H]", contiguous=False)
    c = check_scalar("c", c, 0.0, 2.0, lo_open=True, hi_open=True)
    d_min = check_scalar("d_min", d_min, 0.0, None, lo_open=True)
    d_init = _check_d_init(d_init)
    chunk_size = check_chunk_size(chunk_size)
    segment_chunks = check_segment_chunks(segment_chunks)
    if segment_chunks is not None and launch.rule_readout != "fused":
        raise ValueError(
            f"launch: rule_readout={launch.rule_readout!r} does not combine with the segment-parallel scan "
            f"(segment_chunks={segment_chunks!r}); use one or the other"
        )
    cu_seqlens, N = check_cu_seqlens(cu_seqlens, B, T, k.device)
    if isinstance(d_init, torch.Tensor):
        try:
            torch.broadcast_shapes(tuple(d_init.shape), (N, H, K))
            ok = d_init.ndim <= 3
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"d_init: expected a shape broadcastable to [N, H, K] = {[N, H, K]}, got {tuple(d_init.shape)}"
            )
    f = wide_dtype(k.dtype)
    if isinstance(d_init, torch.Tensor):
        h0 = torch.broadcast_to(d_init.to(dtype=f, device=k.device), (N, H, K)).contiguous()
    else:  # a fill on the device: a host-to-device copy of the number would wait for the queued work
        h0 = torch.full((N, H, K), d_init, dtype=f, device=k.device)
    tables = chunk_tables(cu_seqlens, B, T, chunk_size, k.device)
    segs = _segments(segment_chunks, cu_seqlens, B, T, chunk_size, H, tables[3], k.device)
    flag = _checks.new_flag(validate, k.device)
    kf = k.reshape(B * T, H, K)
    bf = beta.reshape(B * T, H).contiguous()
    grad = (
        not detach and torch.is_grad_enabled() and (k.requires_grad or beta.requires_grad or h0.requires_grad)
    )
    if grad:
        d = _RatioScan.apply(kf, bf, h0, c, d_min, chunk_size, tables, flag, launch, segs)
    else:
        d, _ = scan_forward(
            kf.detach(), bf.detach(), h0.detach(), c, d_min, chunk_size, tables, flag, False, launch=launch,
            segs=segs,
        )  # fmt: skip
    _checks.report(flag, "d_ratio_scan", dict(k=k, beta=beta), sync=validate == "sync")
    return d.reshape(B, T, H, K)


@dataclass(frozen=True)
class DRule:
    """Compute ``d`` inside :func:`chunk_osdn` from the keys by the spec's state-free rule.

    Attributes:
        rule: only ``"ratio"`` (the default rule of spec §5) runs in the kernel path.
        c: normalized step in (0, 2): ``1 − s_new = (1 − c)(1 − s_old)`` on the current key. Default 0.5.
        d_init: ``d_1``; a positive scalar or a tensor of shape ``[K]``, ``[H, K]`` or ``[N, H, K]``.
            Default 1.0.
        d_min: read-out floor ``d_t ← max(d_t, d_min)`` keeping ``d > 0``; default 1e-4.
        chunk_size: chunk size of the d scan, one of 16, 32, 64, or ``None`` (the chunk size given to
            :func:`chunk_osdn` / :meth:`compute`). Default 32: the whole scan took 0.436 ms at 32 against 0.483 at
            64 and 0.486 at 16 on an H200 (bf16, B=4, T=4096, H=16, K=128). The scan's chunk size changes only
            its speed and round-off.
        detach: ``False`` (default): gradients flow through the rule into ``k``, ``β`` (and a ``d_init``
            tensor that requires them), so a model learns through it; ``True``: ``d`` is a constant of the keys,
            like an optimizer's preconditioner state.
        segment_chunks: ``None`` (default: the sequential scan), ``"auto"`` or a positive int: the scan's
            segment-parallel form (see :func:`d_ratio_scan`; measured on an H200: no faster than the
            sequential scan, see ``docs/kernels.md``); changes only speed and round-off.
    """

    rule: str = "ratio"
    c: float = 0.5
    d_init: float | torch.Tensor = 1.0
    d_min: float = 1e-4
    chunk_size: int | None = 32
    detach: bool = False
    segment_chunks: int | str | None = None

    def __post_init__(self):
        check_choice("rule", self.rule, ["ratio"])
        check_scalar("c", self.c, 0.0, 2.0, lo_open=True, hi_open=True)
        check_scalar("d_min", self.d_min, 0.0, None, lo_open=True)
        _check_d_init(self.d_init)
        if self.chunk_size is not None:
            object.__setattr__(self, "chunk_size", check_chunk_size(self.chunk_size))
        if not isinstance(self.detach, bool):
            raise ValueError(f"detach: expected a bool, got {type(self.detach).__name__} {self.detach!r}")
        check_segment_chunks(self.segment_chunks)

    def compute(
        self,
        k: torch.Tensor,
        beta: torch.Tensor,
        *,
        cu_seqlens=None,
        chunk_size: int = 64,
        validate=True,
        launch: Launch | None = None,
    ):
        """``d: [B, T, H, K]`` (dtype of ``k``; detached if :attr:`detach`) for keys ``k: [B, T, H, K]`` and
        ``beta: [B, T, H]``; the arguments are those of :func:`d_ratio_scan` (which checks them). The scan runs
        with chunk size :attr:`chunk_size` if set, else ``chunk_size``."""
        return d_ratio_scan(
            k,
            beta,
            c=self.c,
            d_init=self.d_init,
            d_min=self.d_min,
            cu_seqlens=cu_seqlens,
            chunk_size=self.chunk_size or chunk_size,
            validate=validate,
            detach=self.detach,
            segment_chunks=self.segment_chunks,
            launch=launch,
        )
