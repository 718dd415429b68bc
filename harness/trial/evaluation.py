"""The evaluation of a finished trial: student, EMA teacher, temperature scaling, WiSE-FT and the spectrum.

``evaluate_trial`` gives the record's ``tests``, ``teacher``, ``temperature_scaled``, ``wise_ft``,
``spectrum`` and ``summary`` (the keys ``harness.core.summary_keys`` predicts from the config).
Each model's image features are computed once per set and shared by its heads, the temperature
fit and the spectrum. In a multi-process trial every rank runs it: each encodes its share of every
set (``image_features``), all get every row and compute the same reports, and rank 0 writes them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from harness.core.config import RunConfig
from harness.core.metrics import CalibrationUncertainty, embedding_spectrum
from harness.core.summary_keys import teacher_evaluated
from harness.data import Benchmark
from harness.models.clip import classifier_head, create_model
from harness.trial.set_reports import (
    head_logits,
    image_features,
    set_report,
    set_report_with_uncertainty,
)
from harness.trial.posthoc import fit_temperature, interpolate_weights
from harness.trial.trainer import Trainer


def _evaluation_sets(benchmark: Benchmark) -> dict[str, Dataset]:
    return {"val": benchmark.val, **benchmark.tests}


class _Evaluation:
    """The reports of one model (student, teacher or temperature-scaled) on every set, and its summary keys."""

    def __init__(self, logits: dict[str, torch.Tensor], sets: dict[str, Dataset], config: RunConfig,
                 temperature: float = 1.0, uncertainty: bool = True):
        n_bins, resamples = config.eval.n_bins, config.eval.bootstrap if uncertainty else 0
        self.reports: dict[str, dict] = {}
        self.uncertainty: dict[str, CalibrationUncertainty] = {}
        for name, dataset in sets.items():  # the temperature divides the logits before any projection onto a set's classes
            scaled = logits[name] / temperature
            if resamples and name != "val":
                self.reports[name], self.uncertainty[name] = set_report_with_uncertainty(
                    scaled, dataset, n_bins, resamples, config.eval.floor_draws)
            else:
                self.reports[name] = set_report(scaled, dataset, n_bins)

    def summary(self, benchmark: Benchmark, prefix: str = "") -> dict[str, float]:
        """ID and OOD-mean metrics; with uncertainty, the ECE intervals and the noise floors too."""
        reports, ood, id_test = self.reports, benchmark.ood_tests, benchmark.id_test
        ood_mean = lambda key: float(np.mean([reports[name][key] for name in ood]))  # noqa: E731
        summary = {"val_acc": reports["val"]["acc"], "val_ece": reports["val"]["ece"], "val_nll": reports["val"]["nll"]}
        for key in ("acc", "ece", "nll", "brier"):
            summary |= {f"id_{key}": reports[id_test][key], f"ood_{key}": ood_mean(key)}
        if self.uncertainty:
            ood_resamples = np.mean([self.uncertainty[name].resamples for name in ood], axis=0)
            low, high = np.quantile(ood_resamples, [0.025, 0.975])
            summary |= {"id_ece_ci_low": self.uncertainty[id_test].ci[0], "id_ece_ci_high": self.uncertainty[id_test].ci[1],
                        "ood_ece_ci_low": float(low), "ood_ece_ci_high": float(high),
                        "id_ece_floor": self.uncertainty[id_test].floor, "ood_ece_floor": ood_mean("ece_floor")}
        return {f"{prefix}{key}": value for key, value in summary.items()}


def _all_features(trainer: Trainer, model: torch.nn.Module, sets: dict[str, Dataset]) -> dict[str, torch.Tensor]:
    return {name: image_features(model, dataset, trainer.config.eval.batch_size, trainer.env)
            for name, dataset in sets.items()}


def _logits(head: torch.nn.Module, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: head_logits(head, f) for name, f in features.items()}


def _pretrained_model(trainer: Trainer) -> torch.nn.Module:
    model = create_model(trainer.config.model.name, None)[0]
    model.load_state_dict(trainer.pretrained_state)
    return model.to(trainer.device)


def evaluate_trial(trainer: Trainer) -> dict[str, Any]:
    """Every evaluation of a finished trial: the record's evaluation sections and its summary (on every rank)."""
    config, benchmark = trainer.config, trainer.benchmark
    sets = _evaluation_sets(benchmark)
    features = _all_features(trainer, trainer.model, sets)
    logits = _logits(trainer.evaluation_head(trainer.model), features)
    student = _Evaluation(logits, sets, config)
    summary = student.summary(benchmark)
    result: dict[str, Any] = {"tests": student.reports, "teacher": None, "temperature_scaled": None, "wise_ft": []}

    if config.eval.temperature_scaling:
        temperature = fit_temperature(logits["val"], benchmark.val.labels)
        scaled = _Evaluation(logits, sets, config, temperature)
        result["temperature_scaled"] = {"temperature": temperature, "tests": scaled.reports}
        summary |= {"ts_temperature": temperature} | scaled.summary(benchmark, prefix="ts_")

    if teacher_evaluated(config):
        teacher = trainer.teacher.model
        teacher_head = classifier_head(teacher, trainer.tokenizer, benchmark.classnames, benchmark.zeroshot_templates)
        evaluation = _Evaluation(_logits(teacher_head, _all_features(trainer, teacher, sets)), sets, config)
        result["teacher"] = {"tests": evaluation.reports}
        summary |= evaluation.summary(benchmark, prefix="teacher_")

    pretrained = _pretrained_model(trainer) if trainer.method.trains else trainer.model
    result["wise_ft"] = _wise_ft(trainer, sets, pretrained)

    id_features = features[benchmark.id_test].cpu()
    pretrained_features = (image_features(pretrained, sets[benchmark.id_test], config.eval.batch_size, trainer.env).cpu()
                           if trainer.method.trains else id_features)
    spectra = {
        "features": f"L2-normalised image embeddings of the ID test set ({benchmark.id_test}), centred",
        "pretrained": embedding_spectrum(pretrained_features),
        "finetuned": embedding_spectrum(id_features),
    }
    result["spectrum"] = spectra
    summary |= {
        "sigma_min": spectra["finetuned"]["sigma_min"],
        "sigma_min_pretrained": spectra["pretrained"]["sigma_min"],
        "sigma_min_rel": spectra["finetuned"]["sigma_min_rel"],
        "sigma_min_rel_pretrained": spectra["pretrained"]["sigma_min_rel"],
        "effective_rank": spectra["finetuned"]["effective_rank"],
    }
    result["summary"] = summary
    return result


