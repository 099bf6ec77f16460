"""C7 — super-geometric convergence against a right-Newton comparator (spec §7).

* ``C7-batch`` (SG-batch): right-preconditioned GD ``S ← S − ∇F(S) P_j`` on a fixed realizable set
  ``F(S) = ½‖S Kᵀ − Vᵀ‖²_F`` with a diagonal ``P_j = diag(p_j)`` learned online from the OSGM ratio feedback
  ``r_j(p) = F(S_j − ∇F(S_j) diag(p)) / F(S_j)``, ``∇_p r = −colsum(∇F(S⁺) ⊙ ∇F(S)) / F(S)``, AdaGrad steps and
  a null step when F would increase. When the Hessian ``KᵀK`` is diagonal the right-Newton comparator
  ``P* = (KᵀK)⁻¹`` lies in the class, has zero feedback, and the ratios ``ρ_j = F_{j+1}/F_j`` fall
  super-geometrically. :func:`osdn_theory.osgm.osgm_diagonal_gd` is the solver.
* ``C7-neg`` (negative control): the same with a rotated Hessian ``R diag(σ²) Rᵀ`` — the comparator is not
  diagonal, so the ratios level off at a constant (geometric); the super-geometric test must fail for
  every seed.
* ``C7`` (SG-token, streaming): the ratio rule with L2-normalized keys, ``ρ_t = (1 − s_t)²``; the exact-write
  comparator ``d = 1/β`` has zero feedback; DeltaNet with fixed β stays flat at ``(1 − β)²``.

Every run asserts the OSGM chain ``M_T ≤ ((1/T)Σρ_t)^T ≤ ((Σρ_t^cmp + Regret_T)/T)^T`` at every T
(:func:`osdn_theory.metrics.osgm_chain`). With the measured regret the second inequality is an identity; the
content of the claim is the measured super-geometric decay, which the window test checks.
"""

from __future__ import annotations

import numpy as np
import torch

from ..metrics import RATIO_FLOOR, osgm_chain, super_geometric_test
from ..osgm import osgm_diagonal_gd, realizable_set
from ..tolerances import rtol
from ._common import F64, generator
from ._registry import Outcome, Size, claim

__all__: list[str] = []


_SG_DOC = dict(num_windows=8, factor=100.0, tail_factor=10.0)

#: Smallest median fitted exponent ``p`` of ``log M_T ≈ −c T^p`` accepted for SG-batch: ``p ≈ 1`` is geometric
#: and ``p ≈ 2`` is ``ρ_t = q^t`` (theory.md §8); 1.2 asks for a clear departure from geometric.
C7_MIN_EXPONENT = 1.2


def _run_batch(size: Size, seed: int, rotated: bool):
    runs = []
    for i in range(size.seeds):
        g = generator(seed, 7, i, int(rotated))
        Km, E0, sigma, R = realizable_set(
            g, size.N, size.K, size.V, log10_cond=size.log10_cond, rotated=rotated
        )
        L = float(sigma.max() ** 2)
        # Comparator: the right-Newton P* = (KᵀK)⁻¹ when it is diagonal; else the Jacobi diagonal diag(KᵀK)⁻¹.
        p_cmp = 1.0 / torch.diagonal(Km.T @ Km)
        run = osgm_diagonal_gd(Km, E0, iters=size.iters, eta=size.eta_L / L, p_comparator=p_cmp)
        sg = super_geometric_test(run.rho, **_SG_DOC)
        chain = osgm_chain(run.rho, np.minimum(run.comparator_feedback, 1.0))
        runs.append((run, sg, chain))
    return runs


def _batch_evidence(runs, size):
    return dict(
        per_seed_super_geometric=[bool(sg) for _, sg, _ in runs],
        per_seed_reason=[sg.reason for _, sg, _ in runs],
        per_seed_exponent=[sg.exponent for _, sg, _ in runs],
        per_seed_log10_window_means=[np.log10(sg.window_means).round(2).tolist() for _, sg, _ in runs],
        per_seed_log10_final_F=[float(r.log_F[-1] / np.log(10)) for r, _, _ in runs],
        per_seed_null_steps=[r.null_steps for r, _, _ in runs],
        chain_holds_every_T=all(c.holds for _, _, c in runs),
        chain_regret_is_measured=all(c.regret_is_measured for _, _, c in runs),
        test=dict(_SG_DOC, floor=RATIO_FLOOR),
        N=size.N,
        K=size.K,
        V=size.V,
        iters=size.iters,
        log10_cond=size.log10_cond,
        adagrad_eta_times_L=size.eta_L,
        seeds=size.seeds,
        dtype="float64",
    )


