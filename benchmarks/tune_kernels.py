"""Launch-configuration sweep of the chunk kernel's stages on one GPU (bf16), next to fla's own stages.

For each shape it times (median of ``triton.testing.do_bench``) every stage of ``osdn_theory.kernels.stages``
under each configuration variant in :data:`VARIANTS` (passed to the stage as an explicit
``osdn_theory.kernels.config.Launch``, which also records the configuration each launch resolved to and, on a
GPU, its registers and spills), checks that each variant
computes what the default computes (relative difference of the stage's outputs), and times fla-core's
corresponding stages (``chunk_scaled_dot_kkt_fwd``, ``solve_tril``, ``recompute_w_u_fwd``,
``chunk_gated_delta_rule_fwd_h``, ``chunk_fwd_o``). The variants of the triangular solve's dot precision
(``PREC``, ``NEWTON``) change results, so for them it also measures the end-to-end forward error against the
float64 chunk form, on random keys and on nearly aligned keys (the hard case for the solve).

The results file (JSON, rewritten after every stage so that an interrupted run keeps what it measured) and
a printed table are what the defaults in the stage modules are chosen from; ``bench_kernels.py`` then measures
the chosen defaults against fla.

    python -m benchmarks.tune_kernels [--out results/tune.json] [--shapes "4,4096,16,128;8,2048,16,64"] [--dscan]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import traceback
from pathlib import Path

import torch

from benchmarks.bench_kernels import _bench, _inputs, start_gpu_run

SHAPES = [(4, 4096, 16, 128), (2, 16384, 8, 128), (8, 2048, 16, 64)]


def _grid(**axes):
    keys = list(axes)
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*axes.values())]


#: Variants per stage (each the fields of a ``LaunchConfig``); the default configuration is always timed first.
VARIANTS = {
    "gram_solve": [{"num_warps": w, "PREC": "ieee", "NEWTON": n} for w in (1, 2, 4) for n in (True, False)],
    "wy": _grid(BK=[64, 128], BV=[64, 128], num_warps=[2, 4]),
    "state": _grid(KSPLIT=[False, True], BV=[16, 32, 64], num_warps=[4, 8], num_stages=[2, 3, 4]),
    # BV = 32 is left out: on an H200 with triton 3.6 it computed wrong values and then faulted (not investigated)
    "output": _grid(BV=[64, 128], num_warps=[2, 4, 8]),
    "dv_local": _grid(BV=[64, 128], num_warps=[4, 8]),
    # num_stages = 1 is left out: {BV 16, 4 warps, 1 stage} faulted on an H200 with triton 3.6 (not investigated)
    "dh": _grid(BV=[16, 32, 64], num_warps=[4, 8], num_stages=[2, 3]),
    "bwd_dqk": _grid(BV=[32, 64], num_warps=[4, 8], num_stages=[1, 2]),
    "bwd_wy": _grid(BK=[64, 128], num_warps=[4, 8], num_stages=[1, 2]),
}


def _rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


class _Stages:
    """Inputs of every stage at one shape (given d), so each stage can be run alone."""

    def __init__(self, x, C=64):
        from osdn_theory.kernels import stages
        from osdn_theory.kernels.chunk import _chunk_tables
        from osdn_theory.kernels.config import DEFAULT_LAUNCH

        self.s = stages
        self.launch = DEFAULT_LAUNCH  # the launch configuration every stage method passes down
        B, T, H, K = x["k"].shape
        self.C = C
        self.q, self.k, self.v = (x[n].reshape(B * T, H, K) for n in ("q", "k", "v"))
        self.d, self.beta = x["d"].reshape(B * T, H, K), x["beta"].reshape(B * T, H)
        self.do = x["do"].reshape(B * T, H, K)
        self.cu, self.offs, self.bounds, self.NC = _chunk_tables(None, B, T, C, x["k"].device)
        self.refresh()

    def refresh(self):
        """Recompute every intermediate with the default configurations."""
        self.kt, _, _, self.ai = self.gram_solve()
        self.w, self.u = self.wy()
        self.h, self.vnew, _ = self.state()
        self.dvl = self.dv_local()
        self.dh_, self.du, _ = self.dh()
        _, self.dkt, self.dw, _ = self.bwd_dqk()

    def gram_solve(self):
        return self.s.gram_solve(
            self.k, self.d, self.beta, None, self.bounds, None, self.C, launch=self.launch
        )

    def wy(self):
        return self.s.wy_factors(
            self.k, self.v, self.beta, None, self.ai, self.bounds, self.C, launch=self.launch
        )

    def state(self):
        return self.s.state_pass(
            self.kt,
            self.w,
            self.u,
            None,
            None,
            self.cu,
            self.offs,
            self.NC,
            self.C,
            False,
            launch=self.launch,
        )

    def output(self):
        return self.s.output(
            self.q, self.kt, self.vnew, self.h, None, self.bounds, 1.0, self.C, launch=self.launch
        )

    def dv_local(self):
        return self.s.dv_local(self.q, self.kt, None, self.do, self.bounds, 1.0, self.C, launch=self.launch)

    def dh(self):
        return self.s.dh_pass(
            self.q,
            self.kt,
            self.w,
            None,
            self.do,
            self.dvl,
            None,
            self.cu,
            self.offs,
            self.NC,
            1.0,
            self.C,
            False,
            launch=self.launch,
        )

    def bwd_dqk(self):
        return self.s.bwd_dqk(self.q, self.kt, None, self.vnew, self.h, self.do, self.dh_, self.du, self.bounds, 1.0,
                              self.C, launch=self.launch)  # fmt: skip

    def bwd_wy(self):
        return self.s.bwd_wy(
            self.k, self.d, None, self.kt, self.v, self.beta, None, self.ai, self.dw, self.du, self.dkt, None,
            self.bounds, self.C, launch=self.launch,
        )  # fmt: skip


def _tensors(out):
    return [t for t in (out if isinstance(out, tuple) else (out,)) if isinstance(t, torch.Tensor)]


def sweep_stage(st, name):
    """Time the default and every variant of stage ``name``; each row: config, the launch configuration the
    launcher resolved it to, ms, registers/spills, max relative difference of its outputs from the default's (or
    the error it raised)."""
    from osdn_theory.kernels.config import DEFAULT_LAUNCH, Launch

    fn = getattr(st, name)
    rec = {}
    st.launch = Launch(record=rec)
    try:
        ref = [t.clone() for t in _tensors(fn())]
        rows = [{"config": "default", "resolved": rec[name]["config"], "ms": _bench(fn), "rel_diff": 0.0}]
        rows[0]["regs_spills"] = rec[name]["regs_spills"]
        for cfg in VARIANTS[name]:
            rec.clear()
            st.launch = Launch(record=rec).with_stage(name, cfg)
            row = {"config": cfg}
            try:
                got = _tensors(fn())
                row["resolved"] = rec[name]["config"]
                row["rel_diff"] = max(_rel(a, b) for a, b in zip(got, ref, strict=True))
                row["ms"] = _bench(fn)
                row["regs_spills"] = rec[name]["regs_spills"]
            except Exception as e:  # a config over a resource limit is a result, not a crash
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            rows.append(row)
            if "illegal memory access" in row.get("error", ""):
                raise RuntimeError(f"{name} {cfg}: CUDA context lost; rows so far: {rows}")
    finally:
        st.launch = DEFAULT_LAUNCH
    return rows


def _ref_forward(x):
    """float64 chunk form on the GPU (the reference of the precision check)."""
    from osdn_theory.chunkwise import osdn_chunkwise

    return osdn_chunkwise(x["q"], x["k"], x["v"], x["beta"], x["d"], dtype=torch.float64)[0]


def precision_check(T=1024, H=4, D=128):
    """End-to-end forward error against float64 for each solve-precision variant, on random and on nearly
    aligned keys (Gram entries near 1 inside a chunk: the case where the product-form inverse loses digits)."""
    from osdn_theory.kernels import chunk_osdn
    from osdn_theory.kernels.config import Launch, LaunchConfig

    out = []
    for case in ("random", "aligned"):
        x = _inputs(1, T, H, D, seed=7)
        if case == "aligned":
            g = torch.Generator(device="cuda").manual_seed(8)
            base = torch.randn(1, 1, H, D, device="cuda", generator=g)
            kk = base + 0.15 * torch.randn(1, T, H, D, device="cuda", generator=g)
            x["k"] = torch.nn.functional.normalize(kk, dim=-1).to(torch.bfloat16)
            x["beta"] = torch.full_like(x["beta"], 0.99)
        ref = _ref_forward(x)
        for cfg in [None] + VARIANTS["gram_solve"]:
            launch = None if cfg is None else Launch(gram_solve=LaunchConfig(**cfg))
            o = chunk_osdn(x["q"], x["k"], x["v"], x["beta"], x["d"], validate=False, launch=launch)[0]
            out.append({"case": case, "config": cfg or "default", "rel_err_vs_f64": _rel(o, ref)})
    return out


def fla_stages(x):
    """fla-core's forward stages for DeltaNet at the same shape (their first call autotunes; not timed)."""
    from fla.ops.common.chunk_delta_h import chunk_gated_delta_rule_fwd_h
    from fla.ops.common.chunk_o import chunk_fwd_o
    from fla.ops.common.chunk_scaled_dot_kkt import chunk_scaled_dot_kkt_fwd
    from fla.ops.delta_rule.wy_fast import recompute_w_u_fwd
    from fla.ops.utils.solve_tril import solve_tril

    k, v, q, b = x["k"], x["v"], x["q"], x["beta"]

    def kkt():
        return chunk_scaled_dot_kkt_fwd(
            k=k, beta=b, cu_seqlens=None, chunk_size=64, output_dtype=torch.float32
        )

    A = kkt()
    Ai = solve_tril(A=A, cu_seqlens=None, output_dtype=k.dtype)
    w, u = recompute_w_u_fwd(k=k, v=v, beta=b, A=Ai, cu_seqlens=None)
    h, vn, _ = chunk_gated_delta_rule_fwd_h(k=k, w=w, u=u)
    chunk_fwd_o(q=q, k=k, v=vn, h=h, scale=1.0)
    torch.cuda.synchronize()
    return {
        "kkt": _bench(kkt),
        "solve_tril": _bench(lambda: solve_tril(A=A, cu_seqlens=None, output_dtype=k.dtype)),
        "recompute_w_u": _bench(lambda: recompute_w_u_fwd(k=k, v=v, beta=b, A=Ai, cu_seqlens=None)),
        "fwd_h": _bench(lambda: chunk_gated_delta_rule_fwd_h(k=k, w=w, u=u)),
        "fwd_o": _bench(lambda: chunk_fwd_o(q=q, k=k, v=vn, h=h, scale=1.0)),
    }


