"""OSDNAttention and RecallLM: the chunk kernel equals the float64 reference forward and backward, the rule's
torch twin equals the spec's scan, packed sequences stay separate, training lowers the loss, bad arguments."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from osdn_theory.layers import (
    ModelConfig,
    OSDNAttention,
    PeerUnavailable,
    RecallLM,
    ShortConvolution,
    model_from_dict,
    ratio_rule_d,
)
from osdn_theory.preconditioners import NormalizedStep, d_scan
from osdn_theory.tolerances import rel_err, rtol

HID, HEADS, T = 32, 2, 21  # head dim 16; T = 21: a full chunk of 16 and a tail of 5


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these tiny models run no faster on more, and a loaded shared machine runs them far
    slower (measured: 0.8 s alone, 10-12 s with 2 threads at load 8 on 2 cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _pair(d_mode, **kw):
    """The same layer twice: float64 reference mode and float32 chunk (kernel) mode."""
    torch.manual_seed(0)
    ref = OSDNAttention(HID, HEADS, d_mode=d_mode, mode="reference", chunk_size=16, **kw).double()
    if d_mode == "learned":  # move d off its DeltaNet start so the test sees a non-trivial d
        with torch.no_grad():
            ref.d_proj.weight.normal_(0.0, 0.5)
    ch = copy.deepcopy(ref).float()
    ch.mode = "chunk"
    return ref, ch


def _grads(m):
    return {n: p.grad for n, p in m.named_parameters()}


@pytest.mark.interpreter
@pytest.mark.parametrize("d_mode", ["none", "rule", "rule-detached", "learned", "rule-smax"])
def test_chunk_equals_reference_forward_and_backward(d_mode):
    kw = {"s_max": S_MAX} if d_mode.endswith("smax") else {}
    ref, ch = _pair(d_mode.split("-")[0], rule_detach=d_mode.endswith("detached"), **kw)
    x = torch.randn(2, T, HID, dtype=torch.float64, requires_grad=True)
    xf = x.detach().float().requires_grad_()
    w = torch.randn(2, T, HID, dtype=torch.float64)
    y_ref, y = ref(x), ch(xf)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert rel_err(y, y_ref) <= rtol(torch.float32)
    (y_ref * w).sum().backward()
    (y * w.float()).sum().backward()
    assert rel_err(xf.grad, x.grad) <= rtol(torch.float32)
    g_ref, g = _grads(ref), _grads(ch)
    for name in g_ref:
        assert rel_err(g[name], g_ref[name]) <= rtol(torch.float32), name


S_MAX = 0.8  # below the rule's s -> 1, so the clip acts on most tokens of the test input


def test_write_gain_clip_acts_and_caps_the_write_strength():
    """``s_max``: the layer's raw write strengths ``s = β kᵀ(d ⊙ k)`` exceed ``S_MAX`` on the test input (so the
    clip is exercised by the kernel-vs-reference test), the clipped layer's output differs from the unclipped
    one, and the label and repr name the clip; bad values name ``s_max``."""
    ref, _ = _pair("rule", s_max=S_MAX)
    x = torch.randn(2, T, HID, dtype=torch.float64)
    q, k, v, beta, _ = ref.features(x)
    d = ratio_rule_d(k, beta, ref.rule_c, 1.0, ref.rule_d_min)
    s_raw = beta * (k * d * k).sum(-1)
    assert float((s_raw > S_MAX).double().mean()) > 0.5
    free = copy.deepcopy(ref)
    free.s_max = None
    assert rel_err(ref(x), free(x)) > 1e-3
    assert "s_max=0.8" in repr(ref) and ModelConfig(s_max=1.5).label() == "osdn-rule-smax1.5"
    for bad in (0.0, 2.0, -1.0):
        with pytest.raises(ValueError, match=r"^s_max:"):
            OSDNAttention(HID, HEADS, s_max=bad)
    with pytest.raises(ValueError, match=r"^model\.s_max:"):
        model_from_dict({"s_max": 2.5})


@pytest.mark.interpreter
def test_chunk_equals_reference_packed_sequences():
    """cu_seqlens: kernel = reference, and both equal running the sequences one by one (no leak through the
    state, the rule or the short convolution)."""
    ref, ch = _pair("rule")
    x = torch.randn(1, T, HID, dtype=torch.float64)
    cu = torch.tensor([0, 6, T], dtype=torch.int32)
    y_ref = ref(x, cu_seqlens=cu)
    alone = torch.cat([ref(x[:, :6]), ref(x[:, 6:])], 1)
    assert rel_err(y_ref, alone) <= rtol(torch.float64)
    assert rel_err(ch(x.float(), cu_seqlens=cu), y_ref) <= rtol(torch.float32)


def test_rule_twin_equals_the_spec_scan_and_learned_starts_as_deltanet():
    torch.manual_seed(1)
    k = torch.nn.functional.normalize(torch.randn(2, 30, 2, 8, dtype=torch.float64), dim=-1)
    beta = torch.rand(2, 30, 2, dtype=torch.float64) * 0.9 + 0.05
    spec = d_scan(k, beta, step=NormalizedStep(0.5), positivity="none", d_min=None).d
    assert rel_err(ratio_rule_d(k, beta, 0.5, d_min=-1e30), spec) <= rtol(torch.float64)
    torch.manual_seed(2)
    learned = OSDNAttention(HID, HEADS, d_mode="learned", mode="reference").double()
    delta = OSDNAttention(HID, HEADS, d_mode="none", mode="reference").double()
    delta.load_state_dict({k: v for k, v in learned.state_dict().items() if not k.startswith("d_proj")})
    x = torch.randn(2, 9, HID, dtype=torch.float64)
    assert rel_err(learned(x), delta(x)) <= rtol(torch.float64)  # d = 2·sigmoid(0) = 1 at the start


def _write_strength(beta_filler: float, seed: int = 0):
    """``s_t = β_t kᵀ(d_t ⊙ k_t)`` under the ratio rule on unit keys, 80 % of the tokens written weakly
    (``β = beta_filler``), the rest strongly (``β = 0.9``); second half of the sequence. Returns (strong, weak)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.nn.functional.normalize(torch.randn(16, 128, 1, 32, generator=g, dtype=torch.float64), dim=-1)
    weak = torch.rand(16, 128, 1, generator=g) < 0.8
    beta = torch.where(weak, beta_filler, 0.9).to(torch.float64)
    s = beta * (k * ratio_rule_d(k, beta) * k).sum(-1)
    late = torch.zeros_like(weak)
    late[:, 64:] = True
    return s[late & ~weak], s[late & weak]


