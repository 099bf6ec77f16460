"""osdn_theory: verify the theory of OSDN (Online Scaled DeltaNet) and run its synthetic experiments.

The float64 reference solvers live in :mod:`osdn_theory.recurrences` and :mod:`osdn_theory.chunkwise`;
the mathematical contract is ``docs/theory.md``.
"""

from .chunkwise import osdn_chunkwise
from .recurrences import Diagnostics, delta_rule_recurrent, osdn_recurrent, prepare_inputs, write_key
from .tolerances import rel_err, rtol

__version__ = "0.1.0"

__all__ = [
    "Diagnostics",
    "delta_rule_recurrent",
    "osdn_chunkwise",
    "osdn_recurrent",
    "prepare_inputs",
    "write_key",
    "rel_err",
    "rtol",
    "__version__",
]
