"""Right-Newton comparators (spec §6): each against its closed form, plus negative controls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from osdn_theory.comparators import (
    BestFixedDiagonal,
    RLSDiagnostics,
    batch_objective,
    batch_right_newton,
    batch_right_newton_step,
    best_fixed_diagonal,
    expected_feedback,
    feedback_losses,
    fixed_point_d,
    jacobi_d,
    longhorn_write_key,
    ridge_solution,
    right_preconditioned_recurrent,
    rls,
    token_local_newton_d,
    windowed_ridge_solution,
    windowed_rls,
)
from osdn_theory.recurrences import osdn_recurrent
from osdn_theory.streams import TeacherStream
from osdn_theory.tolerances import NEGATIVE_CONTROL_GAP, rel_err, rtol
from osdn_theory.tolerances import STAT_Z as Z_SCORE

TOL = rtol(torch.float64)


def _inputs(B=2, T=17, H=3, K=5, V=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=g, dtype=torch.float64)
    k = torch.randn(B, T, H, K, generator=g, dtype=torch.float64) / math.sqrt(K)
    v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    beta = 0.1 + 0.9 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    return q, k, v, beta


def _gram(k, t, gamma, lam):
    """H_t = λγ^t I + Σ_{i≤t} γ^{t−i} k_i k_iᵀ, [B, H, K, K] (independent of the implementation)."""
    K = k.shape[-1]
    G = lam * gamma**t * torch.eye(K, dtype=torch.float64).expand(k.shape[0], k.shape[2], K, K).clone()
    for i in range(t):
        G = G + gamma ** (t - 1 - i) * torch.einsum("bhi,bhj->bhij", k[:, i], k[:, i])
    return G


# ---------------------------------------------------------------------------------------------- RLS (C8)


@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.6], ids=lambda g: f"gamma{g}")
@pytest.mark.parametrize("lam", [0.3, 2.0], ids=lambda x: f"lam{x}")
def test_rls_equals_ridge_at_every_t(gamma, lam):
    q, k, v, _ = _inputs()
    _, final, diag = rls(
        q, k, v, gamma=gamma, lam=lam, diagnostics=True, keep_states=True, output_final_state=True
    )
    T = k.shape[1]
    errs = [
        rel_err(diag.states[:, t - 1], ridge_solution(k, v, t, gamma=gamma, lam=lam)) for t in range(1, T + 1)
    ]
    assert max(errs) <= TOL, errs
    assert torch.equal(final, diag.states[:, -1])


def test_rls_with_initial_state_is_ridge_around_it():
    q, k, v, _ = _inputs(seed=1)
    S0 = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    _, _, diag = rls(q, k, v, gamma=0.8, lam=0.5, initial_state=S0, diagnostics=True, keep_states=True)
    for t in range(1, k.shape[1] + 1):
        assert (
            rel_err(diag.states[:, t - 1], ridge_solution(k, v, t, gamma=0.8, lam=0.5, initial_state=S0))
            <= TOL
        )
    assert rel_err(ridge_solution(k, v, 0, initial_state=S0), S0) == 0.0


def test_rls_negative_control_misspecified_forgetting():
    """The spec's erratum leverage (H_{t−1}⁻¹ instead of (γH_{t−1})⁻¹) must not reproduce the ridge minimiser
    when γ < 1, and must coincide with the exact recursion when γ = 1 (the assumption that matters is γ)."""
    q, k, v, _ = _inputs(seed=2)
    T = k.shape[1]
    _, _, bad = rls(q, k, v, gamma=0.8, lam=1.0, diagnostics=True, keep_states=True, variant="erratum")
    errs = [
        rel_err(bad.states[:, t - 1], ridge_solution(k, v, t, gamma=0.8, lam=1.0)) for t in range(2, T + 1)
    ]
    assert min(errs) > NEGATIVE_CONTROL_GAP, errs
    # it is the spec's formula: leverage k_tᵀ H_{t−1}⁻¹ k_t with the closed-form H_{t−1}
    for t in range(1, T + 1):
        kt = k[:, t - 1].unsqueeze(-1)
        a_spec = (kt * torch.linalg.solve(_gram(k, t - 1, 0.8, 1.0), kt)).sum((-1, -2))
        assert rel_err(bad.leverage[:, t - 1], a_spec) <= TOL
    _, f1 = rls(q, k, v, gamma=1.0, variant="erratum", output_final_state=True)
    _, f2 = rls(q, k, v, gamma=1.0, output_final_state=True)
    assert rel_err(f1, f2) <= TOL


def test_ridge_negative_control_forgetting_only_in_regulariser():
    """Dropping the γ^{t−i} data weights (forgetting applied to H's prior but not to the data term) gives
    a different minimiser than RLS(γ<1): the closed form is sensitive to the weighting it claims."""
    q, k, v, _ = _inputs(seed=3)
    T = k.shape[1]
    _, fin = rls(q, k, v, gamma=0.7, lam=1.0, output_final_state=True)
    K = k.shape[-1]
    G = torch.einsum("bthi,bthj->bhij", k, k) + 0.7**T * torch.eye(K, dtype=torch.float64)
    wrong = torch.linalg.solve(G, torch.einsum("bthi,bthv->bhiv", k, v))
    assert rel_err(wrong, fin) > NEGATIVE_CONTROL_GAP
    assert rel_err(ridge_solution(k, v, T, gamma=0.7, lam=1.0), fin) <= TOL


@pytest.mark.parametrize("gamma", [1.0, 0.75], ids=lambda g: f"gamma{g}")
def test_rls_leverage_sherman_morrison_identity(gamma):
    """s_t = a_t/(1 + a_t) with a_t = k_tᵀ(γH_{t−1})⁻¹k_t (closed-form H), and r⁺_t = (1 − s_t) e_t."""
    q, k, v, _ = _inputs(seed=4)
    _, _, diag = rls(q, k, v, gamma=gamma, lam=0.7, diagnostics=True)
    assert isinstance(diag, RLSDiagnostics)
    assert rel_err(diag.write_gain, diag.leverage / (1 + diag.leverage)) <= TOL
    for t in range(1, k.shape[1] + 1):
        Hprev = _gram(k, t - 1, gamma, 0.7)
        a = (k[:, t - 1] * torch.linalg.solve(gamma * Hprev, k[:, t - 1].unsqueeze(-1)).squeeze(-1)).sum(-1)
        assert rel_err(diag.leverage[:, t - 1], a) <= TOL
        Ht = _gram(k, t, gamma, 0.7)
        key = torch.linalg.solve(Ht, k[:, t - 1].unsqueeze(-1)).squeeze(-1)
        assert rel_err(diag.write_key_[:, t - 1], key) <= TOL
    r_expected = (1 - diag.write_gain)[..., None] * diag.residual_pre
    assert rel_err(diag.residual_post, r_expected) <= TOL


def test_rls_is_right_preconditioned_with_inverse_hessian():
    q, k, v, _ = _inputs(seed=5)
    B, T, H, K = k.shape
    P = torch.stack([torch.linalg.inv(_gram(k, t, 0.9, 1.3)) for t in range(1, T + 1)], dim=1)
    o1, f1 = rls(q, k, v, gamma=0.9, lam=1.3, output_final_state=True)
    o2, f2 = right_preconditioned_recurrent(
        q, k, v, torch.ones(B, T, H, dtype=torch.float64), P, output_final_state=True
    )
    assert rel_err(o1, o2) <= TOL and rel_err(f1, f2) <= TOL


def test_right_preconditioned_diagonal_equals_osdn():
    q, k, v, beta = _inputs(seed=6)
    d = torch.exp(0.4 * torch.randn(k.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    S0 = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    o1, f1, d1 = osdn_recurrent(q, k, v, beta, d, initial_state=S0, output_final_state=True, diagnostics=True)
    o2, f2, d2 = right_preconditioned_recurrent(
        q, k, v, beta, torch.diag_embed(d), initial_state=S0, output_final_state=True, diagnostics=True
    )
    assert rel_err(o1, o2) <= TOL and rel_err(f1, f2) <= TOL
    assert rel_err(d1.write_gain, d2.write_gain) <= TOL
    assert rel_err(d1.residual_post, d2.residual_post) <= TOL
    # broadcast P: a single [K, K] matrix
    o3, _ = right_preconditioned_recurrent(q, k, v, beta, torch.eye(5, dtype=torch.float64))
    o4, _ = osdn_recurrent(q, k, v, beta)
    assert rel_err(o3, o4) <= TOL


# ---------------------------------------------------------------------------------------------- windowed


@pytest.mark.parametrize("window", [1, 3, 6])
def test_windowed_rls_equals_windowed_ridge(window):
    q, k, v, _ = _inputs(T=15, seed=7)
    _, final, diag = windowed_rls(
        q, k, v, window=window, lam=0.5, diagnostics=True, keep_states=True, output_final_state=True
    )
    for t in range(1, 16):
        assert rel_err(diag.states[:, t - 1], windowed_ridge_solution(k, v, t, window=window, lam=0.5)) <= TOL
    assert torch.equal(final, diag.states[:, -1])


def test_windowed_rls_long_window_is_rls_and_short_window_is_not():
    q, k, v, _ = _inputs(T=12, seed=8)
    o1, f1 = windowed_rls(q, k, v, window=12, lam=0.5, output_final_state=True)
    o2, f2 = rls(q, k, v, lam=0.5, output_final_state=True)
    assert rel_err(o1, o2) <= TOL and rel_err(f1, f2) <= TOL
    _, f3 = windowed_rls(q, k, v, window=4, lam=0.5, output_final_state=True)
    assert rel_err(f3, f2) > NEGATIVE_CONTROL_GAP  # negative control: the down-dates matter


# ---------------------------------------------------------------------------------------------- Longhorn


def test_longhorn_write_key_is_rls_step_from_identity_over_beta():
    _, k, _, beta = _inputs(seed=9)
    key = longhorn_write_key(k, beta)
    K = k.shape[-1]
    Hm = torch.eye(K, dtype=torch.float64) / beta[..., None, None] + k[..., :, None] * k[..., None, :]
    ref = torch.linalg.solve(Hm, k.unsqueeze(-1)).squeeze(-1)
    assert rel_err(key, ref) <= TOL
    a = beta * (k * k).sum(-1)
    assert rel_err((k * key).sum(-1), a / (1 + a)) <= TOL
    # one RLS step from H_0 = I/β (lam = 1/β, γ = 1) writes with the Longhorn key
    q1, k1, v1 = k[:1, :1, :1], k[:1, :1, :1], torch.ones(1, 1, 1, 2, dtype=torch.float64)
    b = float(beta[0, 0, 0])
    _, _, diag = rls(q1, k1, v1, lam=1.0 / b, diagnostics=True)
    assert rel_err(diag.write_key_, longhorn_write_key(k1, beta[:1, :1, :1])) <= TOL


# ---------------------------------------------------------------------------------------------- Jacobi


def test_jacobi_d_closed_forms():
    _, k, _, beta = _inputs(seed=10)
    T = k.shape[1]
    u = k * k
    d = jacobi_d(k, beta, c=0.3, gamma=0.8, lam=2.0)
    for t in range(1, T + 1):
        w = 0.8 ** torch.arange(t - 1, -1, -1, dtype=torch.float64)
        h = 2.0 * 0.8**t + torch.einsum("t,btHk->bHk", w, u[:, :t])
        assert rel_err(d[:, t - 1], 0.3 / h) <= TOL
    de = jacobi_d(k, beta, c="fixed_point", ema=0.2, lam=1.5)
    h = torch.full_like(u[:, 0], 1.5)
    for t in range(T):
        h = 0.8 * h + 0.2 * u[:, t]
        assert rel_err(de[:, t], 1.0 / (beta[:, t, :, None] * (k.shape[-1] + 2) * h)) <= TOL


def test_raw_jacobi_diverges_scaled_or_clipped_contracts():
    """Raw Jacobi (c = 1, EMA diagonal ≈ a) writes with s ≈ βK ≫ 2 and the memory error grows beyond its
    start ‖W*‖; the fixed-point scale c = 1/(β(K+2)) or the write-gain clip makes it contract."""
    data = TeacherStream(T=96, K=8, V=4, cov="anisotropic", condition=10.0).build(0)
    W = data.teacher
    err0 = float(W.norm())

    def final_err(d, s_max=None):
        _, f, diag = osdn_recurrent(
            data.q, data.k, data.v, data.beta, d, s_max=s_max, output_final_state=True, diagnostics=True
        )
        return float((f - W).norm()), diag

    raw = jacobi_d(data.k, data.beta, c=1.0, ema=0.1)
    e_raw, diag_raw = final_err(raw)
    assert float(diag_raw.write_gain.median()) > 2.0
    assert e_raw > err0
    e_fp, diag_fp = final_err(jacobi_d(data.k, data.beta, c="fixed_point", ema=0.1))
    assert float(diag_fp.write_gain.max()) < 2.0 and e_fp < err0
    e_clip, diag_clip = final_err(raw, s_max=1.0)
    assert bool(diag_clip.clipped.any()) and e_clip < err0


# ---------------------------------------------------------------------------------------------- token-local


def test_token_local_newton_exact_write():
    q, k, v, beta = _inputs(seed=11)
    d = token_local_newton_d(k, beta)
    _, _, diag = osdn_recurrent(q, k, v, beta, d, diagnostics=True)
    assert rel_err(diag.write_gain, torch.ones_like(diag.write_gain)) <= TOL
    assert float(diag.residual_post.norm()) <= TOL * float(diag.residual_pre.norm())
    assert float(feedback_losses(k, beta, d).max()) <= TOL


# ---------------------------------------------------------------------------------------------- best fixed


def _kkt_violation(k, beta, res: BestFixedDiagonal) -> float:
    A = beta[..., None] * k * k  # [B,T,H,K]
    r = torch.einsum("bthk,bhk->bth", A, res.d) - 1.0
    g = 2 * torch.einsum("bthk,bth->bhk", A, r)
    scale = 2 * torch.einsum("bthk,bth->bhk", A, r.abs() + 1.0)  # natural magnitude of each gradient entry
    lo, hi = res.box
    at_lo, at_hi = res.d <= lo, res.d >= hi
    free = ~(at_lo | at_hi)
    v_free = (g.abs() / scale)[free]
    v_lo = (-g / scale).clamp_min(0)[at_lo]
    v_hi = (g / scale).clamp_min(0)[at_hi]
    return float(torch.cat([v_free, v_lo, v_hi]).max())


@pytest.mark.parametrize("box", [(0.0, math.inf), (0.5, 0.9)], ids=["nonneg", "tight"])
def test_best_fixed_diagonal_is_a_true_minimiser(box):
    _, k, _, beta = _inputs(T=40, K=4, seed=12)
    res = best_fixed_diagonal(k, beta, box=box)
    lo, hi = box
    assert bool(((res.d >= lo) & (res.d <= hi)).all())
    assert _kkt_violation(k, beta, res) <= TOL
    loss = feedback_losses(k, beta, res.d[:, None]).sum(1)
    assert rel_err(loss, res.loss) <= TOL
    g = torch.Generator().manual_seed(0)
    top = 3.0 if math.isinf(hi) else hi
    for _ in range(200):  # random feasible points never beat it
        d = lo + (top - lo) * torch.rand(res.d.shape, generator=g, dtype=torch.float64)
        assert bool((feedback_losses(k, beta, d[:, None]).sum(1) >= res.loss * (1 - TOL)).all())
    if box == (0.5, 0.9):
        assert bool(((res.d == lo) | (res.d == hi)).any())  # the box is active: a real constrained case


def test_best_fixed_diagonal_mask_selects_tokens():
    _, k, _, beta = _inputs(T=30, K=3, seed=13)
    mask = torch.zeros(k.shape[:3], dtype=torch.bool)
    mask[:, :12] = True
    a = best_fixed_diagonal(k, beta, mask=mask)
    b = best_fixed_diagonal(k[:, :12], beta[:, :12])
    assert rel_err(a.d, b.d) <= TOL and rel_err(a.loss, b.loss) <= TOL


# ---------------------------------------------------------------------------------------------- fixed point


def test_fixed_point_zero_gradient_and_value():
    a = torch.tensor([[1.0, 0.3, 0.05, 2.0, 0.7]], dtype=torch.float64)
    K = a.shape[-1]
    for beta in (1.0, 0.4):
        d = fixed_point_d(a, beta).requires_grad_(True)
        f = expected_feedback(d, a, beta).sum()
        (grad,) = torch.autograd.grad(f, d)
        assert float(grad.abs().max()) <= TOL
        assert abs(float(f.detach()) - 2.0 / (K + 2)) <= TOL
        assert abs(float(beta * (a * d.detach()).sum()) - K / (K + 2)) <= TOL  # E s = K/(K+2)
    # tensor beta broadcasts over the leading axes
    bt = torch.tensor([0.5], dtype=torch.float64)
    assert rel_err(fixed_point_d(a, bt), fixed_point_d(a, 0.5)) <= TOL


def test_expected_feedback_matches_monte_carlo_and_fourth_moment_matters():
    """E(1 − βuᵀd)² with E uuᵀ = aaᵀ + 2diag(a²): checked against a Monte Carlo mean within Z_SCORE standard
    errors; dropping the 2diag(a²) (fourth-moment) term is off by many standard errors (negative control)."""
    rng = np.random.default_rng(np.random.SeedSequence(7))
    a = np.array([1.0, 0.25, 0.1, 0.5])
    d = np.array([0.3, 0.9, 1.5, 0.4])
    beta, n = 0.8, 200_000
    k = rng.standard_normal((n, 4)) * np.sqrt(a)
    f = (1 - beta * (k * k) @ d) ** 2
    se = f.std(ddof=1) / math.sqrt(n)
    ef = float(expected_feedback(torch.tensor(d), torch.tensor(a), beta))
    assert abs(f.mean() - ef) <= Z_SCORE * se
    wrong = ef - 2 * beta**2 * float((a * a * d * d).sum())
    assert abs(f.mean() - wrong) > Z_SCORE * se


# ---------------------------------------------------------------------------------------------- batch Newton


def test_batch_right_newton_solves_in_one_step():
    g = torch.Generator().manual_seed(14)
    N, K, V = 20, 6, 3
    Km = torch.randn(2, N, K, generator=g, dtype=torch.float64) @ torch.diag(
        torch.tensor([3.0, 1.0, 0.5, 0.2, 0.1, 0.05], dtype=torch.float64)
    )
    W = torch.randn(2, K, V, generator=g, dtype=torch.float64)
    Vm = Km @ W  # realizable
    S = torch.randn(2, K, V, generator=g, dtype=torch.float64)
    P = batch_right_newton(Km, Vm)
    assert rel_err(P, torch.linalg.inv(Km.transpose(-1, -2) @ Km)) <= TOL
    S1 = batch_right_newton_step(S, Km, Vm, P)
    assert rel_err(S1, W) <= TOL
    assert float(batch_objective(S1, Km, Vm).max()) <= TOL * float(batch_objective(S, Km, Vm).min())
    # non-realizable: one step lands on the least-squares solution
    Vn = Vm + torch.randn(Vm.shape, generator=g, dtype=torch.float64)
    assert rel_err(batch_right_newton_step(S, Km, Vn, P), torch.linalg.lstsq(Km, Vn).solution) <= TOL
    # negative control: the diagonal (Jacobi) preconditioner of a rotated Gram does not solve in one step
    Q, _ = torch.linalg.qr(torch.randn(K, K, generator=g, dtype=torch.float64))
    Kr = Km @ Q.T
    Pd = torch.diag_embed(1.0 / torch.diagonal(Kr.transpose(-1, -2) @ Kr, dim1=-2, dim2=-1))
    Sd = batch_right_newton_step(S, Kr, Kr @ W, Pd)
    assert float(batch_objective(Sd, Kr, Kr @ W).min()) > NEGATIVE_CONTROL_GAP * float(
        batch_objective(S, Kr, Kr @ W).max()
    )


def test_batch_right_newton_rank_deficient_uses_pseudo_inverse():
    g = torch.Generator().manual_seed(15)
    Km = torch.randn(3, 6, generator=g, dtype=torch.float64)  # N < K
    Vm = torch.randn(3, 2, generator=g, dtype=torch.float64)
    P = batch_right_newton(Km)
    S1 = batch_right_newton_step(torch.zeros(6, 2, dtype=torch.float64), Km, Vm, P)
    assert float(batch_objective(S1, Km, Vm)) <= TOL * float(batch_objective(torch.zeros(6, 2), Km, Vm))
    assert rel_err(S1, torch.linalg.pinv(Km) @ Vm) <= TOL  # minimum-norm solution from S = 0


# ---------------------------------------------------------------------------------------------- argument errors


def test_argument_errors():
    q, k, v, beta = _inputs(B=1, T=4, H=1, K=3, V=2)
    with pytest.raises(ValueError, match="^gamma:"):
        rls(q, k, v, gamma=1.5)
    with pytest.raises(ValueError, match="^lam:"):
        rls(q, k, v, lam=0.0)
    with pytest.raises(ValueError, match="^variant:"):
        rls(q, k, v, variant="spec")
    with pytest.raises(ValueError, match="^keep_states:"):
        rls(q, k, v, keep_states=True)
    with pytest.raises(ValueError, match="^v:"):
        rls(q, k, v[:, :2])
    with pytest.raises(ValueError, match="^diagnostics:"):
        rls(q, k, v, diagnostics=1)
    with pytest.raises(ValueError, match="^t:"):
        ridge_solution(k, v, 5)
    with pytest.raises(ValueError, match="^initial_state:"):
        ridge_solution(k, v, 2, initial_state=torch.zeros(1, 1, 2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="^k:"):
        ridge_solution(k[0], v, 1)
    with pytest.raises(ValueError, match="^window:"):
        windowed_rls(q, k, v, window=0)
    with pytest.raises(ValueError, match="^window:"):
        windowed_ridge_solution(k, v, 1, window=1.5)
    with pytest.raises(ValueError, match="^v: expected finite"):
        windowed_ridge_solution(k, v * float("nan"), 1, window=2)
    with pytest.raises(ValueError, match="^k: expected finite"):
        windowed_ridge_solution(k * float("inf"), v, 1, window=2)
    with pytest.raises(ValueError, match="^beta:"):
        longhorn_write_key(k, beta * 2)
    with pytest.raises(ValueError, match="^c:"):
        jacobi_d(k, beta, c="auto")
    with pytest.raises(ValueError, match="^ema:"):
        jacobi_d(k, beta, ema=0.0)
    with pytest.raises(ValueError, match="^k:"):
        token_local_newton_d(torch.zeros_like(k), beta)
    with pytest.raises(ValueError, match="^d:"):
        feedback_losses(k, beta, torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="^box:"):
        best_fixed_diagonal(k, beta, box=(1.0, 0.5))
    with pytest.raises(ValueError, match="^box:"):
        best_fixed_diagonal(k, beta, box=(-1.0, 1.0))
    with pytest.raises(ValueError, match="^mask:"):
        best_fixed_diagonal(k, beta, mask=torch.ones(1, 4, 1))
    with pytest.raises(ValueError, match="^a:"):
        fixed_point_d(torch.tensor([1.0, 0.0]), 1.0)
    with pytest.raises(ValueError, match="^beta:"):
        fixed_point_d(torch.tensor([1.0, 2.0]), 0.0)
    with pytest.raises(ValueError, match="^d:"):
        expected_feedback(torch.ones(3), torch.ones(2), 1.0)
    with pytest.raises(ValueError, match="^V_mat:"):
        batch_right_newton(torch.ones(4, 3), torch.ones(5, 2))
    with pytest.raises(ValueError, match="^K_mat:"):
        batch_right_newton(torch.ones(3))
    with pytest.raises(ValueError, match="^P:"):
        batch_right_newton_step(torch.zeros(3, 2), torch.ones(4, 3), torch.ones(4, 2), torch.eye(2))
    with pytest.raises(ValueError, match="^state:"):
        batch_objective(torch.zeros(2, 2), torch.ones(4, 3), torch.ones(4, 2))
    with pytest.raises(ValueError, match="^P:"):
        right_preconditioned_recurrent(q, k, v, beta, torch.eye(2))
    with pytest.raises(ValueError, match="^beta:"):
        right_preconditioned_recurrent(q, k, v, beta[..., 0], torch.eye(3))