def _wise_ft(trainer: Trainer, sets: dict[str, Dataset], pretrained: torch.nn.Module) -> list[dict]:
    """WiSE-FT: for each alpha, the image tower (1 - a) * pre-trained + a * fine-tuned and the head
    (1 - a) * zero-shot head + a * fine-tuned head, as the released CaRot/FLYP code does.

    ``eval.wise_ft=all_weights``: contrastive methods blend the whole model, text tower and logit
    scale included, and rebuild their head from the blended text tower.
    """
    config, benchmark = trainer.config, trainer.benchmark
    if not config.eval.wise_alphas or not trainer.method.trains:
        return []
    finetuned_state = {k: v.cpu() for k, v in trainer.model.state_dict().items()}
    zeroshot_head = classifier_head(pretrained, trainer.tokenizer, benchmark.classnames, benchmark.zeroshot_templates)
    finetuned_head = trainer.evaluation_head(trainer.model)
    rebuild_head = trainer.method.head == "zeroshot" and config.eval.wise_ft == "all_weights"
    mixed = create_model(config.model.name, None)[0].to(trainer.device)
    curve = []
    for alpha in config.eval.wise_alphas:
        blended = interpolate_weights(trainer.pretrained_state, finetuned_state, alpha)
        if not rebuild_head:  # the image tower only: the text tower serves the heads, which are blended themselves
            blended = {k: v if k.startswith("visual.") else trainer.pretrained_state[k] for k, v in blended.items()}
        mixed.load_state_dict(blended)
        if rebuild_head:
            head = trainer.evaluation_head(mixed)
        else:
            head = torch.nn.Linear(finetuned_head.in_features, finetuned_head.out_features, device=trainer.device)
            head.load_state_dict(interpolate_weights(zeroshot_head.state_dict(), finetuned_head.state_dict(), alpha))
        evaluation = _Evaluation(_logits(head, _all_features(trainer, mixed, sets)), sets, config,
                                 uncertainty=False)
        compact = {name: {k: r[k] for k in ("acc", "ece", "nll")} for name, r in evaluation.reports.items()}
        curve.append({"alpha": alpha, "summary": evaluation.summary(benchmark), "tests": compact})
    return curve
