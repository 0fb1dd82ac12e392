"""Typed option dataclasses filled from `--set KEY=VALUE`: one path for every editor's and trainer's options.

Values are read as JSON where they parse (numbers, true, null, lists), else as strings, then checked against the
field's declared type, so `--set layer=six` fails with the option's name before any model loads.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from lte.core.errors import ConfigError


@dataclass(frozen=True)
class NoOptions:
    """For editors without options (`none`, `context`): any --set is refused."""


def parse_pairs(pairs: list[str], flag: str = "--set") -> dict[str, Any]:
    """KEY=VALUE pairs as a dict; dashes in keys become underscores (`--set eps-init=1` = `eps_init`)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {pair!r}: expected KEY=VALUE")
        try:
            options[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip().replace("-", "_")] = value
    return options


def build_config(config_class: type, options: Mapping[str, Any], owner: str,
                 fixed: Mapping[str, str] | None = None) -> Any:
    """An instance of `config_class` with `options` over its defaults. `owner` names the editor or trainer in
    errors; `fixed` maps option names set elsewhere (e.g. by a checkpoint) to the reason they are refused."""
    for name in options:
        if fixed and name in fixed:
            raise ConfigError(f"{owner}: option '{name}' cannot be set here: {fixed[name]}")
    hints = typing.get_type_hints(config_class)
    known = [f.name for f in fields(config_class)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"{owner}: unknown option(s) {', '.join(unknown)}; "
                          + (f"known: {', '.join(known)}" if known else "it takes no options"))
    values = {name: coerce(value, hints[name], f"{owner}: option '{name}'") for name, value in options.items()}
    try:
        return config_class(**values)
    except (TypeError, ValueError) as error:  # a __post_init__ check
        raise ConfigError(f"{owner}: {error}") from None


def coerce(value: Any, kind: Any, where: str) -> Any:
    """`value` as type `kind` (int, float, bool, str, Path, tuple[X, ...], X | None, ...), validated by pydantic in
    its lax mode ("1" and "yes" are true, a JSON list is a tuple, a number is a string where a string is wanted),
    or a ConfigError that names the option."""
    try:
        if isinstance(value, bool) and bool not in (kind, *typing.get_args(kind)):
            raise ValidationError.from_exception_data("bool", [])  # `true` is not a number
        return _adapter(kind).validate_python(value)
    except ValidationError:
        raise ConfigError(f"{where}: expected {_type_name(kind)}, got {value!r}") from None


@functools.cache
def _adapter(kind: Any) -> TypeAdapter:
    return TypeAdapter(kind, config=ConfigDict(coerce_numbers_to_str=True))


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


def config_dict(config: Any) -> dict[str, Any]:
    """A config as JSON-ready values (tuples as lists, paths as strings); {} for anything that is not one."""
    if not is_dataclass(config):
        return {}
    return json.loads(json.dumps(asdict(config), default=str))


def changed_options(config: Any) -> dict[str, Any]:
    """The fields of `config` that differ from their defaults (what a user set)."""
    if not is_dataclass(config):
        return {}
    default = config_dict(type(config)())
    return {k: v for k, v in config_dict(config).items() if default.get(k) != v}


def options_tag(options: Mapping[str, Any]) -> str:
    """A short file-name-safe label for non-default options ('' when none): readable when short, hashed when long."""
    if not options:
        return ""
    text = ",".join(f"{k}={v}" for k, v in sorted(options.items()))
    safe = re.sub(r"[^A-Za-z0-9=,.+-]", "_", text)
    return safe if len(safe) <= 40 else "o" + hashlib.sha1(text.encode()).hexdigest()[:10]
