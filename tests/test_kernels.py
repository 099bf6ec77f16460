"""The Triton chunk kernel against the float64 references (CPU: Triton interpreter, tiny shapes).

Each stage is checked alone against its plain-torch twin; the whole op against the token-by-token
recurrence (forward and every gradient) and against the torch chunk form; gradcheck on a tiny case.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from osdn_theory.kernels import DRule, ValueCheckError, chunk_osdn, d_ratio_scan, reference, stages
from osdn_theory.kernels.chunk import _chunk_tables
from osdn_theory.kernels.config import D_CHECKS, Launch, LaunchConfig
from osdn_theory.recurrences import delta_rule_recurrent, osdn_recurrent
from osdn_theory.tolerances import (
    EXACT_FLOAT64,
    GRADCHECK_ATOL,
    GRADCHECK_EPS,
    GRADCHECK_RTOL,
    KERNEL_BF16_OUT,
    KERNEL_INTERP_FLOAT64,
    NEG_CONTROL_SEPARATION,
    rel_err,
    rtol,
)

from .test_kernels_drule import _ratio_rule_loop
from .test_kernels_gpu import CASES as GPU_CASES
from .test_kernels_gpu import make as gpu_make
from .test_kernels_gpu import osdn_chunkwise

pytestmark = pytest.mark.interpreter

F64 = torch.float64


def make_inputs(seed, B=1, T=37, H=2, K=16, V=32, dtype=F64, device="cpu"):
    """Random OSDN inputs: unit-norm keys, β ∈ [0.05, 0.95], d = exp(0.3 N(0,1)), α ∈ [0.5, 1], h0 ~ N(0,1)."""
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=F64)

    x = dict(
        q=r(B, T, H, K),
        k=F.normalize(r(B, T, H, K), dim=-1),
        v=r(B, T, H, V),
        beta=torch.rand(B, T, H, generator=g, dtype=F64) * 0.9 + 0.05,
        d=torch.exp(0.3 * r(B, T, H, K)),
        alpha=torch.rand(B, T, H, generator=g, dtype=F64) * 0.5 + 0.5,
        initial_state=r(B, H, K, V),
    )
    return {n: t.to(dtype=dtype, device=device) for n, t in x.items()}


CASES = {
    "deltanet": ([], {}),
    "d": (["d"], {}),
    "d-clip": (["d"], {"s_max": 0.5}),
    "d-h0": (["d", "initial_state"], {}),
    "gated-d-h0": (["d", "alpha", "initial_state"], {}),
    "gated-clip-nod": (["alpha"], {"s_max": 0.3}),
}


def _pick(x, names):
    return {n: x[n] for n in ["q", "k", "v", "beta", *names]}


# ------------------------------------------------------------------------------------------------ stages


def _packed(x, names, C, cu=None):
    B, T, H, K = x["k"].shape
    V = x["v"].shape[-1]
    flat = {n: x[n].reshape(B * T, H, -1) for n in ("q", "k", "v", "d")}
    flat["beta"] = x["beta"].reshape(B * T, H)
    flat["la"] = torch.log(x["alpha"]).reshape(B * T, H) if "alpha" in names else None
    d = flat["d"] if "d" in names else None
    return flat, d, _chunk_tables(cu, B, T, C, x["k"].device), (B, T, H, K, V)


@pytest.mark.parametrize("case", ["d-clip", "gated-d-h0"])
def test_stages_match_torch_twins(case):
    names, kw = CASES[case]
    C = 16
    x = make_inputs(1, B=2, T=21)
    flat, d, (cu, offs, bounds, NC), (B, T, H, K, V) = _packed(x, names, C)
    s_max = kw.get("s_max")
    got = stages.gram_solve(flat["k"], d, flat["beta"], flat["la"], bounds, s_max, C)
    ref = reference.gram_solve_ref(flat["k"], d, flat["beta"], flat["la"], bounds, s_max, C)
    for a, b in zip(got, ref, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert rel_err(a, b) < EXACT_FLOAT64
    kt, c, g, ai = ref
    w, u = stages.wy_factors(flat["k"], flat["v"], flat["beta"], g, ai, bounds, C)
    w_ref, u_ref = reference.wy_factors_ref(flat["k"], flat["v"], flat["beta"], g, ai, bounds, C)
    assert rel_err(w, w_ref) < EXACT_FLOAT64 and rel_err(u, u_ref) < EXACT_FLOAT64
    h0 = x["initial_state"] if "initial_state" in names else None
    h, vnew, ht = stages.state_pass(kt, w_ref, u_ref, g, h0, cu, offs, NC, C, True)
    h_ref, vnew_ref, ht_ref = reference.state_pass_ref(kt, w_ref, u_ref, g, h0, cu, C)
    for a, b in ((h, h_ref), (vnew, vnew_ref), (ht, ht_ref)):
        assert rel_err(a, b) < EXACT_FLOAT64
    o = stages.output(flat["q"], kt, vnew_ref, h_ref, g, bounds, 0.3, C)
    o_ref = reference.output_ref(flat["q"], kt, vnew_ref, h_ref, g, bounds, 0.3, C)
    assert rel_err(o, o_ref) < EXACT_FLOAT64


def _backward_stage_inputs(case, seed=3):
    """Forward intermediates (from the twins) and random output gradients for the backward stage tests."""
    names, kw = case
    C = 16
    x = make_inputs(seed, B=2, T=21)
    flat, d, (cu, offs, bounds, NC), (B, T, H, K, V) = _packed(x, names, C)
    s_max = kw.get("s_max")
    kt, c, g, ai = reference.gram_solve_ref(flat["k"], d, flat["beta"], flat["la"], bounds, s_max, C)
    if s_max is not None:
        assert bool((c < 1).any()) and bool((c == 1).any())  # the clip binds on some tokens, not all
    w, u = reference.wy_factors_ref(flat["k"], flat["v"], flat["beta"], g, ai, bounds, C)
    h0 = x["initial_state"] if "initial_state" in names else None
    h, vnew, _ = reference.state_pass_ref(kt, w, u, g, h0, cu, C)
    gen = torch.Generator().manual_seed(seed + 1)
    do = torch.randn(B * T, H, V, generator=gen, dtype=F64)
    dht = torch.randn(B, H, K, V, generator=gen, dtype=F64)
    return dict(flat=flat, d=d, c=c, g=g, kt=kt, ai=ai, w=w, h=h, vnew=vnew, h0=h0, do=do, dht=dht,
                cu=cu, offs=offs, bounds=bounds, NC=NC, C=C)  # fmt: skip


BACKWARD_CASES = {
    "d-clip": CASES["d-clip"],
    "gated-d-h0": CASES["gated-d-h0"],
    "gated-clip-nod": CASES["gated-clip-nod"],
    "gated-d-clip-h0": (["d", "alpha", "initial_state"], {"s_max": 0.5}),
}


def _twin_chain(a, sc):
    """Arguments of each backward stage, each built from the twins' results of the stages before it."""
    f, C = a["flat"], a["C"]
    dvl_args = (f["q"], a["kt"], a["g"], a["do"], a["bounds"], sc, C)
    dvl = reference.dv_local_ref(*dvl_args)
    dh_ref = reference.dh_pass_ref(f["q"], a["kt"], a["w"], a["g"], a["do"], dvl, a["dht"], a["cu"], sc, C)
    dh, du, _ = dh_ref
    dqk_args = (f["q"], a["kt"], a["g"], a["vnew"], a["h"], a["do"], dh, du, a["bounds"], sc, C)
    _, dkt, dw, dg = reference.bwd_dqk_ref(*dqk_args)
    wy_args = [
        f["k"],
        a["d"],
        a["c"],
        a["kt"],
        f["v"],
        f["beta"],
        a["g"],
        a["ai"],
        dw,
        du,
        dkt,
        dg,
        a["bounds"],
        C,
    ]
    return dvl_args, dvl, dh_ref, dqk_args, wy_args


