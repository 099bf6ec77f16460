"""The d rule's scan (``osdn_theory.kernels.drule``) against its twin, the spec's token loop and
``preconditioners.d_scan`` (CPU: Triton interpreter, float64, tiny shapes with odd lengths, K = 20, two
packed sequences with tail chunks, chunk sizes 16/32/64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from osdn_theory.kernels import DRule, chunk_osdn, d_ratio_scan, d_scan, drule, reference, stages
from osdn_theory.recurrences import osdn_recurrent
from osdn_theory.tolerances import KERNEL_INTERP_FLOAT64, NEG_CONTROL_SEPARATION, rel_err, rtol

pytestmark = pytest.mark.interpreter

F64 = torch.float64
CHUNKS = [16, 32, 64]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _keys(seed, B=1, T=37, H=2, K=20, dtype=F64):
    """Unit-norm keys ``[B, T, H, K]`` and β ∈ [0.6, 1] ``[B, T, H]``."""
    g = _gen(seed)
    k = F.normalize(torch.randn(B, T, H, K, generator=g, dtype=F64), dim=-1)
    beta = torch.rand(B, T, H, generator=g, dtype=F64) * 0.4 + 0.6
    return k.to(dtype), beta.to(dtype)


def _ratio_rule_loop(k, beta, c, d_init):
    """Spec §5 ratio rule, token by token (float64, no floor): ``d_{t+1} = d_t + c (1 − s_t) u_t / (β_t ‖u_t‖²)``
    with ``s_t = β_t u_tᵀ d_t``, ``u_t = k_t ⊙ k_t``; row ``t`` of the result is ``d_t`` (before its update)."""
    k, beta = k.to(F64), beta.to(F64)
    B, T, H, K = k.shape
    d = torch.broadcast_to(torch.as_tensor(d_init, dtype=F64), (B, H, K)).clone()
    out = torch.empty(B, T, H, K, dtype=F64)
    for t in range(T):
        out[:, t] = d
        u = k[:, t] ** 2
        s = beta[:, t] * (u * d).sum(-1)
        d = d + (c * (1 - s) / (beta[:, t] * (u * u).sum(-1)))[..., None] * u
    return out


def _lens(C):
    """Two sequences crossing a chunk boundary, with tail chunks (total length odd)."""
    return [C + 5, C + 16]


# ------------------------------------------------------------------------------------------ the scan kernel


def _scan_inputs(seed, C, H=2, K=20):
    lens = _lens(C)
    N = sum(lens)
    g = _gen(seed)
    cu = torch.tensor([0, lens[0], N], dtype=torch.int32)
    uhat = torch.rand(N, H, K, generator=g, dtype=F64)
    w = 0.3 * torch.randn(N, H, K, generator=g, dtype=F64)
    ut = torch.randn(N, H, d_scan._VPAD, generator=g, dtype=F64)
    h0 = torch.randn(2, H, K, generator=g, dtype=F64)  # negative entries: the floor binds
    return uhat, w, ut, h0, cu


def _run_scan_kernel(uhat, w, ut, h0, cu, C, d_min):
    N, H, K = uhat.shape
    d = torch.empty(N, H, K, dtype=F64)
    d_scan._d_scan_kernel[((cu.numel() - 1) * H,)](
        uhat, w, ut, h0, d, cu, torch.full((1,), d_min, dtype=F64), d, d, cu, d, H, K,
        C=C, BK=32, VP=ut.shape[-1], ACC=stages.acc_dtype(F64), num_warps=1,
    )  # fmt: skip
    return d


def _scan_ref_no_carry(uhat, w, ut, h0, cu_seqlens, C, d_min):
    """A wrong twin for the negative control: every chunk starts again from ``h0``."""
    d = torch.zeros_like(uhat)
    cu = cu_seqlens.tolist()
    for s in range(len(cu) - 1):
        for t0 in range(cu[s], cu[s + 1], C):
            t1 = min(t0 + C, cu[s + 1])
            U = ut[t0:t1, :, 0] - (w[t0:t1] * h0[s]).sum(-1)
            inc = U[..., None] * uhat[t0:t1]
            d[t0:t1] = h0[s] + torch.cumsum(inc, 0) - inc
    return d.clamp_min(d_min)


@pytest.mark.parametrize("C", CHUNKS)
def test_d_scan_kernel_matches_twin(C):
    """``_d_scan_kernel`` against ``reference.d_scan_ref`` (two sequences, tail chunks, K = 20 padded to 32),
    with negative controls: a twin without the floor and a twin that does not carry ``h`` across chunks
    both miss by orders of magnitude (the floor binds on some entries, every sequence has two chunks)."""
    d_min = 0.1
    uhat, w, ut, h0, cu = _scan_inputs(10 + C, C)
    d = _run_scan_kernel(uhat, w, ut, h0, cu, C, d_min)
    ref = reference.d_scan_ref(uhat, w, ut, h0, cu, C, d_min)
    assert rel_err(d, ref) <= KERNEL_INTERP_FLOAT64
    assert bool((ref == d_min).any()) and bool((ref > d_min).any())  # the floor binds, not everywhere
    unfloored = reference.d_scan_ref(uhat, w, ut, h0, cu, C, -float("inf"))
    assert rel_err(d, unfloored) >= NEG_CONTROL_SEPARATION * KERNEL_INTERP_FLOAT64
    no_carry = _scan_ref_no_carry(uhat, w, ut, h0, cu, C, d_min)
    assert rel_err(d, no_carry) >= NEG_CONTROL_SEPARATION * KERNEL_INTERP_FLOAT64


def test_d_scan_kernel_reads_d_min_from_memory():
    """A float64 floor that is not an fp32 number comes out exact (a float argument would be rounded)."""
    d_min = 0.1 + 1e-12
    assert float(torch.tensor(d_min, dtype=torch.float32)) != d_min
    uhat, w, ut, h0, cu = _scan_inputs(20, 16)
    d = _run_scan_kernel(uhat, w, ut, h0, cu, 16, d_min)
    floored = d[reference.d_scan_ref(uhat, w, ut, h0, cu, 16, -float("inf")) < d_min]
    assert floored.numel() > 0 and bool((floored == d_min).all())


# ------------------------------------------------------------------------------------------- d_ratio_scan


@pytest.mark.parametrize("C", CHUNKS)
def test_d_ratio_scan_matches_spec_loop(C):
    """The whole scan (prep, solve, WY, scan kernel) against the spec's token loop, floored at read-out only;
    the floor binds on some entries (``d_min`` above the smallest ``d_t``), so the floor-only-at-read-out
    semantics is checked too."""
    k, beta = _keys(30, B=2, T=2 * C + 9)
    d0 = torch.exp(0.2 * torch.randn(2, 20, generator=_gen(31), dtype=F64))
    ref = _ratio_rule_loop(k, beta, 0.3, d0)
    d_min = float(ref.quantile(0.02))
    got = d_ratio_scan(k, beta, c=0.3, d_init=d0, d_min=d_min, chunk_size=C)
    assert rel_err(got, ref.clamp_min(d_min)) <= KERNEL_INTERP_FLOAT64
    assert rel_err(got, ref) >= NEG_CONTROL_SEPARATION * KERNEL_INTERP_FLOAT64  # the floor is not a no-op


@pytest.mark.parametrize("C", CHUNKS)
def test_d_rule_chunk_size_against_preconditioners_d_scan(C):
    """``DRule(chunk_size=C).compute`` (given a different chunk size) against ``preconditioners.d_scan``
    without a floor (inactive here: every ``d_t`` stays above ``d_min``)."""
    from osdn_theory import preconditioners as pre

    k, beta = _keys(32, B=1, T=C + 13)
    ref = pre.d_scan(k, beta, rule="ratio", step=pre.NormalizedStep(0.3), d_init=1.0, positivity="none").d
    assert float(ref.min()) > 1e-9
    other = 64 if C != 64 else 16
    got = DRule(c=0.3, d_init=1.0, d_min=1e-9, chunk_size=C).compute(k, beta, chunk_size=other)
    assert rel_err(got, ref) <= KERNEL_INTERP_FLOAT64


@pytest.mark.parametrize("C", CHUNKS)
def test_d_ratio_scan_varlen_matches_separate_sequences(C):
    """Two packed sequences (``cu_seqlens``, a ``d_init`` per sequence) give what each gives alone, and what the
    token loop gives per sequence."""
    lens = _lens(C)
    k, beta = _keys(33, B=1, T=sum(lens))
    d0 = torch.exp(0.2 * torch.randn(2, 2, 20, generator=_gen(34), dtype=F64))  # [N, H, K]
    cu = torch.tensor([0, lens[0], sum(lens)], dtype=torch.int64)
    got = d_ratio_scan(k, beta, c=0.5, d_init=d0, d_min=1e-9, cu_seqlens=cu, chunk_size=C)
    for i in range(2):
        a, b = int(cu[i]), int(cu[i + 1])
        alone = d_ratio_scan(k[:, a:b], beta[:, a:b], c=0.5, d_init=d0[i], d_min=1e-9, chunk_size=C)
        assert rel_err(got[:, a:b], alone) <= KERNEL_INTERP_FLOAT64
        loop = _ratio_rule_loop(k[:, a:b], beta[:, a:b], 0.5, d0[i]).clamp_min(1e-9)
        assert rel_err(got[:, a:b], loop) <= KERNEL_INTERP_FLOAT64
    # negative control: one sequence of the packed length (h carried over the boundary) differs
    joined = d_ratio_scan(k, beta, c=0.5, d_init=d0[0], d_min=1e-9, chunk_size=C)
    assert rel_err(got, joined) >= NEG_CONTROL_SEPARATION * KERNEL_INTERP_FLOAT64


def test_d_ratio_scan_float32():
    """float32 keys (fp32 accumulation) against the float64 token loop within the float32 tolerance."""
    k, beta = _keys(35, B=1, T=45, dtype=torch.float32)
    ref = _ratio_rule_loop(k, beta, 0.5, 1.0).clamp_min(1e-4)
    got = d_ratio_scan(k, beta, c=0.5, d_init=1.0, d_min=1e-4, chunk_size=16)
    assert got.dtype == torch.float32
    assert rel_err(got, ref) <= rtol(torch.float32)


# ------------------------------------------------------------------------------------------ DRule.chunk_size


@pytest.mark.parametrize("bad", [8, 48, 128, "16", True])
def test_drule_chunk_size_errors(bad):
    with pytest.raises(ValueError, match=r"^chunk_size: expected .*got"):
        DRule(chunk_size=bad)


def test_drule_chunk_size_accepted():
    """Control for the test above: None and the three chunk sizes are accepted."""
    for cs in (None, 16, 32, 64):
        assert DRule(chunk_size=cs).chunk_size == cs


@pytest.mark.parametrize("rule_cs, call_cs, expected", [(16, 64, 16), (None, 32, 32), (64, 16, 64)])
def test_drule_compute_uses_its_chunk_size(monkeypatch, rule_cs, call_cs, expected):
    """``DRule.compute`` runs the scan with its own chunk size if set, else with the one it is given."""
    seen = []

    def spy(*args, **kw):
        seen.append(kw["chunk_size"])
        return d_ratio_scan(*args, **kw)

    monkeypatch.setattr(drule, "d_ratio_scan", spy)
    k, beta = _keys(36, T=9, K=4)
    DRule(chunk_size=rule_cs).compute(k, beta, chunk_size=call_cs)
    assert seen == [expected]


def test_chunk_osdn_with_d_rule_of_other_chunk_size():
    """``chunk_osdn(..., d_rule=DRule(chunk_size=16), chunk_size=64)`` against the float64 recurrence given the
    ``d`` of the spec's token loop."""
    g = _gen(37)
    B, T, H, K, V = 1, 77, 2, 20, 8
    k, beta = _keys(38, B=B, T=T, H=H, K=K)
    q = torch.randn(B, T, H, K, generator=g, dtype=F64)
    v = torch.randn(B, T, H, V, generator=g, dtype=F64)
    rule = DRule(c=0.5, d_init=1.0, d_min=1e-9, chunk_size=16)
    o, ht = chunk_osdn(q, k, v, beta, d_rule=rule, output_final_state=True, chunk_size=64)
    d = _ratio_rule_loop(k, beta, 0.5, 1.0).clamp_min(1e-9)
    o_ref, ht_ref = osdn_recurrent(q, k, v, beta, d, output_final_state=True)
    assert rel_err(o, o_ref) <= KERNEL_INTERP_FLOAT64 and rel_err(ht, ht_ref) <= KERNEL_INTERP_FLOAT64
    # negative control: DeltaNet (d ≡ 1) is far off
    o_dn, _ = osdn_recurrent(q, k, v, beta, torch.ones_like(d), output_final_state=True)
    assert rel_err(o_dn, o_ref) >= NEG_CONTROL_SEPARATION * KERNEL_INTERP_FLOAT64


