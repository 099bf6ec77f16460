"""R-recall — recall residual ratio of OSDN vs DeltaNet on anisotropic MQAR (spec §9; a measurement).

On MQAR streams with anisotropic Gaussian keys (JRT-style repeated passes), R1 (stored-set residual ratio)
is measured for OSDN (ratio rule, normalized step), DeltaNet and RLS (the right-Newton reference) on the same
streams and seeds, and reported as "X% reduction" ``1 − R1_OSDN/R1_DeltaNet`` with its spread over seeds.
No pass/fail: the paper's recall gains are at scale and not claimed for this synthetic setting.
"""

from __future__ import annotations

import numpy as np

from ..comparators import rls
from ..metrics import excess_over_right_newton, percent_reduction, recall_accuracy, stored_set_residual_ratio
from ..preconditioners import NormalizedStep, osdn_adaptive
from ..recurrences import delta_rule_recurrent
from ..streams import MQARStream
from ._registry import Outcome, Size, claim


@claim(
    "R-recall",
    title="Recall residual ratio R1: OSDN vs DeltaNet (anisotropic MQAR)",
    statement="X% reduction = 1 − R1_OSDN / R1_DeltaNet on the same anisotropic MQAR streams and seeds",
    assumptions=["anisotropic Gaussian keys (condition 10)", "JRT repetition num_passes", "β = 1"],
    comparison="measurement",
    quick=dict(num_pairs=12, K=16, V=16, num_passes=2, condition=10.0, batch=4, seeds=3, c=0.5),
    full=dict(num_pairs=48, K=64, V=32, num_passes=2, condition=10.0, batch=8, seeds=8, c=0.5),
)
def r_recall(size: Size, seed: int) -> Outcome:
    red, r1o, r1d, r1r, acc_o, acc_d, r3 = [], [], [], [], [], [], []
    for i in range(size.seeds):
        st = MQARStream(
            num_pairs=size.num_pairs,
            K=size.K,
            V=size.V,
            key_dist="anisotropic",
            condition=size.condition,
            num_passes=size.num_passes,
            batch=size.batch,
        )
        d = st.build(seed * 1000 + i)
        res = osdn_adaptive(
            d.q, d.k, d.v, d.beta, rule="ratio", step=NormalizedStep(size.c), output_final_state=True
        )
        _, s_dn = delta_rule_recurrent(d.q, d.k, d.v, d.beta, output_final_state=True)
        _, s_rls = rls(d.q, d.k, d.v, output_final_state=True)
        a = float(stored_set_residual_ratio(res.final_state, d.stored_keys, d.stored_values, reduction="sum"))
        b = float(stored_set_residual_ratio(s_dn, d.stored_keys, d.stored_values, reduction="sum"))
        r = float(stored_set_residual_ratio(s_rls, d.stored_keys, d.stored_values, reduction="sum"))
        r1o.append(a)
        r1d.append(b)
        r1r.append(r)
        red.append(percent_reduction(a, b))
        r3.append(float(excess_over_right_newton(a, r)) if r < 1 else float("nan"))
        acc_o.append(
            float(recall_accuracy(res.final_state, d.query_keys, d.target_ids, d.codebook, reduction="mean"))
        )
        acc_d.append(float(recall_accuracy(s_dn, d.query_keys, d.target_ids, d.codebook, reduction="mean")))
    red_pct = 100 * np.asarray(red)
    return Outcome(
        measured=float(red_pct.mean()),
        evidence=dict(
            reduction_percent_mean=float(red_pct.mean()),
            reduction_percent_std=float(red_pct.std(ddof=1)) if len(red) > 1 else 0.0,
            reduction_percent_per_seed=red_pct.tolist(),
            R1_osdn=r1o,
            R1_deltanet=r1d,
            R1_rls=r1r,
            R3_osdn=r3,
            recall_accuracy_osdn=acc_o,
            recall_accuracy_deltanet=acc_d,
            stream_seeds=[seed * 1000 + i for i in range(size.seeds)],
            config=dict(size),
            osdn=f"ratio rule, NormalizedStep({size.c}), d_init = 1",
            dtype="float64",
        ),
    )