def _same(got, ref):
    for x, y in zip(got, ref, strict=True):
        assert (x is None) == (y is None) and (x is None or rel_err(x, y) < EXACT_FLOAT64)


@pytest.mark.parametrize("case", list(BACKWARD_CASES))
def test_backward_stages_match_torch_twins(case):
    """Each backward stage (b1 ``dv_local``, b2 ``dh_pass``, b3 ``bwd_dqk``, b4 ``bwd_wy``) alone against its
    plain-torch twin in ``reference``, every stage fed the twins' results of the stages before it."""
    a = _backward_stage_inputs(BACKWARD_CASES[case])
    f, C, sc = a["flat"], a["C"], 0.3
    dvl_args, dvl, dh_ref, dqk_args, wy_args = _twin_chain(a, sc)
    _same([stages.dv_local(*dvl_args)], [dvl])
    _same(
        stages.dh_pass(f["q"], a["kt"], a["w"], a["g"], a["do"], dvl, a["dht"], a["cu"], a["offs"], a["NC"], sc, C,
                       True),
        dh_ref,
    )  # fmt: skip
    _same(stages.bwd_dqk(*dqk_args), reference.bwd_dqk_ref(*dqk_args))
    _same(stages.bwd_wy(*wy_args), reference.bwd_wy_ref(*wy_args))


@pytest.mark.parametrize("dropped", ["clip", "gate"])
def test_backward_stage_negative_control(dropped):
    """The backward twins can fail: ``bwd_wy``'s ``dk`` and ``dβ`` (clip) or ``d log α`` and ``dq`` (gate) miss
    the bound against twins that leave out the clip's chain rule or the decay."""
    a = _backward_stage_inputs(BACKWARD_CASES["gated-d-clip-h0"])
    _, _, _, dqk, wy = _twin_chain(a, 0.3)
    got = stages.bwd_wy(*wy)
    sep = NEG_CONTROL_SEPARATION * EXACT_FLOAT64
    if dropped == "clip":
        wy[2] = None
        wrong = reference.bwd_wy_ref(*wy)
        assert rel_err(got[0], wrong[0]) > sep and rel_err(got[3], wrong[3]) > sep
    else:
        wrong_dq = reference.bwd_dqk_ref(*dqk[:2], None, *dqk[3:])[0]
        assert rel_err(stages.bwd_dqk(*dqk)[0], wrong_dq) > sep
        wy[6] = None
        wrong = reference.bwd_wy_ref(*wy)
        assert wrong[4] is None and rel_err(got[0], wrong[0]) > sep


@pytest.mark.parametrize("dropped", ["d", "alpha"])
def test_stage_negative_control(dropped):
    """Negative control for the stage test: stage 1's write key and ``A⁻¹`` miss the same bound by orders of
    magnitude against a twin that drops the preconditioner ``d`` or the gate (so the comparison can fail)."""
    names = ["d", "alpha"]
    C = 16
    x = make_inputs(1, B=2, T=21)
    flat, d, (_, _, bounds, _), _ = _packed(x, names, C)
    got = stages.gram_solve(flat["k"], d, flat["beta"], flat["la"], bounds, None, C)
    ref = reference.gram_solve_ref(flat["k"], d, flat["beta"], flat["la"], bounds, None, C)
    assert rel_err(got[3], ref[3]) < EXACT_FLOAT64  # the positive case, as in the test above
    wrong = reference.gram_solve_ref(
        flat["k"],
        None if dropped == "d" else d,
        flat["beta"],
        None if dropped == "alpha" else flat["la"],
        bounds,
        None,
        C,
    )
    assert rel_err(got[3], wrong[3]) > NEG_CONTROL_SEPARATION * EXACT_FLOAT64
    if dropped == "d":
        assert rel_err(got[0], wrong[0]) > NEG_CONTROL_SEPARATION * EXACT_FLOAT64


# ------------------------------------------------------------------------------------------------ forward


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("T", [37, 64])
def test_forward_matches_recurrence_float64(case, T):
    names, kw = CASES[case]
    x = make_inputs(10 + T, T=T)
    o, ht = chunk_osdn(**_pick(x, names), **kw, output_final_state=True, chunk_size=16)
    o_ref, ht_ref = osdn_recurrent(**_pick(x, names), **kw, output_final_state=True)
    assert rel_err(o, o_ref) < KERNEL_INTERP_FLOAT64
    assert rel_err(ht, ht_ref) < KERNEL_INTERP_FLOAT64