# ---------------------------------------------------------------------------------------- gradients


def _rule_autograd64(k, beta, c, d_init, d_min):
    """float64 token loop of the rule (no in-place writes; differentiable), floored at read-out."""
    B, T, H, K = k.shape
    d = torch.broadcast_to(torch.as_tensor(d_init, dtype=F64), (B, H, K))
    rows = []
    for t in range(T):
        rows.append(d)
        u = k[:, t] ** 2
        s = beta[:, t] * (u * d).sum(-1)
        d = d + (c * (1 - s) / (beta[:, t] * (u * u).sum(-1)))[..., None] * u
    return torch.stack(rows, 1).clamp_min(d_min)


def _packed_rule_autograd64(lens, packed, c, d_min):
    """:func:`_rule_autograd64` over packed sequences of lengths ``lens`` (their own ``d_init`` rows when
    ``packed``), as a function of ``(k, β, d_init)``."""
    starts = torch.tensor([0, *lens]).cumsum(0).tolist()

    def ref_fn(a, b, c0):
        parts = [
            _rule_autograd64(a[:, s:e], b[:, s:e], c, c0[i] if packed else c0, d_min)
            for i, (s, e) in enumerate(zip(starts[:-1], starts[1:], strict=True))
        ]
        return torch.cat(parts, 1)

    return ref_fn


