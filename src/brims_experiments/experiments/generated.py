"""What the experiments on generated data share (copying, adding; video uses the data config and
the test seed): fresh training sequences drawn at a training condition, fixed seeded test sets at
every test condition."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from brims_experiments.config_files import positive_int
from brims_experiments.train.datamodule import GeneratedDataModule
from brims_experiments.train.supervised import SupervisedExperiment
from brims_experiments.train.tasks import Batch, Task

# Seed of the fixed test sets, apart from any training or validation example's seed.
TEST_SEED = 2_000_000_011


@dataclass(frozen=True)
class GeneratedDataConfig:
    """What every generated task shares.

    Attributes:
        train_sequences: fresh training sequences per epoch (each generated from its index).
        validation_sequences, test_sequences: fixed seeded sets, drawn once per run.
    """

    train_sequences: int = 64_000
    validation_sequences: int = 1000
    test_sequences: int = 2000
    batch_size: int = 64
    eval_batch_size: int = 500

    def __post_init__(self) -> None:
        for name in ("train_sequences", "validation_sequences", "test_sequences", "batch_size", "eval_batch_size"):
            positive_int(f"data.{name}", getattr(self, name))


class GeneratedTask(SupervisedExperiment):
    """Data drawn on the fly at a condition (the copying gap, the adding length): fresh
    training sequences at the training condition, fixed seeded test sets at every test one."""

    condition = ""  # its name in metrics.json

    def draw(self, condition: int, count: int, generator: torch.Generator) -> Batch:
        raise NotImplementedError

    def train_condition(self) -> int:
        raise NotImplementedError

    def test_conditions(self) -> tuple[int, ...]:
        raise NotImplementedError

    def reference(self) -> dict[str, float]:
        """What a model that learned nothing scores, stored next to the results."""
        raise NotImplementedError

    def datamodule(self) -> L.LightningDataModule:
        condition = self.train_condition()
        return GeneratedDataModule(self.config.data, self.config.train.seed,
                                   lambda count, generator: self.draw(condition, count, generator))

    def evaluate(self, model: nn.Module, device: torch.device, progress: bool) -> dict[str, Any]:
        data = self.config.data
        results = {}
        for condition in self.test_conditions():
            generator = torch.Generator().manual_seed(TEST_SEED + condition)
            inputs, targets = self.draw(condition, data.test_sequences, generator)
            scores = evaluate_in_batches(model, self, inputs, targets, data.eval_batch_size, device,
                                         f"test {self.condition} {condition}", progress)
            results[str(condition)] = {**scores, "steps": inputs.shape[1]}
        return {self.condition: results, **self.reference()}

    def activity_input(self) -> tuple[Tensor, str]:
        condition = self.train_condition()
        inputs, _ = self.draw(condition, 1, torch.Generator().manual_seed(TEST_SEED))
        return inputs, f"a test sequence at {self.condition} {condition}"

    def draw_activity_input(self, axes: Any, inputs: Tensor, caption: str, prediction: str) -> None:
        sequence = inputs[0].float().cpu()  # (T, F)
        axes[0].imshow(sequence.T, aspect="auto", cmap="Greys", interpolation="nearest")
        axes[0].set_title(f"{caption}: input features over time; predicted {prediction}")
        axes[0].set_ylabel("feature")
        axes[1].axis("off")


@torch.no_grad()
def evaluate_in_batches(model: nn.Module, task: Task, inputs: Tensor, targets: Tensor, batch_size: int,
                        device: torch.device, label: str, progress: bool) -> dict[str, float]:
    """Every metric of ``task.step`` averaged over all sequences (the last batch may be short)."""
    model.eval()
    totals: dict[str, float] = {}
    for start in tqdm(range(0, len(inputs), batch_size), desc=label, disable=not progress, leave=False):
        batch = inputs[start : start + batch_size].to(device), targets[start : start + batch_size].to(device)
        loss, metrics = task.step(model, batch)
        size = len(batch[0])
        for name, value in {"loss": loss, **metrics}.items():
            totals[name] = totals.get(name, 0.0) + float(value) * size
    return {name: total / len(inputs) for name, total in totals.items()} | {"sequences": len(inputs)}


def condition_lines(axis: Any, runs: list[dict[str, Any]], key: str, metric: str, scale: float) -> list[float]:
    """One line per run: ``scale * result[metric]`` at every integer condition of ``run[key]``, ticking
    exactly the conditions tested; the values drawn."""
    drawn: list[float] = []
    for metrics in runs:
        points = {int(c): result for c, result in metrics[key].items()}
        conditions = sorted(points)
        values = [scale * points[c][metric] for c in conditions]
        drawn += values
        axis.plot(conditions, values, "o-", label=metrics.get("label", metrics["model"]))
        axis.set_xticks(conditions)
    return drawn
