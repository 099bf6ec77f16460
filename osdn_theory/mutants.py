"""Mutation suite: realistic planted bugs, applied at runtime, that the claims registry must detect.

Each :class:`Mutant` is a named bug with a one-line description, the claims expected to catch it
(``targets``: labels, or ``C7-neg*`` for a control and its variants) and a ``patch`` function that
replaces library code for the duration of ``with mutant.applied(): ...``. Patches act on the module attribute
the code actually looks up: a function imported by name into other modules (``from ..metrics import
super_geometric_test``) is replaced in every loaded ``osdn_theory`` module that holds it, and inner helpers
(``_write_key``, ``_state_free_grad``, ``_chunk_factors``, …) are replaced in their defining module, where
the library calls them by name. On exit every attribute is restored, also when the body raises.

A mutant that no claim can detect carries ``unkillable``: the written reason. :func:`kill_matrix` runs the
claims with and without each mutant; a claim *kills* a mutant when it passes without the mutant and FAILs
with it. An ERROR (the claim raised under the mutant; for a measurement, which has no verdict, the only way
to notice) counts as a kill only for a mutant whose ``error_ok`` says why the exception is a legitimate
detection (e.g. the library's own divergence check). ``osdn verify --mutants`` prints the matrix and writes
``mutants.json`` and ``mutants.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "MUTANTS",
    "Mutant",
    "MutantRow",
    "Patcher",
    "get_mutant",
    "kill_matrix",
    "mark",
    "matrix_markdown",
    "mutant_names",
    "target_labels",
]

_PKG = "osdn_theory"


class Patcher:
    """Records ``setattr`` replacements and undoes them in reverse order (:meth:`restore`)."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []

    def setattr(self, obj: Any, name: str, value: Any) -> None:
        """Replace ``obj.name`` by ``value`` (the attribute must exist)."""
        if not hasattr(obj, name):
            raise AttributeError(f"{obj!r} has no attribute {name!r} to patch")
        self._saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def everywhere(self, module: str, name: str, make: Callable[[Callable], Callable]) -> Callable:
        """Replace ``module.name`` by ``make(original)`` in its module and in every loaded ``osdn_theory``
        module that imported it by name; returns the original."""
        mod = sys.modules[module]
        orig = getattr(mod, name)
        new = make(orig)
        for mname, m in list(sys.modules.items()):
            if m is None or not (mname == _PKG or mname.startswith(_PKG + ".")):
                continue
            if getattr(m, name, None) is orig:
                self.setattr(m, name, new)
        return orig

    def restore(self) -> None:
        while self._saved:
            obj, name, value = self._saved.pop()
            setattr(obj, name, value)


@dataclass(frozen=True)
class Mutant:
    """A planted bug: ``patch(p: Patcher)`` installs it; ``targets`` are the claims expected to FAIL.

    ``unkillable`` is the written reason why no claim can catch the bug (then ``targets`` is empty).
    ``error_ok`` is the reason why an ERROR verdict (an exception raised by the library's own checks under
    the bug) is a legitimate detection for this mutant; without it only a FAIL verdict counts in the tests.
    Targets are claim labels, or ``PREFIX*`` for every label with that prefix (:func:`target_labels`).
    """

    name: str
    description: str
    targets: tuple[str, ...]
    patch: Callable[[Patcher], None]
    unkillable: str | None = None
    error_ok: str | None = None

    @contextmanager
    def applied(self) -> Iterator[Mutant]:
        """Context manager: the bug is installed inside the block and removed on exit."""
        _load_library()
        p = Patcher()
        try:
            self.patch(p)
            yield self
        finally:
            p.restore()


def _load_library() -> None:
    """Import every module a claim looks code up in, so that name-imported copies exist before patching."""
    from . import chunkwise, comparators, metrics, osgm, preconditioners, recurrences  # noqa: F401
    from .claims._registry import registry

    registry()


# ---------------------------------------------------------------------------------------------------------
# The planted bugs
# ---------------------------------------------------------------------------------------------------------