@pytest.mark.parametrize("C", [32, 64])
def test_forward_chunk_sizes_and_odd_dims(C):
    x = make_inputs(3, T=70, H=1, K=20, V=24)
    names, kw = CASES["gated-d-h0"]
    o, ht = chunk_osdn(**_pick(x, names), output_final_state=True, chunk_size=C)
    o_ref, ht_ref = osdn_recurrent(**_pick(x, names), output_final_state=True)
    assert rel_err(o, o_ref) < KERNEL_INTERP_FLOAT64 and rel_err(ht, ht_ref) < KERNEL_INTERP_FLOAT64


def test_forward_float32_ieee():
    x = make_inputs(4, T=45)
    names, kw = CASES["gated-d-h0"]
    x32 = {n: t.float() for n, t in x.items()}
    o, ht = chunk_osdn(**_pick(x32, names), output_final_state=True, chunk_size=16)
    o_ref, ht_ref = osdn_recurrent(**_pick(x32, names), output_final_state=True)  # float64 of the fp32 inputs
    assert o.dtype == torch.float32 and ht.dtype == torch.float32
    assert rel_err(o, o_ref) < rtol(torch.float32) and rel_err(ht, ht_ref) < rtol(torch.float32)


def test_forward_and_backward_float16():
    """16-bit inputs (the GPU's storage path: write key, WY factors, states and gradients stored in the input
    dtype) under the interpreter, against float64 of the same fp16 inputs at ``rtol(float16)``. bfloat16 has
    no interpreter path (see the next test); on a GPU it is covered by ``test_kernels_gpu.py``."""
    names, kw = CASES["gated-d-h0"]
    x = {n: t.half() for n, t in make_inputs(4, T=45).items()}
    x64 = {n: t.double() for n, t in x.items()}
    g = torch.Generator().manual_seed(5)
    do = torch.randn(x["v"].shape, generator=g, dtype=F64)
    dht = torch.randn(x["initial_state"].shape, generator=g, dtype=F64)
    o, ht = chunk_osdn(**_pick(x, names), output_final_state=True, chunk_size=16)
    o_ref, ht_ref = osdn_recurrent(**_pick(x64, names), output_final_state=True)
    assert o.dtype == torch.float16 and ht.dtype == torch.float32
    assert rel_err(o, o_ref) < rtol(torch.float16) and rel_err(ht, ht_ref) < rtol(torch.float16)
    got = _grads(chunk_osdn, x, names, kw, do.half(), dht.float(), chunk_size=16)
    ref = _grads(osdn_recurrent, x64, names, kw, do.half().double(), dht.float().double())
    for n in got:
        assert got[n].dtype == x[n].dtype or n == "initial_state", n
        assert rel_err(got[n], ref[n]) < rtol(torch.float16), n


def test_bfloat16_refused_under_the_interpreter():
    """The interpreter's ``tl.dot`` is wrong for bf16 operands, so bf16 input raises instead of running."""
    x = {n: t.bfloat16() for n, t in make_inputs(4, T=8, K=4, V=4).items()}
    with pytest.raises(ValueError, match=r"^k: bfloat16 .*got bfloat16"):
        chunk_osdn(x["q"], x["k"], x["v"], x["beta"])
    with pytest.raises(ValueError, match=r"^k: bfloat16"):
        d_ratio_scan(x["k"], x["beta"], c=0.5, d_init=1.0, d_min=1e-4)


@triton.jit
def _dot16(a, b, c, DT: tl.constexpr):
    o = tl.arange(0, 16)
    x = tl.load(a + o[:, None] * 16 + o[None, :]).to(DT)
    y = tl.load(b + o[:, None] * 16 + o[None, :]).to(DT)
    tl.store(c + o[:, None] * 16 + o[None, :], tl.dot(x, y, out_dtype=tl.float32))


def test_interpreter_bf16_dot_is_wrong_fp16_right():
    """Why bf16 is refused under the interpreter: one 16×16 ``tl.dot`` of bf16 operands misses the product of
    the same (bf16-exact) values by far more than ``rtol(bfloat16)``, while fp16 meets ``rtol(float16)``. If
    a Triton release fixes the interpreter, this fails and the guard in ``kernels/_checks.py`` can go."""
    g = torch.Generator().manual_seed(8)
    a32 = torch.randn(16, 16, generator=g).bfloat16().float()  # values exact in bf16 and in fp16
    b32 = torch.randn(16, 16, generator=g).bfloat16().float()
    errs = {}
    for name, dt in (("bf16", tl.bfloat16), ("fp16", tl.float16)):
        c = torch.empty(16, 16)
        _dot16[(1,)](a32, b32, c, DT=dt)
        errs[name] = rel_err(c, a32.double() @ b32.double())
    assert errs["bf16"] > NEG_CONTROL_SEPARATION * rtol(torch.bfloat16), errs
    assert errs["fp16"] < rtol(torch.float16), errs


def test_deltanet_is_d_none_and_d_one():
    """``d = None`` and ``d ≡ 1`` both give DeltaNet (checked against the independent DeltaNet recurrence)."""
    x = make_inputs(5, T=30)
    o_none, _ = chunk_osdn(x["q"], x["k"], x["v"], x["beta"], chunk_size=16)
    o_one, _ = chunk_osdn(x["q"], x["k"], x["v"], x["beta"], torch.ones_like(x["k"]), chunk_size=16)
    o_ref, _ = delta_rule_recurrent(x["q"], x["k"], x["v"], x["beta"])
    assert rel_err(o_none, o_ref) < KERNEL_INTERP_FLOAT64 and rel_err(o_one, o_ref) < KERNEL_INTERP_FLOAT64


def test_negative_control_d_matters():
    """Negative control: OSDN with a non-trivial d is not DeltaNet; the comparison above can fail."""
    x = make_inputs(6, T=30)
    o, _ = chunk_osdn(x["q"], x["k"], x["v"], x["beta"], x["d"], chunk_size=16)
    o_dn, _ = delta_rule_recurrent(x["q"], x["k"], x["v"], x["beta"])
    assert rel_err(o, o_dn) > NEG_CONTROL_SEPARATION * KERNEL_INTERP_FLOAT64


def test_broadcast_d_and_scale():
    x = make_inputs(7, T=20)
    d = torch.exp(torch.linspace(-0.5, 0.5, 16, dtype=F64))
    o, _ = chunk_osdn(x["q"], x["k"], x["v"], x["beta"], d, scale=0.7, chunk_size=16)
    o_ref, _ = osdn_recurrent(x["q"], x["k"], x["v"], x["beta"], d, scale=0.7)
    assert rel_err(o, o_ref) < KERNEL_INTERP_FLOAT64


