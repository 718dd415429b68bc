"""Ablation and baseline tables: one row per variant, mean and 95% t-interval over seeds; paired differences.

Accuracy and ECE are shown in percent. The best mean per column is marked (highest accuracy,
lowest ECE). The ECE noise floor (the expected ECE of a perfectly calibrated model with the same
confidences) is shown under the table: an ECE near it is indistinguishable from perfect
calibration at that test-set size. Rendered as Markdown, LaTeX (booktabs) and CSV (long form,
every statistic); ``console_table`` is the compact text the sweep prints at its end.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis.load import NoResultsError, Results, load
from analysis.paired import PairedOptions, paired_differences

METRIC_LABELS = {"id_acc": "ID acc", "ood_acc": "OOD acc", "id_ece": "ID ECE", "ood_ece": "OOD ECE",
                 "id_nll": "ID NLL", "ood_nll": "OOD NLL", "id_brier": "ID Brier", "ood_brier": "OOD Brier"}
_PERCENT = ("id_acc", "ood_acc", "id_ece", "ood_ece")  # shown in % (differences in percentage points)


def t_halfwidth(values: np.ndarray, confidence: float = 0.95) -> float:
    """Half-width of the t-based interval of the mean; NaN with fewer than two values."""
    values = np.asarray(values, float)
    n = len(values)
    if n < 2:
        return math.nan
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))


def _wide(results: Results, field: str, summary_key: str, kind: str) -> pd.DataFrame:
    """One row per trial: ``field`` of the ID set and of each OOD set, and the OOD mean ``ood_<summary_key>`` (in %)."""
    sets = results.sets[results.sets["role"] != "val"]
    wide: dict[str, dict[str, float]] = {trial: {} for trial in results.trials["trial"]}
    for row in sets.itertuples():
        label = "ID" if row.role == "id" else row.set
        wide[row.trial][f"{label} {kind}"] = 100 * getattr(row, field)
    frame = pd.DataFrame.from_dict(wide, orient="index")
    frame[f"OOD {kind}"] = 100 * results.trials.set_index("trial")[f"ood_{summary_key}"]
    return frame


def per_trial_columns(results: Results) -> pd.DataFrame:
    """One row per trial, one column per table entry: ID acc/ECE, each OOD set's acc/ECE, OOD means (in %)."""
    frame = _wide(results, "acc", "acc", "acc").join(_wide(results, "ece", "ece", "ECE"))
    frame.insert(0, "variant", results.trials.set_index("trial")["variant"])
    ordered = ["variant", "ID acc", "ID ECE"] + [c for c in frame.columns if c not in ("variant", "ID acc", "ID ECE", "OOD acc", "OOD ECE")]
    return frame[ordered + ["OOD acc", "OOD ECE"]]


def cell_statistics(results: Results) -> pd.DataFrame:
    """Long form: variant, column, mean, std, n, ci95 (half-width), best (per column: max accuracy, min ECE) and
    floor (ECE columns: the mean over the row's trials of the ECE noise floor, %; NaN where not recorded)."""
    wide = per_trial_columns(results)
    floors = _wide(results, "ece_floor", "ece_floor", "ECE")
    order = list(dict.fromkeys(results.trials["variant"]))
    rows = []
    for column in wide.columns[1:]:
        for variant in order:
            in_row = wide["variant"] == variant
            values = wide.loc[in_row, column].dropna().to_numpy()
            if len(values):
                std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
                floor = floors.loc[in_row, column].mean() if column in floors else math.nan
                rows.append({"variant": variant, "column": column, "mean": float(values.mean()), "std": std,
                             "n": len(values), "ci95": t_halfwidth(values), "floor": float(floor)})
    table = pd.DataFrame(rows)
    table["best"] = False
    for column, group in table.groupby("column", sort=False):
        best = group["mean"].idxmin() if column.endswith("ECE") else group["mean"].idxmax()
        table.loc[best, "best"] = True
    return table


def _cell(row: pd.Series, latex: bool) -> str:
    text = f"{row['mean']:.1f}" if math.isnan(row["ci95"]) else f"{row['mean']:.1f} ± {row['ci95']:.1f}"
    if latex:
        text = text.replace("±", r"$\pm$")
        return rf"\textbf{{{text}}}" if row["best"] else text
    return f"**{text}**" if row["best"] else text


def _grid(statistics: pd.DataFrame, latex: bool) -> tuple[list[str], list[list[str]]]:
    columns = list(dict.fromkeys(statistics["column"]))
    variants = list(dict.fromkeys(statistics["variant"]))
    cells = {(r["variant"], r["column"]): _cell(r, latex) for _, r in statistics.iterrows()}
    return columns, [[variant] + [cells.get((variant, c), "–") for c in columns] for variant in variants]