def _wrap_grad(change: Callable) -> Callable[[Patcher], None]:
    """Patch ``preconditioners._state_free_grad`` (the state-free d-update's gradient and curvature)."""

    def patch(p: Patcher) -> None:
        from . import preconditioners as pc

        orig = pc._state_free_grad
        p.setattr(
            pc,
            "_state_free_grad",
            functools.wraps(orig)(lambda rule, u, beta, d: change(orig, rule, u, beta, d)),
        )

    return patch


def _d_update_sign(orig, rule, u, beta, d):
    g, L, s, r, f = orig(rule, u, beta, d)
    return -g, L, s, r, f  # d ← d + η g: ascends the feedback


def _u_abs_k(orig, rule, u, beta, d):
    return orig(rule, u.sqrt(), beta, d)  # u = |k| instead of k ⊙ k


def _curvature_no_2(orig, rule, u, beta, d):
    g, L, s, r, f = orig(rule, u, beta, d)
    return g, (L / 2.0 if rule == "ratio" else L), s, r, f  # L = β²‖u‖² instead of 2β²‖u‖²


def _write_key_patch(make: Callable[[Callable], Callable]) -> Callable[[Patcher], None]:
    def patch(p: Patcher) -> None:
        p.everywhere(f"{_PKG}.recurrences", "_write_key", make)

    return patch


def _dropped_clip(orig):
    @functools.wraps(orig)
    def write_key(k, beta, d, s_max):
        return orig(k, beta, d, None)  # the safeguard s_max is never applied

    return write_key


#: "Overshoot only when s > 1.9": the write key is scaled by OVERSHOOT on tokens whose write gain exceeds
#: OVERSHOOT_FROM (a bug that hides from every test whose gains stay below 1.9).
OVERSHOOT, OVERSHOOT_FROM = 1.06, 1.9


def _overshoot(orig):
    @functools.wraps(orig)
    def write_key(k, beta, d, s_max):
        kt, s, c = orig(k, beta, d, s_max)
        f = torch.where(s > OVERSHOOT_FROM, OVERSHOOT, 1.0).to(s.dtype)
        return kt * f[..., None], s * f, c  # key and its reported gain agree: only a bound can see it

    return write_key


def _prepare_patch(change: Callable, *, everywhere: bool) -> Callable[[Patcher], None]:
    """Patch ``recurrences.prepare_inputs`` (everywhere it is imported, or only in the recurrence)."""

    def make(orig):
        return functools.wraps(orig)(lambda *a, **kw: change(orig(*a, **kw)))

    def patch(p: Patcher) -> None:
        if everywhere:
            p.everywhere(f"{_PKG}.recurrences", "prepare_inputs", make)
        else:
            from . import recurrences

            p.setattr(recurrences, "prepare_inputs", make(recurrences.prepare_inputs))

    return patch


def _beta_098(x):
    return dataclasses.replace(x, beta=0.98 * x.beta)


def _read_with_write_key(x):
    # The recurrence reads (residual e_t = S k_t − v_t, erase term k kᵀ) with k̃ = d ⊙ k instead of k:
    # S_t = S(I − β k̃ k̃ᵀ) + β v k̃ᵀ. Only the token-by-token reference is affected, not the chunk form.
    if x.d is None:
        return x
    return dataclasses.replace(x, k=x.d * x.k, d=None)


def _chunk_state_key_k(p: Patcher) -> None:
    from . import chunkwise

    orig = chunkwise._state_keys
    p.setattr(chunkwise, "_state_keys", functools.wraps(orig)(lambda k, kt, dte: orig(k, k, dte)))


def _chunk_gram_kk(p: Patcher) -> None:
    from . import chunkwise

    orig = chunkwise._chunk_factors
    p.setattr(
        chunkwise,
        "_chunk_factors",
        functools.wraps(orig)(lambda k, kt, beta, g, decay: orig(k, k, beta, g, decay)),
    )


