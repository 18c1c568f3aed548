"""Typed experiment configs, read from and written to YAML, with dotted command-line overrides.

A config names its ``task`` (an experiment of :mod:`brims_experiments.experiments`) and has three
sections, each a frozen dataclass validated on construction, so a bad value fails before training
starts with a message naming the field::

    task:  the experiment, a name in :data:`brims_experiments.experiments.EXPERIMENTS`
    data:  the experiment's data (its ``data_config`` dataclass): data set, lengths, batch sizes
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

from brims_experiments.config_files import (
    ConfigError,
    build_config,
    config_layers,
    int_at_least,
    merge,
    plain,
    positive_int,
    register_sections,
    require,
)
from brims_experiments.experiments import DEFAULT, experiment
from brims_experiments.run_folder import check_logger
from brims_experiments.tasks.cores import CoreConfig
from brims_experiments.tasks.video import ACTIVATIONS
from brims_experiments.train.schedule import SCHEDULES


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML's true is an int to Python


def is_number(value: Any) -> bool:
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
class ModelConfig:
    """Attributes:
    embedding_size: size of the input embedding or projection.
    dropout: language modelling only: dropout on the embedding and on the core's output.
    tie_weights: language modelling only: the readout shares the embedding's weight.
    conv_channels: video only: channels of the encoder's first convolution (doubled at each next one).
    conv_layers: video only: stride-2 convolutions of the encoder (and transposed ones of the decoder).
    frame_skip: video only: the decoder also sees the frame just read (:mod:`brims_experiments.tasks.video`).
    conv_activation: video only: the encoder's and decoder's nonlinearity, ``relu`` or ``leaky_relu``
        (slope 0.01 below 0: a unit that no frame drives above 0 still learns; with ``relu`` the
        encoder can die, see :mod:`brims_experiments.tasks.video`).
    """

    core: CoreConfig = field(default_factory=CoreConfig)
    embedding_size: int = 300
    dropout: float = 0.0
    tie_weights: bool = False
    conv_channels: int = 16
    conv_layers: int = 3
    frame_skip: bool = False
    conv_activation: str = "relu"

    def __post_init__(self) -> None:
        positive_int("model.embedding_size", self.embedding_size)
        require(is_number(self.dropout) and 0 <= self.dropout < 1,
                f"model.dropout must be in [0, 1), got {self.dropout!r}")
        require(isinstance(self.tie_weights, bool), f"model.tie_weights must be true or false, got {self.tie_weights!r}")
        positive_int("model.conv_channels", self.conv_channels)
        positive_int("model.conv_layers", self.conv_layers)
        require(isinstance(self.frame_skip, bool), f"model.frame_skip must be true or false, got {self.frame_skip!r}")
        require(self.conv_activation in ACTIVATIONS, f"model.conv_activation must be one of "
                f"{', '.join(ACTIVATIONS)}, got {self.conv_activation!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Attributes:
    epochs: passes over the training split (the budget).
    max_steps: stop after this many optimiser steps even within an epoch (0: no limit).
    checkpoint_every: steps between ``last.ckpt`` saves (what a crash can lose at most).
    validate_every: steps between validations (0: once per epoch).
    accelerator, devices, strategy, precision: passed to the Lightning ``Trainer``.
    threads: CPU threads for torch (0: torch's default).
    lr_schedule: ``constant`` (the papers') or ``cosine``: a decay from ``lr`` to ``lr * lr_final_fraction``
        over the budget (:mod:`brims_experiments.train.schedule`).
    lr_final_fraction: cosine only: the learning rate of the budget's last step as a fraction of ``lr``.
    logger: ``csv`` (``logs/metrics.csv``, always written) or ``tensorboard`` (also TensorBoard
        event files in ``logs/tensorboard``).
    """

    epochs: int = 100
    max_steps: int = 0
    lr: float = 1e-3
    lr_schedule: str = "constant"
    lr_final_fraction: float = 0.0
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
        require(is_number(self.lr) and self.lr > 0, f"train.lr must be a number > 0, got {self.lr!r}")
        require(self.lr_schedule in SCHEDULES,
                f"train.lr_schedule must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule!r}")
        require(is_number(self.lr_final_fraction) and 0 <= self.lr_final_fraction <= 1,
                f"train.lr_final_fraction must be a number in [0, 1], got {self.lr_final_fraction!r}")
        require(self.lr_schedule == "cosine" or self.lr_final_fraction == 0,
                f"train.lr_final_fraction={self.lr_final_fraction} is read by train.lr_schedule=cosine only "
                f"(this run's schedule is {self.lr_schedule})")
        require(is_number(self.grad_clip) and self.grad_clip >= 0,
                f"train.grad_clip must be a number >= 0 (0: off), got {self.grad_clip!r}")
        int_at_least("train.seed", self.seed, 0)
        positive_int("train.checkpoint_every", self.checkpoint_every)
        int_at_least("train.validate_every", self.validate_every, 0, " (0: once per epoch)")
        require(not (self.max_steps and self.validate_every > self.max_steps),
                f"train.validate_every={self.validate_every} exceeds train.max_steps={self.max_steps}: training "
                "would stop before its first validation and leave no best checkpoint to test")
        int_at_least("train.threads", self.threads, 0, " (0: torch's default)")
        devices = self.devices  # Lightning's: a count (-1: all), "auto", "0,1", or a list of indices
        require((is_int(devices) and (devices >= 1 or devices == -1)) or (isinstance(devices, str) and bool(devices))
                or (isinstance(devices, (list, tuple)) and bool(devices)
                    and all(is_int(index) and index >= 0 for index in devices)),
                f"train.devices must be auto, a count >= 1 (-1: all) or a list of device indices, got {devices!r}")
        check_logger(self.logger)


