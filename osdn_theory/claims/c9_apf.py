"""C9 — Adaptive Preconditioner Forgetting (APF) recovers after a shift (spec §8, docs/theory.md §9).

Stream: the piecewise-stationary keys of ``sweeps/apf_piecewise.toml`` (``K = 8``, condition 100, value noise
0.1, ``β = 1``): the feature-variance profile is re-permuted every ``segment_len`` tokens, so the per-segment
fixed point ``d*_seg = a_seg⁻¹/(β(K + 2))`` (C6) jumps at every shift and a learned ``d`` becomes stale.

Method (``C9``): OSDN with the ratio rule, the normalized step ``c = 0.1``, the clip ``s_max = 1.5`` and the APF
gate *decay after a calibration-spike trigger* (``λ₀ = 0.3``, half-life 256 tokens, ``τ = 3``) toward the
running-Jacobi prior ``c/EMA(k ⊙ k)`` with ``c = 1/(β(K + 2))`` — one of the schedules of the example sweep.

Every run is evaluated in-process by the sweep machinery (:func:`osdn_theory.sweeps.parse_spec`,
:func:`~osdn_theory.sweeps.plan_batches`, :func:`~osdn_theory.sweeps.evaluate_batch`, exactly what
``osdn sweep`` runs per batch), one realisation per stream seed, so every shift has its own recovery time:
the tokens after the shift until ``‖d_t − d*_seg‖/‖d*_seg‖ ≤ 0.25`` holds for 32 tokens in a row (censored at
the segment length when never reached).

Pre-registered verdict. Per-shift test: recovery within ``C9_MAX_RECOVERY_FRAC = 0.5`` of the segment length.
With ``k`` of ``n`` shifts passing, ``C9`` PASSES only when the lower end of the 95 % Clopper–Pearson interval
of ``k/n`` is ≥ ``C9_REQUIRED = 0.8`` (:func:`osdn_theory.stats.fraction_verdict`). The negative controls keep
everything but the forgetting — ``C9-neg-noforget``: no APF gate; ``C9-neg-toward-one``: the same trigger and
decay toward the prior ``1`` (DeltaNet) — and behave as predicted only when the interval's upper end is below
``C9_REQUIRED`` (the data exclude recovery), judged by the same per-shift test on the same streams.

Stream seeds: claim seed ``s`` uses the stream seeds ``s·n … s·n + n − 1`` (``n = size.seeds``), so claim seed 0
at the quick size covers the sweep's seeds 0–7 and reproduces its runs exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._validate import check_scalar
from ..stats import CONFIDENCE, FractionVerdict, fraction_verdict
from ..sweeps import evaluate_batch, parse_spec, plan_batches
from ._registry import Outcome, Size, claim

__all__ = ["C9_MAX_RECOVERY_FRAC", "C9_REQUIRED", "METHODS", "shift_recoveries"]

#: Pre-registered pass fraction: C9 PASSES only when the 95 % Clopper–Pearson lower end of the fraction of
#: shifts that recover in time is ≥ 0.8; a negative control behaves as predicted only when the upper end is < 0.8.
C9_REQUIRED = 0.8

#: Per-shift test: recovered within this fraction of the segment length after the shift.
C9_MAX_RECOVERY_FRAC = 0.5

_K = 8
_BETA = 1.0
_JACOBI = {"name": "running_jacobi", "c": 1.0 / (_BETA * (_K + 2)), "ema": 0.95}  # c = 1/(β(K+2)): C6's d*
_SPIKE = {"name": "spike_trigger", "fast": 0.8, "slow": 0.99, "tau": 3.0, "warmup": 64}
_DECAY = {"name": "decay_after_trigger", "lam0": 0.3, "half_life": 256.0, "trigger": _SPIKE}
_OSDN = {"name": "osdn", "step": {"name": "normalized", "c": 0.1}, "s_max": 1.5}

#: The sweep method entries of the claim and its negative controls (as in ``sweeps/apf_piecewise.toml``).
METHODS: dict[str, dict[str, Any]] = {
    "apf": dict(_OSDN, apf={"prior": _JACOBI, "rate": _DECAY}),
    "noforget": dict(_OSDN),
    "toward_one": dict(_OSDN, apf={"prior": {"name": "ones"}, "rate": _DECAY}),
}

#: Metric settings of the sweep (``window`` tokens; recovered once the relative d error is ≤ ``recovery_tol``).
_METRICS = {"window": 32, "recovery_tol": 0.25}

_SIZES = dict(
    quick=dict(seeds=16, segments=4, segment_len=512, batch_size=16),
    full=dict(seeds=64, segments=4, segment_len=512, batch_size=32),
)


def _check_size(size: Size) -> tuple[int, int, int, int]:
    n = check_scalar("seeds", size.seeds, 1, None, integer=True)
    segments = check_scalar("segments", size.segments, 2, None, integer=True)  # ≥ 1 shift
    L = check_scalar("segment_len", size.segment_len, 2 * _METRICS["window"], None, integer=True)
    bs = check_scalar("batch_size", size.batch_size, 1, None, integer=True)
    return n, segments, L, bs


def shift_recoveries(size: Size, seed: int, method: str) -> dict[str, Any]:
    """Run ``METHODS[method]`` on ``size.seeds`` piecewise streams through the sweep machinery.

    Returns per-shift recovery times (``times``, tokens, censored at ``segment_len``), the stream seeds, and
    per-run trigger counts and segment-end d errors. A run the sweep records as failed raises ``RuntimeError``.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {sorted(METHODS)}, got {method!r}")
    n, segments, L, bs = _check_size(size)
    seed = check_scalar("seed", seed, 0, None, integer=True)
    seeds = list(range(seed * n, seed * n + n))
    stream = {
        "family": "piecewise",
        "T": segments * L,
        "K": _K,
        "V": 8,
        "segment_len": L,
        "condition": 100.0,
        "noise": 0.1,
        "beta": _BETA,
        "batch": 1,  # one realisation per seed: the per-run series are the per-shift numbers
        "heads": 1,
    }
    spec = parse_spec(
        {
            "name": f"c9_{method}",
            "seeds": seeds,
            "metrics": _METRICS,
            "stream": [stream],
            "method": [METHODS[method]],
        }
    )
    records: dict[int, dict] = {}
    for batch in plan_batches(spec.runs, bs):
        for rec in evaluate_batch([r.to_dict() for r in batch]):
            if rec["status"] != "ok":
                why = rec.get("error") or rec.get("diverged") or "no reason recorded"
                raise RuntimeError(f"C9 run {rec['label']} has status {rec['status']!r}: {why}")
            records[rec["config"]["seed"]] = rec
    times, triggers, d_err = [], [], []
    for s in seeds:
        rec = records[s]
        m = rec["metrics"]
        if m["realisations"] != 1 or m["H"] != 1 or m["segments"] != segments:
            raise RuntimeError(
                f"C9 run {rec['label']}: expected one realisation, one head, {segments} segments"
            )
        times += rec["series"]["recovery_seg"][1:]  # segment 0 is the cold start, not a shift
        triggers.append(m["triggers"])
        d_err += rec["series"]["d_err_seg"][1:]
    return dict(
        times=np.asarray(times, dtype=np.float64),
        seeds=seeds,
        segment_len=L,
        segments=segments,
        triggers=np.asarray(triggers, dtype=np.float64),
        d_err_end=np.asarray(d_err, dtype=np.float64),
        stream=stream,
        method=METHODS[method],
    )


