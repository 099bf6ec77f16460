"""APF (spec §8): the gate formula, priors, rate rules, triggers (with negative controls), clock restart, serialisation."""

from __future__ import annotations

import pytest
import tomli_w
import tomllib
import torch

from osdn_theory import apf as A
from osdn_theory.apf import (
    APF,
    CalibratedScalarPrior,
    ConstantForgetting,
    DecayAfterTrigger,
    NoForgetting,
    NoveltyTrigger,
    OnesPrior,
    RunningJacobiPrior,
    SpikeTrigger,
)
from osdn_theory.preconditioners import AdaGradStep, NormalizedStep, ScheduledStep, d_scan, osdn_adaptive
from osdn_theory.schedules import inverse_sqrt
from osdn_theory.tolerances import EXACT_FLOAT64, NEGATIVE_CONTROL_GAP, rel_err

F64 = torch.float64

# Piecewise-stationary stream: Gaussian keys whose feature-variance profile (log-spaced over two decades)
# is reversed at token L. Trigger thresholds sit between the statistic's range on the stationary stream
# (over seeds 0-4: spike ratio ≤ 1.8 after 20 tokens, novelty ≤ 0.63 after 50) and its smallest per-(b, h)
# peak within 50 tokens of the switch (spike ≥ 5.7, novelty ≥ 1.2).
B, H, K, L = 2, 2, 16, 400
BETA = 0.5
SPIKE = SpikeTrigger(fast=0.9, slow=0.995, tau=4.0, warmup=20)
NOVELTY = NoveltyTrigger(fast=0.9, slow=0.99, tau=0.9, warmup=50)


def _profile_streams(seed=2, switch_bh=None):
    g = torch.Generator().manual_seed(seed)
    a1 = torch.logspace(-1, 1, K, dtype=F64)
    z = torch.randn(B, 2 * L, H, K, generator=g, dtype=F64)
    stationary = z * a1.sqrt()
    switched = stationary.clone()
    if switch_bh is None:
        switched[:, L:] = z[:, L:] * a1.flip(0).sqrt()
    else:
        b, h = switch_bh
        switched[b, L:, h] = z[b, L:, h] * a1.flip(0).sqrt()
    return stationary, switched, torch.full((B, 2 * L, H), BETA, dtype=F64)


