"""Choose a sweep's parameter point on ID validation data, never on a test set.

    python -m analysis.select SPEC.yaml [--out DIR]

Reads the sweep spec (its name, output dir and objectives), loads the sweep's finished trials,
groups them by parameter point (the method and the config keys that vary, seed excluded),
averages the spec's FIRST objective (an ID-validation summary key such as val_nll) over each
point's seeds and prints the best point by the objective's direction, with the others ranked below
it (mean ± std over seeds, n seeds); a sweep across settings (its ``settings:``) gets one choice per
setting. Choosing on a mean over seeds rather than on the best single
trial keeps one lucky seed from deciding. The output dir is --out, else the spec's ``out``, else
outputs/<name>. Bad input (spec, missing results, an objective no trial records) exits 2 with one line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from analysis.load import NoResultsError, Results, load
from harness.core.cli import command_parser, parse_args, run_cli
from harness.core.errors import UsageError
from harness.sweep.spec import load_spec

log = logging.getLogger(__name__)


def point_label(row: pd.Series, keys: list[str]) -> str:
    """``key=value, ...`` of the keys that vary between points: what to copy into a spec or a run config."""
    return ", ".join(f"{key}={row[key]}" for key in keys) or str(row["method"])


def rank_points(results: Results, key: str, direction: str) -> pd.DataFrame:
    """One row per parameter point: point (label), mean, std, n of ``key`` over its seeds; best first."""
    trials = results.trials.dropna(subset=[key]) if key in results.trials else results.trials.iloc[:0]
    if trials.empty:
        raise UsageError(f"objective {key}: no finished trial records it in its summary")
    config = [k for k in results.config_keys if k in trials and trials[k].map(repr).nunique() > 1]
    identity = trials[["method", *config]].map(repr).apply(tuple, axis=1)
    keys = (["method"] if trials["method"].nunique() > 1 else []) + config
    rows = []
    for _, group in trials.groupby(identity, sort=False):
        values = group[key].astype(float)
        rows.append({"point": point_label(group.iloc[0], keys), "mean": values.mean(), "std": values.std(ddof=1),
                     "n": len(values)})
    return pd.DataFrame(rows).sort_values("mean", ascending=direction == "minimize", kind="stable", ignore_index=True)


def format_ranking(ranking: pd.DataFrame, key: str, direction: str) -> str:
    """The chosen point on its own line, then every point ranked (mean ± std over seeds, n seeds)."""
    def cell(row: pd.Series) -> str:
        spread = "–" if pd.isna(row["std"]) else f"{row['std']:.4f}"
        return f"{row['mean']:.4f} ± {spread}"

    best = ranking.iloc[0]
    width = max(len(p) for p in ranking["point"])
    lines = [f"chosen on {key} ({direction}, mean over seeds): {best['point']}  {key} {cell(best)} "
             f"(n={best['n']} seeds)", "", f"{'rank':>4}  {'point':<{width}}  {key + ' mean ± std':>19}  n"]
    lines += [f"{rank:>4}  {row['point']:<{width}}  {cell(row):>19}  {row['n']}"
              for rank, (_, row) in enumerate(ranking.iterrows(), start=1)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("python -m analysis.select", __doc__)
    parser.add_argument("spec", type=Path, help="the sweep spec YAML, e.g. sweeps/sensitivity.yaml")
    parser.add_argument("--out", type=Path, help="the sweep's output dir (default: the spec's out, else outputs/<name>)")
    args = parse_args(parser, argv)
    spec = load_spec(args.spec)
    out = args.out or (Path(spec.out) if spec.out else Path("outputs") / spec.name)
    objective = spec.objectives[0]
    if not objective.key.startswith("val_"):
        log.warning("objective %s is not an ID-validation key: choosing on test data biases the reported results",
                    objective.key)
    try:
        results = load([out])
    except NoResultsError as exc:
        raise UsageError(" ".join(str(exc).split())) from exc
    if results.problems:
        log.warning("%d trial(s) or lines left out (failed or unreadable), e.g. %s", len(results.problems),
                    results.problems[0])
    several = len(results.settings) > 1
    for name in results.settings:  # a study across settings chooses in each setting on its own
        ranking = rank_points(results.setting(name) if several else results, objective.key, objective.direction)
        print((f"setting {name}\n" if several else "") + format_ranking(ranking, objective.key, objective.direction))
    return 0


if __name__ == "__main__":
    run_cli(main)