def _gated_chunk_decay(p: Patcher) -> None:
    from . import chunkwise

    orig = chunkwise._decay_matrix
    # Γ_{r,i} = exp(g_i − g_r) instead of exp(g_r − g_i): the in-chunk decay with its sign flipped.
    p.setattr(chunkwise, "_decay_matrix", functools.wraps(orig)(lambda g: orig(-g)))


def _rls_gain_no_1pa(p: Patcher) -> None:
    from . import comparators

    p.setattr(comparators, "_rls_write_key", lambda Pk, a: Pk)  # k̃ = (γH)⁻¹k, without / (1 + a)


def _leverage_no_gamma(p: Patcher) -> None:
    def make(orig):
        @functools.wraps(orig)
        def rls(*args, **kwargs):
            kwargs["variant"] = "erratum"  # a_t = k_tᵀ H_{t−1}⁻¹ k_t: the γ of (γ H_{t−1})⁻¹ forgotten
            return orig(*args, **kwargs)

        return rls

    p.everywhere(f"{_PKG}.comparators", "rls", make)


def _adagrad_sign(patcher: Patcher) -> None:
    from . import osgm

    def adagrad_step(p, g, acc, eta, eps):
        acc = acc + g * g
        return p + eta * g / (acc + eps) ** 0.5, acc  # p + η g/√G: ascends the feedback

    patcher.setattr(osgm, "adagrad_step", adagrad_step)


def _osgm_no_learning(patcher: Patcher) -> None:
    from . import osgm

    def adagrad_step(p, g, acc, eta, eps):
        return p, acc + g * g  # the accumulator grows, p never moves

    patcher.setattr(osgm, "adagrad_step", adagrad_step)


def _no_null_step(p: Patcher) -> None:
    from . import osgm

    p.setattr(osgm, "accept_step", lambda r: True)


def _fixed_point_k1(p: Patcher) -> None:
    def make(orig):
        @functools.wraps(orig)
        def fixed_point_d(a, beta):
            d = orig(a, beta)
            K = d.shape[-1]
            return d * (K + 2) / (K + 1)  # a⁻¹ / (β (K + 1))

        return fixed_point_d

    p.everywhere(f"{_PKG}.comparators", "fixed_point_d", make)


def _tail_dropped(p: Patcher) -> None:
    def make(orig):
        @functools.wraps(orig)
        def super_geometric_test(*args, **kw):
            res = orig(*args, **kw)
            verdict = res.decay_ok or res.reached_floor  # condition (b) G_J ≤ G_mid / tail_factor dropped
            reason = "decay" if res.decay_ok else ("floor" if res.reached_floor else "none")
            return dataclasses.replace(res, super_geometric=bool(verdict), reason=reason)

        return super_geometric_test

    p.everywhere(f"{_PKG}.metrics", "super_geometric_test", make)


def _r1_not_squared(p: Patcher) -> None:
    def make(orig):
        @functools.wraps(orig)
        def stored_set_residual_ratio(state, k, v, mask=None, *, reduction="none"):
            M = torch.as_tensor(state, dtype=torch.float64)
            k = torch.as_tensor(k, dtype=torch.float64)
            v = torch.as_tensor(v, dtype=torch.float64)
            w = torch.ones(k.shape[:3], dtype=torch.float64) if mask is None else mask.to(torch.float64)
            res = torch.einsum("bnhk,bhkv->bnhv", k, M) - v
            num = (res.norm(dim=-1) * w).sum(1)  # Σ‖r_i‖ instead of Σ‖r_i‖²
            den = (v.norm(dim=-1) * w).sum(1)
            if reduction == "none":
                return num / den
            if reduction == "mean":
                return (num / den).mean()
            return num.sum() / den.sum()

        return stored_set_residual_ratio

    p.everywhere(f"{_PKG}.metrics", "stored_set_residual_ratio", make)


_DIVERGED = (
    "the d-update runs away from the fixed point; the library's divergence check (non-finite d) raising is "
    "a detection by the library itself"
)