def _grads(fn, k, beta, d0, w):
    """``(d, dk, dβ, dd_init)`` of ``Σ w ⊙ fn(k, β, d0)``."""
    k, beta, d0 = (t.detach().clone().requires_grad_(True) for t in (k, beta, d0))
    d = fn(k, beta, d0)
    (d * w).sum().backward()
    return d.detach(), k.grad, beta.grad, d0.grad


@pytest.mark.parametrize("C", CHUNKS)
@pytest.mark.parametrize("d_min", [1e-4, 0.9])
def test_d_rule_gradients_match_float64_autograd(C, d_min):
    """Gradients of ``Σ w ⊙ d`` to ``k``, ``β`` and a ``d_init`` tensor ``[H, K]`` through the kernel's rule
    (forward scan and the three backward launches) against float64 autograd of the token loop; with
    ``d_min = 0.9`` the read-out floor binds on about a fifth of the entries (checked), so its mask is tested."""
    k, beta = _keys(31, B=2, T=45, H=2, K=20)
    d0 = torch.rand(2, 20, generator=_gen(32), dtype=F64) + 0.5
    w = torch.randn(k.shape, generator=_gen(33), dtype=F64)
    got = _grads(
        lambda a, b, c0: d_ratio_scan(a, b, c=0.7, d_init=c0, d_min=d_min, chunk_size=C), k, beta, d0, w
    )
    ref = _grads(lambda a, b, c0: _rule_autograd64(a, b, 0.7, c0, d_min), k, beta, d0, w)
    floored = float((ref[0] <= d_min).double().mean())
    assert (floored > 0.1) == (d_min == 0.9), floored
    for name, g, r in zip(["d", "k", "beta", "d_init"], got, ref, strict=True):
        assert rel_err(g, r) < rtol(F64), (name, rel_err(g, r))