def _judge(res: dict) -> tuple[FractionVerdict, np.ndarray]:
    ok = res["times"] <= C9_MAX_RECOVERY_FRAC * res["segment_len"]
    return fraction_verdict(int(ok.sum()), int(ok.size), required=C9_REQUIRED), ok


def _evidence(res: dict, v: FractionVerdict) -> dict[str, Any]:
    t, L = res["times"], res["segment_len"]
    return dict(
        verdict=v.to_dict(),
        verdict_text=v.describe(),
        per_shift_test=f"recovery time ≤ {C9_MAX_RECOVERY_FRAC} × segment_len = {C9_MAX_RECOVERY_FRAC * L:g} tokens",
        required_fraction=C9_REQUIRED,
        confidence=CONFIDENCE,
        recovery_time_mean=float(t.mean()),
        recovery_time_sd=float(t.std(ddof=1)) if t.size > 1 else 0.0,
        recovery_time_median=float(np.median(t)),
        recovery_time_max=float(t.max()),
        recovered_within_segment=int((t < L).sum()),
        shifts=int(t.size),
        seeds=res["seeds"],
        segment_len=L,
        segments=res["segments"],
        triggers_per_run_mean=float(res["triggers"].mean()),
        d_err_segment_end_mean=float(res["d_err_end"].mean()),
        recovery_tol=_METRICS["recovery_tol"],
        window=_METRICS["window"],
        stream=res["stream"],
        method=res["method"],
        dtype="float64",
    )


