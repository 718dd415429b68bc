"""The training of one trial: a model, its data and an optimizer built from the config, and the loop.

``Trainer`` runs the method's stages step by step. Each step's batch and captions follow from
(seed, step) alone (``harness.trial.batches``) and the checkpoint holds everything else that
changes (``harness.trial.checkpoint``), so a resumed run continues exactly as it would have.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from harness.core.config import RunConfig
from harness.core.errors import UsageError
from harness.core.methods import METHODS, Stage
from harness.core.record import EpochThroughput
from harness.core.summary_keys import has_teacher
from harness.data import Benchmark
from harness.models.clip import ImageClassifier, classifier_head, create_model
from harness.trial.batches import CaptionTokens, training_batches
from harness.trial.callbacks import TrainCallbacks, TrialPruned
from harness.trial.checkpoint import Checkpoint
from harness.trial.compute import autocast, grad_scaler
from harness.trial.distributed import (
    SINGLE_PROCESS,
    DistributedEnvironment,
    Gather,
    agree,
    barrier,
    gather_features,
    gather_objects,
    identity,
    local_rows,
    mean_over_ranks,
    wrap_for_training,
)
from harness.trial.ema import EMATeacher, momentum_at
from harness.trial.set_reports import head_logits, image_features, set_report
from harness.trial.microbatches import MicroBatches
from harness.trial.optim import (
    clip_and_step,
    cosine_with_warmup,
    decay_groups,
    set_learning_rate,
)
from harness.trial.pretrain import embedded_weights
from harness.trial.throughput import ThroughputMeter


def _show_speed(bar: tqdm, throughput: EpochThroughput) -> None:
    """The progress bar's note: images per second of all processes, the share spent waiting for data, peak memory."""
    memory = f", peak {throughput.peak_memory_gb:.1f} GB" if throughput.peak_memory_gb is not None else ""
    bar.set_postfix_str(f"{throughput.samples_per_s:.0f} img/s, data wait {throughput.data_wait_share:.0%}{memory}",
                        refresh=False)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the trial stops and is recorded as failed."""


def _check_training(config: RunConfig, env: DistributedEnvironment, steps_per_epoch: int, train_size: int) -> None:
    """What the config alone cannot tell: the batch fits the training set and splits over the processes."""
    method, batch_size, world_size = METHODS[config.method], config.optim.batch_size, env.world_size
    if method.trains and steps_per_epoch == 0:
        raise UsageError(f"optim.batch_size ({batch_size}) exceeds the training set ({train_size})")
    parts = world_size * config.optim.accum_steps
    if batch_size % parts:
        raise UsageError(f"optim.batch_size ({batch_size}) must be divisible by the number of processes ({world_size}) "
                         f"x optim.accum_steps ({config.optim.accum_steps})")


def trainable_parameters(stage: Stage, model: torch.nn.Module, head: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The named parameters ``stage`` trains; they alone are left requiring grad."""
    named_head = [(f"head.{n}", p) for n, p in head.named_parameters()]
    if stage.trains == "head":
        chosen = named_head
    elif stage.trains == "image+head":
        chosen = [(n, p) for n, p in model.named_parameters() if n.startswith("visual.")] + named_head
    else:
        chosen = list(model.named_parameters())
    keep = {id(p) for _, p in chosen}
    for param in [*model.parameters(), *head.parameters()]:
        param.requires_grad_(id(param) in keep)
    return chosen


