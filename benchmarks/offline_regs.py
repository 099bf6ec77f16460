"""Registers, stack frame and spills of every Triton kernel that a call launches, for an H100/H200 (sm_90a),
read **without a GPU** (an offline tuning aid; not a timing).

The public calls run on CPU tensors of the requested shape with Triton's launch replaced by a recorder
(:func:`capture`), so every kernel is captured with exactly the arguments, constants and launch options
(``num_warps``, ``num_stages``) that the call would use on a GPU — the launchers' own GPU rules, with no copy
of them here to drift. Each captured kernel is compiled by ``triton.compile`` for ``GPUTarget("cuda", 90,
32)`` (pointers and multiples of 16 marked divisible by 16, as a real launch specializes them) and assembled
by the ``ptxas`` inside Triton's package (``ptxas -v``).

Without a GPU this catches what the interpreter cannot: kernels that do not compile for the GPU, and register
spills. Two cases it found: the value checks once made stage 1 spill 1.9 KB per thread (which doubled the
default call's time on an H200), and float32 inputs (IEEE dots, lowered to FMA loops) made ptxas fall back
to 32 registers with a 5–21 KB stack frame per thread in most stages under the 16-bit launch rules (one such
kernel took 1.6 ms per call in the recall lab's training on an H100). A GPU run's ``Launch(record={})``
reports ``(registers, n_spills)`` with ``n_spills`` = stack frame / 4. Triton 3.6.0 here reproduced every
number an H100 recorded on 2026-12-05 (registers and stack frame). Use the Triton version of the GPU
machine to trust the counts (they move between versions).

    python -m benchmarks.offline_regs [--shape 4,4096,16,128] [--dtype bfloat16] [--backward] [--gated]
        [--d-rule {none,sequential,segments}] [--unchecked] [--override bwd_wy:num_warps=8,BV=32] [--out F]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

# Compile for the GPU, not the interpreter. Only when run as a script: imported (by the tests), the module
# leaves the caller's environment alone, and the tests run the compilation in a subprocess without the variable.
if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from osdn_theory.kernels.config import D_CHECKS  # noqa: E402

_TYPES = {
    torch.float32: "fp32",
    torch.float64: "fp64",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.int8: "i8",
    torch.bool: "i1",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _ptxas() -> Path:
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@contextlib.contextmanager
def _cpu_calls():
    """Let the public calls take CPU tensors outside the interpreter (their device check is the only thing in
    the way; nothing is launched while :func:`capture` records)."""
    from osdn_theory.kernels import _checks, chunk, drule

    orig = _checks.check_keys

    def check_keys(k):
        if k.device.type == "cpu":
            return k
        return orig(k)

    mods = (chunk, drule)
    saved = [m.check_keys for m in mods]
    for m in mods:
        m.check_keys = check_keys
    try:
        yield
    finally:
        for m, f in zip(mods, saved, strict=True):
            m.check_keys = f


def capture(run) -> list[tuple]:
    """``[(kernel, {argument: value}, {launch option: value})]`` of the kernels that ``run()`` launches, in order;
    nothing is launched."""
    calls = []

    def record(self, *args, grid=None, warmup=False, **kwargs):
        opts = {k: kwargs.pop(k) for k in ("num_warps", "num_stages", "num_ctas") if k in kwargs}
        bound = dict(zip(self.arg_names, args, strict=False))
        bound.update(kwargs)
        calls.append((self, bound, opts))

    orig = triton.runtime.jit.JITFunction.run
    triton.runtime.jit.JITFunction.run = record
    try:
        with _cpu_calls():
            run()
    finally:
        triton.runtime.jit.JITFunction.run = orig
    return calls


def _source(fn, bound) -> ASTSource:
    sig, consts, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        if p.name not in bound:  # a parameter left at its default
            if not p.is_constexpr:
                raise ValueError(f"{fn.__name__}: argument {p.name!r} was not recorded")
            sig[p.name], consts[p.name] = "constexpr", p.default
            continue
        v = bound[p.name]
        if p.is_constexpr or v is None:
            sig[p.name], consts[p.name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[p.name] = "*" + _TYPES[v.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, bool):
            sig[p.name] = "i1"
        elif isinstance(v, int):
            sig[p.name] = "i64" if abs(v) >= 2**31 else "i32"
            if v and v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            sig[p.name] = "fp32"
        else:
            raise ValueError(f"{fn.__name__}: cannot type argument {p.name!r} = {v!r}")
    return ASTSource(fn, sig, constexprs=consts, attrs=attrs)


def resources(fn, bound: dict, opts: dict, arch: int = 90) -> dict:
    """Compile one captured kernel for ``sm_{arch}a``: ``{"kernel", "num_warps", "num_stages", "regs",
    "stack_frame", "spill_stores"}`` (bytes per thread)."""
    ck = triton.compile(_source(fn, bound), target=GPUTarget("cuda", arch, 32), options=dict(opts))
    with tempfile.TemporaryDirectory() as d:
        ptx = Path(d) / "k.ptx"
        ptx.write_text(ck.asm["ptx"])
        err = subprocess.run(
            [str(_ptxas()), f"-arch=sm_{arch}a", "-v", str(ptx), "-o", str(Path(d) / "k.cubin")],
            capture_output=True,
            text=True,
            check=True,
        ).stderr

    def num(pattern):
        m = re.search(pattern, err)
        return int(m.group(1)) if m else None

    return {
        "kernel": fn.__name__,
        "num_warps": opts.get("num_warps"),
        "num_stages": opts.get("num_stages"),
        "regs": num(r"Used (\d+) registers"),
        "stack_frame": num(r"(\d+) bytes stack frame"),
        "spill_stores": num(r"(\d+) bytes spill stores"),
    }


def call_kernels(
    B=4, T=4096, H=16, K=128, dtype=torch.bfloat16, *, backward=False, gated=False, d_rule="none",
    validate=True, launch=None, chunk_size=64,
):  # fmt: skip
    """The kernels of one ``chunk_osdn`` call (``d`` given, or computed by ``DRule`` with ``d_rule`` =
    ``"sequential"``/``"segments"``; ``gated``: with ``alpha``), and of its backward, recorded on CPU tensors."""
    from osdn_theory.kernels import DRule, chunk_osdn

    z = lambda *s: torch.zeros(*s, dtype=dtype)  # noqa: E731
    q, k, v = z(B, T, H, K), z(B, T, H, K), z(B, T, H, K)
    beta = torch.full((B, T, H), 0.5, dtype=dtype)
    leaves = [q, k, v, beta]
    d = alpha = rule = None
    if d_rule == "none":
        d = torch.ones(B, T, H, K, dtype=dtype)
        leaves.append(d)
    else:
        rule = DRule(segment_chunks="auto" if d_rule == "segments" else None)
    if gated:
        alpha = torch.full((B, T, H), 0.9, dtype=dtype)
        leaves.append(alpha)
    for x in leaves:
        x.requires_grad_(backward)

    def run():
        o, _ = chunk_osdn(
            q,
            k,
            v,
            beta,
            d,
            alpha=alpha,
            d_rule=rule,
            validate=validate,
            launch=launch,
            chunk_size=chunk_size,
        )
        if backward:
            o.backward(torch.zeros_like(o))

    return capture(run)


def table(calls, arch: int = 90) -> list[dict]:
    """:func:`resources` of each distinct captured kernel (same kernel and constants compiled once)."""
    rows, seen = [], set()
    for fn, bound, opts in calls:
        key = (
            fn.__name__,
            repr(sorted((k, str(v)) for k, v in bound.items() if not isinstance(v, torch.Tensor))),
        )
        if key not in seen:
            seen.add(key)
            rows.append(resources(fn, bound, opts, arch))
    return rows


def _launch(items, d_check="tile", rule_readout="fused"):
    import dataclasses

    from osdn_theory.kernels.config import DEFAULT_LAUNCH

    launch = dataclasses.replace(DEFAULT_LAUNCH, d_check=d_check, rule_readout=rule_readout)
    for item in items or []:
        try:
            stage, kv = item.split(":", 1)
            cfg = {}
            for pair in kv.split(","):
                key, val = (s.strip() for s in pair.split("="))
                cfg[key] = int(val) if val.isdigit() else {"true": True, "false": False}.get(val.lower(), val)
            launch = launch.with_stage(stage, cfg)
        except ValueError as e:
            raise SystemExit(
                f"offline_regs: --override expects STAGE:key=value[,key=value] ({e}), got {item!r}"
            ) from None
    return launch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="4,4096,16,128", help="B,T,H,K (V = K); default 4,4096,16,128")
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    ap.add_argument("--backward", action="store_true", help="also the backward's kernels")
    ap.add_argument("--gated", action="store_true", help="with alpha (gated OSDN)")
    ap.add_argument("--d-rule", default="none", choices=["none", "sequential", "segments"])
    ap.add_argument("--unchecked", action="store_true", help="validate=False (no value checks)")
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--override", action="append", help="STAGE:key=value,...  e.g. bwd_wy:num_warps=8,BV=32")
    ap.add_argument("--d-check", default="tile", choices=list(D_CHECKS), help="Launch.d_check")
    ap.add_argument(
        "--rule-readout", default="fused", choices=["fused", "separate"], help="Launch.rule_readout"
    )
    ap.add_argument("--out", default=None, help="JSON file for the table")
    a = ap.parse_args(argv)
    if not _ptxas().exists():
        raise SystemExit(f"offline_regs: Triton's bundled ptxas was not found ({_ptxas()})")
    try:
        B, T, H, K = (int(x) for x in a.shape.split(","))
    except ValueError:
        raise SystemExit(f"offline_regs: --shape expects four integers B,T,H,K, got {a.shape!r}") from None
    calls = call_kernels(
        B, T, H, K, DTYPES[a.dtype], backward=a.backward, gated=a.gated, d_rule=a.d_rule,
        validate=not a.unchecked, launch=_launch(a.override, a.d_check, a.rule_readout),
        chunk_size=a.chunk_size,
    )  # fmt: skip
    print(f"triton {triton.__version__}, sm_90a, {a.dtype}, B,T,H,K = {B},{T},{H},{K}")
    rows = table(calls)
    for r in rows:
        print(
            f"{r['kernel']:<26} warps {r['num_warps'] or '-':>2}  stages {r['num_stages'] or '-':>2}  "
            f"registers {r['regs']:>3}  stack frame {r['stack_frame']:>6} B  spill stores {r['spill_stores']:>6} B"
        )
    if a.out:
        meta = {"triton": triton.__version__, "arch": "sm_90a", "shape": [B, T, H, K], "dtype": a.dtype}
        Path(a.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
