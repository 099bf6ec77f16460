"""Float64 reference solvers: recurrence vs chunk form, DeltaNet equivalence, state carry, C2 form."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from osdn_theory import delta_rule_recurrent, osdn_chunkwise, osdn_recurrent, rel_err, write_key
from osdn_theory.chunkwise import chunk_factors
from osdn_theory.tolerances import EXACT_FLOAT64, NEGATIVE_CONTROL_GAP, rtol

from ._inputs import random_inputs


@given(
    B=st.integers(1, 2),
    T=st.integers(1, 40),
    H=st.integers(1, 3),
    K=st.integers(1, 9),
    V=st.integers(1, 7),
    chunk=st.sampled_from([1, 2, 3, 8, 16, 64]),
    gated=st.booleans(),
    init=st.booleans(),
    s_max=st.sampled_from([None, 0.5, 1.5]),
    seed=st.integers(0, 2**31 - 1),
)
def test_chunk_form_equals_recurrence(B, T, H, K, V, chunk, gated, init, s_max, seed):
    x = random_inputs(B, T, H, K, V, seed=seed, gated=gated, init=init)
    o1, s1 = osdn_recurrent(**x, s_max=s_max, output_final_state=True)
    o2, s2 = osdn_chunkwise(**x, s_max=s_max, output_final_state=True, chunk_size=chunk)
    assert rel_err(o2, o1) <= EXACT_FLOAT64
    assert rel_err(s2, s1) <= EXACT_FLOAT64


@pytest.mark.parametrize("gated", [False, True], ids=["ungated", "gated"])
def test_unit_d_is_deltanet(gated):
    x = random_inputs(2, 29, 3, 6, 5, seed=1, gated=gated, with_d=False, init=True)
    o1, s1, d1 = osdn_recurrent(
        **x, d=torch.ones(6, dtype=torch.float64), output_final_state=True, diagnostics=True
    )
    o2, s2, d2 = delta_rule_recurrent(**x, output_final_state=True, diagnostics=True)
    assert rel_err(o1, o2) <= EXACT_FLOAT64 and rel_err(s1, s2) <= EXACT_FLOAT64
    assert rel_err(d1.residual_post, d2.residual_post) <= EXACT_FLOAT64
    # negative control: a non-trivial d is not DeltaNet
    o3, _ = osdn_recurrent(**x, d=torch.full((6,), 1.3, dtype=torch.float64))
    assert rel_err(o3, o2) > NEGATIVE_CONTROL_GAP


def test_state_carry_splits_sequence():
    x = random_inputs(1, 30, 2, 4, 3, seed=2, gated=True)
    o, s = osdn_recurrent(**x, output_final_state=True)
    first = {n: t[:, :11] for n, t in x.items()}
    second = {n: t[:, 11:] for n, t in x.items()}
    oa, sa = osdn_recurrent(**first, output_final_state=True)
    ob, sb = osdn_chunkwise(**second, initial_state=sa, output_final_state=True, chunk_size=4)
    assert rel_err(torch.cat([oa, ob], 1), o) <= EXACT_FLOAT64
    assert rel_err(sb, s) <= EXACT_FLOAT64


def test_right_preconditioned_gradient_step_c2():
    """S_t = S_{t−1} − β ∇ℓ_t(S_{t−1}) D_t written out in the math layout equals the recurrence (C2)."""
    x = random_inputs(1, 17, 1, 5, 4, seed=3, init=True)
    _, s_ref = osdn_recurrent(**x, output_final_state=True)
    S = x["initial_state"][0, 0].T.clone()  # V×K
    for t in range(17):
        k, v, b, d = x["k"][0, t, 0], x["v"][0, t, 0], x["beta"][0, t, 0], x["d"][0, t, 0]
        grad = torch.outer(S @ k - v, k)  # ∇ℓ_t(S) = e kᵀ
        S = S - b * grad @ torch.diag(d)
    assert rel_err(S.T, s_ref[0, 0]) <= EXACT_FLOAT64


def test_diagnostics_residual_identity_and_clip():
    x = random_inputs(2, 25, 2, 6, 3, seed=4, gated=True)
    x["d"] = x["d"] * 3.0  # large gains so the clip engages
    _, _, diag = osdn_recurrent(**x, s_max=1.2, diagnostics=True)
    s = diag.write_gain
    assert float(s.max()) <= 1.2 * (1 + EXACT_FLOAT64)
    assert bool(diag.clipped.any()) and not bool(diag.clipped.all())
    expected = (1 - s)[..., None] * diag.residual_pre
    assert rel_err(diag.residual_post, expected) <= EXACT_FLOAT64
    # the clip written out from its definition: s_raw = β Σ_i d_i k_i², c = min(1, s_max / s_raw)
    s_raw = x["beta"] * (x["d"] * x["k"] ** 2).sum(-1)
    c_ref = torch.clamp(1.2 / s_raw, max=1.0)
    assert rel_err(diag.clip_factor, c_ref) <= EXACT_FLOAT64
    assert rel_err(s, torch.clamp(s_raw, max=1.2)) <= EXACT_FLOAT64
    kt, s2, c = write_key(x["k"], x["beta"], x["d"], 1.2)
    assert rel_err(kt, c_ref[..., None] * x["d"] * x["k"]) <= EXACT_FLOAT64
    assert rel_err(s2, s) <= EXACT_FLOAT64 and rel_err(c, c_ref) <= EXACT_FLOAT64


def test_reference_precision_and_numpy_inputs():
    x = random_inputs(1, 9, 1, 3, 2, seed=5, dtype=torch.float32)
    o32, _ = osdn_recurrent(**x, dtype=None)
    assert o32.dtype == torch.float32
    o64, _ = osdn_recurrent(**x)
    assert o64.dtype == torch.float64
    assert rel_err(o32, o64) <= rtol(torch.float32)
    o_np, _ = osdn_recurrent(**{n: t.double().numpy() for n, t in x.items()})
    assert isinstance(o_np, torch.Tensor) and o_np.dtype == torch.float64
    assert rel_err(o_np, o64) <= EXACT_FLOAT64


def test_padding_is_exact_for_every_tail():
    """T = C·n + r for every remainder r: the β = 0 padding of the tail chunk changes nothing."""
    for T in range(13, 21):
        x = random_inputs(1, T, 1, 4, 3, seed=T, gated=True, init=True)
        o1, s1 = osdn_recurrent(**x, output_final_state=True)
        o2, s2 = osdn_chunkwise(**x, output_final_state=True, chunk_size=8)
        assert rel_err(o2, o1) <= EXACT_FLOAT64 and rel_err(s2, s1) <= EXACT_FLOAT64


def test_chunk_factors_solve_the_triangular_system():
    """A T = B with A_{r,i} = δ_{ri} + β_r Π_{i<j≤r} α_j k_rᵀ k̃_i (i < r), built entry by entry; W = T diag(e^g) K."""
    g = torch.Generator().manual_seed(6)
    C, K = 6, 4
    k, kt = torch.randn(2, C, K, generator=g, dtype=torch.float64)
    beta = 0.1 + 0.9 * torch.rand(C, generator=g, dtype=torch.float64)
    alpha = 0.5 + 0.5 * torch.rand(C, generator=g, dtype=torch.float64)
    cum = torch.log(alpha).cumsum(0)
    T, W = chunk_factors(k, kt, beta, cum)
    A = torch.eye(C, dtype=torch.float64)
    for r in range(C):
        for i in range(r):
            A[r, i] = beta[r] * torch.prod(alpha[i + 1 : r + 1]) * (k[r] @ kt[i])
    assert rel_err(A @ T, torch.diag(beta)) <= EXACT_FLOAT64
    assert rel_err(W, T @ (torch.exp(cum)[:, None] * k)) <= EXACT_FLOAT64
    # ungated: the same with α ≡ 1; the gated factors differ from it (negative control)
    T1, _ = chunk_factors(k, kt, beta)
    A1 = torch.eye(C, dtype=torch.float64) + beta[:, None] * (k @ kt.T).tril(-1)
    assert rel_err(A1 @ T1, torch.diag(beta)) <= EXACT_FLOAT64
    assert rel_err(T1, T) > NEGATIVE_CONTROL_GAP
