"""Ablation and baseline tables: one row per variant, mean ± std and a 95% interval over seeds.

Accuracy and ECE are shown in percent. The best mean per column is marked (highest accuracy,
lowest ECE). Rendered as Markdown, LaTeX (booktabs) and CSV (long form, every statistic).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from analysis.load import Results


def per_trial_columns(results: Results) -> pd.DataFrame:
    """One row per trial, one column per table entry: ID acc/ECE, each OOD set's acc/ECE, OOD means (in %)."""
    sets = results.sets[results.sets["role"] != "val"]
    wide = {}
    for row in sets.itertuples():
        label = "ID" if row.role == "id" else row.set
        wide.setdefault(row.trial, {})[f"{label} acc"] = 100 * row.acc
        wide.setdefault(row.trial, {})[f"{label} ECE"] = 100 * row.ece
    frame = pd.DataFrame.from_dict(wide, orient="index")
    trials = results.trials.set_index("trial")
    frame["OOD acc"] = 100 * trials["ood_acc"]
    frame["OOD ECE"] = 100 * trials["ood_ece"]
    frame.insert(0, "variant", trials["variant"])
    ordered = ["variant", "ID acc", "ID ECE"] + [c for c in frame.columns if c not in ("variant", "ID acc", "ID ECE", "OOD acc", "OOD ECE")]
    return frame[ordered + ["OOD acc", "OOD ECE"]]


def _ci95(values: np.ndarray) -> float:
    """Half-width of the t-based 95% interval of the mean; NaN with one seed."""
    n = len(values)
    if n < 2:
        return math.nan
    return float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))


def cell_statistics(results: Results) -> pd.DataFrame:
    """Long form: variant, column, mean, std, n, ci95, best (per column: max accuracy, min ECE)."""
    wide = per_trial_columns(results)
    order = list(dict.fromkeys(results.trials["variant"]))
    rows = []
    for column in wide.columns[1:]:
        for variant in order:
            values = wide.loc[wide["variant"] == variant, column].dropna().to_numpy()
            if len(values):
                std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
                rows.append({"variant": variant, "column": column, "mean": float(values.mean()), "std": std,
                             "n": len(values), "ci95": _ci95(values)})
    table = pd.DataFrame(rows)
    table["best"] = False
    for column, group in table.groupby("column", sort=False):
        best = group["mean"].idxmin() if column.endswith("ECE") else group["mean"].idxmax()
        table.loc[best, "best"] = True
    return table


def _cell(row: pd.Series, latex: bool) -> str:
    text = f"{row['mean']:.1f}" if math.isnan(row["std"]) else f"{row['mean']:.1f} ± {row['std']:.1f}"
    if latex:
        text = text.replace("±", r"$\pm$")
        return rf"\textbf{{{text}}}" if row["best"] else text
    return f"**{text}**" if row["best"] else text


def _grid(statistics: pd.DataFrame, latex: bool) -> tuple[list[str], list[list[str]]]:
    columns = list(dict.fromkeys(statistics["column"]))
    variants = list(dict.fromkeys(statistics["variant"]))
    cells = {(r["variant"], r["column"]): _cell(r, latex) for _, r in statistics.iterrows()}
    return columns, [[variant] + [cells.get((variant, c), "–") for c in columns] for variant in variants]


def to_markdown(statistics: pd.DataFrame) -> str:
    columns, rows = _grid(statistics, latex=False)
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    seeds = sorted(set(statistics["n"]))
    lines.append(f"\nMean ± std over seeds (n = {', '.join(map(str, seeds))}); accuracy and ECE in %; best in bold; "
                 "t-based 95% intervals of the means in table.csv (ci95).")
    return "\n".join(lines)


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text


def to_latex(statistics: pd.DataFrame, caption: str = "Mean $\\pm$ std over seeds; accuracy and ECE in \\%.") -> str:
    columns, rows = _grid(statistics, latex=True)
    lines = [
        r"\begin{table}[t]", r"\centering", r"\small",
        r"\begin{tabular}{l" + "c" * len(columns) + "}", r"\toprule",
        "Method & " + " & ".join(_latex_escape(c) for c in columns) + r" \\", r"\midrule",
    ]
    lines += [" & ".join([_latex_escape(row[0]), *row[1:]]) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}"]
    return "\n".join(lines)