def test_ratio_rule_undoes_a_write_gate_and_leaves_the_contraction_range():
    """Why OSDN with the ratio rule did not learn MQAR on the GPU and diverged at width 128 (theory §10): the rule
    drives every token's write strength ``s_t`` to 1 (its target ``uᵀd = 1/β``), so a layer that gates its
    writes with ``β`` loses the gate (weak tokens written with ``s ≈ 0.9`` instead of ``β``), and the shared
    ``d`` follows the weak tokens, so strong ones get ``s ≫ 2``, outside C4's contraction range. With equal
    ``β`` everywhere (control) every ``s`` stays at 1."""
    strong, weak = _write_strength(0.1)
    assert float(weak.median()) > 0.6  # a gate of β = 0.1 would write with s = 0.1
    assert float((strong > 2).double().mean()) > 0.9 and float(strong.median()) > 4
    strong, weak = _write_strength(0.9)  # control: no gate
    assert float((strong - 1).abs().max()) < 0.05 and float((weak - 1).abs().max()) < 0.05


def test_short_convolution_is_causal():
    torch.manual_seed(3)
    conv = ShortConvolution(4, 3).double()
    x = torch.randn(1, 10, 4, dtype=torch.float64)
    y = conv(x)
    x2 = x.clone()
    x2[:, 6:] += 1.0
    assert torch.equal(conv(x2)[:, :6], y[:, :6])
    expect = torch.nn.functional.silu(sum(conv.weight[:, 2 - j] * x[:, 5 - j] for j in range(3)))
    assert rel_err(y[:, 5], expect) <= rtol(torch.float64)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(4)
    model = RecallLM(32, {"mode": "reference", "hidden_size": 32, "num_heads": 2, "d_mode": "rule"})
    x = torch.randint(0, 32, (4, 12))
    y = torch.roll(x, -1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, 32), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0], losses
    assert model(x).shape == (4, 12, 32)


def test_logits_at_marked_positions_are_the_full_logits_there():
    """``positions=mask`` projects only the marked positions (the training loop's answer tokens): the same
    values as indexing the full logits, in float64; bad ``positions`` / ``input_ids`` name the argument."""
    torch.manual_seed(5)
    model = RecallLM(32, {"mode": "reference", "hidden_size": 32, "num_heads": 2, "d_mode": "rule"}).double()
    x = torch.randint(0, 32, (3, 10))
    mask = torch.rand(3, 10) < 0.3
    mask[0, 0] = True
    sel = model(x, positions=mask)
    assert sel.shape == (int(mask.sum()), 32)
    assert rel_err(sel, model(x)[mask]) <= rtol(torch.float64)
    with pytest.raises(ValueError, match=r"^positions: expected a bool tensor"):
        model(x, positions=mask.long())
    with pytest.raises(ValueError, match=r"^positions: expected a bool tensor"):
        model(x, positions=mask[:, :5])
    with pytest.raises(ValueError, match=r"^input_ids: expected an integer tensor"):
        model(x.float())


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"d_mode": "diag"}, "d_mode"),
        ({"mode": "fast"}, "mode"),
        ({"chunk_size": 48}, "chunk_size"),
        ({"rule_c": 2.0}, "rule_c"),
        ({"use_short_conv": 1}, "use_short_conv"),
        ({"head_dim": 512}, "head_dim"),
    ],
)
def test_bad_layer_arguments_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=rf"^{key}:"):
        OSDNAttention(HID, HEADS, **kwargs)


