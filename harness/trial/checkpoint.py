"""What a trial's training needs to continue exactly where it stopped: ``RUN_DIR/checkpoint.pt``.

Batches and captions follow from (seed, step) alone (``harness.trial.batches``), so the checkpoint
holds only what changes as training goes: the weights, the optimizer and loss-scaler state, the
step and stage, the global RNG, the per-epoch history, and the EMA teacher with every rank's log of
its caption encodings (replayed on resume, so that the teacher's caption cache is rebuilt as it was).
Written atomically by rank 0 and tied to its config by the config digest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from harness.core.config import RunConfig, belongs_to, trial_digest
from harness.core.errors import UsageError
from harness.core.storage import atomic_torch_save


@dataclass
class Checkpoint:
    step: int
    stage: int  # the index of the stage the optimizer state belongs to
    model: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    torch_rng: torch.Tensor
    history: list[dict]
    teacher: dict[str, torch.Tensor] | None = None
    teacher_captions: list | None = None  # per rank, in rank order (harness.trial.ema)

    def save(self, path: Path, config: RunConfig) -> None:
        atomic_torch_save(asdict(self) | {"config_digest": trial_digest(config)}, path)

    @classmethod
    def load(cls, path: Path, config: RunConfig) -> Checkpoint | None:
        """The checkpoint of ``config`` at ``path``, if any; one of another config is an error."""
        if not path.exists():
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not belongs_to(state["config_digest"], config):
            raise UsageError(f"{path} belongs to another config; use another run_dir")
        return cls(**{field.name: state.get(field.name) for field in fields(cls)})