#: Seeds allowed to miss the window test in C7-batch (docs/theory.md §8 "Robustness"): the OSGM solver's null
#: steps (ratio 1) make single seeds' window means noisy; measured: 34 of 36 quick-size seeds and 9 of 10
#: full-size seeds pass, every miss on the tail condition by 0.15–0.4 decades. The negative control C7-neg
#: must fail the test for every seed, so the separation stays two-sided.
C7_BATCH_MAX_MISSES = 1

_BATCH_SIZES = dict(
    quick=dict(N=48, K=12, V=8, log10_cond=3.0, iters=240, eta_L=50.0, seeds=3),
    full=dict(N=64, K=16, V=16, log10_cond=3.0, iters=400, eta_L=50.0, seeds=10),
)


@claim(
    "C7-batch",
    title="SG-batch: OSGM diagonal preconditioning is super-geometric when P* is diagonal",
    statement=(
        "on a realizable fixed set with diagonal Hessian KᵀK, right-preconditioned GD with diag(p) learned by "
        "OSGM ratio feedback (AdaGrad, null steps) has window geometric means of ρ_j falling ≥ 100× "
        "(super-geometric) for every seed but at most one (theory.md §8), median fitted exponent p > 1.2, "
        "and the OSGM chain holds at every T"
    ),
    assumptions=[
        "realizable set V = K S*ᵀ",
        "right-Newton comparator (KᵀK)⁻¹ is diagonal (in the class)",
        "AdaGrad step eta = eta_L / λ_max(KᵀK)",
    ],
    comparison="trend",
    proof=None,
    **_BATCH_SIZES,
)
def c7_batch(size: Size, seed: int) -> Outcome:
    runs = _run_batch(size, seed, rotated=False)
    frac = float(np.mean([bool(sg) for _, sg, _ in runs]))
    chain_ok = all(c.holds for _, _, c in runs)
    expo = float(np.median([sg.exponent for _, sg, _ in runs]))
    # theory.md §8 "Robustness": every seed but at most one, because null steps make single seeds noisy.
    misses = sum(not bool(sg) for _, sg, _ in runs)
    min_frac = 1.0 - C7_BATCH_MAX_MISSES / len(runs)
    passed = misses <= C7_BATCH_MAX_MISSES and chain_ok and expo > C7_MIN_EXPONENT
    run0, sg0, chain0 = runs[0]
    return Outcome(
        measured=frac,
        bound=min_frac,
        passed=passed,
        evidence=dict(_batch_evidence(runs, size), fraction_super_geometric=frac, median_exponent=expo),
        series=dict(
            rho_seed0=run0.rho.tolist(),
            log10_F_seed0=(run0.log_F / np.log(10)).tolist(),
            log10_mean_power_seed0=(chain0.log_mean_power / np.log(10)).tolist(),
        ),
    )


@claim(
    "C7-neg",
    title="SG-batch negative control: rotated Hessian, diagonal P is only geometric",
    statement=(
        "with a rotated Hessian R diag(σ²) Rᵀ the right-Newton comparator is not diagonal: the same OSGM "
        "diagonal solver still converges (F falls), at best geometrically, and FAILS the super-geometric test "
        "for every seed"
    ),
    assumptions=["comparator in the class DROPPED: KᵀK not diagonal", "otherwise as C7-batch"],
    comparison="trend",
    negative_control=True,
    **_BATCH_SIZES,
)
def c7_neg(size: Size, seed: int) -> Outcome:
    runs = _run_batch(size, seed, rotated=True)
    n_sg = sum(bool(sg) for _, sg, _ in runs)
    chain_ok = all(c.holds for _, _, c in runs)
    # "Converges at best geometrically": the solver must still converge (F falls and the last window still
    # contracts); otherwise a stuck solver (every step null, ρ ≡ 1) would pass the control vacuously.
    progress = [bool(r.log_F[-1] < 0 and sg.window_means[-1] < 1) for r, sg, _ in runs]
    passed = n_sg == 0 and chain_ok and all(progress)
    run0, _, chain0 = runs[0]
    return Outcome(
        measured=float(n_sg),
        bound=0.0,
        passed=passed,
        evidence=dict(_batch_evidence(runs, size), seeds_super_geometric=n_sg, per_seed_converging=progress),
        series=dict(
            rho_seed0=run0.rho.tolist(),
            log10_F_seed0=(run0.log_F / np.log(10)).tolist(),
        ),
    )


