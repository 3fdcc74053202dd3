"""Configs are data: YAML files loaded into dataclasses, unknown or mistyped keys rejected with the file named."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from meddiffusion.errors import MeddiffError

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], source: str | Path = "<config>") -> T:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclasses; unknown keys are errors."""
    if not isinstance(data, dict):
        raise MeddiffError(f"expected a mapping for {cls.__name__}, got {type(data).__name__}", source)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise MeddiffError(
            f"unknown key(s) {', '.join(unknown)} for {cls.__name__} (known: {', '.join(sorted(names))})", source
        )
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value, source)
        elif not _matches(value, hint):
            raise MeddiffError(f"{cls.__name__}.{key} = {value!r} is not of type {_type_name(hint)}", source)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise MeddiffError(f"invalid {cls.__name__}: {exc}", source) from exc


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value) if args else True
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MeddiffError("config file not found", path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise MeddiffError(f"invalid YAML ({exc})", path) from exc
    return data or {}


def with_defaults(cls: type[T], data: dict[str, Any], overrides: dict[str, Any] | None = None, source: Any = None) -> T:
    """``cls``'s defaults, updated section by section by ``data`` (a loaded YAML) and then by ``section.key``
    overrides (command-line flags), validated. A partial section keeps the defaults of the keys it omits."""
    raw = dataclasses.asdict(cls())
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key].update(value)
        else:
            raw[key] = value
    for dotted, value in (overrides or {}).items():
        section, _, name = dotted.partition(".")
        if name:
            raw.setdefault(section, {})[name] = value
        else:
            raw[section] = value
    return from_dict(cls, raw, source or "<defaults>")


def resolve_data_path(entry: str, base: Path | None = None) -> Path:
    """Resolve a data path from a config: ``$VARS`` expanded, ``pkg:NAME/rel`` inside an installed package
    (e.g. ``pkg:nilearn/datasets/data/...``), relative paths against ``base`` (the config's folder)."""
    entry = os.path.expandvars(entry)
    if entry.startswith("pkg:"):
        package, _, rel = entry[4:].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise MeddiffError(f"package {package!r} is not installed", entry)
        return Path(next(iter(spec.submodule_search_locations))) / rel
    path = Path(entry)
    return path if path.is_absolute() or base is None else (base / path)


def config_record(config: Any, folder: str | Path) -> dict[str, Any]:
    """``config`` (a dataclass) as a dict to write into ``folder``, every absolute path made relative to that
    folder: the record stays valid when the run folder and the data move together, and names no training
    machine's directories. A file inside an installed package goes back to the ``pkg:NAME/rel`` form that
    ``resolve_data_path`` reads. ``load`` of such a file resolves paths against the file's folder again."""
    folder = Path(folder).resolve()

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        if isinstance(value, str) and os.path.isabs(value):
            return _package_path(value) or os.path.relpath(value, folder)
        return value

    return walk(dataclasses.asdict(config))


def _package_path(path: str) -> str | None:
    """``pkg:NAME/rel`` for a file inside an installed package (``.../site-packages/NAME/rel``), the inverse of
    ``resolve_data_path``; None for any other path."""
    parts = Path(path).parts
    if "site-packages" not in parts or len(parts) - parts.index("site-packages") < 3:
        return None
    return "pkg:" + "/".join(parts[parts.index("site-packages") + 1 :])


def load_train_config(
    cls: type[T],
    path: str | Path | None,
    overrides: dict[str, Any] | None = None,
    path_keys: tuple[tuple[str, str], ...] = (),
) -> T:
    """The one config loader of the trainers: ``cls``'s defaults, updated by a YAML file and then by
    ``section.key`` overrides (command-line flags), validated. The data paths at ``path_keys`` (a path or a list
    of paths) are resolved relative to the file that names them (``resolve_data_path``); override paths are taken
    as given (the command line resolves them against the working directory). A ``section`` of ``""`` is the
    file's top level."""
    raw = load_yaml(path) if path else {}
    base = Path(path).resolve().parent if path else None
    for section, key in path_keys:
        table = raw if not section else raw.get(section)
        value = table.get(key) if isinstance(table, dict) else None
        if isinstance(value, str) and value:
            table[key] = str(resolve_data_path(value, base))
        elif isinstance(value, list):
            table[key] = [str(resolve_data_path(v, base)) for v in value]
    return with_defaults(cls, raw, overrides, path)
