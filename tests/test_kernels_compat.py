"""fla's calling convention (issue #10, item 4) under the Triton interpreter, against the float64 recurrence:
``use_qk_l2norm_in_kernel`` (values and gradients through the normalisation), non-contiguous ``q, k, v, β``,
``cu_seqlens`` with an initial state, ``scale`` and ``(o, final_state)`` through
:func:`osdn_theory.kernels.chunk_delta_rule_compat`. The same call against fla's own ``chunk_delta_rule`` is a
GPU test (``tests/test_kernels_gpu.py::test_gpu_compat_matches_fla_delta_rule``)."""

from __future__ import annotations

import pytest
import torch

from osdn_theory.kernels import chunk_delta_rule_compat, chunk_osdn
from osdn_theory.recurrences import osdn_recurrent
from osdn_theory.tolerances import KERNEL_INTERP_FLOAT64, NEG_CONTROL_SEPARATION, rel_err

pytestmark = pytest.mark.interpreter

F64 = torch.float64


def _l2(x):
    """The normalisation fla applies with ``use_qk_l2norm_in_kernel`` (eps 1e-6), written out in float64."""
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def _inputs(seed, B=1, T=29, H=2, K=16, V=24, N=1):
    """Raw (not unit-norm, ‖k‖ ≈ 8) q and k, so that the normalisation matters; an initial state per sequence."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    return dict(
        q=2.0 * r(B, T, H, K),
        k=2.0 * r(B, T, H, K),
        v=r(B, T, H, V),
        beta=torch.rand(B, T, H, generator=g, dtype=F64) * 0.9 + 0.05,
        initial_state=r(N, H, K, V),
    )


def _strided(x):
    """The same values as non-contiguous views: ``q, k, v`` sliced from one fused projection ``[B, T, H, 2K+V]``
    (as a layer's qkv split gives them) and ``β`` as a transposed ``[B, H, T]`` buffer."""
    K = x["q"].shape[-1]
    fused = torch.cat([x["q"], x["k"], x["v"]], -1)
    out = dict(x, q=fused[..., :K], k=fused[..., K : 2 * K], v=fused[..., 2 * K :])
    out["beta"] = x["beta"].transpose(1, 2).contiguous().transpose(1, 2)
    assert not any(out[n].is_contiguous() for n in ("q", "k", "v", "beta"))
    return out


def _loss_grads(fn, x, do, dht, names=("q", "k", "v", "beta", "initial_state")):
    leaves = {n: t.clone().requires_grad_(True) for n, t in x.items()}
    o, ht = fn(leaves)
    ((o * do).sum() + (ht * dht).sum()).backward()
    return o.detach(), ht.detach(), {n: leaves[n].grad for n in names}


def _assert_matches(fn, ref, x, seed):
    """``fn`` and ``ref`` agree (float64 bound) on outputs, final states and every input's gradient of
    ``Σ o ⊙ dO + Σ h_T ⊙ dh_T`` with random ``dO, dh_T``."""
    g = torch.Generator().manual_seed(seed)
    do = torch.randn(x["v"].shape, generator=g, dtype=F64)
    dht = torch.randn(x["initial_state"].shape, generator=g, dtype=F64)
    o, ht, got = _loss_grads(fn, x, do, dht)
    o_ref, ht_ref, want = _loss_grads(ref, x, do, dht)
    assert rel_err(o, o_ref) < KERNEL_INTERP_FLOAT64 and rel_err(ht, ht_ref) < KERNEL_INTERP_FLOAT64
    for n in got:
        assert rel_err(got[n], want[n]) < KERNEL_INTERP_FLOAT64, n


def _ref(x):
    o, ht = osdn_recurrent(_l2(x["q"]), _l2(x["k"]), x["v"], x["beta"], initial_state=x["initial_state"],
                           scale=0.3, output_final_state=True)  # fmt: skip
    return o, ht


def _kernel(x):
    return chunk_osdn(x["q"], x["k"], x["v"], x["beta"], scale=0.3, initial_state=x["initial_state"],
                      output_final_state=True, chunk_size=16, use_qk_l2norm_in_kernel=True)  # fmt: skip


def _kernel_strided(x):
    return _kernel(_strided(x))  # the views are differentiable: gradients reach the contiguous leaves


@pytest.mark.parametrize("fn", [_kernel, _kernel_strided])
def test_l2norm_values_and_gradients_match_float64(fn):
    """Output, final state and the gradients of q, k (through the normalisation), v, β and the initial state
    against autograd through the float64 token recurrence on normalised q, k; contiguous and strided inputs."""
    _assert_matches(fn, _ref, _inputs(1), seed=2)


def test_l2norm_negative_control():
    """Without the flag the raw keys (‖k‖ ≈ 8) give another output: the flag is not a no-op."""
    x = _inputs(3)
    o_ref, _ = _ref(x)
    o, _ = chunk_osdn(x["q"], x["k"], x["v"], x["beta"], scale=0.3, initial_state=x["initial_state"],
                      chunk_size=16, validate=False)  # fmt: skip
    assert rel_err(o, o_ref) > NEG_CONTROL_SEPARATION * KERNEL_INTERP_FLOAT64


def test_strided_inputs_give_the_contiguous_result_exactly():
    """Non-contiguous q, k, v, β (once refused) are copied, so the kernels see the same values: bit-identical."""
    x = _inputs(4)
    a = chunk_osdn(**x, output_final_state=True, chunk_size=16, use_qk_l2norm_in_kernel=True)
    b = chunk_osdn(**_strided(x), output_final_state=True, chunk_size=16, use_qk_l2norm_in_kernel=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_compat_is_fla_calling_convention_with_varlen():
    """``chunk_delta_rule_compat(q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens=…,
    use_qk_l2norm_in_kernel=True)`` on three packed sequences with their own initial states, strided inputs:
    outputs, final states and every gradient against the float64 recurrence run on each sequence alone."""
    lens = [5, 23, 17]
    cu = torch.tensor([0, 5, 28, 45], dtype=torch.int32)
    x = _inputs(5, T=sum(lens), N=len(lens))

    def compat_strided(xs):
        xs = _strided(xs)
        return chunk_delta_rule_compat(xs["q"], xs["k"], xs["v"], xs["beta"], 0.3, xs["initial_state"], True,
                                       cu_seqlens=cu, use_qk_l2norm_in_kernel=True)  # fmt: skip

    def ref(xs):
        outs, states = [], []
        for i in range(len(lens)):
            a, b = int(cu[i]), int(cu[i + 1])
            seg = {n: (t[:, a:b] if n != "initial_state" else t[i : i + 1]) for n, t in xs.items()}
            o_i, ht_i = _ref(seg)
            outs.append(o_i)
            states.append(ht_i)
        return torch.cat(outs, 1), torch.cat(states, 0)

    _assert_matches(compat_strided, ref, x, seed=6)


def test_compat_defaults_return_no_final_state_and_pass_d():
    """fla's defaults: ``scale = K^-0.5``, no initial state, ``final_state`` None; ``d`` passes through."""
    x = _inputs(7)
    o, ht = chunk_delta_rule_compat(x["q"], x["k"], x["v"], x["beta"])
    o_ref, _ = osdn_recurrent(x["q"], x["k"], x["v"], x["beta"], scale=16**-0.5, output_final_state=True)
    assert ht is None and rel_err(o, o_ref) < KERNEL_INTERP_FLOAT64
    d = torch.exp(0.3 * torch.randn(x["k"].shape, generator=torch.Generator().manual_seed(8), dtype=F64))
    o_d, _ = chunk_delta_rule_compat(x["q"], x["k"], x["v"], x["beta"], d=d)
    assert torch.equal(o_d, chunk_osdn(x["q"], x["k"], x["v"], x["beta"], d)[0])


def test_compat_argument_errors():
    x = _inputs(9, T=8)
    args = (x["q"], x["k"], x["v"], x["beta"])
    with pytest.raises(ValueError, match=r"^use_qk_l2norm_in_kernel: expected a bool"):
        chunk_osdn(*args, use_qk_l2norm_in_kernel=1)
    with pytest.raises(TypeError):  # keyword only: fla's releases order these two differently
        chunk_delta_rule_compat(*args, None, None, False, None)
    with pytest.raises(ValueError, match=r"^q: "):  # a strided view of the wrong shape is still refused
        chunk_osdn(x["q"].transpose(1, 2), *args[1:])
