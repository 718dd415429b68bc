"""Print the configuration reference, docs/config.md: every key of a run config, a sweep spec and a SLURM profile,
with its type, default and meaning, read from the config models.

    python -m harness.commands.reference > docs/config.md
"""

from __future__ import annotations

from harness.core.cli import command_parser, parse_args, run_cli
from harness.core.config import RunConfig
from harness.core.reference import markdown_table, reference
from harness.sweep.jobs import SlurmProfile
from harness.sweep.spec import SweepSpec

_INTRO = """# Configuration reference

Every key, its type, default and meaning, generated from the config models
(`python -m harness.commands.reference > docs/config.md`; a test keeps this page equal to them). A key
`a.b` is written `a: {b: ...}` in YAML or `a.b=...` on the command line; `NAME` stands for a key you
choose, `[]` for an item of a list. Unknown keys, wrong types and out-of-range values are refused with
exit code 2, naming the key.
"""

_SECTIONS = (
    ("Run configuration", "What one trial needs: `python -m harness.train [CONFIG.yaml] [key=value ...]`, a sweep "
     "spec's `base`, and the keys a sweep searches over. In `python -m harness.sweep --set`, a run-configuration key "
     "(`optim.lr=1e-3`) means the base's (`base.optim.lr`).", RunConfig),
    ("Sweep spec", "A file under `sweeps/` (`python -m harness.sweep SPEC [--set key=value ...]`).", SweepSpec),
    ("SLURM profile", "What one trial (and the driver's own job) gets from the cluster (`--profile`; "
     "slurm/README.md).", SlurmProfile),
)


def render() -> str:
    parts = [_INTRO]
    for title, text, model in _SECTIONS:
        parts += [f"## {title}\n", f"{text}\n", markdown_table(reference(model)) + "\n"]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parse_args(command_parser("python -m harness.commands.reference", __doc__), argv)
    print(render(), end="")
    return 0


if __name__ == "__main__":
    run_cli(main)
