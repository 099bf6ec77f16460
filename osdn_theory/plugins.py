"""Plugins: Python files or modules that register a user's rules, streams or methods (``docs/extending.md``).

A sweep file names its plugins (``plugins = ["my_rules.py", "pkg.module"]``): an entry ending in ``.py`` (or
containing a path separator) is a file, relative to the sweep file's folder; any other entry is a module
name to import. :func:`resolve_plugins` finds each one and records its SHA-256 (for a module, of its source
file); :func:`load_plugins` imports them, once per process, and is what every executor's workers call before
running a task, so a spawned process or a Dask worker knows the same names as the process that parsed the
sweep. A plugin whose file changed after it was resolved is refused (its SHA-256 no longer matches).

``osdn verify --plugin FILE`` loads a plugin the same way.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["file_sha256", "load_plugin", "load_plugins", "resolve_plugins"]

#: plugins imported in this process: (path or module, sha256) -> module name
_LOADED: dict[tuple[str, str | None], str] = {}


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _is_file_entry(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry or os.sep in entry


def _module_name(path: Path) -> str:
    tag = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return f"osdn_plugin_{stem}_{tag}"


def resolve_plugins(entries: Any, base: str | Path | None = None, argname: str = "plugins") -> list[dict]:
    """Find each plugin of ``entries`` (a list of file paths or module names) and record its SHA-256.

    File paths are relative to ``base`` (the sweep file's folder; default the working directory). Returns one
    ``{"entry", "path", "module", "sha256"}`` per plugin (``path`` for files, ``module`` for module names).
    Module plugins are imported here (to find their source file); files are only hashed.
    """
    if entries is None:
        return []
    if isinstance(entries, str) or not isinstance(entries, Sequence):
        raise ValueError(f"{argname}: expected a list of .py file paths or module names, got {entries!r}")
    base = Path.cwd() if base is None else Path(base)
    out = []
    for i, e in enumerate(entries):
        where = f"{argname}[{i}]"
        if not isinstance(e, str) or not e.strip():
            raise ValueError(f"{where}: expected a .py file path or a module name, got {e!r}")
        if _is_file_entry(e):
            p = Path(e).expanduser()
            p = (p if p.is_absolute() else base / p).resolve()
            if not p.is_file():
                raise ValueError(f"{where}: expected an existing file, got {e!r} (looked for {str(p)!r})")
            out.append({"entry": e, "path": str(p), "module": None, "sha256": file_sha256(p)})
        else:
            mod = _import_module(e, where)
            src = getattr(mod, "__file__", None)
            sha = file_sha256(src) if src and Path(src).is_file() else None
            out.append({"entry": e, "path": None, "module": e, "sha256": sha})
    return out


def _import_module(name: str, where: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and name.startswith(err.name):
            raise ValueError(
                f"{where}: no module named {name!r} (write a file as a path ending in .py, relative to the "
                "sweep file)"
            ) from None
        raise ValueError(f"{where}: importing {name!r} failed: {type(err).__name__}: {err}") from None
    except Exception as err:  # noqa: BLE001 - a plugin's own error, reported as one line naming it
        raise ValueError(f"{where}: importing {name!r} failed: {type(err).__name__}: {err}") from None


def _load_file(path: Path, sha: str | None, where: str) -> str:
    key = (str(path), sha)
    if key in _LOADED:
        return _LOADED[key]
    if not path.is_file():
        raise ValueError(f"{where}: expected an existing file, got {str(path)!r} (is it on this machine?)")
    now = file_sha256(path)
    if sha is not None and now != sha:
        raise ValueError(
            f"{where}: {str(path)!r} changed since the sweep was parsed (SHA-256 {now[:12]}, expected "
            f"{sha[:12]}); rerun the sweep command so that every run uses one version of the plugin"
        )
    name = _module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{where}: cannot import {str(path)!r} as a Python file")
    mod = importlib.util.module_from_spec(spec)
    old = sys.modules.get(name)
    sys.modules[name] = mod  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(mod)
    except Exception as err:  # noqa: BLE001 - reported as one line naming the plugin
        if old is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = old
        raise ValueError(f"{where}: importing {str(path)!r} failed: {type(err).__name__}: {err}") from err
    _LOADED[key] = name
    return name


def load_plugin(entry: str | Mapping, base: str | Path | None = None, argname: str = "plugin") -> dict:
    """Import one plugin (a file path, a module name, or a record of :func:`resolve_plugins`); return its record."""
    rec = dict(entry) if isinstance(entry, Mapping) else resolve_plugins([entry], base, argname)[0]
    if rec.get("path"):
        _load_file(Path(rec["path"]), rec.get("sha256"), argname)
    elif rec.get("module"):
        key = (rec["module"], None)
        if key not in _LOADED:
            _import_module(rec["module"], argname)
            _LOADED[key] = rec["module"]
    else:
        raise ValueError(f"{argname}: expected a plugin record with 'path' or 'module', got {rec!r}")
    return rec


def load_plugins(plugins: Sequence[Mapping] | None) -> None:
    """Import every plugin record of :func:`resolve_plugins` in this process (each once; cheap when repeated)."""
    if not plugins:
        return
    if isinstance(plugins, str | Mapping) or not isinstance(plugins, Sequence):
        raise ValueError(f"plugins: expected a list of plugin records, got {plugins!r}")
    for i, rec in enumerate(plugins):
        if not isinstance(rec, Mapping):
            raise ValueError(f"plugins[{i}]: expected a plugin record (a dict), got {rec!r}")
        load_plugin(rec, argname=f"plugins[{i}] ({rec.get('entry')})")
