"""The package's one extension point: a name-keyed registry of everything a configuration can name.

Every object a sweep file, a configuration dictionary or a keyword such as ``d_scan(rule="ratio")`` refers to
by name lives here, under one of :data:`KINDS`:

============== ==================================================== ============================================
kind           what                                                 named by
============== ==================================================== ============================================
schedule       step / forgetting schedules (:mod:`.schedules`)      ``{name = "inverse_sqrt", value = 0.5}``
step_rule      how the d-update's step is chosen (:class:`StepRule`) ``step = {name = "normalized", c = 0.5}``
feedback_rule  the d-update's feedback (:class:`FeedbackRule`)      ``rule = "ratio"`` or ``{name = ..., ...}``
prior, rate    APF priors and rates/triggers (:mod:`.apf`)          ``apf = {prior = {...}, rate = {...}}``
apf            the APF gate itself                                  (the ``apf`` table)
stream         synthetic stream configs (:mod:`.streams`)           ``[[stream]] family = "piecewise"``
method         sweep methods (:mod:`.sweeps.methods`)               ``[[method]] name = "osdn"``
============== ==================================================== ============================================

The configuration kinds (:data:`CONFIG_KINDS`) share one namespace, so a dictionary ``{"name": ...}`` names
exactly one class whatever field it sits in. The built-ins are registered by their own modules, imported on
the first look-up (this module imports nothing from the package, so there is no import circle). A user adds
an entry with :func:`register`, as a class decorator or a call::

    import osdn_theory

    @osdn_theory.register
    @dataclasses.dataclass(frozen=True)
    class MyRule(osdn_theory.preconditioners.FeedbackRule):
        name: ClassVar[str] = "my_rule"
        ...

    osdn_theory.register(MyStream, kind="stream")      # kind and name given explicitly

``docs/extending.md`` walks through a complete example. Registering a second, different object under a
name that is taken raises ``ValueError`` (``replace=True`` overrides); registering again a class with the same
module and qualified name (a plugin imported twice, a notebook cell run again) replaces it silently.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "CONFIG_KINDS",
    "KINDS",
    "Serializable",
    "build",
    "is_registered",
    "lookup",
    "names",
    "register",
    "unregister",
]

KINDS = ("schedule", "step_rule", "feedback_rule", "prior", "rate", "apf", "stream", "method")

#: Kinds built from a ``{"name": ..., **fields}`` dictionary; their names form one namespace.
CONFIG_KINDS = ("schedule", "step_rule", "feedback_rule", "prior", "rate", "apf")

#: The modules that register each kind's built-ins (imported on the first look-up of that kind).
_CONFIG_MODULES = ("osdn_theory.schedules", "osdn_theory.apf", "osdn_theory.preconditioners")
_BUILTIN_MODULES: dict[str, tuple[str, ...]] = {
    **{k: _CONFIG_MODULES for k in CONFIG_KINDS},
    "stream": ("osdn_theory.streams",),
    "method": ("osdn_theory.sweeps.methods",),
}

_ENTRIES: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
_loaded: set[str] = set()


def _desc(x: Any) -> str:
    return f"{type(x).__name__} {x!r}"


def _load_builtins(*kinds: str) -> None:
    """Import the modules that register the built-ins of ``kinds`` (default: the configuration kinds)."""
    for kind in kinds or CONFIG_KINDS:
        for mod in _BUILTIN_MODULES[kind]:
            if mod not in _loaded:
                _loaded.add(mod)  # first, so that a module registering its classes does not recurse
                importlib.import_module(mod)


def _origin(obj: Any) -> tuple[str, str]:
    cls = obj if isinstance(obj, type) else type(obj)
    return (getattr(cls, "__module__", ""), getattr(cls, "__qualname__", ""))


def _name_of(obj: Any, kind: str) -> Any:
    if kind == "stream":
        return getattr(obj, "family", None) or getattr(obj, "name", None)
    return getattr(obj, "name", None)


def register(
    obj: Any = None, *, kind: str | None = None, name: str | None = None, replace: bool = False
) -> Any:
    """Add ``obj`` (a class, or an object for ``kind="method"``) to the registry under ``kind`` and ``name``.

    Args:
        obj: the class (or method object) to register; omitted, ``register(kind=..., name=...)`` returns a
            decorator. Returned unchanged, so ``@register`` can decorate a class.
        kind: one of :data:`KINDS`; default ``obj.kind`` (every base class of the package declares it:
            ``Schedule``, ``StepRule``, ``FeedbackRule``, ``Prior``, ``Rate``, ``APF``, the stream configs,
            ``SweepMethod``).
        name: the name configurations use; default ``obj.name`` (``obj.family`` for streams).
        replace: allow replacing a different object registered under the same name.

    Raises:
        ValueError: naming ``kind``, ``name`` or ``obj`` when one is missing or invalid, or when the name is
            taken by a different object (a configuration name is unique across :data:`CONFIG_KINDS`).
    """
    if obj is None:
        return lambda o: register(o, kind=kind, name=name, replace=replace)
    if not isinstance(replace, bool):
        raise ValueError(f"replace: expected a bool, got {_desc(replace)}")
    kind = kind if kind is not None else getattr(obj, "kind", None)
    if kind not in KINDS:
        raise ValueError(
            f"kind: expected one of {list(KINDS)} (given, or declared by obj.kind), got {kind!r} for {obj!r}"
        )
    if kind in CONFIG_KINDS and not (
        isinstance(obj, type) and dataclasses.is_dataclass(obj) and issubclass(obj, Serializable)
    ):
        raise ValueError(
            f"obj: expected a dataclass subclassing the package's {kind} base class (e.g. FeedbackRule, "
            f"StepRule, Schedule, Prior, Rate), got {_desc(obj)}"
        )
    if kind == "stream" and not (isinstance(obj, type) and callable(getattr(obj, "build", None))):
        raise ValueError(f"obj: expected a stream config class with a build(seed) method, got {_desc(obj)}")
    name = name if name is not None else _name_of(obj, kind)
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string (given, or obj.name), got {name!r} for {obj!r}")
    if kind != "method" and kind != "stream" and getattr(obj, "name", name) != name:
        raise ValueError(f"name: expected obj.name ({obj.name!r}) for a {kind}, got {name!r}")
    spaces = CONFIG_KINDS if kind in CONFIG_KINDS else (kind,)
    if _origin(obj)[0] not in {m for k in spaces for m in _BUILTIN_MODULES[k]}:
        _load_builtins(*spaces)  # a user's entry: check it against the built-ins
    for k in spaces:
        old = _ENTRIES[k].get(name)
        if old is None or old is obj:
            continue
        if not replace and _origin(old) != _origin(obj):
            mod, qual = _origin(old)
            raise ValueError(
                f"name: {name!r} is already registered as a {k} ({mod}.{qual}); choose another name, or "
                "pass replace=True"
            )
        del _ENTRIES[k][name]
    _ENTRIES[kind][name] = obj
    return obj


def unregister(kind: str, name: str) -> None:
    """Remove ``name`` from ``kind`` (for tests and notebooks); unknown names raise ``ValueError``."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {list(KINDS)}, got {kind!r}")
    _load_builtins(kind)
    if name not in _ENTRIES[kind]:
        raise ValueError(f"name: expected a registered {kind} {sorted(_ENTRIES[kind])}, got {name!r}")
    del _ENTRIES[kind][name]


