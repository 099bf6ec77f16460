"""Verdict invariance: the claims' verdicts over many seeds, to compare across BLAS modes and input perturbations.

A verdict must be a property of the mathematics, not of rounding: for every seed, every claim's verdict must be
the same whatever code path the BLAS takes (``MKL_CBWR`` unset, ``COMPATIBLE``, ``AVX2``) and under a 1e-15
relative perturbation of every input draw. ``MKL_CBWR`` is read once when MKL starts, so each mode needs its
own process::

    MKL_CBWR=COMPATIBLE python -m osdn_theory.claims.invariance --seeds 0-19 --out verdicts_compatible.json
    python -m osdn_theory.claims.invariance --seeds 0-19 --perturb 1e-15 --out verdicts_perturbed.json

Each run writes ``{"verdicts": {label: [verdict per seed]}, "rounding_fingerprint": …, …}``; the fingerprint is a
hash of a few float64 products, which differs between BLAS modes that round differently (so a comparison shows
whether the modes were really different). :func:`compare` lists every disagreement.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from .._validate import check_choice, check_scalar
from ._registry import BUDGETS, run_claim, select

__all__ = ["compare", "parse_seeds", "rounding_fingerprint", "verdicts"]


def rounding_fingerprint() -> str:
    """MD5 of float64 matrix products whose last bits depend on the BLAS code path."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 300, generator=g, dtype=torch.float64)
    b = torch.randn(64, 16, generator=g, dtype=torch.float64)
    return hashlib.md5((a @ a).numpy().tobytes() + (b.T @ b).numpy().tobytes()).hexdigest()


def parse_seeds(text: str) -> list[int]:
    """``"0-19"`` or ``"0,3,7"`` (or a mix, ``"0-4,9"``) → a list of non-negative seeds."""
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            elif part:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"seeds: expected ranges like '0-19' or '0,3,7', got {text!r}") from None
    if not out or min(out) < 0:
        raise ValueError(f"seeds: expected at least one non-negative seed, got {text!r}")
    return out


def verdicts(
    seeds: Iterable[int], *, budget: str = "quick", perturb: float = 0.0, only=None, on_seed=None
) -> dict[str, list[str]]:
    """``{label: [verdict for each seed]}`` of every selected pass/fail claim (measurements are skipped).

    ``on_seed(seed, table)`` is called after each seed with the table so far (the CLI saves it, so an
    interrupted run keeps every finished seed)."""
    check_choice("budget", budget, BUDGETS)
    perturb = check_scalar("perturb", perturb, 0.0, 1e-3)
    seeds = [int(check_scalar("seeds", s, 0, None, integer=True)) for s in seeds]
    specs = [s for s in select(only) if s.comparison != "measurement"]
    out: dict[str, list[str]] = {s.label: [] for s in specs}
    for seed in seeds:
        for spec in specs:
            r = run_claim(spec, budget=budget, seed=seed, catch=True, perturb=perturb)
            out[spec.label].append(r.verdict if r.error is None else f"ERROR: {r.error}")
        if on_seed is not None:
            on_seed(seed, out)
    return out


def compare(runs: Mapping[str, Mapping[str, list[str]]]) -> list[str]:
    """Disagreements between named verdict tables (``{run name: {label: [verdicts]}}``), one line each."""
    names = list(runs)
    if len(names) < 2:
        raise ValueError(f"runs: expected at least two verdict tables to compare, got {len(names)}")
    ref = runs[names[0]]
    problems = []
    for name in names[1:]:
        other = runs[name]
        if set(other) != set(ref):
            problems.append(f"{name}: claims {sorted(set(other) ^ set(ref))} differ from {names[0]}")
        for label in sorted(set(ref) & set(other)):
            for i, (a, b) in enumerate(zip(ref[label], other[label], strict=True)):
                if a != b:
                    problems.append(f"{label} seed index {i}: {names[0]} {a} vs {name} {b}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m osdn_theory.claims.invariance", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--seeds", default="0-19", help="seeds, e.g. 0-19 or 0,3,7 (default 0-19)")
    ap.add_argument("--budget", default="quick", choices=BUDGETS)
    ap.add_argument("--perturb", type=float, default=0.0, help="relative perturbation of every input draw")
    ap.add_argument("--only", default=None, help="comma-separated claim labels (default: all)")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    a = ap.parse_args(argv)
    try:
        seeds = parse_seeds(a.seeds)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done: list[int] = []

    def save(seed: int, table: dict) -> None:
        done.append(seed)
        doc = dict(
            verdicts=table,
            seeds=list(done),
            complete=len(done) == len(seeds),
            budget=a.budget,
            perturb=a.perturb,
            mkl_cbwr=os.environ.get("MKL_CBWR"),
            rounding_fingerprint=rounding_fingerprint(),
            torch=torch.__version__,
        )
        tmp = a.out.with_name(a.out.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(a.out)  # atomic: the file always holds every finished seed

    try:
        verdicts(seeds, budget=a.budget, perturb=a.perturb, only=a.only, on_seed=save)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {a.out} holds the {len(done)} finished seed(s)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
