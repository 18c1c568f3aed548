"""Sequential images (``task: seqimage``): classify an image read pixel by pixel, row by row, tested
at other resolutions and on corrupted images. Model and data: :mod:`brims_experiments.tasks.seqimage`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from brims_experiments.config_files import ConfigError, int_at_least, positive_int, require
from brims_experiments.data.images import IMAGE_DATASETS, ImageSplit, load_image_split
from brims_experiments.tasks.seqimage import Noise, SequenceClassifier, make_sequences
from brims_experiments.train.config import ExperimentConfig, is_int, list_field
from brims_experiments.train.datamodule import SeqImageDataModule
from brims_experiments.train.supervised import SupervisedExperiment
from brims_experiments.train.tasks import Batch, condition_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataConfig:
    """Attributes:
    dataset: ``mnist``, ``fashion-mnist`` or ``cifar10``.
    train_resolution: side of the training images (sequence length is its square).
    test_resolutions: sides the test set is evaluated at (the training one is always added).
    noise: corruptions evaluated at the training resolution, ``<kind>-<level>``.
    validation_size: images held out of the training set (seeded) to select the checkpoint.
    train_limit: use only the first this many training images (0: all); for quick runs.
    test_limit: test on only the first this many test images (0: all, as for every reported
        result); for quick runs.
    """

    dataset: str = "mnist"
    train_resolution: int = 14
    test_resolutions: tuple[int, ...] = (16, 19, 24)
    noise: tuple[str, ...] = ("gaussian-0.1", "gaussian-0.3", "flip-0.02", "flip-0.05")
    validation_size: int = 5000
    train_limit: int = 0
    test_limit: int = 0
    batch_size: int = 64
    eval_batch_size: int = 500
    data_dir: str | None = None

    def __post_init__(self) -> None:
        require(self.dataset in IMAGE_DATASETS, f"data.dataset must be one of {sorted(IMAGE_DATASETS)}, "
                f"got {self.dataset!r}")
        list_field(self, "test_resolutions", is_int, "integers (image sides in pixels)", "[16, 19, 24]")
        list_field(self, "noise", lambda item: isinstance(item, str), "corruptions <kind>-<level>",
                   '["gaussian-0.1", "flip-0.02"] (or [] for none)')
        positive_int("data.train_resolution", self.train_resolution)
        for size in self.test_resolutions:
            positive_int("data.test_resolutions[]", size)
        for text in self.noise:
            try:
                noise = Noise.parse(text)
            except ValueError as error:
                raise ConfigError(f"data.noise: {error}") from None
            require(noise.kind != "flip" or self.binarized,
                    f"data.noise: {text!r} applies to binarised data, not {self.dataset}")
        positive_int("data.validation_size", self.validation_size)
        int_at_least("data.train_limit", self.train_limit, 0, " (0: all)")
        int_at_least("data.test_limit", self.test_limit, 0, " (0: all)")
        positive_int("data.batch_size", self.batch_size)
        positive_int("data.eval_batch_size", self.eval_batch_size)

    @property
    def binarized(self) -> bool:
        return IMAGE_DATASETS[self.dataset].channels == 1

    @property
    def all_test_resolutions(self) -> tuple[int, ...]:
        return tuple(sorted({self.train_resolution, *self.test_resolutions}))

class SeqImageTask(SupervisedExperiment):
    name = "seqimage"
    data_config = DataConfig
    monitor = "val/acc"
    mode = "max"
    learning_metric = "acc"
    summary_file = "accuracy_by_resolution.png"

    def build_model(self) -> nn.Module:
        info = IMAGE_DATASETS[self.config.data.dataset]
        vocab = 2 if self.config.data.binarized else 256
        return SequenceClassifier(self.config.model.core, info.channels, vocab, self.config.model.embedding_size,
                                  info.classes)

    def step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        tokens, labels = batch
        logits = model(tokens)  # (B, K)
        return F.cross_entropy(logits, labels), {"acc": (logits.argmax(-1) == labels).float().mean()}

    def datamodule(self) -> L.LightningDataModule:
        return SeqImageDataModule(self.config.data, self.config.train.seed)

    def check_data(self) -> None:
        load_image_split(self.config.data.dataset, "test", self.config.data.data_dir)

    def evaluate(self, model: nn.Module, device: torch.device, progress: bool) -> dict[str, Any]:
        return evaluate_test(model, self.config, device, progress)

    def activity_input(self) -> tuple[Tensor, str]:
        data = self.config.data
        split = load_image_split(data.dataset, "test", data.data_dir)
        tokens = make_sequences(split.images[:1], data.train_resolution, data.binarized)  # (1, T, C)
        return tokens, f"test image 0 (label {int(split.labels[0])}) at {data.train_resolution}x{data.train_resolution}"

    def prediction_words(self, output: Tensor) -> str:
        return str(int(output.argmax(-1)[0]))

    def draw_activity_input(self, axes: Any, inputs: Tensor, caption: str, prediction: str) -> None:
        sequence = inputs[0].float().cpu()  # (T, F)
        side = self.config.data.train_resolution
        axes[0].imshow(sequence.mean(-1).reshape(side, side), cmap="gray")
        axes[0].set_title(f"{caption}, read row by row; predicted {prediction}")
        axes[0].axis("off")
        axes[1].axis("off")

    @classmethod
    def fetched_data(cls, config: ExperimentConfig) -> tuple[str, str | None] | None:
        return config.data.dataset, config.data.data_dir

    @classmethod
    def data_words(cls, metrics: dict[str, Any]) -> str:
        names = {"mnist": "sequential MNIST", "fashion-mnist": "sequential Fashion-MNIST",
                 "cifar10": "sequential CIFAR-10"}
        return names.get(str(metrics.get("dataset")), str(metrics.get("dataset", metrics.get("task"))))

    @classmethod
    def format_table(cls, runs: list[dict[str, Any]], names: list[str] | None = None) -> str:
        return condition_table(runs, names, "resolution", "{c}x{c} acc %", lambda result: f"{100.0 * result['acc']:.1f}",
                               lambda best: f"{100 * best:.1f}", "val_acc")

    @classmethod
    def summary_figure(cls, runs: list[dict[str, Any]], title: str) -> Any:
        """Test accuracy against the test resolution, one line per run (dotted: the training
        resolution); beside it, when the runs tested noise, the accuracy on each kind of noise."""
        import matplotlib.pyplot as plt

        noisy = any(metrics.get("noise") for metrics in runs)
        figure, axes = plt.subplots(1, 2 if noisy else 1, figsize=(10.5 if noisy else 5.5, 3.8), squeeze=False)
        axis = axes[0][0]
        for metrics in runs:
            points = {int(c): result for c, result in metrics["resolution"].items()}
            conditions = sorted(points)
            axis.plot(conditions, [100.0 * points[c]["acc"] for c in conditions], "o-",
                      label=metrics.get("label", metrics["model"]))
            axis.set_xticks(conditions)
            if "train_resolution" in metrics:
                axis.axvline(metrics["train_resolution"], color="grey", linestyle=":", linewidth=1)
        axis.set_xlabel("test resolution (side in pixels)")
        axis.set_ylabel("test accuracy (%)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
        if noisy:
            _plot_noise(axes[0][1], runs, 100.0)
        return figure


def _plot_noise(axis: Any, runs: list[dict[str, Any]], scale: float) -> None:
    """Grouped bars: each run's test accuracy on clean and on each kind of corrupted test images
    at the training resolution."""
    names = ["clean"] + sorted({name for metrics in runs for name in metrics.get("noise", {})})
    width = 0.8 / len(runs)
    for index, metrics in enumerate(runs):
        clean = metrics["resolution"].get(str(metrics.get("train_resolution")), {}).get("acc", float("nan"))
        values = [clean] + [metrics.get("noise", {}).get(name, {}).get("acc", float("nan")) for name in names[1:]]
        positions = [i + (index - (len(runs) - 1) / 2) * width for i in range(len(names))]
        axis.bar(positions, [scale * v for v in values], width, label=metrics.get("label", metrics["model"]))
    axis.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    axis.set_ylabel("test accuracy (%) at the training resolution")
    axis.set_title("noisy test images")
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=8)


# ---- the test evaluation: every test resolution and every noise level, all images, no drops ----

NOISE_SEED = 12345  # fixed: every model sees the same corrupted images


@torch.no_grad()
def accuracy_on(model: SequenceClassifier, tokens: torch.Tensor, labels: torch.Tensor, batch_size: int,
                device: torch.device, label: str, progress: bool = True) -> dict[str, float]:
    """Accuracy and mean cross-entropy over all ``tokens (N, T, C)``; the last batch may be short."""
    model.eval()
    correct, loss_sum = 0, 0.0
    starts = range(0, len(labels), batch_size)
    for start in tqdm(starts, desc=label, disable=not progress, leave=False):
        batch = tokens[start : start + batch_size].to(device)
        target = labels[start : start + batch_size].to(device)
        logits = model(batch)  # (b, K)
        loss_sum += F.cross_entropy(logits.float(), target, reduction="sum").item()
        correct += (logits.argmax(-1) == target).sum().item()
    return {"acc": correct / len(labels), "loss": loss_sum / len(labels), "images": len(labels)}


def evaluate_test(model: SequenceClassifier, config: ExperimentConfig, device: torch.device,
                  progress: bool = True) -> dict[str, Any]:
    """``{"resolution": {S: metrics}, "noise": {name: metrics}}`` on the test split (its first
    ``data.test_limit`` images when set, all of them by default)."""
    data = config.data
    split = load_image_split(data.dataset, "test", data.data_dir)
    if data.test_limit:
        split = ImageSplit(split.images[: data.test_limit], split.labels[: data.test_limit])
    results: dict[str, Any] = {"train_resolution": data.train_resolution, "resolution": {}, "noise": {}}
    for size in data.all_test_resolutions:
        tokens = make_sequences(split.images, size, data.binarized)  # (N, S*S, C)
        results["resolution"][str(size)] = accuracy_on(model, tokens, split.labels, data.eval_batch_size, device,
                                                       f"test {size}x{size}", progress)
        log.info("test %dx%d: accuracy %.4f", size, size, results["resolution"][str(size)]["acc"])
    for text in data.noise:
        noise = Noise.parse(text)
        tokens = make_sequences(split.images, data.train_resolution, data.binarized, noise, NOISE_SEED)
        metrics = accuracy_on(model, tokens, split.labels, data.eval_batch_size, device, f"test {noise.name}", progress)
        results["noise"][noise.name] = {**metrics, "resolution": data.train_resolution}
        log.info("test %s at %d: accuracy %.4f", noise.name, data.train_resolution, metrics["acc"])
    return results


EXPERIMENT = SeqImageTask