def dscan_sweep(x):
    """The d rule alone (``d_ratio_scan``) for each scan chunk size and ``d_scan`` launch configuration, with
    the error of its bf16 output against the float64 scan of ``preconditioners.d_scan`` (same rounded keys)."""
    from osdn_theory import preconditioners as pre
    from osdn_theory.kernels import d_ratio_scan
    from osdn_theory.kernels.config import Launch, LaunchConfig

    k, b = x["k"], x["beta"]
    # the kernel's scan is affine (floored at read-out only): the float64 scan without a floor, then the floor
    ref = pre.d_scan(
        k.double(),
        b.double(),
        rule="ratio",
        step=pre.NormalizedStep(0.5),
        d_init=1.0,
        positivity="none",
        d_min=None,
    ).d.clamp_min(1e-4)
    rows = []
    for C in (16, 32, 64):
        for w in (None, 2, 4, 8):
            rec = {}
            launch = Launch(d_scan=LaunchConfig(num_warps=w), record=rec)

            def fn(C=C, launch=launch):
                return d_ratio_scan(
                    k, b, c=0.5, d_init=1.0, d_min=1e-4, chunk_size=C, validate=False, launch=launch
                )

            row = {"chunk": C, "d_scan_warps": w or "default"}
            try:
                row["rel_err_vs_f64"] = _rel(fn(), ref)
                row["ms"] = _bench(fn)
                row["regs_spills"] = rec["d_scan"]["regs_spills"]
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            rows.append(row)
    return rows


