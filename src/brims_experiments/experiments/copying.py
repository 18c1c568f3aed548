"""The RIMs copying task (``task: copying``): reproduce a few symbols after a gap of blanks, tested
at longer gaps than those trained on. Model and data: :mod:`brims_experiments.tasks.copying`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brims_experiments.config_files import positive_int
from brims_experiments.experiments.generated import GeneratedDataConfig, GeneratedTask, condition_lines
from brims_experiments.tasks.copying import CopyingTaskConfig, copy_scores, make_copying_batch
from brims_experiments.tasks.sequence_model import SequenceModel
from brims_experiments.train.config import int_at_least, is_int, list_field
from brims_experiments.train.tasks import Batch, condition_table


@dataclass(frozen=True)
class CopyingDataConfig(GeneratedDataConfig):
    """The RIMs copying task: ``copy_length`` symbols from ``num_classes``, a gap of blanks.

    Attributes:
        train_gap: blanks between the symbols and the delimiter in training.
        test_gaps: gaps the test evaluates (the training gap is always added).
    """

    copy_length: int = 10
    num_classes: int = 8
    train_gap: int = 50
    test_gaps: tuple[int, ...] = (200,)

    def __post_init__(self) -> None:
        super().__post_init__()
        list_field(self, "test_gaps", is_int, "integers (gaps in blanks)", "[100, 200]")
        positive_int("data.copy_length", self.copy_length)
        positive_int("data.num_classes", self.num_classes)
        for name, gap in [("data.train_gap", self.train_gap)] + [("data.test_gaps[]", g) for g in self.test_gaps]:
            int_at_least(name, gap, 0)

    @property
    def all_test_gaps(self) -> tuple[int, ...]:
        return tuple(sorted({self.train_gap, *self.test_gaps}))


class CopyingTask(GeneratedTask):
    name = "copying"
    data_config = CopyingDataConfig
    condition = "gap"
    learning_metric = "sequence_acc"
    summary_file = "accuracy_by_gap.png"

    def _task(self, gap: int) -> CopyingTaskConfig:
        data = self.config.data
        return CopyingTaskConfig(gap=gap, copy_length=data.copy_length, num_classes=data.num_classes)

    def build_model(self) -> nn.Module:
        vocab = self._task(self.config.data.train_gap).vocab_size
        model = self.config.model
        return SequenceModel(model.core, vocab, model.embedding_size, vocab, every_step=True)

    def draw(self, condition: int, count: int, generator: torch.Generator) -> Batch:
        """``count`` sequences at gap ``condition``: inputs ``(N, T, V)`` one-hot, targets ``(N, T)``."""
        batch = make_copying_batch(self._task(condition), count, generator)
        return batch.inputs.transpose(0, 1).contiguous(), batch.targets.transpose(0, 1).contiguous()

    def train_condition(self) -> int:
        return self.config.data.train_gap

    def test_conditions(self) -> tuple[int, ...]:
        return self.config.data.all_test_gaps

    def reference(self) -> dict[str, float]:
        return {"chance_copy_ce": math.log(self.config.data.num_classes)}

    def step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        inputs, targets = batch
        logits = model(inputs)  # (B, T, V)
        scores = copy_scores(logits.transpose(0, 1), targets.transpose(0, 1), self.config.data.copy_length)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten()), {k: v.detach() for k, v in scores.items()}

    def prediction_words(self, output: Tensor) -> str:
        return "".join(str(int(t)) for t in output[0].argmax(-1)[-self.config.data.copy_length :])

    @classmethod
    def data_words(cls, metrics: dict[str, Any]) -> str:
        return "the copying task"

    @classmethod
    def format_table(cls, runs: list[dict[str, Any]], names: list[str] | None = None) -> str:
        return condition_table(
            runs, names, "gap", "gap {c} seq acc % (copy CE)",
            lambda result: f"{100.0 * result['sequence_acc']:.1f} ({result['copy_ce']:.3f})",
            lambda best: f"{best:.4f}", "val_loss",
            [f"(copy CE: cross-entropy on the symbols to reproduce; chance {runs[0]['chance_copy_ce']:.3f})"])

    @classmethod
    def summary_figure(cls, runs: list[dict[str, Any]], title: str) -> Any:
        """Exact-sequence test accuracy against the gap, one line per run."""
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, 1, figsize=(5.5, 3.8), squeeze=False)
        axis = axes[0][0]
        condition_lines(axis, runs, "gap", "sequence_acc", 100.0)
        axis.set_xlabel("gap (blanks between symbols and delimiter)")
        axis.set_ylabel("exact-sequence accuracy (%)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
        return figure


EXPERIMENT = CopyingTask
