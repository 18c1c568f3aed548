"""The Lightning module every task trains with: the task's model, loss and metrics; Adam."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from brims_experiments.checkpoints import FORMAT_KEY, FORMAT_VERSION
from brims_experiments.train.config import ExperimentConfig
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

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
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
