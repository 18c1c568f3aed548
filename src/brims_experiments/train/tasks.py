"""What differs between experiments, behind one interface the harness drives.

A :class:`Task` builds the model of a config, computes the loss and metrics of a batch,
provides the Lightning data module, checks that its data exists before training, evaluates a
trained model on every test condition, and picks the sequence drawn in the module-activity
figure. :func:`make_task` builds the one a config names.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from brims_experiments.data.images import IMAGE_DATASETS
from brims_experiments.tasks.adding import FEATURES, TRIVIAL_MSE, AddingTaskConfig, make_adding_batch
from brims_experiments.tasks.copying import CopyingTaskConfig, copy_scores, make_copying_batch
from brims_experiments.tasks.language import LanguageModel, detach_state, move_state, state_from_plain, state_to_plain
from brims_experiments.tasks.seqimage import SequenceClassifier
from brims_experiments.tasks.sequence_model import SequenceModel
from brims_experiments.train.config import ExperimentConfig
from brims_experiments.train.datamodule import DrawEach, GeneratedDataModule, SeqImageDataModule, TextDataModule, TextWindows

log = logging.getLogger(__name__)
Batch = tuple[Tensor, Tensor]


class Task:
    """The interface; see the module docstring. ``monitor`` is the validation metric that
    selects ``best.ckpt`` and ``mode`` whether higher (``max``) or lower is better."""

    monitor = "val/loss"
    mode = "min"

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """``(loss, {metric: value})`` of one batch."""
        raise NotImplementedError

    def datamodule(self) -> L.LightningDataModule:
        raise NotImplementedError

    def check_data(self) -> None:
        """Raise a clear error when the data is missing (generated tasks need nothing)."""

    def evaluate(self, model: nn.Module, device: torch.device, progress: bool) -> dict[str, Any]:
        raise NotImplementedError

    def activity_input(self) -> tuple[Tensor, str]:
        """One test sequence ``(1, T, F)`` for the module-activity figure, and its caption."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What the task carries between batches (saved in checkpoints); most carry nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def check_checkpoint(self, state: dict[str, Any]) -> None:
        """Raise if a checkpoint's saved task state does not fit this task's data."""


class SeqImageTask(Task):
    monitor = "val/acc"
    mode = "max"

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
        from brims_experiments.data.images import load_image_split

        load_image_split(self.config.data.dataset, "test", self.config.data.data_dir)

    def evaluate(self, model: nn.Module, device: torch.device, progress: bool) -> dict[str, Any]:
        from brims_experiments.train.evaluate import evaluate_test

        return evaluate_test(model, self.config, device, progress)

    def activity_input(self) -> tuple[Tensor, str]:
        from brims_experiments.data.images import load_image_split
        from brims_experiments.tasks.seqimage import make_sequences

        data = self.config.data
        split = load_image_split(data.dataset, "test", data.data_dir)
        tokens = make_sequences(split.images[:1], data.train_resolution, data.binarized)  # (1, T, C)
        return tokens, f"test image 0 (label {int(split.labels[0])}) at {data.train_resolution}x{data.train_resolution}"


# Seed of the fixed test sets, apart from any training or validation example's seed.
TEST_SEED = 2_000_000_011


class GeneratedTask(Task):
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
            scores = _evaluate_in_batches(model, self, inputs, targets, data.eval_batch_size, device,
                                          f"test {self.condition} {condition}", progress)
            results[str(condition)] = {**scores, "steps": inputs.shape[1]}
        return {self.condition: results, **self.reference()}

    def activity_input(self) -> tuple[Tensor, str]:
        condition = self.train_condition()
        inputs, _ = self.draw(condition, 1, torch.Generator().manual_seed(TEST_SEED))
        return inputs, f"a test sequence at {self.condition} {condition}"


class CopyingTask(GeneratedTask):
    condition = "gap"

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


class AddingTask(GeneratedTask):
    condition = "length"

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