# ----------------------------------------------------------------------------------------------- backward


def _grads(fn, x, names, kw, do, dht, **extra):
    xs = {n: t.clone().requires_grad_(True) for n, t in _pick(x, names).items()}
    o, ht = fn(**xs, **kw, output_final_state=True, **extra)
    ((o * do).sum() + (ht * dht).sum()).backward()
    return {n: t.grad for n, t in xs.items()}


@pytest.mark.parametrize("K", [16, 20])
@pytest.mark.parametrize("case", ["deltanet", "d-h0", "d-clip", "gated-d-h0", "gated-clip-nod"])
def test_backward_matches_recurrence_autograd(case, K):
    """K = 20 runs the K-blocked loops of the weight-factor backward with two blocks, the second masked."""
    names, kw = CASES[case]
    x = make_inputs(20, T=37, K=K)
    g = torch.Generator().manual_seed(21)
    do = torch.randn(x["v"].shape, generator=g, dtype=F64)
    dht = torch.randn(x["initial_state"].shape, generator=g, dtype=F64)
    got = _grads(chunk_osdn, x, names, kw, do, dht, chunk_size=16)
    ref = _grads(osdn_recurrent, x, names, kw, do, dht)
    for n in got:
        assert rel_err(got[n], ref[n]) < KERNEL_INTERP_FLOAT64, n


@pytest.mark.parametrize("K", [20, 64])
@pytest.mark.parametrize("case", ["d-clip", "gated-d-h0"])
def test_state_pass_key_split(case, K):
    """The state pass with its state block split into two halves over the key dimension (``KSPLIT``; at K = 20
    the second half is partly masked): forward, final state and every gradient against the float64
    recurrence (the default path, without the split, is what every other test runs)."""
    launch = Launch(state=LaunchConfig(KSPLIT=True), record={})
    _check_forward_and_grads(CASES[case], make_inputs(31, T=37, H=2, K=K, V=24), seed=32, launch=launch)
    assert launch.record["state"]["config"]["KSPLIT"] is True  # the override reached the launcher


def _check_forward_and_grads(case, x, seed, launch=None):
    """Forward, final state and every gradient of ``chunk_osdn`` (chunk 16, launch configuration ``launch``)
    against the float64 recurrence."""
    names, kw = case
    g = torch.Generator().manual_seed(seed)
    do = torch.randn(x["v"].shape, generator=g, dtype=F64)
    dht = torch.randn(x["initial_state"].shape, generator=g, dtype=F64)
    got = _grads(chunk_osdn, x, names, kw, do, dht, chunk_size=16, launch=launch)
    ref = _grads(osdn_recurrent, x, names, kw, do, dht)
    o, ht = chunk_osdn(**_pick(x, names), **kw, output_final_state=True, chunk_size=16, launch=launch)
    o_ref, ht_ref = osdn_recurrent(**_pick(x, names), **kw, output_final_state=True)
    assert rel_err(o, o_ref) < KERNEL_INTERP_FLOAT64 and rel_err(ht, ht_ref) < KERNEL_INTERP_FLOAT64
    for n in got:
        assert rel_err(got[n], ref[n]) < KERNEL_INTERP_FLOAT64, n


@pytest.mark.parametrize("case", ["d-clip", "gated-d-h0"])
def test_gpu_block_choices_under_the_interpreter(case):
    """The interpreter normally runs its own block choices (V in one block up to 64, ``bwd_wy`` in K blocks of
    16). Here the launchers use the GPU's choices instead: with one sequence and head the state and dh passes
    split V = 24 into two blocks of 16 (the second masked) and ``bwd_wy`` takes K = 20 in one masked block of
    32. Forward, final state and every gradient against the float64 recurrence."""
    assert (stages._bv(24, 1), stages._bk_wy(20)) == (32, 16)  # the interpreter's own choices
    assert (stages._bv(24, 1, gpu=True), stages._bk_wy(20, gpu=True)) == (16, 32)  # the GPU's choices
    launch = Launch(gpu_rules=True, record={})
    _check_forward_and_grads(CASES[case], make_inputs(22, T=37, H=1, K=20, V=24), seed=23, launch=launch)
    rec = launch.record  # the GPU's choices were in effect
    assert (rec["state"]["config"]["BV"], rec["dh"]["config"]["BV"], rec["bwd_wy"]["config"]["BK"]) == (
        16,
        16,
        32,
    )


def test_gradcheck_tiny():
    x = make_inputs(30, T=6, H=1, K=4, V=4)
    names = ["d", "alpha", "initial_state"]
    args = [x[n].clone().requires_grad_(True) for n in ["q", "k", "v", "beta", *names]]

    def fn(q, k, v, beta, d, alpha, h0):
        o, ht = chunk_osdn(
            q, k, v, beta, d, alpha=alpha, initial_state=h0, s_max=0.9, output_final_state=True, chunk_size=16
        )
        return o, ht

    assert torch.autograd.gradcheck(
        fn, tuple(args), fast_mode=True, eps=GRADCHECK_EPS, atol=GRADCHECK_ATOL, rtol=GRADCHECK_RTOL
    )


# ------------------------------------------------------------------------------------------- cu_seqlens


def test_varlen_matches_separate_sequences():
    lens = [5, 23, 17]
    x = make_inputs(40, B=1, T=sum(lens), H=2)
    names, kw = CASES["gated-d-h0"]
    h0 = torch.randn(len(lens), 2, 16, 32, generator=torch.Generator().manual_seed(41), dtype=F64)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    g = torch.Generator().manual_seed(42)
    do = torch.randn(x["v"].shape, generator=g, dtype=F64)
    dht = torch.randn(h0.shape, generator=g, dtype=F64)
    xv = dict(x, initial_state=h0)
    got = _grads(chunk_osdn, xv, names, kw, do, dht, chunk_size=16, cu_seqlens=cu)
    xs = {n: t.clone().requires_grad_(True) for n, t in _pick(xv, names).items()}
    o, ht = chunk_osdn(**xs, output_final_state=True, chunk_size=16, cu_seqlens=cu)
    loss = (o * do).sum() + (ht * dht).sum()
    ref_loss = 0.0
    ys = {n: t.clone().requires_grad_(True) for n, t in _pick(xv, names).items()}
    for i in range(len(lens)):
        a, b = int(cu[i]), int(cu[i + 1])
        seg = {n: (t[:, a:b] if n != "initial_state" else t[i : i + 1]) for n, t in ys.items()}
        o_i, ht_i = osdn_recurrent(**seg, output_final_state=True)
        assert rel_err(o[:, a:b], o_i) < KERNEL_INTERP_FLOAT64
        assert rel_err(ht[i : i + 1], ht_i) < KERNEL_INTERP_FLOAT64
        ref_loss = ref_loss + (o_i * do[:, a:b]).sum() + (ht_i * dht[i : i + 1]).sum()
    ref_loss.backward()
    assert abs(float(loss) - float(ref_loss)) < KERNEL_INTERP_FLOAT64 * abs(float(ref_loss))
    for n in got:
        assert rel_err(got[n], ys[n].grad) < KERNEL_INTERP_FLOAT64, n