def floor_lines(statistics: pd.DataFrame) -> list[str]:
    """One line per variant: its mean ECE noise floor per set, e.g. 'flyp: ID 2.9, uci 3.1, OOD 3.0'; [] if none recorded."""
    floors = statistics.dropna(subset=["floor"])
    lines = []
    for variant, group in floors.groupby("variant", sort=False):
        parts = [f"{column.removesuffix(' ECE')} {floor:.1f}" for column, floor in zip(group["column"], group["floor"])]
        lines.append(f"{variant}: {', '.join(parts)}")
    return lines


def _interval_note(statistics: pd.DataFrame) -> str:
    seeds = ", ".join(map(str, sorted(set(statistics["n"]))))
    return (f"Mean ± half-width of the 95% t-interval over seeds (n = {seeds}; one trial: the value only); "
            "accuracy and ECE in %; best in bold.")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def to_markdown(statistics: pd.DataFrame) -> str:
    """The table for report.md and README excerpts, each row's noise floors listed under it."""
    columns, rows = _grid(statistics, latex=False)
    lines = [markdown_table(["method", *columns], rows)]
    lines.append("\n" + _interval_note(statistics) + " Std and n per cell in table.csv.")
    floors = floor_lines(statistics)
    if floors:
        lines.append("\nECE noise floor (%, expected ECE of a perfectly calibrated model with the row's confidences, "
                     "mean over its trials):\n")
        lines += [f"- {line}" for line in floors]
    return "\n".join(lines)


def latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text


def latex_table(header: list[str], body: list[list[str]], caption: str, footer: list[list[str]] | None = None) -> str:
    lines = [
        r"\begin{table}[t]", r"\centering", r"\small",
        r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}", r"\toprule",
        " & ".join(header) + r" \\", r"\midrule",
    ]
    lines += [" & ".join(row) + r" \\" for row in body]
    if footer:
        lines += [r"\midrule"] + [" & ".join(row) + r" \\" for row in footer]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}"]
    return "\n".join(lines)


def to_latex(statistics: pd.DataFrame,
             caption: str = "Mean $\\pm$ half-width of the 95\\% t-interval over seeds; accuracy and ECE in \\%. "
                            "Below the line: the ECE noise floor, the expected ECE of a perfectly calibrated model "
                            "with the row's confidences.") -> str:
    """Booktabs table; the noise floors (where recorded) as rows under the ECE columns below a rule."""
    columns, rows = _grid(statistics, latex=True)
    floors = {(r.variant, r.column): r.floor for r in statistics.itertuples() if not math.isnan(r.floor)}
    footer = [[rf"floor: {latex_escape(variant)}"] + [f"{floors[(variant, c)]:.1f}" if (variant, c) in floors else ""
                                                      for c in columns]
              for variant in dict.fromkeys(v for v, _ in floors)]
    body = [[latex_escape(row[0]), *row[1:]] for row in rows]
    return latex_table(["Method", *map(latex_escape, columns)], body, caption, footer)


# -- paired differences -----------------------------------------------------------------------------

def _scale(metric: str) -> float:
    return 100.0 if metric in _PERCENT else 1.0


def _difference_cell(row: pd.Series, latex: bool = False) -> str:
    scale = _scale(row["metric"])
    digits = 1 if scale == 100 else 3
    text = f"{scale * row['mean']:+.{digits}f}"
    if row["n"] < 2 or math.isnan(row["low"]):
        return f"{text} (n={row['n']})"
    text += f" [{scale * row['low']:.{digits}f}, {scale * row['high']:.{digits}f}]"
    if not row["excludes_zero"]:
        return text
    return rf"\textbf{{{text}}}" if latex else f"{text}*"


def _outcome_summary(group: pd.DataFrame) -> str:
    """Which metrics came out better or worse for the row (intervals excluding 0), in words."""
    clear = group[group["excludes_zero"]]
    parts = []
    for word in ("better", "worse"):
        metrics = [METRIC_LABELS.get(m, m) for m, o in zip(clear["metric"], clear["outcome"]) if o.endswith(f"({word})")]
        if metrics:
            parts.append(f"{word}: {', '.join(metrics)}")
    return "; ".join(parts) or "no clear difference"


def _paired_grid(paired: pd.DataFrame, latex: bool) -> tuple[list[str], list[list[str]]]:
    metrics = list(dict.fromkeys(paired["metric"]))
    header = ["Δ = row − reference"] + [METRIC_LABELS.get(m, m) for m in metrics] + ["outcome"]
    grid = []
    for (variant, reference), group in paired.groupby(["variant", "reference"], sort=False):
        cells = {r["metric"]: _difference_cell(r, latex) for _, r in group.iterrows()}
        grid.append([f"{variant} − {reference}"] + [cells.get(m, "–") for m in metrics] + [_outcome_summary(group)])
    return header, grid


