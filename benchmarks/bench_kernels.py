"""Benchmark ``chunk_osdn`` against flash-linear-attention on one GPU (bf16, median of ``do_bench``).

For each shape (B, T, H, D) it times: our forward with a given ``d``, with the ``ratio`` d rule, and with
``d = None``; our forward+backward (given ``d`` and ``d = None``); fla's ``chunk_delta_rule`` forward and
forward+backward; fla's ``chunk_precond_gated_delta_rule`` forward; a device-to-device copy of the bytes
our forward must read and write (q, k, v, d, β in; o out); and the peak memory of forward+backward above
the inputs. It prints a table of times and ratios to fla ``chunk_delta_rule`` and writes JSON + markdown.

    python benchmarks/bench_kernels.py --out benchmarks/results/kernels_<card>.json [--stages]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

SHAPES = [(4, 4096, 16, 128), (8, 2048, 16, 64), (2, 16384, 8, 128), (1, 8192, 32, 128)]


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


def _bench(fn, rep=60):
    return float(triton.testing.do_bench(fn, warmup=15, rep=rep, return_mode="median"))


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
    from fla.ops.precond_gated_delta_rule import chunk_precond_gated_delta_rule

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

    res["ours_fwd_d"] = _bench(lambda: ours(x))
    res["ours_fwd_drule"] = _bench(lambda: ours(x, d=False, d_rule=rule))
    res["ours_fwd_none"] = _bench(lambda: ours(x, d=False))
    res["ours_fwd_d_validated"] = _bench(
        lambda: chunk_osdn(x["q"], x["k"], x["v"], x["beta"], x["d"], validate=True)[0]
    )
    res["fla_fwd"] = _bench(lambda: fla(x))
    from osdn_theory.tolerances import rel_err

    res["rel_diff_out_vs_fla_delta"] = rel_err(ours(x, d=False), fla(x))
    fb_ours = _fwd_bwd(ours, x, ["q", "k", "v", "beta", "d"])
    fb_ours_none = _fwd_bwd(lambda xs: ours(xs, d=False), x, ["q", "k", "v", "beta"])
    fb_fla = _fwd_bwd(fla, x, ["q", "k", "v", "beta"])
    res["ours_fwdbwd_d"] = _bench(fb_ours)
    res["ours_fwdbwd_none"] = _bench(fb_ours_none)
    res["fla_fwdbwd"] = _bench(fb_fla)
    try:
        g = F.logsigmoid(torch.randn(B, T, H, device="cuda")).float()
        res["fla_precond_fwd"] = _bench(
            lambda: chunk_precond_gated_delta_rule(x["q"], x["k"], x["v"], g, g, x["beta"], x["beta"])[0]
        )
    except Exception as e:  # recorded, not hidden
        res["fla_precond_fwd"] = None
        res["fla_precond_error"] = f"{type(e).__name__}: {e}"[:300]
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
        from osdn_theory.kernels import stages

        res["stages"] = _stage_times(x)
        res["resources_regs_spills"] = dict(stages.RESOURCES)
    return res


def _stage_times(x):
    """Time each forward and backward stage alone (given d), to see where the time goes."""
    from osdn_theory.kernels import stages
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
    }
    return t


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
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="results JSON path (markdown written beside it)")
    ap.add_argument("--stages", action="store_true", help="also time each stage at the first shape")
    ap.add_argument("--shapes", type=str, default=None, help="e.g. '4,4096,16,128;8,2048,16,64'")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_kernels: needs a CUDA device")
    shapes = SHAPES if a.shapes is None else [tuple(map(int, s.split(","))) for s in a.shapes.split(";")]
    meta = _versions()
    rows = []
    for i, s in enumerate(shapes):
        r = bench_shape(*s, stages_breakdown=a.stages and i == 0)
        rows.append(r)
        print(json.dumps(r), flush=True)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        md_text = _markdown(meta, rows)
        a.out.with_suffix(".md").write_text(md_text)
    print(md_text)


if __name__ == "__main__":
    main()