MUTANTS: dict[str, Mutant] = {
    m.name: m
    for m in [
        Mutant(
            "d-update-sign",
            "state-free d-update steps up the feedback gradient (d ← d + η g)",
            ("C5", "C5-normalized", "C6", "C7"),
            _wrap_grad(_d_update_sign),
            error_ok=_DIVERGED,
        ),
        Mutant(
            "dropped-clip",
            "the write-gain clip s_max is never applied to the write key",
            ("C4-bound", "C4-neg-jacobi"),
            _write_key_patch(_dropped_clip),
        ),
        Mutant(
            "chunk-state-key-k",
            "chunk form updates the state with K instead of K̃ = d ⊙ K",
            ("C3",),
            _chunk_state_key_k,
        ),
        Mutant(
            "rls-gain-no-1+a",
            "RLS write key (γH)⁻¹k without the division by 1 + a_t",
            ("C8",),
            _rls_gain_no_1pa,
        ),
        Mutant(
            "leverage-no-gamma",
            "RLS leverage a_t = kᵀH_{t−1}⁻¹k without γ (the spec erratum) in the exact variant",
            ("C8",),
            _leverage_no_gamma,
        ),
        Mutant(
            "chunk-gram-KK",
            "chunk form's intra-chunk Gram K Kᵀ instead of K K̃ᵀ",
            ("C3",),
            _chunk_gram_kk,
        ),
        Mutant(
            "u-abs-k",
            "d-update feature weights u = |k| instead of k ⊙ k",
            ("C5", "C5-normalized", "C6"),
            _wrap_grad(_u_abs_k),
        ),
        Mutant(
            "osgm-adagrad-sign",
            "OSGM batch solver's AdaGrad step ascends the ratio feedback (p + η g/√G)",
            ("C7-batch",),
            _adagrad_sign,
        ),
        Mutant(
            "osgm-no-learning",
            "OSGM batch solver never updates p (AdaGrad step returns p)",
            ("C7-batch",),
            _osgm_no_learning,
        ),
        Mutant(
            "no-null-step",
            "OSGM batch solver accepts every trial step, also those that increase F",
            ("C7-neg*",),  # SG-batch itself does not slow down; the controls' runs stop converging
            _no_null_step,
        ),
        Mutant(
            "fixed-point-K+1",
            "ratio rule's fixed point d* = a⁻¹/(β(K + 1)) instead of (K + 2)",
            ("C6",),
            _fixed_point_k1,
        ),
        Mutant(
            "curvature-no-2",
            "ratio rule's curvature L = β²‖u‖² without its factor 2 (normalized step twice too long)",
            ("C5-normalized",),
            _wrap_grad(_curvature_no_2),
        ),
        Mutant(
            "gated-chunk-decay",
            "chunk form's in-chunk decay Γ = exp(g_i − g_r) with the sign flipped",
            ("C3",),
            _gated_chunk_decay,
        ),
        Mutant(
            "read-with-write-key",
            "recurrence reads the memory (residual e = S k − v) with the write key k̃ instead of k",
            ("C2", "C3"),
            _prepare_patch(_read_with_write_key, everywhere=False),
        ),
        Mutant(
            "beta-x0.98",
            "every solver writes with 0.98 β instead of β",
            ("C2",),
            _prepare_patch(_beta_098, everywhere=True),
        ),
        Mutant(
            "overshoot-s>1.9",
            f"write key × {OVERSHOOT} on tokens whose write gain s > {OVERSHOOT_FROM}",
            ("C4-bound",),
            _write_key_patch(_overshoot),
        ),
        Mutant(
            "tail-condition-dropped",
            "super-geometric test without its tail condition (b) G_J ≤ G_mid / tail_factor",
            ("C7-neg*",),
            _tail_dropped,
        ),
        Mutant(
            "r1-not-squared",
            "recall residual ratio R1 with norms instead of squared norms",
            (),
            _r1_not_squared,
            unkillable=(
                "R1 enters only R-recall, a measurement without a verdict by design (the paper's recall gains "
                "are at scale, not claimed here); the bug shows as a changed R-recall number, which the matrix "
                "reports, and tests/test_metrics.py pins R1 on hand-computed values"
            ),
        ),
    ]
}