@claim(
    "C7",
    title="SG-token: ratio rule with L2-normalized keys is super-geometric; DeltaNet is flat",
    statement=(
        "with ‖k_t‖ = 1 the exact-write comparator d = 1/β is feasible (zero feedback); the ratio rule's "
        "ρ_t = (1 − s_t)² has window geometric means falling ≥ 100× (super-geometric), Σρ_t ≤ K(1 − β)²/(c(2 − c)), the "
        "OSGM chain holds at every T, while DeltaNet stays flat at (1 − β)²"
    ),
    assumptions=[
        "L2-normalized keys",
        "fixed β",
        "ratio rule, normalized step c",
        "stationary isotropic keys",
    ],
    comparison="trend",
    quick=dict(T=256, K=8, V=4, beta=0.5, c=0.5, seeds=3),
    full=dict(T=1024, K=32, V=8, beta=0.5, c=0.5, seeds=8),
)
def c7_token(size: Size, seed: int) -> Outcome:
    from ..metrics import contraction_ratios
    from ..preconditioners import NormalizedStep, osdn_adaptive
    from ..recurrences import delta_rule_recurrent
    from ..streams import TeacherStream

    st = TeacherStream(
        T=size.T, K=size.K, V=size.V, cov="isotropic", normalize_keys=True, beta=size.beta, batch=size.seeds
    )
    data = st.build(seed)
    res = osdn_adaptive(data.q, data.k, data.v, data.beta, rule="ratio", step=NormalizedStep(size.c))
    _, _, diag_dn = delta_rule_recurrent(data.q, data.k, data.v, data.beta, diagnostics=True)
    rho_dn_all = contraction_ratios(diag_dn)
    sg, sg_dn, chains, sums_half, sums_full = [], [], [], [], []
    for b in range(size.seeds):
        rho = res.feedback[b, :, 0].numpy()
        sg.append(super_geometric_test(rho, **_SG_DOC))
        sg_dn.append(super_geometric_test(rho_dn_all[b, :, 0].numpy(), **_SG_DOC))
        chains.append(osgm_chain(rho, np.zeros_like(rho)))  # comparator d = 1/β: ρ_cmp ≡ 0
        sums_half.append(float(rho[: size.T // 2].sum()))
        sums_full.append(float(rho.sum()))
    n_sg = sum(bool(x) for x in sg)
    n_dn = sum(bool(x) for x in sg_dn)
    chain_ok = all(c.holds for c in chains)
    # Bounded cumulative feedback (theory.md §8, SG-token): with unit keys and d_1 = 1,
    # Σ_{t≤T} ρ_t ≤ K(1 − β)²/(c(2 − c)) for every T (the floor projection only moves d closer to d° = 1/β).
    sum_bound = size.K * (1 - size.beta) ** 2 / (size.c * (2 - size.c))
    bounded = all(f <= sum_bound * (1 + rtol(F64)) for f in sums_full)
    passed = n_sg == size.seeds and n_dn == 0 and chain_ok and bounded
    rho0 = res.feedback[0, :, 0].numpy()
    return Outcome(
        measured=float(n_sg) / size.seeds,
        bound=1.0,
        passed=passed,
        evidence=dict(
            per_seed_super_geometric=[bool(x) for x in sg],
            per_seed_exponent=[x.exponent for x in sg],
            per_seed_log10_window_means=[np.log10(x.window_means).round(2).tolist() for x in sg],
            deltanet_super_geometric=[bool(x) for x in sg_dn],
            deltanet_window_means=[x.window_means.round(6).tolist() for x in sg_dn],
            deltanet_expected_ratio=(1 - size.beta) ** 2,
            sum_rho_first_half=sums_half,
            sum_rho_total=sums_full,
            sum_rho_theory_bound=sum_bound,
            chain_holds_every_T=chain_ok,
            chain_regret_is_measured=all(c.regret_is_measured for c in chains),
            test=dict(_SG_DOC, floor=RATIO_FLOOR),
            T=size.T,
            K=size.K,
            beta=size.beta,
            c=size.c,
            realisations=size.seeds,
            stream_seed=seed,
            dtype="float64",
        ),
        series=dict(
            rho_osdn_seed0=rho0.tolist(),
            rho_deltanet_seed0=rho_dn_all[0, :, 0].tolist(),
            log10_M_osdn_seed0=(chains[0].log_product / np.log(10)).tolist(),
        ),
    )