PAIRED_NOTE = ("Δ = row − reference: mean over seeds of the paired differences [95% t-interval]; accuracy and ECE in "
               "percentage points, NLL and Brier in their units. * (bold in LaTeX): the interval excludes 0. "
               "A row evaluated once without training (zero-shot) is paired with every seed of the other row; "
               "otherwise seeds missing on one side are dropped. Outcome: the metrics whose interval excludes 0, "
               "better or worse for the row (higher accuracy, lower ECE/NLL/Brier is better).")


def paired_to_markdown(paired: pd.DataFrame) -> str:
    """Rows x metrics of paired differences with their intervals, and an outcome column in words."""
    if paired.empty:
        return "No paired comparison: no reference row (flyp, ft, zeroshot) with a matching seed."
    header, grid = _paired_grid(paired, latex=False)
    return "\n".join([markdown_table(header, grid), "", PAIRED_NOTE])


def paired_to_latex(paired: pd.DataFrame) -> str:
    """The paired table as a booktabs table (significant cells bold)."""
    header, grid = _paired_grid(paired, latex=True)
    body = [[latex_escape(row[0]), *row[1:-1], latex_escape(row[-1])] for row in grid]
    caption = ("Paired differences row $-$ reference over seeds, mean [95\\% t-interval]; accuracy and ECE in "
               "percentage points; bold: the interval excludes 0.")
    return latex_table([latex_escape(h) for h in header], body, caption).replace("−", "$-$").replace("Δ", r"$\Delta$")


# -- the sweep's closing table ----------------------------------------------------------------------

def _text_grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows])


def _mean_pm(values: pd.Series) -> str:
    values = 100 * values.dropna().to_numpy(float)
    if not len(values):
        return "–"
    half = t_halfwidth(values)
    return f"{values.mean():.1f}" if math.isnan(half) else f"{values.mean():.1f}±{half:.1f}"


def console_table(results: Results, reference: str | None = None) -> str:
    """Per row: ID/OOD accuracy and ECE (%, mean ± 95% t half-width), the paired Δ to ``reference`` (default flyp,
    else ft) on OOD accuracy and ECE with its interval (* excludes 0); last, the ID and OOD ECE noise floors."""
    trials = results.trials
    present = list(dict.fromkeys(trials["variant"]))
    reference = reference or next((r for r in ("flyp", "ft") if r in present), None)
    deltas = ("ood_acc", "ood_ece")
    columns = ["id_acc", "id_ece", "ood_acc", "ood_ece"]
    header = ["row", "n"] + [METRIC_LABELS[c] for c in columns]
    options = PairedOptions(references=(reference,) if reference in present else (), metrics=deltas)
    compared = [(reference, m) for m in deltas if reference in present]
    if options.zeroshot in present:  # the question of the budget: does fine-tuning lose OOD calibration?
        compared.append((options.zeroshot, "ood_ece"))
    cells = {(r["variant"], r["reference"], r["metric"]): _difference_cell(r)
             for _, r in paired_differences(trials, options).iterrows()}
    header += [f"Δ {METRIC_LABELS[m]} vs {ref}" for ref, m in compared]
    rows = []
    for variant in present:
        group = trials[trials["variant"] == variant]
        row = [variant, str(len(group))] + [_mean_pm(group[c]) for c in columns]
        rows.append(row + [cells.get((variant, ref, m), "–") for ref, m in compared])
    note = "acc and ECE in %, mean±95% t half-width over seeds"
    if compared:
        note += "; Δ = row − reference in points, paired by seed, [95% t-interval], * excludes 0"
    lines = [_text_grid(header, rows), note]
    id_floor, ood_floor = trials["id_ece_floor"].mean(), trials["ood_ece_floor"].mean()
    if math.isnan(id_floor) and math.isnan(ood_floor):
        lines.append("ECE noise floor: not recorded (eval.bootstrap=0, or records before schema 2)")
    else:
        lines.append(f"ECE noise floor (mean over trials, %): ID {100 * id_floor:.1f}, OOD {100 * ood_floor:.1f}")
    return "\n".join(lines)


def console_report(out_dir: Path) -> str:
    """The closing table of the sweep in ``out_dir`` (one per setting when it has several); one line saying why when
    nothing finished (never raises for that)."""
    try:
        results = load([out_dir])
    except NoResultsError as exc:
        return "no results table: " + " ".join(str(exc).split())[:300]
    if len(results.settings) == 1:
        text = console_table(results)
    else:  # rows pair only within a setting: one table each
        text = "\n\n".join(f"setting {name}\n{console_table(results.setting(name))}" for name in results.settings)
    if results.problems:
        text += f"\n{len(results.problems)} trial(s) or lines left out: " + " ".join(results.problems[0].split())[:200]
        text += " ..." if len(results.problems) > 1 else ""
    return text
