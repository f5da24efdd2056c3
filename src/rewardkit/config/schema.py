"""The config machinery: typed fields with help (`_f`), value checks, YAML + dotted `key=value` loading with
closest-key errors. `--help` text is in `help`; the command dataclasses live in `groups` and `commands`."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Union

import yaml

from rewardkit.config.errors import ConfigError, FieldError  # noqa: F401 - re-exported: the package names them here
from rewardkit.config.yaml_file import read_yaml


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None, **kw: Any) -> Any:
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    if isinstance(default, (dict, list)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: _copy(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def _copy(x: Any) -> Any:
    import copy

    return copy.deepcopy(x)


def _check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise FieldError(key, problem)


def _at_least(obj: Any, minimum: float, *names: str, optional: bool = False) -> None:
    for name in names:
        v = getattr(obj, name)
        if not (optional and v is None):
            _check(v >= minimum, name, f"must be at least {minimum}, got {v}")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        _check(v > 0, name, f"must be > 0, got {v}")


def check_values(cfg: Any, prefix: str = "") -> None:
    """Run the value checks (`__post_init__`) of `cfg` and its groups again, e.g. after fields were set by
    hand; errors name the full key."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_values(value, f"{prefix}{f.name}.")
    try:
        getattr(cfg, "__post_init__", lambda: None)()
    except FieldError as e:
        raise FieldError(prefix + e.key, e.problem) from None


def _require(cfg: Any, *keys: str) -> None:
    """The value checks, then: each key (a plain field or a group with a shorthand) must be set."""
    check_values(cfg)
    missing = []
    for key in keys:
        v = getattr(cfg, key)
        if dataclasses.is_dataclass(v):
            v = getattr(v, v.SHORTHAND)  # type: ignore[attr-defined]
        if not v:
            missing.append(f"`{key}`")
    if missing:
        raise ConfigError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")


# --------------------------------------------------------------------------- building

def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _shorthand(tp: Any) -> str | None:
    return getattr(tp, "SHORTHAND", None) if dataclasses.is_dataclass(tp) else None


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config class, e.g. `data.columns.prompt`, and the groups that take a
    scalar (`model`)."""
    keys = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            if _shorthand(tp):
                keys.append(f"{prefix}{f.name}")
            keys.extend(all_keys(tp, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _coerce(value: Any, tp: Any, key: str, choices: tuple[str, ...] | None, root: type, base: Any = None) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        # The alternative whose shape fits the value (`str | list[Source]`): lists to list types, mappings to
        # dataclasses or dicts, anything else to the first alternative.
        fits = [a for a in inner if (isinstance(value, list) and typing.get_origin(a) is list)
                or (isinstance(value, dict) and (dataclasses.is_dataclass(a) or typing.get_origin(a) is dict))]
        return _coerce(value, (fits or inner)[0], key, choices, root, base)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            if _shorthand(tp):
                value = {_shorthand(tp): value}
            else:
                raise ConfigError(f"{key}: expected a mapping (keys {key}.*), got {value!r}")
        return _build(tp, value, root, key + ".", base)
    bad = ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
    if tp in (int, float) and isinstance(value, str):
        try:  # PyYAML reads `1e-5` (no dot) as a string; option values arrive as strings
            value = float(value)
        except ValueError:
            raise bad from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise bad
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):  # .nan passes `> 0` checks as false, .inf passes them as true
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise bad
        value = str(value)
        if choices and value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {str(k): _coerce(v, args[1], f"{key}.{k}", None, root) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise bad
        return [_coerce(v, args[0], f"{key}[{i}]", None, root) for i, v in enumerate(value)]
    return value


# Fields that hold a file or folder path (or a hub id, which never starts with "~").
PATH_FIELDS = frozenset({"path", "output", "output_dir", "report_dir", "models", "tokenizer", "reference",
                         "resume", "train", "eval"})


def _build(cls: type, data: dict[str, Any], root: type, prefix: str = "", base: Any = None) -> Any:
    """`cls` from `data`; keys not in `data` keep the values of `base`, the default of this group in its
    parent (serve's `scoring` defaults differ from eval's), else of `cls()`."""
    base = cls() if base is None else base
    hints = _hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            key = f"{prefix}{k}"
            while isinstance(v, dict) and v:  # name the whole key: `trian.epochs`, not `trian`
                k, v = next(iter(v.items()))
                key += f".{k}"
            err = ConfigError(_unknown_key_message(key, root))
            err.key = key
            raise err
        f = names[k]
        if k in PATH_FIELDS and isinstance(v, str) and v.startswith("~"):
            v = os.path.expanduser(v)  # YAML files and `key=~/x` in quotes reach here unexpanded by a shell
        try:
            kwargs[k] = _coerce(v, hints[k], f"{prefix}{k}", f.metadata.get("choices"), root, getattr(base, k))
        except ConfigError as e:
            if e.key is None:  # the innermost key at fault (FieldError already names its own)
                e.key = f"{prefix}{k}"
            raise
    try:
        return dataclasses.replace(base, **kwargs)
    except FieldError as e:
        raise FieldError(prefix + e.key, e.problem) from None


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def closest_key(key: str, valid: list[str], cutoff: float = 0.6) -> list[str]:
    """The valid keys closest to a misspelt one, compared component by component: `trian.epochs` ->
    `train.epochs`, `data.max_len` -> `data.max_length`. Falls back to keys with the same last component
    (`batch_size` -> `scoring.batch_size`)."""
    parts = key.split(".")
    best, best_score = [], 0.0
    for cand in valid:
        cparts = cand.split(".")
        if len(cparts) != len(parts):
            continue
        ratios = [_similarity(a, b) for a, b in zip(parts, cparts)]
        if min(ratios) >= cutoff and sum(ratios) > best_score:
            best, best_score = [cand], sum(ratios)
    if best:
        return best
    return [k for k in valid if k.split(".")[-1] == parts[-1]][:2]


def _unknown_key_message(key: str, root: type) -> str:
    close = closest_key(key, all_keys(root) + list(getattr(root, "ALIASES", {})))
    hint = f"; did you mean {' or '.join(f'`{c}`' for c in close)}?" if close else ""
    command = getattr(root, "COMMAND", None)
    where = f" (see `rewardkit {command} --help` for all keys)" if command else ""
    return f"unknown config key `{key}`{hint}{where}"


def parse_override(item: str) -> tuple[str, Any]:
    """`"a.b=1"` -> `("a.b", 1)`: the dotted key and its value parsed as YAML."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or "" in key.split("."):
        raise ConfigError(f"override `{item}` is not of the form key=value")
    return key, (yaml.safe_load(raw) if raw.strip() else "")


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """`["a.b=1", "c=x"]` -> `[("a.b", 1), ("c", "x")]`; values are parsed as YAML scalars."""
    return [parse_override(item) for item in overrides]


