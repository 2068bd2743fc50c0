"""One way to make a command from a settings dataclass: its flags and help from the fields
(``rlsignals.settings``), an optional config file under the flags, one error path and one
debug switch.

A ``Command`` names its settings class and its run function as "module:attribute", so the
top-level help imports neither; a command's own help imports only its settings module
(which imports nothing heavy). Flags: ``--field-name VALUE`` (parsed by the field's
``parse``, else by its type, before anything heavy is imported); bool fields are
``--name`` / ``--no-name``; list fields take several values. Errors:

    rlsignals <command>: error: <one line>          exit 2 for a bad flag or setting, 1 otherwise

``--debug`` (or RLSIGNALS_DEBUG=1) shows the traceback instead; Ctrl-C is
``rlsignals <command>: interrupted`` (exit 130).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from rlsignals import settings
from rlsignals.io.errors import UserError


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: ``settings`` and ``run`` are "module:attribute" (imported when the
    command runs or shows its help); ``run(settings) -> exit status``."""

    name: str
    help: str
    settings: str
    run: str
    description: str = ""
    config_file: bool = False          # an optional TOML/JSON file of settings, the flags over it
    path_keys: tuple[str, ...] = ()    # keys whose relative paths are relative to that file

    def settings_class(self) -> type:
        return _attribute(self.settings)

    def runner(self):
        return _attribute(self.run)


def _attribute(reference: str) -> Any:
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``<prog>: error: <message> (see `<prog> --help`)``, exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _converter(parse):
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _help(field: dataclasses.Field, hint: Any) -> str:
    text = field.metadata.get("help", "")
    if field.default is not dataclasses.MISSING and field.default not in (None, "", False):
        text += f" (default: {field.default})"
    elif _required(field):
        text += " (required)"
    return text.replace("%", "%%")


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def add_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """One flag (or positional) per field of ``cls`` (module docstring); values are set only
    when given, so a config file's keys and the fields' defaults stand otherwise."""
    group = parser.add_argument_group(title)
    every = settings.fields(cls)
    required_first = sorted(every, key=lambda name: not _required(every[name]))
    for name in required_first:
        field = every[name]
        hint = settings.hints(cls)[name]
        meta = field.metadata
        required = _required(field)
        parse = meta.get("parse") or (lambda text, hint=hint: settings.value_from_text(hint, text))
        kwargs: dict[str, Any] = {"help": _help(field, hint), "default": argparse.SUPPRESS}
        if meta.get("positional"):
            group.add_argument(name, nargs=None if required else "?", type=_converter(parse), **kwargs)
            continue
        flag = settings.flag_name(name, field)
        if bool in settings.allowed(hint):
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if settings.element(hint) is not None:
            kwargs["nargs"] = "+"
        group.add_argument(flag, dest=name, type=_converter(parse), choices=meta.get("choices"), required=required,
                           metavar=None if meta.get("choices") else name.upper(), **kwargs)


def build_parser(command: Command) -> Parser:
    parser = Parser(prog=f"rlsignals {command.name}", description=command.description or command.help,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    if command.config_file:
        parser.add_argument("config", nargs="?", default=None, help="a .toml or .json file of settings (the keys "
                            "below); flags override its keys")
    add_flags(parser, command.settings_class(),
              "settings (override the config file)" if command.config_file else "settings")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (also: "
                        "RLSIGNALS_DEBUG=1)")
    return parser


def settings_from(command: Command, args: argparse.Namespace) -> Any:
    """The settings instance of parsed ``args``: the config file's keys (when the command takes
    one), the flags over them, type-checked, then the class's ``validate()`` if it has one."""
    cls = command.settings_class()
    given = {name: value for name, value in vars(args).items() if name in settings.fields(cls)}
    value = settings.build(cls, getattr(args, "config", None) if command.config_file else None, given,
                           command.path_keys)
    if hasattr(value, "validate"):
        value.validate()
    return value


def describe(exc: BaseException) -> tuple[str, int]:
    """(one-line message, exit status) of an error raised by a command."""
    if isinstance(exc, UserError):
        text, code = str(exc), exc.exit_code
    elif isinstance(exc, OSError) and exc.filename is not None:
        text, code = f"{exc.filename}: {exc.strerror or exc}", 1
    elif isinstance(exc, (ValueError, OSError)) or type(exc).__name__ == "SafetensorError":
        text, code = str(exc) or type(exc).__name__, 1
    elif isinstance(exc, ImportError):
        text, code = f"{exc}; install the missing package with pip", 1
    elif isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        text, code = f"out of memory ({type(exc).__name__}); try a smaller batch or another --device", 1
    else:
        text, code = (f"internal error {type(exc).__name__}: {exc} (a bug: rerun with --debug for the traceback "
                      "and report it)"), 1
    return " ".join(text.split()), code


def debug_requested(*flags: bool) -> bool:
    return any(flags) or os.environ.get("RLSIGNALS_DEBUG", "") not in ("", "0")


def run_command(command: Command, argv: Sequence[str], debug: bool = False) -> int:
    """Parse ``argv`` for ``command`` and run it; the exit status (module docstring)."""
    try:
        args = build_parser(command).parse_args(list(argv))
    except SystemExit as exc:  # argparse printed its message (or the help)
        return exc.code if isinstance(exc.code, int) else 0
    debug = debug_requested(debug, args.debug)
    try:
        return int(command.runner()(settings_from(command, args)) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"rlsignals {command.name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every error becomes one line unless --debug
        if debug:
            raise
        message, code = describe(exc)
        print(f"rlsignals {command.name}: error: {message}", file=sys.stderr)
        return code
