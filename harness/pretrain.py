"""`python -m harness.pretrain`: see harness.commands.pretrain."""

from harness.commands.pretrain import main
from harness.core.cli import run_cli

if __name__ == "__main__":
    run_cli(main)
