"""Time the value check of ``d`` as a pass of its own (``kernels/d_check.py``, the default for K > 64) and its
variants on one GPU (bf16, median of ``do_bench``), against a copy of the same tensor.

Issue #10's item 1 asks the default call to cost at most 1.05× the unchecked one; at K = 128 the pass is most of
the difference, so how close it gets to the card's bandwidth matters. Per ``d`` of the shape ``(B, T, H, K)``:

- ``shipped``: :func:`osdn_theory.kernels.d_check.check_d` as the default call runs it;
- ``or B8192 w8``: the first version (8192 entries a program, a custom OR reduction);
- ``max B{block} w{warps}``: one block per program, ``tl.max`` reduction, blocks 4096 / 8192 / 16384, 4 or 8
  warps;
- ``loop P{programs} B{block}``: a fixed number of programs (a few per multiprocessor), each looping over its
  blocks and keeping the running maximum in registers, one reduction at the end (never timed yet);
- ``copy``: ``dst.copy_(d)`` (reads and writes ``d``: twice the bytes the check reads).

Each variant must flag a NaN and a 0 planted in ``d`` (checked after the timings). One JSON file and a markdown
table with the card, versions and date.

    python -m benchmarks.bench_d_check [--out FILE] [--shapes "4,4096,16,128;8,2048,16,64"]
"""

from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.language as tl

from benchmarks.bench_kernels import _bench, start_gpu_run
from osdn_theory.kernels._common import BAD_D, _flag, _or
from osdn_theory.kernels.d_check import check_d

SHAPES = [(4, 4096, 16, 128), (8, 2048, 16, 64), (1, 65536, 16, 128)]


@triton.jit
def _bad(x, m):
    return tl.where(m & ~((x > 0) & (x < float("inf"))), BAD_D, 0)


@triton.jit
def _one_block_kernel(d, flag, n, BLOCK: tl.constexpr, USE_MAX: tl.constexpr):
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    bad = _bad(tl.load(d + o, mask=m, other=1.0), m)
    if USE_MAX:
        _flag(flag, tl.max(bad, 0))
    else:
        _flag(flag, tl.reduce(bad, 0, _or))


@triton.jit
def _loop_kernel(d, flag, n, BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    step = tl.num_programs(0).to(tl.int64) * BLOCK
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for s in range(start, n, step):
        o = s + tl.arange(0, BLOCK)
        m = o < n
        acc = tl.maximum(acc, _bad(tl.load(d + o, mask=m, other=1.0), m))
    _flag(flag, tl.max(acc, 0))


def _variants(d, flag, sms: int):
    n = d.numel()
    out = {"shipped": lambda: check_d(d, flag)}
    out["or B8192 w8"] = lambda: _one_block_kernel[(triton.cdiv(n, 8192),)](
        d, flag, n, BLOCK=8192, USE_MAX=False, num_warps=8
    )
    for block in (4096, 8192, 16384):
        for w in (4, 8):
            out[f"max B{block} w{w}"] = _one_block(d, flag, n, block, w)
    for per_sm in (2, 4, 8):
        for block in (2048, 4096):
            out[f"loop P{per_sm * sms} B{block}"] = _looped(d, flag, n, per_sm * sms, block)
    return out


def _one_block(d, flag, n, block, warps):
    return lambda: _one_block_kernel[(triton.cdiv(n, block),)](
        d, flag, n, BLOCK=block, USE_MAX=True, num_warps=warps
    )


def _looped(d, flag, n, programs, block):
    return lambda: _loop_kernel[(programs,)](d, flag, n, BLOCK=block, num_warps=8)


def bench_shape(B, T, H, K, device: str = "cuda") -> dict:
    """One row: every variant timed on a bf16 ``d`` of the shape (float32 off the GPU, where the interpreter has
    no bfloat16), then checked on a planted NaN and 0."""
    cuda = device == "cuda"
    g = torch.Generator(device=device).manual_seed(0)
    d = torch.exp(0.3 * torch.randn(B, T, H, K, generator=g, device=device))
    d = d.to(torch.bfloat16) if cuda else d
    flag = torch.zeros(1, dtype=torch.int32, device=device)
    row = {"shape": [B, T, H, K], "MB": d.numel() * d.element_size() / 1e6, "ms": {}, "flags_bad": {}}
    sms = torch.cuda.get_device_properties(d.device).multi_processor_count if cuda else 1
    variants = _variants(d, flag, sms)
    for fn in variants.values():  # compile everything first
        fn()
    if cuda:
        torch.cuda.synchronize()
    for name, fn in variants.items():
        row["ms"][name] = _bench(fn)
    dst = torch.empty_like(d)
    row["ms"]["copy"] = _bench(lambda: dst.copy_(d))
    if flag.item():
        raise SystemExit(f"bench_d_check: a good d was flagged at {row['shape']}")
    for bad in (float("nan"), 0.0):
        d.view(-1)[d.numel() // 2 + 1] = bad
        for name, fn in variants.items():
            flag.zero_()
            fn()
            row["flags_bad"].setdefault(name, True)
            row["flags_bad"][name] &= int(flag.item()) == int(BAD_D.value)
        d.view(-1)[d.numel() // 2 + 1] = 1.0
    return row


def _table(meta, rows) -> str:
    names = list(rows[0]["ms"])
    head = ["| variant | " + " | ".join(f"{tuple(r['shape'])} ({r['MB']:.0f} MB)" for r in rows) + " |"]
    head.append("|---" * (len(rows) + 1) + "|")
    body = [
        f"| {n} | "
        + " | ".join(
            f"{r['ms'][n]:.4f}" + ("" if r["flags_bad"].get(n, True) else " (MISSED a bad d)") for r in rows
        )
        + " |"
        for n in names
    ]
    return "\n".join(
        [f"{meta}", "", "ms, median of do_bench (the L2 cache is flushed before each call)", "", *head, *body]
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--shapes", default=None, help='e.g. "4,4096,16,128;8,2048,16,64"')
    a = ap.parse_args()
    shapes, meta, out = start_gpu_run("bench_d_check", a.shapes, SHAPES, a.out, "d_check_pass")
    rows = []
    for shape in shapes:
        rows.append(bench_shape(*shape))
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))  # a run cut short keeps its shapes
        out.with_suffix(".md").write_text(_table(meta, rows) + "\n")
        print(_table(meta, rows), flush=True)


if __name__ == "__main__":
    main()
