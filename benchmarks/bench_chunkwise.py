"""Float64 CPU benchmark: chunkwise UT/WY reference vs the token-by-token recurrence.

Usage: ``python -m benchmarks.bench_chunkwise [--quick] [--out benchmarks/results]``.
Prints a table and writes ``chunkwise_cpu.json`` with machine, versions and date. Target (foundation issue):
chunkwise ≥ 10× faster than the token loop at B·H = 64, T = 4096, K = V = 64.

Operation count (per token and head): the token loop does two matrix–vector products with the K×V state and
one rank-1 update, ≈ 4KV flops; the chunk form does the same ≈ 3KV state work as matrix–matrix products plus
≈ 5CK in-chunk work. At K = V = 64 the chunk form does *no fewer* operations, so its gain on a CPU is only
the better efficiency of matrix–matrix products and fewer Python-level steps. The token loop, made of many
small multi-threaded operations, is also very sensitive to other processes on the machine (minima are
printed next to medians for that reason).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from osdn_theory import osdn_chunkwise, osdn_recurrent, rel_err

from ._env import environment


def _time(fn, repeats: int) -> tuple[float, float]:
    """(median, min) wall time over ``repeats`` runs after one warm-up run."""
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes only (smoke run)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats: expected a positive integer, got {args.repeats}")
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads: expected a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    shapes = (
        [(4, 1024, 16, 64, 64, 64)]
        if args.quick
        else [
            (4, 1024, 16, 64, 64, 64),
            (4, 4096, 16, 64, 64, 16),  # the target shape: B·H = 64, T = 4096, K = V = 64
            (4, 4096, 16, 64, 64, 32),
            (4, 4096, 16, 64, 64, 64),
            (4, 4096, 16, 64, 64, 128),
        ]
    )
    rows = []
    for B, T, H, K, V, C in shapes:
        g = torch.Generator().manual_seed(0)
        k = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g, dtype=torch.float64), dim=-1)
        q = torch.randn(B, T, H, K, generator=g, dtype=torch.float64)
        v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
        beta = torch.rand(B, T, H, generator=g, dtype=torch.float64)
        d = torch.exp(0.3 * torch.randn(B, T, H, K, generator=g, dtype=torch.float64))
        ref = osdn_recurrent(q, k, v, beta, d)[0]
        out = osdn_chunkwise(q, k, v, beta, d, chunk_size=C)[0]
        args_ = (q, k, v, beta, d)
        (t_loop, t_loop_min) = _time(lambda a=args_: osdn_recurrent(*a), args.repeats)
        (t_chunk, t_chunk_min) = _time(lambda a=args_, c=C: osdn_chunkwise(*a, chunk_size=c), args.repeats)
        rows.append(
            dict(
                B=B,
                T=T,
                H=H,
                K=K,
                V=V,
                chunk=C,
                recurrent_s=t_loop,
                chunkwise_s=t_chunk,
                recurrent_min_s=t_loop_min,
                chunkwise_min_s=t_chunk_min,
                speedup=t_loop / t_chunk,
                speedup_of_min=t_loop_min / t_chunk_min,
                rel_err=rel_err(out, ref),
            )
        )
        r = rows[-1]
        print(
            f"B{B} T{T} H{H} K{K} V{V} C{C}: recurrent {t_loop:.3f} s, chunkwise {t_chunk:.3f} s, "
            f"speed-up {r['speedup']:.1f}x (of minima {r['speedup_of_min']:.1f}x), rel err {r['rel_err']:.1e}",
            flush=True,
        )
    print(f"\nmedian of {args.repeats} runs (min in brackets), torch threads = {torch.get_num_threads()}")
    print(
        "| B | T | H | K | V | chunk | recurrent (s) | chunkwise (s) | speed-up | speed-up of minima | rel err |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['B']} | {r['T']} | {r['H']} | {r['K']} | {r['V']} | {r['chunk']} | {r['recurrent_s']:.3f} "
            f"({r['recurrent_min_s']:.3f}) | {r['chunkwise_s']:.3f} ({r['chunkwise_min_s']:.3f}) | "
            f"{r['speedup']:.1f}x | {r['speedup_of_min']:.1f}x | {r['rel_err']:.1e} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("chunkwise_cpu_quick.json" if args.quick else "chunkwise_cpu.json")
    path.write_text(json.dumps({"environment": environment(), "dtype": "float64", "rows": rows}, indent=2))
    print(f"\nwrote {path}")
    return rows


if __name__ == "__main__":
    main()