def test_d_rule_gradients_varlen():
    """Two packed sequences (chunk boundaries inside each, tail chunks): the adjoint does not cross from one
    sequence into the other, and each sequence's ``d_init`` row gets its own gradient."""
    C = 16
    lens = _lens(C)
    k, beta = _keys(34, B=1, T=sum(lens), H=2, K=20)
    cu = torch.tensor([0, lens[0], sum(lens)], dtype=torch.int32)
    d0 = torch.rand(2, 2, 20, generator=_gen(35), dtype=F64) + 0.5
    w = torch.randn(k.shape, generator=_gen(36), dtype=F64)
    got = _grads(
        lambda a, b, c0: d_ratio_scan(a, b, c=0.5, d_init=c0, d_min=1e-4, cu_seqlens=cu, chunk_size=C),
        k, beta, d0, w,
    )  # fmt: skip

    def ref_fn(a, b, c0):
        parts = [
            _rule_autograd64(a[:, s:e], b[:, s:e], 0.5, c0[i], 1e-4)
            for i, (s, e) in enumerate([(0, lens[0]), (lens[0], sum(lens))])
        ]
        return torch.cat(parts, 1)

    ref = _grads(ref_fn, k, beta, d0, w)
    for name, g, r in zip(["d", "k", "beta", "d_init"], got, ref, strict=True):
        assert rel_err(g, r) < rtol(F64), (name, rel_err(g, r))


