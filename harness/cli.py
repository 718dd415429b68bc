"""What every command-line entry point shares: a config plus overrides, and exit code 2 with one line on bad input."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from harness.errors import UsageError


def add_config_arguments(parser: argparse.ArgumentParser, what: str = "run config") -> None:
    parser.add_argument("config", nargs="?", help=f"{what} YAML (defaults apply when omitted)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=3e-5")


def config_arguments(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """``(config path or None, overrides)``: a first positional with ``=`` is an override, not a file."""
    if args.config is not None and "=" in args.config:
        return None, [args.config, *args.overrides]
    return args.config, list(args.overrides)


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
