"""Test-set evaluation: every test resolution and every noise level, all images, no drops."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from brims_experiments.data.images import ImageSplit, load_image_split
from brims_experiments.tasks.seqimage import Noise, SequenceClassifier, make_sequences
from brims_experiments.train.config import ExperimentConfig

log = logging.getLogger(__name__)
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