def test_d_rule_gradients_float32():
    """float32 keys: gradients within the float32 tolerance of float64 autograd from the same rounded inputs."""
    k, beta = _keys(37, B=1, T=70, H=2, K=20, dtype=torch.float32)
    w = torch.randn(k.shape, generator=_gen(38), dtype=F64)
    kr, br = k.clone().requires_grad_(True), beta.clone().requires_grad_(True)
    (DRule(c=0.5, d_min=1e-4, chunk_size=32).compute(kr, br).double() * w).sum().backward()
    ref = _grads(
        lambda a, b, c0: _rule_autograd64(a, b, 0.5, c0, 1e-4),
        k.double(),
        beta.double(),
        torch.tensor(1.0, dtype=F64),
        w,
    )
    assert rel_err(kr.grad, ref[1]) < rtol(torch.float32) and rel_err(br.grad, ref[2]) < rtol(torch.float32)


def test_d_rule_gradient_negative_control():
    """Without the floor's mask (the floor ignored in the reference) the gradient differs: the test above
    would see a wrong mask."""
    k, beta = _keys(39, B=1, T=40, H=2, K=20)
    w = torch.randn(k.shape, generator=_gen(40), dtype=F64)
    one = torch.tensor(1.0, dtype=F64)
    got = _grads(
        lambda a, b, c0: d_ratio_scan(a, b, c=0.7, d_init=1.0, d_min=0.9, chunk_size=16), k, beta, one, w
    )
    wrong = _grads(lambda a, b, c0: _rule_autograd64(a, b, 0.7, c0, -float("inf")), k, beta, one, w)
    assert rel_err(got[1], wrong[1]) > NEG_CONTROL_SEPARATION * KERNEL_INTERP_FLOAT64


def test_d_rule_detach_and_no_grad():
    """``DRule(detach=True)`` and ``d_ratio_scan(detach=True)`` give a constant ``d`` (same values); without
    inputs that require gradients no backward state is kept."""
    k, beta = _keys(41, T=20)
    kr = k.clone().requires_grad_(True)
    d_grad = DRule().compute(kr, beta)
    d_det = DRule(detach=True).compute(kr, beta)
    assert d_grad.requires_grad and not d_det.requires_grad
    assert not d_ratio_scan(kr, beta, c=0.5, d_init=1.0, d_min=1e-4, detach=True).requires_grad
    assert torch.equal(d_grad.detach(), d_det)
    with pytest.raises(ValueError, match=r"^detach: expected a bool"):
        DRule(detach=1)