def _nest(key: str, value: Any) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    node = tree
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return tree


def _expand(cls: type, tree: dict[str, Any]) -> dict[str, Any]:
    """A scalar given for a group with a shorthand becomes that field (`model: x` -> `model: {path: x}`),
    so that layers merge key by key whichever spelling each one used."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for k, v in tree.items():
        tp = hints[k] if k in names else None
        if dataclasses.is_dataclass(tp):
            if isinstance(v, dict):
                v = _expand(tp, v)
            elif _shorthand(tp) and not isinstance(v, (list, tp)):
                v = {_shorthand(tp): v}
        out[k] = v
    return out


def _take(tree: dict[str, Any], parts: list[str]) -> Any:
    node = tree
    for p in parts[:-1]:
        node = node.get(p)
        if not isinstance(node, dict):
            return dataclasses.MISSING
    return node.pop(parts[-1], dataclasses.MISSING)


def _layer(cls: type, tree: dict[str, Any]) -> dict[str, Any]:
    """One source of settings (a file, an option, an override) in canonical spelling: shorthands expanded,
    aliases (`train.loss`) moved to their key (`loss.name`)."""
    tree = _expand(cls, tree)
    for alias, target in getattr(cls, "ALIASES", {}).items():
        value = _take(tree, alias.split("."))
        if value is dataclasses.MISSING:
            continue
        present = _take(_copy(tree), target.split("."))
        if present is not dataclasses.MISSING and present != value:
            raise ConfigError(f"`{alias}` ({value!r}) and `{target}` ({present!r}) disagree; `{alias}` is the "
                              f"older spelling of `{target}`")
        tree = _merge(tree, _expand(cls, _nest(target, value)))
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None, *,
                values: list[tuple[str, Any]] | None = None) -> Any:
    """Build `cls` from an optional YAML file, then `values` ((key, value) pairs taken as they are, e.g.
    from command-line options), then dotted `key=value` overrides parsed as YAML; later ones win."""
    layers = []
    if path is not None:
        layers.append(read_yaml(path))
    layers += [_nest(k, v) for k, v in [*(values or []), *parse_overrides(overrides or [])]]
    data: dict[str, Any] = {}
    canonical = [_layer(cls, layer) for layer in layers]
    for layer in canonical:
        data = _merge(data, layer)
    try:
        return _build(cls, data, cls)
    except ConfigError as e:
        # A key that only the file sets: name the file, so the user knows where to look.
        key = getattr(e, "key", None)
        if path is None or not key or not _has(canonical[0], key) or any(_has(x, key) for x in canonical[1:]):
            raise
        err = ConfigError(f"{path}: {e}")
        err.key = key
        raise err from None


def _has(tree: dict[str, Any], key: str) -> bool:
    """Whether the nested mapping `tree` sets dotted `key` (or a group above it to a scalar)."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def flat_config(cls: type, **values: Any) -> Any:
    """`cls` from keywords named by the last part of a key (`on_error="skip"` sets data.on_error, `columns=`
    data.columns); for flat constructors kept from earlier versions. Each name must be unique in `cls`."""
    where: dict[str, list[str]] = {}

    def walk(c: type, prefix: str) -> None:
        hints = _hints(c)
        for f in dataclasses.fields(c):
            where.setdefault(f.name, []).append(prefix + f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")

    walk(cls, "")
    pairs = []
    for name, value in values.items():
        keys = where.get(name, [])
        if len(keys) != 1:
            raise ConfigError(f"`{name}` names {'no key' if not keys else ', '.join(keys)} of {cls.__name__}")
        pairs.append((keys[0], value))
    return load_config(cls, values=pairs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
