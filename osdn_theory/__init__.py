"""osdn_theory: verify the theory of OSDN (Online Scaled DeltaNet) and run its synthetic experiments.

Float64 reference solvers: :func:`osdn_recurrent` (token by token) and :func:`osdn_chunkwise` (UT/WY chunk
form). The online preconditioner: :func:`d_scan` (state-free rules) and :func:`osdn_adaptive` (all rules,
jointly with the memory). Submodules: ``schedules``, ``apf``, ``comparators``, ``streams``, ``metrics``,
``claims`` (the C1–C9 registry behind ``osdn verify``), ``sweeps``, ``kernels`` (Triton; import it after
setting ``TRITON_INTERPRET=1`` to run on CPU). The mathematical contract is ``docs/theory.md``. One extension
point, :func:`register` (:mod:`osdn_theory.registry`), adds step and feedback rules, APF priors and rates, streams
and sweep methods (``docs/extending.md``).
"""

from . import apf, comparators, metrics, registry, schedules, streams
from .chunkwise import osdn_chunkwise
from .preconditioners import (
    AdaGradStep,
    NormalizedStep,
    ScheduledStep,
    d_scan,
    osdn_adaptive,
    ratio_scan_as_delta_rule,
)
from .recurrences import Diagnostics, delta_rule_recurrent, osdn_recurrent, prepare_inputs, write_key
from .registry import register
from .tolerances import rel_err, rtol

__version__ = "0.1.0"

__all__ = [
    "AdaGradStep",
    "Diagnostics",
    "NormalizedStep",
    "ScheduledStep",
    "apf",
    "comparators",
    "d_scan",
    "delta_rule_recurrent",
    "metrics",
    "osdn_adaptive",
    "osdn_chunkwise",
    "osdn_recurrent",
    "prepare_inputs",
    "ratio_scan_as_delta_rule",
    "register",
    "registry",
    "rel_err",
    "rtol",
    "schedules",
    "streams",
    "write_key",
    "__version__",
]