def _stream(T=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.nn.functional.normalize(torch.randn(2, T, 3, 5, generator=g, dtype=F64), dim=-1)
    return k, 0.3 + 0.7 * torch.rand(2, T, 3, generator=g, dtype=F64)


def _ema(x, rho):
    """Bias-corrected EMA along dim 1."""
    m, w, out = torch.zeros_like(x[:, 0]), 0.0, []
    for t in range(x.shape[1]):
        m = rho * m + (1 - rho) * x[:, t]
        w = rho * w + (1 - rho)
        out.append(m / w)
    return torch.stack(out, 1)


# ---------------------------------------------------------------------------------------------------------
# The gate and the priors
# ---------------------------------------------------------------------------------------------------------


def _expected_prior(prior, k, beta):
    u = k * k
    if isinstance(prior, OnesPrior):
        return torch.ones_like(u)
    if isinstance(prior, CalibratedScalarPrior):
        m = _ema(u.sum(-1), prior.ema).clamp_min(prior.eps)
        return (prior.c / (beta * m))[..., None].expand_as(u)
    return prior.c / _ema(u, prior.ema).clamp_min(prior.eps)


PRIORS = [OnesPrior(), CalibratedScalarPrior(ema=0.8, c=0.7), RunningJacobiPrior(c=0.3, ema=0.9)]


@pytest.mark.parametrize("prior", PRIORS, ids=lambda p: p.name)
def test_lambda_one_resets_to_prior_every_token(prior):
    k, beta = _stream()
    sc = d_scan(k, beta, step=ScheduledStep(0.3), apf=APF(prior, ConstantForgetting(1.0)))
    expected = _expected_prior(prior, k, beta)
    assert rel_err(sc.prior, expected) <= EXACT_FLOAT64
    assert rel_err(sc.d[:, 1:], expected[:, :-1]) <= EXACT_FLOAT64  # d_{t+1} = d^{prior}_t
    assert rel_err(sc.d_final, expected[:, -1]) <= EXACT_FLOAT64
    assert bool((sc.lam == 1.0).all())


def test_lambda_zero_is_no_apf():
    k, beta = _stream()
    base = d_scan(k, beta, step=ScheduledStep(inverse_sqrt(0.3)))
    for rate in (NoForgetting(), ConstantForgetting(0.0)):
        sc = d_scan(
            k, beta, step=ScheduledStep(inverse_sqrt(0.3)), apf=APF(RunningJacobiPrior(0.2, 0.9), rate)
        )
        assert torch.equal(sc.d, base.d)


def test_gate_formula():
    # d_{t+1} = (1 − λ) d^{upd}_{t+1} + λ d^{prior}_t, with d^{upd} the plain ratio step from d_t
    k, beta = _stream(seed=1)
    lam, eta = 0.35, 0.2
    prior = CalibratedScalarPrior(ema=0.5)
    sc = d_scan(k, beta, step=ScheduledStep(eta), apf=APF(prior, ConstantForgetting(lam)), positivity="none")
    u = k * k
    for t in range(k.shape[1]):
        d = sc.d[:, t]
        s = beta[:, t] * (u[:, t] * d).sum(-1)
        d_upd = d + 2 * eta * (beta[:, t] * (1 - s))[..., None] * u[:, t]
        want = (1 - lam) * d_upd + lam * sc.prior[:, t]
        got = sc.d[:, t + 1] if t + 1 < k.shape[1] else sc.d_final
        assert rel_err(got, want) <= EXACT_FLOAT64


#: statistical threshold: an EMA with decay 0.999 over 800 Gaussian tokens estimates E u to ~5%
JACOBI_PRIOR_ERR = 0.1


def test_running_jacobi_prior_is_c6_fixed_point_on_stationary_keys():
    # c = 1/(β(K+2)) turns the running Jacobi prior into d* = a⁻¹/(β(K+2)) (up to EMA noise)
    stationary, _, beta = _profile_streams()
    a = torch.logspace(-1, 1, K, dtype=F64)
    d_star = 1.0 / a / (BETA * (K + 2))
    prior = RunningJacobiPrior(c=1.0 / (BETA * (K + 2)), ema=0.999)
    sc = d_scan(stationary, beta, apf=APF(prior, ConstantForgetting(1.0)))
    err = float(((sc.d_final - d_star).norm(dim=-1) / d_star.norm()).mean())
    assert err < JACOBI_PRIOR_ERR


# ---------------------------------------------------------------------------------------------------------
# Rates and triggers
# ---------------------------------------------------------------------------------------------------------


def test_decay_after_trigger_formula_without_trigger():
    k, beta = _stream(T=30)
    sc = d_scan(k, beta, apf=APF(OnesPrior(), DecayAfterTrigger(lam0=0.8, half_life=5.0)))
    t = torch.arange(1, 31, dtype=F64)
    want = (0.8 * 2.0 ** (-(t - 1) / 5.0))[None, :, None].expand(2, 30, 3)
    assert rel_err(sc.lam, want) <= EXACT_FLOAT64
    assert not bool(sc.triggered.any())


@pytest.mark.parametrize("trigger", [SPIKE, NOVELTY], ids=["spike", "novelty"])
def test_trigger_fires_on_profile_switch_not_on_stationary_stream(trigger):
    stationary, switched, beta = _profile_streams()
    apf = APF(RunningJacobiPrior(1.0 / (BETA * (K + 2)), ema=0.9), trigger)
    step = NormalizedStep(0.2)
    neg = d_scan(stationary, beta, step=step, apf=apf)
    assert not bool(neg.triggered.any())  # negative control: no change, no firing
    assert torch.equal(neg.d, d_scan(stationary, beta, step=step).d)  # so the gate never acted
    pos = d_scan(switched, beta, step=step, apf=apf)
    assert not bool(pos.triggered[:, :L].any())
    fired_after = pos.triggered[:, L : L + 50].any(1)
    assert bool(fired_after.all())  # every (b, h) detects the switch within 50 tokens
    first = pos.triggered[:, L:].float().argmax(1)
    assert int(first.max()) < 50
    # the gate reset d to the prior at the firing token
    assert bool((pos.lam[pos.triggered] == 1.0).all())


def test_triggers_are_per_head():
    _, switched, beta = _profile_streams(switch_bh=(1, 0))
    for trig in (SPIKE, NOVELTY):
        sc = d_scan(switched, beta, step=NormalizedStep(0.2), apf=APF(OnesPrior(), trig))
        fired = sc.triggered.any(1)
        assert bool(fired[1, 0]) and int(fired.sum()) == 1


def test_novelty_trigger_reads_keys_only():
    _, switched, beta = _profile_streams()
    apf = APF(OnesPrior(), NOVELTY)
    a = d_scan(switched, beta, step=NormalizedStep(0.2), apf=apf)
    b = d_scan(switched, beta, step=ScheduledStep(0.01), d_init=0.3, apf=apf)
    assert torch.equal(a.triggered, b.triggered) and bool(a.triggered.any())
    assert not APF(OnesPrior(), NOVELTY).depends_on_d and APF(OnesPrior(), SPIKE).depends_on_d


def test_spike_statistic_matches_definition():
    _, switched, beta = _profile_streams()
    trig = SpikeTrigger(fast=0.9, slow=0.995, tau=4.0, lam=0.25, warmup=20)
    sc = d_scan(switched, beta, step=NormalizedStep(0.2), apf=APF(OnesPrior(), trig))
    r = sc.feedback  # (1 − s_t)² of the d that wrote the token
    stat = (_ema(r, 0.9) + trig.eps) / (_ema(r, 0.995) + trig.eps)
    above = stat > trig.tau
    rising = above & ~torch.cat([torch.zeros_like(above[:, :1]), above[:, :-1]], 1)
    rising[:, :20] = False
    assert torch.equal(sc.triggered, rising) and bool(rising.any())
    assert rel_err(sc.lam, 0.25 * rising.to(F64)) == 0.0


def test_decay_after_trigger_with_trigger():
    _, switched, beta = _profile_streams()
    rate = DecayAfterTrigger(lam0=0.9, half_life=10.0, trigger=NOVELTY)
    sc = d_scan(switched, beta, step=NormalizedStep(0.2), apf=APF(OnesPrior(), rate))
    t = torch.arange(1, 2 * L + 1, dtype=F64)[None, :, None]
    fired_t = torch.where(sc.triggered, t, torch.tensor(float("-inf"), dtype=F64))
    t_star = torch.cummax(fired_t, dim=1).values  # last firing ≤ t
    want = torch.where(torch.isfinite(t_star), 0.9 * 2.0 ** (-(t - t_star) / 10.0), 0.0)
    assert bool(sc.triggered.any()) and rel_err(sc.lam, want) <= EXACT_FLOAT64
    assert bool((sc.lam[:, :L] == 0).all())


@pytest.mark.parametrize(
    "step", [ScheduledStep(inverse_sqrt(0.05)), AdaGradStep(0.05)], ids=["sched", "adagrad"]
)
def test_restart_clock(step):
    _, switched, beta = _profile_streams()
    apf = APF(OnesPrior(), NoveltyTrigger(0.9, 0.99, 0.9, lam=0.0, warmup=50), restart_clock=True)
    sc = d_scan(switched, beta, step=step, apf=apf)
    no = d_scan(switched, beta, step=step, apf=APF(apf.prior, apf.rate, restart_clock=False))
    assert bool(sc.triggered.any())
    first = int(sc.triggered.any(0).any(-1).float().argmax())
    assert torch.equal(sc.d[:, : first + 1], no.d[:, : first + 1])  # identical up to the first firing
    if isinstance(step, ScheduledStep):
        # the firing token's update uses step 1 of the schedule, the next one step 2
        assert rel_err(sc.step[sc.triggered], torch.full_like(sc.step[sc.triggered], 0.05)) <= EXACT_FLOAT64
        t = torch.arange(1, 2 * L + 1)[None, :, None].expand_as(sc.step)
        assert rel_err(no.step, inverse_sqrt(0.05)(t)) <= EXACT_FLOAT64
        # negative control: with the clock restarted, the steps after the first firing differ
        assert rel_err(sc.step, no.step) > NEGATIVE_CONTROL_GAP
    else:
        # AdaGrad forgot its accumulator: η_t = eta0/√(g_t ⊙ g_t + eps) on every firing token
        u = switched * switched
        s = beta * (u * sc.d).sum(-1)
        g = (-2 * beta * (1 - s))[..., None] * u
        want = step.eta0 / torch.sqrt(g * g + step.eps)
        assert rel_err(sc.step[sc.triggered], want[sc.triggered]) <= EXACT_FLOAT64
        assert bool((sc.step[sc.triggered] > no.step[sc.triggered]).any())


def test_apf_in_osdn_adaptive_all_rules():
    g = torch.Generator().manual_seed(4)
    _, switched, beta = _profile_streams()
    k = switched[:1, : L + 60, :1] / 4.0
    beta = beta[:1, : L + 60, :1]
    q = torch.randn(k.shape, generator=g, dtype=F64)
    v = torch.randn(1, L + 60, 1, 3, generator=g, dtype=F64)
    apf = APF(OnesPrior(), NOVELTY)
    step = ScheduledStep(0.01)
    ref = d_scan(k, beta, step=step, apf=apf)
    assert bool(ref.triggered.any())
    res = osdn_adaptive(q, k, v, beta, step=step, apf=apf)
    assert torch.equal(res.d, ref.d)
    for rule in ("raw", "next"):
        r = osdn_adaptive(q, k, v, beta, rule=rule, step=step, apf=apf)
        assert torch.equal(r.scan.triggered[:, : L + 59], ref.triggered[:, : L + 59])  # keys-only trigger


# ---------------------------------------------------------------------------------------------------------
# Serialisation and errors
# ---------------------------------------------------------------------------------------------------------

GATES = [
    APF(),
    APF(OnesPrior(), ConstantForgetting(0.1)),
    APF(CalibratedScalarPrior(0.9, c=0.5), SpikeTrigger(0.8, 0.99, 5.0, lam=0.5), restart_clock=True),
    APF(RunningJacobiPrior(0.05, 0.95), DecayAfterTrigger(0.5, 20.0, trigger=NoveltyTrigger(0.8, 0.99, 0.7))),
    APF(RunningJacobiPrior(0.05, 0.95), DecayAfterTrigger(0.5, 20.0)),
]


@pytest.mark.parametrize("gate", GATES, ids=lambda g: f"{g.prior.name}-{g.rate.name}")
def test_apf_round_trip(gate):
    d = A.to_dict(gate)
    assert A.from_dict(d) == gate and APF.from_dict(d) == gate and A.as_apf(d) == gate
    text = tomli_w.dumps({"apf": d})
    assert APF.from_dict(tomllib.loads(text)["apf"]) == gate
    # components too, and the short form without the gate's own name
    assert A.from_dict(A.to_dict(gate.rate)) == gate.rate and A.from_dict(A.to_dict(gate.prior)) == gate.prior
    short = {key: val for key, val in d.items() if key != "name"}
    assert APF.from_dict(short) == gate


@pytest.mark.parametrize(
    "make, arg",
    [
        (lambda: CalibratedScalarPrior(ema=1.0), "ema"),
        (lambda: CalibratedScalarPrior(ema=0.5, c=0.0), "c"),
        (lambda: RunningJacobiPrior(c=-1.0, ema=0.5), "c"),
        (lambda: RunningJacobiPrior(c=1.0, ema=-0.1), "ema"),
        (lambda: RunningJacobiPrior(c=1.0, ema=0.5, eps=0.0), "eps"),
        (lambda: ConstantForgetting(1.5), "lam"),
        (lambda: ConstantForgetting("x"), "lam"),
        (lambda: SpikeTrigger(0.99, 0.9, 2.0), "fast"),
        (lambda: SpikeTrigger(0.5, 1.0, 2.0), "slow"),
        (lambda: SpikeTrigger(0.5, 0.9, 0.0), "tau"),
        (lambda: SpikeTrigger(0.5, 0.9, 2.0, lam=-0.1), "lam"),
        (lambda: NoveltyTrigger(0.5, 0.9, 1.0, warmup=-1), "warmup"),
        (lambda: NoveltyTrigger(0.5, 0.9, 1.0, warmup=2.5), "warmup"),
        (lambda: DecayAfterTrigger(1.5, 10.0), "lam0"),
        (lambda: DecayAfterTrigger(0.5, 0.0), "half_life"),
        (lambda: DecayAfterTrigger(0.5, 10.0, trigger=ConstantForgetting(0.1)), "trigger"),
        (lambda: APF(prior=ConstantForgetting(0.1)), "prior"),
        (lambda: APF(rate=OnesPrior()), "rate"),
        (lambda: APF(restart_clock=1), "restart_clock"),
        (
            lambda: APF.from_dict({"prior": {"name": "ones"}, "rate": {"name": "sometimes"}}),
            "^rate: expected 'name'",
        ),
        (lambda: A.from_dict({"name": "inverse_sqrt", "value": 1.0}), "^d: expected the name"),
        (lambda: A.from_dict({"name": "ones", "c": 1.0}), "^d: unknown keys"),
        (lambda: A.to_dict(NormalizedStep(0.5)), "obj"),
        (lambda: A.as_apf("spike"), "apf"),
        (lambda: A.as_apf({"name": "ones"}), "^apf: expected 'name'"),
        (lambda: A.as_apf({"bogus": 1}), "^apf: unknown keys"),
        (lambda: A.as_apf({"rate": {"name": "sometimes"}}), "^rate: expected 'name'"),
    ],
)
def test_bad_arguments(make, arg):
    with pytest.raises(ValueError, match=arg if arg.startswith("^") else rf"^{arg}:"):
        make()
