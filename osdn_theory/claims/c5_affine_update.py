"""C5 — the ratio and hyper d-updates are state-free and affine (spec §5).

* ``C5``: (i) by autograd through the float64 recurrence from random memories, the feedback gradient
  ``∇_d ‖r⁺(d)‖²/‖e‖²`` equals the state-free ``−2β(1 − s)u`` (``u = k ⊙ k``), identical for different memories;
  (ii) :func:`osdn_theory.preconditioners.d_scan` with a d-independent step satisfies
  ``d_{t+1} = (I − 2η_tβ_t²u_tu_tᵀ)d_t + 2η_tβ_tu_t`` (ratio) and ``d_{t+1} = d_t + η_tβ_t(1 − s_t)u_t/‖k_t‖²``
  (hyper) token by token, and ``d_init ↦ d`` is affine; (iii) :func:`osdn_adaptive` gives the same ``d`` for
  different values and initial states. Proof: ``proofs_check/c5_affine_update.py``.
* ``C5-normalized``: ``η_t = c/(2β_t²‖u_t‖²)`` gives ``1 − s_t(d_{t+1}) = (1 − c)(1 − s_t(d_t))``.
  Proof: ``proofs_check/c5_normalized_step.py``.
* ``C5-neg-raw`` (negative control): the raw (Baydin) hypergradient ``−β‖e‖²(1 − s)u`` depends on the state:
  different values give different ``d``.
"""

from __future__ import annotations

import math
import warnings

import torch

from ..preconditioners import NormalizedStep, ScheduledStep, d_scan, osdn_adaptive
from ..recurrences import osdn_recurrent
from ..schedules import constant
from ..tolerances import ABS_FLOOR, NEG_CONTROL_SEPARATION, rel_err, rtol
from ._common import F64, generator, worst
from ._registry import Outcome, Size, claim


def _keys(g, B, T, H, K):
    k = torch.randn(B, T, H, K, generator=g, dtype=F64) / K**0.5
    beta = 0.2 + 0.8 * torch.rand(B, T, H, generator=g, dtype=F64)
    return k, beta


def _autograd_state_free(g, K: int, V: int, draws: int) -> dict[str, float]:
    """Feedback gradient by autograd through one recurrent write from two random memories."""
    worst_err, spread = 0.0, 0.0
    for _ in range(draws):
        k = torch.randn(1, 1, 1, K, generator=g, dtype=F64)
        beta = 0.2 + 0.8 * torch.rand(1, 1, 1, generator=g, dtype=F64)
        d0 = 0.1 + torch.rand(K, generator=g, dtype=F64)
        grads = []
        for _m in range(2):
            S0 = torch.randn(1, 1, K, V, generator=g, dtype=F64)
            v = torch.randn(1, 1, 1, V, generator=g, dtype=F64)
            d = d0.clone().requires_grad_(True)
            with warnings.catch_warnings():  # input validation reads d's range from a grad-tracking tensor
                warnings.simplefilter("ignore", UserWarning)
                _, ST = osdn_recurrent(
                    k, k, v, beta, d.reshape(1, 1, 1, K), initial_state=S0, output_final_state=True
                )
            kk = k[0, 0, 0]
            e = kk @ S0[0, 0] - v[0, 0, 0]
            rplus = kk @ ST[0, 0] - v[0, 0, 0]
            ratio = (rplus**2).sum() / (e**2).sum()
            (gr,) = torch.autograd.grad(ratio, d)
            grads.append(gr)
        u = k[0, 0, 0] ** 2
        b = beta.reshape(())
        ref = -2 * b * (1 - b * (u * d0).sum()) * u
        worst_err = worst(worst_err, rel_err(grads[0], ref), rel_err(grads[1], ref))
        spread = worst(spread, rel_err(grads[0], grads[1]))
    return {"autograd_grad_vs_state_free_formula": worst_err, "autograd_grad_two_memories": spread}


