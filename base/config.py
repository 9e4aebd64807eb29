"""Typed configs: dataclasses loaded from YAML, overridden from the command line, saved with every run.

Every component declares its settings as a (possibly nested) dataclass. This module only moves
them between dataclasses, plain dicts, YAML files and ``--set a.b=value`` overrides, so a run
folder's ``config.yaml`` rebuilds exactly the objects that produced it.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override does not match the dataclass it should fill.

    ``key`` is the dotted setting the error is about (when there is one), so that load_config can
    say where its value came from: the YAML file or a ``--set`` override.
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def _expected(tp: Any) -> str:
    """A type annotation in words, for error messages: 'an int', 'a list of float', 'an int or null'."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _expected(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_expected(args[0]).split(' ', 1)[-1]}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    names = {int: "an int", float: "a number", bool: "a bool (true/false)", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _wrong(where: str, value: Any, tp: Any) -> ConfigError:
    return ConfigError(f"{where}: got {value!r}, expected {_expected(tp)}", key=where)


def to_dict(cfg: Any) -> Any:
    """Dataclass (nested) -> plain dict of YAML/JSON-safe values."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        if tp is type(None) or (origin in (typing.Union, types.UnionType) and type(None) in args):
            return None
        raise _wrong(where, value, tp)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except (ConfigError, TypeError, ValueError):
                continue
        raise _wrong(where, value, tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise _wrong(where, value, tp)
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _wrong(where, value, tp)
        inner = args[0] if args else Any
        out = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong(where, value, tp)
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise _wrong(where, value, tp)
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise _wrong(where, value, tp)
    if tp in (int, float):
        # YAML already typed the value: a string here is a word ("two") or a non-YAML number ("1e3"
        # is a string to YAML 1.1), never an int() traceback.
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise _wrong(where, value, tp)
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            raise _wrong(where, value, tp) from None
        if tp is int:
            if isinstance(number, float) and not number.is_integer():
                raise _wrong(where, value, tp)
            return int(number)
        return float(number)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise _wrong(where, value, tp)
        return str(value)
    return value


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Plain dict -> dataclass, type-checked; unknown keys are an error (typos must not pass)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"{where or cls.__name__}: unknown key(s) {unknown}; known: {sorted(names)}", key=key)
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict, in place."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.sub=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a section")
        try:
            node[parts[-1]] = _parse_scalar(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({_yaml_problem(e)})") from None
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """YAML file (optional) + overrides -> validated dataclass of type ``cls``."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config file ({e})") from None
        except yaml.YAMLError as e:  # yaml names the stream "<unicode string>"; say which file
            raise ConfigError(f"{path}: invalid YAML ({_yaml_problem(e)})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    # Start from the dataclass defaults so partial YAML files only name what they change.
    base = to_dict(cls()) if _has_all_defaults(cls) else {}
    merged = _deep_merge(base, data)
    apply_overrides(merged, overrides)
    try:
        return from_dict(cls, merged)
    except ConfigError as e:
        raise ConfigError(f"{config_source(path, overrides, e.key)}: {e}", key=e.key) from None


def config_source(path: str | Path | None, overrides: list[str] | None, key: str | None) -> str:
    """Where a setting's value came from: the ``--set`` override naming it, else the YAML file."""
    for item in reversed(overrides or []):
        name = item.split("=", 1)[0].strip()
        if key is not None and (key == name or key.startswith(name + ".") or name.startswith(key + ".")):
            return f"--set {item}"
    return str(path) if path is not None else "defaults"


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + str(getattr(e, "problem", None) or e).split("\n")[0]


def _has_all_defaults(cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING  # type: ignore[misc]
        for f in dataclasses.fields(cls)
    )


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (or JSON when the suffix is .json)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_dict(cfg)
    if path.suffix == ".json":
        path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    else:
        path.write_text(yaml.safe_dump(data, sort_keys=False))
