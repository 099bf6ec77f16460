"""Our own calls on one GPU, without the peer: what a short device session can measure (no fla autotuning).

Per shape (bf16, median ms of ``do_bench``), first the call as users write it:

- forward with a given ``d``: default (``validate=True``) and unchecked (``validate=False``): target 1 of
  issue #10 is default / unchecked ≤ 1.05; then the default call with ``d`` checked at each explicit
  placement (``Launch(d_check="tile" | "rows" | "pass" | "atomic")``; the default ``"auto"`` is ``"pass"``
  for K > 64 and ``"tile"`` otherwise);
- forward with the d rule with the segment-parallel scan (``DRule(segment_chunks="auto")``) and with the
  sequential scan (``DRule()``, the default), both default calls, and the sequential scan with chunks of 64
  (``DRule(chunk_size=64)``: half as many sequential steps; the default 32 was chosen at B·H = 64, where
  the scan is not the bottleneck);
- forward+backward with the d rule (gradients through it), segment-parallel and sequential;
- the d rule alone (``d_ratio_scan``), forward and forward+backward, both scans, and its normwise deviation
  from the same rule computed from float32 keys with the sequential scan (a precision check of the
  segment maps' tf32 products).

Then each forward stage alone without and with its value checks (``forward_stages_checked_vs_unchecked``
in the JSON), to locate the default call's extra cost, and the d rule's parallel part and sequential scan
alone at chunks of 32 and 64 (``d_rule_parts``).

Ratios to fla are not in this file (see ``bench_kernels.py``, which times fla in the same run).

    python -m benchmarks.bench_ours [--out FILE] [--shapes "4,4096,16,128;2,16384,8,128"]
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import torch

from benchmarks.bench_kernels import (
    SHAPES,
    _bench,
    _fwd_bwd,
    _inputs,
    _warm,
    start_gpu_run,
)


def checked_stage_times(x, device="cuda") -> dict:
    """The forward's checked stages alone, each without and with its value checks (``flag`` given: stage 1 checks
    ``log α`` and ``d``, stage 2 ``k``, ``β``, ``v``, the output stage ``q``), in ms: where the default call's
    cost over the unchecked one sits (issue #10 item 1). The state pass carries no checks and is not timed
    here."""
    from osdn_theory.kernels import stages
    from osdn_theory.kernels.chunk import chunk_tables
    from osdn_theory.kernels.config import Launch
    from osdn_theory.kernels.d_check import check_d

    B, T, H, K = x["k"].shape
    C = 64
    q, k, v = (x[n].reshape(B * T, H, K) for n in ("q", "k", "v"))
    d, beta = x["d"].reshape(B * T, H, K), x["beta"].reshape(B * T, H)
    cu, offs, bounds, NC = chunk_tables(None, B, T, C, device)
    flag = torch.zeros(1, dtype=torch.int32, device=device)
    kt, c, g, ai = stages.gram_solve(k, d, beta, None, bounds, None, C)
    w, u = stages.wy_factors(k, v, beta, None, ai, bounds, C)
    h, vnew, _ = stages.state_pass(kt, w, u, None, None, cu, offs, NC, C, False)
    del w, u
    tile, rows, pss, atom = (Launch(d_check=w) for w in _PLACEMENTS)
    calls = {
        "gram_solve": lambda f: stages.gram_solve(k, d, beta, None, bounds, None, C, flag=f, launch=tile),
        "gram_solve_rows": lambda f: stages.gram_solve(
            k, d, beta, None, bounds, None, C, flag=f, launch=rows
        ),
        # the "pass" placement: the pass alone (its unchecked twin does nothing) and stage 1 without the d check
        "check_d_pass": lambda f: check_d(d, f) if f is not None else None,
        "gram_solve_pass": lambda f: stages.gram_solve(k, d, beta, None, bounds, None, C, flag=f, launch=pss),
        "gram_solve_atomic": lambda f: stages.gram_solve(
            k, d, beta, None, bounds, None, C, flag=f, launch=atom
        ),
        "wy_factors": lambda f: stages.wy_factors(k, v, beta, None, ai, bounds, C, flag=f),
        "output": lambda f: stages.output(q, kt, vnew, h, None, bounds, 1.0, C, flag=f),
    }
    out = {}
    for name, fn in calls.items():
        plain, checked = functools.partial(fn, None), functools.partial(fn, flag)
        _warm(plain, checked)
        out[name] = {"unchecked": _bench(plain), "checked": _bench(checked)}
    if int(flag.item()):  # a check fired on the benchmark's (good) inputs: a false alarm, reported
        out["flag_bits"] = int(flag.item())
    return out


def rule_stage_times(x, device="cuda", chunks=(32, 64)) -> dict:
    """The d rule's forward in its two parts, in ms, per scan chunk size: the parallel part (``factors``: the
    preparation pass and stages 1–2 on ``û``) and the sequential scan over the chunks (``scan``; and
    ``scan_separate_readout``: the scan with its read-out of ``d`` apart, ``Launch(rule_readout="separate")``).
    Where the rule's time goes at each shape (issue #10 item 2)."""
    from osdn_theory.kernels.chunk import chunk_tables
    from osdn_theory.kernels.config import Launch
    from osdn_theory.kernels.d_scan import rule_factors, scan_chunks

    B, T, H, K = x["k"].shape
    k, beta = x["k"].reshape(B * T, H, K), x["beta"].reshape(B * T, H).contiguous()
    h0 = torch.ones(B, H, K, dtype=torch.float32 if k.dtype != torch.float64 else k.dtype, device=device)
    out = {}
    for C in chunks:
        tables = chunk_tables(None, B, T, C, device)
        factors = functools.partial(rule_factors, k, beta, 0.5, C, tables, None)
        uhat, w, ut, _, _ = factors()
        scan = functools.partial(scan_chunks, uhat, w, ut, h0, 1e-4, C, tables, False)
        sep = functools.partial(
            scan_chunks, uhat, w, ut, h0, 1e-4, C, tables, False, Launch(rule_readout="separate")
        )
        _warm(factors, scan, sep)
        out[f"C{C}"] = {
            "factors": _bench(factors),
            "scan": _bench(scan),
            "scan_separate_readout": _bench(sep),
        }
    return out


