"""Evaluate a batch of runs that share shapes: stack their streams along B, run once, score each run.

Runs stack when they share the method, the metric settings and every shape-setting stream field
(:func:`stack_key`): typically the seeds of one config, and configs that differ only in stream values
(``condition``, ``noise``, ``beta``, …).

Pipeline per batch (float64 torch, all seeds stacked along the batch axis B):

1. build each seed's stream (``[1, T, H, K]`` keys etc.) and concatenate along B;
2. the preconditioner: ``d ≡ 1`` (DeltaNet), the state-free d-scan (OSDN, keys only, before the memory),
   token-local Newton, or RLS (full-matrix comparator, its own recurrence);
3. the memory in chunk form (:func:`osdn_theory.chunkwise.osdn_chunkwise`), one call per segment chained
   through ``initial_state`` so the state at every segment end is available. Queries are the *next* key,
   ``q_t = k_{t+1}`` with ``scale = 1``, so the read-out ``o_t = S_t k_{t+1}`` gives the pre-write residual
   ``e_{t+1} = S_t k_{t+1} − v_{t+1}`` of every token; the post-write residual is ``r⁺_t = (1 − s_t) e_t``;
4. the metrics of spec §8–§9 per seed (per head, then averaged over heads):

   - ``cal_early`` / ``cal_late``: calibration loss ``(1 − s_t)²`` (``s_t = β_t k_tᵀ D_t k_t`` of the preconditioner
     itself, before the ``s_max`` clip, so a clip cannot hide stale calibration) averaged over the first / last ``window``
     tokens of each segment after the first (the segments that start with a shift), then over segments;
     ``cal_early_first``: the first segment's early loss (cold start). Per segment in ``series``.
   - ``d_err_end``: ``‖d_t − d*_seg‖ / ‖d*_seg‖`` at each segment's last token (``d*_seg`` =
     :func:`osdn_theory.comparators.fixed_point_d` of the segment's feature variances and mean β), mean
     over segments; NaN for RLS (no diagonal d).
   - ``recovery_time``: tokens after a shift until ``‖d_t − d*_seg‖/‖d*_seg‖ ≤ recovery_tol`` and stays so
     for ``window`` tokens (or to the segment end); censored at the segment length when never reached
     (``recovered_frac`` counts the shifts that did recover).
   - ``triggers``: APF trigger firings (summed over heads).
   - ``r1``: stored-set residual ratio R1 of each segment's tokens under the state at that segment's end,
     mean over segments (``r1_final``: last segment); ``r2``: token-local write ratio R2 over the stream
     (with the effective, clipped write gain). ``clip_frac``: fraction of tokens the ``s_max`` clip scaled.
   - ``recall_acc``: nearest-codebook recall accuracy on streams with queries (MQAR/JRT).
   - ``cal_profile`` (series): ``(1 − s_t)²`` from ``profile_before`` tokens before to ``profile_after`` tokens
     after each shift, averaged over shifts and heads.
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from typing import Any

import torch
import torch.nn.functional as F

from ..chunkwise import osdn_chunkwise
from ..recurrences import Diagnostics, osdn_recurrent, write_key
from .registry import build_stream, get_method, method_builder
from .spec import config_hash, method_label

__all__ = [
    "DIVERGED_R1",
    "VALUE_ONLY_STREAM_FIELDS",
    "evaluate_batch",
    "evaluate_runs",
    "evaluate_with_plugins",
    "recovery_time",
    "stack_key",
    "stack_streams",
]


#: a run whose stored-set residual ratio R1 (``Σ‖S k_i − v_i‖² / Σ‖v_i‖²``; 1 for an empty memory) exceeds this,
#: or is not finite, is recorded with ``status = "diverged"``: its memory blew up (e.g. OSDN without the
#: ``s_max`` clip, whose write gain can exceed 2), and its metrics describe overflow, not the method.
DIVERGED_R1 = 1e6


def _status(m: dict) -> tuple[str, dict]:
    r1 = m.get("r1")
    if r1 is None or r1 <= DIVERGED_R1:  # NaN fails the comparison: diverged
        return "ok", {}
    return "diverged", {
        "diverged": f"memory diverged: R1 = {r1:.3g} > {DIVERGED_R1:g} (or not finite); metrics kept as computed"
    }


def _now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _label(cfg: dict) -> str:
    return f"{cfg['stream'].get('family')}/{method_label(cfg['method'])}/seed{cfg['seed']}"


def evaluate_batch(run_dicts: list[dict]) -> list[dict]:
    """Evaluate runs (each ``{"stream", "method", "seed", "metrics"}``) → one record per run; never raises.

    Status ``ok``, or ``diverged`` (R1 above :data:`DIVERGED_R1` or not finite; metrics kept) or ``failed``.

    The runs are evaluated stacked (they must share :func:`stack_key`). If the stacked evaluation fails,
    each run is evaluated alone, so one bad run is recorded as failed (with its traceback) and the others
    still succeed. An empty or non-list ``run_dicts`` is a caller error (``ValueError``), not a failed run.
    """
    if not isinstance(run_dicts, list) or not run_dicts:
        raise ValueError(f"run_dicts: expected a non-empty list of run configs, got {run_dicts!r}")
    t0 = time.perf_counter()
    try:
        metrics, series = evaluate_runs(run_dicts)
        dt = (time.perf_counter() - t0) / len(run_dicts)
        return [
            _record(cfg, st, dt, len(run_dicts), metrics=m, series=s, **why)
            for cfg, m, s in zip(run_dicts, metrics, series, strict=True)
            for st, why in [_status(m)]
        ]
    except Exception as err:  # noqa: BLE001 - recorded, never lost
        if len(run_dicts) > 1:
            out = []
            for cfg in run_dicts:
                out += evaluate_batch([cfg])
            return out
        tb = traceback.format_exc()
        return [
            _record(
                run_dicts[0],
                "failed",
                time.perf_counter() - t0,
                1,
                error=f"{type(err).__name__}: {err}",
                traceback=tb,
            )
        ]


def evaluate_with_plugins(plugins: list[dict], run_dicts: list[dict], evaluate=None) -> list[dict]:
    """Import the sweep's plugins in this process (once; :func:`osdn_theory.plugins.load_plugins`), then
    ``evaluate(run_dicts)`` (default :func:`evaluate_batch`). The task every executor runs when a sweep has
    plugins, so a worker process knows the names they register. A plugin that cannot be imported here fails
    the batch's runs (recorded with the reason); never raises."""
    from ..plugins import load_plugins

    if not isinstance(run_dicts, list) or not run_dicts:
        raise ValueError(f"run_dicts: expected a non-empty list of run configs, got {run_dicts!r}")
    try:
        load_plugins(plugins)
    except Exception as err:  # noqa: BLE001 - recorded, never lost
        tb = traceback.format_exc()
        return [
            _record(cfg, "failed", 0.0, len(run_dicts), error=f"{type(err).__name__}: {err}", traceback=tb)
            for cfg in run_dicts
        ]
    return (evaluate or evaluate_batch)(run_dicts)


