"""Benchmark ``chunk_osdn`` against flash-linear-attention on one GPU (bf16, median of ``do_bench``).

For each shape (B, T, H, D) it times, **first the call as users write it** (defaults: ``validate=True``,
whose value checks run inside the kernels without a host synchronisation), then the same without checks
(``validate=False``) and with ``validate="sync"``: our forward with a given ``d``, with the ``ratio`` d rule
and with ``d = None``; our forward+backward (given ``d``, the d rule with gradients through it, ``d = None``);
the d rule alone, forward and forward+backward; fla's ``chunk_delta_rule`` forward and forward+backward;
optionally fla's ``chunk_precond_gated_delta_rule`` forward; a device-to-device copy of the bytes our forward
must read and write (q, k, v, d, β in; o out); and the peak memory of forward+backward above the inputs.
Derived per shape: ratios to fla, TFLOP/s by the 4·B·T·H·D² convention, and time over the copy. Every op runs once per shape before any timing (Triton compiles our kernels; fla autotunes its
kernels for the shape's ``H, K, V``), so the timings never include compilation or autotuning. After each
shape the JSON and markdown files are rewritten (a run cut short keeps the shapes it finished) and a table
of times and ratios to fla ``chunk_delta_rule`` is printed.

    python -m benchmarks.bench_kernels [--out results/kernels.json] [--stages] [--shapes "4,4096,16,128"]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

#: Head dim 128 first: those shapes share compiled kernels (ours and fla's), so on a fresh machine the three
#: of them finish before the D = 64 shape pays for a second round of compilation and fla autotuning
#: (measured on an H200: fla's first-use autotuning took 103 s at the first shape and 57 s at D = 64).
SHAPES = [(4, 4096, 16, 128), (2, 16384, 8, 128), (1, 8192, 32, 128), (1, 65536, 16, 128), (8, 2048, 16, 64)]


def _inputs(B, T, H, D, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, device="cuda")

    bf = torch.bfloat16
    return dict(
        q=r(B, T, H, D).to(bf),
        k=F.normalize(r(B, T, H, D), dim=-1).to(bf),
        v=r(B, T, H, D).to(bf),
        beta=torch.sigmoid(r(B, T, H)).to(bf),
        d=torch.exp(0.3 * r(B, T, H, D)).to(bf),
        do=r(B, T, H, D).to(bf),
    )


WARMUP_MS, REP_MS = 25, 100


def _bench(fn):
    return float(triton.testing.do_bench(fn, warmup=WARMUP_MS, rep=REP_MS, return_mode="median"))


def _warm(*fns):
    """Run each op once (compilation, fla's autotuning) and wait, so that no timing includes them."""
    for fn in fns:
        fn()
    torch.cuda.synchronize()


def _peak(fn):
    """Peak bytes allocated while ``fn`` runs, above what was allocated before (inputs included before)."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _fwd_bwd(fwd, x, names):
    def run():
        xs = {n: x[n].detach().requires_grad_(True) for n in names}
        o = fwd(xs)
        o.backward(x["do"])

    return run


def _tflops(B, T, H, D, ms):
    """TFLOP/s by the convention 4·B·T·H·D² (two D×D products per token and head, as quoted for linear attention)."""
    return 4 * B * T * H * D * D / (ms * 1e-3) / 1e12


def bench_shape(B, T, H, D, stages_breakdown=False):
    from fla.ops.delta_rule import chunk_delta_rule

    from osdn_theory.kernels import DRule, check_values, chunk_osdn, d_ratio_scan

    x = _inputs(B, T, H, D)
    res = {"shape": [B, T, H, D]}
    rule = DRule(c=0.5)
    rule_seg = DRule(c=0.5, segment_chunks="auto")  # the segment-parallel scan, for comparison

    def ours(xs, d=True, **kw):
        """Our forward as a user calls it: defaults (validate=True) unless ``kw`` says otherwise."""
        return chunk_osdn(xs["q"], xs["k"], xs["v"], xs["beta"], xs["d"] if d else None, **kw)[0]

    def fla(xs):
        return chunk_delta_rule(xs["q"], xs["k"], xs["v"], xs["beta"])[0]

    def rule_fb():
        k = x["k"].detach().requires_grad_(True)
        b = x["beta"].detach().requires_grad_(True)
        d_ratio_scan(k, b, c=0.5, d_init=1.0, d_min=1e-4, chunk_size=32).backward(x["d"])

    fb_default = _fwd_bwd(ours, x, ["q", "k", "v", "beta", "d"])
    fb_ours = _fwd_bwd(lambda xs: ours(xs, validate=False), x, ["q", "k", "v", "beta", "d"])
    fb_ours_none = _fwd_bwd(lambda xs: ours(xs, d=False, validate=False), x, ["q", "k", "v", "beta"])
    fb_drule = _fwd_bwd(lambda xs: ours(xs, d=False, d_rule=rule), x, ["q", "k", "v", "beta"])
    fb_drule_seg = _fwd_bwd(lambda xs: ours(xs, d=False, d_rule=rule_seg), x, ["q", "k", "v", "beta"])
    fb_fla = _fwd_bwd(fla, x, ["q", "k", "v", "beta"])
    t0 = time.perf_counter()
    _warm(lambda: fla(x), fb_fla)
    res["warm_fla_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _warm(
        lambda: ours(x),
        lambda: ours(x, validate=False),
        lambda: ours(x, d=False, d_rule=rule),
        lambda: ours(x, d=False, validate=False),
        lambda: ours(x, validate="sync"),
        fb_default,
        fb_ours,
        fb_ours_none,
        fb_drule,
        fb_drule_seg,
        lambda: ours(x, d=False, d_rule=rule_seg),
        rule_fb,
    )
    res["warm_ours_s"] = time.perf_counter() - t0
    # the default call first: it is the call users write
    res["ours_fwd_d_default"] = _bench(lambda: ours(x))
    res["ours_fwd_d"] = _bench(lambda: ours(x, validate=False))
    res["ours_fwd_drule_default"] = _bench(lambda: ours(x, d=False, d_rule=rule))
    res["ours_fwd_drule"] = _bench(lambda: ours(x, d=False, d_rule=rule, validate=False))
    res["ours_fwd_drule_seg_default"] = _bench(lambda: ours(x, d=False, d_rule=rule_seg))
    res["ours_fwd_none"] = _bench(lambda: ours(x, d=False, validate=False))
    res["ours_fwd_d_sync"] = _bench(lambda: ours(x, validate="sync"))
    res["fla_fwd"] = _bench(lambda: fla(x))
    from osdn_theory.tolerances import rel_err

    res["rel_diff_out_vs_fla_delta"] = rel_err(ours(x, d=False), fla(x))
    res["ours_fwdbwd_d_default"] = _bench(fb_default)
    res["ours_fwdbwd_d"] = _bench(fb_ours)
    res["ours_fwdbwd_drule_default"] = _bench(fb_drule)
    res["ours_fwdbwd_drule_seg_default"] = _bench(fb_drule_seg)
    res["ours_fwdbwd_none"] = _bench(fb_ours_none)
    res["fla_fwdbwd"] = _bench(fb_fla)
    res["drule_alone_fwd"] = _bench(
        lambda: d_ratio_scan(x["k"], x["beta"], c=0.5, d_init=1.0, d_min=1e-4, chunk_size=32)
    )
    res["drule_alone_fwdbwd"] = _bench(rule_fb)
    res["fla_precond_fwd"] = None
    nbytes = (
        sum(x[n].numel() * x[n].element_size() for n in ("q", "k", "v", "d", "beta")) + x["v"].numel() * 2
    )
    src = torch.randint(0, 255, (nbytes // 2,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    res["copy_same_bytes"] = _bench(lambda: dst.copy_(src))
    res["copy_bytes_moved"] = int(2 * (nbytes // 2))
    res["peak_ours_fwdbwd_d"] = _peak(fb_ours)
    res["peak_ours_fwdbwd_none"] = _peak(fb_ours_none)
    res["peak_ours_fwdbwd_drule"] = _peak(fb_drule)
    res["peak_fla_fwdbwd"] = _peak(fb_fla)
    try:  # every call above had valid inputs: a flag here would be a false alarm of the device-side checks
        check_values()
        res["value_checks"] = "no flag raised"
    except ValueError as e:
        res["value_checks"] = f"FALSE ALARM: {e}"
    f, fb = res["fla_fwd"], res["fla_fwdbwd"]
    res["derived"] = {
        "default_over_unchecked_fwd": res["ours_fwd_d_default"] / res["ours_fwd_d"],
        "default_over_unchecked_fwdbwd": res["ours_fwdbwd_d_default"] / res["ours_fwdbwd_d"],
        "ratio_fla": {
            n: res[n] / f
            for n in ("ours_fwd_d_default", "ours_fwd_d", "ours_fwd_drule_default", "ours_fwd_drule")
            + ("ours_fwd_drule_seg_default", "ours_fwd_none", "ours_fwd_d_sync")
        }
        | {
            n: res[n] / fb
            for n in (
                "ours_fwdbwd_d_default",
                "ours_fwdbwd_d",
                "ours_fwdbwd_drule_default",
                "ours_fwdbwd_drule_seg_default",
                "ours_fwdbwd_none",
            )
        },
        "tflops_fwd": {
            n: _tflops(B, T, H, D, res[n])
            for n in ("ours_fwd_d_default", "ours_fwd_d", "ours_fwd_drule_default", "fla_fwd")
        },
        "ratio_to_copy_fwd": {
            n: res[n] / res["copy_same_bytes"]
            for n in ("ours_fwd_d_default", "ours_fwd_d", "ours_fwd_drule_default", "fla_fwd")
        },
    }
    if stages_breakdown:
        res["stages"], res["resources_regs_spills"] = _stage_times(x)
    return res


def bench_precond(B, T, H, D):
    """fla's ``chunk_precond_gated_delta_rule`` forward at one shape (timed after the main ops, since its
    autotuning is long); an error is recorded, not raised."""
    from fla.ops.precond_gated_delta_rule import chunk_precond_gated_delta_rule

    x = _inputs(B, T, H, D)
    try:
        g = F.logsigmoid(torch.randn(B, T, H, device="cuda")).float()

        def pre():
            return chunk_precond_gated_delta_rule(x["q"], x["k"], x["v"], g, g, x["beta"], x["beta"])[0]

        _warm(pre)
        return {"fla_precond_fwd": _bench(pre)}
    except Exception as e:  # recorded, not hidden
        return {"fla_precond_fwd": None, "fla_precond_error": f"{type(e).__name__}: {e}"[:300]}


def _stage_times(x):
    """Time each forward and backward stage alone (given d), to see where the time goes."""
    from osdn_theory.kernels import d_ratio_scan, stages
    from osdn_theory.kernels.chunk import _chunk_tables
    from osdn_theory.kernels.config import Launch

    B, T, H, K = x["k"].shape
    C = 64
    q, k, v = (x[n].reshape(B * T, H, K) for n in ("q", "k", "v"))
    d, beta = x["d"].reshape(B * T, H, K), x["beta"].reshape(B * T, H)
    do = x["do"].reshape(B * T, H, K)
    cu, offs, bounds, NC = _chunk_tables(None, B, T, C, "cuda")
    rec = {}  # each launch records its configuration and registers/spills here
    L = Launch(record=rec)
    kt, c, g, ai = stages.gram_solve(k, d, beta, None, bounds, None, C, launch=L)
    w, u = stages.wy_factors(k, v, beta, None, ai, bounds, C, launch=L)
    h, vnew, _ = stages.state_pass(kt, w, u, None, None, cu, offs, NC, C, False, launch=L)
    dvl = stages.dv_local(q, kt, None, do, bounds, 1.0, C, launch=L)
    dh, du, _ = stages.dh_pass(q, kt, w, None, do, dvl, None, cu, offs, NC, 1.0, C, False, launch=L)
    dq, dkt, dw, _ = stages.bwd_dqk(q, kt, None, vnew, h, do, dh, du, bounds, 1.0, C, launch=L)
    t = {
        "gram_solve": _bench(lambda: stages.gram_solve(k, d, beta, None, bounds, None, C, launch=L)),
        "gram_only_keys": _bench(
            lambda: stages.gram_solve(k, d, beta, None, bounds, None, C, solve=False, launch=L)
        ),
        "wy_factors": _bench(lambda: stages.wy_factors(k, v, beta, None, ai, bounds, C, launch=L)),
        "state_pass": _bench(
            lambda: stages.state_pass(kt, w, u, None, None, cu, offs, NC, C, False, launch=L)
        ),
        "output": _bench(lambda: stages.output(q, kt, vnew, h, None, bounds, 1.0, C, launch=L)),
        "dv_local": _bench(lambda: stages.dv_local(q, kt, None, do, bounds, 1.0, C, launch=L)),
        "dh_pass": _bench(
            lambda: stages.dh_pass(q, kt, w, None, do, dvl, None, cu, offs, NC, 1.0, C, False, launch=L)
        ),
        "bwd_dqk": _bench(lambda: stages.bwd_dqk(q, kt, None, vnew, h, do, dh, du, bounds, 1.0, C, launch=L)),
        "bwd_wy": _bench(
            lambda: stages.bwd_wy(k, d, None, kt, v, beta, None, ai, dw, du, dkt, None, bounds, C, launch=L)
        ),
        "d_rule_scan": _bench(
            lambda: d_ratio_scan(x["k"], x["beta"], c=0.5, d_init=1.0, d_min=1e-4, validate=False, launch=L)
        ),
    }
    resources = {name: r["regs_spills"] for name, r in rec.items()}
    return t, resources


def parse_shapes(text: str | None, default: list[tuple[int, ...]]) -> list[tuple[int, int, int, int]]:
    """``--shapes "B,T,H,D;B,T,H,D"`` of the GPU benchmarks (``default`` when not given); a malformed value
    stops the script with a message naming ``--shapes`` before any device time is spent."""
    if text is None:
        return list(default)
    try:
        shapes = [tuple(int(v) for v in s.split(",")) for s in text.split(";")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 4 or min(s) < 1 for s in shapes):
        raise SystemExit(f"--shapes: expected 'B,T,H,D' positive integers, ';'-separated, got {text!r}")
    return shapes


def start_gpu_run(script: str, shapes: str | None, default_shapes, out, stem: str):
    """The start shared by the GPU benchmark scripts: refuse without CUDA (naming ``script``), parse
    ``--shapes`` (``default_shapes`` when not given), take the versions, and the results path (``out``, or
    :func:`default_out` of ``stem``) with its folder made. Returns ``(shapes, meta, out)``."""
    if not torch.cuda.is_available():
        raise SystemExit(f"{script}: needs a CUDA device (run it on a GPU machine)")
    shapes = parse_shapes(shapes, default_shapes)
    meta = _versions()
    out = Path(out) if out else default_out(stem, meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    return shapes, meta, out


def _versions():
    import importlib.metadata as md

    def ver(p):
        try:
            return md.version(p)
        except md.PackageNotFoundError:
            return None

    return {
        "card": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "fla-core": ver("fla-core"),
        "python": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
    }


def default_out(stem, meta):
    """``benchmarks/results/<stem>_<card>_<UTC date and time>.json`` (the card's name in lower case, ``_`` for
    anything but letters and digits)."""
    card = "".join(ch if ch.isalnum() else "_" for ch in meta["card"].lower()).strip("_")
    stamp = meta["date_utc"].replace(" ", "_").replace(":", "")
    return Path(__file__).parent / "results" / f"{stem}_{card}_{stamp}.json"


def _markdown(meta, rows):
    lines = [
        f"Card: {meta['card']}; torch {meta['torch']}, triton {meta['triton']}, fla-core {meta['fla-core']}; "
        f"{meta['date_utc']} UTC. bf16, median ms of `triton.testing.do_bench`; (ratio) = time / fla "
        "`chunk_delta_rule` (forward, or forward+backward) in the same run. *default* = the call as users write "
        "it (`validate=True`); *unchecked* = `validate=False`.",
        "",
        "| B, T, H, D | fwd d, **default** | fwd d, unchecked | default / unchecked | fwd d rule, default "
        "| fwd d rule, unchecked | fwd d=None | fwd d, `validate='sync'` | fla fwd "
        "| fwd+bwd d, default | fwd+bwd d, unchecked | fwd+bwd d rule, default | fla fwd+bwd "
        "| d rule alone fwd / fwd+bwd | copy floor | peak MiB ours (d, d rule) / fla "
        "| d rule, segment-parallel scan: fwd / fwd+bwd |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def c(r, n, ref):
        return f"{r[n]:.3f} ({r[n] / ref:.2f}×)"

    for r in rows:
        f, fb = r["fla_fwd"], r["fla_fwdbwd"]
        lines.append(
            f"| {', '.join(map(str, r['shape']))} | **{c(r, 'ours_fwd_d_default', f)}** | {c(r, 'ours_fwd_d', f)} "
            f"| {r['ours_fwd_d_default'] / r['ours_fwd_d']:.3f} "
            f"| {c(r, 'ours_fwd_drule_default', f)} | {c(r, 'ours_fwd_drule', f)} | {c(r, 'ours_fwd_none', f)} "
            f"| {c(r, 'ours_fwd_d_sync', f)} | {f:.3f} "
            f"| {c(r, 'ours_fwdbwd_d_default', fb)} | {c(r, 'ours_fwdbwd_d', fb)} "
            f"| {c(r, 'ours_fwdbwd_drule_default', fb)} | {fb:.3f} "
            f"| {r['drule_alone_fwd']:.3f} / {r['drule_alone_fwdbwd']:.3f} | {r['copy_same_bytes']:.3f} "
            f"| {r['peak_ours_fwdbwd_d'] / 2**20:.0f}, {r['peak_ours_fwdbwd_drule'] / 2**20:.0f} "
            f"/ {r['peak_fla_fwdbwd'] / 2**20:.0f} "
            f"| {c(r, 'ours_fwd_drule_seg_default', f)} / {c(r, 'ours_fwdbwd_drule_seg_default', fb)} |"
        )
    lines += [
        "",
        "TFLOP/s of the forward (4·B·T·H·D² convention) and time over the same-bytes copy:",
        "",
        "| B, T, H, D | default (d) | unchecked (d) | default (d rule) | fla | × copy: default / unchecked / fla |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        tf, cp = r["derived"]["tflops_fwd"], r["derived"]["ratio_to_copy_fwd"]
        lines.append(
            f"| {', '.join(map(str, r['shape']))} | {tf['ours_fwd_d_default']:.1f} | {tf['ours_fwd_d']:.1f} "
            f"| {tf['ours_fwd_drule_default']:.1f} | {tf['fla_fwd']:.1f} "
            f"| {cp['ours_fwd_d_default']:.1f} / {cp['ours_fwd_d']:.1f} / {cp['fla_fwd']:.1f} |"
        )
    lines += [
        "",
        "Value checks after the timed calls: "
        + "; ".join(f"{r['shape']}: {r['value_checks']}" for r in rows),
    ]
    for r in rows:
        if r.get("fla_precond_fwd") is not None:
            lines += [
                "",
                f"fla `chunk_precond_gated_delta_rule` fwd at {r['shape']}: {r['fla_precond_fwd']:.3f} ms.",
            ]
        if "stages" in r:
            st = ", ".join(f"{n} {t:.3f}" for n, t in r["stages"].items())
            lines += ["", f"Stage times at {', '.join(map(str, r['shape']))} (ms, given d): {st}."]
        if "resources_regs_spills" in r:
            rs = ", ".join(f"{n} {v[0]}/{v[1]}" for n, v in r["resources_regs_spills"].items() if v)
            lines += ["", f"Registers/spills per thread: {rs}."]
    lines += [
        "",
        "Warm-up (compile + fla autotune) and wall seconds per shape: "
        + "; ".join(
            f"{r['shape']}: fla {r['warm_fla_s']:.0f} s, ours {r['warm_ours_s']:.0f} s, wall {r.get('wall_s', 0):.0f} s"
            for r in rows
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON path, markdown written beside it (default: results/kernels_<card>_<UTC date>.json)",
    )
    ap.add_argument("--stages", action="store_true", help="also time each stage at the first shape")
    ap.add_argument("--shapes", type=str, default=None, help="e.g. '4,4096,16,128;8,2048,16,64'")
    ap.add_argument(
        "--precond",
        choices=["none", "first", "all"],
        default="none",
        help="time fla's precond op (long autotuning) at no shape (default), the first, or every shape",
    )
    a = ap.parse_args()
    shapes, meta, a.out = start_gpu_run("bench_kernels", a.shapes, SHAPES, a.out, "kernels")
    rows = []

    def write():
        a.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        md_text = _markdown(meta, rows)
        a.out.with_suffix(".md").write_text(md_text)
        return md_text

    for i, s in enumerate(shapes):
        t0 = time.perf_counter()
        r = bench_shape(*s, stages_breakdown=a.stages and i == 0)
        r["wall_s"] = time.perf_counter() - t0
        rows.append(r)
        print(json.dumps(r), flush=True)
        print(write(), flush=True)
    # fla's preconditioned op last (its autotuning is long): the four main shapes come first
    for i, s in enumerate(shapes):
        if a.precond == "all" or (a.precond == "first" and i == 0):
            rows[i].update(bench_precond(*s))
            print(write(), flush=True)


if __name__ == "__main__":
    main()