# ------------------------------------------------------------------------------------------------- d rule


def test_d_ratio_scan_matches_spec_loop():
    x = make_inputs(50, B=2, T=37)
    beta = torch.full_like(x["beta"], 0.8)
    d0 = torch.exp(0.2 * torch.randn(2, 16, generator=torch.Generator().manual_seed(51), dtype=F64))
    ref = _ratio_rule_loop(x["k"], beta, 0.3, d0)
    assert float(ref.min()) > 0  # the floor is inactive here, so the comparison is exact
    got = d_ratio_scan(x["k"], beta, c=0.3, d_init=d0, d_min=1e-9, chunk_size=16)
    assert rel_err(got, ref) < KERNEL_INTERP_FLOAT64


def test_d_rule_against_preconditioners_d_scan():
    from osdn_theory import preconditioners as pre

    x = make_inputs(52, B=1, T=30)
    beta = torch.full_like(x["beta"], 0.8)
    ref = pre.d_scan(x["k"], beta, rule="ratio", step=pre.NormalizedStep(0.3), d_init=1.0).d
    got = d_ratio_scan(x["k"], beta, c=0.3, d_init=1.0, d_min=1e-9, chunk_size=16)
    assert rel_err(got, ref.clamp_min(1e-9)) < KERNEL_INTERP_FLOAT64


def test_chunk_osdn_with_d_rule():
    x = make_inputs(53, B=1, T=40)
    beta = torch.full_like(x["beta"], 0.8)
    rule = DRule(c=0.5, d_init=1.0, d_min=1e-9)
    o, ht = chunk_osdn(x["q"], x["k"], x["v"], beta, d_rule=rule, output_final_state=True, chunk_size=16)
    d = _ratio_rule_loop(x["k"], beta, 0.5, torch.tensor(1.0, dtype=F64)).clamp_min(1e-9)
    o_ref, ht_ref = osdn_recurrent(x["q"], x["k"], x["v"], beta, d, output_final_state=True)
    assert rel_err(o, o_ref) < KERNEL_INTERP_FLOAT64 and rel_err(ht, ht_ref) < KERNEL_INTERP_FLOAT64


# ------------------------------------------------------------------------------------------------- errors


def test_input_errors():
    x = make_inputs(60, T=8, K=4, V=4)
    q, k, v, b = x["q"], x["k"], x["v"], x["beta"]
    with pytest.raises(ValueError, match=r"^q: "):
        chunk_osdn(q[:, :4], k, v, b)
    with pytest.raises(ValueError, match=r"^v: "):
        chunk_osdn(q, k, v.float(), b)
    with pytest.raises(ValueError, match=r"^k: "):
        big = torch.zeros(1, 2, 1, 257, dtype=F64)
        chunk_osdn(big, big, torch.zeros(1, 2, 1, 4, dtype=F64), torch.full((1, 2, 1), 0.5, dtype=F64))
    with pytest.raises(ValueError, match=r"^v: "):
        chunk_osdn(q, k, torch.zeros(1, 8, 2, 300, dtype=F64), b)
    with pytest.raises(ValueError, match=r"^d: "):
        chunk_osdn(q, k, v, b, -x["d"])
    with pytest.raises(ValueError, match=r"^d: "):
        chunk_osdn(q, k, v, b, torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match=r"^beta: "):
        chunk_osdn(q, k, v, 2 * b)
    with pytest.raises(ValueError, match=r"^alpha: "):
        chunk_osdn(q, k, v, b, alpha=torch.zeros_like(b))
    with pytest.raises(ValueError, match=r"^chunk_size: "):
        chunk_osdn(q, k, v, b, chunk_size=48)
    with pytest.raises(ValueError, match=r"^s_max: "):
        chunk_osdn(q, k, v, b, s_max=2.5)
    with pytest.raises(ValueError, match=r"^initial_state: "):
        chunk_osdn(q, k, v, b, initial_state=torch.zeros(1, 2, 4, 5, dtype=F64))
    with pytest.raises(ValueError, match=r"^cu_seqlens: "):
        chunk_osdn(q, k, v, b, cu_seqlens=torch.tensor([0, 5, 5, 8]))
    with pytest.raises(ValueError, match=r"^cu_seqlens: "):
        x2 = make_inputs(61, B=2, T=8, K=4, V=4)
        chunk_osdn(x2["q"], x2["k"], x2["v"], x2["beta"], cu_seqlens=torch.tensor([0, 8, 16]))
    with pytest.raises(ValueError, match=r"^d_rule: "):
        chunk_osdn(q, k, v, b, x["d"], d_rule=DRule())
    with pytest.raises(ValueError, match=r"^c: "):
        DRule(c=2.0)
    with pytest.raises(ValueError, match=r"^k: "):
        chunk_osdn(q, k.to("meta"), v, b)


def test_largest_head_dims_256():
    """K = V = 256 (the largest supported head dims): forward and gradients against the recurrence."""
    x = make_inputs(70, T=20, H=1, K=256, V=256)
    names, kw = CASES["gated-d-h0"]
    g = torch.Generator().manual_seed(71)
    do = torch.randn(x["v"].shape, generator=g, dtype=F64)
    dht = torch.randn(x["initial_state"].shape, generator=g, dtype=F64)
    got = _grads(chunk_osdn, x, names, kw, do, dht, chunk_size=16)
    ref = _grads(osdn_recurrent, x, names, kw, do, dht)
    o, _ = chunk_osdn(**_pick(x, names), chunk_size=16)
    o_ref, _ = osdn_recurrent(**_pick(x, names))
    assert rel_err(o, o_ref) < KERNEL_INTERP_FLOAT64
    for n in got:
        assert rel_err(got[n], ref[n]) < KERNEL_INTERP_FLOAT64, n


