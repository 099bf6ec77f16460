"""Example sweep in Python form: every non-stationary stream family against three APF schedules.

Run:  osdn sweep sweeps/shift_families.py --out results/shift_families --workers 2
A Python sweep file defines a dict named SWEEP with the same structure as a TOML sweep file.
DeltaNet without the s_max clip diverges on the key-norm-shift stream (s = β‖k‖² > 2): its 4 runs are
recorded with status "diverged" (R1 > 1e6) and marked as such by `osdn plot`.
"""

K = 8
JACOBI = {
    "name": "running_jacobi",
    "c": 1 / (K + 2),
    "ema": 0.95,
}  # c = 1/(β(K+2)) with β = 1: d* of claim C6
BASE = {"name": "osdn", "step": {"name": "normalized", "c": 0.1}, "s_max": 1.5}
SPIKE = {"name": "spike_trigger", "fast": 0.8, "slow": 0.99, "tau": 3.0, "warmup": 64}

SWEEP = {
    "name": "shift_families",
    "seeds": {"start": 0, "count": 4},
    "metrics": {"window": 32, "profile_before": 32, "profile_after": 192},
    "stream": [
        {"family": "piecewise", "T": 1024, "K": K, "V": 4, "segment_len": 256, "condition": 100.0},
        {
            "family": "drift",
            "T": 1024,
            "K": K,
            "V": 4,
            "period": 1024,
            "segment_len": 256,
            "condition": 100.0,
        },
        {
            "family": "key_norm_shift",
            "T": 1024,
            "K": K,
            "V": 4,
            "segment_len": 256,
            "scales": [1.0, 3.0, 0.3, 1.0],
        },
        {"family": "teacher_switch", "T": 1024, "K": K, "V": 4, "segment_len": 256},
    ],
    "method": [
        {"name": "deltanet"},
        {
            "name": "deltanet",
            "s_max": 1.5,
        },  # key-norm shifts push DeltaNet's s = β‖k‖² above 2 without the clip
        BASE,
        dict(BASE, apf={"prior": JACOBI, "rate": {"name": "constant_forgetting", "lam": 0.1}}),
        dict(
            BASE,
            apf={
                "prior": JACOBI,
                "rate": {"name": "decay_after_trigger", "lam0": 1.0, "half_life": 256.0, "trigger": SPIKE},
            },
        ),
    ],
}