def _record(cfg: dict, status: str, elapsed: float, batch: int, **extra) -> dict:
    return {
        "hash": config_hash(cfg),
        "label": _label(cfg),
        "status": status,
        "config": cfg,
        "elapsed_s": elapsed,
        "batch_size": batch,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "finished": _now(),
        **extra,
    }


# ---------------------------------------------------------------------------------------------------------


def _cat(datas: list[Any], name: str):
    vals = [getattr(d, name) for d in datas]
    if any(v is None for v in vals):
        return None
    return torch.cat(vals, 0)


def stack_streams(datas: list[Any]) -> dict[str, Any]:
    """Concatenate per-seed :class:`~osdn_theory.streams.StreamData` along B (segment starts must agree).

    Returns a dict of stacked tensors (``k, v, beta``, optional ``a_seg [B, H, S, K]``, MQAR fields) plus
    ``segment_starts`` and ``rows``: the batch rows of each input (a stream config's ``batch`` realisations).
    """
    starts = [tuple(int(x) for x in d.segment_starts) for d in datas]
    if any(s != starts[0] for s in starts):
        raise ValueError("stream: expected the same segment starts for every seed of a batch")
    out: dict[str, Any] = {"segment_starts": list(starts[0])}
    for name in (
        "k",
        "v",
        "beta",
        "a_seg",
        "stored_keys",
        "stored_values",
        "query_keys",
        "target_ids",
        "codebook",
    ):
        out[name] = _cat(datas, name)
    rows, r0 = [], 0
    for d in datas:
        n = d.k.shape[0]
        rows.append(slice(r0, r0 + n))
        r0 += n
    out["rows"] = rows
    return out


