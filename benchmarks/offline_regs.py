"""Registers and spills of the Triton stages for an H100/H200 (sm_90a), read without a GPU.

Each kernel is compiled by ``triton.compile`` for ``GPUTarget("cuda", 90, 32)`` with the pointer and
``H, K, V`` arguments marked divisible by 16 (as a real launch specializes them), and the PTX is assembled by
the ``ptxas`` that ships inside Triton's package (``ptxas -v``). Without a GPU this catches what the
interpreter cannot: kernels that do not compile for the GPU (e.g. a module-level int read inside a kernel,
which must be a ``tl.constexpr``) and register spills (the value checks once made stage 1 spill 1.9 KB per
thread, which doubled the default call's time on an H200). Use the Triton version of the GPU machine to
trust the counts (they move between versions).

    python -m benchmarks.offline_regs [--only gram_solve,wy] [--dtype bf16] [--K 128]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path

# Compile for the GPU, not the interpreter. Only when run as a script: imported (by the tests), the module
# leaves the caller's environment alone, and the tests run the compilation in a subprocess without the variable.
if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402


def _ptxas() -> Path:
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


def resources(fn, args: dict, num_warps: int, num_stages: int = 1) -> tuple[int | None, int | None]:
    """``(registers, spill-store bytes)`` per thread of ``fn`` compiled with ``args``: a string is a runtime
    argument's Triton type (``"*bf16"``, ``"i32"``, ``"fp32"``), anything else a constexpr (use
    ``tl.constexpr("ieee")`` for a string constexpr)."""
    sig, const, attrs = {}, {}, {}
    for i, n in enumerate(fn.arg_names):
        v = args[n]
        if isinstance(v, str):
            sig[n] = v
            if v.startswith("*") or n in ("H", "K", "V"):
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[n] = "constexpr"
            const[(i,)] = v.value if isinstance(v, tl.constexpr) else v
    src = ASTSource(fn, sig, constexprs=const, attrs=attrs)
    c = triton.compile(
        src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps, num_stages=num_stages)
    )
    with tempfile.TemporaryDirectory() as d:
        ptx = Path(d) / "k.ptx"
        ptx.write_text(c.asm["ptx"])
        r = subprocess.run(
            [str(_ptxas()), "-arch=sm_90a", "-v", str(ptx), "-o", str(Path(d) / "k.cubin")],
            capture_output=True,
            text=True,
        )
    regs = re.search(r"Used (\d+) registers", r.stderr)
    spill = re.search(r"(\d+) bytes spill stores", r.stderr)
    return (int(regs.group(1)) if regs else None, int(spill.group(1)) if spill else None)


def cases(dt: str = "bf16", K: int = 128, C: int = 64):
    """``{label: (kernel, args, num_warps[, num_stages])}`` for every stage of the pipeline — the forward stages
    with and without the value checks, the backward stages, the d rule's kernels — at head dim ``K = V`` and
    chunk ``C`` (the d rule at its default scan chunk 32), with the GPU's launch rules."""
    from osdn_theory.kernels import d_scan, d_scan_bwd, stages

    P = lambda t: "*" + t  # noqa: E731
    f = "fp32"
    acc = dict(ACC=tl.float32, IEEE=dt == "fp32")
    bk = stages._block(K)
    out = {}
    for chk in (False, True):
        for gated in (False, True):
            out[f"gram_solve d gated={gated} check={chk}"] = (
                stages._gram_solve_kernel,
                dict(k=P(dt), d=P(dt), beta=P(dt), log_alpha=P(f), kt_out=P(dt), c_out=P(f), g_out=P(f),
                     ai_out=P(f), bounds=P("i32"), flag=P("i32"), H="i32", K="i32", s_max="fp32", C=C, BK=bk,
                     HAS_D=True, CLIP=False, GATED=gated, SOLVE=True, PREC=tl.constexpr("ieee"),
                     NEWTON=dt == "fp32", CHECK=chk, **acc),
                2,
            )  # fmt: skip
        out[f"wy d check={chk}"] = (
            stages._wy_kernel,
            dict(k=P(dt), v=P(dt), beta=P(dt), g=P(f), ai=P(f), w_out=P(dt), u_out=P(dt), bounds=P("i32"),
                 flag=P("i32"), d=P(dt), H="i32", K="i32", V="i32", C=C, BK=min(bk, 64), BV=min(bk, 64),
                 GATED=False, CHECK=chk, HAS_D=chk, **acc),
            4,
        )  # fmt: skip
        out[f"output check={chk}"] = (
            stages._output_kernel,
            dict(q=P(dt), kt=P(dt), vnew=P(dt), h=P(dt), g=P(f), o=P(dt), bounds=P("i32"), flag=P("i32"),
                 scale="fp32", H="i32", K="i32", V="i32", C=C, BK=bk, BV=min(bk, 64), GATED=False, CHECK=chk,
                 **acc),
            4,
        )  # fmt: skip
    a = dict(ACC=tl.float32)
    out["d_prep check"] = (
        d_scan._d_prep_kernel,
        dict(k=P(dt), beta=P(dt), uhat_out=P(dt), strength_out=P(dt), vals_out=P(dt), c_ptr=P(f), flag=P("i32"),
             R="i32", K="i32", BR=32, BK=bk, VP=16, CHECK=True, **a),
        4,
    )  # fmt: skip
    out["d_scan store_h"] = (
        d_scan._d_scan_kernel,
        dict(uhat=P(dt), w=P(dt), ut=P(dt), h0=P(f), d_out=P(dt), cu_seqlens=P("i32"), d_min_ptr=P(f),
             h_out=P(f), u_out=P(f), H="i32", K="i32", C=32, BK=bk, VP=16, STORE_H=True, **a),
        4,
    )  # fmt: skip
    bwd = dict(k=P(dt), beta=P(dt), gd=P(dt), h_raw=P(f), ai=P(f), bounds=P("i32"), c_ptr=P(f), d_min_ptr=P(f),
               H="i32", K="i32", C=32, BK=bk, **a)  # fmt: skip
    out["d_bwd_local"] = (d_scan_bwd._d_bwd_local_kernel, dict(bwd, p_out=P(f), g0_out=P(f)), 4)
    out["d_bwd_scan"] = (
        d_scan_bwd._d_bwd_scan_kernel,
        dict(k=P(dt), p=P(f), g0=P(f), lam_out=P(f), gh0_out=P(f), cu_seqlens=P("i32"), chunk_offsets=P("i32"),
             c_ptr=P(f), lam0=P(f), H="i32", K="i32", C=32, BK=bk, USE_LAM0=True, **a),
        4,
    )  # fmt: skip
    ieee = dict(IEEE=dt == "fp32")
    out["d_seg_map"] = (
        d_scan._d_seg_map_kernel,
        dict(uhat=P(dt), w=P(dt), ut=P(dt), seg_cu=P("i32"), m_out=P(f), r_out=P(f), H="i32", K="i32", C=32,
             BK=bk, BV=min(bk, 64), VP=16, **a, **ieee),
        8,
    )  # fmt: skip
    out["d_seg_carry"] = (
        d_scan._d_seg_carry_kernel,
        dict(m=P(f), r=P(f), h0=P(f), h_out=P(f), seg_offs=P("i32"), H="i32", K="i32", BK=bk, REVERSE=True, **a),
        8,
    )  # fmt: skip
    out["d_bwd_seg_map"] = (
        d_scan_bwd._d_bwd_seg_map_kernel,
        dict(k=P(dt), p=P(f), g0=P(f), seg_cu=P("i32"), chunk0=P("i32"), c_ptr=P(f), m_out=P(f), r_out=P(f),
             H="i32", K="i32", C=32, BK=bk, BV=min(bk, 64), **a, **ieee),
        8,
    )  # fmt: skip
    out["d_bwd_grads"] = (
        d_scan_bwd._d_bwd_grads_kernel,
        dict(bwd, ucoef=P(f), lam_in=P(f), gk_out=P(dt), gb_out=P(dt)),
        4,
    )
    # the sequential passes and the backward stages at their GPU launch rules for B·H = 64 (4, 4096, 16, 128)
    bv = stages._bv(K, 64, gpu=True)
    wide = dt == "fp32"
    out["state"] = (
        stages._state_kernel,
        dict(kt=P(dt), w=P(dt), u=P(dt), g=P(f), h0=P(f), h_out=P(dt), vnew_out=P(dt), ht_out=P(f),
             cu_seqlens=P("i32"), chunk_offsets=P("i32"), H="i32", K="i32", V="i32", C=C, BK=bk, BV=bv,
             GATED=False, USE_H0=True, STORE_HT=True, KSPLIT=False, **acc),
        4, 1 if wide else 3,
    )  # fmt: skip
    out["dv_local"] = (
        stages._dv_local_kernel,
        dict(q=P(dt), kt=P(dt), g=P(f), do=P(dt), dv_out=P(dt), bounds=P("i32"), scale="fp32", H="i32", K="i32",
             V="i32", C=C, BK=bk, BV=min(bk, 128), GATED=False, **acc),
        4,
    )  # fmt: skip
    out["dh"] = (
        stages._dh_kernel,
        dict(q=P(dt), kt=P(dt), w=P(dt), g=P(f), do=P(dt), dvl=P(dt), dht=P(f), dh_out=P(dt), du_out=P(dt),
             dh0_out=P(f), cu_seqlens=P("i32"), chunk_offsets=P("i32"), scale="fp32", H="i32", K="i32", V="i32",
             C=C, BK=bk, BV=bv, GATED=False, USE_DHT=True, STORE_DH0=True, **acc),
        8 if K > 64 and bv >= 32 else 4, 1 if wide else 3,
    )  # fmt: skip
    out["bwd_dqk"] = (
        stages._bwd_dqk_kernel,
        dict(q=P(dt), kt=P(dt), g=P(f), vnew=P(dt), h=P(dt), do=P(dt), dh=P(dt), du=P(dt), dq_out=P(dt),
             dkt_out=P(f), dw_out=P(dt), dg_out=P(f), bounds=P("i32"), scale="fp32", H="i32", K="i32", V="i32",
             C=C, BK=bk, BV=min(bk, 64), GATED=False, **acc),
        4 if K <= 64 else 8, 1 if wide else 2,
    )  # fmt: skip
    out["bwd_wy"] = (
        stages._bwd_wy_kernel,
        dict(k=P(dt), d=P(dt), c=P(f), kt=P(dt), v=P(dt), beta=P(dt), g=P(f), ai=P(f), dw=P(dt), du=P(dt),
             dkt=P(f), dg=P(f), dk_out=P(dt), dd_out=P(dt), dv_out=P(dt), db_out=P(f), dla_out=P(f),
             bounds=P("i32"), H="i32", K="i32", V="i32", C=C, BK=stages._bk_wy(K, gpu=True), BV=min(bk, 64),
             HAS_D=True, CLIP=False, GATED=False, **acc),
        4, 1 if wide else 2,
    )  # fmt: skip
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma-separated substrings of the case labels")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--K", type=int, default=128)
    a = ap.parse_args()
    if not _ptxas().exists():
        raise SystemExit(f"offline_regs: Triton's bundled ptxas was not found ({_ptxas().name})")
    print(f"triton {triton.__version__}, sm_90a, {a.dtype}, K = V = {a.K}")
    for label, (fn, args, warps, *nst) in cases(a.dtype, a.K).items():
        if a.only and not any(s in label for s in a.only.split(",")):
            continue
        regs, spill = resources(fn, args, warps, *nst)
        print(f"{label}: {regs} registers, {spill} bytes spill stores (num_warps {warps})", flush=True)


if __name__ == "__main__":
    main()
