"""Metrics (spec §7, §9): each against a hand computation; super-geometric test with positive and negative
controls; the OSGM chain."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from osdn_theory.comparators import rls
from osdn_theory.metrics import (
    OSGMChain,
    SuperGeometricResult,
    contraction_ratios,
    excess_over_right_newton,
    osgm_chain,
    percent_reduction,
    recall_accuracy,
    stored_set_residual_ratio,
    super_geometric_test,
    token_local_write_ratio,
    window_geometric_means,
    write_gain_feedback,
)
from osdn_theory.recurrences import Diagnostics, osdn_recurrent
from osdn_theory.tolerances import rel_err, rtol

TOL = rtol(torch.float64)
f64 = torch.float64


def _diag_by_hand():
    """B = 1, T = 2, H = 1, V = 2: e = [(3, 4), (1, 0)], r⁺ = [(0, 1), (0, 0.5)]."""
    e = torch.tensor([[[[3.0, 4.0]], [[1.0, 0.0]]]], dtype=f64)
    r = torch.tensor([[[[0.0, 1.0]], [[0.0, 0.5]]]], dtype=f64)
    s = torch.zeros(1, 2, 1, dtype=f64)
    return Diagnostics(e, r, s, torch.ones_like(s))


def test_contraction_ratios_by_hand_and_on_osdn():
    rho = contraction_ratios(_diag_by_hand())
    assert torch.equal(rho, torch.tensor([[[1 / 25], [0.25]]], dtype=f64))
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 2, 9, 2, 3, generator=g, dtype=f64)
    v = torch.randn(2, 9, 2, 4, generator=g, dtype=f64)
    beta = 0.2 + 0.8 * torch.rand(2, 9, 2, generator=g, dtype=f64)
    d = torch.exp(torch.randn(2, 9, 2, 3, generator=g, dtype=f64))
    _, _, diag = osdn_recurrent(q, k, v, beta, d, diagnostics=True)
    assert rel_err(contraction_ratios(diag), write_gain_feedback(diag.write_gain)) <= TOL
    # RLS diagnostics are Diagnostics too; there ρ_t = (1 − s_t)² = 1/(1 + a_t)²
    _, _, rd = rls(q, k, v, diagnostics=True)
    assert rel_err(contraction_ratios(rd), 1 / (1 + rd.leverage) ** 2) <= TOL


def test_contraction_ratio_zero_residual_conventions():
    z = torch.zeros(1, 2, 1, 2, dtype=f64)
    r = torch.tensor([[[[0.0, 0.0]], [[1.0, 0.0]]]], dtype=f64)
    s = torch.zeros(1, 2, 1, dtype=f64)
    rho = contraction_ratios(Diagnostics(z, r, s, s + 1))
    assert float(rho[0, 0, 0]) == 0.0 and math.isinf(float(rho[0, 1, 0]))


def test_write_gain_feedback_by_hand():
    assert torch.equal(
        write_gain_feedback(torch.tensor([0.0, 1.0, 2.0, 0.5], dtype=f64)),
        torch.tensor([1, 0, 1, 0.25], dtype=f64),
    )


def test_stored_set_residual_ratio_by_hand():
    # K = 2, V = 1, S = [1, 0] (state layout [[1], [0]]); keys e1, e2; values 1, 2
    state = torch.tensor([[[[1.0], [0.0]]]], dtype=f64)
    k = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]], dtype=f64)
    v = torch.tensor([[[[1.0]], [[2.0]]]], dtype=f64)
    # residuals: 0 and −2 → 4 / (1 + 4)
    assert rel_err(stored_set_residual_ratio(state, k, v), torch.tensor([[0.8]], dtype=f64)) <= TOL
    mask = torch.tensor([[[True], [False]]])
    assert float(stored_set_residual_ratio(state, k, v, mask)) == 0.0
    # two realisations: per-realisation, mean, and ratio of sums differ as they should
    st2 = torch.cat([state, torch.zeros_like(state)])  # second: S = 0 → ratio 1, Σ residual 5, Σ v² 5
    k2, v2 = torch.cat([k, k]), torch.cat([v, 2 * v])  # second values doubled: Σ v² = 20
    r = stored_set_residual_ratio(st2, k2, v2)
    assert rel_err(r, torch.tensor([[0.8], [1.0]], dtype=f64)) <= TOL
    assert abs(float(stored_set_residual_ratio(st2, k2, v2, reduction="mean")) - 0.9) <= TOL
    assert abs(float(stored_set_residual_ratio(st2, k2, v2, reduction="sum")) - 24 / 25) <= TOL


def test_token_local_write_ratio_by_hand():
    # Σ‖r⁺‖² = 1 + 0.25, Σ‖e‖² = 25 + 1
    assert abs(float(token_local_write_ratio(_diag_by_hand())) - 1.25 / 26) <= TOL
    mask = torch.tensor([[[False], [True]]])
    assert abs(float(token_local_write_ratio(_diag_by_hand(), mask)) - 0.25) <= TOL


def test_excess_and_percent_reduction_by_hand():
    assert abs(float(excess_over_right_newton(0.5, 0.2)) - 0.375) <= TOL
    assert float(excess_over_right_newton(0.2, 0.2)) == 0.0
    r = excess_over_right_newton(torch.tensor([0.4, 1.0], dtype=f64), torch.tensor([0.0, 0.5], dtype=f64))
    assert rel_err(r, torch.tensor([0.4, 1.0], dtype=f64)) <= TOL
    assert abs(percent_reduction(0.61, 1.0) - 0.39) <= TOL
    assert abs(percent_reduction(0.25, 0.5) - 0.5) <= TOL
    assert percent_reduction(2.0, 1.0) == -1.0  # an increase is a negative reduction
    pr = percent_reduction(torch.tensor([1.0, 3.0], dtype=f64), torch.tensor([2.0, 4.0], dtype=f64))
    assert rel_err(pr, torch.tensor([0.5, 0.25], dtype=f64)) <= TOL


def test_recall_accuracy_by_hand():
    # codebook rows (1,0), (0,1), (−1,0); identity memory: S k = k
    state = torch.eye(2, dtype=f64)[None, None]
    cb = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]]], dtype=f64)
    qk = torch.tensor([[[[0.9, 0.2]], [[0.1, 0.8]], [[-0.7, 0.6]], [[0.2, -0.1]]]], dtype=f64)
    # nearest rows: 0, 1, 2, 0
    tgt = torch.tensor([[[0], [1], [1], [0]]])
    acc = recall_accuracy(state, qk, tgt, cb)
    assert acc.shape == (1, 1) and float(acc) == 0.75


def test_window_geometric_means_by_hand():
    rho = np.array([9.0, 1.0, 4.0, 0.25, 2.0, 8.0, 0.0])  # T = 7, J = 3 → drop 1, windows of 2
    G = window_geometric_means(rho, 3, floor=1e-4)
    assert np.allclose(G, [2.0, math.sqrt(0.5), math.sqrt(8e-4)], rtol=TOL, atol=0)


def test_super_geometric_positive_controls():
    T = 240
    t = np.arange(1, T + 1)
    r = super_geometric_test(0.9**t)  # ρ_t = q^t: log M_T = log q · T(T+1)/2
    assert isinstance(r, SuperGeometricResult) and r and r.reason == "decay"
    assert r.decay_ok and r.tail_ok and not r.reached_floor
    # −log M_T = −log q · T(T+1)/2: between T^1 and T^2 growth, and the fit is over T in (T/2, T]
    assert 1.0 < r.exponent < 2.0
    half = t[t > T / 2].astype(float)
    p_hand = np.polyfit(np.log(half), np.log(-math.log(0.9) * half * (half + 1) / 2), 1)[0]
    assert abs(r.exponent - p_hand) <= TOL
    # converged to machine precision: ρ hits 0 after 40 steps → the floor rule
    rho = np.concatenate([np.full(40, 0.5), np.zeros(T - 40)])
    rf = super_geometric_test(rho)
    assert rf and rf.reached_floor


def test_super_geometric_negative_controls():
    T = 240
    rc = super_geometric_test(np.full(T, 0.3))  # geometric: flat ratios
    assert not rc and rc.reason == "none" and not rc.tail_ok and not rc.decay_ok
    assert abs(rc.exponent - 1.0) <= TOL
    # fast start, then levelling at a constant: (a) holds, (b) fails
    rho = 1e-4 + 0.9 ** np.arange(1, T + 1)
    rl = super_geometric_test(rho)
    assert rl.decay_ok and not rl.tail_ok and not rl
    # DeltaNet with fixed β stays at (1 − β)² (spec §7)
    assert not super_geometric_test(np.full(T, (1 - 0.5) ** 2))


def test_super_geometric_numbers_and_exponent_fit():
    T, J = 100, 8  # 100 mod 8 = 4 steps dropped, windows of 12
    c, p = 0.3, 1.5
    t = np.arange(1, T + 1, dtype=float)
    rho = np.exp(-c * (t**p - (t - 1) ** p))  # log M_T = −c T^p exactly
    r = super_geometric_test(rho, num_windows=J)
    assert r.dropped_steps == 4 and r.window_length == 12
    G = window_geometric_means(rho, J)
    assert np.array_equal(r.window_means, G)
    assert r.first == G[0] and r.middle == G[3] and r.last == G[-1]
    assert abs(r.exponent - p) <= TOL and abs(r.coefficient - c) <= TOL


def test_osgm_chain_holds_and_regret_identity():
    rng = np.random.default_rng(np.random.SeedSequence(3))
    rho = rng.random(60) ** 2
    cmp_ = 0.5 * rng.random(60)
    ch = osgm_chain(rho, cmp_)
    assert isinstance(ch, OSGMChain) and ch.holds and ch.amgm_holds and ch.bound_holds
    assert ch.regret_is_measured
    T = np.arange(1, 61)
    assert np.allclose(ch.log_product, np.cumsum(np.log(rho)), rtol=TOL, atol=0)
    assert np.allclose(ch.log_mean_power, T * np.log(np.cumsum(rho) / T), rtol=TOL, atol=0)
    # with measured regret the bound is an identity, not a check
    assert np.allclose(ch.log_bound, ch.log_mean_power, rtol=TOL, atol=0)
    assert np.allclose(ch.regret, np.cumsum(rho) - np.cumsum(cmp_), rtol=TOL, atol=0)


def test_osgm_chain_external_regret_bound_and_negative_control():
    rng = np.random.default_rng(np.random.SeedSequence(4))
    rho = rng.random(50)
    zero = np.zeros(50)
    # an honest upper bound on the regret (Σρ itself, comparator with zero feedback) passes
    assert osgm_chain(rho, zero, regret=np.cumsum(rho) * 1.5).holds
    # a regret "bound" that is too small must make the chain fail
    bad = osgm_chain(rho, zero, regret=0.5 * np.cumsum(rho))
    assert bad.amgm_holds and not bad.bound_holds and not bad.holds and bad.max_bound_violation > 0


def test_argument_errors():
    dg = _diag_by_hand()
    with pytest.raises(ValueError, match="^diag:"):
        contraction_ratios(torch.zeros(3))
    with pytest.raises(ValueError, match="^diag:"):
        token_local_write_ratio("x")
    with pytest.raises(ValueError, match="^reduction:"):
        token_local_write_ratio(dg, reduction="max")
    with pytest.raises(ValueError, match="^mask:"):
        token_local_write_ratio(dg, torch.ones(1, 2, 1))
    with pytest.raises(ValueError, match="^s:"):
        write_gain_feedback(torch.tensor([float("nan")]))
    st, k, v = (
        torch.zeros(1, 1, 2, 1, dtype=f64),
        torch.ones(1, 3, 1, 2, dtype=f64),
        torch.ones(1, 3, 1, 1, dtype=f64),
    )
    with pytest.raises(ValueError, match="^state:"):
        stored_set_residual_ratio(st[0], k, v)
    with pytest.raises(ValueError, match="^k:"):
        stored_set_residual_ratio(st, k[..., :1], v)
    with pytest.raises(ValueError, match="^v:"):
        stored_set_residual_ratio(st, k, v[:, :2])
    with pytest.raises(ValueError, match="^v:"):
        stored_set_residual_ratio(st, k, 0 * v)
    with pytest.raises(ValueError, match="^r1_rls:"):
        excess_over_right_newton(0.5, 1.0)
    with pytest.raises(ValueError, match="^r1:"):
        excess_over_right_newton(-0.1, 0.5)
    with pytest.raises(ValueError, match="^metric_deltanet:"):
        percent_reduction(0.5, 0.0)
    with pytest.raises(ValueError, match="^metric_osdn:"):
        percent_reduction("a", 1.0)
    cb = torch.eye(2, dtype=f64)[None, None]
    with pytest.raises(ValueError, match="^target_ids:"):
        recall_accuracy(st.expand(1, 1, 2, 2), k, torch.zeros(1, 3, 1), cb)
    with pytest.raises(ValueError, match="^target_ids:"):
        recall_accuracy(st.expand(1, 1, 2, 2), k, torch.full((1, 3, 1), 5), cb)
    with pytest.raises(ValueError, match="^codebook:"):
        recall_accuracy(st.expand(1, 1, 2, 2), k, torch.zeros(1, 3, 1, dtype=torch.int64), cb[0])
    with pytest.raises(ValueError, match="^query_keys:"):
        recall_accuracy(st.expand(1, 1, 2, 2), k[0], torch.zeros(1, 3, 1, dtype=torch.int64), cb)
    with pytest.raises(ValueError, match="^rho:"):
        window_geometric_means(np.ones(3), 4)
    with pytest.raises(ValueError, match="^rho:"):
        window_geometric_means(np.ones((3, 2)), 1)
    with pytest.raises(ValueError, match="^num_windows:"):
        super_geometric_test(np.ones(10), num_windows=1)
    with pytest.raises(ValueError, match="^factor:"):
        super_geometric_test(np.ones(10), factor=1.0)
    with pytest.raises(ValueError, match="^tail_factor:"):
        super_geometric_test(np.ones(10), tail_factor=0.5)
    with pytest.raises(ValueError, match="^floor:"):
        super_geometric_test(np.ones(10), floor=0.0)
    with pytest.raises(ValueError, match="^rho:"):
        super_geometric_test(-np.ones(10))
    with pytest.raises(ValueError, match="^rho_comparator:"):
        osgm_chain(np.ones(5), np.ones(4))
    with pytest.raises(ValueError, match="^regret:"):
        osgm_chain(np.ones(5), np.ones(5), regret=np.ones(4))
    with pytest.raises(ValueError, match="^regret:"):
        osgm_chain(np.ones(5), np.ones(5), regret="big")
    with pytest.raises(ValueError, match="^regret:"):
        osgm_chain(np.ones(5), np.ones(5), regret=np.full(5, np.nan))
    with pytest.raises(ValueError, match="^regret:"):
        osgm_chain(np.ones(5), np.zeros(5), regret=-np.ones(5))


def test_super_geometric_threshold_cases_stated_in_theory_doc():
    """ρ_t = 0.9^t with J = 8: (a) needs 7w·ln(1/0.9) ≥ ln 100, i.e. w ≥ 7, so T = 56 passes and T = 48 fails."""
    for T, verdict in ((56, True), (48, False)):
        r = super_geometric_test(0.9 ** np.arange(1, T + 1))
        assert bool(r) is verdict and r.decay_ok is verdict
        w = T // 8
        assert abs(r.last / r.first - 0.9 ** (7 * w)) <= TOL * 0.9 ** (7 * w)
        assert abs(r.last / r.middle - 0.9 ** (4 * w)) <= TOL * 0.9 ** (4 * w)