def _summary(res):
    lines = []
    for shape, r in res["shapes"].items():
        lines.append(f"## {shape}")
        if "fla" in r:
            lines.append("fla stages (ms): " + ", ".join(f"{n} {t:.3f}" for n, t in r["fla"].items()))
        for name, rows in r.get("stages", {}).items():
            ok = [x for x in rows if "ms" in x and x.get("rel_diff", 1.0) < 1e-2]
            best = min(ok, key=lambda x: x["ms"]) if ok else None
            lines.append(
                f"{name}: default {rows[0].get('ms', float('nan')):.3f} ms; best {best['ms']:.3f} ms at "
                f"{best['config']} (rel diff {best['rel_diff']:.1e}, regs/spills {best.get('regs_spills')}); "
                f"{sum('error' in x for x in rows)} variants failed"
                if best
                else f"{name}: no variant ran"
            )
        for d in r.get("d_scan", []):
            lines.append(
                f"d scan C={d['chunk']} warps={d['d_scan_warps']}: {d.get('ms')} ms, err {d.get('rel_err_vs_f64')}"
            )
    for p in res.get("precision", []):
        lines.append(f"precision {p['case']:8s} {p['config']}: {p['rel_err_vs_f64']:.2e}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, default=None, help="results JSON (default: results/tune_<card>_<UTC date>.json)"
    )
    ap.add_argument("--shapes", type=str, default=None, help="e.g. '4,4096,16,128;8,2048,16,64'")
    ap.add_argument("--stages", type=str, default=",".join(VARIANTS), help="comma-separated stage names")
    ap.add_argument(
        "--later-stages",
        type=str,
        default="state,dh,output",
        help="stages swept at the shapes after the first (the shape-dependent ones)",
    )
    ap.add_argument("--no-fla", action="store_true")
    ap.add_argument("--dscan", action="store_true", help="also sweep the d rule at the first shape")
    a = ap.parse_args()
    shapes, meta, a.out = start_gpu_run("tune_kernels", a.shapes, SHAPES, a.out, "tune")
    names = [n for n in a.stages.split(",") if n]
    res = {"meta": meta, "shapes": {}, "precision": []}

    def write():
        a.out.write_text(json.dumps(res, indent=1))

    if "gram_solve" in names:
        res["precision"] = precision_check()
        write()
    for i, shape in enumerate(shapes):
        if i == 1:
            names = [n for n in a.later_stages.split(",") if n]
        key = ",".join(map(str, shape))
        r = res["shapes"][key] = {"stages": {}}
        x = _inputs(*shape)
        if not a.no_fla:
            t0 = time.perf_counter()
            try:
                r["fla"] = fla_stages(x)
            except Exception:
                r["fla_error"] = traceback.format_exc()[-600:]
            r["fla_wall_s"] = time.perf_counter() - t0
            write()
        if i == 0 and a.dscan:
            r["d_scan"] = dscan_sweep(x)
            write()
        st = _Stages(x)
        for name in names:
            t0 = time.perf_counter()
            try:
                r["stages"][name] = sweep_stage(st, name)
            except RuntimeError as e:  # the CUDA context is gone: keep what was measured and stop
                r["stages"][name] = [{"config": "aborted", "error": str(e)[:2000]}]
                write()
                print(_summary(res), flush=True)
                raise SystemExit(f"tune_kernels: stopped at {key} {name}: CUDA context lost") from e
            r.setdefault("wall_s", {})[name] = time.perf_counter() - t0
            write()
            print(f"{key} {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(_summary(res), flush=True)


if __name__ == "__main__":
    main()
