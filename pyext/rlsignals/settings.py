"""Settings as dataclasses: one field per setting, with its help, its type and how text
becomes a value. One helper (``rlsignals.cli.builder``) makes every command's flags from
them, and config files (TOML/JSON) are read against the same fields, so a setting is
written once. Imports nothing heavy: a command's help and its flag errors need no torch.

``option(default, help, *, parse=None, choices=None, flag=None, positional=False)`` is a
dataclass field with that metadata: ``parse`` turns a flag's text into a value (raising
ValueError with the problem in words, e.g. ``whole_number(1)``); ``choices`` the allowed
values; ``flag`` the flag's name when it is not the field's (``use_chat_template`` ->
``--chat-template`` / ``--no-chat-template``); ``positional`` an argument without a flag.

Types understood: str, int, float, bool, dict (JSON text), list[T] and tuple[T, ...]
(several values), and any of them | None (the text "none" gives None).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rlsignals.io.errors import UsageError

MISSING = dataclasses.MISSING


class ConfigError(UsageError):
    """A bad setting (in a config file or a flag); one line naming the key, exit status 2."""


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING,  # noqa: A002 - argparse's word
           parse: Callable[[str], Any] | None = None, choices: tuple | None = None, flag: str | None = None,
           positional: bool = False) -> Any:
    """A dataclass field carrying how its flag is made (module docstring)."""
    metadata = {"help": help, "parse": parse, "choices": choices, "flag": flag, "positional": positional}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


# ---- value parsers for ``option(parse=...)``: text -> value, ValueError naming what was expected --------------
def whole_number(at_least: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected a whole number >= {at_least}, got {text!r}") from None
        if value < at_least:
            raise ValueError(f"expected a whole number >= {at_least}, got {value}")
        return value

    return parse


def finite_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {text!r}")
    return value


def positive_number(text: str) -> float:
    value = finite_number(text)
    if value <= 0:
        raise ValueError(f"expected a number > 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    value = finite_number(text)
    if not 0 < value < 1:
        raise ValueError(f"expected a fraction strictly between 0 and 1, got {text!r}")
    return value


def regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression ({exc})") from None
    return text


DEVICE = re.compile(r"^(cpu|cuda|mps|xpu|meta)(:\d+)?$")


def device(text: str) -> str:
    """A torch device name (cpu, cuda, cuda:1, ...), by its syntax; whether it exists is checked
    where it is used (``rlsignals.io.models.check_device``)."""
    if not DEVICE.match(text):
        raise ValueError(f"expected a torch device such as cpu or cuda:0, got {text!r}")
    return text


def auto_or_device(text: str) -> str:
    return text if text == "auto" else device(text)


# ---- types ------------------------------------------------------------------------------------------------------
@functools.cache
def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def allowed(hint: Any) -> tuple:
    """The types a hint admits: (int, NoneType) for ``int | None``, (list,) for ``list[int]``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(typing.get_origin(h) or h for h in typing.get_args(hint))
    return (typing.get_origin(hint) or hint,)


def element(hint: Any) -> Any:
    """The element type of a list/tuple hint (``list[int] | None`` -> int); None for scalars."""
    for part in (typing.get_args(hint) if type(None) in allowed(hint) else (hint,)):
        if typing.get_origin(part) in (list, tuple):
            return typing.get_args(part)[0]
    return None


def type_name(hint: Any) -> str:
    inner = element(hint)
    names = []
    for t in allowed(hint):
        if t is type(None):
            names.append("none")
        elif t in (list, tuple):
            names.append(f"{t.__name__} of {inner.__name__}")
        else:
            names.append(t.__name__)
    return " or ".join(names)


def value_from_text(hint: Any, text: str) -> Any:
    """``text`` as a value of ``hint`` (one element of a list hint; ``none`` for None);
    ValueError("expected ..., got ...") when it is not one."""
    kinds = allowed(hint)
    if type(None) in kinds and text.lower() in ("none", "null"):
        return None
    inner = element(hint)
    if inner is not None:
        return value_from_text(inner, text)
    try:
        if bool in kinds:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if int in kinds:
            return int(text)
        if float in kinds:
            return float(text)
        if dict in kinds:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError(text)
            return value
    except (ValueError, json.JSONDecodeError):
        raise ValueError(f"expected {type_name(hint)}, got {text!r}") from None
    return text


def check_type(cls: type, key: str, value: Any) -> Any:
    """``value`` as key's type (an int is accepted for a float, a list for a tuple); ConfigError otherwise."""
    hint = hints(cls)[key]
    kinds = allowed(hint)
    if value is None and type(None) in kinds:
        return None
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tuple in kinds and isinstance(value, list):
        value = tuple(value)
    if any(isinstance(value, t) and not (t is int and isinstance(value, bool)) for t in kinds if t is not type(None)):
        return value
    raise ConfigError(f"config key {key!r} must be {type_name(hint)}, got {type(value).__name__} {value!r}")


def flag_name(key: str, field: dataclasses.Field | None = None) -> str:
    return "--" + ((field.metadata.get("flag") if field is not None else None) or key).replace("_", "-")


def parse_flag(cls: type, key: str, text: str) -> Any:
    """A flag's text as key's value (``parse`` of its field, else by its type); ConfigError naming the flag."""
    field = fields(cls)[key]
    parse = field.metadata.get("parse")
    try:
        return parse(text) if parse is not None else value_from_text(hints(cls)[key], text)
    except ValueError as exc:
        problem = str(exc).replace("expected ", "", 1) if str(exc).startswith("expected ") else str(exc)
        raise ConfigError(f"{flag_name(key, field)} must be {problem}") from None


def unknown_key(cls: type, key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, fields(cls), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(fields(cls))}"
    return ConfigError(f"{where}: unknown key {key!r}{hint}")


def read_file(cls: type, path: str | Path, path_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keys of a .toml or .json file of ``cls`` settings (one flat table); the values of
    ``path_keys`` that are relative paths are resolved against the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ConfigError(f"config file {path}: use a .toml or .json file, got {path.suffix!r}")
    try:
        if suffix == ".toml":
            import tomllib

            raw = tomllib.loads(path.read_text())
        else:
            raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} does not parse: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: expected a table of keys, got {type(raw).__name__}")
    for key in raw:
        if key not in fields(cls):
            raise unknown_key(cls, key, str(path))
    for key in path_keys:
        if isinstance(raw.get(key), str) and raw[key] and not Path(raw[key]).is_absolute():
            raw[key] = str((path.parent / raw[key]).resolve())
    return raw


def build(cls: type, path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
          path_keys: tuple[str, ...] = ()) -> Any:
    """``cls`` from a config file's keys (none without ``path``) with ``overrides`` over them:
    text (a flag's, parsed by ``parse_flag``) or values; every value type-checked. The
    dataclass's own checks (``__post_init__``) run last."""
    values = read_file(cls, path, path_keys) if path is not None else {}
    for key, value in (overrides or {}).items():
        if key not in fields(cls):
            raise unknown_key(cls, key, "flags")
        values[key] = parse_flag(cls, key, value) if isinstance(value, str) else value
    return cls(**{key: check_type(cls, key, value) for key, value in values.items()})


def narrow(settings: Any, cls: type) -> Any:
    """The ``cls`` part of ``settings`` (an instance of a subclass of the dataclass ``cls``)."""
    return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})
