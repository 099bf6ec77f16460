"""Metrics of spec §7 and §9: contraction ratios, recall residual ratios, super-geometric statistics.

Layout: states ``[B, H, K, V]`` (``Sᵀ``), token tensors ``[B, N, H, *]``; per-realisation results are
``[B, H]`` tensors, reduced by ``reduction`` (``"none"``, ``"mean"`` over realisations, or ``"sum"``: the
ratio of the totals over all realisations).

Time-series statistics (:func:`window_geometric_means`, :func:`super_geometric_test`, :func:`osgm_chain`)
take one 1-D sequence of ratios ``ρ_1 … ρ_T`` (one realisation) and work in float64 numpy, in log space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._validate import as_tensor, check_choice, check_range, check_scalar, check_shape
from .recurrences import Diagnostics
from .tolerances import rtol

__all__ = [
    "SuperGeometricResult",
    "OSGMChain",
    "contraction_factor_bound",
    "contraction_ratios",
    "write_gain_feedback",
    "stored_set_residual_ratio",
    "token_local_write_ratio",
    "excess_over_right_newton",
    "recall_accuracy",
    "percent_reduction",
    "window_geometric_means",
    "super_geometric_test",
    "osgm_chain",
    "RATIO_FLOOR",
]

_REDUCTIONS = ("none", "mean", "sum")

#: Default floor on the ratios of the super-geometric statistics: the round-off level ``(1e-14)²`` of a
#: ratio of squared float64 residuals (``docs/theory.md`` §8).
RATIO_FLOOR = 1e-28


def _check_diag(diag) -> Diagnostics:
    if not isinstance(diag, Diagnostics):
        raise ValueError(f"diag: expected a recurrences.Diagnostics, got {type(diag).__name__}")
    return diag


def _reduce(num: torch.Tensor, den: torch.Tensor, reduction: str) -> torch.Tensor:
    """``num/den`` per realisation (``none``), its mean (``mean``), or ``Σnum/Σden`` (``sum``)."""
    if reduction == "sum":
        return num.sum() / den.sum()
    r = num / den
    return r.mean() if reduction == "mean" else r


def contraction_ratios(diag) -> torch.Tensor:
    """Per-token contraction ratios ``ρ_t = ‖r_t⁺‖² / ‖e_t‖²`` of shape ``[B, T, H]`` (spec §7).

    ``diag`` is a :class:`~osdn_theory.recurrences.Diagnostics` (``residual_pre = e_t``,
    ``residual_post = r_t⁺``). For OSDN ``ρ_t = (1 − s_t)²`` exactly (see :func:`write_gain_feedback`).
    A token with ``e_t = 0`` and ``r_t⁺ = 0`` (nothing left to contract) gets ``ρ_t = 0``; ``e_t = 0`` with
    ``r_t⁺ ≠ 0`` gets ``inf``.
    """
    diag = _check_diag(diag)
    num = (diag.residual_post.to(torch.float64) ** 2).sum(-1)
    den = (diag.residual_pre.to(torch.float64) ** 2).sum(-1)
    zero = den == 0
    out = num / torch.where(zero, torch.ones_like(den), den)
    return torch.where(zero, torch.where(num == 0, 0.0, math.inf), out)


def write_gain_feedback(s) -> torch.Tensor:
    """Ratio feedback as a function of the write gain: ``(1 − s)²``, same shape as ``s`` (e.g. ``[B, T, H]``)."""
    s = as_tensor("s", s, dtype=torch.float64)
    check_range("s", s)
    return (1.0 - s) ** 2


def contraction_factor_bound(k, beta, d_min: float, d_max: float) -> torch.Tensor:
    """``max(|1 − β d_min ‖k‖²|, |1 − β d_max ‖k‖²|)`` of shape ``[B, T, H]`` (spec §4 bound).

    Args:
        k: keys of shape ``[B, T, H, K]``.
        beta: write strengths of shape ``[B, T, H]``.
        d_min, d_max: the box of the preconditioner, ``0 < d_min ≤ d_max``.
    """
    k = as_tensor("k", k, dtype=torch.float64)
    check_shape("k", k, [None, None, None, None], "[B, T, H, K]")
    beta = as_tensor("beta", beta, dtype=torch.float64)
    check_shape("beta", beta, list(k.shape[:3]), "[B, T, H]")
    d_min = check_scalar("d_min", d_min, 0.0, None, lo_open=True)
    d_max = check_scalar("d_max", d_max, d_min, None)
    kk = (k * k).sum(-1)
    return torch.maximum((1 - beta * d_min * kk).abs(), (1 - beta * d_max * kk).abs())


def stored_set_residual_ratio(state, k, v, mask=None, *, reduction: str = "none") -> torch.Tensor:
    """R1, the recall residual ratio: ``Σ_{i∈stored} ‖S k_i − v_i‖² / Σ_{i∈stored} ‖v_i‖²`` (spec §9).

    Args:
        state: memory ``Sᵀ`` of shape ``[B, H, K, V]``.
        k: stored keys ``[B, N, H, K]``; v: stored values ``[B, N, H, V]``.
        mask: optional boolean ``[B, N, H]`` selecting the stored set (default: all ``N``).
        reduction: ``"none"`` → ``[B, H]``; ``"mean"`` → mean over realisations; ``"sum"`` → ratio of totals.
    """
    M = as_tensor("state", state, dtype=torch.float64)
    check_shape("state", M, [None, None, None, None], "[B, H, K, V]")
    B, H, K, V = M.shape
    k = as_tensor("k", k, dtype=torch.float64)
    check_shape("k", k, [B, None, H, K], "[B, N, H, K]")
    v = as_tensor("v", v, dtype=torch.float64)
    check_shape("v", v, [B, k.shape[1], H, V], "[B, N, H, V]")
    check_choice("reduction", reduction, _REDUCTIONS)
    w = _mask("mask", mask, k.shape[:3])
    res = torch.einsum("bnhk,bhkv->bnhv", k, M) - v
    num = ((res**2).sum(-1) * w).sum(1)
    den = ((v**2).sum(-1) * w).sum(1)
    if bool((den <= 0).any()):
        raise ValueError("v: expected a nonzero stored value in every realisation, got Σ‖v_i‖² = 0")
    return _reduce(num, den, reduction)


def _mask(name: str, mask, shape) -> torch.Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.float64)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(shape):
        got = f"{type(mask).__name__} {getattr(mask, 'dtype', '')} {tuple(getattr(mask, 'shape', ()))}"
        raise ValueError(f"{name}: expected a boolean tensor of shape {list(shape)}, got {got}")
    return mask.to(torch.float64)


def token_local_write_ratio(diag, mask=None, *, reduction: str = "none") -> torch.Tensor:
    """R2: ``Σ_t ‖S_t k_t − v_t‖² / Σ_t ‖S_{t−1} k_t − v_t‖²`` from a Diagnostics (spec §9).

    ``mask``: optional boolean ``[B, T, H]`` selecting tokens. Returns ``[B, H]`` (``reduction="none"``).
    """
    diag = _check_diag(diag)
    check_choice("reduction", reduction, _REDUCTIONS)
    w = _mask("mask", mask, diag.write_gain.shape)
    num = ((diag.residual_post.to(torch.float64) ** 2).sum(-1) * w).sum(1)
    den = ((diag.residual_pre.to(torch.float64) ** 2).sum(-1) * w).sum(1)
    if bool((den <= 0).any()):
        raise ValueError("diag: expected a nonzero pre-write residual in every realisation, got Σ‖e_t‖² = 0")
    return _reduce(num, den, reduction)


def _as_metric(name: str, x) -> torch.Tensor:
    if isinstance(x, int | float) and not isinstance(x, bool):
        return torch.tensor(float(x), dtype=torch.float64)
    t = as_tensor(name, x, dtype=torch.float64)
    check_range(name, t)
    return t


def excess_over_right_newton(r1, r1_rls) -> torch.Tensor:
    """R3: ``(R1 − R1_RLS) / (1 − R1_RLS)``, the part of the RLS-achievable gap that remains (spec §9).

    ``r1``, ``r1_rls``: numbers or tensors of one shape (e.g. ``[B, H]``); ``R1_RLS < 1`` required.
    """
    a, b = _as_metric("r1", r1), _as_metric("r1_rls", r1_rls)
    check_range("r1", a, 0.0, None)
    check_range("r1_rls", b, 0.0, 1.0, hi_open=True)
    if a.shape != b.shape and b.ndim != 0:
        raise ValueError(f"r1_rls: expected shape {tuple(a.shape)} (as r1) or a scalar, got {tuple(b.shape)}")
    return (a - b) / (1.0 - b)


def recall_accuracy(state, query_keys, target_ids, codebook, *, reduction: str = "none") -> torch.Tensor:
    """Fraction of queries whose read-out ``S k_q`` is nearest (Euclidean) to the target codebook entry.

    Args:
        state: ``Sᵀ`` of shape ``[B, H, K, V]``.
        query_keys: ``[B, Q, H, K]``; target_ids: integer ``[B, Q, H]`` (indices into the codebook).
        codebook: ``[B, H, C, V]`` value vectors.
        reduction: ``"none"`` → ``[B, H]``; ``"mean"``/``"sum"`` → mean accuracy over realisations.
    """
    M = as_tensor("state", state, dtype=torch.float64)
    check_shape("state", M, [None, None, None, None], "[B, H, K, V]")
    B, H, K, V = M.shape
    qk = as_tensor("query_keys", query_keys, dtype=torch.float64)
    check_shape("query_keys", qk, [B, None, H, K], "[B, Q, H, K]")
    cb = as_tensor("codebook", codebook, dtype=torch.float64)
    check_shape("codebook", cb, [B, H, None, V], "[B, H, C, V]")
    if not isinstance(target_ids, torch.Tensor) or target_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"target_ids: expected an integer tensor [B, Q, H], got {type(target_ids).__name__}")
    if tuple(target_ids.shape) != (B, qk.shape[1], H):
        raise ValueError(f"target_ids: expected shape {[B, qk.shape[1], H]}, got {tuple(target_ids.shape)}")
    C = cb.shape[2]
    if target_ids.numel() and (int(target_ids.min()) < 0 or int(target_ids.max()) >= C):
        raise ValueError(
            f"target_ids: expected values in [0, {C}), got [{int(target_ids.min())}, {int(target_ids.max())}]"
        )
    check_choice("reduction", reduction, _REDUCTIONS)
    out = torch.einsum("bqhk,bhkv->bhqv", qk, M)  # [B,H,Q,V]
    dist = torch.cdist(out, cb)  # [B,H,Q,C]
    pred = dist.argmin(-1).transpose(1, 2)  # [B,Q,H]
    acc = (pred == target_ids.long()).to(torch.float64).mean(1)
    return acc if reduction == "none" else acc.mean()


def percent_reduction(metric_osdn, metric_deltanet):
    """``1 − metric_OSDN / metric_DeltaNet`` ("X% reduction" of spec §9; multiply by 100 for percent).

    Numbers or tensors of one shape; ``metric_deltanet > 0`` required. Returns a float for numbers.
    """
    a, b = _as_metric("metric_osdn", metric_osdn), _as_metric("metric_deltanet", metric_deltanet)
    check_range("metric_deltanet", b, 0.0, None, lo_open=True)
    if a.shape != b.shape:
        raise ValueError(
            f"metric_deltanet: expected shape {tuple(a.shape)} (as metric_osdn), got {tuple(b.shape)}"
        )
    r = 1.0 - a / b
    return float(r) if r.ndim == 0 else r


# ----------------------------------------------------------------------------------------------------------
# super-geometric statistics


def _series(name: str, rho) -> np.ndarray:
    if isinstance(rho, torch.Tensor):
        x = rho.detach().to(torch.float64).cpu().numpy()
    elif isinstance(rho, np.ndarray | list | tuple):
        x = np.asarray(rho, dtype=np.float64)
    else:
        raise ValueError(f"{name}: expected a 1-D tensor or array, got {type(rho).__name__}")
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name}: expected a nonempty 1-D sequence [T], got shape {x.shape}")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ValueError(
            f"{name}: expected finite nonnegative ratios, got min {x.min():.6g}, max {x.max():.6g}"
        )
    return x


def window_geometric_means(rho, num_windows: int, *, floor: float = RATIO_FLOOR) -> np.ndarray:
    """Geometric means ``G_1 … G_J`` of ``max(ρ_t, floor)`` over ``J`` equal consecutive windows.

    Steps ``1..T`` are split into ``J = num_windows`` windows of length ``w = ⌊T/J⌋`` after dropping the
    first ``T mod J`` steps. ``rho``: 1-D ``[T]`` with ``T ≥ J``. Returns ``[J]`` (float64 numpy).
    """
    x = _series("rho", rho)
    J = check_scalar("num_windows", num_windows, 1, None, integer=True)
    floor = check_scalar("floor", floor, 0.0, None, lo_open=True)
    T = x.size
    if T < J:
        raise ValueError(f"rho: expected at least num_windows = {J} steps, got T = {T}")
    w = T // J
    logs = np.log(np.maximum(x[T - J * w :], floor)).reshape(J, w)
    return np.exp(logs.mean(1))


@dataclass(frozen=True)
class SuperGeometricResult:
    """Outcome of :func:`super_geometric_test` with all the numbers behind the verdict.

    ``window_means`` ``[J]``; ``first``, ``middle``, ``last`` are ``G_1``, ``G_{⌈J/2⌉}``, ``G_J``;
    ``drop`` = ``G_1/G_J`` and ``tail_drop`` = ``G_{⌈J/2⌉}/G_J``; ``reason`` is ``"decay"`` (conditions (a) and
    (b)), ``"floor"`` (reached the floor) or ``"none"``; ``exponent`` ``p`` and ``coefficient`` ``c`` of the
    fit ``−log M_T ≈ c T^p`` over the second half (``nan`` when fewer than two usable points).
    """

    super_geometric: bool
    reason: str
    window_means: np.ndarray
    first: float
    middle: float
    last: float
    drop: float
    tail_drop: float
    decay_ok: bool
    tail_ok: bool
    reached_floor: bool
    exponent: float
    coefficient: float
    num_windows: int
    window_length: int
    dropped_steps: int
    factor: float
    tail_factor: float
    floor: float

    def __bool__(self) -> bool:
        return self.super_geometric


def _fit_exponent(x: np.ndarray, floor: float) -> tuple[float, float]:
    """Least squares of ``log(−log M_T)`` on ``log T`` over ``T`` in the second half (``−log M_T > 0``)."""
    T = x.size
    logM = np.cumsum(np.log(np.maximum(x, floor)))
    ts = np.arange(1, T + 1, dtype=np.float64)
    sel = (ts > T / 2) & (-logM > 0)
    if int(sel.sum()) < 2:
        return float("nan"), float("nan")
    X, Y = np.log(ts[sel]), np.log(-logM[sel])
    if np.ptp(X) == 0:
        return float("nan"), float("nan")
    p, logc = np.polyfit(X, Y, 1)
    return float(p), float(np.exp(logc))


def super_geometric_test(
    rho,
    *,
    num_windows: int = 8,
    factor: float = 100.0,
    tail_factor: float = 10.0,
    floor: float = RATIO_FLOOR,
) -> SuperGeometricResult:
    """Finite-sample test of super-geometric convergence ``M_T^{1/T} → 0`` (spec §7, claim C7).

    Definition (also in ``docs/theory.md``): split steps ``1..T`` into ``J = num_windows`` equal consecutive
    windows (dropping the first ``T mod J`` steps) and let ``G_j`` be the geometric mean of ``max(ρ_t, floor)``
    over window ``j``. The verdict is super-geometric iff

    * (a) ``G_J ≤ G_1 / factor`` and (b) ``G_J ≤ G_{⌈J/2⌉} / tail_factor``  (``reason = "decay"``), or
    * the run reached the floor: ``G_J ≤ floor · tail_factor`` (converged to machine precision;
      ``reason = "floor"``).

    A geometric run (ratios levelling at a constant ``q``) has ``G_{⌈J/2⌉} ≈ G_J ≈ q`` and fails (b).
    As evidence the exponent ``p`` of ``log M_T ≈ −c T^p`` (``M_T = Π_{t≤T} max(ρ_t, floor)``) is fitted by
    least squares of ``log(−log M_T)`` on ``log T`` over the second half: ``p ≈ 1`` is geometric, ``p > 1``
    super-geometric (e.g. ``ρ_t = q^t`` gives ``p → 2``). Being a finite-``T`` test, slowly super-geometric
    sequences (``ρ_t = 1/t``) can fail it; the windows need ``T ≥ J``.

    Args:
        rho: ratios ``[T]`` (1-D tensor or array, finite, ``≥ 0``).
        num_windows: ``J ≥ 2``; factor: ``> 1``; tail_factor: ``> 1``; floor: in (0, 1).
    """
    x = _series("rho", rho)
    J = check_scalar("num_windows", num_windows, 2, None, integer=True)
    factor = check_scalar("factor", factor, 1.0, None, lo_open=True)
    tail_factor = check_scalar("tail_factor", tail_factor, 1.0, None, lo_open=True)
    floor = check_scalar("floor", floor, 0.0, 1.0, lo_open=True, hi_open=True)
    G = window_geometric_means(x, J, floor=floor)
    g1, gm, gJ = float(G[0]), float(G[math.ceil(J / 2) - 1]), float(G[-1])
    decay_ok = gJ <= g1 / factor
    tail_ok = gJ <= gm / tail_factor
    reached_floor = gJ <= floor * tail_factor
    verdict = (decay_ok and tail_ok) or reached_floor
    reason = "decay" if (decay_ok and tail_ok) else ("floor" if reached_floor else "none")
    p, c = _fit_exponent(x, floor)
    w = x.size // J
    return SuperGeometricResult(
        super_geometric=bool(verdict),
        reason=reason,
        window_means=G,
        first=g1,
        middle=gm,
        last=gJ,
        drop=g1 / gJ,
        tail_drop=gm / gJ,
        decay_ok=bool(decay_ok),
        tail_ok=bool(tail_ok),
        reached_floor=bool(reached_floor),
        exponent=p,
        coefficient=c,
        num_windows=J,
        window_length=w,
        dropped_steps=x.size - J * w,
        factor=factor,
        tail_factor=tail_factor,
        floor=floor,
    )


@dataclass(frozen=True)
class OSGMChain:
    """The OSGM chain of spec §7 for every ``T`` (arrays ``[T]``, natural logs).

    ``log_product`` = ``log M_T = Σ_{t≤T} log ρ_t``; ``log_mean_power`` = ``T log((1/T) Σ_{t≤T} ρ_t)``;
    ``log_bound`` = ``T log((Σ_{t≤T} ρ_t^cmp + Regret_T) / T)``; ``regret`` = ``Regret_T``;
    ``amgm_holds`` / ``bound_holds``: each inequality at every ``T``; ``holds`` = both;
    ``regret_is_measured``: True when the regret was taken as ``Σρ − Σρ^cmp`` (then the second inequality is
    an identity, see :func:`osgm_chain`).
    """

    log_product: np.ndarray
    log_mean_power: np.ndarray
    log_bound: np.ndarray
    regret: np.ndarray
    amgm_holds: bool
    bound_holds: bool
    holds: bool
    regret_is_measured: bool
    max_amgm_violation: float
    max_bound_violation: float


def osgm_chain(rho, rho_comparator, *, regret=None) -> OSGMChain:
    """``M_T ≤ ((1/T) Σ_t ρ_t)^T ≤ ((Σ_t ρ_t^cmp + Regret_T) / T)^T`` at every ``T`` (spec §7).

    The first inequality is AM–GM and always holds. The second holds with equality when ``Regret_T`` is
    *defined* as the measured ``Σ_{t≤T} ρ_t − Σ_{t≤T} ρ_t^cmp`` (the default, ``regret=None``): then the chain
    carries no information beyond AM–GM and that bound is reported as an identity
    (``regret_is_measured=True``). The bound has content only when ``regret`` is an independent upper bound
    on the regret (e.g. the ``O(√T)`` guarantee of online gradient descent), passed as an array ``[T]``;
    then ``bound_holds`` checks it. Comparisons allow a relative slack of ``rtol(float64)``.

    Args:
        rho: ratios of the method ``[T]`` (``≥ 0``); rho_comparator: ratios of the comparator ``[T]``.
        regret: optional ``[T]`` regret values (bounds) to use instead of the measured regret.
    """
    x = _series("rho", rho)
    y = _series("rho_comparator", rho_comparator)
    if y.size != x.size:
        raise ValueError(f"rho_comparator: expected length T = {x.size} (as rho), got {y.size}")
    T = np.arange(1, x.size + 1, dtype=np.float64)
    cs = np.cumsum(x)
    with np.errstate(divide="ignore"):
        log_product = np.cumsum(np.log(x))
        log_mean_power = T * np.log(cs / T)
    measured = regret is None
    if measured:
        reg = cs - np.cumsum(y)
    else:
        if isinstance(regret, torch.Tensor):
            regret = regret.detach().to(torch.float64).cpu().numpy()
        try:
            reg = np.asarray(regret, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"regret: expected a finite array of shape {x.shape}, got {type(regret).__name__}"
            ) from None
        if reg.shape != x.shape or not np.all(np.isfinite(reg)):
            raise ValueError(f"regret: expected a finite array of shape {x.shape}, got shape {reg.shape}")
    tot = np.cumsum(y) + reg
    if np.any(tot < 0):
        raise ValueError("regret: expected Σρ_cmp + Regret_T ≥ 0 at every T, got a negative total")
    with np.errstate(divide="ignore"):
        log_bound = T * np.log(tot / T)
    tol = rtol(torch.float64)

    def _violation(lo: np.ndarray, hi: np.ndarray) -> float:
        fin = np.isfinite(lo) & np.isfinite(hi)
        v = np.zeros_like(lo)
        v[fin] = lo[fin] - hi[fin] - tol * np.maximum(1.0, np.abs(hi[fin]))
        bad_inf = (~fin) & (lo > hi)  # e.g. finite lo above a −inf bound
        v[bad_inf] = np.inf
        return float(max(v.max(), 0.0))

    va, vb = _violation(log_product, log_mean_power), _violation(log_mean_power, log_bound)
    return OSGMChain(
        log_product=log_product,
        log_mean_power=log_mean_power,
        log_bound=log_bound,
        regret=reg,
        amgm_holds=va == 0.0,
        bound_holds=vb == 0.0,
        holds=va == 0.0 and vb == 0.0,
        regret_is_measured=measured,
        max_amgm_violation=va,
        max_bound_violation=vb,
    )
