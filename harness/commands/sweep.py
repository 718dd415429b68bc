"""Run a sweep: spec -> Optuna study -> one submitit job per trial -> results.jsonl.

    python -m harness.sweep sweeps/ablation.yaml [--dry-run] [--out DIR] [--launcher local|debug|slurm]
                            [--profile NAME|FILE.yaml] [--driver-job] [--storage URL] [--parallelism N]
                            [--set key=value ...] [--engine optuna|wandb] [--count N] [--sweep-id ID]

Keeps up to ``parallelism`` jobs in flight, tells Optuna each result, appends one line per
finished trial to OUT/results.jsonl, and ends with the results table: per row ID and OOD
accuracy and ECE with 95% intervals, the paired difference to FLYP, and the ECE noise floors
(``analysis.tables.console_report``). Running the same command again
does only what is missing: finished trials are not repeated; trials whose job died are retried
(at most ``launcher.max_retries`` times) and resume from their checkpoints. Several drivers may
share one study (the same command on several machines, with a journal: or postgresql:// storage):
each point is claimed by one of them. With ``--driver-job`` the driver itself runs as a requeueable
SLURM job (``harness.commands.driver_job``): nothing has to stay alive on a login node. Exit code 1
when a trial failed for good, 2 on bad input (nothing is launched and nothing existing is changed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import yaml

from harness.core.cli import command_parser, parse_args
from harness.core.errors import ConfigError
from harness.sweep.driver import Sweep
from harness.commands.driver_job import DRIVER_FLAG, driver_folder, render_driver_sbatch, submit_driver
from harness.sweep.jobs import load_profile, render_sbatch
from harness.sweep.spec import PROFILE_SUFFIXES, SweepSpec, load_spec
from harness.sweep.study import default_storage


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("python -m harness.sweep", __doc__)
    parser.add_argument("spec", type=Path, help="sweep spec YAML, e.g. sweeps/ablation.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the trial plan; launch nothing")
    parser.add_argument("--out", help="output dir (default: the spec's out, else outputs/<name>)")
    parser.add_argument("--launcher", choices=("local", "debug", "slurm"))
    parser.add_argument("--profile", help="--launcher slurm: a shipped profile (gpu-1, gpu-2, gpu-8: what one trial "
                        "gets; slurm/README.md) or a .yaml file of your own")
    parser.add_argument(DRIVER_FLAG, action="store_true", help="--launcher slurm: submit this driver as a small "
                        "requeueable SLURM job (the profile's driver: resources) and return; the same command again "
                        "resubmits it, and the new driver adopts the running trials")
    parser.add_argument("--storage", help="study storage: sqlite:///PATH (default OUT/study.db), journal:PATH or postgresql://...")
    parser.add_argument("--parallelism", type=int)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec key (a run-config key such as optim.lr means the base's: base.optim.lr); "
                        "every key: docs/config.md")
    parser.add_argument("--engine", choices=("optuna", "wandb"), default="optuna",
                        help="optuna (default): this driver and submitit jobs; wandb: a W&B sweep and a wandb.agent "
                             "worker here (needs tracking.mode=online and a W&B login)")
    parser.add_argument("--count", type=int, help="--engine wandb: at most this many trials in this worker")
    parser.add_argument("--sweep-id", help="--engine wandb: join this existing W&B sweep instead of creating one")
    args = parse_args(parser, argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial would drown the progress bar
    overrides = list(args.set)
    if args.profile and args.profile.endswith(PROFILE_SUFFIXES):
        args.profile = str(Path(args.profile).resolve())  # relative to where the command runs
    for flag, key in (("out", "out"), ("launcher", "launcher.kind"), ("profile", "launcher.profile"),
                      ("storage", "storage"), ("parallelism", "launcher.parallelism")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    spec = load_spec(args.spec, overrides)
    out = (Path(spec.out) if spec.out else Path("outputs") / spec.name).resolve()
    sweep = Sweep(spec, args.spec.parent, out, spec.storage or default_storage(out))
    if args.dry_run or args.engine == "wandb":  # Sweep.run checks them first, before any pre-training or job
        sweep.check()  # the model, its weights and the data of every known trial
    if args.driver_job and (spec.launcher.kind != "slurm" or args.engine == "wandb"):
        raise ConfigError(f"{DRIVER_FLAG} runs the driver of a SLURM sweep as a job: it needs --launcher slurm and "
                          "--engine optuna")
    if spec.launcher.kind == "slurm":
        if not spec.launcher.profile:
            raise ConfigError("launcher.profile: the slurm launcher needs a profile (--profile gpu-1, gpu-2, gpu-8 or "
                              "a .yaml file of your own)")
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
        if args.driver_job:
            print("\nsbatch script of the driver's job:")
            print(render_driver_sbatch(spec, out))
        return 0
    if args.driver_job:
        sweep.check()  # here, before the job: bad input is one line and exit 2 on the login node
        job = submit_driver(spec, [arg for arg in (argv if argv is not None else sys.argv[1:]) if arg != DRIVER_FLAG],
                            out)
        print(f"driver submitted: SLURM job {job.job_id}, log {driver_folder(out)}/{job.job_id}_0_log.out\n"
              f"it requeues itself when its time runs out; cancelled (scancel {job.job_id}) or lost, the same command "
              "resubmits it and the new driver adopts the running trials")
        return 0
    status = sweep.run()
    if status != 130:
        from analysis.tables import console_report  # here, not at the top: pandas and matplotlib load in seconds

        print(console_report(out))
        if spec.tracking.mode != "disabled":
            _log_analysis_run(spec, out)
        else:
            print(f"figures: python -m analysis.figures {out} --out {out / 'figures'}")
    return status


def _log_analysis_run(spec: SweepSpec, out: Path) -> None:
    """The sweep's W&B group gets one analysis run with the results table, the figures and report.md."""
    # the entry point, not the driver, reads the results (the sweep library never imports analysis/), once it is done
    from analysis.figures import build_report
    from analysis.load import NoResultsError, load
    from analysis.wandb_run import log_report

    try:
        results = load([out])
    except NoResultsError:
        return  # console_report has said why
    report = build_report(results, out / "figures")
    print(f"figures and report: {report.out / 'report.md'}")
    print(f"W&B analysis run: {log_report(results, report, spec.name, spec.tracking)}")