def mutant_names() -> list[str]:
    """The registered mutant names, in registry order."""
    return list(MUTANTS)


def get_mutant(name: str) -> Mutant:
    """The mutant registered under ``name``; unknown names raise ``ValueError`` listing the valid ones."""
    if name not in MUTANTS:
        raise ValueError(f"mutant: unknown mutant {name!r}; valid names are {', '.join(MUTANTS)}")
    return MUTANTS[name]


# ---------------------------------------------------------------------------------------------------------
# The kill matrix
# ---------------------------------------------------------------------------------------------------------


@dataclass
class MutantRow:
    """One mutant's row of the kill matrix: the verdict of every claim run under it."""

    name: str
    description: str
    targets: list[str]
    unkillable: str | None
    verdicts: dict[str, str]
    killed_by: list[str]
    errored_by: list[str] = field(default_factory=list)
    error_ok: str | None = None
    errors: dict[str, str] = field(default_factory=dict)
    measured_changes: dict[str, list[float | None]] = field(default_factory=dict)

    @property
    def killed(self) -> bool:
        """A claim that passes without the mutant FAILs with it, or ERRORs with it when the mutant says why an
        exception is a legitimate detection (``error_ok``)."""
        return bool(self.killed_by) or (bool(self.errored_by) and self.error_ok is not None)

    @property
    def tested(self) -> bool:
        """Whether at least one of the declared target claims was run (``--only`` may leave them all out)."""
        return any(lab in self.verdicts for lab in self.targets)

    @property
    def survived_unexpectedly(self) -> bool:
        """A mutant expected to be killable that no claim killed although a target claim was run."""
        return self.unkillable is None and not self.killed and self.tested

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["killed"] = self.killed
        d["tested"] = self.tested
        d["survived_unexpectedly"] = self.survived_unexpectedly
        return d


def target_labels(m: Mutant) -> list[str]:
    """The registered claim labels a mutant targets: each target is a label, or ``PREFIX*`` for every label
    starting with ``PREFIX`` (``C7-neg*``: the control and its variants). Unknown labels raise ``ValueError``."""
    from .claims._registry import labels

    known = labels()
    out: list[str] = []
    for t in m.targets:
        hits = (
            [lab for lab in known if lab.startswith(t[:-1])] if t.endswith("*") else [t] if t in known else []
        )
        if not hits:
            raise ValueError(f"targets: mutant {m.name!r} targets {t!r}, which matches no registered claim")
        out.extend(h for h in hits if h not in out)
    return out