def _segments(starts: list[int], T: int) -> list[tuple[int, int]]:
    st = sorted(set([0] + [b for b in starts if 0 < b < T]))
    return list(zip(st, st[1:] + [T], strict=True))


def _preconditioner(m: dict, k: torch.Tensor, beta: torch.Tensor):
    """``(d or None, triggers [B, H] or None)`` of the registered method (DeltaNet, token-local, OSDN, a user's)."""
    return get_method(m["name"]).preconditioner(m["kwargs"], k, beta)


def _memory(k, v, beta, d, s_max, segs, memory: str = "chunk"):
    """Memory per segment; returns (pre-write residuals e ``[B, T, H, V]``, states at segment ends).

    ``memory="chunk"`` (default): :func:`osdn_chunkwise` with next-key queries ``q_t = k_{t+1}`` and
    ``scale = 1``, so ``o_t = S_t k_{t+1}`` and ``e_{t+1} = o_t − v_{t+1}``. ``memory="recurrent"``: the
    token-by-token reference :func:`osdn_theory.recurrences.osdn_recurrent` and its diagnostics (slow; the
    baseline of the benchmark and a cross-check in the tests).
    """
    T = k.shape[1]
    q = torch.cat([k[:, 1:], k[:, -1:]], 1)  # q_t = k_{t+1}: o_t = S_t k_{t+1} (last query unused)
    e = torch.zeros_like(v)
    e[:, 0] = -v[:, 0]  # S_0 = 0
    state, ends = None, []
    for s0, s1 in segs:
        args = (q[:, s0:s1], k[:, s0:s1], v[:, s0:s1], beta[:, s0:s1], None if d is None else d[:, s0:s1])
        kw = {"scale": 1.0, "initial_state": state, "output_final_state": True, "s_max": s_max}
        if memory == "recurrent":
            _, state, diag = osdn_recurrent(*args, **kw, diagnostics=True)
            e[:, s0:s1] = diag.residual_pre
        else:
            o, state = osdn_chunkwise(*args, **kw)
            hi = min(s1, T - 1)  # e_{t+1} = S_t k_{t+1} − v_{t+1}
            e[:, s0 + 1 : hi + 1] = o[:, : hi - s0] - v[:, s0 + 1 : hi + 1]
        ends.append(state)
    return e, ends


#: stream fields that change values but never tensor shapes or segment boundaries: runs that differ only in
#: these (and the seed) are stacked along B (``batch`` only changes how many rows a run has)
VALUE_ONLY_STREAM_FIELDS = frozenset(
    {
        "condition",
        "noise",
        "key_scale",
        "beta",
        "cov",
        "key_dist",
        "normalize_keys",
        "scales",
        "period",
        "batch",
    }
)


def stack_key(run: dict) -> str:
    """Runs with equal keys can be evaluated stacked along B: same method, metric settings, stream family and
    every stream field that sets a shape (``T``, ``K``, ``V``, ``heads``, ``segment_len``, pairs, passes, …)."""
    if not isinstance(run, dict) or not {"stream", "method", "metrics"} <= set(run):
        raise ValueError(f"run: expected a dict with stream, method and metrics, got {run!r}")
    shape = {k: v for k, v in run["stream"].items() if k not in VALUE_ONLY_STREAM_FIELDS}
    return config_hash({"method": run["method"], "metrics": run["metrics"], "stream_shape": shape})


