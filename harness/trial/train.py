"""One trial: fine-tune, evaluate, record.

    python -m harness.train [CONFIG.yaml] [key=value ...]

``run(config)`` seeds everything, builds the model from its pre-trained weights, trains the
method's stages, evaluates every test set (student, EMA teacher for CaRot, temperature-scaled,
WiSE-FT), measures the ID embedding spectrum, saves weights as ``state_dict``s and writes
``RUN_DIR/record.json`` atomically. A run killed at any moment and started again with the same
run directory continues from ``RUN_DIR/checkpoint.pt``; all randomness is derived from
(seed, epoch, step), so it ends with the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import math
import platform
import statistics
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

import harness
from harness.core.config import LossConfig, RunConfig, config_hash, resolve_run_dir
from harness.core.errors import UsageError
from harness.core.methods import METHODS, Stage
from harness.core.metrics import CalibrationUncertainty, embedding_spectrum
from harness.core.record import SCHEMA, RunRecord
from harness.core.storage import atomic_torch_save
from harness.core.summary_keys import has_teacher, teacher_evaluated
from harness.data import Benchmark, load_benchmark, require_known_benchmark
from harness.data.pipeline import clip_preprocess
from harness.models.clip import (
    classifier_head,
    create_model,
    encode_images,
    encode_texts,
    require_known_model,
    text_projection,
    visual_projection,
)
from harness.trial.batches import TrainBatch, training_batches
from harness.trial.callbacks import TrainCallbacks, TrialPruned
from harness.trial.compute import autocast, check_precision, grad_scaler, resolve_device
from harness.trial.distributed import (
    SINGLE_PROCESS,
    DistributedEnvironment,
    Gather,
    agree,
    barrier,
    destroy_process_group,
    gather_features,
    identity,
    init_process_group,
)
from harness.trial.ema import EMATeacher, momentum_at
from harness.trial.evaluate import (
    format_table,
    head_logits,
    image_features,
    predict_logits,
    set_report,
    set_report_with_uncertainty,
)
from harness.trial.losses import (
    contrastive_loss,
    cross_norm_penalty,
    distillation_loss,
    orthogonality_penalty,
)
from harness.trial.optim import cosine_with_warmup, decay_groups, set_learning_rate
from harness.trial.posthoc import fit_temperature, interpolate_weights
from harness.trial.pretrain import embedded_weights


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the trial stops and is recorded as failed."""


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def contrastive_terms(
    forward: torch.nn.Module,
    model: torch.nn.Module,
    images: torch.Tensor,
    tokens: torch.Tensor,
    caption_index: torch.Tensor,
    labels: torch.Tensor,
    loss: LossConfig,
    teacher: torch.nn.Module | None = None,
    gather: Gather = identity,
) -> dict[str, torch.Tensor]:
    """The unweighted loss terms of one contrastive batch (FLYP / CaRot), over the *whole* batch.

    ``images`` are this process's rows, ``tokens`` its unique captions and ``caption_index`` each
    image's caption among them (identical captions are encoded once: exact, rows are independent);
    ``labels`` are the whole batch's. ``forward`` is ``model`` or its DDP wrapper (the features must
    come from its forward for DDP to average the gradients). ``gather`` concatenates every process's
    rows (``harness.trial.distributed.gather_features``; identity in a single process), so the logits,
    same-class targets and teacher logits are those of the whole batch on every process.
    """
    image_features, text_features, scale = forward(images, tokens)[:3]  # open_clip CLIP: normalised features, exp(scale)
    # logits and losses in fp32 under autocast: bf16 cosines (8 bits of mantissa) would blur a 1000-way softmax
    image_features, text_features = gather(image_features.float()), gather(text_features[caption_index].float())
    targets = None
    if loss.same_class_positives:
        same = (labels[:, None] == labels[None, :]).float()
        targets = same / same.sum(dim=1, keepdim=True)
    terms = {"contrastive": contrastive_loss(image_features, text_features, scale, loss.label_smoothing, targets)}
    if loss.oc_weight > 0:
        terms["oc"] = orthogonality_penalty(visual_projection(model))
    if loss.cross_weight > 0:
        terms["cross"] = cross_norm_penalty(visual_projection(model), text_projection(model))
    if teacher is not None:
        with torch.inference_mode():  # cheaper than no_grad: no version counters, no views tracked
            teacher_images = encode_images(teacher, images)
            teacher_texts = encode_texts(teacher, tokens)[caption_index]
        # normal tensors, so that they can be gathered and autograd may save the logits as a target
        teacher_images, teacher_texts = gather(teacher_images.float()), gather(teacher_texts.float())
        teacher_logits = teacher.logit_scale.exp().detach() * teacher_images @ teacher_texts.T
        student_logits = scale * image_features @ text_features.T
        terms["sd"] = distillation_loss(student_logits, student_logits.T, teacher_logits, teacher_logits.T)
    return terms


