"""Symbolic (sympy) checks of every algebraic identity of the OSDN theory, one module per identity.

Each ``c<N>_*.py`` module (named by its claim label) has a ``main() -> int`` that prints what it proved and returns 0, or prints
the failing identity and returns 1; ``python -m proofs_check`` runs them all and exits non-zero if any
fails; ``python -m proofs_check.c1_exact_quadratic`` runs one.
"""

from __future__ import annotations

import sympy as sp

__all__ = ["MODULES", "Checker", "sym_matrix", "sym_vector"]

#: The proof modules, in the order of the theory (claim label → module).
MODULES = {
    "C1": "c1_exact_quadratic",
    "C2": "c2_right_preconditioning",
    "C3": "c3_chunk_form",
    "C4": "c4_token_identity",
    "C4-weighted": "c4_weighted_norm_similarity",
    "C5": "c5_affine_update",
    "C5-normalized": "c5_normalized_step",
    "C6": "c6_fixed_point",
    "C8": "c8_rls_sherman_morrison",
}


def sym_matrix(name: str, rows: int, cols: int) -> sp.Matrix:
    """A ``rows × cols`` matrix of independent real symbols ``name_{i}{j}``."""
    return sp.Matrix(rows, cols, lambda i, j: sp.Symbol(f"{name}_{i}{j}", real=True))


def sym_vector(name: str, n: int, positive: bool = False) -> sp.Matrix:
    """An ``n × 1`` column of independent real (optionally positive) symbols ``name_i``."""
    return sp.Matrix(n, 1, lambda i, _: sp.Symbol(f"{name}_{i}", real=True, positive=positive or None))


class Checker:
    """Collects identity checks; each must simplify to zero. ``done()`` prints a summary, returns 0/1."""

    def __init__(self, title: str):
        self.title = title
        self.failures: list[str] = []
        self.proved: list[str] = []
        print(f"== {title}")

    def zero(self, what: str, expr) -> bool:
        """Record that ``expr`` (a scalar or a matrix) simplifies to exactly zero."""
        if isinstance(expr, sp.MatrixBase):
            ok = all(sp.simplify(sp.expand(e)) == 0 for e in expr)
        else:
            ok = sp.simplify(sp.expand(expr)) == 0
        return self._record(what, ok)

    def true(self, what: str, ok: bool) -> bool:
        """Record a boolean fact established symbolically by the caller."""
        return self._record(what, bool(ok))

    def _record(self, what: str, ok: bool) -> bool:
        (self.proved if ok else self.failures).append(what)
        print(f"  [{'proved' if ok else 'FAILED'}] {what}")
        return ok

    def done(self) -> int:
        if self.failures:
            print(f"FAILED: {len(self.failures)} of {len(self.failures) + len(self.proved)} identities")
            return 1
        print(f"OK: {len(self.proved)} identities proved")
        return 0
