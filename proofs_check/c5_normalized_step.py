"""C5: the normalized step η = c/(2β²‖u‖²) gives 1 − s_new = (1 − c)(1 − s_old) on the current key."""

from __future__ import annotations

import sys

import sympy as sp

from proofs_check import Checker, sym_vector


def main() -> int:
    c = Checker("normalized-step identity of the ratio rule")
    K = 3
    k = sym_vector("k", K)
    d = sym_vector("d", K, positive=True)
    beta, cc = sp.symbols("beta c", positive=True)
    u = sp.Matrix(K, 1, lambda i, _: k[i] ** 2)
    uu = (u.T * u)[0, 0]
    eta = cc / (2 * beta**2 * uu)
    s_old = beta * (u.T * d)[0, 0]
    d_new = (sp.eye(K) - 2 * eta * beta**2 * u * u.T) * d + 2 * eta * beta * u
    s_new = beta * (u.T * d_new)[0, 0]
    c.zero("1 − s_new = (1 − c)(1 − s_old)", sp.cancel((1 - s_new) - (1 - cc) * (1 - s_old)))
    c.zero("c = 1 makes the current write exact: s_new = 1", sp.cancel(s_new.subs(cc, 1) - 1))
    return c.done()


if __name__ == "__main__":
    sys.exit(main())
