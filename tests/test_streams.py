"""Synthetic streams (spec §7–§9): reproducibility, requested statistics, structure, serialisation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tomli_w
import tomllib
import torch

from osdn_theory.comparators import fixed_point_d
from osdn_theory.metrics import recall_accuracy
from osdn_theory.streams import (
    STREAMS,
    DriftStream,
    KeyNormShiftStream,
    MQARStream,
    PiecewiseStationaryStream,
    StreamData,
    TeacherStream,
    TeacherSwitchStream,
    covariance_standard_error,
    from_dict,
    geometric_spectrum,
    to_dict,
)
from osdn_theory.tolerances import NEGATIVE_CONTROL_GAP, rel_err, rtol
from osdn_theory.tolerances import STAT_Z as Z_SCORE

TOL = rtol(torch.float64)

SMALL = {
    "teacher": dict(T=40, K=4, V=3, batch=2, heads=2),
    "mqar": dict(num_pairs=6, K=8, V=5, num_passes=2, num_queries=4, batch=2, heads=2),
    "piecewise": dict(T=40, K=4, V=3, segment_len=16, batch=2, heads=2),
    "drift": dict(T=40, K=4, V=3, period=20, segment_len=10, batch=2, heads=2),
    "key_norm_shift": dict(T=40, K=4, V=3, segment_len=16, batch=2, heads=2),
    "teacher_switch": dict(T=40, K=4, V=3, segment_len=16, batch=2, heads=2),
}


def _tensor_fields(d: StreamData):
    for f in dataclasses.fields(d):
        x = getattr(d, f.name)
        if isinstance(x, torch.Tensor):
            yield f.name, x


@pytest.mark.parametrize("family", sorted(STREAMS))
def test_same_seed_identical_different_seed_different(family):
    cfg = STREAMS[family](**SMALL[family])
    a, b, c = cfg.build(3), cfg.build(3), cfg.build(4)
    for name, x in _tensor_fields(a):
        assert torch.equal(x, getattr(b, name)), name
    assert not torch.equal(a.k, c.k) and not torch.equal(a.v, c.v)
    assert a.k.dtype == torch.float64 and a.v.dtype == torch.float64
    B, T, H, K, V = a.shape
    assert (B, H) == (2, 2) and a.beta.shape == (B, T, H) and a.q.shape == a.k.shape
    # the B·H realisations are independent draws, not copies
    flat = a.k.permute(0, 2, 1, 3).reshape(B * H, -1)
    assert len({tuple(r.tolist()) for r in flat}) == B * H


@pytest.mark.parametrize("cov", ["isotropic", "anisotropic", "rotated"])
def test_teacher_key_covariance_matches_request(cov):
    n, K = 20_000, 4
    data = TeacherStream(T=n, K=K, V=2, cov=cov, condition=8.0).build(11)
    k = data.k[0, :, 0].numpy()
    target = data.key_cov[0, 0].numpy()
    emp = k.T @ k / n  # known zero mean
    se = covariance_standard_error(target, n)
    assert np.all(np.abs(emp - target) <= Z_SCORE * se)
    assert abs(np.trace(target) - 1.0) <= TOL  # key_scale = 1
    assert rel_err(data.a, torch.diagonal(data.key_cov, dim1=-2, dim2=-1)) == 0.0
    spec = np.sort(np.linalg.eigvalsh(target))
    want = np.full(K, 1 / K) if cov == "isotropic" else np.sort(geometric_spectrum(K, 8.0))
    assert np.allclose(spec, want, rtol=TOL, atol=0)
    off = target - np.diag(np.diag(target))
    if cov == "rotated":
        # not diagonal: the off-diagonal entries are far outside the sampling error of a diagonal covariance
        assert (
            np.max(np.abs(off) / se) > Z_SCORE and np.max(np.abs(emp - np.diag(np.diag(emp))) / se) > Z_SCORE
        )
    else:
        assert np.all(off == 0)


def test_teacher_realizable_noise_and_normalisation():
    cfg = TeacherStream(T=30, K=5, V=3, batch=2, heads=2)
    d = cfg.build(0)
    pred = torch.einsum("bthk,bhkv->bthv", d.k, d.teacher)
    assert rel_err(pred, d.v) <= TOL
    dn = dataclasses.replace(cfg, noise=0.5, T=4000, batch=1, heads=1).build(0)
    res = dn.v - torch.einsum("bthk,bhkv->bthv", dn.k, dn.teacher)
    n = res.numel()
    var = float((res**2).mean())
    se = float((res**2).std()) / n**0.5
    assert abs(var - 0.25) <= Z_SCORE * se
    du = dataclasses.replace(cfg, normalize_keys=True).build(0)
    assert rel_err(du.k.norm(dim=-1), torch.ones(du.k.shape[:3], dtype=torch.float64)) <= TOL
    assert torch.all(du.beta == 1.0) and torch.all(dataclasses.replace(cfg, beta=0.3).build(0).beta == 0.3)


@pytest.mark.parametrize("key_dist", ["orthogonal", "gaussian", "anisotropic"])
def test_mqar_exact_teacher_decodes_all_queries(key_dist):
    cfg = MQARStream(num_pairs=6, K=8, V=5, num_passes=3, num_queries=5, key_dist=key_dist, batch=2, heads=3)
    d = cfg.build(1)
    acc = recall_accuracy(d.teacher, d.query_keys, d.target_ids, d.codebook)
    assert torch.all(acc == 1.0)
    # negative control: an empty memory decodes everything to one codebook row, not all targets
    zero = torch.zeros_like(d.teacher)
    assert float(recall_accuracy(zero, d.query_keys, d.target_ids, d.codebook).mean()) < 1.0


def test_mqar_structure():
    cfg = MQARStream(num_pairs=5, K=6, V=4, num_passes=3, num_queries=4, vocab_size=7, batch=1, heads=2)
    d = cfg.build(2)
    P, T = 5, cfg.T
    assert T == 15 and d.k.shape == (1, T, 2, 6) and torch.equal(d.q, d.k)
    for r in range(3):  # JRT repetition: every pass is the same context
        assert torch.equal(d.k[:, r * P : (r + 1) * P], d.stored_keys)
        assert torch.equal(d.v[:, r * P : (r + 1) * P], d.stored_values)
    assert torch.equal(d.stored_positions, torch.arange(P))
    assert int(d.stored_mask.sum()) == P * 2 and bool(d.stored_mask[:, :P].all())
    cb = d.codebook.permute(0, 2, 1, 3)  # [B, C, H, V]
    assert torch.equal(torch.gather(cb, 1, d.value_ids[..., None].expand(-1, -1, -1, 4)), d.stored_values)
    assert torch.equal(torch.gather(d.value_ids, 1, d.query_pairs), d.target_ids)
    qp = d.query_pairs[0, :, 0]
    assert len(set(qp.tolist())) == 4  # distinct pairs
    assert torch.equal(d.query_keys[0, :, 0], d.stored_keys[0, qp, 0])
    assert (
        rel_err(d.stored_keys[0, :, 0] @ d.stored_keys[0, :, 0].T, torch.eye(P, dtype=torch.float64)) <= TOL
    )
    assert d.codebook.shape == (1, 2, 7, 4)
    assert rel_err(d.codebook.norm(dim=-1), torch.ones(1, 2, 7, dtype=torch.float64)) <= TOL


def test_piecewise_profiles_are_permutations_and_match_samples():
    cfg = PiecewiseStationaryStream(T=12_000, K=4, V=2, segment_len=4000, condition=20.0)
    d = cfg.build(5)
    assert d.segment_starts == (0, 4000, 8000) and d.num_segments == 3
    base = np.sort(geometric_spectrum(4, 20.0))
    for j, s0 in enumerate(d.segment_starts):
        aj = d.a_seg[0, 0, j].numpy()
        assert np.allclose(np.sort(aj), base, rtol=TOL, atol=0)
        k = d.k[0, s0 : s0 + 4000, 0].numpy()
        se = covariance_standard_error(np.diag(aj), 4000)
        assert np.all(np.abs(k.T @ k / 4000 - np.diag(aj)) <= Z_SCORE * se)
        assert torch.equal(d.token_variances[0, s0 : s0 + 4000, 0], d.a_seg[0, 0, j].expand(4000, 4))
    assert not torch.equal(d.a_seg[0, 0, 0], d.a_seg[0, 0, 1]) or not torch.equal(
        d.a_seg[0, 0, 1], d.a_seg[0, 0, 2]
    )
    assert rel_err(d.fixed_point_d(), fixed_point_d(d.a_seg, 1.0)) == 0.0
    assert torch.equal(d.segment_ids[3999:4001], torch.tensor([0, 1]))


def test_drift_profile_and_segments():
    cfg = DriftStream(T=64, K=4, V=2, period=32, segment_len=16, condition=50.0)
    d = cfg.build(0)
    for t in (0, 5, 31, 63):
        assert rel_err(d.token_variances[0, t, 0], torch.from_numpy(cfg.profile(t))) <= TOL
        assert abs(float(d.token_variances[0, t, 0].sum()) - 1.0) <= TOL
    assert rel_err(d.token_variances[0, 0, 0], d.token_variances[0, 32, 0]) <= TOL  # periodic
    assert (
        rel_err(d.token_variances[0, 0, 0], d.token_variances[0, 8, 0]) > NEGATIVE_CONTROL_GAP
    )  # and drifting
    assert rel_err(d.a_seg[0, 0, 1], d.token_variances[0, 16:32, 0].mean(0)) <= TOL
    ratio = cfg.profile(0).max() / cfg.profile(0).min()
    assert ratio <= 50.0 * (1 + TOL)


def test_key_norm_shift_scales_variances():
    cfg = KeyNormShiftStream(T=9000, K=4, V=2, segment_len=3000, scales=(1.0, 3.0, 0.5))
    d = cfg.build(1)
    a = d.a_seg[0, 0]
    assert rel_err(a[1], 9.0 * a[0]) <= TOL and rel_err(a[2], 0.25 * a[0]) <= TOL
    for j, s in enumerate((1.0, 3.0, 0.5)):
        n2 = (d.k[0, j * 3000 : (j + 1) * 3000, 0] ** 2).sum(-1).numpy()
        assert abs(n2.mean() - s**2) <= Z_SCORE * n2.std() / 3000**0.5


def test_teacher_switch_changes_teacher_per_segment():
    d = TeacherSwitchStream(T=30, K=4, V=3, segment_len=10, batch=1, heads=2).build(0)
    assert d.teacher_seg.shape == (1, 2, 3, 4, 3)
    for j in range(3):
        sl = slice(10 * j, 10 * (j + 1))
        pred = torch.einsum("bthk,bhkv->bthv", d.k[:, sl], d.teacher_seg[:, :, j])
        assert rel_err(pred, d.v[:, sl]) <= TOL
    assert rel_err(d.teacher_seg[:, :, 0], d.teacher_seg[:, :, 1]) > NEGATIVE_CONTROL_GAP
    assert torch.equal(d.teacher, d.teacher_seg[:, :, -1])


@pytest.mark.parametrize("family", sorted(STREAMS))
def test_dict_and_toml_round_trip(family):
    cfg = STREAMS[family](**SMALL[family])
    d = to_dict(cfg)
    assert d["family"] == family
    back = from_dict(tomllib.loads(tomli_w.dumps(d)))
    assert back == cfg
    assert torch.equal(back.build(0).k, cfg.build(0).k)
    assert cfg.build(0).config == d


def test_argument_errors():
    with pytest.raises(ValueError, match="^cov:"):
        TeacherStream(cov="diagonal")
    with pytest.raises(ValueError, match="^condition:"):
        TeacherStream(condition=0.5)
    with pytest.raises(ValueError, match="^noise:"):
        TeacherStream(noise=-1.0)
    with pytest.raises(ValueError, match="^T:"):
        TeacherStream(T=0)
    with pytest.raises(ValueError, match="^beta:"):
        TeacherStream(beta=1.5)
    with pytest.raises(ValueError, match="^batch:"):
        TeacherStream(batch=0)
    with pytest.raises(ValueError, match="^normalize_keys:"):
        TeacherStream(normalize_keys=1)
    with pytest.raises(ValueError, match="^seed:"):
        TeacherStream().build(-1)
    with pytest.raises(ValueError, match="^seed:"):
        TeacherStream().build(1.5)
    with pytest.raises(ValueError, match="^num_pairs:"):
        MQARStream(num_pairs=10, K=8)
    with pytest.raises(ValueError, match="^num_queries:"):
        MQARStream(num_pairs=4, K=8, num_queries=5)
    with pytest.raises(ValueError, match="^key_dist:"):
        MQARStream(key_dist="uniform")
    with pytest.raises(ValueError, match="^num_passes:"):
        MQARStream(num_passes=0)
    with pytest.raises(ValueError, match="^segment_len:"):
        PiecewiseStationaryStream(segment_len=0)
    with pytest.raises(ValueError, match="^period:"):
        DriftStream(period=0)
    with pytest.raises(ValueError, match="^scales:"):
        KeyNormShiftStream(scales=(1.0, -2.0))
    with pytest.raises(ValueError, match="^normalize_keys:"):
        KeyNormShiftStream(normalize_keys=True)
    with pytest.raises(ValueError, match="^cov:"):
        TeacherSwitchStream(cov="rotated")
    with pytest.raises(ValueError, match="^family:"):
        from_dict({"family": "nope"})
    with pytest.raises(ValueError, match="^segment_length:"):
        from_dict({"family": "piecewise", "segment_length": 3})
    with pytest.raises(ValueError, match="^cfg:"):
        to_dict({"family": "teacher"})
    with pytest.raises(ValueError, match="^cov:"):
        covariance_standard_error(np.ones(3), 10)
    with pytest.raises(ValueError, match="^condition:"):
        geometric_spectrum(4, 0.1)
    with pytest.raises(ValueError, match="^a_seg:"):
        MQARStream(num_pairs=2, K=2, V=2).build(0).fixed_point_d()