def test_chunk_osdn_with_d_rule_gradients_through_the_rule():
    """``chunk_osdn`` with the rule: every gradient (the rule's path into ``k`` and ``β`` included) against
    float64 autograd through the token-loop rule and the OSDN recurrence; with ``detach=True`` the gradient
    of ``k`` differs (the rule's path is cut: negative control)."""
    from .test_kernels import make_inputs

    x = make_inputs(54, B=1, T=40, K=16, V=16)
    names = ["q", "k", "v", "beta"]
    do = torch.randn(1, 40, 2, 16, generator=_gen(42), dtype=F64)

    def run(rule):
        xs = {n: x[n].clone().requires_grad_(True) for n in names}
        o, _ = chunk_osdn(*(xs[n] for n in names), d_rule=rule, chunk_size=16, s_max=0.9)
        o.backward(do)
        return o.detach(), {n: xs[n].grad for n in names}

    o, g = run(DRule(c=0.5, d_min=1e-4))
    _, g_det = run(DRule(c=0.5, d_min=1e-4, detach=True))
    xr = {n: x[n].clone().requires_grad_(True) for n in names}
    d = _rule_autograd64(xr["k"], xr["beta"], 0.5, 1.0, 1e-4)
    o_ref, _ = osdn_recurrent(*(xr[n] for n in names), d, s_max=0.9)
    o_ref.backward(do)
    assert rel_err(o, o_ref) < KERNEL_INTERP_FLOAT64
    for n in names:
        assert rel_err(g[n], xr[n].grad) < rtol(F64), (n, rel_err(g[n], xr[n].grad))
    assert rel_err(g_det["k"], xr["k"].grad) > NEG_CONTROL_SEPARATION * KERNEL_INTERP_FLOAT64


# ------------------------------------------------------------------------------- segment-parallel scan


@pytest.mark.parametrize("G", [1, 2, 3])
@pytest.mark.parametrize("packed", [False, True])
def test_segment_parallel_scan_values_and_gradients(G, packed):
    """The segment-parallel scan (segments of ``G`` chunks; packed: three sequences of different lengths, each
    with its own ``d_init`` row) against float64 autograd of the token loop: ``d`` and the gradients to ``k``,
    ``β`` and ``d_init`` (forward and adjoint segment maps, carries and restarted scans)."""
    C = 16
    lens = [C * 5 + 3, 2 * C + 1, C * 4] if packed else [C * 7 + 5]
    k, beta = _keys(40 + G, B=1, T=sum(lens), H=2, K=20)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()]) if packed else None
    d0 = torch.rand(len(lens), 2, 20, generator=_gen(41), dtype=F64) + 0.5
    if not packed:
        d0 = d0[0]
    w = torch.randn(k.shape, generator=_gen(42), dtype=F64)
    got = _grads(
        lambda a, b, c0: d_ratio_scan(
            a, b, c=0.7, d_init=c0, d_min=0.9, cu_seqlens=cu, chunk_size=C, segment_chunks=G
        ),
        k, beta, d0, w,
    )  # fmt: skip
    ref = _grads(_packed_rule_autograd64(lens, packed, 0.7, 0.9), k, beta, d0, w)
    for name, g, r in zip(["d", "k", "beta", "d_init"], got, ref, strict=True):
        assert rel_err(g, r) < rtol(F64), (name, G, rel_err(g, r))


