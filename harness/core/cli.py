"""What every command-line entry point shares: a config plus overrides, and exit code 2 with one line on bad input."""

from __future__ import annotations

import argparse
import atexit
import gc
import logging
import sys
from typing import Callable

from harness.core.config import ConfigT, load
from harness.core.errors import UsageError


class _Formatter(logging.Formatter):
    """Plain messages for progress; warnings and errors say what they are."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


def command_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """A parser with the logging flags every command shares (``-v``/``-q``)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    loudness.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return parser


class _CommandMessages(logging.Filter):
    """This project's records from ``level`` up; other libraries' from WARNING up."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name.split(".")[0] in ("harness", "analysis")
        return record.levelno >= (self.level if ours else logging.WARNING)


class _CommandHandler(logging.StreamHandler):
    """The stderr handler a command installs (one at a time, replaced when a command runs again in-process)."""


def configure_logging(args: argparse.Namespace) -> None:
    """Messages of this project's loggers on stderr at INFO (``-v``: DEBUG, ``-q``: WARNING); other libraries' at WARNING."""
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _CommandHandler)]:
        root.removeHandler(handler)
    handler = _CommandHandler()
    handler.setFormatter(_Formatter("%(message)s"))
    handler.addFilter(_CommandMessages(level))
    root.addHandler(handler)
    root.setLevel(min(level, logging.WARNING))


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line and configure logging from its flags."""
    args = parser.parse_args(argv)
    configure_logging(args)
    return args


RUN_CONFIG_KEYS = ("every key of the run config, with its type, default and meaning: docs/config.md "
                   "(python -m harness.commands.reference prints it)")


def config_parser(prog: str, description: str | None, what: str = "run config",
                  keys: str | None = RUN_CONFIG_KEYS) -> argparse.ArgumentParser:
    """A command parser taking an optional config YAML and dotted ``key=value`` overrides; ``keys``: where the
    config's keys are listed (the help's last line)."""
    parser = command_parser(prog, description)
    parser.epilog = keys
    parser.add_argument("config", nargs="?", help=f"{what} YAML (defaults apply when omitted)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=3e-5")
    return parser


def parse_config(parser: argparse.ArgumentParser, model: type[ConfigT], argv: list[str] | None) -> tuple[ConfigT, argparse.Namespace]:
    """Parse the command line into a validated config of type ``model`` (a first positional with ``=`` is an override)."""
    args = parse_args(parser, argv)
    path, overrides = args.config, list(args.overrides)
    if path is not None and "=" in path:
        path, overrides = None, [path, *overrides]
    return load(model, path, overrides), args


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run ``main``; a ``UsageError`` (bad config, unknown name, unusable weights) prints one line and exits 2."""
    try:
        code = main(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    # At exit, before the interpreter's last collection, freeze the heap: that collection would walk every object
    # torch, open_clip and pandas made (about 2 s after a sweep), once the command's work is written and closed.
    # Registered once, at exit, so that a command run in-process (tests) leaves the caller's collector alone.
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    sys.exit(code or 0)