class LanguageTask(Task):
    """Next-token prediction with the state carried across windows (truncated BPTT).

    A batch is ``(inputs (B, L), targets (B, L), window index)``; window 0 starts a pass over
    the text, so the carried state is reset there (separately for training and evaluation).
    """

    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__(config)
        from brims_experiments.data.corpora import corpus_info

        self.level = corpus_info(config.data.corpus).level
        self.states: dict[bool, Any] = {True: None, False: None}  # by model.training
        self._vocabulary: Any = None
        self._corpus: Any = None

    def vocabulary(self) -> Any:
        """The corpus's vocabulary, read and verified once (every checkpoint records its fingerprint)."""
        from brims_experiments.data.corpora import load_vocabulary

        if self._vocabulary is None:
            self._vocabulary = load_vocabulary(self.config.data.corpus, self.config.data.data_dir)
        return self._vocabulary

    def corpus(self) -> Any:
        """The verified splits, read once for the test evaluation and the activity figure."""
        from brims_experiments.data.corpora import load_corpus

        if self._corpus is None:
            self._corpus = load_corpus(self.config.data.corpus, self.config.data.data_dir)
        return self._corpus

    def build_model(self) -> nn.Module:
        model = self.config.model
        return LanguageModel(model.core, len(self.vocabulary()), model.embedding_size, model.dropout,
                             model.tie_weights)

    def step(self, model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        inputs, targets, index = batch
        if int(index) == 0:
            self.states[model.training] = None
        logits, state = model(inputs, move_state(self.states[model.training], inputs.device))  # (B, L, V)
        self.states[model.training] = detach_state(state)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return loss, ({"bpc": loss.detach() / math.log(2)} if self.level == "char" else {})

    def datamodule(self) -> L.LightningDataModule:
        return TextDataModule(self.config.data, self.config.train.seed)

    def check_data(self) -> None:
        self.vocabulary()

    @torch.no_grad()
    def _score(self, model: nn.Module, clean: Tensor, inputs: Tensor, device: torch.device, label: str,
               progress: bool) -> dict[str, float]:
        """Mean next-token cross-entropy over every target of ``clean`` (in ``eval_batch_size``
        streams, state carried), reading ``inputs`` (the same text, possibly corrupted)."""
        from brims_experiments.data.corpora import batchify

        data = self.config.data
        windows = TextWindows(batchify(clean, data.eval_batch_size), data.seq_len,
                              batchify(inputs, data.eval_batch_size))
        model.eval()
        state, total, count = None, 0.0, 0
        for index in tqdm(range(len(windows)), desc=label, disable=not progress, leave=False):
            window_inputs, window_targets, _ = windows[index]
            logits, state = model(window_inputs.to(device), state)  # (B, L, V)
            total += F.cross_entropy(logits.flatten(0, 1).float(), window_targets.to(device).flatten(),
                                     reduction="sum").item()
            count += window_targets.numel()
        loss = total / count
        measure = {"bpc": loss / math.log(2)} if self.level == "char" else {"ppl": math.exp(loss)}
        return {"loss": loss, **measure, "tokens": count}

    def evaluate(self, model: nn.Module, device: torch.device, progress: bool) -> dict[str, Any]:
        from brims_experiments.data.corpora import corrupt_tokens

        corpus = self.corpus()
        results: dict[str, Any] = {"level": self.level, "vocabulary": len(corpus.vocab)}
        for split in ("valid", "test"):
            ids = corpus.split(split)
            results[split] = self._score(model, ids, ids, device, split, progress)
        results["noise"] = {}
        for share in self.config.data.noise:
            generator = torch.Generator().manual_seed(TEST_SEED)
            noisy = corrupt_tokens(corpus.test, share, len(corpus.vocab), generator)
            results["noise"][f"{share:g}"] = self._score(model, corpus.test, noisy, device, f"test, {share:g} noise",
                                                         progress)
        return results

    def activity_input(self) -> tuple[Tensor, str]:
        corpus = self.corpus()
        tokens = corpus.valid[:100].view(1, -1)  # (1, T)
        return tokens, repr(corpus.vocab.decode(tokens[0])[:90])

    def state_dict(self) -> dict[str, Any]:
        return {"train_state": state_to_plain(self.states[True]), "vocabulary": self.vocabulary().fingerprint()}

    def check_checkpoint(self, state: dict[str, Any]) -> None:
        self.vocabulary().check_matches(state.get("vocabulary"))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.states[True] = state_from_plain(state.get("train_state"))


@dataclass(frozen=True)
class VideoCondition:
    """A video test condition: objects per sequence, and whether the curtain hides its band."""

    objects: int
    curtain: bool

    def name(self, dataset: str) -> str:
        return f"{self.objects} {'balls' if dataset == 'balls' else 'digits'}" + (", curtain" if self.curtain else "")


class VideoTask(Task):
    """Next-frame prediction on generated videos: a teacher-forced prefix, then a closed-loop
    rollout (:mod:`brims_experiments.tasks.video`). Reported per test condition: the binary cross-entropy
    per frame (nats, summed over its pixels) at every predicted frame, and its means over the
    teacher-forced and the rolled-out frames. Training and validation use the training count
    of objects and no curtain; the test adds more objects and the curtain.
    """

    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__(config)
        self._digits: dict[str, Tensor] = {}

    def digits(self, split: str) -> Tensor:
        """Moving MNIST's digits ``(M, d, d)``: the training split's for training and validation,
        the test split's for the test; read and verified once."""
        from brims_experiments.data.images import load_image_split
        from brims_experiments.data.moving_mnist import prepare_digits

        if split not in self._digits:
            images = load_image_split("mnist", split, self.config.data.data_dir).images
            self._digits[split] = prepare_digits(images, self.config.data.digit_size)
        return self._digits[split]

    def conditions(self) -> list[VideoCondition]:
        data = self.config.data
        return ([VideoCondition(n, False) for n in data.all_objects]
                + [VideoCondition(data.objects, True)] * bool(data.curtain))

    @staticmethod
    def seed_of(condition: VideoCondition) -> int:
        """The test set's seed: the same sequences with and without the curtain."""
        return TEST_SEED + condition.objects

    def draw_each(self, objects: int, split: str) -> DrawEach:
        """Sequence ``i`` from ``generators[i]``: ``(frames (N, T, S, S), targets (N, T-1, S, S))``."""
        from brims_experiments.data.bouncing_balls import draw_balls
        from brims_experiments.data.moving_mnist import draw_moving_digits

        generator_config = self.config.data.generator_config(objects)

        def draw(generators: list[torch.Generator]) -> Batch:
            if self.config.data.dataset == "balls":
                frames = draw_balls(generator_config, generators)
            else:
                frames = draw_moving_digits(generator_config, self.digits(split), generators)
            return frames, frames[:, 1:]

        return draw

    def draw(self, objects: int, count: int, generator: torch.Generator, split: str = "test") -> Batch:
        """``count`` sequences drawn one after another from ``generator``."""
        return self.draw_each(objects, split)([generator] * count)

    def build_model(self) -> nn.Module:
        from brims_experiments.tasks.video import VideoPredictor

        data, model = self.config.data, self.config.model
        return VideoPredictor(model.core, data.frame_size, data.teacher_frames, model.embedding_size,
                              model.conv_channels, model.conv_layers, model.frame_skip)

    def step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        from brims_experiments.tasks.video import bce_per_frame

        frames, targets = batch
        per_frame = bce_per_frame(model(frames), targets)  # (B, T-1)
        rollout = per_frame[:, self.config.data.teacher_frames :]  # (B, T-1-k): fed on its own predictions
        loss = per_frame.mean() / self.config.data.frame_size**2  # per pixel: the same scale at any frame size
        return loss, {"bce": per_frame.detach().mean(), "rollout_bce": rollout.detach().mean()}

    def datamodule(self) -> L.LightningDataModule:
        draw_each = self.draw_each(self.config.data.objects, "train")
        return GeneratedDataModule(self.config.data, self.config.train.seed,
                                   lambda count, generator: draw_each([generator] * count), draw_each)

    def check_data(self) -> None:
        if self.config.data.dataset == "mnist":
            self.digits("train")
            self.digits("test")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device, progress: bool) -> dict[str, Any]:
        from brims_experiments.tasks.video import bce_per_frame

        data = self.config.data
        model.eval()
        results = {}
        for condition in self.conditions():
            generator = torch.Generator().manual_seed(self.seed_of(condition))
            curtain = data.curtain_columns if condition.curtain else None
            totals = torch.zeros(data.frames - 1, dtype=torch.float64)  # (T-1,)
            intensity = 0.0  # sum of the rolled-out target pixels, for the constant baseline
            name = condition.name(data.dataset)
            for start in tqdm(range(0, data.test_sequences, data.eval_batch_size), desc=f"test {name}",
                              disable=not progress, leave=False):
                count = min(data.eval_batch_size, data.test_sequences - start)
                frames, targets = self.draw(condition.objects, count, generator)
                logits = model(frames.to(device), curtain=curtain)  # (b, T-1, S, S)
                totals += bce_per_frame(logits, targets.to(device)).sum(0).double().cpu()
                intensity += targets[:, data.teacher_frames :].double().sum().item()
            per_step = totals / data.test_sequences  # (T-1,)
            rollout = per_step[data.teacher_frames :]
            pixels = data.test_sequences * len(rollout) * data.frame_size**2
            mean = min(max(intensity / pixels, 1e-6), 1 - 1e-6)
            constant = -(mean * math.log(mean) + (1 - mean) * math.log(1 - mean)) * data.frame_size**2
            results[name] = {"objects": condition.objects, "curtain": condition.curtain,
                             "sequences": data.test_sequences, "bce": float(per_step.mean()),
                             "teacher_bce": float(per_step[: data.teacher_frames].mean()),
                             "rollout_bce": float(rollout.mean()), "constant_bce": constant,
                             "bce_per_step": [round(float(v), 4) for v in per_step]}
            log.info("test %s: rollout BCE per frame %.2f", name, results[name]["rollout_bce"])
        return {"condition": results, "frames": data.frames, "teacher_frames": data.teacher_frames,
                "frame_size": data.frame_size, "curtain_columns": list(data.curtain_columns) if data.curtain else []}

    def activity_input(self) -> tuple[Tensor, str]:
        data = self.config.data
        condition = VideoCondition(data.objects, False)
        frames, _ = self.draw(data.objects, 1, torch.Generator().manual_seed(self.seed_of(condition)))
        return frames, f"test sequence 0 of {condition.name(data.dataset)}"


@torch.no_grad()
def _evaluate_in_batches(model: nn.Module, task: Task, inputs: Tensor, targets: Tensor, batch_size: int,
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


TASKS: dict[str, type[Task]] = {"seqimage": SeqImageTask, "copying": CopyingTask, "adding": AddingTask,
                                "lm": LanguageTask, "video": VideoTask}


def make_task(config: ExperimentConfig) -> Task:
    return TASKS[config.task](config)
