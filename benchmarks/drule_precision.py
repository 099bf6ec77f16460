"""Precision of the d-rule path on a GPU (bf16 and fp32 against float64), on the inputs of the GPU d-rule test.

Prints the fraction of tokens where the clip binds, and the output and state errors with and without the clip.
Run from the repository root: ``python -m benchmarks.drule_precision``."""

import torch

import tests.test_kernels_gpu as T
from osdn_theory.kernels import DRule, chunk_osdn
from osdn_theory.recurrences import prepare_inputs, write_key
from osdn_theory.tolerances import rel_err

x = T.make(9, 2, 1000, 4, 128, 128, torch.bfloat16)
rule = DRule(c=0.5, d_init=1.0, d_min=1e-4, chunk_size=32)
d = rule.compute(x["k"], x["beta"])
xi = prepare_inputs(x["q"], x["k"], x["v"], x["beta"], d, s_max=0.9, dtype=torch.float64)
kt, s_eff, c = write_key(xi.k, xi.beta, xi.d, xi.s_max)
print(
    "clip active fraction",
    float((c < 1).double().mean()),
    "raw gain max",
    float((s_eff / c).max()),
    "median",
    float((s_eff / c).median()),
)
for smax in (0.9, None):
    o_ref, h_ref = T._ref(dict(x, d=d), ["d"], s_max=smax)
    for dt in (torch.bfloat16, torch.float32):
        xs = {n: t.to(dt) for n, t in x.items()}
        o, h = chunk_osdn(
            xs["q"], xs["k"], xs["v"], xs["beta"], d.to(dt), s_max=smax, output_final_state=True
        )
        print(
            "s_max",
            smax,
            dt,
            "out",
            rel_err(o, o_ref),
            "state",
            rel_err(h, h_ref),
            "|o_ref| max",
            float(o_ref.abs().max()),
        )
# the standard d-clip GPU case for comparison
names, kw = T.CASES["d-clip"]
xx = T.make(1, 2, 1000, 4, 128, 128, torch.bfloat16)
o, h = chunk_osdn(**T._pick(xx, names), **kw, output_final_state=True)
o_ref, h_ref = T._ref(xx, names, **kw)
print("standard d-clip case", rel_err(o, o_ref), rel_err(h, h_ref))