def kill_matrix(
    mutants: Iterable[str] | None = None,
    only: Iterable[str] | str | None = None,
    *,
    budget: str = "quick",
    seed: int = 0,
    targets_only: bool = False,
    progress: Callable[[str, str], None] | None = None,
) -> tuple[dict[str, str], list[MutantRow], dict[str, Any]]:
    """Run the claims without and with each mutant.

    Args:
        mutants: mutant names (default: all).
        only: claim labels (as ``osdn verify --only``); default all claims.
        budget, seed: as ``osdn verify``.
        targets_only: run each mutant only against its declared target claims (fast).
        progress: called with ``(mutant name or "baseline", claim label)`` before each claim run.

    Returns:
        ``(baseline, rows, baseline_measured)``: ``baseline`` maps each claim run to its verdict without any
        mutant; ``rows`` are the :class:`MutantRow` s; ``baseline_measured`` maps labels to measured values.
    """
    from .claims._registry import run_claim, select

    _load_library()
    names = list(MUTANTS) if mutants is None else list(mutants)
    ms = [get_mutant(n) for n in names]
    specs = select(only)
    if targets_only:
        wanted = {lab for m in ms for lab in target_labels(m)}
        specs = [s for s in specs if s.label in wanted]
    baseline: dict[str, str] = {}
    base_measured: dict[str, Any] = {}
    for s in specs:
        if progress is not None:
            progress("baseline", s.label)
        r = run_claim(s, budget=budget, seed=seed, catch=True)
        baseline[s.label], base_measured[s.label] = r.verdict, r.measured
    rows = []
    for m in ms:
        run = [s for s in specs if not targets_only or s.label in target_labels(m)]
        verdicts, errors, changes = {}, {}, {}
        with m.applied():
            for s in run:
                if progress is not None:
                    progress(m.name, s.label)
                r = run_claim(s, budget=budget, seed=seed, catch=True)
                verdicts[s.label] = r.verdict
                if r.error:
                    errors[s.label] = r.error
                if r.verdict == "measured" and not _same(r.measured, base_measured[s.label]):
                    changes[s.label] = [base_measured[s.label], r.measured]
        killed_by = [lab for lab, v in verdicts.items() if v == "FAIL" and baseline[lab] == "PASS"]
        errored_by = [
            lab for lab, v in verdicts.items() if v == "ERROR" and baseline[lab] in ("PASS", "measured")
        ]
        rows.append(
            MutantRow(
                name=m.name,
                description=m.description,
                targets=target_labels(m),
                unkillable=m.unkillable,
                verdicts=verdicts,
                killed_by=killed_by,
                errored_by=errored_by,
                error_ok=m.error_ok,
                errors=errors,
                measured_changes=changes,
            )
        )
    return baseline, rows, base_measured


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


_MARK = {"PASS": "·", "FAIL": "F", "ERROR": "E", "measured": "m"}


def mark(verdict: str | None, changed: bool = False) -> str:
    """One-character cell of the kill matrix: ``·`` pass, ``F`` fail, ``E`` error, ``m``/``m*`` measurement
    (unchanged/changed), blank when not run."""
    if verdict is None:
        return ""
    return _MARK.get(verdict, "?") + ("*" if changed else "")


def matrix_markdown(baseline: dict[str, str], rows: list[MutantRow], *, budget: str, seed: int) -> str:
    """The kill matrix as a markdown document."""
    labels = list(baseline)
    out = [
        "# Mutation suite: kill matrix",
        "",
        f"Budget {budget}, seed {seed}. Rows: planted bugs (`osdn_theory.mutants`); columns: claims. "
        "`F` FAIL, `E` ERROR, `·` PASS, `m` measurement (`m*`: value changed), blank: not run. A claim kills a "
        "mutant when it passes without the mutant and FAILs with it; an ERROR (an exception under the mutant) "
        "counts only for a mutant that states why it is a legitimate detection.",
        "",
        "| mutant | " + " | ".join(labels) + " | killed |",
        "|---|" + "---|" * len(labels) + "---|",
        "| (no mutant) | " + " | ".join(mark(baseline[lab]) for lab in labels) + " | |",
    ]
    for r in rows:
        cells = [mark(r.verdicts.get(lab), lab in r.measured_changes) for lab in labels]
        status = (
            "yes"
            if r.killed
            else "no (unkillable)"
            if r.unkillable
            else "**NO — survived**"
            if r.tested
            else "not tested (no target run)"
        )
        out.append(f"| `{r.name}` | " + " | ".join(cells) + f" | {status} |")
    out += ["", "## Mutants", ""]
    for r in rows:
        line = f"- `{r.name}`: {r.description}. Targets: {', '.join(r.targets) or '—'}. "
        line += f"Killed by: {', '.join(r.killed_by) or 'none'}."
        if r.errored_by:
            why = f" (counts: {r.error_ok})" if r.error_ok else " (not counted as a kill)"
            line += f" ERROR under it: {', '.join(r.errored_by)}{why}."
        if r.unkillable:
            line += f" Not killable: {r.unkillable}."
        for lab, (a, b) in r.measured_changes.items():
            line += f" {lab} measured {a} → {b}."
        for lab, e in r.errors.items():
            line += f" {lab} error: `{e}`."
        out.append(line)
    return "\n".join(out) + "\n"
