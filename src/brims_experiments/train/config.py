"""Typed experiment configs, read from and written to YAML, with dotted command-line overrides.

A config names its ``task`` and has three sections, each a frozen dataclass validated on
construction, so a bad value fails before training starts with a message naming the field::

    task:  seqimage (sequential images), copying or adding (generated RIMs tasks), lm (language),
           video (next-frame prediction on bouncing balls or Moving MNIST)
    data:  the task's data: data set and resolutions, or sequence lengths; batch sizes
    model: the recurrent core (:class:`brims_experiments.tasks.cores.CoreConfig`) and the embedding
    train: optimiser, budget, checkpoint cadence, hardware

``--set train.epochs=3 model.core.kind=lstm model.core.brims.top_k=[3,1]`` overrides any field; values are parsed as YAML
(numbers in scientific notation included).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from brims_experiments.data.bouncing_balls import BallsConfig
from brims_experiments.data.images import IMAGE_DATASETS
from brims_experiments.data.moving_mnist import MovingDigitsConfig
from brims_experiments.runs import (
    ConfigError,
    build_config,
    check_logger,
    config_layers,
    int_at_least,
    merge,
    plain,
    positive_int,
    register_sections,
    require,
)
from brims_experiments.tasks.cores import CoreConfig
from brims_experiments.tasks.seqimage import Noise
from brims_experiments.tasks.video import check_frame_size


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML's true is an int to Python


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def list_field(config: Any, name: str, is_element: Any, what: str, example: str) -> None:
    """Check that the field ``name`` of ``config`` (a ``data`` section) is a list of ``what`` (each passing
    ``is_element``) and hold it as a tuple; else a :class:`ConfigError` naming ``data.<name>``, the list it
    wants (``example``) and what it got: ``data.test_lengths=100`` (a scalar) used to fail deep in the
    validation with "'int' object is not iterable", and a string was read letter by letter."""
    value = getattr(config, name)
    require(isinstance(value, (list, tuple)) and all(is_element(item) for item in value),
            f"data.{name} must be a list of {what}, like {example}, got {value!r}")
    object.__setattr__(config, name, tuple(value))


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
        list_field(self, "test_resolutions", _is_int, "integers (image sides in pixels)", "[16, 19, 24]")
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
        list_field(self, "test_gaps", _is_int, "integers (gaps in blanks)", "[100, 200]")
        positive_int("data.copy_length", self.copy_length)
        positive_int("data.num_classes", self.num_classes)
        for name, gap in [("data.train_gap", self.train_gap)] + [("data.test_gaps[]", g) for g in self.test_gaps]:
            int_at_least(name, gap, 0)

    @property
    def all_test_gaps(self) -> tuple[int, ...]:
        return tuple(sorted({self.train_gap, *self.test_gaps}))


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
        list_field(self, "test_lengths", _is_int, "integers (sequence lengths)", "[100, 200]")
        for name, length in [("data.train_length", self.train_length)] + [("data.test_lengths[]", n)
                                                                         for n in self.test_lengths]:
            int_at_least(name, length, 2)

    @property
    def all_test_lengths(self) -> tuple[int, ...]:
        return tuple(sorted({self.train_length, *self.test_lengths}))


@dataclass(frozen=True)
class LanguageDataConfig:
    """Language modelling on a fetched corpus (``brims fetch <corpus>``).

    Attributes:
        corpus: ``austen`` (word level), ``shakespeare`` or ``gcide`` (character level).
        seq_len: steps of truncated back-propagation; the state is carried across windows.
        batch_size: contiguous training streams (split across ranks under DDP).
        eval_batch_size: streams of the validation and test evaluation.
        noise: shares of input tokens replaced at random in the robustness test (targets stay clean).
    """

    corpus: str = "austen"
    seq_len: int = 35
    batch_size: int = 20
    eval_batch_size: int = 10
    noise: tuple[float, ...] = (0.05, 0.2)
    data_dir: str | None = None

    def __post_init__(self) -> None:
        from brims_experiments.data.corpora import CORPORA

        list_field(self, "noise", _is_number, "shares of tokens in (0, 1]", "[0.05, 0.2] (or [] for none)")
        require(self.corpus in CORPORA, f"data.corpus must be one of {sorted(CORPORA)}, got {self.corpus!r}")
        positive_int("data.seq_len", self.seq_len)
        positive_int("data.batch_size", self.batch_size)
        positive_int("data.eval_batch_size", self.eval_batch_size)
        for share in self.noise:
            require(0 < share <= 1,
                    f"data.noise entries must be shares in (0, 1], got {share!r}")


VIDEO_DATASETS = ("balls", "mnist")


@dataclass(frozen=True)
class VideoDataConfig(GeneratedDataConfig):
    """Next-frame prediction on generated videos (:mod:`brims_experiments.tasks.video`).

    Attributes:
        dataset: ``balls`` (bouncing balls) or ``mnist`` (Moving MNIST from the fetched MNIST digits).
        frame_size: side of the square frames in pixels.
        frames: frames per sequence.
        teacher_frames: true frames the model reads before it feeds on its own predictions.
        objects: balls (or digits) per training sequence.
        test_objects: other counts the test evaluates (the training count is always tested).
        curtain: the band of columns hidden from the model's input in the curtain test, as
            fractions ``[start, stop)`` of the width; ``[]`` for no curtain test.
        speed: the largest speed in pixels per frame.
        radius: balls only: ball radius in pixels.
        digit_size: mnist only: side the 28x28 digits are resized to.
    """

    dataset: str = "balls"
    frame_size: int = 64
    frames: int = 51
    teacher_frames: int = 10
    objects: int = 4
    test_objects: tuple[int, ...] = (6, 8)
    curtain: tuple[float, ...] = (0.375, 0.625)
    speed: float = 2.0
    radius: float = 5.0
    digit_size: int = 28
    data_dir: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        list_field(self, "test_objects", _is_int, "integers (objects per sequence)", "[6, 8]")
        list_field(self, "curtain", _is_number, "two fractions [start, stop) of the width",
                   "[0.375, 0.625] (or [] for no curtain test)")
        require(self.dataset in VIDEO_DATASETS, f"data.dataset must be one of {VIDEO_DATASETS}, got {self.dataset!r}")
        positive_int("data.frame_size", self.frame_size)
        int_at_least("data.frames", self.frames, 3, " (a teacher-forced frame, a predicted one, a rolled-out one)")
        int_at_least("data.teacher_frames", self.teacher_frames, 1)
        require(self.teacher_frames <= self.frames - 2,
                f"data.teacher_frames={self.teacher_frames} leaves no closed-loop rollout in "
                f"data.frames={self.frames} frames (at most {self.frames - 2})")
        for name, count in [("data.objects", self.objects)] + [("data.test_objects[]", n) for n in self.test_objects]:
            positive_int(name, count)
        require(self.curtain == () or (len(self.curtain) == 2 and 0 <= self.curtain[0] < self.curtain[1] <= 1),
                f"data.curtain must be [] or [start, stop] with 0 <= start < stop <= 1, got {list(self.curtain)}")
        require(not self.curtain or self.curtain_columns[0] < self.curtain_columns[1],
                f"data.curtain={list(self.curtain)} hides no whole column of {self.frame_size}-pixel frames")
        require(_is_number(self.speed) and self.speed > 0, f"data.speed must be a number > 0, got {self.speed!r}")
        require(_is_number(self.radius) and self.radius > 0, f"data.radius must be a number > 0, got {self.radius!r}")
        defaults = VideoDataConfig.__dataclass_fields__
        other = "digit_size" if self.dataset == "balls" else "radius"
        require(getattr(self, other) == defaults[other].default,
                f"data.{other} applies to dataset {'mnist' if other == 'digit_size' else 'balls'} only, "
                f"not {self.dataset}")
        try:
            for count in self.all_objects:  # a start that cannot be drawn fails now, not mid-run
                self.generator_config(count)
        except ValueError as error:
            raise ConfigError(f"data: {error}") from None

    @property
    def all_objects(self) -> tuple[int, ...]:
        return tuple(sorted({self.objects, *self.test_objects}))

    @property
    def curtain_columns(self) -> tuple[int, int]:
        """The hidden columns ``[start, stop)`` in pixels."""
        start, stop = self.curtain
        return round(start * self.frame_size), round(stop * self.frame_size)

    def generator_config(self, objects: int) -> BallsConfig | MovingDigitsConfig:
        """The generator's config for ``objects`` balls or digits per sequence."""
        if self.dataset == "balls":
            return BallsConfig(self.frame_size, self.frames, objects, float(self.radius), float(self.speed))
        return MovingDigitsConfig(self.frame_size, self.frames, objects, self.digit_size, float(self.speed))