def test_value_errors_name_the_argument():
    x = make_inputs(80, T=8, K=4, V=4)
    q, k, v, b = x["q"], x["k"], x["v"], x["beta"]
    bad = q.clone()
    bad[0, 3, 1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"^q: "):
        chunk_osdn(bad, k, v, b)
    with pytest.raises(ValueError, match=r"^v: "):
        chunk_osdn(q, k, v * float("inf"), b)
    d0 = x["d"].clone()
    d0[0, 0, 0, 0] = 0.0
    with pytest.raises(ValueError, match=r"^d: "):
        chunk_osdn(q, k, v, b, d0)
    with pytest.raises(ValueError, match=r"^beta: "):
        chunk_osdn(q, k, v, -b)
    # validate=False skips only the value checks: the NaN query now runs (and shows up in the output) and
    # d = 0 is accepted, while shape checks still raise
    o, _ = chunk_osdn(bad, k, v, b, d0, validate=False, chunk_size=16)
    assert not bool(torch.isfinite(o).all()) and bool(torch.isfinite(o[0, :3]).all())
    with pytest.raises(ValueError, match=r"^q: "):
        chunk_osdn(q[:, :4], k, v, b, validate=False)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("validate", [True, "sync"])
@pytest.mark.parametrize(
    "name, bad",
    [("q", NAN), ("k", INF), ("k", NAN), ("v", -INF), ("beta", 0.0), ("beta", 1.5), ("beta", NAN)]
    + [("d", 0.0), ("d", -0.5), ("d", INF), ("alpha", 0.0), ("alpha", 1.25), ("alpha", NAN)],
)
def test_each_bad_value_is_reported(name, bad, validate):
    """Every bad value (NaN/inf, β ∉ (0, 1], d ≤ 0, α ∉ (0, 1]) is found by the checks folded into the kernels
    (one entry of one chunk; gated, with d) and raised naming the argument, with the default and "sync"."""
    x = make_inputs(81, T=20, K=4, V=4)
    args = _pick(x, ["d", "alpha"])
    args[name] = args[name].clone()
    args[name].view(-1)[5] = bad
    with pytest.raises(ValueCheckError, match=rf"^{name}: expected .*got"):
        chunk_osdn(**args, chunk_size=16, validate=validate)
    chunk_osdn(**args, chunk_size=16, validate=False)  # unchecked: runs


@pytest.mark.parametrize(
    "d_check, token, bad",
    # every bad kind at "tile" (what the default "auto" runs at K <= 64); the others (each about 5 s under the
    # interpreter) with two
    [("tile", t, b) for t in (0, 17, 50, 66, 69) for b in (0.0, -1e-30, NAN, INF)]
    + [
        (c, t, b)
        for c in D_CHECKS
        if c not in ("auto", "tile")
        for t in (0, 17, 50, 66, 69)
        for b in (-1e-30, NAN)
    ],
)
def test_bad_d_is_reported_in_every_row_block_and_chunk(token, bad, d_check):
    """``d`` is checked by stage 1 on the tile it loads for the write key, one 16-row block at a time (or, with
    ``Launch(d_check="pass")``, by a pass of its own): a bad entry in any row block of any chunk (64-token chunks;
    tokens 17, 50 sit in row blocks 1 and 3 of chunk 0, 66 and 69 in chunk 1, the last one partial) and in the
    last key column is reported, ungated and gated, wherever the check sits."""
    x = make_inputs(82, T=70, H=1, K=4, V=4)
    launch = Launch(d_check=d_check)
    for names in (["d"], ["d", "alpha"]):
        args = _pick(x, names)
        args["d"] = args["d"].clone()
        args["d"][0, token, 0, 3] = bad
        with pytest.raises(ValueCheckError, match=r"^d: expected .*got"):
            chunk_osdn(**args, chunk_size=64, launch=launch)
        chunk_osdn(**args, chunk_size=64, validate=False, launch=launch)  # unchecked: runs
        args["d"][0, token, 0, 3] = 1.0
        chunk_osdn(**args, chunk_size=64, launch=launch)  # and a good d raises nothing


@pytest.mark.parametrize("pos", [0, 15, 16, 47, 99])
def test_the_d_pass_checks_every_program_and_the_partial_last_one(pos):
    """``check_d`` (``d_check="pass"``) with 16 entries a program over 100 entries: a bad entry in the first,
    a middle and the partial last program sets the bit, as its torch twin says; a good ``d`` sets nothing."""
    from osdn_theory.kernels.d_check import check_d, check_d_ref

    d = torch.rand(100, dtype=torch.float64) + 0.1
    flag = torch.zeros(1, dtype=torch.int32)
    check_d(d, flag, block=16)
    assert int(flag) == 0 == check_d_ref(d)
    for bad in (0.0, -2.0, NAN, INF):
        d[pos], flag[0] = bad, 0
        check_d(d, flag, block=16)
        assert int(flag) == stages.BAD_D.value == check_d_ref(d)
        d[pos] = 0.5


def test_launch_d_check_is_validated():
    with pytest.raises(
        ValueError,
        match=r"^d_check: expected one of \('auto', 'tile', 'rows', 'pass', 'atomic'\), got 'stage2'",
    ):
        Launch(d_check="stage2")


@pytest.mark.parametrize("K, where", [(64, "tile"), (65, "pass"), (80, "pass")])
def test_the_default_d_check_is_a_pass_above_k64_and_reports_bad_d(K, where):
    """The default placement (``"auto"``) checks ``d`` with its own pass for head dims above 64 and in stage 1
    at or below (the launch record shows whether the pass ran); either way a bad ``d`` in the last token and
    column is reported and a good one is not."""
    from osdn_theory.kernels.config import AUTO_PASS_ABOVE_K

    assert AUTO_PASS_ABOVE_K == 64 and Launch().d_check == "auto" and Launch().d_check_for(K) == where
    x = make_inputs(83, T=20, H=1, K=K, V=4)
    args = _pick(x, ["d"])
    rec: dict = {}
    chunk_osdn(**args, chunk_size=16, launch=Launch(record=rec))
    assert ("check_d" in rec) == (where == "pass"), sorted(rec)
    args["d"] = args["d"].clone()
    args["d"][0, 19, 0, K - 1] = -1.0
    with pytest.raises(ValueCheckError, match=r"^d: expected .*got"):
        chunk_osdn(**args, chunk_size=16)


