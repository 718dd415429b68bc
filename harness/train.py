"""`python -m harness.train`: see harness.commands.train."""

from harness.commands.train import main
from harness.core.cli import run_cli

if __name__ == "__main__":
    run_cli(main)
