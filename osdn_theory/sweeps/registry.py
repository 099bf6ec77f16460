"""Names a sweep file may use: stream families and methods, each turned into a validated object.

Stream entries are ``{family = "<name>", <config fields>...}``; the fields are those of the stream config
class in :mod:`osdn_theory.streams` (its ``from_dict``), e.g. ``{family = "piecewise", T = 512, K = 8}``.

Method entries are ``{name = "<method>", ...}``:

- ``deltanet``: ``d ≡ 1``. Optional ``s_max``.
- ``osdn``: the state-free d-scan of :func:`osdn_theory.preconditioners.d_scan`, then the chunk form.
  Keys: ``rule`` (``"ratio"``/``"hyper"``), ``step`` (a step-rule dictionary, e.g.
  ``{name = "normalized", c = 0.5}``), ``d_init``, ``d_min``, ``apf`` (an APF dictionary, e.g.
  ``{prior = {name = "ones"}, rate = {name = "constant_forgetting", lam = 0.01}}``), ``s_max``.
- ``token_local``: token-local Newton ``d_t = 1/(β_t‖k_t‖²)`` (``s_t = 1``). Optional ``s_max``.
- ``rls``: recursive least squares, the cumulative right-Newton comparator; ``gamma`` (forgetting), ``lam``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["METHOD_KEYS", "stream_config", "method_builder", "build_stream"]

#: allowed keys per method (besides ``name``)
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "deltanet": ("s_max",),
    "osdn": ("rule", "step", "d_init", "d_min", "positivity", "apf", "s_max"),
    "token_local": ("s_max",),
    "rls": ("gamma", "lam"),
}


def _families() -> list[str]:
    from ..streams import STREAMS

    return sorted(STREAMS)


def stream_config(cfg: Mapping[str, Any]):
    """Build the stream config object of a sweep-file stream entry (validated by the config class itself)."""
    from ..streams import from_dict

    if not isinstance(cfg, Mapping):
        raise ValueError(f"stream: expected a table with a 'family' key, got {cfg!r}")
    if cfg.get("family") not in _families():
        raise ValueError(f"family: expected one of {_families()}, got {cfg.get('family')!r}")
    return from_dict(dict(cfg))


def build_stream(cfg: Mapping[str, Any], seed: int):
    """``stream_config(cfg).build(seed)``: the :class:`osdn_theory.streams.StreamData` of one seed."""
    return stream_config(cfg).build(seed)


def _check_smax(m: Mapping) -> float | None:
    s_max = m.get("s_max")
    if s_max is None:
        return None
    if isinstance(s_max, bool) or not isinstance(s_max, int | float) or not 0 < s_max < 2:
        raise ValueError(f"s_max: expected a number in (0, 2) or absent, got {s_max!r}")
    return float(s_max)


def method_builder(m: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a method entry; return the objects the evaluator needs (``name``, ``s_max``, ``kwargs``)."""
    if not isinstance(m, Mapping):
        raise ValueError(f"method: expected a table with a 'name' key, got {m!r}")
    name = m.get("name")
    if name not in METHOD_KEYS:
        raise ValueError(f"name: expected one of {sorted(METHOD_KEYS)}, got {name!r}")
    extra = sorted(set(m) - set(METHOD_KEYS[name]) - {"name"})
    if extra:
        raise ValueError(
            f"{extra[0]}: unknown key for method {name!r}; expected some of {list(METHOD_KEYS[name])}"
        )
    out: dict[str, Any] = {"name": name, "s_max": None, "kwargs": {}}
    if name in ("deltanet", "token_local"):
        out["s_max"] = _check_smax(m)
    elif name == "rls":
        from .._validate import check_scalar

        out["kwargs"] = {
            "gamma": check_scalar("gamma", m.get("gamma", 1.0), 0.0, 1.0, lo_open=True),
            "lam": check_scalar("lam", m.get("lam", 1.0), 0.0, None, lo_open=True),
        }
    else:  # osdn
        from ..apf import as_apf
        from ..preconditioners import as_step_rule

        out["s_max"] = _check_smax(m)
        kw: dict[str, Any] = {"rule": m.get("rule", "ratio")}
        if kw["rule"] not in ("ratio", "hyper"):
            raise ValueError(f"rule: expected 'ratio' or 'hyper' (state-free rules), got {kw['rule']!r}")
        if "step" in m:
            kw["step"] = as_step_rule(m["step"])
        from .._validate import check_choice, check_scalar

        for key in ("d_init", "d_min"):
            if key in m:
                kw[key] = check_scalar(key, m[key], 0.0, None, lo_open=True)
        if "positivity" in m:
            kw["positivity"] = check_choice("positivity", m["positivity"], ("floor", "none"))
        if m.get("apf") is not None:
            kw["apf"] = as_apf(dict(m["apf"]), "apf")
        out["kwargs"] = kw
    return out