def test_bad_model_tables_name_the_key():
    with pytest.raises(ValueError, match=r"^model\.num_heads: expected a divisor"):
        model_from_dict({"hidden_size": 30, "num_heads": 4})
    with pytest.raises(ValueError, match=r"^model\.width: unknown key"):
        model_from_dict({"width": 64})
    with pytest.raises(ValueError, match=r"^model\.d_mode: only for kind 'osdn'"):
        model_from_dict({"kind": "fla_deltanet", "d_mode": "rule"})
    with pytest.raises(ValueError, match=r"^x: expected shape \[B, T, 32\]"):
        OSDNAttention(HID, HEADS, mode="reference")(torch.randn(2, 3, 16))
    assert ModelConfig(d_mode="none").label() == "deltanet"


def test_fla_peer_is_clear_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "fla.layers", None)  # as on a machine with fla-core alone
    with pytest.raises(PeerUnavailable, match=r"^model\.kind 'fla_deltanet' needs .*fla\.layers"):
        RecallLM(16, {"kind": "fla_deltanet", "hidden_size": 32, "num_heads": 2})


def _n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    "shape",
    [
        {"hidden_size": 32, "num_heads": 2},
        {"hidden_size": 32, "num_heads": 2, "head_dim": 8, "use_short_conv": False, "use_gate": False},
        {"hidden_size": 48, "num_heads": 3, "head_dim": 24, "conv_size": 3, "use_gate": False},
    ],
)
def test_fla_peers_are_matched_to_deltanet_in_width(shape):
    """fla's DeltaNet, built from the same model table, has exactly the parameters of our DeltaNet
    (``d_mode = "none"``), and fla's GatedDeltaNet those plus its decay gate (a projection to one value per
    head and two per-head vectors) in each layer: the peers of ``sweeps/recall_mqar_gpu_peers.toml`` are
    matched in width, heads, head dimension, convolution and gate. The heads and dimensions are read from the
    built fla layers. (Their forward needs a GPU: ``test_gpu_peer_training_runs``.)"""
    base = {"num_layers": 2, **shape}
    ours = RecallLM(16, {**base, "kind": "osdn", "d_mode": "none"})
    fla_dn = RecallLM(16, {**base, "kind": "fla_deltanet"})
    fla_gdn = RecallLM(16, {**base, "kind": "fla_gated_deltanet"})
    h, nh = shape["hidden_size"], shape["num_heads"]
    dim = shape.get("head_dim", h // nh)
    for m in (fla_dn, fla_gdn):
        for block in m.blocks:
            layer = block.mixer.layer
            got = (layer.hidden_size, layer.num_heads, layer.head_k_dim, layer.head_v_dim)
            assert got == (h, nh, dim, dim), type(layer).__name__
            assert layer.use_short_conv == shape.get("use_short_conv", True)
            assert layer.use_gate == shape.get("use_gate", True)
    assert _n_params(fla_dn) == _n_params(ours)
    assert _n_params(fla_gdn) == _n_params(ours) + base["num_layers"] * (h * nh + 2 * nh)
    other = RecallLM(16, {**base, "kind": "osdn", "d_mode": "none", "head_dim": dim // 2})
    assert _n_params(other) != _n_params(fla_dn)  # the count tells widths apart


@pytest.mark.gpu
@pytest.mark.parametrize("d_mode", ["none", "rule", "learned"])
def test_chunk_on_gpu_equals_float64_reference(d_mode):
    """The kernel path on a GPU (fp32, T = 100: several chunks of 16 and a tail) against the float64 CPU
    reference, forward and backward."""
    ref, ch = _pair(d_mode)
    ch = ch.cuda()
    torch.manual_seed(5)
    x = torch.randn(2, 100, HID, dtype=torch.float64)
    w = torch.randn(2, 100, HID, dtype=torch.float64)
    y_ref = ref(x)
    y = ch(x.float().cuda())
    assert rel_err(y.cpu(), y_ref) <= rtol(torch.float32)
    (y_ref * w).sum().backward()
    (y * w.float().cuda()).sum().backward()
    g_ref, g = _grads(ref), _grads(ch)
    for name in g_ref:
        assert rel_err(g[name].cpu(), g_ref[name]) <= rtol(torch.float32), name
