"""What every command-line entry point shares: a config plus overrides, and exit code 2 with one line on bad input."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from harness.core.config import ConfigT, load
from harness.core.errors import UsageError


def config_parser(prog: str, description: str | None, what: str = "run config") -> argparse.ArgumentParser:
    """A parser taking an optional config YAML and dotted ``key=value`` overrides."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help=f"{what} YAML (defaults apply when omitted)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=3e-5")
    return parser


def parse_config(parser: argparse.ArgumentParser, model: type[ConfigT], argv: list[str] | None) -> tuple[ConfigT, argparse.Namespace]:
    """Parse the command line into a validated config of type ``model`` (a first positional with ``=`` is an override)."""
    args = parser.parse_args(argv)
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
    sys.exit(code or 0)
