"""Synthetic exact-quadratic streams (spec §7–§9): stationary teachers, MQAR/JRT recall, non-stationary shifts.

Each stream is a frozen dataclass config whose ``build(seed)`` returns a :class:`StreamData` of float64
tensors in fla layout (``q, k: [B, T, H, K]``, ``v: [B, T, H, V]``, ``beta: [B, T, H]``). The ``B·H``
realisations are independent: a root ``numpy.random.SeedSequence(seed)`` is spawned into ``B·H`` children
(ordered ``b``-major, then ``h``), each drives its own ``numpy.random.Generator``; no global RNG is used, so
the same seed gives bit-identical tensors on every machine.

Keys are zero-mean Gaussian with a covariance of trace ``key_scale`` (default 1, so ``E‖k‖² = 1`` and
DeltaNet with ``β = 1`` has ``E s = 1``). Anisotropic spectra are geometric,
``a_i ∝ condition^{−(i−1)/(K−1)}``. Configs serialise to plain dicts (:func:`to_dict` / :func:`from_dict`,
keyed by ``family``) so a TOML sweep file can describe a stream.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ._validate import check_choice, check_scalar
from .registry import lookup, names, register

__all__ = [
    "StreamData",
    "TeacherStream",
    "MQARStream",
    "PiecewiseStationaryStream",
    "DriftStream",
    "KeyNormShiftStream",
    "TeacherSwitchStream",
    "STREAMS",
    "stream_families",
    "to_dict",
    "from_dict",
    "geometric_spectrum",
    "covariance_standard_error",
]


# ----------------------------------------------------------------------------------------------------------
# data container


@dataclass(frozen=True)
class StreamData:
    """Tensors of one built stream (float64, fla layout). Optional fields are ``None`` where not applicable.

    Always present:
        q: queries ``[B, T, H, K]``; k: keys ``[B, T, H, K]``; v: values ``[B, T, H, V]``;
        beta: write strengths ``[B, T, H]``; segment_starts: start index of every stationary segment
        (``(0,)`` for a stationary stream); seed: the root seed; config: :func:`to_dict` of the config.
    Teacher streams:
        teacher: ``W*ᵀ`` in state layout ``[B, H, K, V]`` (``v = W* k + noise``; for switching teachers the
        last segment's); teacher_seg: ``[B, H, S, K, V]`` per segment; key_cov: ``[B, H, K, K]`` covariance
        of the (pre-normalisation) Gaussian keys (for non-stationary streams, of the first segment);
        a: its diagonal ``[B, H, K]`` (per-feature variances); a_seg: per-segment variances ``[B, H, S, K]``
        (``d*_seg = fixed_point_d(a_seg, beta)``); token_variances: ``[B, T, H, K]`` variance profile in force
        at each token.
    MQAR streams:
        stored_keys ``[B, P, H, K]``, stored_values ``[B, P, H, V]``, value_ids ``[B, P, H]`` (codebook rows),
        stored_positions ``[P]`` (token index of each pair in the first pass), stored_mask ``[B, T, H]`` (first
        pass), query_keys ``[B, Q, H, K]``, query_pairs ``[B, Q, H]`` (pair index), target_ids ``[B, Q, H]``,
        codebook ``[B, H, C, V]``; teacher = the least-squares map of the pairs (exact when ``P ≤ K``).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    beta: torch.Tensor
    seed: int
    config: dict
    segment_starts: tuple[int, ...] = (0,)
    teacher: torch.Tensor | None = None
    teacher_seg: torch.Tensor | None = None
    key_cov: torch.Tensor | None = None
    a: torch.Tensor | None = None
    a_seg: torch.Tensor | None = None
    token_variances: torch.Tensor | None = None
    stored_keys: torch.Tensor | None = None
    stored_values: torch.Tensor | None = None
    value_ids: torch.Tensor | None = None
    stored_positions: torch.Tensor | None = None
    stored_mask: torch.Tensor | None = None
    query_keys: torch.Tensor | None = None
    query_pairs: torch.Tensor | None = None
    target_ids: torch.Tensor | None = None
    codebook: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """``(B, T, H, K, V)``."""
        B, T, H, K = self.k.shape
        return B, T, H, K, self.v.shape[-1]

    @property
    def num_segments(self) -> int:
        return len(self.segment_starts)

    @property
    def segment_ids(self) -> torch.Tensor:
        """Segment index of every token, ``[T]`` (int64)."""
        T = self.k.shape[1]
        ids = torch.zeros(T, dtype=torch.int64)
        for j, s in enumerate(self.segment_starts):
            ids[s:] = j
        return ids

    def fixed_point_d(self, beta: float | None = None) -> torch.Tensor:
        """``d*_seg = a_seg⁻¹ / (β (K + 2))`` ``[B, H, S, K]`` (claim C6; exact for independent Gaussian
        features, i.e. ``cov`` not ``"rotated"`` and keys not normalised). ``beta`` defaults to the stream's
        (constant) write strength."""
        from .comparators import fixed_point_d

        if self.a_seg is None:
            raise ValueError("a_seg: expected a stream with per-segment variances, got None (MQAR stream?)")
        if beta is None:
            beta = float(self.beta.reshape(-1)[0])
        return fixed_point_d(self.a_seg, beta)


# ----------------------------------------------------------------------------------------------------------
# shared utilities


def geometric_spectrum(K: int, condition: float, total: float = 1.0) -> np.ndarray:
    """Variances ``a_i ∝ condition^{−(i−1)/(K−1)}``, ``i = 1..K``, scaled to ``Σ a_i = total`` (``[K]``)."""
    K = check_scalar("K", K, 1, None, integer=True)
    condition = check_scalar("condition", condition, 1.0, None)
    total = check_scalar("total", total, 0.0, None, lo_open=True)
    a = condition ** (-np.arange(K) / max(K - 1, 1))
    return a * (total / a.sum())


def covariance_standard_error(cov, n: int) -> np.ndarray:
    """Standard error of each entry of the (known-mean) sample covariance of ``n`` Gaussian draws.

    ``Var(Σ̂_ij) = (Σ_ij² + Σ_ii Σ_jj) / n`` for ``Σ̂ = (1/n) Σ_t k_t k_tᵀ``. ``cov``: ``[K, K]``. Returns ``[K, K]``.
    """
    c = np.asarray(cov.numpy() if isinstance(cov, torch.Tensor) else cov, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"cov: expected a square matrix [K, K], got shape {c.shape}")
    n = check_scalar("n", n, 1, None, integer=True)
    d = np.diag(c)
    return np.sqrt((c**2 + np.outer(d, d)) / n)


def _check_seed(seed) -> int:
    return check_scalar("seed", seed, 0, None, integer=True)


def _rngs(seed: int, B: int, H: int) -> list[list[np.random.Generator]]:
    children = np.random.SeedSequence(seed).spawn(B * H)
    return [[np.random.default_rng(children[b * H + h]) for h in range(H)] for b in range(B)]


def _orthogonal(rng: np.random.Generator, K: int) -> np.ndarray:
    """Haar-random orthogonal ``[K, K]`` (QR of a Gaussian matrix with the sign fix)."""
    Q, R = np.linalg.qr(rng.standard_normal((K, K)))
    return Q * np.sign(np.diag(R))[None, :]


def _normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def _t(x) -> torch.Tensor:
    a = np.ascontiguousarray(x, dtype=np.float64)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _base_checks(cfg, *, need_T: bool = True) -> None:
    if need_T:
        check_scalar("T", cfg.T, 1, None, integer=True)
    check_scalar("K", cfg.K, 1, None, integer=True)
    check_scalar("V", cfg.V, 1, None, integer=True)
    check_scalar("beta", cfg.beta, 0.0, 1.0, lo_open=True)
    check_scalar("batch", cfg.batch, 1, None, integer=True)
    check_scalar("heads", cfg.heads, 1, None, integer=True)
    if not isinstance(cfg.normalize_keys, bool):
        raise ValueError(f"normalize_keys: expected a bool, got {cfg.normalize_keys!r}")


def _check_spectrum(cfg) -> None:
    check_scalar("condition", cfg.condition, 1.0, None)
    check_scalar("key_scale", cfg.key_scale, 0.0, None, lo_open=True)
    check_scalar("noise", cfg.noise, 0.0, None)


def _base_spectrum(cfg) -> np.ndarray:
    """Feature variances ``[K]`` of trace ``key_scale``: flat for ``cov="isotropic"``, else geometric."""
    if cfg.cov == "isotropic":
        return np.full(cfg.K, cfg.key_scale / cfg.K)
    return geometric_spectrum(cfg.K, cfg.condition, cfg.key_scale)


class _Stream:
    """Mixin: registry name and serialisation."""

    family: ClassVar[str] = ""
    kind: ClassVar[str] = "stream"

    def to_dict(self) -> dict:
        return to_dict(self)


# ----------------------------------------------------------------------------------------------------------
# stationary teacher


@dataclass(frozen=True)
class TeacherStream(_Stream):
    """Realizable stationary stream ``v_t = W* k_t + noise·ξ_t`` with Gaussian keys ``k_t ~ N(0, Σ)``.

    ``cov``: ``"isotropic"`` (``Σ = (key_scale/K) I``), ``"anisotropic"`` (``Σ = diag(a)``, geometric
    spectrum of the given ``condition``), or ``"rotated"`` (``Σ = Q diag(a) Qᵀ`` with ``Q`` Haar-random per
    realisation: its right-Newton comparator ``Σ⁻¹`` is not diagonal). ``W*`` has i.i.d. ``N(0, 1)`` entries,
    ``ξ_t ~ N(0, I)``; queries are independent draws of the key distribution. ``normalize_keys`` rescales
    every key (and query) to unit norm after sampling.

    Tiny example (K = 2, V = 1, isotropic, no noise)::

        k: [[ 0.31, -0.62], [ 0.85,  0.10], ...]     W* = [[1.3, -0.4]]
        v: [[ 0.65],        [ 1.07],        ...]     (v_t = W* k_t exactly)
    """

    family: ClassVar[str] = "teacher"
    T: int = 256
    K: int = 8
    V: int = 8
    cov: str = "isotropic"
    condition: float = 10.0
    noise: float = 0.0
    normalize_keys: bool = False
    beta: float = 1.0
    key_scale: float = 1.0
    batch: int = 1
    heads: int = 1

    def __post_init__(self):
        _base_checks(self)
        _check_spectrum(self)
        check_choice("cov", self.cov, ("isotropic", "anisotropic", "rotated"))

    def build(self, seed: int) -> StreamData:
        seed = _check_seed(seed)
        B, H, T, K, V = self.batch, self.heads, self.T, self.K, self.V
        rngs = _rngs(seed, B, H)
        q = np.empty((B, T, H, K))
        k = np.empty((B, T, H, K))
        v = np.empty((B, T, H, V))
        W = np.empty((B, H, K, V))
        cov = np.empty((B, H, K, K))
        base = _base_spectrum(self)
        for b in range(B):
            for h in range(H):
                rng = rngs[b][h]
                Q = _orthogonal(rng, K) if self.cov == "rotated" else np.eye(K)
                L = Q * np.sqrt(base)[None, :]  # Σ = L Lᵀ = Q diag(a) Qᵀ
                cov[b, h] = L @ L.T
                Wt = rng.standard_normal((V, K))  # W* (math layout)
                kk = rng.standard_normal((T, K)) @ L.T
                qq = rng.standard_normal((T, K)) @ L.T
                if self.normalize_keys:
                    kk, qq = _normalize(kk), _normalize(qq)
                vv = kk @ Wt.T
                if self.noise > 0:
                    vv = vv + self.noise * rng.standard_normal((T, V))
                q[b, :, h], k[b, :, h], v[b, :, h], W[b, h] = qq, kk, vv, Wt.T
        a = np.diagonal(cov, axis1=-2, axis2=-1).copy()
        return StreamData(
            q=_t(q),
            k=_t(k),
            v=_t(v),
            beta=torch.full((B, T, H), float(self.beta), dtype=torch.float64),
            seed=seed,
            config=to_dict(self),
            teacher=_t(W),
            teacher_seg=_t(W)[:, :, None],
            key_cov=_t(cov),
            a=_t(a),
            a_seg=_t(a)[:, :, None],
            token_variances=_t(a)[:, None].expand(B, T, H, K).contiguous(),
        )


# ----------------------------------------------------------------------------------------------------------
# MQAR / JRT


@dataclass(frozen=True)
class MQARStream(_Stream):
    """Multi-query associative recall: ``P`` key–value pairs written (repeated ``num_passes`` times, as in
    JRT prompts), then ``Q`` queries of stored keys whose targets are decoded by nearest codebook entry.

    Values are rows of a codebook ``[C, V]`` of unit-norm Gaussian vectors (``C = vocab_size``, default
    ``P``), chosen i.i.d. uniformly. Keys: ``"orthogonal"`` (``P ≤ K`` rows of a Haar-random orthogonal
    matrix; unit norm, exact recall possible), ``"gaussian"`` (``N(0, I/K)``) or ``"anisotropic"``
    (``N(0, diag(a))``, geometric spectrum, trace 1). The write stream has ``T = P · num_passes`` tokens
    (``q = k``); queries are ``Q ≤ P`` distinct stored pairs in random order.

    Tiny example (P = 3, num_passes = 2, Q = 2; ``kᵢ → cⱼ`` means key i stores codebook row j)::

        writes:   k0→c2  k1→c0  k2→c2 | k0→c2  k1→c0  k2→c2      (second pass = JRT repetition)
        queries:  k2 ?  (target 2)    k0 ?  (target 2)
    """

    family: ClassVar[str] = "mqar"
    num_pairs: int = 16
    K: int = 16
    V: int = 16
    num_queries: int | None = None
    num_passes: int = 1
    vocab_size: int | None = None
    key_dist: str = "orthogonal"
    condition: float = 10.0
    normalize_keys: bool = False
    beta: float = 1.0
    batch: int = 1
    heads: int = 1

    def __post_init__(self):
        _base_checks(self, need_T=False)
        P = check_scalar("num_pairs", self.num_pairs, 1, None, integer=True)
        check_scalar("num_passes", self.num_passes, 1, None, integer=True)
        if self.num_queries is not None:
            check_scalar("num_queries", self.num_queries, 1, P, integer=True)
        if self.vocab_size is not None:
            check_scalar("vocab_size", self.vocab_size, 1, None, integer=True)
        check_choice("key_dist", self.key_dist, ("orthogonal", "gaussian", "anisotropic"))
        check_scalar("condition", self.condition, 1.0, None)
        if self.key_dist == "orthogonal" and P > self.K:
            raise ValueError(f"num_pairs: expected at most K = {self.K} pairs for orthogonal keys, got {P}")

    @property
    def T(self) -> int:
        return self.num_pairs * self.num_passes

    def build(self, seed: int) -> StreamData:
        seed = _check_seed(seed)
        B, H, K, V, P = self.batch, self.heads, self.K, self.V, self.num_pairs
        Qn = self.num_queries or P
        C = self.vocab_size or P
        R, T = self.num_passes, self.T
        rngs = _rngs(seed, B, H)
        sk = np.empty((B, P, H, K))
        sv = np.empty((B, P, H, V))
        vid = np.empty((B, P, H), dtype=np.int64)
        qk = np.empty((B, Qn, H, K))
        qp = np.empty((B, Qn, H), dtype=np.int64)
        cb = np.empty((B, H, C, V))
        W = np.empty((B, H, K, V))
        a = geometric_spectrum(K, self.condition) if self.key_dist == "anisotropic" else np.full(K, 1.0 / K)
        for b in range(B):
            for h in range(H):
                rng = rngs[b][h]
                book = _normalize(rng.standard_normal((C, V)))
                if self.key_dist == "orthogonal":
                    keys = _orthogonal(rng, K)[:P]
                else:
                    keys = rng.standard_normal((P, K)) * np.sqrt(a)[None, :]
                if self.normalize_keys:
                    keys = _normalize(keys)
                ids = rng.integers(0, C, size=P)
                pairs = rng.permutation(P)[:Qn]
                vals = book[ids]
                sk[b, :, h], sv[b, :, h], vid[b, :, h], cb[b, h] = keys, vals, ids, book
                qk[b, :, h], qp[b, :, h] = keys[pairs], pairs
                W[b, h] = np.linalg.lstsq(keys, vals, rcond=None)[0]  # state layout: keys @ W ≈ vals
        k = np.tile(sk, (1, R, 1, 1))
        v = np.tile(sv, (1, R, 1, 1))
        mask = torch.zeros(B, T, H, dtype=torch.bool)
        mask[:, :P] = True
        tgt = np.take_along_axis(vid, qp, axis=1)
        cov = np.broadcast_to(np.diag(a), (B, H, K, K)).copy()
        return StreamData(
            q=_t(k),
            k=_t(k),
            v=_t(v),
            beta=torch.full((B, T, H), float(self.beta), dtype=torch.float64),
            seed=seed,
            config=to_dict(self),
            teacher=_t(W),
            key_cov=_t(cov) if self.key_dist != "orthogonal" else None,
            a=_t(np.broadcast_to(a, (B, H, K))) if self.key_dist != "orthogonal" else None,
            stored_keys=_t(sk),
            stored_values=_t(sv),
            value_ids=torch.from_numpy(vid),
            stored_positions=torch.arange(P, dtype=torch.int64),
            stored_mask=mask,
            query_keys=_t(qk),
            query_pairs=torch.from_numpy(qp),
            target_ids=torch.from_numpy(tgt),
            codebook=_t(cb),
        )


# ----------------------------------------------------------------------------------------------------------
# non-stationary streams (spec §8)


def _segment_starts(T: int, L: int) -> tuple[int, ...]:
    return tuple(range(0, T, L))


def _segmented_build(
    cfg, seed: int, profile_fn, *, switch_teacher: bool = False, token_profile_fn=None
) -> StreamData:
    """Shared generator: independent Gaussian features with variances ``a_t`` (diagonal covariance).

    ``profile_fn(rng, j) -> a_j [K]`` gives segment ``j``'s variances (drawn in segment order from the
    realisation's generator); ``token_profile_fn(t) -> [K]`` (optional) overrides them per token (drift);
    ``switch_teacher`` redraws ``W*`` at every segment start.
    """
    seed = _check_seed(seed)
    B, H, T, K, V, L = cfg.batch, cfg.heads, cfg.T, cfg.K, cfg.V, cfg.segment_len
    starts = _segment_starts(T, L)
    S = len(starts)
    rngs = _rngs(seed, B, H)
    q = np.empty((B, T, H, K))
    k = np.empty((B, T, H, K))
    v = np.empty((B, T, H, V))
    Wseg = np.empty((B, H, S, K, V))
    aseg = np.empty((B, H, S, K))
    atok = np.empty((B, T, H, K))
    for b in range(B):
        for h in range(H):
            rng = rngs[b][h]
            Wt = rng.standard_normal((V, K))
            for j, s0 in enumerate(starts):
                s1 = min(s0 + L, T)
                if switch_teacher and j > 0:
                    Wt = rng.standard_normal((V, K))
                if token_profile_fn is None:
                    aj = profile_fn(rng, j)
                    at = np.broadcast_to(aj, (s1 - s0, K))
                else:
                    at = np.stack([token_profile_fn(t) for t in range(s0, s1)])
                    aj = at.mean(0)
                kk = rng.standard_normal((s1 - s0, K)) * np.sqrt(at)
                qq = rng.standard_normal((s1 - s0, K)) * np.sqrt(at)
                if cfg.normalize_keys:
                    kk, qq = _normalize(kk), _normalize(qq)
                vv = kk @ Wt.T
                if cfg.noise > 0:
                    vv = vv + cfg.noise * rng.standard_normal((s1 - s0, V))
                q[b, s0:s1, h], k[b, s0:s1, h], v[b, s0:s1, h] = qq, kk, vv
                Wseg[b, h, j], aseg[b, h, j], atok[b, s0:s1, h] = Wt.T, aj, at
    a0 = aseg[:, :, 0]
    return StreamData(
        q=_t(q),
        k=_t(k),
        v=_t(v),
        beta=torch.full((B, T, H), float(cfg.beta), dtype=torch.float64),
        seed=seed,
        config=to_dict(cfg),
        segment_starts=starts,
        teacher=_t(Wseg[:, :, -1]),
        teacher_seg=_t(Wseg),
        key_cov=_t(np.einsum("bhk,kl->bhkl", a0, np.eye(K))),
        a=_t(a0),
        a_seg=_t(aseg),
        token_variances=_t(atok),
    )


def _nonstationary_checks(cfg) -> None:
    _base_checks(cfg)
    _check_spectrum(cfg)
    check_scalar("segment_len", cfg.segment_len, 1, None, integer=True)
    if cfg.segment_len > cfg.T:
        raise ValueError(
            f"segment_len: expected at most T = {cfg.T} tokens (a stream shorter than one segment has no "
            f"shift), got {cfg.segment_len}"
        )


@dataclass(frozen=True)
class PiecewiseStationaryStream(_Stream):
    """Piecewise-stationary keys: the feature-variance profile is re-permuted every ``segment_len`` tokens.

    The base profile is the geometric spectrum (``condition``, trace ``key_scale``); segment ``j`` uses
    ``a_seg[j] = a[π_j]`` with ``π_j`` a fresh uniform permutation (``π_0`` included). Features are
    independent Gaussians, so ``d*_seg = fixed_point_d(a_seg, beta)`` is exact (claim C6). Fixed teacher.

    Tiny example (K = 3, segment_len = 4)::

        tokens 0–3:  a = [0.70, 0.22, 0.08]      tokens 4–7:  a = [0.08, 0.70, 0.22]   ...
    """

    family: ClassVar[str] = "piecewise"
    T: int = 512
    K: int = 8
    V: int = 8
    segment_len: int = 128
    condition: float = 100.0
    noise: float = 0.0
    normalize_keys: bool = False
    beta: float = 1.0
    key_scale: float = 1.0
    batch: int = 1
    heads: int = 1

    def __post_init__(self):
        _nonstationary_checks(self)

    def build(self, seed: int) -> StreamData:
        base = geometric_spectrum(self.K, self.condition, self.key_scale)
        return _segmented_build(self, seed, lambda rng, j: base[rng.permutation(self.K)])


@dataclass(frozen=True)
class DriftStream(_Stream):
    """Slowly drifting profile: ``log a_{t,i} = −½ log(condition) · (1 − cos 2π(i/K + t/period))`` + const,
    normalised to trace ``key_scale`` at every token (each feature's variance cycles between
    ``1/condition`` and 1 relative, with period ``period`` tokens).

    ``token_variances`` is exact per token; ``a_seg`` is the mean profile over each window of ``segment_len``
    tokens (an approximation for the drifting target ``d*``). Fixed teacher.

    Tiny example (K = 2, period = 8): feature 0's variance falls while feature 1's rises, then back.
    """

    family: ClassVar[str] = "drift"
    T: int = 512
    K: int = 8
    V: int = 8
    period: int = 512
    segment_len: int = 64
    condition: float = 100.0
    noise: float = 0.0
    normalize_keys: bool = False
    beta: float = 1.0
    key_scale: float = 1.0
    batch: int = 1
    heads: int = 1

    def __post_init__(self):
        _nonstationary_checks(self)
        check_scalar("period", self.period, 1, None, integer=True)

    def profile(self, t: int) -> np.ndarray:
        """Variance profile ``a_t`` ``[K]`` at token ``t`` (0-based)."""
        i = np.arange(self.K) / self.K
        la = -0.5 * math.log(self.condition) * (1.0 - np.cos(2 * np.pi * (i + t / self.period)))
        a = np.exp(la)
        return a * (self.key_scale / a.sum())

    def build(self, seed: int) -> StreamData:
        return _segmented_build(self, seed, None, token_profile_fn=self.profile)


@dataclass(frozen=True)
class KeyNormShiftStream(_Stream):
    """Key-norm shifts: segment ``j`` multiplies the keys by ``scales[j mod len(scales)]`` (variances by its
    square). ``cov``: ``"isotropic"`` or ``"anisotropic"`` base profile. Fixed teacher.

    Tiny example (scales = (1, 4), segment_len = 3)::

        ‖k_t‖ ≈ 1, 1, 1, 4, 4, 4, 1, 1, 1, ...
    """

    family: ClassVar[str] = "key_norm_shift"
    T: int = 512
    K: int = 8
    V: int = 8
    segment_len: int = 128
    scales: tuple[float, ...] = (1.0, 2.0, 0.5)
    cov: str = "anisotropic"
    condition: float = 10.0
    noise: float = 0.0
    normalize_keys: bool = False
    beta: float = 1.0
    key_scale: float = 1.0
    batch: int = 1
    heads: int = 1

    def __post_init__(self):
        _nonstationary_checks(self)
        check_choice("cov", self.cov, ("isotropic", "anisotropic"))
        if self.normalize_keys:
            raise ValueError("normalize_keys: expected False for a key-norm shift stream, got True")
        if not isinstance(self.scales, tuple | list) or len(self.scales) == 0:
            raise ValueError(f"scales: expected a nonempty tuple of positive numbers, got {self.scales!r}")
        for x in self.scales:
            check_scalar("scales", x, 0.0, None, lo_open=True)
        if isinstance(self.scales, list):
            object.__setattr__(self, "scales", tuple(self.scales))

    def build(self, seed: int) -> StreamData:
        base = _base_spectrum(self)
        sc = self.scales
        return _segmented_build(self, seed, lambda rng, j: base * sc[j % len(sc)] ** 2)


@dataclass(frozen=True)
class TeacherSwitchStream(_Stream):
    """Teacher switches: a fresh ``W*`` (i.i.d. ``N(0, 1)``) every ``segment_len`` tokens; stationary keys
    (``cov`` ``"isotropic"`` or ``"anisotropic"``). ``teacher_seg`` holds every segment's ``W*ᵀ``.

    Tiny example (segment_len = 2)::

        v_0 = W₀ k_0, v_1 = W₀ k_1, v_2 = W₁ k_2, v_3 = W₁ k_3, ...
    """

    family: ClassVar[str] = "teacher_switch"
    T: int = 512
    K: int = 8
    V: int = 8
    segment_len: int = 128
    cov: str = "anisotropic"
    condition: float = 10.0
    noise: float = 0.0
    normalize_keys: bool = False
    beta: float = 1.0
    key_scale: float = 1.0
    batch: int = 1
    heads: int = 1

    def __post_init__(self):
        _nonstationary_checks(self)
        check_choice("cov", self.cov, ("isotropic", "anisotropic"))

    def build(self, seed: int) -> StreamData:
        base = _base_spectrum(self)
        return _segmented_build(self, seed, lambda rng, j: base, switch_teacher=True)


# ----------------------------------------------------------------------------------------------------------
# registry


#: The built-in stream families (a user's stream config registered with ``osdn_theory.register(cls,
#: kind="stream")`` is accepted by :func:`from_dict` and sweep files too).
STREAMS: dict[str, type] = {
    c.family: c
    for c in (
        TeacherStream,
        MQARStream,
        PiecewiseStationaryStream,
        DriftStream,
        KeyNormShiftStream,
        TeacherSwitchStream,
    )
}
for _cls in STREAMS.values():
    register(_cls)


def stream_families() -> list[str]:
    """Every registered stream family (the built-ins and the user's)."""
    return names("stream")


def to_dict(cfg) -> dict[str, Any]:
    """Plain-dict form of a stream config: ``{"family": name, **fields}`` (tuples become lists; TOML-safe)."""
    fam = getattr(type(cfg), "family", None)
    registered = fam in stream_families() and lookup("stream", fam) is type(cfg)
    if not dataclasses.is_dataclass(cfg) or not registered:
        raise ValueError(f"cfg: expected a stream config ({stream_families()}), got {type(cfg).__name__}")
    out: dict[str, Any] = {"family": fam}
    for f in dataclasses.fields(cfg):
        val = getattr(cfg, f.name)
        if val is None:
            continue  # TOML has no null; None fields take their default on the way back
        out[f.name] = list(val) if isinstance(val, tuple) else val
    return out


def from_dict(d: dict) -> Any:
    """Inverse of :func:`to_dict`: ``{"family": name, **fields}`` → config (``"name"`` accepted for ``family``).

    Unknown fields raise ``ValueError`` naming the field and listing the known ones.
    """
    if not isinstance(d, dict):
        raise ValueError(f"d: expected a dict with a 'family' key, got {type(d).__name__}")
    d = dict(d)
    fam = d.pop("family", None)
    if fam is None:
        fam = d.pop("name", None)
    cls = lookup("stream", fam, "family")
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key in d:
        if key not in names:
            raise ValueError(
                f"{key}: expected a field of {cls.__name__} ({sorted(names)}), got unknown key {key!r}"
            )
    kw = {key: (tuple(val) if isinstance(val, list) else val) for key, val in d.items()}
    return cls(**kw)
