"""The adding problem (``task: adding``): sum the two marked values of a sequence, tested at
longer sequences than those trained on. Model and data: :mod:`brims_experiments.tasks.adding`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brims_experiments.experiments.generated import GeneratedDataConfig, GeneratedTask, condition_lines
from brims_experiments.tasks.adding import FEATURES, TRIVIAL_MSE, AddingTaskConfig, make_adding_batch
from brims_experiments.tasks.sequence_model import SequenceModel
from brims_experiments.train.config import int_at_least, is_int, list_field
from brims_experiments.train.tasks import Batch, condition_table


@dataclass(frozen=True)
class AddingDataConfig(GeneratedDataConfig):
    """The adding problem: sum the two marked values of a sequence.

    Attributes:
        train_length: steps per training sequence.
        test_lengths: lengths the test evaluates (the training length is always added).
    """

    train_length: int = 50
    test_lengths: tuple[int, ...] = (200,)

    def __post_init__(self) -> None:
        super().__post_init__()
        list_field(self, "test_lengths", is_int, "integers (sequence lengths)", "[100, 200]")
        for name, length in [("data.train_length", self.train_length)] + [("data.test_lengths[]", n)
                                                                         for n in self.test_lengths]:
            int_at_least(name, length, 2)

    @property
    def all_test_lengths(self) -> tuple[int, ...]:
        return tuple(sorted({self.train_length, *self.test_lengths}))


class AddingTask(GeneratedTask):
    name = "adding"
    data_config = AddingDataConfig
    condition = "length"
    learning_metric = "mse"
    summary_file = "mse_by_length.png"

    def build_model(self) -> nn.Module:
        model = self.config.model
        return SequenceModel(model.core, FEATURES, model.embedding_size, 1, every_step=False)

    def draw(self, condition: int, count: int, generator: torch.Generator) -> Batch:
        """``count`` sequences of length ``condition``: inputs ``(N, T, 2)``, targets ``(N,)``."""
        batch = make_adding_batch(AddingTaskConfig(condition), count, generator)
        return batch.inputs.transpose(0, 1).contiguous(), batch.targets

    def train_condition(self) -> int:
        return self.config.data.train_length

    def test_conditions(self) -> tuple[int, ...]:
        return self.config.data.all_test_lengths

    def reference(self) -> dict[str, float]:
        return {"trivial_mse": TRIVIAL_MSE}

    def step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        inputs, targets = batch
        prediction = model(inputs).squeeze(-1)  # (B,)
        loss = F.mse_loss(prediction, targets)
        return loss, {"mse": loss.detach()}

    def prediction_words(self, output: Tensor) -> str:
        return f"{float(output.flatten()[0]):.2f}"

    @classmethod
    def data_words(cls, metrics: dict[str, Any]) -> str:
        return "the adding problem"

    @classmethod
    def format_table(cls, runs: list[dict[str, Any]], names: list[str] | None = None) -> str:
        return condition_table(runs, names, "length", "length {c} MSE", lambda result: f"{result['mse']:.4f}",
                               lambda best: f"{best:.4f}", "val_loss",
                               [f"(predicting 1 always scores MSE {runs[0]['trivial_mse']:.4f})"])

    @classmethod
    def summary_figure(cls, runs: list[dict[str, Any]], title: str) -> Any:
        """Test MSE against sequence length, on a log axis (beside the trivial predictor's MSE every
        trained model's looked like 0 on a linear one); dashed: predicting 1 always."""
        import matplotlib.pyplot as plt

        from brims_experiments.train.plots import loss_axis

        figure, axes = plt.subplots(1, 1, figsize=(5.5, 3.8), squeeze=False)
        axis = axes[0][0]
        drawn = condition_lines(axis, runs, "length", "mse", 1.0)
        axis.axhline(runs[0]["trivial_mse"], color="grey", linestyle="--", linewidth=1, label="predict 1 (trivial)")
        drawn.append(runs[0]["trivial_mse"])
        axis.set_xlabel("sequence length")
        loss_axis(axis, drawn, "test mean squared error")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
        return figure


EXPERIMENT = AddingTask