def recovery_time(err: torch.Tensor, tol: float, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens until a relative error series falls to ``≤ tol`` and stays there for ``window`` tokens.

    Args:
        err: errors of shape ``[B, L, H]`` over the ``L`` tokens of a segment (token 0 = the shift).
        tol: recovery threshold; window: tokens the error must stay ``≤ tol`` (fewer if the segment ends).

    Returns:
        ``(time [B, H] float64, recovered [B, H] bool)``; ``time = L`` (censored) where never recovered.
    """
    if not isinstance(err, torch.Tensor) or err.ndim != 3:
        raise ValueError(f"err: expected a tensor of shape [B, L, H], got {getattr(err, 'shape', type(err))}")
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol: expected a finite non-negative number, got {tol!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window: expected a positive integer, got {window!r}")
    L = err.shape[1]
    okf = F.pad(
        (err <= tol).to(torch.float64).transpose(1, 2), (0, window - 1), value=1.0
    )  # past the end: ok
    ok = (okf.unfold(-1, window, 1).amin(-1) == 1.0).transpose(1, 2)  # [B, L, H]
    anyok = ok.any(1)
    first = ok.to(torch.int64).argmax(1)
    return torch.where(anyok, first, L).to(torch.float64), anyok


def evaluate_runs(run_dicts: list[dict], *, memory: str = "chunk") -> tuple[list[dict], list[dict]]:
    """Stacked evaluation of runs that share stream config and method; returns per-run (metrics, series).

    ``memory``: ``"chunk"`` (default, chunk form) or ``"recurrent"`` (token-by-token reference; slow).
    """
    from .. import metrics as M
    from ..comparators import fixed_point_d

    if not run_dicts:
        raise ValueError("run_dicts: expected at least one run")
    if memory not in ("chunk", "recurrent"):
        raise ValueError(f"memory: expected 'chunk' or 'recurrent', got {memory!r}")
    key0 = stack_key(run_dicts[0])
    for r in run_dicts[1:]:
        if stack_key(r) != key0:
            raise ValueError(
                "run_dicts: expected runs that share method, metrics and stream shapes (see stack_key), "
                f"got {stack_key(r)} vs {key0}"
            )
    mset = run_dicts[0]["metrics"]
    m = method_builder(run_dicts[0]["method"])
    x = stack_streams([build_stream(r["stream"], r["seed"]) for r in run_dicts])
    k, v, beta = x["k"], x["v"], x["beta"]
    B, T, H, K = k.shape
    segs = _segments(x["segment_starts"], T)
    nS = len(segs)

    trig = None
    if get_method(m["name"]).full_matrix:  # the RLS comparator: its own full-matrix recurrence
        from ..comparators import rls

        _, _, diag = rls(k, k, v, **m["kwargs"], diagnostics=True, keep_states=True)
        s, d = diag.write_gain, None
        s_raw = s
        ends = [diag.states[:, s1 - 1] for _, s1 in segs]
        diag_std = Diagnostics(diag.residual_pre, diag.residual_post, s, torch.ones_like(s))
        d_diag = False
    else:
        d_diag = True
        d, trig = _preconditioner(m, k, beta)
        _, s, c = write_key(k, beta, d, m["s_max"])
        s_raw = s / c  # the preconditioner's own calibration, before the safeguard clip
        e, ends = _memory(k, v, beta, d, m["s_max"], segs, memory)
        diag_std = Diagnostics(e, (1.0 - s)[..., None] * e, s, c)

    cal = M.write_gain_feedback(s_raw)  # (1 − s_t)² with s_t = β_t u_tᵀ d_t before any clip, [B, T, H]
    W = mset["window"]
    early = torch.stack([cal[:, a : min(b, a + W)].mean(1) for a, b in segs], 1)  # [B, S, H]
    late = torch.stack([cal[:, max(a, b - W) : b].mean(1) for a, b in segs], 1)

    if x["stored_keys"] is not None:  # MQAR / JRT: the stored set is the key-value pairs
        r1_seg = M.stored_set_residual_ratio(ends[-1], x["stored_keys"], x["stored_values"])[:, None]
    else:  # each segment's tokens under the state at that segment's end
        r1_seg = torch.stack(
            [
                M.stored_set_residual_ratio(st, k[:, a:b], v[:, a:b])
                for st, (a, b) in zip(ends, segs, strict=True)
            ],
            1,
        )  # [B, S, H]
    r2 = M.token_local_write_ratio(diag_std)  # [B, H]
    recall = None
    if x["query_keys"] is not None:
        recall = M.recall_accuracy(ends[-1], x["query_keys"], x["target_ids"], x["codebook"])  # [B, H]

    # distance to the per-segment fixed point d*_seg and recovery after each shift
    d_err_end = torch.full((B, nS, H), float("nan"), dtype=torch.float64)
    rec = torch.full((B, nS, H), float("nan"), dtype=torch.float64)
    recovered = torch.zeros((B, nS, H), dtype=torch.bool)
    has_dstar = x["a_seg"] is not None and d_diag
    if has_dstar:
        dd = torch.ones_like(k) if d is None else d
        for j, (a, b) in enumerate(segs):
            dstar = fixed_point_d(x["a_seg"][:, :, j], beta[:, a:b].mean(1))  # [B, H, K]
            err = (dd[:, a:b] - dstar[:, None]).norm(dim=-1) / dstar[:, None].norm(dim=-1)  # [B, L, H]
            d_err_end[:, j] = err[:, -1]
            rec[:, j], recovered[:, j] = recovery_time(err, mset["recovery_tol"], W)

    pb, pa = mset["profile_before"], mset["profile_after"]
    prof = [cal[:, a - pb : a + pa].mean(-1) for a, _ in segs[1:] if a - pb >= 0 and a + pa <= T]
    profile = torch.stack(prof, 0).mean(0) if prof else None  # [B, pb + pa]

    shift = slice(1, None) if nS > 1 else slice(0, None)  # segments that start with a shift
    nan = float("nan")
    out_m, out_s = [], []
    for rows in x["rows"]:
        R = lambda t, rows=rows: t[rows]  # noqa: E731
        mm = {
            "T": T,
            "K": K,
            "H": H,
            "realisations": rows.stop - rows.start,
            "segments": nS,
            "cal_early": float(R(early)[:, shift].mean()),
            "cal_late": float(R(late)[:, shift].mean()),
            "cal_early_first": float(R(early)[:, 0].mean()),
            "cal_mean": float(R(cal).mean()),
            "d_err_end": float(R(d_err_end)[:, shift].mean()) if has_dstar else nan,
            "recovery_time": float(R(rec)[:, shift].mean()) if has_dstar else nan,
            "recovered_frac": float(R(recovered)[:, shift].to(torch.float64).mean()) if has_dstar else nan,
            "triggers": nan if trig is None else float(R(trig).sum(-1).mean()),
            "clip_frac": float(R(diag_std.clipped).to(torch.float64).mean()),
            "r1": float(R(r1_seg).mean()),
            "r1_final": float(R(r1_seg)[:, -1].mean()),
            "r2": float(R(r2).mean()),
            "recall_acc": nan if recall is None else float(R(recall).mean()),
        }
        ss = {
            "cal_seg_early": R(early).mean((0, 2)).tolist(),
            "cal_seg_late": R(late).mean((0, 2)).tolist(),
            "d_err_seg": R(d_err_end).mean((0, 2)).tolist(),
            "recovery_seg": R(rec).mean((0, 2)).tolist(),
            "r1_seg": R(r1_seg).mean((0, 2)).tolist(),
            "cal_profile": None if profile is None else R(profile).mean(0).tolist(),
        }
        out_m.append(mm)
        out_s.append(ss)
    return out_m, out_s