@pytest.mark.parametrize("name, bad", [("k", NAN), ("beta", 0.0), ("beta", 2.0)])
def test_d_ratio_scan_bad_values_are_reported(name, bad):
    a = _scan_args()
    a[name] = a[name].clone()
    a[name].view(-1)[3] = bad
    with pytest.raises(ValueCheckError, match=rf"^{name}: expected .*got"):
        d_ratio_scan(**a)


def test_lazy_report_of_the_gpu_path(monkeypatch):
    """The GPU path's reporting logic, on a stand-in device entry: a bit that reached the host word is raised
    by the next call's poll (naming the argument), which clears both words; ``check_values`` reads the device
    word itself; several bits report the first argument in order q, k, v, beta, alpha, d."""
    from osdn_theory.kernels import _checks, check_values

    dev = torch.device("cpu")
    beta_bit = torch.tensor([stages.BAD_BETA.value], dtype=torch.int32)
    monkeypatch.setitem(_checks._STICKY, dev, [beta_bit.clone(), beta_bit.clone()])
    with pytest.raises(ValueError, match=r"^beta: expected values in \(0, 1\], got values outside"):
        _checks.poll()
    assert int(_checks._STICKY[dev][0]) == 0 and int(_checks._STICKY[dev][1]) == 0
    _checks.poll()
    _checks._STICKY[dev][0].fill_(stages.BAD_D.value | stages.BAD_K.value)
    _checks.poll()  # the host word has not seen it yet: nothing raised, no wait
    with pytest.raises(ValueCheckError, match=r"^k: expected finite values"):
        check_values()
    check_values()


def test_discard_values_clears_and_returns_the_message(monkeypatch):
    """``discard_values`` (for a loop that already stopped a diverged run): returns the flagged argument's
    message and clears both words, so the next call's poll raises nothing; ``None`` when nothing is flagged."""
    from osdn_theory.kernels import _checks, discard_values

    dev = torch.device("cpu")
    q_bit = torch.tensor([stages.BAD_Q.value], dtype=torch.int32)
    monkeypatch.setitem(_checks._STICKY, dev, [q_bit.clone(), q_bit.clone()])
    msg = discard_values()
    assert msg is not None and msg.startswith("q: expected finite values")
    assert int(_checks._STICKY[dev][0]) == 0 and int(_checks._STICKY[dev][1]) == 0
    _checks.poll()
    assert discard_values() is None


# ------------------------------------------------------------------------------------------- the solve


def _chunk_matrix(x, C):
    """``A = I + diag(β) tril₋₁(K K̃ᵀ)`` of the first chunk and head (no gate, no clip), float64."""
    k, kt, b = x["k"][0, :C, 0], (x["d"] * x["k"])[0, :C, 0], x["beta"][0, :C, 0]
    return torch.eye(C, dtype=F64) + b[:, None] * (k @ kt.T).tril(-1)


def _product_form_inverse(A):
    """Plain product form per 16×16 diagonal block, without the kernel's Newton step (negative control)."""
    X = torch.zeros_like(A)
    eye = torch.eye(16, dtype=A.dtype)
    for s in range(0, A.shape[0], 16):
        L = A[s : s + 16, s : s + 16] - eye
        L2 = L @ L
        L4 = L2 @ L2
        X[s : s + 16, s : s + 16] = (eye - L) @ (eye + L2) @ (eye + L4) @ (eye + L4 @ L4)
    return X


def _aligned_inputs(gain):
    """Nearly aligned keys in every chunk, so the Gram entries are ≈ ``gain`` (powers of L grow binomially)."""
    x = make_inputs(11, T=64, H=1, K=16)
    g = torch.Generator().manual_seed(12)
    u = F.normalize(torch.randn(16, generator=g, dtype=F64), dim=0)
    x["k"] = F.normalize(u + 1e-3 * torch.randn(1, 64, 1, 16, generator=g, dtype=F64), dim=-1)
    x["beta"] = torch.full_like(x["beta"], 0.95)
    x["d"] = torch.full_like(x["d"], gain / 0.95)
    return x


@pytest.mark.parametrize("case", ["random", "aligned-1.5", "aligned-2.4"])
def test_solve_matches_solve_triangular(case):
    """Stage 1's ``A⁻¹`` (diagonal blocks by product form + Newton step, the rest by block substitution)
    equals ``torch.linalg.solve_triangular`` in float64 for a whole 64-token chunk, also when the keys of a
    chunk are nearly aligned (Gram entries 1.5 or 2.4: the inverse's entries then grow like 1.4ⁿ)."""
    C = 64
    x = make_inputs(10, T=64, H=1, K=16) if case == "random" else _aligned_inputs(float(case.split("-")[1]))
    flat, d, (_, _, bounds, _), _ = _packed(x, ["d"], C)
    _, _, _, ai = stages.gram_solve(flat["k"], d, flat["beta"], None, bounds, None, C)
    A = _chunk_matrix(x, C)
    ref = torch.linalg.solve_triangular(A, torch.eye(C, dtype=F64), upper=False, unitriangular=True)
    assert rel_err(ai[:, 0], ref) < EXACT_FLOAT64
    if case != "random":
        # negative control: this case is hard enough that the plain product form misses the bound
        Xd = _product_form_inverse(A)
        blocks = torch.block_diag(*[ref[s : s + 16, s : s + 16] for s in range(0, C, 16)])
        assert rel_err(Xd, blocks) > EXACT_FLOAT64


# ------------------------------------------------------------------------------ argument checks (no kernel)


def _scan_args():
    x = make_inputs(90, T=8, K=4, V=4)
    return dict(k=x["k"], beta=x["beta"], c=0.5, d_init=1.0, d_min=1e-4, chunk_size=16)


