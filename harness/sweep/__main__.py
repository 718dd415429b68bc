"""`python -m harness.sweep`: see harness.commands.sweep."""

from harness.commands.sweep import main
from harness.core.cli import run_cli

if __name__ == "__main__":
    run_cli(main)
