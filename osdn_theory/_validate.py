"""Input validation shared by every public function.

Each check raises ``ValueError`` naming the argument, what was expected and what was received.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class ValueCheckError(ValueError):
    """A bad value (NaN/Inf, ``β ∉ (0, 1]``, ``d ≤ 0``, ...) found by the kernels' value checks
    (:func:`osdn_theory.kernels.chunk_osdn` with ``validate=True``/``"sync"``, :func:`~osdn_theory.kernels.check_values`).
    A ``ValueError``; its own class so that a training loop can tell a run whose weights went non-finite (a
    divergence) from a wrong argument. Defined here, outside the kernel package, so that catching it needs no
    Triton."""


def _desc(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}"
    if isinstance(x, np.ndarray):
        return f"ndarray of shape {x.shape}, dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"


def as_tensor(name: str, x: Any, *, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """Convert ``x`` (tensor, ndarray or nested list) to a floating tensor, or raise naming ``name``."""
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray | list | tuple):
        t = torch.as_tensor(np.asarray(x, dtype=np.float64))
    else:
        raise ValueError(f"{name}: expected a torch.Tensor or numpy array, got {_desc(x)}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name}: expected a floating dtype {FLOAT_DTYPES}, got {_desc(t)}")
    if dtype is not None or device is not None:
        t = t.to(dtype=dtype or t.dtype, device=device or t.device)
    return t


def _axis_names(layout: str) -> list[str]:
    """Axis names of a layout string such as ``"[B, T, H, K] (same as k)"`` (``[]`` if it names none)."""
    if "[" not in layout or "]" not in layout:
        return []
    return [a.strip() for a in layout[layout.index("[") + 1 : layout.index("]")].split(",")]


def check_shape(name: str, t: torch.Tensor, shape: Sequence[int | None], layout: str = "") -> None:
    """Check ``t.shape`` against ``shape`` (``None`` = any size). ``layout`` names the axes, e.g. ``[B, T, H, K]``.

    An axis the layout names ``K`` (key features) must have at least one entry: with ``K = 0`` every
    reference would divide by zero (``K ** -0.5``, ``1/‖k‖²``) or return an empty answer without a word.
    """
    ok = t.ndim == len(shape) and all(s is None or s == n for s, n in zip(shape, t.shape, strict=True))
    if not ok:
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        lay = f" {layout}" if layout else ""
        raise ValueError(f"{name}: expected shape {want}{lay}, got {_desc(t)}")
    axes = _axis_names(layout)
    if len(axes) == t.ndim and any(a == "K" and n == 0 for a, n in zip(axes, t.shape, strict=True)):
        raise ValueError(f"{name}: expected at least one key feature (K >= 1) in {layout}, got {_desc(t)}")


def check_features(name: str, t: torch.Tensor, axis: int = -1) -> None:
    """Check the key-feature axis ``axis`` of ``t`` has ``K >= 1`` entries."""
    if t.ndim == 0 or t.shape[axis] == 0:
        raise ValueError(f"{name}: expected at least one key feature (K >= 1) on axis {axis}, got {_desc(t)}")


def check_finite(name: str, t: torch.Tensor) -> None:
    """Check every entry of ``t`` (any shape) is finite."""
    if not bool(torch.isfinite(t).all()):
        n = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name}: expected finite values, got {n} NaN/inf entries in {_desc(t)}")


def check_range(
    name: str,
    t: torch.Tensor,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """Check every entry of ``t`` lies in the interval (``lo_open``/``hi_open`` choose open ends)."""
    if t.numel() == 0:
        return
    mn_t, mx_t = torch.aminmax(
        t.detach()
    )  # one pass; NaN propagates, so finiteness of both ends ⇔ all finite
    mn, mx = float(mn_t), float(mx_t)
    if not (math.isfinite(mn) and math.isfinite(mx)):
        check_finite(name, t)
    bad = (lo is not None and (mn <= lo if lo_open else mn < lo)) or (
        hi is not None and (mx >= hi if hi_open else mx > hi)
    )
    if bad:
        interval = f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name}: expected values in {interval}, got min {mn:.6g}, max {mx:.6g}")


def check_scalar(
    name: str,
    x: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
) -> float:
    """Validate a Python scalar and return it (as float, or int when ``integer``; an integer field refuses
    floats, ``256.0`` included)."""
    if isinstance(x, bool) or not isinstance(x, int | float | np.integer | np.floating):
        raise ValueError(f"{name}: expected a {'integer' if integer else 'real number'}, got {_desc(x)}")
    if integer and not isinstance(x, int | np.integer):
        # a float, even 256.0, is refused: configs keep the value they were given, and a float count
        # fails later (range(), tensor shapes) far from the field that caused it
        raise ValueError(f"{name}: expected an integer, got {_desc(x)}")
    # integers stay exact (a float round trip would merge e.g. the seeds 2**60 and 2**60 + 1)
    v = int(x) if isinstance(x, int | np.integer) else float(x)
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {x!r}")
    bad = (lo is not None and (v <= lo if lo_open else v < lo)) or (
        hi is not None and (v >= hi if hi_open else v > hi)
    )
    if bad:
        interval = f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name}: expected a value in {interval}, got {x!r}")
    return int(v) if integer else float(v)


def check_bool(name: str, x: Any) -> bool:
    """Check ``x`` is a Python ``bool`` (not merely truthy) and return it."""
    if not isinstance(x, bool):
        raise ValueError(f"{name}: expected a bool, got {_desc(x)}")
    return x


def check_same(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """Check ``t`` has the same dtype and device as ``ref``."""
    if t.dtype != ref.dtype:
        raise ValueError(f"{name}: expected dtype {ref.dtype} (same as {ref_name}), got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name}: expected device {ref.device} (same as {ref_name}), got {t.device}")


def broadcast(name: str, t: torch.Tensor, shape: Sequence[int], layout: str) -> torch.Tensor:
    """``t`` broadcast to ``shape`` (a view), or a ``ValueError`` naming ``name`` and the expected layout."""
    try:
        return torch.broadcast_to(t, tuple(shape))
    except RuntimeError:
        raise ValueError(
            f"{name}: expected a shape that broadcasts to {layout} = {list(shape)}, got {tuple(t.shape)}"
        ) from None


def check_choice(name: str, x: Any, choices: Sequence[Any]) -> Any:
    """Check ``x`` is one of ``choices`` and return it."""
    try:
        ok = any(x is c or (isinstance(x, type(c)) and x == c) for c in choices)
    except (TypeError, ValueError, RuntimeError):  # arrays and tensors have no single truth value
        ok = False
    if not ok:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {x!r}")
    return x


def keys_and_beta(
    k: Any, beta: Any, *, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate keys ``k: [B, T, H, K]`` (``T, K ≥ 1``, finite) and write strengths ``beta: [B, T, H]`` in
    (0, 1], cast both to ``dtype`` (``None`` keeps each one's dtype, which must then agree), and return them.
    """
    k = as_tensor("k", k, dtype=dtype)
    check_shape("k", k, [None, None, None, None], "[B, T, H, K]")
    B, T, H, K = k.shape
    if T == 0:
        raise ValueError("k: expected at least one token (T >= 1), got T = 0")
    if K == 0:
        raise ValueError("k: expected at least one feature (K >= 1), got K = 0")
    check_range("k", k)
    beta = as_tensor("beta", beta, dtype=dtype)
    check_shape("beta", beta, [B, T, H], "[B, T, H]")
    check_same("beta", beta, "k", k)
    check_range("beta", beta, 0.0, 1.0, lo_open=True)
    return k, beta