@claim(
    "C5",
    title="Ratio/hyper d-update is state-free and affine",
    statement=(
        "∇_d‖r⁺‖²/‖e‖² = −2β(1−s)u (memory cancels); d_{t+1} = (I − 2ηβ²uuᵀ)d_t + 2ηβu token by token; "
        "d_init ↦ d affine; the same d for any values/initial state"
    ),
    assumptions=[
        "rule ratio or hyper",
        "step independent of d (scheduled)",
        "no positivity projection (positivity='none'; affinity needs it)",
    ],
    comparison="equal within tol",
    quick=dict(B=2, T=64, H=2, K=6, V=4, eta=0.3, draws=6),
    full=dict(B=4, T=512, H=2, K=16, V=8, eta=0.3, draws=40),
    proof="proofs_check.c5_affine_update",
)
def c5_affine(size: Size, seed: int) -> Outcome:
    g = generator(seed, 5)
    ev = _autograd_state_free(g, size.K, size.V, size.draws)
    k, beta = _keys(g, size.B, size.T, size.H, size.K)
    u = k * k
    step = ScheduledStep(constant(size.eta))
    for rule in ("ratio", "hyper"):
        sc = d_scan(k, beta, rule=rule, step=step, d_init=1.0, positivity="none")
        d_all = torch.cat([sc.d, sc.d_final[:, None]], 1)  # d_1 .. d_{T+1}
        d_t, d_next = d_all[:, :-1], d_all[:, 1:]
        s = beta * (u * d_t).sum(-1)
        if rule == "ratio":
            pred = d_t - 2 * size.eta * beta[..., None] ** 2 * (u * d_t).sum(-1, keepdim=True) * u
            pred = pred + 2 * size.eta * beta[..., None] * u
        else:
            pred = d_t + size.eta * (beta * (1 - s) / (k * k).sum(-1))[..., None] * u
        ev[f"{rule}: d_scan vs affine recurrence"] = rel_err(d_next, pred)
        ev[f"{rule}: floor never active"] = float(sc.nonpositive.any())
        # Affinity of d_init ↦ d: d(λa + (1 − λ)b) = λ d(a) + (1 − λ) d(b).
        a0 = 0.5 + torch.rand(size.K, generator=g, dtype=F64)
        b0 = 0.5 + torch.rand(size.K, generator=g, dtype=F64)
        lam = 0.3
        da = d_scan(k, beta, rule=rule, step=step, d_init=a0, positivity="none").d
        db = d_scan(k, beta, rule=rule, step=step, d_init=b0, positivity="none").d
        dm = d_scan(k, beta, rule=rule, step=step, d_init=lam * a0 + (1 - lam) * b0, positivity="none").d
        ev[f"{rule}: affinity in d_init"] = rel_err(dm, lam * da + (1 - lam) * db)
    # State-free in the full model: different values and initial states give the same d.
    v1 = torch.randn(size.B, size.T, size.H, size.V, generator=g, dtype=F64)
    v2 = torch.randn(size.B, size.T, size.H, size.V, generator=g, dtype=F64)
    h2 = torch.randn(size.B, size.H, size.K, size.V, generator=g, dtype=F64)
    r1 = osdn_adaptive(k, k, v1, beta, rule="ratio", step=step)
    r2 = osdn_adaptive(k, k, v2, beta, rule="ratio", step=step, initial_state=h2)
    ev["osdn_adaptive: d with different values/state"] = rel_err(r2.d, r1.d)
    floors = [ev.pop(f"{r}: floor never active") for r in ("ratio", "hyper")]
    measured = worst(*ev.values())
    return Outcome(
        measured=measured,
        bound=rtol(F64),
        passed=measured <= rtol(F64),
        evidence=dict(
            ev,
            unprojected_d_went_nonpositive=any(floors),
            eta=size.eta,
            shape=[size.B, size.T, size.H, size.K, size.V],
            dtype="float64",
            seed=seed,
        ),
    )