def weighted_loss(terms: dict[str, torch.Tensor], loss: LossConfig) -> torch.Tensor:
    """L = sum of the terms, λ_OC, λ_cross and λ_SD applied."""
    weights = {"oc": loss.oc_weight, "cross": loss.cross_weight, "sd": loss.sd_weight}
    return sum(weights.get(name, 1.0) * value for name, value in terms.items())


class Trainer:
    """The state of one trial's training (model, head, teacher, optimizer, step) and its loop.

    With a multi-process ``env``, each process trains on its share of every batch through a
    ``DistributedDataParallel`` wrapper (contrastive stages only) and only the main process saves
    checkpoints and reports to the callbacks. Model, head and teacher live on ``device``; forward
    passes run under the configured autocast (``compute.precision``).
    """

    def __init__(self, config: RunConfig, benchmark: Benchmark, run_dir: Path, callbacks: TrainCallbacks,
                 env: DistributedEnvironment = SINGLE_PROCESS, device: torch.device = torch.device("cpu")):
        self.config, self.benchmark, self.run_dir, self.callbacks = config, benchmark, run_dir, callbacks
        self.env, self.device = env, device
        self.scaler = grad_scaler(config.compute, device)
        self.gather: Gather = gather_features if env.is_distributed else identity
        self.method = METHODS[config.method]
        self.model, self.tokenizer = create_model(config.model.name, embedded_weights(config.model))
        self.pretrained_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}  # on the CPU
        self.model.to(device)
        self.forward: torch.nn.Module = self.model  # the DDP wrapper of a distributed contrastive stage
        benchmark.set_transforms(clip_preprocess(self.model, train=True), clip_preprocess(self.model))
        self.head = classifier_head(self.model, self.tokenizer, benchmark.classnames, benchmark.zeroshot_templates)
        self.teacher = EMATeacher(self.model) if has_teacher(config) else None
        self.batches = training_batches(benchmark, config.optim.batch_size, config.seed, env, device,
                                        config.data.num_workers)
        self.steps_per_epoch = self.batches.steps_per_epoch
        if self.method.trains and self.steps_per_epoch == 0:
            raise UsageError(f"optim.batch_size ({config.optim.batch_size}) exceeds the training set ({len(benchmark.train)})")
        if benchmark.info.get("caption_table") and self.method.trains:
            if not self.method.contrastive_only or config.loss.same_class_positives:
                raise UsageError(f"data.captions: a caption table has no class labels, which {config.method}"
                                 f"{' with loss.same_class_positives' if config.loss.same_class_positives else ''} needs")
        if env.is_distributed:
            if config.optim.batch_size % env.world_size:
                raise UsageError(f"optim.batch_size ({config.optim.batch_size}) must be divisible by the"
                                 f" number of processes ({env.world_size})")
            if not self.method.contrastive_only:
                raise UsageError(f"multi-process training supports contrastive methods only, not {config.method}")
        self.stage_steps = [self._epochs(stage, i) * self.steps_per_epoch for i, stage in enumerate(self.method.stages)]
        self.total_steps = sum(self.stage_steps)
        self.ema_period = config.ema.period_steps(self.total_steps)
        self.step = 0
        self.history: list[dict] = []
        self.step_seconds: list[float] = []
        self.token_cache: dict[str, torch.Tensor] = {}
        self.checkpoint_path = run_dir / "checkpoint.pt"
        self._resumed_optimizer: tuple[int, dict] | None = None

    def _epochs(self, stage: Stage, index: int) -> int:
        lp_first = len(self.method.stages) > 1 and index == 0
        return self.config.optim.lp_epochs if lp_first else self.config.optim.epochs

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, stage_index: int, optimizer: torch.optim.Optimizer) -> None:
        if not self.env.is_main:  # every process holds the same state; one writer
            return
        state = {
            "step": self.step,
            "config_digest": config_hash(self.config),
            "model": self.model.state_dict(),
            "head": self.head.state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher else None,
            "stage": stage_index,
            "optimizer": optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
        }
        atomic_torch_save(state, self.checkpoint_path)

    def load_checkpoint(self) -> bool:
        if not self.checkpoint_path.exists():
            return False
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        if state["config_digest"] != config_hash(self.config):
            raise UsageError(f"{self.checkpoint_path} belongs to another config; use another run_dir")
        self.model.load_state_dict(state["model"])
        self.head.load_state_dict(state["head"])
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.history = state["step"], state["history"]
        self._resumed_optimizer = (state["stage"], state["optimizer"])
        return True

    # -- one step ----------------------------------------------------------------------------
    def _tokens(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in captions if c not in self.token_cache]
        if missing:
            self.token_cache.update(zip(missing, self.tokenizer(missing)))
        return torch.stack([self.token_cache[c] for c in captions]).to(self.device)

    def _caption_tokens(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens of the unique captions and, per image, the index of its caption among them.

        Identical captions are encoded once (exact: rows of a batch are independent), which the
        template captions of a class-labelled batch make frequent.
        """
        unique = list(dict.fromkeys(captions))
        position = {caption: i for i, caption in enumerate(unique)}
        return self._tokens(unique), torch.tensor([position[c] for c in captions], device=self.device)

    def _contrastive_terms(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        """The terms of the whole batch (``batch.labels``) from this process's rows of it."""
        tokens, caption_index = self._caption_tokens(batch.captions)
        teacher = self.teacher.model if self.teacher is not None else None
        return contrastive_terms(self.forward, self.model, batch.images, tokens, caption_index, batch.labels,
                                 self.config.loss, teacher, self.gather)

    def _cross_entropy_terms(self, stage: Stage, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if stage.trains == "head":
            with torch.no_grad():
                features = encode_images(self.model, images)
        else:
            features = encode_images(self.model, images)
        logits = self.head(features)
        return {"cross_entropy": F.cross_entropy(logits, labels, label_smoothing=self.config.loss.label_smoothing)}

    # -- the loop ----------------------------------------------------------------------------
    def _trainable(self, stage: Stage) -> list[tuple[str, torch.nn.Parameter]]:
        head = [(f"head.{n}", p) for n, p in self.head.named_parameters()]
        if stage.trains == "head":
            chosen = head
        elif stage.trains == "image+head":
            chosen = [(n, p) for n, p in self.model.named_parameters() if n.startswith("visual.")] + head
        else:
            chosen = list(self.model.named_parameters())
        keep = {id(p) for _, p in chosen}
        for param in [*self.model.parameters(), *self.head.parameters()]:
            param.requires_grad_(id(param) in keep)
        return chosen

    def _end_epoch(self, epoch: int) -> None:
        """Rank 0 evaluates (and its callbacks may prune); every rank learns whether to stop."""
        pruned: TrialPruned | None = None
        if self.env.is_main:
            try:
                self._evaluate_epoch(epoch)
            except TrialPruned as exc:
                pruned = exc
        if agree(pruned is not None):
            raise pruned or TrialPruned(f"pruned at epoch {epoch} (rank 0's pruner)")

    def _evaluate_epoch(self, epoch: int) -> None:
        head = self.evaluation_head(self.model)
        val = self.benchmark.val
        report = set_report(predict_logits(self.model, head, val, self.config.eval.batch_size), val, self.config.eval.n_bins)
        metrics = {"epoch": epoch, "step": self.step, "val_acc": report["acc"], "val_ece": report["ece"], "val_nll": report["nll"]}
        self.history.append(metrics)
        self.callbacks.on_epoch(epoch, metrics)

    def train(self, progress: bool = True) -> None:
        optim_config = self.config.optim
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.config.method,
                   disable=not progress or not self.total_steps)
        stage_start = 0
        for stage_index, (stage, stage_steps) in enumerate(zip(self.method.stages, self.stage_steps)):
            stage_end = stage_start + stage_steps
            if self.step >= stage_end:
                stage_start = stage_end
                continue
            optimizer = self.make_optimizer(stage)
            if self._resumed_optimizer and self._resumed_optimizer[0] == stage_index:
                optimizer.load_state_dict(self._resumed_optimizer[1])
            self._resumed_optimizer = None
            self.model.train()
            while self.step < stage_end:
                self.train_step(stage, optimizer, self.step - stage_start, stage_steps)
                bar.update()
                if self.step % self.steps_per_epoch == 0 and self.config.eval.every_epoch:
                    self._end_epoch(self.step // self.steps_per_epoch)
                if self.step % optim_config.checkpoint_every == 0 and self.step < self.total_steps:
                    self.save_checkpoint(stage_index, optimizer)
                    barrier()
            stage_start = stage_end
        bar.close()

    def make_optimizer(self, stage: Stage) -> torch.optim.Optimizer:
        """AdamW over what ``stage`` trains (and nothing else requires grad)."""
        groups = decay_groups(self._trainable(stage), self.config.optim.weight_decay, self.config.optim.weight_decay_on)
        if self.env.is_distributed:  # after _trainable: DDP registers the parameters that require grad
            from torch.nn.parallel import DistributedDataParallel

            self.forward = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return torch.optim.AdamW(groups, lr=self.config.optim.lr)

    def train_step(self, stage: Stage, optimizer: torch.optim.Optimizer, stage_step: int, stage_steps: int) -> None:
        """One optimizer step on the batch that (seed, global step) selects; advances ``self.step``."""
        started = time.perf_counter()
        optim_config = self.config.optim
        batch = self.batches.at(self.step)
        factor = cosine_with_warmup(stage_step, stage_steps, optim_config.warmup_steps)
        set_learning_rate(optimizer, optim_config.lr, factor)
        with autocast(self.config.compute, self.device):
            if stage.objective == "contrastive":
                terms = self._contrastive_terms(batch)
            else:  # single-process only: the local rows are the whole batch
                terms = self._cross_entropy_terms(stage, batch.images, batch.labels)
        loss = weighted_loss(terms, self.config.loss)
        if not torch.isfinite(loss):
            values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
            raise NonFiniteLossError(f"non-finite loss at step {self.step} ({values})")
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if optim_config.grad_clip:
            self.scaler.unscale_(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, optim_config.grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        if optim_config.logit_scale_max is not None:  # open_clip's clamp; the released CaRot code has none
            with torch.no_grad():
                self.model.logit_scale.clamp_(max=math.log(optim_config.logit_scale_max))
        if self.teacher is not None and (self.step + 1) % self.ema_period == 0:
            ema = self.config.ema
            self.teacher.update(self.model, momentum_at(self.step, self.total_steps, ema.m_src, ema.m_tar, ema.warmup))
        self.step_seconds.append(time.perf_counter() - started)
        self.step += 1
        if self.env.is_main:
            self.callbacks.on_step(self.step - 1, {k: v.item() for k, v in terms.items()} | {"loss": loss.item()},
                                   optim_config.lr * factor)

    # -- evaluation --------------------------------------------------------------------------
    def evaluation_head(self, model: torch.nn.Module) -> torch.nn.Linear:
        """Contrastive methods re-derive the zero-shot head from their text encoder; others use the trained head."""
        if self.method.head == "zeroshot":
            return classifier_head(model, self.tokenizer, self.benchmark.classnames, self.benchmark.zeroshot_templates)
        return self.head


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


def _all_features(model: torch.nn.Module, sets: dict[str, Dataset], batch_size: int) -> dict[str, torch.Tensor]:
    return {name: image_features(model, dataset, batch_size) for name, dataset in sets.items()}


def _logits(head: torch.nn.Module, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: head_logits(head, f) for name, f in features.items()}


def _pretrained_model(trainer: Trainer) -> torch.nn.Module:
    model = create_model(trainer.config.model.name, None)[0]
    model.load_state_dict(trainer.pretrained_state)
    return model.to(trainer.device)


def evaluate_trial(trainer: Trainer) -> dict[str, Any]:
    """Every evaluation of a finished trial: student, teacher, temperature scaling, WiSE-FT and spectrum.

    Each model's image features are computed once per set and shared by its heads, the temperature
    fit and the spectrum.
    """
    config, benchmark = trainer.config, trainer.benchmark
    sets, batch = _evaluation_sets(benchmark), config.eval.batch_size
    features = _all_features(trainer.model, sets, batch)
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
        evaluation = _Evaluation(_logits(teacher_head, _all_features(teacher, sets, batch)), sets, config)
        result["teacher"] = {"tests": evaluation.reports}
        summary |= evaluation.summary(benchmark, prefix="teacher_")

    pretrained = _pretrained_model(trainer) if trainer.method.trains else trainer.model
    result["wise_ft"] = _wise_ft(trainer, sets, pretrained)

    id_features = features[benchmark.id_test].cpu()
    pretrained_features = image_features(pretrained, sets[benchmark.id_test], batch).cpu() if trainer.method.trains else id_features
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
        evaluation = _Evaluation(_logits(head, _all_features(mixed, sets, config.eval.batch_size)), sets, config,
                                 uncertainty=False)
        compact = {name: {k: r[k] for k in ("acc", "ece", "nll")} for name, r in evaluation.reports.items()}
        curve.append({"alpha": alpha, "summary": evaluation.summary(benchmark), "tests": compact})
    return curve


def _versions() -> dict[str, str]:
    import open_clip

    return {"harness": harness.__version__, "torch": torch.__version__, "open_clip": open_clip.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _base_record(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "status": "running",
        "error": None,
        "config": config.model_dump(mode="json"),
        "config_digest": config_hash(config),
        "method": config.method,
        "versions": _versions(),
        "git_commit": _git_commit(),
        "paths": {"run_dir": str(run_dir), "record": str(run_dir / "record.json")},
    }


def _finished_record(run_dir: Path, config: RunConfig) -> RunRecord | None:
    """The existing successful record of this exact config, if any; another config's record is an error."""
    path = run_dir / "record.json"
    if not path.exists():
        return None
    record = RunRecord.read(path)
    if record.config_digest != config_hash(config):
        raise UsageError(f"{run_dir} holds another trial (config digest {record.config_digest}); use another run_dir")
    return record if record.status == "ok" else None


def run(config: RunConfig, callbacks: TrainCallbacks | None = None, progress: bool = True,
        env: DistributedEnvironment = SINGLE_PROCESS) -> RunRecord:
    """Run (or resume, or return the finished record of) one trial; always leaves a record.json.

    Bad input (``UsageError``) propagates; any other error is recorded as ``status: failed``. With a
    multi-process ``env`` every rank trains its share of each batch and only rank 0 evaluates and
    writes; the other ranks return their (unevaluated, unwritten) record.
    """
    run_dir = resolve_run_dir(config)
    finished = _finished_record(run_dir, config)
    if finished is not None:
        return finished
    require_known_model(config.model.name, config.model.pretrained)
    require_known_benchmark(config.data.benchmark)
    _seed_everything(config.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = _base_record(config, run_dir) | {"rank": env.rank, "world_size": env.world_size}
    progress = progress and env.is_main
    device = resolve_device(config.compute, env)
    check_precision(config.compute, device)
    benchmark = load_benchmark(config.data.benchmark, data=config.data, progress=progress)
    record |= {"benchmark": benchmark.name, "id_test": benchmark.id_test, "ood_tests": benchmark.ood_tests,
               "device": str(device)}
    init_process_group(env, device)
    try:
        return _train_and_record(config, benchmark, run_dir, callbacks or TrainCallbacks(), progress, env, device, record)
    finally:
        destroy_process_group()


def _train_and_record(config: RunConfig, benchmark: Benchmark, run_dir: Path, callbacks: TrainCallbacks,
                      progress: bool, env: DistributedEnvironment, device: torch.device, record: dict[str, Any]) -> RunRecord:
    trainer = Trainer(config, benchmark, run_dir, callbacks, env, device)
    started = time.perf_counter()
    try:
        record["resumed_from_step"] = trainer.step if trainer.load_checkpoint() else None
        trainer.train(progress)
        train_seconds = time.perf_counter() - started
        if not env.is_main:
            return RunRecord.model_validate(record | {"status": "ok"})
        evaluation = evaluate_trial(trainer)
        paths = _save_weights(trainer, run_dir)
    except UsageError:
        raise
    except TrialPruned:
        return _written(RunRecord.model_validate(record | {"status": "pruned", "pruned_at_step": trainer.step,
                                                          "history": trainer.history}), env)
    except Exception as exc:  # the trial failed; say why, keep the checkpoint for a later resume
        record |= {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "failed_at_step": trainer.step}
        if env.is_main:
            (run_dir / "error.txt").write_text(traceback.format_exc())
            record["paths"]["error"] = str(run_dir / "error.txt")
        return _written(RunRecord.model_validate(record), env)
    step_seconds = trainer.step_seconds
    record |= evaluation | {
        "status": "ok",
        "history": trainer.history,
        "timings": {
            "train_s": train_seconds,
            "eval_s": time.perf_counter() - started - train_seconds,
            "steps": trainer.total_steps,
            "ema_period_steps": trainer.ema_period if trainer.teacher is not None else None,
            "step_s_median": statistics.median(step_seconds) if step_seconds else None,
        },
    }
    record["paths"] |= paths
    finished = _written(RunRecord.model_validate(record), env)
    trainer.checkpoint_path.unlink(missing_ok=True)  # the final weights supersede it
    return finished


def _written(record: RunRecord, env: DistributedEnvironment) -> RunRecord:
    """Rank 0 writes the record; every rank returns it."""
    if env.is_main:
        record.write(Path(record.paths.record))
    return record


def _save_weights(trainer: Trainer, run_dir: Path) -> dict[str, str]:
    paths = {"model": str(atomic_torch_save(trainer.model.state_dict(), run_dir / "model.pt"))}
    if trainer.method.head == "linear":
        paths["head"] = str(atomic_torch_save(trainer.head.state_dict(), run_dir / "head.pt"))
    if trainer.teacher is not None:
        paths["teacher"] = str(atomic_torch_save(trainer.teacher.state_dict(), run_dir / "teacher.pt"))
    return paths


def format_record(record: RunRecord) -> str:
    """The result table of a finished trial (student; teacher and temperature-scaled ECE when present)."""
    lines = [format_table({name: report.model_dump(exclude_none=True) for name, report in record.tests.items()},
                           record.id_test)]
    summary = record.summary
    lines.append(
        f"summary: val acc {summary['val_acc']:.2%} | ID acc {summary['id_acc']:.2%} ECE {summary['id_ece']:.4f}"
        f" | OOD acc {summary['ood_acc']:.2%} ECE {summary['ood_ece']:.4f} | sigma_min_rel {summary['sigma_min_rel']:.3g}"
        f" (pre-trained {summary['sigma_min_rel_pretrained']:.3g})"
    )
    if "ts_temperature" in summary:
        lines.append(f"temperature scaling: T={summary['ts_temperature']:.3f}, ID ECE {summary['ts_id_ece']:.4f},"
                     f" OOD ECE {summary['ts_ood_ece']:.4f}")
    if "teacher_id_acc" in summary:
        lines.append(f"EMA teacher: ID acc {summary['teacher_id_acc']:.2%} ECE {summary['teacher_id_ece']:.4f},"
                     f" OOD acc {summary['teacher_ood_acc']:.2%} ECE {summary['teacher_ood_ece']:.4f}")
    return "\n".join(lines)
