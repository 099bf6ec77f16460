"""Numerical tolerances, stated once for the whole project.

Every comparison in tests, claims and benchmarks takes its tolerance from here, keyed by the dtype
of the computation being checked. The metric is the relative RMS error
``‖out − ref‖ / max(‖ref‖, floor)`` (see :func:`rel_err`), with ``ref`` always computed in float64.

| dtype    | relative tolerance | why                                                        |
|----------|--------------------|------------------------------------------------------------|
| float64  | 1e-10              | reference precision; algebraically equal forms agree to ~1e-13 |
| float32  | 1e-5               | IEEE fp32 accumulation over a few hundred tokens           |
| tf32     | 1e-3               | fp32 dots on tensor cores (10-bit mantissa inputs)         |
| float16  | 5e-3               | fp16 inputs, fp32 accumulation                             |
| bfloat16 | 1e-2               | bf16 inputs (8-bit mantissa), fp32 accumulation            |

Further named constants below, each with its reason: ``EXACT_FLOAT64`` (algebraically equal forms),
``STAT_Z`` (sample statistics), ``KERNEL_*`` (Triton kernel checks), ``NEGATIVE_CONTROL_GAP`` (absolute
gap a negative control must show), ``NEG_CONTROL_SEPARATION`` (factor over the float64 tolerance a negative
control must show), ``GRADCHECK_*`` (finite-difference gradient checks).
"""

from __future__ import annotations

import torch

RTOL: dict[torch.dtype | str, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    "tf32": 1e-3,
    torch.float16: 5e-3,
    torch.bfloat16: 1e-2,
}

#: Stricter bound for forms that are algebraically identical in float64 (recurrence vs chunk form).
EXACT_FLOAT64 = 1e-12

#: z-score for Monte Carlo and sample-statistics checks (sample covariance vs requested covariance,
#: expectations estimated from finite samples): a correct generator fails one such check with
#: probability below 1e-8, while a wrong covariance of the tested size fails it with certainty.
STAT_Z = 6.0

#: Absolute floor on the norm of the reference, so an all-zero reference does not divide by zero.
ABS_FLOOR = 1e-30


def rtol(dtype: torch.dtype | str) -> float:
    """Relative tolerance for results computed in ``dtype`` (see the module table)."""
    try:
        return RTOL[dtype]
    except KeyError:
        raise ValueError(f"rtol: no tolerance is stated for dtype {dtype!r}; known: {list(RTOL)}") from None


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative RMS error ``‖out − ref‖ / max(‖ref‖, ABS_FLOOR)``, computed in float64.

    NaN or inf anywhere in ``out`` gives ``inf`` so that it never passes a tolerance.
    """
    if out.shape != ref.shape:
        raise ValueError(f"rel_err: shapes differ, out {tuple(out.shape)} vs ref {tuple(ref.shape)}")
    o = out.detach().to(torch.float64).cpu()
    r = ref.detach().to(torch.float64).cpu()
    if not torch.isfinite(o).all():
        return float("inf")
    return float(torch.linalg.vector_norm(o - r) / max(float(torch.linalg.vector_norm(r)), ABS_FLOOR))


#: The Triton kernel under the interpreter in float64 against the float64 recurrence (chunked vs token order
#: of the same sums: agreement to ~1e-15 is seen; this leaves two orders of magnitude of room).
KERNEL_INTERP_FLOAT64 = 1e-12

#: Triton kernel on GPU, bfloat16 inputs, fp32 accumulation: outputs and final states vs float64.
KERNEL_BF16_OUT = 5e-3

#: Triton kernel on GPU, bfloat16 inputs: gradients vs float64 autograd.
KERNEL_BF16_GRAD = 1e-2

#: Smallest relative difference (:func:`rel_err`) that a negative control must show: a different algorithm,
#: objective or input changes the result by O(1), so 1e-3 is far above float64 round-off (~1e-15) and far
#: below the effects being controlled.
NEGATIVE_CONTROL_GAP = 1e-3

#: A negative control counts an effect as real only if it exceeds the float64 tolerance by this factor
#: (three orders of magnitude above round-off), e.g. the state dependence of the raw hypergradient (C5-neg-raw)
#: or the deviation of the spec's RLS leverage from the ridge minimiser (C8-neg-erratum).
NEG_CONTROL_SEPARATION = 1e3

#: ``torch.autograd.gradcheck`` on the Triton kernel in float64 (interpreter): central differences with step
#: ``GRADCHECK_EPS`` are exact to about ``eps² |f'''| + 1e-16 |f| / eps`` (~1e-10 for the O(1) outputs of the
#: tiny test case); the absolute and relative bounds leave four orders of magnitude above that and are
#: stricter than gradcheck's own defaults (1e-5, 1e-3).
GRADCHECK_EPS = 1e-6
GRADCHECK_ATOL = 1e-6
GRADCHECK_RTOL = 1e-5
