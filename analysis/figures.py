"""Every table and figure the given results support, plus ``report.md`` indexing them.

    python -m analysis.figures RUNS_DIR [RUNS_DIR ...] --out FIGDIR

RUNS_DIR: a sweep output directory (``results.jsonl``), any directory holding ``record.json``
files, an Optuna storage URL, or ``wandb:ENTITY/PROJECT`` (online). Figures are PNG and PDF; tables Markdown, LaTeX and CSV. What the data cannot support
(e.g. a heatmap without a lambda_SD x label-smoothing grid) is skipped with the reason printed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from analysis import comparison, reliability, sensitivity, spectrum, tables
from analysis.load import NoResultsError, Results, load
from analysis.style import save


@dataclass
class Report:
    out: Path
    entries: list[tuple[str, list[Path], str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def figure(self, name: str, title: str, explanation: str, make: Callable[[], object]) -> None:
        self.entries.append((title, save(make(), self.out, name), explanation))

    def files(self, title: str, paths: list[Path], explanation: str) -> None:
        self.entries.append((title, paths, explanation))

    def skip(self, title: str, reason: str) -> None:
        self.skipped.append((title, reason))

    def markdown(self, results: Results) -> str:
        lines = ["# Results report", "", f"{len(results.trials)} finished trials, "
                 f"{results.trials['variant'].nunique()} variants.", ""]
        for title, paths, explanation in self.entries:
            lines += [f"## {title}", "", explanation, ""]
            pngs = [p for p in paths if p.suffix == ".png"]
            lines += [f"![{title}]({p.name})" for p in pngs]
            lines += [f"[{p.name}]({p.name})" for p in paths if p.suffix != ".png"] + [""]
        if self.skipped:
            lines += ["## Skipped", ""] + [f"- {title}: {reason}" for title, reason in self.skipped] + [""]
        if results.problems:
            lines += ["## Problems in the input", ""] + [f"- {p}" for p in results.problems] + [""]
        return "\n".join(lines)


def _varies(trials: pd.DataFrame, column: str) -> bool:
    return column in trials and trials[column].nunique() > 1


def _write_tables(results: Results, report: Report) -> None:
    statistics = tables.cell_statistics(results)
    out = report.out
    (out / "table.md").write_text(tables.to_markdown(statistics) + "\n")
    (out / "table.tex").write_text(tables.to_latex(statistics) + "\n")
    statistics.to_csv(out / "table.csv", index=False)
    report.files("Results table", [out / "table.md", out / "table.tex", out / "table.csv"],
                 "Variants as rows; ID and per-OOD-set accuracy and ECE (%), mean ± std over seeds, best in bold.\n\n"
                 + tables.to_markdown(statistics))


def _evidence(results: Results, report: Report) -> None:
    trials = results.trials
    if len(trials) < 3 or trials["sigma_min"].nunique() < 3:
        report.skip("Singular-value evidence", "needs at least 3 trials with distinct sigma_min")
        return
    correlation = spectrum.evidence_table(trials)
    correlation.to_csv(report.out / "sigma_min_correlations.csv", index=False)
    report.figure("sigma_min_evidence", "Singular-value evidence",
                  "OOD ECE and error against sigma_min of the ID embedding covariance and against ID ECE, "
                  "over all trials, with least-squares lines and Pearson/Spearman correlations "
                  "(table: sigma_min_correlations.csv).", lambda: spectrum.evidence_figure(trials))


def build_report(results: Results, out: Path) -> Report:
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    trials = results.trials
    _write_tables(results, report)
    report.figure("headline", "Headline comparison",
                  "ID and OOD (mean over OOD sets) accuracy and ECE per variant; error bars: std over seeds.",
                  lambda: comparison.headline_figure(trials))
    report.figure("reliability", "Reliability diagrams",
                  "Accuracy per confidence bin (blue) against the diagonal, the gap hatched, the share of samples "
                  "per bin in grey; bins pooled over seeds, ECE = mean over seeds.",
                  lambda: reliability.reliability_grid(results))
    _evidence(results, report)
    report.figure("sigma_min_before_after", "sigma_min before and after fine-tuning",
                  "Smallest singular value of the ID embedding covariance, pre-trained vs fine-tuned, per variant.",
                  lambda: spectrum.before_after_figure(trials))
    if _varies(trials, sensitivity.SD) and _varies(trials, sensitivity.LS):
        report.figure("sensitivity_heatmaps", "Sensitivity to lambda_SD and label smoothing",
                      "Mean OOD accuracy and ECE (%) over the lambda_SD x label-smoothing grid.",
                      lambda: sensitivity.heatmap_figure(trials))
    else:
        report.skip("Sensitivity heatmaps", "loss.sd_weight and loss.label_smoothing do not both vary")
    if _varies(trials, sensitivity.PERIOD):
        report.figure("sensitivity_ema_period", "Sensitivity to the EMA period",
                      "ID and OOD accuracy and ECE against the EMA teacher's update period.",
                      lambda: sensitivity.period_figure(trials))
    else:
        report.skip("EMA-period curves", "ema.period does not vary")
    report.figure("tradeoff", "ID vs OOD trade-off",
                  "Mean ID against mean OOD accuracy and ECE per variant; lines are WiSE-FT curves where recorded.",
                  lambda: comparison.tradeoff_figure(results))
    if len(trials) >= 3:
        report.figure("pareto", "Pareto front on ID validation metrics",
                      "Every trial's ID validation accuracy and ECE; the non-dominated trials joined.",
                      lambda: comparison.pareto_figure(trials))
    else:
        report.skip("Pareto front", "needs at least 3 trials")
    (out / "report.md").write_text(report.markdown(results))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.figures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="sweep output dirs, dirs holding record.json files, Optuna storage "
                        "URLs (sqlite:///outputs/x/study.db) or wandb:ENTITY/PROJECT")
    parser.add_argument("--out", type=Path, default=Path("figures"), help="where to write figures and tables")
    args = parser.parse_args(argv)
    try:
        results = load(args.runs)
    except NoResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for problem in results.problems:
        print(f"warning: {problem}", file=sys.stderr)
    report = build_report(results, args.out)
    for title, paths, _ in report.entries:
        print(f"wrote {title}: {', '.join(p.name for p in paths)}")
    for title, reason in report.skipped:
        print(f"skipped {title}: {reason}")
    print(f"index: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