def bench_shape(B, T, H, D) -> dict:
    from osdn_theory.kernels import DRule, check_values, chunk_osdn, d_ratio_scan
    from osdn_theory.kernels.config import Launch

    x = _inputs(B, T, H, D)
    seg, seq = DRule(c=0.5, segment_chunks="auto"), DRule(c=0.5, segment_chunks=None)
    seq64 = DRule(c=0.5, segment_chunks=None, chunk_size=64)
    separate = Launch(rule_readout="separate")

    def ours(xs, d=True, **kw):
        return chunk_osdn(xs["q"], xs["k"], xs["v"], xs["beta"], xs["d"] if d else None, **kw)[0]

    def rule_alone(rule, grad):
        def run():
            k = x["k"].detach().requires_grad_(grad)
            b = x["beta"].detach().requires_grad_(grad)
            d = d_ratio_scan(
                k, b, c=0.5, d_init=1.0, d_min=1e-4, chunk_size=32, segment_chunks=rule.segment_chunks
            )
            if grad:
                d.backward(x["d"])

        return run

    names = ["q", "k", "v", "beta"]
    calls = {
        "fwd_d_default": lambda: ours(x),
        "fwd_d_unchecked": lambda: ours(x, validate=False),
        "fwd_d_default_tile": lambda: ours(x, launch=Launch(d_check="tile")),
        "fwd_d_default_rows": lambda: ours(x, launch=Launch(d_check="rows")),
        "fwd_d_default_pass": lambda: ours(x, launch=Launch(d_check="pass")),
        "fwd_d_default_atomic": lambda: ours(x, launch=Launch(d_check="atomic")),
        "fwd_drule_seg": lambda: ours(x, d=False, d_rule=seg),
        "fwd_drule_seq": lambda: ours(x, d=False, d_rule=seq),
        "fwd_drule_seq_c64": lambda: ours(x, d=False, d_rule=seq64),
        "fwd_drule_seq_separate": lambda: ours(x, d=False, d_rule=seq, launch=separate),
        "fwd_drule_seq_c64_separate": lambda: ours(x, d=False, d_rule=seq64, launch=separate),
        "fwdbwd_d_default": _fwd_bwd(ours, x, names + ["d"]),
        "fwdbwd_drule_seg": _fwd_bwd(lambda xs: ours(xs, d=False, d_rule=seg), x, names),
        "fwdbwd_drule_seq": _fwd_bwd(lambda xs: ours(xs, d=False, d_rule=seq), x, names),
        "rule_alone_fwd_seg": rule_alone(seg, False),
        "rule_alone_fwd_seq": rule_alone(seq, False),
        "rule_alone_fwdbwd_seg": rule_alone(seg, True),
        "rule_alone_fwdbwd_seq": rule_alone(seq, True),
    }
    res: dict = {"shape": [B, T, H, D]}
    t0 = time.perf_counter()
    _warm(*calls.values())
    res["warm_s"] = time.perf_counter() - t0
    for name, fn in calls.items():  # the default call first
        res[name] = _bench(fn)
    ref = d_ratio_scan(x["k"].float(), x["beta"].float(), c=0.5, d_init=1.0, d_min=1e-4, segment_chunks=None)
    for label, sc in (("seg", "auto"), ("seq", None)):
        d = d_ratio_scan(x["k"], x["beta"], c=0.5, d_init=1.0, d_min=1e-4, segment_chunks=sc)
        # normwise: an elementwise ratio is dominated by entries floored at d_min in one and not the other
        # (the 2026-12-05 run printed 1.1e3 for both scans that way)
        res[f"rule_rel_dev_vs_fp32_{label}"] = float((d.float() - ref).norm() / ref.norm())
    try:
        check_values()
        res["value_checks"] = "no flag raised"
    except ValueError as e:
        res["value_checks"] = f"FALSE ALARM: {e}"
    res["forward_stages_checked_vs_unchecked"] = checked_stage_times(x)
    res["d_rule_parts"] = rule_stage_times(x)
    res["derived"] = {
        "default_over_unchecked_fwd": res["fwd_d_default"] / res["fwd_d_unchecked"],
        **{
            f"default_{w}_over_unchecked_fwd": res[f"fwd_d_default_{w}"] / res["fwd_d_unchecked"]
            for w in _PLACEMENTS
        },
        "drule_fwd_seg_over_seq": res["fwd_drule_seg"] / res["fwd_drule_seq"],
        "drule_fwd_c64_over_c32": res["fwd_drule_seq_c64"] / res["fwd_drule_seq"],
        "drule_fwd_separate_over_fused": res["fwd_drule_seq_separate"] / res["fwd_drule_seq"],
        "drule_fwdbwd_seg_over_seq": res["fwdbwd_drule_seg"] / res["fwdbwd_drule_seq"],
        "drule_fwd_over_given_d_fwd": res["fwd_drule_seg"] / res["fwd_d_default"],
    }
    return res


