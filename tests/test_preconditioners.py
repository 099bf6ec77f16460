"""The online preconditioner (spec §5): d-scan, delta-rule form, affinity, state-dependent rules, C6 quick check."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from osdn_theory.apf import APF, NoveltyTrigger, OnesPrior, SpikeTrigger
from osdn_theory.preconditioners import (
    DEFAULT_D_MIN,
    AdaGradStep,
    NormalizedStep,
    ScheduledStep,
    as_step_rule,
    d_scan,
    from_dict,
    hyper_feedback,
    osdn_adaptive,
    ratio_feedback,
    ratio_scan_as_delta_rule,
    to_dict,
)
from osdn_theory.recurrences import osdn_recurrent
from osdn_theory.schedules import constant, exponential_decay, inverse_sqrt
from osdn_theory.tolerances import EXACT_FLOAT64, NEGATIVE_CONTROL_GAP, rel_err, rtol

F64 = torch.float64

#: C6 quick check (statistical thresholds, not numerical tolerances): after 3000 tokens of an
#: η_0/√t ratio scan on stationary Gaussian keys, the Polyak average of d over the second half lies
#: within CONVERGED of d*, while the unscaled Jacobi direction a⁻¹/(βK) (a wrong candidate, 40% away)
#: stays beyond WRONG_TARGET.
CONVERGED = 0.1
WRONG_TARGET = 0.3


def _stream(B=2, T=17, H=3, K=5, V=4, *, seed=0, normalize=True, gated=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)
    k = r(B, T, H, K)
    if normalize:
        k = torch.nn.functional.normalize(k, dim=-1)
    out = dict(
        q=r(B, T, H, K), k=k, v=r(B, T, H, V), beta=0.3 + 0.7 * torch.rand(B, T, H, generator=g, dtype=F64)
    )
    if gated:
        out["alpha"] = 0.6 + 0.4 * torch.rand(B, T, H, generator=g, dtype=F64)
    return out


# ---------------------------------------------------------------------------------------------------------
# Argument errors
# ---------------------------------------------------------------------------------------------------------

_X = _stream(B=1, T=4, H=2, K=3, V=2)


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        (dict(k=_X["k"][0]), "k"),
        (dict(k=_X["k"][:, :0]), "k"),
        (dict(k=_X["k"].clone().fill_(float("nan"))), "k"),
        (dict(k=_X["k"].to(torch.int64)), "k"),
        (dict(beta=_X["beta"][..., :1]), "beta"),
        (dict(beta=_X["beta"] * 0.0), "beta"),
        (dict(beta=_X["beta"] + 1.0), "beta"),
        (dict(beta=_X["beta"].float(), dtype=None), "beta"),
        (dict(rule="newton"), "rule"),
        (dict(rule="raw"), "rule"),
        (dict(rule="next"), "rule"),
        (dict(step="big"), "step"),
        (dict(step=lambda t: 0.1), "step"),
        (dict(step={"name": "inverse_sqrt", "value": 0.5}), "step"),
        (dict(step={"name": "normalized", "c": 0.5, "bogus": 1}), "^step: unknown keys"),
        (dict(step=-0.1), "step"),
        (dict(d_init=0.0), "d_init"),
        (dict(d_init=-torch.ones(3)), "d_init"),
        (dict(d_init=torch.ones(4)), "d_init"),
        (dict(d_init=torch.ones(1, 1, 2, 3)), "d_init"),
        (dict(d_init="one"), "d_init"),
        (dict(d_min=0.0), "d_min"),
        (dict(positivity="none", d_min=0.1), "d_min"),
        (dict(positivity="box"), "positivity"),
        (dict(apf="spike"), "apf"),
        (dict(apf={"restart": True}), "^apf: unknown keys"),
        (dict(alpha=_X["beta"] * 0.0), "alpha"),
        (dict(alpha=_X["beta"][0]), "alpha"),
    ],
)
def test_d_scan_bad_arguments(kwargs, arg):
    args = dict(k=_X["k"], beta=_X["beta"])
    args.update(kwargs)
    with pytest.raises(ValueError, match=arg if arg.startswith("^") else rf"^{arg}:"):
        d_scan(args.pop("k"), args.pop("beta"), **args)


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        (dict(q=_X["q"][..., :2]), "q"),
        (dict(v=_X["v"][:, :2]), "v"),
        (dict(rule="adam"), "rule"),
        (dict(s_max=2.0), "s_max"),
        (dict(scale=0.0), "scale"),
        (dict(initial_state=torch.zeros(1, 2, 3, 5, dtype=F64)), "initial_state"),
        (dict(rule="raw", step=-0.5), "step"),
        (dict(rule="next", positivity="none", d_min=1.0), "d_min"),
        (dict(rule="raw", apf=3), "apf"),
        (dict(rule="raw", d_init=torch.zeros(3)), "d_init"),
    ],
)
def test_osdn_adaptive_bad_arguments(kwargs, arg):
    args = dict(_X)
    args.update(kwargs)
    with pytest.raises(ValueError, match=arg if arg.startswith("^") else rf"^{arg}:"):
        osdn_adaptive(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("beta"), **args)


@pytest.mark.parametrize(
    "make, arg",
    [
        (lambda: NormalizedStep(0.0), "c"),
        (lambda: NormalizedStep(2.0), "c"),
        (lambda: AdaGradStep(0.0), "eta0"),
        (lambda: AdaGradStep(0.1, eps=0.0), "eps"),
        (lambda: AdaGradStep(0.1, diagonal="yes"), "diagonal"),
        (lambda: ScheduledStep(lambda t: 0.1), "schedule"),
        (lambda: as_step_rule(None), "step"),
        (lambda: from_dict({"name": "inverse_sqrt", "value": 0.1}), "^d: expected 'name'"),
        (lambda: to_dict(inverse_sqrt(0.1)), "rule"),
        (lambda: ratio_scan_as_delta_rule(_X["k"], _X["beta"], 1.5), "c"),
        (lambda: ratio_scan_as_delta_rule(_X["k"], _X["beta"], torch.ones(1, 4, 2, dtype=F64) * 0.0), "c"),
        (lambda: ratio_scan_as_delta_rule(_X["k"], _X["beta"], torch.ones(4, 2, dtype=F64)), "c"),
        (lambda: ratio_scan_as_delta_rule(_X["k"] * 0.0, _X["beta"], 0.5), "k"),
        (lambda: ratio_feedback(_X["k"], _X["beta"], torch.ones(2)), "d"),
        (lambda: ratio_feedback(_X["k"], _X["beta"][0], torch.ones(3)), "beta"),
        (lambda: ratio_feedback(_X["k"], _X["beta"] * 0.0, torch.ones(3)), "beta"),
        (lambda: ratio_feedback(_X["k"], _X["beta"], torch.tensor([1.0, float("nan"), 1.0])), "d"),
        (lambda: hyper_feedback(_X["k"].clone().fill_(float("inf")), _X["beta"], torch.ones(3)), "k"),
        (lambda: hyper_feedback(_X["k"], _X["beta"] + 1.0, torch.ones(3)), "beta"),
    ],
)
def test_step_rule_and_helper_bad_arguments(make, arg):
    with pytest.raises(ValueError, match=arg if arg.startswith("^") else rf"^{arg}:"):
        make()


def test_positivity_none_raises_and_floor_labels():
    g = torch.Generator().manual_seed(3)
    k = torch.randn(1, 30, 1, 2, generator=g, dtype=F64) * torch.tensor([3.0, 0.1], dtype=F64)
    beta = torch.ones(1, 30, 1, dtype=F64)
    d0 = torch.tensor([5.0, 5.0], dtype=F64)  # s ≫ 1: the first normalized step drives d below 0
    sc = d_scan(k, beta, step=NormalizedStep(1.5), d_init=d0, positivity="none")  # exact, unprojected
    assert bool(sc.nonpositive.any()) and sc.affine
    q, v = torch.zeros_like(k), torch.ones(1, 30, 1, 1, dtype=F64)
    for rule in ("ratio", "raw"):  # the memory write refuses d <= 0
        with pytest.raises(ValueError, match="positivity"):
            osdn_adaptive(q, k, v, beta, rule=rule, step=NormalizedStep(1.5), d_init=d0, positivity="none")
    sc = d_scan(k, beta, step=NormalizedStep(1.5), d_init=d0, d_min=1e-3)
    assert bool(sc.floor_active.any()) and not sc.affine
    assert float(sc.d.min()) >= 1e-3
    sc = d_scan(k, beta, step=NormalizedStep(1.5), d_init=d0)
    assert float(sc.d.min()) >= DEFAULT_D_MIN


def test_divergent_step_raises():
    x = _stream(T=200, normalize=False)
    with pytest.raises(ValueError, match="step"):
        d_scan(x["k"], x["beta"], step=ScheduledStep(50.0), positivity="none")


# ---------------------------------------------------------------------------------------------------------
# Protocol, shapes, serialisation
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(), (5,), (3, 5), (2, 3, 5)], ids=["float", "K", "HK", "BHK"])
def test_d_init_shapes_and_protocol(shape):
    x = _stream()
    g = torch.Generator().manual_seed(1)
    d0 = 1.3 if shape == () else 0.5 + torch.rand(*shape, generator=g, dtype=F64)
    sc = d_scan(x["k"], x["beta"], d_init=d0)
    assert sc.d.shape == (2, 17, 3, 5) and sc.d.dtype == F64
    assert torch.equal(sc.d[:, 0], torch.broadcast_to(torch.as_tensor(d0, dtype=F64), (2, 3, 5)))
    assert sc.feedback.shape == sc.write_gain.shape == sc.step.shape == sc.lam.shape == (2, 17, 3)
    assert sc.prior is None and not bool(sc.triggered.any()) and bool((sc.lam == 0).all())
    # feedback is the ratio feedback of the d that wrote the token
    assert rel_err(sc.feedback, ratio_feedback(x["k"], x["beta"], sc.d)) <= EXACT_FLOAT64


def test_d_scan_is_causal():
    x = _stream()
    a = d_scan(x["k"], x["beta"]).d
    k2 = x["k"].clone()
    k2[:, 9:] = -3.0 * k2[:, 9:] + 0.5
    b = d_scan(k2, x["beta"]).d
    assert torch.equal(a[:, :10], b[:, :10])  # d_10 uses tokens ≤ 9 only
    assert rel_err(a[:, 10], b[:, 10]) > NEGATIVE_CONTROL_GAP


@pytest.mark.parametrize(
    "rule",
    [
        NormalizedStep(0.3),
        ScheduledStep(inverse_sqrt(0.2, offset=1)),
        AdaGradStep(0.1),
        AdaGradStep(0.1, 1e-8, False),
    ],
    ids=lambda r: r.name + str(getattr(r, "diagonal", "")),
)
def test_step_rule_round_trip(rule):
    d = to_dict(rule)
    assert from_dict(d) == rule and as_step_rule(d) == rule
    assert as_step_rule(0.1) == ScheduledStep(constant(0.1))
    assert as_step_rule(inverse_sqrt(0.1)) == ScheduledStep(inverse_sqrt(0.1))


# ---------------------------------------------------------------------------------------------------------
# The state-free rules
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["ratio", "hyper"])
@pytest.mark.parametrize("gated", [False, True], ids=["ungated", "gated"])
def test_state_free_rules_match_scan_then_recurrence(rule, gated):
    x = _stream(gated=gated, seed=4)
    g = torch.Generator().manual_seed(5)
    init = torch.randn(2, 3, 5, 4, generator=g, dtype=F64)
    kw = dict(rule=rule, step=ScheduledStep(inverse_sqrt(0.3)))
    res = osdn_adaptive(**x, **kw, s_max=1.5, initial_state=init, output_final_state=True)
    sc = d_scan(x["k"], x["beta"], **kw)
    o, final, diag = osdn_recurrent(
        x["q"],
        x["k"],
        x["v"],
        x["beta"],
        sc.d,
        alpha=x.get("alpha"),
        s_max=1.5,
        initial_state=init,
        output_final_state=True,
        diagnostics=True,
    )
    assert torch.equal(res.d, sc.d) and torch.equal(res.o, o) and torch.equal(res.final_state, final)
    assert torch.equal(res.diagnostics.write_gain, diag.write_gain)
    # feedback of the result is the measured token-local ratio ‖r⁺‖²/‖e‖² (with the clip)
    measured = (diag.residual_post**2).sum(-1) / (diag.residual_pre**2).sum(-1)
    assert rel_err(res.feedback, measured) <= rtol(F64)


@pytest.mark.parametrize("rule", ["ratio", "hyper"])
def test_state_free_rules_ignore_memory_state(rule):
    x = _stream(seed=6)
    g = torch.Generator().manual_seed(7)
    kw = dict(rule=rule, step=ScheduledStep(0.2), output_final_state=True)
    a = osdn_adaptive(**x, **kw)
    y = dict(x, v=torch.randn(x["v"].shape, generator=g, dtype=F64))
    b = osdn_adaptive(**y, initial_state=torch.randn(2, 3, 5, 4, generator=g, dtype=F64), **kw)
    assert torch.equal(a.d, b.d)
    assert rel_err(a.o, b.o) > NEGATIVE_CONTROL_GAP  # the memories differ, the preconditioner does not
    # negative control: the state-dependent raw rule sees the different values
    ar = osdn_adaptive(**x, **dict(kw, rule="raw"))
    br = osdn_adaptive(**y, **dict(kw, rule="raw"))
    assert rel_err(ar.d, br.d) > NEGATIVE_CONTROL_GAP


@pytest.mark.parametrize("normalize", [True, False], ids=["unit-keys", "raw-keys"])
def test_ratio_scan_equals_delta_rule_normalized(normalize):
    x = _stream(T=40, seed=8, normalize=normalize)
    g = torch.Generator().manual_seed(9)
    d0 = 0.5 + torch.rand(3, 5, generator=g, dtype=F64)
    for c in (0.3, 1.0):
        sc = d_scan(x["k"], x["beta"], step=NormalizedStep(c), d_init=d0, positivity="none")
        d, d_final = ratio_scan_as_delta_rule(x["k"], x["beta"], c, d_init=d0)
        assert rel_err(d, sc.d) <= EXACT_FLOAT64
        assert rel_err(d_final, sc.d_final) <= EXACT_FLOAT64


def test_ratio_scan_equals_delta_rule_scheduled():
    x = _stream(T=40, seed=10)
    sched = inverse_sqrt(0.4)
    sc = d_scan(x["k"], x["beta"], step=ScheduledStep(sched), positivity="none")
    u = x["k"] ** 2
    eta = sched(torch.arange(1, 41))[None, :, None]
    c = 2 * eta * x["beta"] ** 2 * (u * u).sum(-1)  # delta-rule strength 2η β² ‖u‖² (here ≤ 1)
    d, d_final = ratio_scan_as_delta_rule(x["k"], x["beta"], c)
    assert rel_err(d, sc.d) <= EXACT_FLOAT64 and rel_err(d_final, sc.d_final) <= EXACT_FLOAT64
    assert torch.allclose(sc.step, eta.expand(2, 40, 3), rtol=EXACT_FLOAT64, atol=0)


def test_explicit_affine_recurrences():
    x = _stream(T=12, seed=11, normalize=False)
    eta = 0.05
    for rule in ("ratio", "hyper"):
        sc = d_scan(x["k"], x["beta"], rule=rule, step=ScheduledStep(eta), positivity="none")
        d = torch.ones(2, 3, 5, dtype=F64)
        for t in range(12):
            u, b = x["k"][:, t] ** 2, x["beta"][:, t, :, None]
            w = 1.0 if rule == "ratio" else 1.0 / (2 * u.sum(-1, keepdim=True))  # hyper = ratio / (2‖k‖²)
            # d_{t+1} = (I − 2ηw β² u uᵀ) d + 2ηw β u
            d = d - 2 * eta * w * b**2 * u * (u * d).sum(-1, keepdim=True) + 2 * eta * w * b * u
            assert rel_err(sc.d[:, t + 1] if t < 11 else sc.d_final, d) <= EXACT_FLOAT64


@pytest.mark.parametrize("rule", ["ratio", "hyper"])
def test_normalized_step_contracts_current_key(rule):
    x = _stream(T=30, seed=12)
    for c in (0.25, 1.0, 1.7):
        sc = d_scan(x["k"], x["beta"], rule=rule, step=NormalizedStep(c), positivity="none")
        u, b = x["k"] ** 2, x["beta"]
        d_next = torch.cat([sc.d[:, 1:], sc.d_final[:, None]], 1)
        s_old, s_new = b * (u * sc.d).sum(-1), b * (u * d_next).sum(-1)
        # 1 − s_new = (1 − c)(1 − s_old) on the current key
        assert float(((1 - s_new) - (1 - c) * (1 - s_old)).abs().max()) <= EXACT_FLOAT64


@given(
    c=st.floats(0.05, 1.95),
    beta=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**16),
    scale=st.floats(0.1, 10.0),
)
def test_normalized_step_identity_property(c, beta, seed, scale):
    g = torch.Generator().manual_seed(seed)
    k = scale * torch.randn(1, 1, 1, 6, generator=g, dtype=F64)
    d0 = 0.1 + torch.rand(6, generator=g, dtype=F64)
    b = torch.full((1, 1, 1), beta, dtype=F64)
    sc = d_scan(k, b, step=NormalizedStep(c), d_init=d0, positivity="none")
    u = k[0, 0, 0] ** 2
    s_old, s_new = beta * float(u @ d0), beta * float(u @ sc.d_final[0, 0])
    assert abs((1 - s_new) - (1 - c) * (1 - s_old)) <= EXACT_FLOAT64 * max(1.0, abs(1 - s_old))


def test_ratio_and_hyper_agree_under_normalized_step():
    x = _stream(T=25, seed=13, normalize=False)
    a = d_scan(x["k"], x["beta"], rule="ratio", step=NormalizedStep(0.6))
    b = d_scan(x["k"], x["beta"], rule="hyper", step=NormalizedStep(0.6))
    assert rel_err(b.d, a.d) <= EXACT_FLOAT64
    c = d_scan(x["k"], x["beta"], rule="hyper", step=ScheduledStep(0.1))
    d = d_scan(x["k"], x["beta"], rule="ratio", step=ScheduledStep(0.1))
    assert rel_err(c.d, d.d) > NEGATIVE_CONTROL_GAP  # different objectives under a fixed step


def test_feedback_values_match_definitions():
    x = _stream(seed=14)
    res = osdn_adaptive(**x, rule="hyper", step=ScheduledStep(0.1))
    diag = res.diagnostics
    e2, r2 = (diag.residual_pre**2).sum(-1), (diag.residual_post**2).sum(-1)
    nk2 = (x["k"] ** 2).sum(-1)
    # h_t = (ℓ_t(S_t) − ℓ_t(S_{t−1})) / ‖∇ℓ_t‖²_F with ‖∇ℓ_t‖²_F = ‖e_t‖² ‖k_t‖²
    h = (0.5 * r2 - 0.5 * e2) / (e2 * nk2)
    assert rel_err(res.scan.rule_feedback, h) <= rtol(F64)
    assert rel_err(hyper_feedback(x["k"], x["beta"], res.d), h) <= rtol(F64)
    assert rel_err(res.scan.feedback, r2 / e2) <= rtol(F64)


def _final(sc):
    return sc.d_final


@pytest.mark.parametrize(
    "rule, step, apf",
    [
        ("ratio", ScheduledStep(inverse_sqrt(0.3)), None),
        ("hyper", ScheduledStep(exponential_decay(0.2, 0.9)), None),
        ("ratio", NormalizedStep(0.7), None),
        ("hyper", NormalizedStep(1.2), APF(OnesPrior(), NoveltyTrigger(0.5, 0.9, 0.2))),
    ],
    ids=["ratio-sched", "hyper-sched", "ratio-norm", "hyper-norm-novelty"],
)
@pytest.mark.parametrize("T", [1, 15])
def test_update_is_affine_in_d(rule, step, apf, T):
    x = _stream(T=T, seed=15)
    g = torch.Generator().manual_seed(16)
    d1 = 0.5 + torch.rand(2, 3, 5, generator=g, dtype=F64)
    d2 = 0.5 + torch.rand(2, 3, 5, generator=g, dtype=F64)
    theta = 0.3
    run = lambda d0: d_scan(x["k"], x["beta"], rule=rule, step=step, d_init=d0, apf=apf, positivity="none")
    a, b, m = run(d1), run(d2), run(theta * d1 + (1 - theta) * d2)
    assert a.affine and b.affine and m.affine
    assert rel_err(_final(m), theta * _final(a) + (1 - theta) * _final(b)) <= EXACT_FLOAT64
    assert rel_err(m.d, theta * a.d + (1 - theta) * b.d) <= EXACT_FLOAT64


@pytest.mark.parametrize(
    "step, apf",
    [
        (AdaGradStep(0.2), None),
        (NormalizedStep(0.7), APF(OnesPrior(), SpikeTrigger(0.0, 0.5, 1.5, lam=0.5))),
    ],
    ids=["adagrad", "spike-gate"],
)
def test_affinity_negative_controls(step, apf):
    x = _stream(T=15, seed=15)
    g = torch.Generator().manual_seed(16)
    d1 = 0.5 + torch.rand(2, 3, 5, generator=g, dtype=F64)
    d2 = 0.05 + 3 * torch.rand(2, 3, 5, generator=g, dtype=F64)
    theta = 0.3
    run = lambda d0: d_scan(x["k"], x["beta"], step=step, d_init=d0, apf=apf)
    a, b, m = run(d1), run(d2), run(theta * d1 + (1 - theta) * d2)
    assert not m.affine
    assert rel_err(_final(m), theta * _final(a) + (1 - theta) * _final(b)) > NEGATIVE_CONTROL_GAP


def test_adagrad_step_formula():
    x = _stream(T=6, seed=17)
    for diagonal in (True, False):
        sc = d_scan(x["k"], x["beta"], step=AdaGradStep(0.3, 1e-12, diagonal), positivity="none")
        G = 0.0
        for t in range(6):
            u, b = x["k"][:, t] ** 2, x["beta"][:, t]
            g = (-2 * b * (1 - b * (u * sc.d[:, t]).sum(-1)))[..., None] * u
            G = G + (g * g if diagonal else (g * g).sum(-1))
            eta = 0.3 / torch.sqrt(G + 1e-12)
            assert rel_err(sc.step[:, t], eta) <= EXACT_FLOAT64
            d_next = sc.d[:, t + 1] if t < 5 else sc.d_final
            step = eta if diagonal else eta[..., None]
            assert rel_err(d_next, sc.d[:, t] - step * g) <= EXACT_FLOAT64


# ---------------------------------------------------------------------------------------------------------
# State-dependent rules (raw, next)
# ---------------------------------------------------------------------------------------------------------


def _state_before(x, d, t, s_max=None):
    """Memory ``Sᵀ_{t}`` (after t tokens, 0-based) of an OSDN run written with ``d``."""
    B, _, H, K = x["k"].shape
    V = x["v"].shape[-1]
    if t == 0:
        return torch.zeros(B, H, K, V, dtype=F64)
    sl = {n: val[:, :t] for n, val in x.items()}
    _, M = osdn_recurrent(**sl, d=d[:, :t], s_max=s_max, output_final_state=True)
    return M


def _write(M, k, v, b, a, d, s_max):
    """Differentiable one-token OSDN write on ``Sᵀ`` (clip factor held constant)."""
    if a is not None:
        M = M * a[..., None, None]
    e = torch.einsum("bhk,bhkv->bhv", k, M) - v
    kt = d * k
    if s_max is not None:
        s_raw = b * (k * kt).sum(-1)
        c = torch.where(s_raw > s_max, s_max / s_raw, 1.0).detach()
        kt = kt * c[..., None]
    return M - b[..., None, None] * kt[..., :, None] * e[..., None, :]


@pytest.mark.parametrize("rule", ["raw", "next"])
@pytest.mark.parametrize("gated, s_max", [(False, None), (True, 0.9)], ids=["plain", "gated-clipped"])
def test_raw_and_next_gradients_match_autograd(rule, gated, s_max):
    x = _stream(T=9, seed=18, gated=gated)
    eta = 0.01
    res = osdn_adaptive(**x, rule=rule, step=ScheduledStep(eta), s_max=s_max, positivity="none")
    if s_max is not None:
        assert bool(res.diagnostics.clipped.any())  # the clip path is exercised
    a = x.get("alpha")
    last = 9 if rule == "raw" else 8
    for t in range(last):
        M = _state_before(x, res.d, t, s_max)
        d = res.d[:, t].clone().requires_grad_(True)
        k, v, b = x["k"][:, t], x["v"][:, t], x["beta"][:, t]
        M_new = _write(M, k, v, b, None if a is None else a[:, t], d, s_max)
        if rule == "raw":  # ½‖S_t(d) k_t − v_t‖²
            loss = 0.5 * ((torch.einsum("bhk,bhkv->bhv", k, M_new) - v) ** 2).sum()
        else:  # ½‖α_{t+1} S_t(d) k_{t+1} − v_{t+1}‖²
            M_next = M_new if a is None else M_new * a[:, t + 1, :, None, None]
            loss = (
                0.5
                * ((torch.einsum("bhk,bhkv->bhv", x["k"][:, t + 1], M_next) - x["v"][:, t + 1]) ** 2).sum()
            )
        (grad,) = torch.autograd.grad(loss, d)
        d_next = res.d[:, t + 1] if t + 1 < 9 else res.scan.d_final
        g_used = (res.d[:, t] - d_next) / eta
        assert rel_err(g_used, grad) <= rtol(F64), (rule, t)
    if rule == "next":  # the last token's feedback is never observed
        assert torch.equal(res.scan.d_final, res.d[:, -1])
        assert bool(torch.isnan(res.scan.rule_feedback[:, -1]).all())


@pytest.mark.parametrize("rule", ["raw", "next"])
def test_joint_rules_write_with_the_reported_d(rule):
    x = _stream(seed=19, gated=True)
    init = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(20), dtype=F64)
    res = osdn_adaptive(
        **x,
        rule=rule,
        step=ScheduledStep(inverse_sqrt(0.1)),
        s_max=1.2,
        initial_state=init,
        output_final_state=True,
    )
    o, final, diag = osdn_recurrent(
        x["q"],
        x["k"],
        x["v"],
        x["beta"],
        res.d,
        alpha=x["alpha"],
        s_max=1.2,
        initial_state=init,
        output_final_state=True,
        diagnostics=True,
    )
    assert rel_err(res.o, o) <= EXACT_FLOAT64 and rel_err(res.final_state, final) <= EXACT_FLOAT64
    assert rel_err(res.diagnostics.residual_post, diag.residual_post) <= EXACT_FLOAT64
    assert torch.equal(res.diagnostics.clip_factor, diag.clip_factor)


def test_raw_with_normalized_step_equals_ratio():
    # the raw feedback is ‖e_t‖²/2 times the ratio feedback: the normalized step removes the factor
    x = _stream(seed=21, normalize=False)
    raw = osdn_adaptive(**x, rule="raw", step=NormalizedStep(0.8))
    ratio = d_scan(x["k"], x["beta"], step=NormalizedStep(0.8))
    assert rel_err(raw.d, ratio.d) <= EXACT_FLOAT64
    assert not raw.scan.affine  # state-dependent rules are never labelled affine


# ---------------------------------------------------------------------------------------------------------
# C6 quick check: convergence toward the Jacobi fixed point
# ---------------------------------------------------------------------------------------------------------


def test_ratio_rule_converges_to_jacobi_fixed_point():
    g = torch.Generator().manual_seed(1)
    B, T, H, K, beta = 4, 3000, 2, 3, 0.5
    a = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    k = torch.randn(B, T, H, K, generator=g, dtype=F64) * a.sqrt()
    sc = d_scan(k, torch.full((B, T, H), beta, dtype=F64), step=ScheduledStep(inverse_sqrt(0.1)))
    d_star = 1.0 / a / (beta * (K + 2))
    err = lambda d, ref: float(((d - ref).norm(dim=-1) / ref.norm()).mean())
    early = sum(err(sc.d[:, t], d_star) for t in range(50, 300)) / 250
    late = sum(err(sc.d[:, t], d_star) for t in range(T // 2, T)) / (T - T // 2)
    polyak = sc.d[:, T // 2 :].mean(1)
    assert err(sc.d[:, 0], d_star) > 1.0  # started far away
    assert late < 0.6 * early  # moving toward d*
    assert err(polyak, d_star) < CONVERGED
    # negative control: the unscaled Jacobi direction a⁻¹/(βK) is not where it goes
    assert err(polyak, 1.0 / a / (beta * K)) > WRONG_TARGET
