"""The method registry: what each fine-tuning method trains, with which objective, and its loss defaults.

Pure data, so that configs can be validated without building anything. CaRot's components are
loss weights, so ablation rows (flyp, flyp+LS, +OC, +SD, full CaRot) are just configs of
``flyp`` (label smoothing only) and ``carot`` (every term).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Trains = Literal["head", "image+head", "all"]
Objective = Literal["cross_entropy", "contrastive"]

CAROT_TERMS = ("oc_weight", "sd_weight", "cross_weight")


@dataclass(frozen=True)
class Stage:
    """One training phase: which parameters move and what they minimise."""

    trains: Trains
    objective: Objective


@dataclass(frozen=True)
class Method:
    name: str
    stages: tuple[Stage, ...]
    head: Literal["zeroshot", "linear"]  # zeroshot: rebuilt from the (fine-tuned) text encoder at evaluation
    loss_defaults: dict[str, float] = field(default_factory=dict)
    carot_terms: bool = False  # accepts λ_OC, λ_SD, λ_cross

    @property
    def trains(self) -> bool:
        return bool(self.stages)

    @property
    def contrastive_only(self) -> bool:
        """Every stage is contrastive: no class labels are needed beyond captions, and no trained head
        (what a caption table, which has no labels, supports)."""
        return all(stage.objective == "contrastive" for stage in self.stages)

    def stage_epochs(self, epochs: int, lp_epochs: int) -> list[int]:
        """Epochs of each stage: the linear probe that opens lp-ft runs ``lp_epochs``, every other stage ``epochs``."""
        return [lp_epochs if len(self.stages) > 1 and i == 0 else epochs for i in range(len(self.stages))]


_LINEAR_PROBE = Stage("head", "cross_entropy")
_FULL_FT = Stage("image+head", "cross_entropy")
_CONTRASTIVE = Stage("all", "contrastive")

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("zeroshot", (), "zeroshot"),  # the pre-trained model and its zero-shot head; no training
        Method("lp", (_LINEAR_PROBE,), "linear"),  # linear probe on frozen image features, head initialised zero-shot
        Method("ft", (_FULL_FT,), "linear"),  # cross-entropy fine-tuning of image encoder + zero-shot-initialised head
        Method("lpft", (_LINEAR_PROBE, _FULL_FT), "linear"),  # linear probe (optim.lp_epochs), then full fine-tuning
        Method("flyp", (_CONTRASTIVE,), "zeroshot"),  # FLYP: CLIP's contrastive loss on (image, class caption) pairs
        Method(
            "carot",
            (_CONTRASTIVE,),
            "zeroshot",  # CaRot: contrastive loss + orthogonality + self-distillation from an EMA teacher
            # The paper's / released ImageNet weights (lambda_OC 0.2, lambda_SD 1.5); lambda_cross is
            # 0.05 in the released script but off by default here; label smoothing off as released.
            loss_defaults={"oc_weight": 0.2, "sd_weight": 1.5, "cross_weight": 0.0, "label_smoothing": 0.0},
            carot_terms=True,
        ),
    )
}


def register_method(method: Method) -> Method:
    """Make ``method`` available as ``method=NAME`` (a plugin's own method: stages, head and loss defaults).

    Its stages are those the trainer runs (``Stage``: which parameters train, with which objective); a
    name already registered is refused, so a plugin cannot silently change a built-in method.
    """
    if method.name in METHODS and METHODS[method.name] != method:
        raise ValueError(f"method {method.name!r} is registered already")
    METHODS[method.name] = method
    return method