def supervised(name: Any) -> Any:
    """The supervised experiment (a :class:`brims_experiments.train.supervised.SupervisedExperiment` class) registered as
    ``name``; a :class:`ConfigError` for an unknown name or one with another kind of config (RL)."""
    found = experiment(name)
    require(hasattr(found, "data_config"),
            f"task {name} has its own kind of config, not task, data, model and train sections")
    return found


# The model fields that only some experiments read (their ``model_fields``); others keep the defaults.
OPTIONAL_MODEL_FIELDS = ("dropout", "tie_weights", "conv_channels", "conv_layers", "frame_skip", "conv_activation")


def _fields_in_words(names: tuple[str, ...]) -> str:
    named = [f"model.{name}" for name in names]
    return named[0] if len(named) == 1 else f"{', '.join(named[:-1])} and {named[-1]}"


@dataclass(frozen=True)
class ExperimentConfig:
    task: str = DEFAULT
    data: Any = None  # the experiment's data_config (its defaults when not given)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        found = supervised(self.task)
        if self.data is None:
            object.__setattr__(self, "data", found.data_config())
        require(type(self.data) is found.data_config,
                f"data of task {self.task} must be a {found.data_config.__name__}, got {type(self.data).__name__}")
        defaults = ModelConfig.__dataclass_fields__
        unused = [name for name in OPTIONAL_MODEL_FIELDS
                  if name not in found.model_fields and getattr(self.model, name) != defaults[name].default]
        if unused:
            from brims_experiments.experiments import EXPERIMENTS

            owner = next(other for other in map(experiment, EXPERIMENTS) if unused[0] in getattr(other, "model_fields", ()))
            require(False, f"{_fields_in_words(owner.model_fields)} apply to task {owner.name} only, not {self.task}")
        found.check_config(self)

    def as_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.as_dict(), sort_keys=False)


def _data_section(values: dict[str, Any]) -> type | None:
    try:
        return supervised(values.get("task", DEFAULT)).data_config
    except ConfigError:
        return None  # ExperimentConfig names the problem


register_sections({
    (ExperimentConfig, "data"): _data_section,
    (ExperimentConfig, "model"): ModelConfig,
    (ExperimentConfig, "train"): TrainConfig,
    (ModelConfig, "core"): CoreConfig,
})


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> ExperimentConfig:
    """The task's defaults ← ``base`` ← the YAML file at ``path`` ← ``overrides``, validated; the config
    is constructed once, from the merged values."""
    layers = config_layers(path, overrides, base, "task, data, model, train")
    task = next((layer["task"] for layer in reversed(layers) if "task" in layer), DEFAULT)
    defaults = {"task": task, "data": supervised(task).data_config(), "model": ModelConfig(), "train": TrainConfig()}
    values = plain({name: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
                    for name, value in defaults.items()})
    for layer in layers:
        values = merge(values, layer)
    return build_config(ExperimentConfig, values, "")