def test_segment_parallel_scan_float32():
    """float32 keys, segments of two chunks (IEEE fp32 segment maps): ``d`` and the key gradient within the
    float32 tolerance of the float64 loop from the same rounded inputs."""
    k, beta = _keys(43, B=1, T=16 * 6 + 7, H=2, K=20, dtype=torch.float32)
    w = torch.randn(k.shape, generator=_gen(44), dtype=F64)
    kr = k.clone().requires_grad_(True)
    d = d_ratio_scan(kr, beta, c=0.5, d_init=1.0, d_min=1e-4, chunk_size=16, segment_chunks=2)
    (d.double() * w).sum().backward()
    k64 = k.double().requires_grad_(True)
    ref = _rule_autograd64(k64, beta.double(), 0.5, 1.0, 1e-4)
    (ref * w).sum().backward()
    assert rel_err(d, ref) <= rtol(torch.float32)
    assert rel_err(kr.grad, k64.grad) <= rtol(torch.float32)


@pytest.mark.parametrize("part", ["forward", "adjoint"])
def test_segment_parallel_scan_needs_the_carry(monkeypatch, part):
    """Negative control: with the state carried across segments replaced by zeros (forward: every segment
    restarts from ``h = 0``; adjoint: from ``λ = 0``), ``d`` or the key gradient is wrong."""
    from osdn_theory.kernels import d_scan, d_scan_bwd

    k, beta = _keys(45, B=1, T=16 * 6 + 7, H=2, K=20)
    w = torch.randn(k.shape, generator=_gen(46), dtype=F64)

    def run():
        kr = k.clone().requires_grad_(True)
        d = d_ratio_scan(kr, beta, c=0.5, d_init=1.0, d_min=1e-4, chunk_size=16, segment_chunks=2)
        (d * w).sum().backward()
        return d.detach(), kr.grad

    good = run()
    mod = d_scan if part == "forward" else d_scan_bwd
    monkeypatch.setattr(mod, "seg_carry", lambda m, r, h0, *a, **kw: torch.zeros_like(r))
    bad = run()
    i = 0 if part == "forward" else 1
    assert rel_err(bad[i], good[i]) >= NEG_CONTROL_SEPARATION * KERNEL_INTERP_FLOAT64


@pytest.mark.parametrize("bad", [0, -2, 1.5, "4", True, "Auto"])
def test_segment_chunks_errors(bad):
    with pytest.raises(ValueError, match=r"^segment_chunks: expected 'auto', None or a positive int, got"):
        DRule(segment_chunks=bad)
    k, beta = _keys(47, T=8)
    with pytest.raises(ValueError, match=r"^segment_chunks: expected"):
        d_ratio_scan(k, beta, c=0.5, d_init=1.0, d_min=1e-4, segment_chunks=bad)


def test_segment_chunks_auto_rule():
    """``"auto"``: about 256 programs, at least 4 chunks a segment, no segments when no sequence is longer
    than one; the uniform and the packed tables of the same batch agree."""
    from osdn_theory.kernels.tables import segment_tables

    seg = drule._segments
    # (2, 16384, 8) at C = 32: 1024 chunks x 8 heads / 256 = 32 chunks a segment, 16 segments a sequence
    tabs = seg("auto", None, 2, 16384, 32, 8, 1024, "cpu")
    assert tabs[3] == 2 * 16 and tabs[0][:3].tolist() == [0, 1024, 2048]
    assert seg("auto", None, 4, 4096, 32, 16, 512, "cpu")[3] == 4 * 4  # 32 chunks a segment
    assert seg("auto", None, 2, 100, 32, 2, 8, "cpu") is None  # 4 chunks: one segment
    assert seg(None, None, 2, 16384, 32, 8, 1024, "cpu") is None
    assert seg(3, None, 1, 9 * 32, 32, 1, 9, "cpu")[3] == 3
    uni = segment_tables(None, 3, 100, 16, 2, "cpu")
    packed = segment_tables([0, 100, 200, 300], 3, 100, 16, 2, "cpu")
    for a, b in zip(uni[:3], packed[:3], strict=True):
        assert a.tolist() == b.tolist()
    assert uni[3] == packed[3] == 3 * 4


# ------------------------------------------------------------------------------- separate read-out


