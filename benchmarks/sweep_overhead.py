"""Driver overhead of a finished sweep: its wall time against (sum of job times / parallelism).

    python benchmarks/sweep_overhead.py OUT_DIR WALL_SECONDS [--parallelism N]

A job's time is from its submission (``*_submitted.pkl`` written) to its result
(``*_result.pkl`` written), so it includes the job's own start-up (Python and torch imports).
Prints the numbers and, as the last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("wall", type=float, help="the sweep's wall time in seconds (e.g. from `time`)")
    parser.add_argument("--parallelism", type=int, default=2)
    args = parser.parse_args()
    durations = []
    for submitted in sorted((args.out / "jobs").glob("*_submitted.pkl")):
        job = submitted.name.removesuffix("_submitted.pkl")
        results = list((args.out / "jobs").glob(f"{job}_*_result.pkl"))
        if results:
            durations.append(results[0].stat().st_mtime - submitted.stat().st_mtime)
    ideal = sum(durations) / args.parallelism
    shortest = min(durations)
    overhead = args.wall / (ideal + shortest) - 1
    print(f"{len(durations)} jobs, sum {sum(durations):.0f} s, median {sorted(durations)[len(durations) // 2]:.1f} s")
    print(f"wall {args.wall:.0f} s vs sum/parallelism {ideal:.0f} s + shortest job {shortest:.0f} s "
          f"(an upper bound of one job's start-up): "
          f"{100 * overhead:+.1f}%")
    print(json.dumps({"jobs": len(durations), "job_seconds_sum": round(sum(durations), 1), "wall_s": args.wall,
                      "ideal_s": round(ideal + shortest, 1), "overhead": round(overhead, 4)}))


if __name__ == "__main__":
    main()