class Trainer:
    """The state of one trial's training (model, head, teacher, optimizer, step) and its loop.

    With a multi-process ``env``, each process trains and validates on its share of every batch and set
    (``DistributedDataParallel``); the main process alone saves checkpoints and reports to the callbacks.
    Model, head and teacher live on ``device``; forwards run under ``compute.precision``'s autocast.
    Sets read from files need the model's preprocessing first (``Benchmark.set_transforms``; ``run`` does it).
    """

    def __init__(self, config: RunConfig, benchmark: Benchmark, run_dir: Path, callbacks: TrainCallbacks,
                 env: DistributedEnvironment = SINGLE_PROCESS, device: torch.device = torch.device("cpu")):
        self.config, self.benchmark, self.callbacks, self.env, self.device = config, benchmark, callbacks, env, device
        self.method = METHODS[config.method]
        self.scaler = grad_scaler(config.compute, device)
        self.gather: Gather = gather_features if env.is_distributed else identity
        self.model, self.tokenizer = create_model(config.model.name, embedded_weights(config.model))
        self.pretrained_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}  # on the CPU
        self.model.to(device)
        self.trained: torch.nn.Module = self.model  # what the stage trains, or its DDP wrapper (make_optimizer)
        self.head = classifier_head(self.model, self.tokenizer, benchmark.classnames, benchmark.zeroshot_templates)
        self.teacher = EMATeacher(self.model) if has_teacher(config) else None
        self.batches = training_batches(benchmark, config.optim.batch_size, config.seed, env, device,
                                        config.data.num_workers)
        self.captions = CaptionTokens(self.tokenizer, device)
        self.steps_per_epoch = self.batches.steps_per_epoch
        _check_training(config, env, self.steps_per_epoch, len(benchmark.train))
        self.stage_steps = [epochs * self.steps_per_epoch
                            for epochs in self.method.stage_epochs(config.optim.epochs, config.optim.lp_epochs)]
        self.total_steps = sum(self.stage_steps)
        self.ema_period = config.ema.period_steps(self.total_steps)
        self.step = 0
        self.history: list[dict] = []
        self.throughput = ThroughputMeter(config.optim.batch_size, env.world_size, device)
        self.checkpoint_path = run_dir / "checkpoint.pt"
        self._resumed_optimizer: tuple[int, dict] | None = None

    def save_checkpoint(self, stage_index: int, optimizer: torch.optim.Optimizer) -> None:
        """Rank 0 writes the state, with every rank's log of the teacher's caption encodings (to replay on resume)."""
        captions = gather_objects(self.teacher.encoded_captions()) if self.teacher is not None else None
        if self.env.is_main:  # every process holds the same state; one writer
            Checkpoint(self.step, stage_index, self.model.state_dict(), self.head.state_dict(), optimizer.state_dict(),
                       self.scaler.state_dict(), torch.get_rng_state(), self.history,
                       self.teacher.state_dict() if self.teacher else None, captions).save(self.checkpoint_path, self.config)

    def load_checkpoint(self) -> bool:
        """Continue from the checkpoint of this config, if there is one, exactly where it was saved."""
        state = Checkpoint.load(self.checkpoint_path, self.config)
        if state is None:
            return False
        self.model.load_state_dict(state.model)
        self.head.load_state_dict(state.head)
        if self.teacher is not None:  # with the caption cache the saving rank had (none after a change of world size)
            self.teacher.load_state_dict(state.teacher)
            if state.teacher_captions is not None and len(state.teacher_captions) == self.env.world_size:
                with autocast(self.config.compute, self.device):
                    self.teacher.replay_captions(state.teacher_captions[self.env.rank],
                                                 lambda group: self.captions(group).tokens)
        torch.set_rng_state(state.torch_rng)
        self.scaler.load_state_dict(state.scaler)
        self.step, self.history = state.step, state.history
        self._resumed_optimizer = (state.stage, state.optimizer)
        return True

    def train(self, progress: bool = True) -> None:
        """Every stage's steps from ``self.step`` on, with per-epoch validation and checkpoints as configured."""
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
                epoch, position = divmod(self.step, self.steps_per_epoch)
                if position == 0:
                    self._report_throughput(bar, self.throughput.end_epoch(epoch))
                    if self.config.eval.every_epoch:
                        self._end_epoch(epoch)
                elif not bar.disable:
                    _show_speed(bar, self.throughput.epoch_so_far(epoch + 1))
                if self.step % self.config.optim.checkpoint_every == 0 and self.step < self.total_steps:
                    self.save_checkpoint(stage_index, optimizer)
                    barrier()
            stage_start = stage_end
        bar.close()

    def _report_throughput(self, bar: tqdm, throughput: EpochThroughput) -> None:
        _show_speed(bar, throughput)
        if self.env.is_main:
            self.callbacks.on_throughput(self.step, throughput)

    def make_optimizer(self, stage: Stage) -> torch.optim.Optimizer:
        """AdamW over what ``stage`` trains (and nothing else requires grad); the module its forward runs through."""
        groups = decay_groups(trainable_parameters(stage, self.model, self.head), self.config.optim.weight_decay,
                              self.config.optim.weight_decay_on)
        trained = self.model if stage.objective == "contrastive" else ImageClassifier(
            self.model, self.head, train_tower=stage.trains != "head")
        self.trained = wrap_for_training(trained, self.env, self.device)  # after requires_grad: DDP registers them
        return torch.optim.AdamW(groups, lr=self.config.optim.lr)

    def train_step(self, stage: Stage, optimizer: torch.optim.Optimizer, stage_step: int, stage_steps: int) -> None:
        """One optimizer step on the batch that (seed, global step) selects; advances ``self.step``."""
        started = time.perf_counter()
        optim, batch = self.config.optim, self.batches.at(self.step)
        fetched = time.perf_counter()
        factor = cosine_with_warmup(stage_step, stage_steps, optim.warmup_steps)
        set_learning_rate(optimizer, optim.lr, factor)
        optimizer.zero_grad(set_to_none=True)
        micro = MicroBatches(self.trained, optim.accum_steps, lambda: autocast(self.config.compute, self.device),
                             self.scaler)
        if stage.objective == "contrastive":  # the terms of the whole batch from this process's rows of it
            terms = micro.contrastive(self.model, batch.images, self.captions(batch.captions), batch.labels,
                                      self.config.loss, self.teacher, self.gather)
        else:  # this process's rows and their labels
            labels = batch.labels[local_rows(len(batch.labels), self.env)]
            terms = micro.cross_entropy(batch.images, labels, self.config.loss.label_smoothing)
        reported = mean_over_ranks(terms)  # the whole batch's, the same on every rank
        if not math.isfinite(reported["loss"]):  # every rank stops together
            values = ", ".join(f"{k}={v:.4g}" for k, v in reported.items())
            raise NonFiniteLossError(f"non-finite loss at step {self.step} ({values})")
        clip_and_step(optimizer, self.scaler, optim.grad_clip)
        if optim.logit_scale_max is not None:  # open_clip's clamp; the released CaRot code has none
            with torch.no_grad():
                self.model.logit_scale.clamp_(max=math.log(optim.logit_scale_max))
        if self.teacher is not None and (self.step + 1) % self.ema_period == 0:
            ema = self.config.ema
            self.teacher.update(self.model, momentum_at(self.step, self.total_steps, ema.m_src, ema.m_tar, ema.warmup))
        self.throughput.add_step(fetched - started, time.perf_counter() - fetched)
        self.step += 1
        if self.env.is_main:
            self.callbacks.on_step(self.step - 1, reported, optim.lr * factor)

    def _end_epoch(self, epoch: int) -> None:
        """Every rank encodes its share of the validation set; rank 0 scores it (and its callbacks may prune);
        every rank learns whether to stop."""
        pruned: TrialPruned | None = None
        val = self.benchmark.val
        features = image_features(self.model, val, self.config.eval.batch_size, self.env)
        if self.env.is_main:
            report = set_report(head_logits(self.evaluation_head(self.model), features), val, self.config.eval.n_bins)
            metrics = {"epoch": epoch, "step": self.step, "val_acc": report["acc"], "val_ece": report["ece"],
                       "val_nll": report["nll"]}
            self.history.append(metrics)
            try:
                self.callbacks.on_epoch(epoch, metrics)
            except TrialPruned as exc:
                pruned = exc
        if agree(pruned is not None):
            raise pruned or TrialPruned(f"pruned at epoch {epoch} (rank 0's pruner)")

    def evaluation_head(self, model: torch.nn.Module) -> torch.nn.Linear:
        """Contrastive methods re-derive the zero-shot head from their text encoder; others use the trained head."""
        if self.method.head == "zeroshot":
            return classifier_head(model, self.tokenizer, self.benchmark.classnames, self.benchmark.zeroshot_templates)
        return self.head
