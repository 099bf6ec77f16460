"""Names a sweep file may use: stream families and methods, each turned into a validated object.

Both come from the package registry (:mod:`osdn_theory.registry`), so a stream config or a method a plugin
registers is accepted exactly like the built-ins.

Stream entries are ``{family = "<name>", <config fields>...}``; the fields are those of the stream config
class (:mod:`osdn_theory.streams`, its ``from_dict``), e.g. ``{family = "piecewise", T = 512, K = 8}``.

Method entries are ``{name = "<method>", ...}``; the built-ins (``deltanet``, ``osdn``, ``token_local``,
``rls``) and their keys are listed in :mod:`osdn_theory.sweeps.methods`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..registry import lookup, names

__all__ = ["METHOD_KEYS", "stream_config", "method_builder", "build_stream", "get_method"]


def _builtin_keys() -> dict[str, tuple[str, ...]]:
    from .methods import DeltaNetMethod, OSDNMethod, RLSMethod, TokenLocalMethod

    return {c.name: tuple(c.keys) for c in (DeltaNetMethod, OSDNMethod, TokenLocalMethod, RLSMethod)}


#: allowed keys per built-in method (besides ``name``); a registered method declares its own ``keys``
METHOD_KEYS: dict[str, tuple[str, ...]] = _builtin_keys()


def stream_config(cfg: Mapping[str, Any]):
    """Build the stream config object of a sweep-file stream entry (validated by the config class itself)."""
    from ..streams import from_dict

    if not isinstance(cfg, Mapping):
        raise ValueError(f"stream: expected a table with a 'family' key, got {cfg!r}")
    fams = names("stream")
    if cfg.get("family") not in fams:
        raise ValueError(f"family: expected one of {fams}, got {cfg.get('family')!r}")
    return from_dict(dict(cfg))


def build_stream(cfg: Mapping[str, Any], seed: int):
    """``stream_config(cfg).build(seed)``: the :class:`osdn_theory.streams.StreamData` of one seed."""
    return stream_config(cfg).build(seed)


def get_method(name: Any, argname: str = "name"):
    """The registered :class:`~osdn_theory.sweeps.methods.SweepMethod` named ``name`` (an instance)."""
    obj = lookup("method", name, argname)
    return obj() if isinstance(obj, type) else obj


def method_builder(m: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a method entry; return the objects the evaluator needs (``name``, ``s_max``, ``kwargs``)."""
    if not isinstance(m, Mapping):
        raise ValueError(f"method: expected a table with a 'name' key, got {m!r}")
    name = m.get("name")
    meth = get_method(name)
    keys = tuple(meth.keys)
    extra = sorted(set(m) - set(keys) - {"name"})
    if extra:
        raise ValueError(f"{extra[0]}: unknown key for method {name!r}; expected some of {list(keys)}")
    from .methods import check_s_max

    kwargs = meth.build(m)
    if not isinstance(kwargs, dict):
        raise ValueError(
            f"name: method {name!r}: build() must return a dict of keyword arguments, got {kwargs!r}"
        )
    return {"name": name, "s_max": check_s_max(m) if "s_max" in keys else None, "kwargs": kwargs}