_JUDGED = (
    f"judged per shift (recovery time ≤ {C9_MAX_RECOVERY_FRAC} × segment length) by the 95 % Clopper–Pearson "
    "interval of the fraction of shifts that pass"
)


@claim(
    "C9",
    title="APF toward the running-Jacobi prior recovers after every shift",
    statement=(
        "on piecewise-stationary keys (variance profile re-permuted every segment), OSDN with APF decay after a "
        "calibration-spike trigger toward the running-Jacobi prior brings ‖d − d*_seg‖/‖d*_seg‖ back to ≤ 0.25 "
        f"within half a segment after each shift; {_JUDGED}: PASS iff its lower end ≥ {C9_REQUIRED}"
    ),
    assumptions=[
        "piecewise-stationary Gaussian keys, K = 8, condition 100, β = 1 (d*_seg from C6)",
        "ratio rule, normalized step c = 0.1, s_max = 1.5",
        "APF: decay after spike trigger (λ₀ = 0.3, half-life 256, τ = 3), prior c/EMA(k ⊙ k), c = 1/(β(K + 2))",
    ],
    comparison="trend",
    **_SIZES,
)
def c9_apf(size: Size, seed: int) -> Outcome:
    res = shift_recoveries(size, seed, "apf")
    v, _ = _judge(res)
    return Outcome(
        measured=v.fraction,
        bound=C9_REQUIRED,
        passed=v.passed,
        evidence=_evidence(res, v),
        series={"recovery_time_per_shift": res["times"].tolist()},
    )


def _negative(size: Size, seed: int, method: str, *, need_triggers: bool) -> Outcome:
    """Behaves as predicted iff the per-shift pass fraction is rejected (upper end < C9_REQUIRED), while the
    runs stay finite (a NaN d must not count as "did not recover") and, where the control keeps the trigger,
    the trigger fires at least once per shift on average (the failure is the prior's, not a silent trigger)."""
    res = shift_recoveries(size, seed, method)
    v, _ = _judge(res)
    finite = bool(np.isfinite(res["d_err_end"]).all())
    shifts_per_run = res["segments"] - 1
    fires = bool(res["triggers"].mean() >= shifts_per_run) if need_triggers else True
    ev = _evidence(res, v)
    ev.update(d_finite=finite, trigger_fires=fires)
    return Outcome(
        measured=v.fraction,
        bound=C9_REQUIRED,
        passed=bool(v.rejected and finite and fires),
        evidence=ev,
        series={"recovery_time_per_shift": res["times"].tolist()},
    )


@claim(
    "C9-neg-noforget",
    title="No forgetting: a stale preconditioner does not recover within a segment",
    statement=(
        "the same OSDN without the APF gate (λ = 0) keeps d near the previous segment's fixed point; "
        f"{_JUDGED}: behaves as predicted iff its upper end < {C9_REQUIRED}"
    ),
    assumptions=["forgetting DROPPED: no APF gate", "otherwise as C9"],
    comparison="trend",
    negative_control=True,
    **_SIZES,
)
def c9_neg_noforget(size: Size, seed: int) -> Outcome:
    return _negative(size, seed, "noforget", need_triggers=False)


@claim(
    "C9-neg-toward-one",
    title="Forgetting toward 1 (DeltaNet) does not recover the segment's fixed point",
    statement=(
        "the same trigger and decay, but toward the prior 1, pull d away from d*_seg (anisotropic keys); "
        f"{_JUDGED}: behaves as predicted iff its upper end < {C9_REQUIRED}"
    ),
    assumptions=["prior CHANGED: ones instead of the running Jacobi", "otherwise as C9"],
    comparison="trend",
    negative_control=True,
    **_SIZES,
)
def c9_neg_toward_one(size: Size, seed: int) -> Outcome:
    return _negative(size, seed, "toward_one", need_triggers=True)
