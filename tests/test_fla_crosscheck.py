"""Independent cross-check: fla-core 0.6.0's fused_recurrent_iplr_delta_rule (Triton, run under the
interpreter on CPU) expresses OSDN as ``S(I + a bᵀ) + v kᵀ`` with ``a = −β·k``, ``b = d ⊙ k``, key ``d ⊙ k``
and value ``β·v``; it must match the float64 reference to fp32 accuracy."""

from __future__ import annotations

import os

import pytest
import torch

from osdn_theory import osdn_recurrent, rel_err, rtol

from ._inputs import random_inputs

pytestmark = pytest.mark.interpreter


@pytest.fixture(scope="module")
def iplr():
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.fail("TRITON_INTERPRET=1 must be set before Triton kernels are imported (tests/conftest.py)")
    import fla.ops.generalized_delta_rule.iplr.fused_recurrent as mod
    from triton.runtime.autotuner import Autotuner

    if not torch.cuda.is_available():  # the interpreter cannot benchmark: one config per kernel
        for name in ("fused_recurrent_fwd_kernel", "fused_recurrent_bwd_kernel"):
            obj = getattr(mod, name)
            while not isinstance(obj, Autotuner):
                obj = obj.fn
            obj.configs = obj.configs[:1]
    return mod.fused_recurrent_iplr_delta_rule


def _fla_osdn(iplr, x, d):
    f = lambda t: t.float().contiguous()
    b = x["beta"][..., None]
    kt = d * x["k"]
    return iplr(
        f(x["q"]),
        f(kt),
        f(b * x["v"]),
        f(-b * x["k"]),
        f(kt),
        initial_state=f(x["initial_state"]),
        output_final_state=True,
    )


@pytest.mark.parametrize("seed,T", [(0, 40), (1, 23), (2, 64)])
def test_fla_iplr_matches_osdn(iplr, seed, T):
    x = random_inputs(1, T, 2, 16, 16, seed=seed, init=True)
    d = x.pop("d")
    o_ref, s_ref = osdn_recurrent(**x, d=d, output_final_state=True)
    o, s = _fla_osdn(iplr, x, d)
    assert rel_err(o, o_ref) <= rtol(torch.float32)  # fla computes in fp32 (measured ~1.3e-7)
    assert rel_err(s, s_ref) <= rtol(torch.float32)


def test_fla_iplr_negative_control(iplr):
    """Feeding fla the DeltaNet write key (d ≡ 1) must NOT match OSDN with a non-trivial d."""
    x = random_inputs(1, 40, 2, 16, 16, seed=3, init=True)
    d = x.pop("d")
    o_ref, _ = osdn_recurrent(**x, d=d, output_final_state=True)
    o, _ = _fla_osdn(iplr, x, torch.ones_like(d))
    assert rel_err(o, o_ref) > 1e-3
