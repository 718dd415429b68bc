"""The analysis run of a sweep on W&B: one run of job_type ``analysis`` in the sweep's group holding every table
of the report (the results table and paired differences; per setting and across settings when there are
several), every figure and report.md, so that the group's page shows the paper's comparison.

Offline runs (the default tracking mode) are written under the report's folder; ``wandb sync`` uploads them later.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from analysis.figures import Report
from analysis.load import Results
from harness.core.config import TrackingConfig

log = logging.getLogger(__name__)


def tracking_of(results: Results) -> TrackingConfig:
    """The W&B project, entity and mode the trials themselves used (their records' config)."""
    config = next(iter(results.records.values())).config
    return TrackingConfig.model_validate(config.get("tracking", {}))


def log_report(results: Results, report: Report, group: str, tracking: TrackingConfig) -> Path:
    """Log the report as one ``analysis`` run in ``group``; returns the run's local folder."""
    import wandb

    run = wandb.init(project=tracking.project, entity=tracking.entity, group=group, job_type="analysis",
                     name=f"{group}-analysis", tags=["analysis"], mode=tracking.mode, dir=str(report.out),
                     config={"trials": len(results.trials), "variants": sorted(results.trials["variant"].unique())},
                     reinit="finish_previous")
    logged = {}
    for _, paths, _ in report.entries:  # every table of the report (one setting's, or each setting's and across them)
        logged |= {f"tables/{path.stem}": wandb.Table(dataframe=pd.read_csv(path)) for path in paths
                   if path.suffix == ".csv"}
    for title, paths, _ in report.entries:
        logged |= {f"figures/{path.stem}": wandb.Image(str(path), caption=title) for path in paths if path.suffix == ".png"}
    run.log(logged)
    artifact = wandb.Artifact(f"{group}-report", type="report", description="report.md, its tables and figures")
    artifact.add_file(str(report.out / "report.md"))
    for _, paths, _ in report.entries:
        for path in paths:
            artifact.add_file(str(path), name=path.name)
    run.log_artifact(artifact)
    folder = Path(run.dir).parent
    run.finish()
    log.info("W&B analysis run %s-analysis in group %s (%s): %s", group, group, tracking.mode, folder)
    return folder