def names(kind: str | None = None) -> list[str]:
    """Sorted registered names of ``kind`` (``None``: every configuration kind, the namespace of
    :func:`build`)."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind: expected one of {list(KINDS)} or None, got {kind!r}")
    kinds = CONFIG_KINDS if kind is None else (kind,)
    _load_builtins(*kinds)
    return sorted(n for k in kinds for n in _ENTRIES[k])


def lookup(kind: str, name: Any, argname: str = "name") -> Any:
    """The object registered as ``name`` under ``kind``; otherwise ``ValueError`` naming ``argname``."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {list(KINDS)}, got {kind!r}")
    _load_builtins(kind)
    obj = _ENTRIES[kind].get(name) if isinstance(name, str) else None
    if obj is None:
        raise ValueError(
            f"{argname}: expected one of {sorted(_ENTRIES[kind])} (registered {kind}s), got {name!r}"
        )
    return obj


# ---------------------------------------------------------------------------------------------------------
# Configuration objects: frozen dataclasses that round-trip through {"name": ..., **fields}
# ---------------------------------------------------------------------------------------------------------


class Serializable:
    """Base of every named, dictionary-serialisable configuration object (a frozen dataclass)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., field: value, ...}``; nested objects become nested dictionaries, ``None`` is omitted."""
        out: dict[str, Any] = {"name": self.name}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            val = _encode(getattr(self, f.name))
            if val is not None:
                out[f.name] = val
        return out


def _encode(x: Any) -> Any:
    if isinstance(x, Serializable):
        return x.to_dict()
    if isinstance(x, tuple | list):
        return [_encode(v) for v in x]
    return x


def _decode(x: Any, argname: str) -> Any:
    """Nested dictionaries become objects; errors name the field ``argname`` they came from."""
    if isinstance(x, Mapping) and "name" in x:
        return build(x, argname)
    if isinstance(x, list | tuple):
        return [_decode(v, argname) for v in x]
    return x


def build(d: Any, argname: str = "d", base: type | None = None) -> Any:
    """The configuration object that ``d = {"name": ..., **fields}`` describes.

    ``base`` restricts the look-up to subclasses of it (e.g. ``StepRule``); nested dictionaries with a
    ``name`` become objects too. Errors name ``argname`` (or the offending field).
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"{argname}: expected a dictionary with a 'name' key, got {_desc(d)}")
    if "name" not in d:
        raise ValueError(f"{argname}: expected a dictionary with a 'name' key, got keys {sorted(d)}")
    name = d["name"]
    _load_builtins()
    pool = {n: c for k in CONFIG_KINDS for n, c in _ENTRIES[k].items()}
    cls = pool.get(name) if isinstance(name, str) else None
    if cls is None or (base is not None and not issubclass(cls, base)):
        known = sorted(n for n, c in pool.items() if base is None or issubclass(c, base))
        raise ValueError(f"{argname}: expected 'name' to be one of {known}, got {name!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(d) - fields - {"name"})
    if extra:
        raise ValueError(
            f"{argname}: unknown keys {extra} for {name!r}; expected a subset of {sorted(fields)}"
        )
    kwargs = {key: _decode(val, key) for key, val in d.items() if key != "name"}
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ValueError(f"{argname}: cannot build {name!r} from keys {sorted(kwargs)}: {err}") from None


def is_registered(obj: Any) -> bool:
    """Whether ``obj`` (an instance or a class) is the entry of its name in a configuration kind."""
    cls = obj if isinstance(obj, type) else type(obj)
    _load_builtins()
    name = getattr(cls, "name", None)
    return any(_ENTRIES[k].get(name) is cls for k in CONFIG_KINDS)
