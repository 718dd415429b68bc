"""`python -m harness.evaluate`: see harness.commands.evaluate."""

from harness.commands.evaluate import main
from harness.core.cli import run_cli

if __name__ == "__main__":
    run_cli(main)
