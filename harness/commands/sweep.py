"""Run a sweep: spec -> Optuna study -> one submitit job per trial -> results.jsonl.

    python -m harness.sweep sweeps/ablation.yaml [--dry-run] [--out DIR] [--launcher local|debug|slurm]
                            [--profile NAME] [--storage URL] [--parallelism N] [--set key=value ...]
                            [--engine optuna|wandb] [--count N] [--sweep-id ID]

Keeps up to ``parallelism`` jobs in flight, tells Optuna each result, appends one line per
finished trial to OUT/results.jsonl, and ends with the results table: per row ID and OOD
accuracy and ECE with 95% intervals, the paired difference to FLYP, and the ECE noise floors
(``analysis.tables.console_report``). Running the same command again
does only what is missing: finished trials are not repeated; trials whose job died are retried
(at most ``launcher.max_retries`` times) and resume from their checkpoints. Several drivers may
share one study (the same command on several machines, with a journal: or postgresql:// storage):
each point is claimed by one of them. Exit code 1 when a trial failed for good, 2 on bad input
(nothing is launched and nothing existing is changed).
"""

from __future__ import annotations

from pathlib import Path

import optuna
import yaml

# the entry point, not the driver, reads the results: the sweep library never imports analysis/
from analysis.figures import build_report
from analysis.load import NoResultsError, load
from analysis.tables import console_report
from analysis.wandb_run import log_report
from harness.core.cli import command_parser, parse_args
from harness.core.errors import ConfigError
from harness.sweep.driver import Sweep
from harness.sweep.launch import load_profile, render_sbatch
from harness.sweep.spec import SweepSpec, load_spec
from harness.sweep.study import default_storage


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("python -m harness.sweep", __doc__)
    parser.add_argument("spec", type=Path, help="sweep spec YAML, e.g. sweeps/ablation.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the trial plan; launch nothing")
    parser.add_argument("--out", help="output dir (default: the spec's out, else outputs/<name>)")
    parser.add_argument("--launcher", choices=("local", "debug", "slurm"))
    parser.add_argument("--profile", help="SLURM profile name from slurm/")
    parser.add_argument("--storage", help="study storage: sqlite:///PATH (default OUT/study.db), journal:PATH or postgresql://...")
    parser.add_argument("--parallelism", type=int)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec key")
    parser.add_argument("--engine", choices=("optuna", "wandb"), default="optuna",
                        help="optuna (default): this driver and submitit jobs; wandb: a W&B sweep and a wandb.agent "
                             "worker here (needs tracking.mode=online and a W&B login)")
    parser.add_argument("--count", type=int, help="--engine wandb: at most this many trials in this worker")
    parser.add_argument("--sweep-id", help="--engine wandb: join this existing W&B sweep instead of creating one")
    args = parse_args(parser, argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial would drown the progress bar
    overrides = list(args.set)
    for flag, key in (("out", "out"), ("launcher", "launcher.kind"), ("profile", "launcher.profile"),
                      ("storage", "storage"), ("parallelism", "launcher.parallelism")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    spec = load_spec(args.spec, overrides)
    out = (Path(spec.out) if spec.out else Path("outputs") / spec.name).resolve()
    sweep = Sweep(spec, args.spec.parent, out, spec.storage or default_storage(out))
    if args.dry_run or args.engine == "wandb":  # Sweep.run checks them first, before any pre-training or job
        sweep.check()  # the model, its weights and the data of every known trial
    if spec.launcher.kind == "slurm":
        if not spec.launcher.profile:
            raise ConfigError("launcher.profile: the slurm launcher needs a profile from slurm/ (--profile NAME)")
        load_profile(spec.launcher.profile)  # an unknown profile fails here, before any work
    if args.engine == "wandb":
        from harness.sweep.wandb_sweep import run_wandb_sweep, sweep_config

        if args.dry_run:
            print(yaml.safe_dump(sweep_config(spec), sort_keys=False))
            return 0
        return run_wandb_sweep(spec, args.spec.parent, out, count=args.count, sweep_id=args.sweep_id)
    if args.dry_run:
        print(sweep.describe())
        if spec.launcher.kind == "slurm":  # the first wave: up to `parallelism` trials, one job or a job array
            wave = min(spec.launcher.parallelism, sweep.total())
            print(f"\nsbatch script of the first {wave} trial(s), as submitit would submit it:")
            print(render_sbatch(spec.launcher.profile, out / "jobs", spec.launcher.parallelism, wave))
        return 0
    status = sweep.run()
    if status != 130:
        print(console_report(out))
        if spec.tracking.mode != "disabled":
            _log_analysis_run(spec, out)
        else:
            print(f"figures: python -m analysis.figures {out} --out {out / 'figures'}")
    return status


def _log_analysis_run(spec: SweepSpec, out: Path) -> None:
    """The sweep's W&B group gets one analysis run with the results table, the figures and report.md."""
    try:
        results = load([out])
    except NoResultsError:
        return  # console_report has said why
    report = build_report(results, out / "figures")
    print(f"figures and report: {report.out / 'report.md'}")
    print(f"W&B analysis run: {log_report(results, report, spec.name, spec.tracking)}")
