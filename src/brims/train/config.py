"""Typed experiment configs, read from and written to YAML, with dotted command-line overrides.

A config has three sections, each a frozen dataclass validated on construction, so a bad
value fails before training starts with a message naming the field::

    data:  which data set, resolutions, split, batch sizes, noise levels
    model: the recurrent core (:class:`brims.tasks.cores.CoreConfig`) and the embedding
    train: optimiser, budget, checkpoint cadence, hardware

``--set train.epochs=3 model.kind=lstm`` overrides any field; values are parsed as YAML.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from brims.data.images import IMAGE_DATASETS
from brims.tasks.cores import CoreConfig
from brims.tasks.seqimage import Noise


class ConfigError(ValueError):
    """A config value is invalid; the message names the field."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _positive_int(name: str, value: Any) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
             f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Attributes:
    dataset: ``mnist``, ``fashion-mnist`` or ``cifar10``.
    train_resolution: side of the training images (sequence length is its square).
    test_resolutions: sides the test set is evaluated at (the training one is always added).
    noise: corruptions evaluated at the training resolution, ``<kind>-<level>``.
    validation_size: images held out of the training set (seeded) to select the checkpoint.
    train_limit: use only the first this many training images (0: all); for quick runs.
    """

    dataset: str = "mnist"
    train_resolution: int = 14
    test_resolutions: tuple[int, ...] = (16, 19, 24)
    noise: tuple[str, ...] = ("gaussian-0.1", "gaussian-0.3", "flip-0.02", "flip-0.05")
    validation_size: int = 5000
    train_limit: int = 0
    batch_size: int = 64
    eval_batch_size: int = 500
    data_dir: str | None = None

    def __post_init__(self) -> None:
        _require(self.dataset in IMAGE_DATASETS, f"data.dataset must be one of {sorted(IMAGE_DATASETS)}, "
                 f"got {self.dataset!r}")
        for name in ("test_resolutions", "noise"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        _positive_int("data.train_resolution", self.train_resolution)
        for size in self.test_resolutions:
            _positive_int("data.test_resolutions[]", size)
        for text in self.noise:
            try:
                noise = Noise.parse(text)
            except ValueError as error:
                raise ConfigError(f"data.noise: {error}") from None
            _require(noise.kind != "flip" or self.binarized,
                     f"data.noise: {text!r} applies to binarised data, not {self.dataset}")
        _positive_int("data.validation_size", self.validation_size)
        _require(isinstance(self.train_limit, int) and self.train_limit >= 0,
                 f"data.train_limit must be >= 0, got {self.train_limit!r}")
        _positive_int("data.batch_size", self.batch_size)
        _positive_int("data.eval_batch_size", self.eval_batch_size)

    @property
    def binarized(self) -> bool:
        return IMAGE_DATASETS[self.dataset].channels == 1

    @property
    def all_test_resolutions(self) -> tuple[int, ...]:
        return tuple(sorted({self.train_resolution, *self.test_resolutions}))


@dataclass(frozen=True)
class ModelConfig:
    core: CoreConfig = field(default_factory=CoreConfig)
    embedding_size: int = 300

    def __post_init__(self) -> None:
        _positive_int("model.embedding_size", self.embedding_size)


@dataclass(frozen=True)
class TrainConfig:
    """Attributes:
    epochs: passes over the training split (the budget).
    checkpoint_every: steps between ``last.ckpt`` saves (what a crash can lose at most).
    validate_every: steps between validations (0: once per epoch).
    accelerator, devices, strategy, precision: passed to the Lightning ``Trainer``.
    threads: CPU threads for torch (0: torch's default).
    """

    epochs: int = 100
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

    def __post_init__(self) -> None:
        _positive_int("train.epochs", self.epochs)
        _require(isinstance(self.lr, (int, float)) and self.lr > 0, f"train.lr must be > 0, got {self.lr!r}")
        _require(isinstance(self.grad_clip, (int, float)) and self.grad_clip >= 0,
                 f"train.grad_clip must be >= 0 (0: off), got {self.grad_clip!r}")
        _positive_int("train.checkpoint_every", self.checkpoint_every)
        _require(isinstance(self.validate_every, int) and self.validate_every >= 0,
                 f"train.validate_every must be >= 0, got {self.validate_every!r}")
        _require(isinstance(self.threads, int) and self.threads >= 0, f"train.threads must be >= 0, got {self.threads!r}")


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def as_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.as_dict(), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(cls: type, values: Any, path: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown field {path + '.' if path else ''}{unknown[0]}; known: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        sub = _SECTIONS.get((cls, name))
        kwargs[name] = _build(sub, value, f"{path}.{name}" if path else name) if sub else value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{path or 'config'}: {error}") from None


_SECTIONS = {
    (ExperimentConfig, "data"): DataConfig,
    (ExperimentConfig, "model"): ModelConfig,
    (ExperimentConfig, "train"): TrainConfig,
    (ModelConfig, "core"): CoreConfig,
}


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """``["train.epochs=3", "model.core.kind=lstm"]`` → nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {assignment!r} must look like section.field=value")
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(text)
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> ExperimentConfig:
    """Defaults ← ``base`` ← the YAML file at ``path`` ← ``overrides``, validated."""
    values = ExperimentConfig().as_dict()
    if base:
        values = _merge(values, base)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (data, model, train)")
        values = _merge(values, loaded)
    if overrides:
        values = _merge(values, parse_overrides(overrides))
    return _build(ExperimentConfig, values, "")
