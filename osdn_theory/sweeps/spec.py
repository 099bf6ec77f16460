"""Sweep specification: parse a TOML or Python sweep file, expand its grids, validate, hash every run.

A sweep file lists stream configs, method configs and seeds; the runs are their cartesian product. Any
stream or method entry may carry a ``grid`` table (dotted key -> list of values) that expands it into a
cartesian product of variants, and a top-level ``[grid]`` does the same over whole run configs
(keys start with ``stream.`` or ``method.``). A file may instead (or also) give ``[[run]]`` entries, each a
complete ``{stream, method, seed}`` config. Example (TOML)::

    name = "apf_demo"
    seeds = [0, 1, 2]                      # or {start = 0, count = 3}

    [metrics]                              # optional; defaults in DEFAULT_METRICS
    window = 32

    [[stream]]
    family = "piecewise"
    T = 512
    K = 8

    [[method]]
    name = "deltanet"

    [[method]]
    name = "osdn"
    rule = "ratio"
    step = {name = "normalized", c = 0.5}
    s_max = 1.5
    apf = {prior = {name = "ones"}, rate = {name = "constant_forgetting", lam = 0.01}}
    grid = {"apf.rate.lam" = [0.003, 0.01, 0.03]}

A Python sweep file defines a dict ``SWEEP`` with the same structure; it is imported like a plugin (below),
so the rules it registers are known to every worker.

``plugins = ["my_rules.py", "pkg.module"]`` names Python files (relative to the sweep file) or modules that
register rules, streams or methods (:func:`osdn_theory.register`); they are imported before the runs are
checked, by every executor's workers before each task, and recorded with their SHA-256 (:mod:`osdn_theory.plugins`).
Plugins are code, like the package version: they do not enter the config or spec hashes.

Each run config is ``{"stream": {...}, "method": {...}, "seed": int, "metrics": {...}}``; its **config
hash** is the SHA-256 of its canonical JSON (sorted keys, no whitespace, floats in ``repr`` form), so the
same run spelled the same way always gets the same hash, across machines and sessions. The **spec hash** of
a sweep is the SHA-256 of its sorted run hashes: two files that expand to the same runs (metric settings
included) have the same spec hash, whatever their layout, name or ``batch_size``.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

__all__ = [
    "DEFAULT_METRICS",
    "METHOD_NAMES",
    "RunConfig",
    "SweepSpec",
    "canonical_json",
    "config_hash",
    "expand_grid",
    "load_spec",
    "parse_spec",
    "spec_hash",
]

#: Metric settings used when a sweep file gives none (see :mod:`osdn_theory.sweeps.evaluate`).
DEFAULT_METRICS: dict[str, Any] = {
    "window": 32,  # tokens averaged for "early" (first) and "late" (last) calibration loss in a segment
    "recovery_tol": 0.25,  # recovered once ‖d − d*_seg‖/‖d*_seg‖ ≤ tol and stays so for `window` tokens
    "profile_before": 32,  # tokens before each shift kept in the calibration-loss profile
    "profile_after": 128,  # tokens after each shift kept in the profile
}

#: The built-in method names; a sweep may use any registered method (:mod:`osdn_theory.sweeps.methods`).
METHOD_NAMES = ("deltanet", "osdn", "rls", "token_local")

_TOP_KEYS = {
    "name",
    "description",
    "seeds",
    "metrics",
    "stream",
    "method",
    "grid",
    "run",
    "batch_size",
    "plugins",
}


@dataclass(frozen=True)
class RunConfig:
    """One run: a stream config, a method config, a seed and the metric settings."""

    stream: dict
    method: dict
    seed: int
    metrics: dict

    def to_dict(self) -> dict:
        return {
            "stream": copy.deepcopy(self.stream),
            "method": copy.deepcopy(self.method),
            "seed": self.seed,
            "metrics": dict(self.metrics),
        }

    @property
    def hash(self) -> str:
        """The config hash (computed once: a parsed run's configs are not to be changed in place)."""
        h = self.__dict__.get("_hash")
        if h is None:
            h = self.__dict__["_hash"] = config_hash(self.to_dict())
        return h

    def label(self) -> str:
        return f"{self.stream.get('family')}/{method_label(self.method)}/seed{self.seed}"


@dataclass
class SweepSpec:
    """A parsed, validated sweep: its name, the expanded list of runs and the source it came from."""

    name: str
    runs: list[RunConfig]
    metrics: dict
    batch_size: int = 16
    source: str = ""
    source_sha256: str = ""
    raw: dict = field(default_factory=dict)
    #: plugin records (:func:`osdn_theory.plugins.resolve_plugins`), imported by every worker before it runs
    plugins: list = field(default_factory=list)

    @property
    def hashes(self) -> list[str]:
        return [r.hash for r in self.runs]

    @property
    def spec_hash(self) -> str:
        """SHA-256 of the sorted run hashes: the identity of what this sweep computes (see the module doc)."""
        key = tuple(self.hashes)
        cached = self.__dict__.get("_spec_hash")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_spec_hash"] = (key, spec_hash(list(key)))
        return cached[1]


def spec_hash(run_hashes: list[str]) -> str:
    """The spec hash of a sweep whose runs have the config hashes ``run_hashes`` (order does not matter)."""
    return config_hash(sorted(set(run_hashes)))


def _canon(x: Any, where: str) -> Any:
    if isinstance(x, Mapping):
        out = {}
        for k, v in x.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: expected string keys, got key {k!r}")
            out[k] = _canon(v, f"{where}.{k}")
        return out
    if isinstance(x, list | tuple):
        return [_canon(v, f"{where}[{i}]") for i, v in enumerate(x)]
    if isinstance(x, bool) or x is None or isinstance(x, str | int):
        return x
    if isinstance(x, float):
        if not math.isfinite(x):
            raise ValueError(f"{where}: expected a finite number, got {x!r}")
        return x
    raise ValueError(
        f"{where}: expected a JSON value (number, string, bool, list, table), got {type(x).__name__}"
    )


def canonical_json(obj: Any) -> str:
    """Canonical JSON text: sorted keys, no whitespace, ``repr`` floats (what the config hash is taken of)."""
    return json.dumps(_canon(obj, "config"), sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_hash(obj: Any) -> str:
    """SHA-256 hex digest of :func:`canonical_json` of ``obj`` (the stable identity of a run)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def method_label(method: Mapping) -> str:
    """Short human label of a method config, e.g. ``osdn[ratio,normalized(c=0.5),constant_forgetting(lam=0.01)]``."""

    def short(x: Any) -> str:
        if not isinstance(x, Mapping):
            return str(x)
        params = ",".join(f"{k}={short(v)}" for k, v in sorted(x.items()) if k != "name")
        return f"{x.get('name', '')}({params})"

    if not isinstance(method, Mapping):
        raise ValueError(
            f"method: expected a method table (mapping with 'name'), got {type(method).__name__}"
        )
    name = method.get("name", "?")
    rest = {k: v for k, v in method.items() if k != "name"}
    if name != "osdn":
        return str(name) + (f"({','.join(f'{k}={v}' for k, v in sorted(rest.items()))})" if rest else "")
    parts = [short(method.get("rule", "ratio"))]
    if "step" in method:
        parts.append(short(method["step"]))
    apf = method.get("apf")
    if isinstance(apf, Mapping):
        rate = apf.get("rate", {"name": "no_forgetting"})
        parts.append(short(rate))
        if isinstance(rate, Mapping) and rate.get("name", "no_forgetting") != "no_forgetting":
            parts.append("prior=" + short(apf.get("prior", {"name": "ones"})))
        if apf.get("restart_clock"):
            parts.append("restart")
    for k in ("d_init", "d_min", "positivity", "s_max"):
        if k in method:
            parts.append(f"{k}={method[k]}")
    return "osdn[" + ",".join(parts) + "]"


def _set_dotted(d: dict, key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    if not all(parts):
        raise ValueError(f"{where}: expected a dotted key like 'apf.rate.lam', got {key!r}")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise ValueError(f"{where}: key {key!r} goes through {p!r}, which is {nxt!r}, not a table")
        cur = nxt
    cur[parts[-1]] = copy.deepcopy(value)


def expand_grid(base: Mapping, grid: Mapping | None, where: str) -> list[dict]:
    """Cartesian product of ``grid`` (dotted key -> non-empty list) applied over a copy of ``base``.

    Keys are expanded in the order given; the last key varies fastest.
    """
    if not grid:
        return [copy.deepcopy(dict(base))]
    if not isinstance(grid, Mapping):
        raise ValueError(f"{where}.grid: expected a table of dotted key -> list, got {grid!r}")
    keys, values = [], []
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ValueError(f"{where}.grid.{k}: expected a non-empty list of values, got {v!r}")
        keys.append(k)
        values.append(v)
    out = []
    for combo in itertools.product(*values):
        d = copy.deepcopy(dict(base))
        for k, v in zip(keys, combo, strict=True):
            _set_dotted(d, k, v, f"{where}.grid")
        out.append(d)
    return out


def _seeds(x: Any) -> list[int]:
    if isinstance(x, Mapping):
        extra = set(x) - {"start", "count"}
        if extra or "count" not in x:
            raise ValueError(f"seeds: expected a list of integers or {{start, count}}, got {dict(x)!r}")
        start, count = x.get("start", 0), x["count"]
        if not (isinstance(start, int) and isinstance(count, int)) or count < 1 or start < 0:
            raise ValueError(f"seeds: expected integer start >= 0 and count >= 1, got {dict(x)!r}")
        return list(range(start, start + count))
    if isinstance(x, int) and not isinstance(x, bool):
        x = [x]
    if not isinstance(x, list) or not x:
        raise ValueError(f"seeds: expected a non-empty list of integers, got {x!r}")
    for s in x:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"seeds: expected non-negative integers, got {s!r}")
    if len(set(x)) != len(x):
        raise ValueError(f"seeds: expected distinct seeds, got {x!r}")
    return list(x)


def _entries(raw: Any, key: str) -> list[dict]:
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(e, Mapping) for e in raw):
        raise ValueError(f"{key}: expected a list of tables ([[{key}]]), got {raw!r}")
    return [dict(e) for e in raw]


def _metrics(raw: Any) -> dict:
    m = dict(DEFAULT_METRICS)
    if raw is None:
        return m
    if not isinstance(raw, Mapping):
        raise ValueError(f"metrics: expected a table, got {raw!r}")
    for k, v in raw.items():
        if k not in DEFAULT_METRICS:
            raise ValueError(
                f"metrics.{k}: unknown metric setting; expected one of {sorted(DEFAULT_METRICS)}"
            )
        m[k] = v
    for k in ("window", "profile_before", "profile_after"):
        v = m[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"metrics.{k}: expected a positive integer, got {v!r}")
    tol = m["recovery_tol"]
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 < tol < 1:
        raise ValueError(f"metrics.recovery_tol: expected a number in (0, 1), got {tol!r}")
    m["recovery_tol"] = float(tol)
    return m


def _check_stream(s: dict, where: str) -> None:
    fam = s.get("family")
    if not isinstance(fam, str):
        raise ValueError(f"{where}.family: expected a stream family name, got {fam!r}")
    from .registry import stream_config

    try:
        stream_config(s)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _check_method(m: dict, where: str) -> None:
    from ..registry import names
    from .registry import method_builder

    name = m.get("name")
    if name not in names("method"):
        raise ValueError(f"{where}.name: expected one of {names('method')}, got {name!r}")

    try:
        method_builder(m)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def parse_spec(
    raw: Mapping,
    *,
    source: str = "<dict>",
    validate_components: bool = True,
    extra_plugins: list[dict] | None = None,
) -> SweepSpec:
    """Validate a sweep dict (the content of a sweep file) and expand it into runs.

    Raises ``ValueError`` naming the offending key (e.g. ``method[2].apf.rate.lam``) and the bad value.
    ``validate_components`` also builds every stream and method config (catching bad parameters early).
    ``plugins`` (a list of ``.py`` paths, relative to the folder of ``source``, or module names) are imported
    first, so the rules, streams and methods they register can be named; ``extra_plugins`` are records of
    plugins already imported (a ``.py`` sweep file itself).
    """
    if not isinstance(raw, Mapping):
        raise ValueError(f"sweep: expected a table at the top level, got {type(raw).__name__}")
    raw = _canon(raw, "sweep")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ValueError(
            f"sweep: unknown top-level key(s) {sorted(unknown)}; expected some of {sorted(_TOP_KEYS)}"
        )
    from ..plugins import load_plugins, resolve_plugins

    src = Path(source) if source and not source.startswith("<") else None
    base = src.resolve().parent if src is not None and src.is_file() else None
    plugins = list(extra_plugins or []) + resolve_plugins(raw.get("plugins"), base)
    load_plugins(plugins)
    name = raw.get("name", Path(source).stem if source else "sweep")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")
    batch_size = raw.get("batch_size", 16)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    metrics = _metrics(raw.get("metrics"))

    runs: list[RunConfig] = []
    streams_raw, methods_raw = _entries(raw.get("stream"), "stream"), _entries(raw.get("method"), "method")
    if streams_raw or methods_raw:
        if not streams_raw:
            raise ValueError("stream: expected at least one [[stream]] entry (methods were given)")
        if not methods_raw:
            raise ValueError("method: expected at least one [[method]] entry (streams were given)")
        if "seeds" not in raw:
            raise ValueError("seeds: expected a list of seeds, e.g. seeds = [0, 1, 2]")
        seeds = _seeds(raw["seeds"])
        streams, methods = [], []
        for i, s in enumerate(streams_raw):
            g = s.pop("grid", None)
            streams += [(f"stream[{i}]", e) for e in expand_grid(s, g, f"stream[{i}]")]
        for i, m in enumerate(methods_raw):
            g = m.pop("grid", None)
            methods += [(f"method[{i}]", e) for e in expand_grid(m, g, f"method[{i}]")]
        for (ws, s), (wm, m) in itertools.product(streams, methods):
            base = {"stream": s, "method": m}
            for cfg in expand_grid(base, raw.get("grid"), "grid") if raw.get("grid") else [base]:
                for seed in seeds:
                    runs.append(RunConfig(cfg["stream"], cfg["method"], seed, metrics))
                    runs[-1].__dict__["_where"] = (ws, wm)
        if raw.get("grid"):
            for k in raw["grid"]:
                if not (k.startswith("stream.") or k.startswith("method.")):
                    raise ValueError(f"grid.{k}: expected a key starting with 'stream.' or 'method.'")
    elif raw.get("grid"):
        raise ValueError("grid: a top-level grid needs [[stream]] and [[method]] entries to expand")
    for i, r in enumerate(_entries(raw.get("run"), "run")):
        extra = set(r) - {"stream", "method", "seed"}
        if extra:
            raise ValueError(f"run[{i}]: unknown key(s) {sorted(extra)}; expected stream, method, seed")
        for k in ("stream", "method"):
            if not isinstance(r.get(k), Mapping):
                raise ValueError(f"run[{i}].{k}: expected a table, got {r.get(k)!r}")
        seed = _seeds([r.get("seed", 0)])[0]
        runs.append(RunConfig(dict(r["stream"]), dict(r["method"]), seed, metrics))
        runs[-1].__dict__["_where"] = (f"run[{i}].stream", f"run[{i}].method")
    if not runs:
        raise ValueError("sweep: expected [[stream]] + [[method]] + seeds, or [[run]] entries; found no runs")

    if validate_components:
        seen_s, seen_m = set(), set()
        for r in runs:
            ws, wm = r.__dict__.get("_where", ("stream", "method"))
            ks, km = canonical_json(r.stream), canonical_json(r.method)
            if ks not in seen_s:
                _check_stream(r.stream, ws)
                seen_s.add(ks)
            if km not in seen_m:
                _check_method(r.method, wm)
                seen_m.add(km)
    for r in runs:  # cross-field checks between the metric settings and each stream
        seg = r.stream.get("segment_len")
        if isinstance(seg, int) and not isinstance(seg, bool) and metrics["window"] > seg:
            ws = r.__dict__.get("_where", ("stream",))[0]
            raise ValueError(
                f"metrics.window: expected at most {ws}.segment_len = {seg} tokens (the early/late calibration "
                f"windows and the recovery window lie inside one segment), got {metrics['window']}"
            )
    # duplicates: identical runs (e.g. overlapping grids) are kept once
    uniq: dict[str, RunConfig] = {}
    for r in runs:
        uniq.setdefault(r.hash, r)
    return SweepSpec(
        name=name,
        runs=list(uniq.values()),
        metrics=metrics,
        batch_size=batch_size,
        source=source,
        source_sha256=config_hash(raw),
        raw=raw,
        plugins=plugins,
    )


def load_spec(path: str | Path, *, validate_components: bool = True) -> SweepSpec:
    """Read a sweep file (``.toml``, or ``.py`` defining ``SWEEP``) and :func:`parse_spec` it."""
    p = Path(path)
    extra: list[dict] = []
    if not p.is_file():
        raise ValueError(f"sweep file: expected an existing .toml or .py file, got {str(path)!r}")
    if p.suffix == ".toml":
        try:
            raw = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"sweep file {p.name}: invalid TOML: {err}") from None
    elif p.suffix == ".py":
        # Imported as a plugin: whatever it registers is imported again by every worker before it runs.
        from ..plugins import load_plugin

        rec = load_plugin(str(p.resolve()), argname=f"sweep file {p.name}")
        rec["entry"], rec["sweep_file"] = p.name, True
        mod = sys.modules[_plugin_module(rec)]
        if not isinstance(getattr(mod, "SWEEP", None), Mapping):
            raise ValueError(f"sweep file {p.name}: expected a module-level dict named SWEEP")
        raw = mod.SWEEP
        extra = [rec]
    else:
        raise ValueError(f"sweep file: expected a .toml or .py file, got suffix {p.suffix!r} ({p.name})")
    return parse_spec(raw, source=str(p), validate_components=validate_components, extra_plugins=extra)


def _plugin_module(rec: dict) -> str:
    from ..plugins import _LOADED

    return _LOADED[(rec["path"], rec["sha256"])]
