"""The fixed cost a sweep pays per trial, beyond the trial's own training and evaluation.

    python benchmarks/sweep_overhead.py [--trials 8[,24]] [--parallelism 2] [--out DIR] [--modes M,...]
    python benchmarks/sweep_overhead.py --sweep OUT --wall SECONDS [--parallelism 2]

The first form runs the same sweep of tiny trials (digit-vit-t, random init, digitshift-small, one
epoch of 10 steps; FLYP and FT over seeds) four times, with W&B tracking offline and disabled, with
warm workers and with a fresh process per trial, each as ``python -m harness.sweep`` timed from outside,
and reports per mode

    fixed cost per trial = (wall x parallelism - sum of the records' train_s + eval_s) / trials

(start-up, imports, benchmark loading, W&B, the driver's bookkeeping and idle slots). With several sizes
(``--trials 8,24``) it also splits that cost into what each added trial costs and what a sweep pays once
(the start before the first trial, the table, figures and W&B analysis run after the last). Plus the median
``wandb.init`` + ``finish`` of an offline run in a warm process. Targets on 2 cores: <= 3 s a trial
with tracking offline, <= 1.5 s disabled (warm workers).

The second form reads a finished sweep (the ablation, say) and compares its wall time with
sum(train_s + eval_s) / parallelism + its shortest trial (the target: at most 1.05 times that).

Timings on a shared machine are noisy: run it alone. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from scipy import stats

MODES = {"warm-offline": (True, "offline"), "warm-disabled": (True, "disabled"),
         "fresh-offline": (False, "offline"), "fresh-disabled": (False, "disabled")}
TINY = {"model": {"name": "digit-vit-t", "pretrained": None}, "data": {"benchmark": "digitshift-small"},
        "optim": {"epochs": 1, "batch_size": 200, "warmup_steps": 2}, "eval": {"batch_size": 500}}


def work_seconds(out: Path) -> list[float]:
    """train_s + eval_s of every finished trial of a sweep, from its records."""
    seconds = []
    for line in (out / "results.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("record"):
            timings = json.loads((out / entry["record"]).read_text()).get("timings")
            if timings:
                seconds.append(timings["train_s"] + timings["eval_s"])
    return seconds


def run_mode(folder: Path, mode: str, trials: int, parallelism: int) -> dict:
    warm, tracking = MODES[mode]
    seeds = list(range(-(-trials // 2)))
    name = f"{mode}-{trials}"
    spec = {"name": f"overhead-{name}", "base": TINY, "search": {"method": {"grid": ["flyp", "ft"]}}, "seeds": seeds,
            "launcher": {"kind": "local", "parallelism": parallelism, "warm": warm}, "tracking": {"mode": tracking},
            "out": str(folder / name)}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness.sweep", str(path), "-q"], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    work = work_seconds(folder / name)
    fixed = (wall * parallelism - sum(work)) / len(work)
    print(f"{mode:15} {len(work):3} trials: wall {wall:6.1f} s, train+eval {sum(work):6.1f} s, "
          f"fixed cost {fixed:5.2f} s per trial", flush=True)
    return {"trials": len(work), "wall_s": round(wall, 2), "work_s": round(sum(work), 2),
            "fixed_s_per_trial": round(fixed, 2)}


def split_costs(runs: list[dict], parallelism: int) -> dict:
    """Fixed cost of sweeps of several sizes, split by a least-squares line of total fixed slot-seconds against
    trials: the slope is what each added trial costs, the intercept (over the slots) what a sweep pays once."""
    line = stats.linregress([run["trials"] for run in runs], [run["fixed_s_per_trial"] * run["trials"] for run in runs])
    return {"per_added_trial_s": round(line.slope, 2), "once_per_sweep_wall_s": round(line.intercept / parallelism, 1)}


def wandb_open_close(folder: Path, runs: int = 5) -> float:
    """Median seconds of ``wandb.init`` + ``finish`` of an offline run in one (warm) process, after a first run."""
    code = f"""
import json, time, wandb
wandb.setup()
times = []
for i in range({runs + 1}):
    started = time.perf_counter()
    run = wandb.init(mode="offline", dir={str(folder)!r}, project="overhead", reinit="finish_previous")
    run.log({{"x": i}})
    run.finish()
    times.append(time.perf_counter() - started)
print(json.dumps(times[1:]))
"""
    env = {**os.environ, "WANDB_SILENT": "true"}
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    return statistics.median(json.loads(output.stdout.strip().splitlines()[-1]))


def _sizes(text: str) -> list[int]:
    """``--trials``: one sweep size, or several distinct ones (a line through them splits the fixed cost)."""
    try:
        sizes = [int(size) for size in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated whole numbers of trials, e.g. 8 or 8,24") from None
    if min(sizes) < 2 or len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: distinct sizes of at least 2 trials each, e.g. 8,24")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=_sizes, default=[8], help="trials per sweep; several (8,24) also split the fixed cost into "
                        "a part per added trial and a part paid once per sweep")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--out", type=Path, help="where the sweeps write (default: a temporary folder)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--sweep", type=Path, help="a finished sweep's output folder, to compare its wall time")
    parser.add_argument("--wall", type=float, help="--sweep: its wall time in seconds")
    args = parser.parse_args()
    if args.sweep is not None:
        if args.wall is None:
            parser.error("--sweep needs --wall")
        work = work_seconds(args.sweep)
        ideal = sum(work) / args.parallelism + min(work)
        print(f"{len(work)} trials, train+eval {sum(work):.0f} s: ideal {ideal:.0f} s, wall {args.wall:.0f} s, "
              f"ratio {args.wall / ideal:.3f} (target <= 1.05)")
        print(json.dumps({"trials": len(work), "work_s": round(sum(work), 1), "ideal_s": round(ideal, 1),
                          "wall_s": args.wall, "ratio": round(args.wall / ideal, 4)}))
        return
    unknown = [m for m in args.modes.split(",") if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; valid: {', '.join(MODES)}")
    folder = args.out or Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    folder.mkdir(parents=True, exist_ok=True)
    results = {}
    for mode in args.modes.split(","):
        runs = [run_mode(folder, mode, size, args.parallelism) for size in args.trials]
        results[mode] = runs[0] if len(runs) == 1 else {"runs": runs, **split_costs(runs, args.parallelism)}
    wandb_s = wandb_open_close(folder / "wandb-probe")
    print(f"wandb.init + finish (offline, warm process): median {wandb_s:.2f} s")
    print(json.dumps({"parallelism": args.parallelism, "cpus": os.cpu_count(), "modes": results,
                      "wandb_init_finish_s": round(wandb_s, 3)}))


if __name__ == "__main__":
    main()
