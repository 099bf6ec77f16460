"""Claims C1 and C4-bound have teeth: a planted bug in the library code they check makes them FAIL.

C1 checks the library's inner loss and gradient (the gradient :func:`osdn_recurrent` writes with); C4-bound
checks the recurrence on tokens that reach the edge of its box (write gain near 2) and on clipped tokens.
"""

from __future__ import annotations

import pytest
import torch

import osdn_theory.recurrences as rec
from osdn_theory.claims import get_claim, run_claim
from osdn_theory.recurrences import inner_grad, inner_loss, osdn_recurrent

F64 = torch.float64


def _verdict(label: str, seed: int = 0) -> str:
    return run_claim(get_claim(label), seed=seed, budget="quick").verdict


# ---- C1 exercises the library's inner loss and gradient ------------------------------------------------


def test_recurrence_write_is_the_preconditioned_inner_gradient_step():
    """One token of ``osdn_recurrent`` is ``Sᵀ − β (d ⊙ rows) inner_grad(Sᵀ, k, v)``: C1's function is used."""
    g = torch.Generator().manual_seed(0)
    K, V = 5, 3
    M = torch.randn(1, 1, K, V, generator=g, dtype=F64)
    k = torch.randn(1, 1, 1, K, generator=g, dtype=F64)
    v = torch.randn(1, 1, 1, V, generator=g, dtype=F64)
    d = torch.rand(1, 1, 1, K, generator=g, dtype=F64) + 0.1
    beta = torch.full((1, 1, 1), 0.7, dtype=F64)
    _, hT = osdn_recurrent(k, k, v, beta, d, initial_state=M, output_final_state=True)
    want = M - 0.7 * inner_grad(M, k[:, 0], v[:, 0], d[:, 0])
    assert torch.allclose(want, M - 0.7 * d[:, 0, :, :, None] * inner_grad(M, k[:, 0], v[:, 0]), rtol=1e-14)
    assert torch.allclose(hT, want, rtol=1e-14, atol=1e-14)


def test_inner_loss_and_grad_validate_their_arguments():
    M, k, v = torch.zeros(2, 3, 4, dtype=F64), torch.zeros(2, 3, dtype=F64), torch.zeros(2, 4, dtype=F64)
    assert inner_loss(M, k, v).shape == (2,) and inner_grad(M, k, v).shape == (2, 3, 4)
    with pytest.raises(ValueError, match=r"^k: expected shape \[2, 3\]"):
        inner_grad(M, torch.zeros(2, 4, dtype=F64), v)
    with pytest.raises(ValueError, match=r"^v: expected shape \[2, 4\]"):
        inner_loss(M, k, torch.zeros(2, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"^state: expected shape"):
        inner_loss(torch.zeros(3, dtype=F64), k, v)
    with pytest.raises(ValueError, match=r"^v: expected .*dtype"):
        inner_grad(M, k, v.float())
    with pytest.raises(ValueError, match=r"^d: expected values in \(0"):
        inner_grad(M, k, v, torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match=r"^state: expected finite"):
        inner_loss(torch.full((2, 3, 4), float("nan"), dtype=F64), k, v)


_REAL_GRAD = rec._inner_grad


def _grad_scaled(M, k, v, key):
    grad, e = _REAL_GRAD(M, k, v, key)
    return grad * (1 + 1e-6), e


def _grad_shifted_key(M, k, v, key):
    """``key eᵀ`` built with the key of the previous coordinate (an index slip)."""
    return _REAL_GRAD(M, k, v, torch.roll(key, 1, dims=-1))


def _grad_dropped_value(M, k, v, key):
    """``e = S k`` instead of ``S k − v``."""
    return _REAL_GRAD(M, k, torch.zeros_like(v), key)


@pytest.mark.parametrize("bug", [_grad_scaled, _grad_shifted_key, _grad_dropped_value])
def test_c1_fails_on_a_planted_gradient_bug(monkeypatch, bug):
    assert _verdict("C1") == "PASS"
    monkeypatch.setattr(rec, "_inner_grad", bug)
    assert _verdict("C1") == "FAIL"
    # The same bug is in the recurrence's write: C1 tests what osdn_recurrent computes.
    g = torch.Generator().manual_seed(1)
    k, v = torch.randn(1, 1, 1, 4, generator=g, dtype=F64), torch.randn(1, 1, 1, 2, generator=g, dtype=F64)
    M = torch.randn(1, 1, 4, 2, generator=g, dtype=F64)
    beta = torch.full((1, 1, 1), 0.5, dtype=F64)
    _, hT = osdn_recurrent(k, k, v, beta, initial_state=M, output_final_state=True)
    e = torch.einsum("k,kv->v", k[0, 0, 0], M[0, 0]) - v[0, 0, 0]
    assert not torch.allclose(hT[0, 0], M[0, 0] - 0.5 * k[0, 0, 0, :, None] * e[None, :], rtol=1e-10, atol=0)


def test_c1_fails_on_a_planted_loss_bug(monkeypatch):
    """A loss that is not the one the gradient descends (here ½‖e‖² + ‖e‖⁴ 1e-9) is caught."""
    real = rec._inner_loss
    monkeypatch.setattr(rec, "_inner_loss", lambda M, k, v: real(M, k, v) * (1 + 1e-9 * real(M, k, v)))
    assert _verdict("C1") == "FAIL"


def test_c4_identity_is_cancellation_aware_yet_catches_a_small_error(monkeypatch):
    """C4's error is relative to the size of the terms (‖e‖ + ‖S‖‖k‖ + ‖v‖): an unclipped run whose memory
    grows to 1e28 no longer fails by round-off (seed 12, full budget, measured 1.01e-10 relative to ‖e‖ before),
    but a 1e-8 relative error planted in r⁺ on well-scaled tokens still fails the claim."""
    import dataclasses

    from osdn_theory.claims import c4_contraction as c4
    from osdn_theory.claims import get_claim

    assert get_claim("C4")(budget="full", seed=12).passed is True
    real = c4.osdn_recurrent

    def planted(*args, **kw):
        o, S, diag = real(*args, **kw)
        return o, S, dataclasses.replace(diag, residual_post=diag.residual_post * (1 + 1e-8))

    monkeypatch.setattr(c4, "osdn_recurrent", planted)
    r = get_claim("C4")(budget="quick", seed=0)
    assert r.passed is False and r.measured > 1e-10
