"""One paper-ready look for every figure: column width, small fonts, a colour-blind-safe palette."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, ParamSpec

import matplotlib.pyplot as plt

from harness.core.plots import PALETTE

COLUMN_WIDTH = 3.4  # inches, one column of a two-column paper

STYLE = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 150,
    "savefig.dpi": 300, "savefig.bbox": "tight", "axes.prop_cycle": plt.cycler(color=PALETTE),
}
P = ParamSpec("P")


def styled(make: Callable[P, plt.Figure]) -> Callable[P, plt.Figure]:
    """Build the figure under STYLE, leaving the process's own matplotlib settings as they were."""
    @functools.wraps(make)
    def with_style(*args: P.args, **kwargs: P.kwargs) -> plt.Figure:
        with plt.rc_context(STYLE):
            return make(*args, **kwargs)
    return with_style


def save(figure: plt.Figure, out: Path, name: str) -> list[Path]:
    """Write ``name``.png and ``name``.pdf under ``out`` and close the figure."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    with plt.rc_context(STYLE):
        # the tight box measured once for both files: ``bbox_inches="tight"`` renders the figure once more in each
        # savefig to measure it, at the file's resolution
        tight = figure.get_tightbbox(figure.canvas.get_renderer()).padded(plt.rcParams["savefig.pad_inches"])
        for path in paths:
            figure.savefig(path, bbox_inches=tight)
    plt.close(figure)
    return paths


def figure_legend(figure: plt.Figure, handles: list, labels: list[str]) -> None:
    """Short labels: one row above the panels; long ones (sweep points): a column to the right."""
    if sum(len(label) for label in labels) <= 80:
        figure.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False, columnspacing=1.0,
                      handletextpad=0.2)
        figure.tight_layout(rect=(0, 0, 1, 0.93))
    else:
        figure.tight_layout()
        figure.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