#: The explicit placements of the d check, timed in this order (the default, "auto", picks one by K).
_PLACEMENTS = ("tile", "rows", "pass", "atomic")


def _row(r) -> str:
    s = ", ".join(map(str, r["shape"]))
    dv = r["derived"]
    return (
        f"| {s} | {r['fwd_d_default']:.3f} | {r['fwd_d_unchecked']:.3f} | {dv['default_over_unchecked_fwd']:.2f} "
        f"| {' / '.join(format(dv[f'default_{w}_over_unchecked_fwd'], '.2f') for w in _PLACEMENTS)} "
        f"| {r['fwd_drule_seg']:.3f} / {r['fwd_drule_seq']:.3f} / {r['fwd_drule_seq_c64']:.3f} "
        f"/ {r['fwd_drule_seq_separate']:.3f} / {r['fwd_drule_seq_c64_separate']:.3f} "
        f"| {r['fwdbwd_drule_seg']:.3f} / "
        f"{r['fwdbwd_drule_seq']:.3f} | {r['rule_alone_fwd_seg']:.3f} / {r['rule_alone_fwd_seq']:.3f} "
        f"| {r['rule_alone_fwdbwd_seg']:.3f} / {r['rule_alone_fwdbwd_seq']:.3f} "
        f"| {r['rule_rel_dev_vs_fp32_seg']:.1e} / {r['rule_rel_dev_vs_fp32_seq']:.1e} |"
    )


HEADER = [
    "| B, T, H, D | fwd d, default | fwd d, unchecked | default / unchecked "
    "| same / unchecked, d checked: tile / rows / pass / atomic "
    "| fwd d rule: segments / sequential / sequential, chunks of 64 / read-out separate, 32 / 64 "
    "| fwd+bwd d rule: seg / seq | rule alone fwd: seg / seq | rule alone fwd+bwd: seg / seq "
    "| rule ‖d − d_fp32‖ / ‖d_fp32‖: seg / seq |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--shapes", default=None, help='e.g. "4,4096,16,128;2,16384,8,128"')
    a = ap.parse_args()
    shapes, meta, out = start_gpu_run("bench_ours", a.shapes, SHAPES, a.out, "ours")
    rows = []
    print(f"{meta['card']}; torch {meta['torch']}, triton {meta['triton']}; {meta['date_utc']} UTC; bf16, ms")
    print("\n".join(HEADER), flush=True)
    for shape in shapes:
        rows.append(bench_shape(*shape))
        print(_row(rows[-1]), flush=True)
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))  # a run cut short keeps its shapes
        out.with_suffix(".md").write_text("\n".join([f"{meta}", "", *HEADER, *map(_row, rows)]) + "\n")


if __name__ == "__main__":
    main()