@claim(
    "C5-normalized",
    title="Normalized step: 1 − s_new = (1 − c)(1 − s_old)",
    statement="η_t = c/(2β_t²‖u_t‖²) makes 1 − β_t u_tᵀd_{t+1} = (1 − c)(1 − β_t u_tᵀd_t) on the current key",
    assumptions=["rule ratio", "c ∈ (0, 2)", "tokens where the positivity floor is inactive"],
    comparison="equal within tol",
    quick=dict(B=2, T=64, H=2, K=6, cs=(0.3, 1.0, 1.7)),
    full=dict(B=4, T=512, H=4, K=32, cs=(0.1, 0.5, 1.0, 1.5, 1.9)),
    proof="proofs_check.c5_normalized_step",
)
def c5_normalized(size: Size, seed: int) -> Outcome:
    g = generator(seed, 51)
    k, beta = _keys(g, size.B, size.T, size.H, size.K)
    u = k * k
    ev, used = {}, {}
    for c in size.cs:
        sc = d_scan(k, beta, rule="ratio", step=NormalizedStep(c))
        d_next = torch.cat([sc.d[:, 1:], sc.d_final[:, None]], 1)
        s_old = beta * (u * sc.d).sum(-1)
        s_new = beta * (u * d_next).sum(-1)
        ok = ~sc.floor_active
        lhs, rhs = (1 - s_new)[ok], ((1 - c) * (1 - s_old))[ok]
        ev[f"c={c}"] = float(((lhs - rhs).abs() / (1 - s_old)[ok].abs().clamp_min(ABS_FLOOR)).max())
        used[f"c={c}"] = int(ok.sum())
    return Outcome(
        measured=worst(*ev.values()),
        bound=rtol(F64),
        evidence=dict(max_rel_err=ev, tokens_checked=used, dtype="float64", seed=seed),
    )


@claim(
    "C5-neg-raw",
    title="Raw hypergradient is state-dependent",
    statement="the raw (Baydin) rule −β‖e‖²(1−s)u gives different d for different values: no pre-scan possible",
    assumptions=["state-free feedback DROPPED (rule raw)"],
    comparison="lower bound",
    negative_control=True,
    quick=dict(B=2, T=64, H=2, K=6, V=4, eta=0.1),
    full=dict(B=4, T=512, H=2, K=16, V=8, eta=0.1),
)
def c5_neg_raw(size: Size, seed: int) -> Outcome:
    g = generator(seed, 52)
    k, beta = _keys(g, size.B, size.T, size.H, size.K)
    v1 = torch.randn(size.B, size.T, size.H, size.V, generator=g, dtype=F64)
    v2 = torch.randn(size.B, size.T, size.H, size.V, generator=g, dtype=F64)
    # A scheduled step: the normalized step η = c/(β²‖e‖²‖u‖²) would cancel ‖e‖² and make raw = ratio.
    step = ScheduledStep(constant(size.eta))
    raw = rel_err(
        osdn_adaptive(k, k, v2, beta, rule="raw", step=step).d,
        osdn_adaptive(k, k, v1, beta, rule="raw", step=step).d,
    )
    ratio = rel_err(
        osdn_adaptive(k, k, v2, beta, rule="ratio", step=step).d,
        osdn_adaptive(k, k, v1, beta, rule="ratio", step=step).d,
    )
    bound = NEG_CONTROL_SEPARATION * rtol(F64)
    return Outcome(
        measured=raw,
        bound=bound,
        # rel_err gives inf for a NaN/inf d: a raw rule that blew up must not count as "state-dependent".
        passed=math.isfinite(raw) and raw >= bound and ratio <= rtol(F64),
        evidence=dict(raw_rule_d_difference=raw, ratio_rule_d_difference=ratio, dtype="float64", seed=seed),
    )
