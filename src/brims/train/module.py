"""The Lightning module of sequential image classification."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from brims.data.images import IMAGE_DATASETS
from brims.tasks.seqimage import SequenceClassifier
from brims.train.checkpoint import FORMAT_KEY, FORMAT_VERSION
from brims.train.config import ExperimentConfig, load_config


def build_classifier(config: ExperimentConfig) -> SequenceClassifier:
    info = IMAGE_DATASETS[config.data.dataset]
    vocab = 2 if config.data.binarized else 256
    return SequenceClassifier(config.model.core, info.channels, vocab, config.model.embedding_size, info.classes)


class SeqImageModule(L.LightningModule):
    """Cross-entropy on the class after the last pixel; Adam; accuracy on validation.

    The checkpoint carries the resolved config (as plain YAML-able values, so it loads with
    ``weights_only=True``) and the torch RNG state (dropout draws continue exactly on resume).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config_dict = config
        self.config = load_config(base=config)
        self.model = build_classifier(self.config)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.model(tokens)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        tokens, labels = batch
        logits = self.model(tokens)  # (B, K)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        on_step = stage == "train"
        # Validation is averaged over ranks (each rank holds the whole validation split, so the
        # ranks agree; syncing keeps checkpoint selection identical under DDP regardless).
        options = {"on_step": on_step, "on_epoch": not on_step, "prog_bar": True, "batch_size": len(labels),
                   "sync_dist": not on_step}
        self.log(f"{stage}/loss", loss, **options)
        self.log(f"{stage}/acc", accuracy, **options)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.config.train.lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[FORMAT_KEY] = {"format": FORMAT_VERSION, "config": self.config_dict, "rng": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        torch.set_rng_state(checkpoint[FORMAT_KEY]["rng"])
