"""Benchmark ``chunk_osdn`` against flash-linear-attention on one GPU (bf16, median of ``do_bench``).

For each shape (B, T, H, D) it times: our forward with a given ``d``, with the ``ratio`` d rule, and with
``d = None``; our forward+backward (given ``d`` and ``d = None``); fla's ``chunk_delta_rule`` forward and
forward+backward; fla's ``chunk_precond_gated_delta_rule`` forward; a device-to-device copy of the bytes
our forward must read and write (q, k, v, d, β in; o out); and the peak memory of forward+backward above
the inputs. Every op runs once per shape before any timing (Triton compiles our kernels; fla autotunes its
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
SHAPES = [(4, 4096, 16, 128), (2, 16384, 8, 128), (1, 8192, 32, 128), (8, 2048, 16, 64)]


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


def bench_shape(B, T, H, D, stages_breakdown=False):
    from fla.ops.delta_rule import chunk_delta_rule

    from osdn_theory.kernels import DRule, chunk_osdn

    x = _inputs(B, T, H, D)
    res = {"shape": [B, T, H, D]}
    rule = DRule(c=0.5)

    def ours(xs, d=True, **kw):
        return chunk_osdn(
            xs["q"], xs["k"], xs["v"], xs["beta"], xs["d"] if d else None, validate=False, **kw
        )[0]

    def fla(xs):
        return chunk_delta_rule(xs["q"], xs["k"], xs["v"], xs["beta"])[0]

    fb_ours = _fwd_bwd(ours, x, ["q", "k", "v", "beta", "d"])
    fb_ours_none = _fwd_bwd(lambda xs: ours(xs, d=False), x, ["q", "k", "v", "beta"])
    fb_fla = _fwd_bwd(fla, x, ["q", "k", "v", "beta"])
    t0 = time.perf_counter()
    _warm(lambda: fla(x), fb_fla)
    res["warm_fla_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _warm(
        lambda: ours(x),
        lambda: ours(x, d=False, d_rule=rule),
        lambda: ours(x, d=False),
        fb_ours,
        fb_ours_none,
    )
    res["warm_ours_s"] = time.perf_counter() - t0
    res["ours_fwd_d"] = _bench(lambda: ours(x))
    res["ours_fwd_drule"] = _bench(lambda: ours(x, d=False, d_rule=rule))
    res["ours_fwd_none"] = _bench(lambda: ours(x, d=False))
    res["ours_fwd_d_validated"] = _bench(
        lambda: chunk_osdn(x["q"], x["k"], x["v"], x["beta"], x["d"], validate=True)[0]
    )
    res["fla_fwd"] = _bench(lambda: fla(x))
    from osdn_theory.tolerances import rel_err

    res["rel_diff_out_vs_fla_delta"] = rel_err(ours(x, d=False), fla(x))
    res["ours_fwdbwd_d"] = _bench(fb_ours)
    res["ours_fwdbwd_none"] = _bench(fb_ours_none)
    res["fla_fwdbwd"] = _bench(fb_fla)
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
    res["peak_fla_fwdbwd"] = _peak(fb_fla)
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

    B, T, H, K = x["k"].shape
    C = 64
    q, k, v = (x[n].reshape(B * T, H, K) for n in ("q", "k", "v"))
    d, beta = x["d"].reshape(B * T, H, K), x["beta"].reshape(B * T, H)
    do = x["do"].reshape(B * T, H, K)
    cu, offs, bounds, NC = _chunk_tables(None, B, T, C, "cuda")
    kt, c, g, ai = stages.gram_solve(k, d, beta, None, bounds, None, C)
    w, u = stages.wy_factors(k, v, beta, None, ai, bounds, C)
    h, vnew, _ = stages.state_pass(kt, w, u, None, None, cu, offs, NC, C, False)
    dvl = stages.dv_local(q, kt, None, do, bounds, 1.0, C)
    dh, du, _ = stages.dh_pass(q, kt, w, None, do, dvl, None, cu, offs, NC, 1.0, C, False)
    dq, dkt, dw, _ = stages.bwd_dqk(q, kt, None, vnew, h, do, dh, du, bounds, 1.0, C)
    t = {
        "gram_solve": _bench(lambda: stages.gram_solve(k, d, beta, None, bounds, None, C)),
        "gram_only_keys": _bench(lambda: stages.gram_solve(k, d, beta, None, bounds, None, C, solve=False)),
        "wy_factors": _bench(lambda: stages.wy_factors(k, v, beta, None, ai, bounds, C)),
        "state_pass": _bench(lambda: stages.state_pass(kt, w, u, None, None, cu, offs, NC, C, False)),
        "output": _bench(lambda: stages.output(q, kt, vnew, h, None, bounds, 1.0, C)),
        "dv_local": _bench(lambda: stages.dv_local(q, kt, None, do, bounds, 1.0, C)),
        "dh_pass": _bench(lambda: stages.dh_pass(q, kt, w, None, do, dvl, None, cu, offs, NC, 1.0, C, False)),
        "bwd_dqk": _bench(lambda: stages.bwd_dqk(q, kt, None, vnew, h, do, dh, du, bounds, 1.0, C)),
        "bwd_wy": _bench(
            lambda: stages.bwd_wy(k, d, None, kt, v, beta, None, ai, dw, du, dkt, None, bounds, C)
        ),
        "d_rule_scan": _bench(
            lambda: d_ratio_scan(x["k"], x["beta"], c=0.5, d_init=1.0, d_min=1e-4, validate=False)
        ),
    }
    resources = dict(stages.RESOURCES)
    return t, resources


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
        f"{meta['date_utc']} UTC. bf16, median ms of `triton.testing.do_bench`; ratio = time / fla "
        "`chunk_delta_rule` (same op kind) in the same run.",
        "",
        "| B, T, H, D | ours fwd (d) | ours fwd (d rule) | ours fwd (d=None) | fla delta fwd | fla precond fwd "
        "| ours fwd+bwd (d) | ours fwd+bwd (None) | fla delta fwd+bwd | copy floor | peak MiB ours/fla |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, fb = r["fla_fwd"], r["fla_fwdbwd"]
        pre = r.get("fla_precond_fwd")
        lines.append(
            f"| {', '.join(map(str, r['shape']))} | {r['ours_fwd_d']:.3f} ({r['ours_fwd_d'] / f:.2f}×) "
            f"| {r['ours_fwd_drule']:.3f} ({r['ours_fwd_drule'] / f:.2f}×) "
            f"| {r['ours_fwd_none']:.3f} ({r['ours_fwd_none'] / f:.2f}×) | {f:.3f} "
            f"| {'—' if pre is None else f'{pre:.3f} ({pre / f:.2f}×)'} "
            f"| {r['ours_fwdbwd_d']:.3f} ({r['ours_fwdbwd_d'] / fb:.2f}×) "
            f"| {r['ours_fwdbwd_none']:.3f} ({r['ours_fwdbwd_none'] / fb:.2f}×) | {fb:.3f} "
            f"| {r['copy_same_bytes']:.3f} "
            f"| {r['peak_ours_fwdbwd_d'] / 2**20:.0f} / {r['peak_fla_fwdbwd'] / 2**20:.0f} "
            f"({r['peak_ours_fwdbwd_d'] / r['peak_fla_fwdbwd']:.2f}×) |"
        )
    for r in rows:
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
        "--precond-all",
        action="store_true",
        help="time fla's precond op at every shape (default: first, at the end)",
    )
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_kernels: needs a CUDA device")
    shapes = SHAPES if a.shapes is None else [tuple(map(int, s.split(","))) for s in a.shapes.split(";")]
    meta = _versions()
    if a.out is None:
        a.out = default_out("kernels", meta)
    rows = []

    def write():
        a.out.parent.mkdir(parents=True, exist_ok=True)
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
        if a.precond_all or i == 0:
            rows[i].update(bench_precond(*s))
            print(write(), flush=True)


if __name__ == "__main__":
    main()
