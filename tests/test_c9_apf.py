"""C9 (APF recovers after a shift) and its negative controls: verdicts, planted bugs, sizes, the sweep link."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from osdn_theory import apf
from osdn_theory.claims import c9_apf as c9
from osdn_theory.claims import get_claim
from osdn_theory.claims._registry import Size
from osdn_theory.sweeps import evaluate_batch, load_spec
from osdn_theory.sweeps.spec import canonical_json

NEGATIVE = ("C9-neg-noforget", "C9-neg-toward-one")
SWEEP = Path(__file__).resolve().parents[1] / "sweeps" / "apf_piecewise.toml"


def _size(**kw) -> Size:
    return Size("quick", dict(dict(seeds=2, segments=3, segment_len=128, batch_size=2), **kw))


def test_c9_passes_at_quick_budget_with_a_clopper_pearson_verdict():
    r = get_claim("C9")(budget="quick", seed=0)
    assert r.error is None and r.passed is True and not r.negative_control
    v = r.evidence["verdict"]
    assert set(v) >= {"k", "n", "fraction", "low", "high", "required"}
    assert v["n"] == r.evidence["shifts"] == 3 * len(r.evidence["seeds"]) == 48
    assert v["low"] >= v["required"] == c9.C9_REQUIRED
    assert r.measured == v["fraction"] and r.bound == c9.C9_REQUIRED
    assert 0 < r.evidence["recovery_time_mean"] < c9.C9_MAX_RECOVERY_FRAC * r.evidence["segment_len"]
    assert r.evidence["recovery_time_sd"] > 0 and r.evidence["triggers_per_run_mean"] >= 3
    assert len(r.series["recovery_time_per_shift"]) == 48
    json.dumps(r.to_dict(), allow_nan=False)


@pytest.mark.parametrize("label", NEGATIVE)
def test_negative_controls_do_not_recover(label):
    r = get_claim(label)(budget="quick", seed=0)
    assert r.negative_control and r.passed is True  # behaves as predicted
    v = r.evidence["verdict"]
    assert v["high"] < v["required"] and v["k"] == 0
    assert r.evidence["recovered_within_segment"] == 0  # not even late in the segment
    assert r.evidence["d_finite"] and r.evidence["trigger_fires"]


def _no_forgetting(self, state, t, u, r):
    lam, fired = _ORIG_DECAY_STEP(self, state, t, u, r)
    return torch.zeros_like(lam), fired  # the trigger fires, the gate mixes in nothing


_ORIG_DECAY_STEP = apf.DecayAfterTrigger.step


def test_c9_fails_when_the_apf_gate_forgets_nothing(monkeypatch):
    monkeypatch.setattr(apf.DecayAfterTrigger, "step", _no_forgetting)
    r = get_claim("C9")(budget="quick", seed=0)
    assert r.passed is False and r.verdict == "FAIL"
    assert r.evidence["verdict"]["low"] < c9.C9_REQUIRED and r.evidence["triggers_per_run_mean"] > 0


def test_c9_fails_when_the_trigger_never_fires(monkeypatch):
    monkeypatch.setattr(apf.SpikeTrigger, "statistic", lambda self, state, u, r: torch.zeros_like(r))
    r = get_claim("C9")(budget="quick", seed=0)
    assert r.passed is False and r.evidence["triggers_per_run_mean"] == 0
    # the toward-1 control cannot pass vacuously on a silent trigger either
    assert get_claim("C9-neg-toward-one")(budget="quick", seed=0).passed is False


def test_negative_control_fails_when_the_runs_blow_up(monkeypatch):
    real = c9.shift_recoveries

    def nan_runs(size, seed, method):
        res = real(size, seed, method)
        res["d_err_end"] = res["d_err_end"] * float("nan")
        return res

    monkeypatch.setattr(c9, "shift_recoveries", nan_runs)
    r = get_claim("C9-neg-noforget")(budget="quick", seed=0)
    assert r.passed is False and r.evidence["d_finite"] is False


def test_a_failed_sweep_run_raises(monkeypatch):
    def failing(runs):
        return [dict(evaluate_batch(runs)[0], status="failed", error="planted") for _ in runs]

    monkeypatch.setattr(c9, "evaluate_batch", failing)
    with pytest.raises(RuntimeError, match="planted"):
        c9.shift_recoveries(_size(), 0, "apf")


def test_a_diverged_sweep_run_raises_with_its_reason(monkeypatch):
    def diverging(runs):
        return [
            dict(evaluate_batch(runs)[0], status="diverged", diverged="memory diverged: R1 = 1e9")
            for _ in runs
        ]

    monkeypatch.setattr(c9, "evaluate_batch", diverging)
    with pytest.raises(RuntimeError, match="status 'diverged': memory diverged"):
        c9.shift_recoveries(_size(), 0, "apf")


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(seeds=0), "seeds"),
        (dict(segments=1), "segments"),
        (dict(segment_len=32), "segment_len"),
        (dict(batch_size=0), "batch_size"),
        (dict(seeds=1.5), "seeds"),
    ],
)
def test_bad_sizes_are_rejected_with_the_parameter_name(bad, message):
    with pytest.raises(ValueError, match=message):
        c9.shift_recoveries(_size(**bad), 0, "apf")


def test_unknown_method_and_seed_are_rejected():
    with pytest.raises(ValueError, match="method"):
        c9.shift_recoveries(_size(), 0, "adagrad")
    with pytest.raises(ValueError, match="seed"):
        c9.shift_recoveries(_size(), -1, "apf")


def test_deterministic_and_independent_of_the_batching():
    a = c9.shift_recoveries(_size(seeds=3, batch_size=3), 1, "apf")
    b = c9.shift_recoveries(_size(seeds=3, batch_size=1), 1, "apf")
    assert a["seeds"] == [3, 4, 5] and a["times"].shape == (6,)
    assert a["times"].tolist() == b["times"].tolist()
    assert a["d_err_end"].tolist() == b["d_err_end"].tolist()


def test_claim_runs_are_the_example_sweeps_runs():
    """Claim seed 0 covers the stream seeds of ``sweeps/apf_piecewise.toml`` with the same method entries, so
    docs/theory.md §9 and the sweep report the same recovery times for the shared runs."""
    spec = load_spec(SWEEP)
    for name in ("apf", "noforget"):
        runs = [r for r in spec.runs if canonical_json(r.method) == canonical_json(c9.METHODS[name])]
        assert sorted(r.seed for r in runs) == list(range(8))
        recs = sorted(evaluate_batch([r.to_dict() for r in runs]), key=lambda x: x["config"]["seed"])
        swept = [t for rec in recs for t in rec["series"]["recovery_seg"][1:]]
        mine = c9.shift_recoveries(
            Size("quick", dict(seeds=8, segments=4, segment_len=512, batch_size=8)), 0, name
        )
        assert mine["times"].tolist() == swept