@pytest.mark.parametrize("C", [16, 32])
@pytest.mark.parametrize("packed", [False, True])
def test_separate_readout_equals_the_fused_scan(C, packed):
    """``Launch(rule_readout="separate")`` (the sequential scan stores each chunk's entering state and ``U``; a
    parallel read-out writes ``d``) does the fused scan's arithmetic: ``d`` and the gradients to ``k``, ``β`` and
    ``d_init`` are bit-identical (float64, interpreter; packed: three sequences with tail chunks and their own
    ``d_init`` rows), and both agree with float64 autograd of the token loop."""
    from osdn_theory.kernels.config import Launch

    lens = [C * 3 + 3, C + 1, C * 2] if packed else [C * 4 + 5]
    k, beta = _keys(60 + C, B=1, T=sum(lens), H=2, K=20)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()]) if packed else None
    d0 = torch.rand(len(lens), 2, 20, generator=_gen(61), dtype=F64) + 0.5
    if not packed:
        d0 = d0[0]
    w = torch.randn(k.shape, generator=_gen(62), dtype=F64)

    def run(readout):
        launch = Launch(rule_readout=readout)
        return _grads(
            lambda a, b, c0: d_ratio_scan(
                a, b, c=0.7, d_init=c0, d_min=0.9, cu_seqlens=cu, chunk_size=C, launch=launch
            ),
            k, beta, d0, w,
        )  # fmt: skip

    fused, separate = run("fused"), run("separate")
    for name, a, b in zip(["d", "k", "beta", "d_init"], fused, separate, strict=True):
        assert torch.equal(a, b), (name, rel_err(b, a))
    ref = _grads(_packed_rule_autograd64(lens, packed, 0.7, 0.9), k, beta, d0, w)
    for name, g, r in zip(["d", "k", "beta", "d_init"], separate, ref, strict=True):
        assert rel_err(g, r) < rtol(F64), (name, rel_err(g, r))
    # without gradients (the scan does not keep U for the backward, the read-out still needs it)
    plain = d_ratio_scan(
        k,
        beta,
        c=0.7,
        d_init=d0,
        d_min=0.9,
        cu_seqlens=cu,
        chunk_size=C,
        launch=Launch(rule_readout="separate"),
    )
    assert torch.equal(plain, fused[0])


def test_separate_readout_needs_each_chunks_own_state(monkeypatch):
    """Negative control: a read-out that starts every chunk from the sequence's first state (``h_chunks`` not
    indexed by chunk) gives a wrong ``d``."""
    from osdn_theory.kernels.config import Launch

    k, beta = _keys(63, B=1, T=16 * 4 + 5, H=2, K=20)
    good = d_ratio_scan(
        k, beta, c=0.5, d_init=1.0, d_min=1e-4, chunk_size=16, launch=Launch(rule_readout="separate")
    )
    real = d_scan._d_readout_kernel

    class FirstState:
        def __getitem__(self, grid):
            def launch(uhat, u_in, h_chunks, *a, **kw):
                return real[grid](uhat, u_in, h_chunks[:1].expand_as(h_chunks).contiguous(), *a, **kw)

            return launch

    monkeypatch.setattr(d_scan, "_d_readout_kernel", FirstState())
    bad = d_ratio_scan(
        k, beta, c=0.5, d_init=1.0, d_min=1e-4, chunk_size=16, launch=Launch(rule_readout="separate")
    )
    assert rel_err(bad, good) >= NEG_CONTROL_SEPARATION * KERNEL_INTERP_FLOAT64


def test_separate_readout_errors():
    from osdn_theory.kernels.config import Launch

    with pytest.raises(
        ValueError, match=r"^rule_readout: expected one of \('fused', 'separate'\), got 'split'"
    ):
        Launch(rule_readout="split")
    k, beta = _keys(64, T=40)
    with pytest.raises(
        ValueError, match=r"^launch: rule_readout='separate' does not combine with the segment"
    ):
        d_ratio_scan(
            k, beta, c=0.5, d_init=1.0, d_min=1e-4, chunk_size=16, segment_chunks=2,
            launch=Launch(rule_readout="separate"),
        )  # fmt: skip
