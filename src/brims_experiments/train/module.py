"""The Lightning module every task trains with: the task's model, loss and metrics; Adam and its
learning-rate schedule (:mod:`brims_experiments.train.schedule`)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from brims_experiments.checkpoints import FORMAT_KEY, FORMAT_VERSION
from brims_experiments.config_files import ConfigError
from brims_experiments.train.config import ExperimentConfig
from brims_experiments.train.schedule import learning_rate_factor
from brims_experiments.train.tasks import Task, make_task


class ExperimentModule(L.LightningModule):
    """Trains the model of its config's task; logs ``train/*`` per step and ``val/*`` per validation.

    The checkpoint carries the resolved config (as plain YAML-able values, so it loads with
    ``weights_only=True``), the torch RNG state (dropout draws continue exactly on resume) and
    whether training had finished when it was saved (``finished``: set by the run for its last save).
    """

    def __init__(self, config: ExperimentConfig, task: Task | None = None) -> None:
        super().__init__()
        self.config = config
        self.task = task if task is not None else make_task(config)  # the run's task, built once
        self.model = self.task.build_model()
        self.finished = False

    def forward(self, inputs: Tensor) -> Tensor:
        return self.model(inputs)

    def _step(self, batch: tuple[Tensor, ...], stage: str) -> Tensor:
        loss, metrics = self.task.step(self.model, batch)
        on_step = stage == "train"
        # Validation is averaged over ranks (each rank holds the whole validation split, so the
        # ranks agree; syncing keeps checkpoint selection identical under DDP regardless).
        options = {"on_step": on_step, "on_epoch": not on_step, "prog_bar": True, "batch_size": len(batch[0]),
                   "sync_dist": not on_step}
        self.log(f"{stage}/loss", loss, **options)
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", value, **options)
        return loss

    def on_train_start(self) -> None:
        self.total_steps = self.trainer.estimated_stepping_batches
        if self.config.train.lr_schedule != "constant" and not 0 < self.total_steps < float("inf"):
            raise ConfigError(f"train.lr_schedule={self.config.train.lr_schedule} needs a budget of known length; "
                              "this task's epochs have no length: set train.max_steps")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The rate follows from the step alone (restored exactly on resume), not from a scheduler's
        # state: a checkpoint saved at the end of a batch precedes Lightning's scheduler step.
        train = self.config.train
        if train.lr_schedule == "constant":
            return  # Adam keeps train.lr
        rate = train.lr * learning_rate_factor(train.lr_schedule, self.trainer.global_step, self.total_steps,
                                               train.lr_final_fraction)
        for group in self.optimizers().param_groups:
            group["lr"] = rate

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        if self.config.train.lr_schedule != "constant":
            self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.config.train.lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[FORMAT_KEY] = {"format": FORMAT_VERSION, "config": self.config.as_dict(), "rng": torch.get_rng_state(),
                                  "task_state": self.task.state_dict(), "finished": self.finished}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        torch.set_rng_state(checkpoint[FORMAT_KEY]["rng"])
        self.task.load_state_dict(checkpoint[FORMAT_KEY].get("task_state", {}))