@dataclass(frozen=True)
class ModelConfig:
    """Attributes:
    embedding_size: size of the input embedding or projection.
    dropout: language modelling only: dropout on the embedding and on the core's output.
    tie_weights: language modelling only: the readout shares the embedding's weight.
    conv_channels: video only: channels of the encoder's first convolution (doubled at each next one).
    conv_layers: video only: stride-2 convolutions of the encoder (and transposed ones of the decoder).
    frame_skip: video only: the decoder also sees the frame just read (:mod:`brims_experiments.tasks.video`).
    """

    core: CoreConfig = field(default_factory=CoreConfig)
    embedding_size: int = 300
    dropout: float = 0.0
    tie_weights: bool = False
    conv_channels: int = 16
    conv_layers: int = 3
    frame_skip: bool = False

    def __post_init__(self) -> None:
        positive_int("model.embedding_size", self.embedding_size)
        require(_is_number(self.dropout) and 0 <= self.dropout < 1,
                f"model.dropout must be in [0, 1), got {self.dropout!r}")
        require(isinstance(self.tie_weights, bool), f"model.tie_weights must be true or false, got {self.tie_weights!r}")
        positive_int("model.conv_channels", self.conv_channels)
        positive_int("model.conv_layers", self.conv_layers)
        require(isinstance(self.frame_skip, bool), f"model.frame_skip must be true or false, got {self.frame_skip!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Attributes:
    epochs: passes over the training split (the budget).
    max_steps: stop after this many optimiser steps even within an epoch (0: no limit).
    checkpoint_every: steps between ``last.ckpt`` saves (what a crash can lose at most).
    validate_every: steps between validations (0: once per epoch).
    accelerator, devices, strategy, precision: passed to the Lightning ``Trainer``.
    threads: CPU threads for torch (0: torch's default).
    logger: ``csv`` (``logs/metrics.csv``, always written) or ``tensorboard`` (also TensorBoard
        event files in ``logs/tensorboard``).
    """

    epochs: int = 100
    max_steps: int = 0
    lr: float = 1e-3
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100
    validate_every: int = 0
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    threads: int = 0
    logger: str = "csv"

    def __post_init__(self) -> None:
        positive_int("train.epochs", self.epochs)
        int_at_least("train.max_steps", self.max_steps, 0, " (0: no limit)")
        require(_is_number(self.lr) and self.lr > 0, f"train.lr must be a number > 0, got {self.lr!r}")
        require(_is_number(self.grad_clip) and self.grad_clip >= 0,
                f"train.grad_clip must be a number >= 0 (0: off), got {self.grad_clip!r}")
        int_at_least("train.seed", self.seed, 0)
        positive_int("train.checkpoint_every", self.checkpoint_every)
        int_at_least("train.validate_every", self.validate_every, 0, " (0: once per epoch)")
        require(not (self.max_steps and self.validate_every > self.max_steps),
                f"train.validate_every={self.validate_every} exceeds train.max_steps={self.max_steps}: training "
                "would stop before its first validation and leave no best checkpoint to test")
        int_at_least("train.threads", self.threads, 0, " (0: torch's default)")
        devices = self.devices  # Lightning's: a count (-1: all), "auto", "0,1", or a list of indices
        require((_is_int(devices) and (devices >= 1 or devices == -1)) or (isinstance(devices, str) and bool(devices))
                or (isinstance(devices, (list, tuple)) and bool(devices)
                    and all(_is_int(index) and index >= 0 for index in devices)),
                f"train.devices must be auto, a count >= 1 (-1: all) or a list of device indices, got {devices!r}")
        check_logger(self.logger)


DATA_CONFIGS: dict[str, type] = {
    "seqimage": DataConfig, "copying": CopyingDataConfig, "adding": AddingDataConfig, "lm": LanguageDataConfig,
    "video": VideoDataConfig,
}


@dataclass(frozen=True)
class ExperimentConfig:
    task: str = "seqimage"
    data: Any = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        require(self.task in DATA_CONFIGS, f"task must be one of {sorted(DATA_CONFIGS)}, got {self.task!r}")
        require(type(self.data) is DATA_CONFIGS[self.task],
                f"data of task {self.task} must be a {DATA_CONFIGS[self.task].__name__}, got {type(self.data).__name__}")
        if self.task != "lm":
            require(self.model.dropout == 0 and not self.model.tie_weights,
                    f"model.dropout and model.tie_weights apply to task lm only, not {self.task}")
        if self.task == "video":
            try:
                check_frame_size(self.data.frame_size, self.model.conv_layers)
            except ValueError as error:
                raise ConfigError(f"data.frame_size: {error}") from None
        else:
            defaults = ModelConfig.__dataclass_fields__
            require(all(getattr(self.model, name) == defaults[name].default
                         for name in ("conv_channels", "conv_layers", "frame_skip")),
                    f"model.conv_channels, conv_layers and frame_skip apply to task video only, not {self.task}")

    def as_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.as_dict(), sort_keys=False)


register_sections({
    (ExperimentConfig, "data"): lambda values: DATA_CONFIGS.get(values.get("task")),
    (ExperimentConfig, "model"): ModelConfig,
    (ExperimentConfig, "train"): TrainConfig,
    (ModelConfig, "core"): CoreConfig,
})


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> ExperimentConfig:
    """The task's defaults ← ``base`` ← the YAML file at ``path`` ← ``overrides``, validated."""
    layers = config_layers(path, overrides, base, "task, data, model, train")
    task = next((layer["task"] for layer in reversed(layers) if "task" in layer), "seqimage")
    if task not in DATA_CONFIGS:
        raise ConfigError(f"task must be one of {sorted(DATA_CONFIGS)}, got {task!r}")
    values = ExperimentConfig(task=task, data=DATA_CONFIGS[task]()).as_dict()
    for layer in layers:
        values = merge(values, layer)
    return build_config(ExperimentConfig, values, "")
