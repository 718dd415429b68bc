"""Every table and figure the given results support, plus ``report.md`` indexing them.

    python -m analysis.figures RUNS_DIR [RUNS_DIR ...] --out FIGDIR

RUNS_DIR: a sweep output directory (``results.jsonl``), any directory holding ``record.json``
files, an Optuna storage URL, or ``wandb:ENTITY/PROJECT`` (online). Figures are PNG and PDF; tables Markdown,
LaTeX and CSV: the results table with 95% intervals and noise floors, the paired differences to the reference
rows. What the data cannot support (e.g. a heatmap for a method without its own lambda_SD x label-smoothing
grid) is skipped with the reason printed and listed in report.md.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import matplotlib
import pandas as pd

from analysis import comparison, reliability, sensitivity, settings, spectrum, tables
from analysis.load import Results, load
from analysis.paired import paired_differences
from analysis.style import save
from harness.core.cli import command_parser, parse_args, run_cli


@dataclass
class Report:
    out: Path
    entries: list[tuple[str, list[Path], str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def figure(self, name: str, title: str, explanation: str, make: Callable[[], object]) -> None:
        self.entries.append((title, save(make(), self.out, name), explanation))

    def files(self, title: str, paths: list[Path], explanation: str) -> None:
        self.entries.append((title, paths, explanation))

    def text(self, title: str, explanation: str) -> None:
        self.entries.append((title, [], explanation))

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


def _write_tables(results: Results, report: Report, setting: str | None = None) -> None:
    """The results table and the paired differences; of one ``setting`` (named in titles and files) when given."""
    statistics = tables.cell_statistics(results)
    out, suffix, of = report.out, f"-{_slug(setting)}" if setting else "", f": {setting}" if setting else ""
    table, paired_name = f"table{suffix}", f"paired{suffix}"
    (out / f"{table}.md").write_text(tables.to_markdown(statistics) + "\n")
    (out / f"{table}.tex").write_text(tables.to_latex(statistics) + "\n")
    statistics.to_csv(out / f"{table}.csv", index=False)
    report.files(f"Results table{of}", [out / f"{table}.md", out / f"{table}.tex", out / f"{table}.csv"],
                 "Variants as rows; ID and per-OOD-set accuracy and ECE (%), mean ± half-width of the 95% t-interval "
                 "over seeds, best in bold; under it each row's ECE noise floor per set.\n\n"
                 + tables.to_markdown(statistics))
    paired = paired_differences(results.trials)
    if paired.empty:
        report.skip(f"Paired differences{of}", "no reference row (flyp, ft or zeroshot) to pair with")
        return
    (out / f"{paired_name}.md").write_text(tables.paired_to_markdown(paired) + "\n")
    (out / f"{paired_name}.tex").write_text(tables.paired_to_latex(paired) + "\n")
    paired.to_csv(out / f"{paired_name}.csv", index=False)
    report.files(f"Paired differences to the references{of}",
                 [out / f"{paired_name}.md", out / f"{paired_name}.tex", out / f"{paired_name}.csv"],
                 "Every row against flyp and ft on ID/OOD accuracy, ECE, NLL and Brier, and against zero-shot on OOD "
                 "ECE (does fine-tuning lose OOD calibration?), paired by seed.\n\n" + tables.paired_to_markdown(paired))


def _slug(setting: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", setting).strip("_")


def _write_grid(report: Report, name: str, title: str, explanation: str, grid: tuple[list[str], list[list[str]]],
                frame: pd.DataFrame) -> None:
    header, body = grid
    text = tables.markdown_table(header, body)
    paths = [report.out / f"{name}.md", report.out / f"{name}.tex", report.out / f"{name}.csv"]
    paths[0].write_text(text + "\n")
    paths[1].write_text(tables.latex_table([tables.latex_escape(h) for h in header],
                                           [[tables.latex_escape(c) for c in row] for row in body], title) + "\n")
    frame.to_csv(paths[2], index=False)
    report.files(title, paths, f"{explanation}\n\n{text}")


def _across_settings(results: Results, report: Report) -> None:
    """The four cross-setting questions (``analysis.settings``): tables and one figure each."""
    trials = results.trials
    paired = settings.paired_by_setting(trials)
    correlations = settings.correlations_by_setting(trials)
    if not paired.empty:
        _write_grid(report, "settings_paired", "Paired differences in every setting",
                    "FLYP+LS − FLYP on ID and OOD ECE (label smoothing), CaRot − FLYP on OOD ECE and accuracy, per "
                    "setting: mean of the per-seed differences in points, 95% t-interval, p of no difference.",
                    settings.paired_rows(paired), paired)
    _write_grid(report, "settings_correlations", "Correlations in every setting, pooled",
                "Pearson r over each setting's trials with its 95% interval (Fisher z), and pooled across settings by "
                "a random-effects meta-analysis of the Fisher z values (Paule-Mandel): the pooled r, tau² "
                "(between-setting variance of z) and I² (the share of the spread that is not sampling noise).",
                settings.correlation_rows(correlations), correlations)
    figures = (
        ("settings_label_smoothing", "Label smoothing across settings", "label smoothing", settings.paired_figure,
         paired, "FLYP+LS − FLYP on ID and OOD ECE per setting, points, 95% paired intervals."),
        ("settings_sigma_min", "sigma_min against OOD calibration and error across settings", "sigma_min",
         settings.correlation_figure, correlations, "Pearson r of the scale-free sigma_min with OOD ECE and OOD "
         "error per setting, 95% intervals; diamond: pooled (random effects), I² above."),
        ("settings_id_calibration", "ID ECE against OOD ECE across settings", "ID calibration",
         settings.correlation_figure, correlations, "Pearson r of ID ECE with OOD ECE per setting and pooled."),
        ("settings_carot", "CaRot − FLYP across settings", "CaRot vs FLYP", settings.paired_figure, paired,
         "CaRot − FLYP on OOD ECE and OOD accuracy per setting, points, 95% paired intervals: where the paper's "
         "claim holds and where it does not."),
    )
    for name, title, question, make, frame, explanation in figures:
        if frame.empty or question not in set(frame["question"]):
            report.skip(title, "no setting has the rows it compares")
            continue
        report.figure(name, title, explanation, lambda make=make, frame=frame, question=question: make(frame, question))


def _correlation_markdown(table: pd.DataFrame) -> str:
    lines = ["| x | y | trials | n | Pearson r [95%] | Spearman ρ [95%] |", "|---|---|---|---|---|---|"]
    for row in table.itertuples():
        lines.append(f"| {row.x} | {row.y} | {row.subset} | {row.n} | "
                     f"{spectrum.estimate_text(row.pearson_r, row.pearson_low, row.pearson_high)} | "
                     f"{spectrum.estimate_text(row.spearman_rho, row.spearman_low, row.spearman_high)} |")
    return "\n".join(lines)


def _evidence(results: Results, report: Report) -> None:
    trials = results.trials
    sigma = spectrum.sigma_columns(trials)[0]
    if len(trials) < 3 or trials[sigma].nunique() < 3:
        report.skip("Singular-value evidence", f"needs at least 3 trials with distinct {sigma}")
        return
    correlation = spectrum.evidence_table(trials)
    correlation.to_csv(report.out / "sigma_min_correlations.csv", index=False)
    report.figure("sigma_min_evidence", "Singular-value evidence",
                  f"OOD ECE and error against {sigma} of the ID embedding covariance (scale-free: D sigma_min / trace, "
                  "where recorded) and against ID ECE, with least-squares lines; Pearson (Fisher-z interval) and "
                  "Spearman (BCa bootstrap interval) correlations over all trials and without zero-shot "
                  "(table: sigma_min_correlations.csv, which also keeps the raw sigma_min).\n\n"
                  + _correlation_markdown(correlation), lambda: spectrum.evidence_figure(trials))


def _noise_floors(results: Results, report: Report) -> None:
    floors = results.sets[results.sets["role"] != "val"].groupby(["role", "set"], sort=False)["ece_floor"].mean()
    floors = floors.dropna()
    if floors.empty:
        report.skip("ECE noise floors", "not recorded (records before schema 2)")
        return
    lines = [f"- {name} ({role.upper()}): {100 * value:.1f}%" for (role, name), value in floors.items()]
    report.text("ECE noise floors", "The expected ECE of a perfectly calibrated model with the same confidences, mean "
                "over all trials per set: an ECE within about this much of zero is indistinguishable from perfect "
                "calibration at the set's size (per row: under the results table).\n\n" + "\n".join(lines))


def _sensitivity(results: Results, report: Report) -> None:
    trials, keys = results.trials, results.config_keys
    figures = (("sensitivity_heatmaps", "Sensitivity to lambda_SD and label smoothing", sensitivity.HEATMAP_KEYS,
                "Mean OOD accuracy and ECE (%) over the lambda_SD x label-smoothing grid, one row per method",
                sensitivity.heatmap_figure),
               ("sensitivity_ema_period", "Sensitivity to the EMA period", sensitivity.PERIOD_KEYS,
                "ID and OOD accuracy and ECE against the EMA teacher's update period, one row per method; "
                "error bars: 95% t-intervals", sensitivity.period_figure))
    for name, title, needed, explanation, make in figures:
        methods, reasons = sensitivity.eligible_methods(trials, keys, needed)
        why = "; ".join(f"{method}: {reason}" for method, reason in reasons.items())
        if not methods:
            report.skip(title, f"no method has a grid of its own over {' x '.join(needed)} ({why})")
            continue
        report.figure(name, title, f"{explanation} (averaged over seeds and the method's other swept sensitivity "
                      f"keys only).", lambda make=make, methods=methods: make(trials, methods))
        if reasons:
            report.skip(f"{title}, other methods", why)


def build_report(results: Results, out: Path) -> Report:
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    trials = results.trials
    names = results.settings
    if len(names) > 1:
        _across_settings(results, report)
        for name in names:
            part = results.setting(name)
            _write_tables(part, report, name)
            report.figure(f"headline-{_slug(name)}", f"Headline comparison: {name}",
                          "ID and OOD accuracy and ECE per variant in this setting; 95% t-intervals over seeds.",
                          lambda part=part: comparison.headline_figure(part.trials))
        report.skip("Reliability diagrams, singular-value evidence, sigma_min before and after, sensitivity, "
                    "trade-off and Pareto figures", f"the results hold {len(names)} settings; these figures pool "
                    "one setting's trials (the figures across settings above compare them)")
        _noise_floors(results, report)
        (out / "report.md").write_text(report.markdown(results))
        return report
    _write_tables(results, report)
    _noise_floors(results, report)
    report.figure("headline", "Headline comparison",
                  "ID and OOD (mean over OOD sets) accuracy and ECE per variant; error bars: 95% t-intervals over "
                  "seeds (none for a single trial); dashed (ID) and dotted (OOD) lines: the mean ECE noise floor of the sets.",
                  lambda: comparison.headline_figure(trials))
    report.figure("reliability", "Reliability diagrams",
                  "Accuracy per confidence bin (blue) against the diagonal, the gap hatched, the share of samples "
                  "per bin in grey; bins pooled over seeds, ECE = mean over seeds.",
                  lambda: reliability.reliability_grid(results))
    _evidence(results, report)
    sigma = spectrum.sigma_columns(trials)[0]
    report.figure("sigma_min_before_after", "sigma_min before and after fine-tuning",
                  f"{sigma} of the ID embedding covariance, pre-trained vs fine-tuned, per variant (mean and 95% "
                  "t-interval over seeds).", lambda: spectrum.before_after_figure(trials))
    _sensitivity(results, report)
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
    parser = command_parser("python -m analysis.figures", __doc__)
    parser.add_argument("runs", nargs="+", help="sweep output dirs, dirs holding record.json files, Optuna storage "
                        "URLs (sqlite:///outputs/x/study.db) or wandb:ENTITY/PROJECT")
    parser.add_argument("--out", type=Path, default=Path("figures"), help="where to write figures and tables")
    parser.add_argument("--wandb", action="store_true", help="also log the report as one W&B run of job_type analysis in "
                        "the sweep's group, with the project, entity and mode (offline by default) the trials used")
    args = parse_args(parser, argv)
    matplotlib.use("Agg")  # files only, on machines with or without a display
    results = load(args.runs)  # nothing to read: a UsageError, one line and exit 2 (run_cli)
    for problem in results.problems:
        print(f"warning: {problem}", file=sys.stderr)
    report = build_report(results, args.out)
    for title, paths, _ in report.entries:
        print(f"wrote {title}: {', '.join(p.name for p in paths) or 'report.md'}")
    for title, reason in report.skipped:
        print(f"skipped {title}: {reason}")
    print(f"index: {args.out / 'report.md'}")
    if args.wandb:
        from analysis.wandb_run import log_report, tracking_of

        group = str(results.trials["sweep"].iloc[0])
        print(f"W&B analysis run: {log_report(results, report, group, tracking_of(results))}")
    return 0


if __name__ == "__main__":
    run_cli(main)