@pytest.mark.parametrize(
    "name, change",
    [
        ("beta", lambda a: dict(a, beta=a["beta"].transpose(1, 2))),  # [B, H, T]: same numel, wrong layout
        ("beta", lambda a: dict(a, beta=a["beta"].float())),
        ("beta", lambda a: dict(a, beta=torch.zeros_like(a["beta"]))),
        ("k", lambda a: dict(a, k=a["k"].transpose(1, 2))),
        ("k", lambda a: dict(a, k=a["k"].transpose(1, 2).contiguous().transpose(1, 2))),
        ("k", lambda a: dict(a, k=a["k"].to("meta"))),
        ("c", lambda a: dict(a, c=2.0)),
        ("d_min", lambda a: dict(a, d_min=0.0)),
        ("d_init", lambda a: dict(a, d_init=-1.0)),
        ("d_init", lambda a: dict(a, d_init=torch.tensor([1.0, float("inf"), 1.0, 1.0], dtype=F64))),
        ("d_init", lambda a: dict(a, d_init=torch.ones(3, dtype=F64))),
        ("d_init", lambda a: dict(a, d_init=torch.ones(1, 1, 2, 4, dtype=F64))),
        ("chunk_size", lambda a: dict(a, chunk_size=8)),
        ("cu_seqlens", lambda a: dict(a, cu_seqlens=torch.tensor([0, 3, 7]))),
    ],
)
def test_d_ratio_scan_argument_errors(name, change):
    """The public scan names the argument, the expectation and what it got (earlier it ran on a transposed β
    and on c, d_min, d_init out of range without a word)."""
    with pytest.raises(ValueError, match=rf"^{name}: expected .*got"):
        d_ratio_scan(**change(_scan_args()))


def test_d_ratio_scan_checks_do_not_reject_valid_input():
    """Control for the test above: the unchanged arguments (and a d_init of shape [H, K]) pass."""
    a = _scan_args()
    d = d_ratio_scan(**dict(a, d_init=torch.ones(2, 4, dtype=F64)))
    assert d.shape == a["k"].shape and bool((d > 0).all())


@pytest.mark.parametrize(
    "name, change",
    [
        ("k", lambda x: dict(x, k=x["k"][..., :0], q=x["q"][..., :0])),  # K = 0 (was a ZeroDivisionError)
        ("v", lambda x: dict(x, v=x["v"][..., :0])),
        ("alpha", lambda x: dict(x, alpha=x["alpha"][:, :4])),
        ("beta", lambda x: dict(x, beta=x["beta"].float())),
        ("d", lambda x: dict(x, d=x["d"].float())),
        ("initial_state", lambda x: dict(x, initial_state=x["initial_state"].to("meta"))),
        ("scale", lambda x: dict(x, scale=0.0)),
        ("validate", lambda x: dict(x, validate="no")),  # a non-empty string would have meant True
        ("output_final_state", lambda x: dict(x, output_final_state=None)),
        ("d_init", lambda x: dict(x, d=None, d_rule=DRule(d_init=torch.ones(3, dtype=F64)))),
    ],
)
def test_chunk_osdn_argument_errors(name, change):
    x = make_inputs(91, T=8, K=4, V=4)
    with pytest.raises(ValueError, match=rf"^{name}: expected .*got"):
        chunk_osdn(**change(x), chunk_size=16)


@pytest.mark.parametrize(
    "name, kw",
    [
        ("d_init", dict(d_init=torch.tensor([1.0, float("nan")], dtype=F64))),
        ("d_init", dict(d_init=float("inf"))),
        ("d_init", dict(d_init=torch.zeros(0, dtype=F64))),
        ("rule", dict(rule="sign")),
        ("c", dict(c=0.0)),
        ("d_min", dict(d_min=-1e-4)),
    ],
)
def test_drule_argument_errors(name, kw):
    with pytest.raises(ValueError, match=rf"^{name}: expected .*got"):
        DRule(**kw)


# --------------------------------------------------------------- the GPU tests' reference, checked on the CPU


@pytest.mark.parametrize("case", list(GPU_CASES))
def test_gpu_reference_matches_recurrence(case):
    """The GPU tests compare the kernel with a differentiable float64 chunk form (``osdn_chunkwise`` in
    ``test_kernels_gpu.py``); here that reference meets the float64 token recurrence on the CPU: outputs,
    final states and every gradient, T = 70 (one full chunk of 64 and a tail)."""
    names, kw = GPU_CASES[case]
    x = make_inputs(24, T=70, K=16, V=16)
    g = torch.Generator().manual_seed(25)
    do = torch.randn(x["v"].shape, generator=g, dtype=F64)
    dht = torch.randn(x["initial_state"].shape, generator=g, dtype=F64)
    got = _grads(osdn_chunkwise, x, names, kw, do, dht)
    ref = _grads(osdn_recurrent, x, names, kw, do, dht)
    o, ht = osdn_chunkwise(**_pick(x, names), **kw)
    o_ref, ht_ref = osdn_recurrent(**_pick(x, names), **kw, output_final_state=True)
    assert rel_err(o, o_ref) < EXACT_FLOAT64 and rel_err(ht, ht_ref) < EXACT_FLOAT64
    for n in got:
        assert rel_err(got[n], ref[n]) < EXACT_FLOAT64, n


def test_gpu_tolerances_separate_the_cases():
    """Negative control for the GPU tests, run on the CPU with their input distribution and first shape: on
    the float64 reference, dropping the clip, ``d``, the gate or the initial state moves the output by more
    than twice the bf16 tolerance, so a kernel that ignored any of them fails the GPU tests (the clip is the
    closest call: it changes the 4 % of tokens with ``β kᵀ(d⊙k) > 0.9``)."""
    x = {n: t.to(F64) for n, t in gpu_make(1, 2, 1000, 4, 128, 128, torch.bfloat16, device="cpu").items()}
    q, k, v, b, d, a, h0 = (x[n] for n in ("q", "k", "v", "beta", "d", "alpha", "initial_state"))
    o_clip, _ = osdn_chunkwise(q, k, v, b, d, s_max=0.9)
    o_full, _ = osdn_chunkwise(q, k, v, b, d, alpha=a, initial_state=h0)
    dropped = {
        "clip": (osdn_chunkwise(q, k, v, b, d)[0], o_clip),
        "d": (osdn_chunkwise(q, k, v, b, s_max=0.9)[0], o_clip),
        "gate": (osdn_chunkwise(q, k, v, b, d, initial_state=h0)[0], o_full),
        "initial state": (osdn_chunkwise(q, k, v, b, d, alpha=a)[0], o_full),
    }
    for name, (wrong, right) in dropped.items():
        assert rel_err(wrong, right) > 2 * KERNEL_BF16_OUT, name
