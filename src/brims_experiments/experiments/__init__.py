"""The experiments, by the name a config's ``task:`` gives: the one place that lists them.

Each line maps a name to the module that implements it; that module's ``EXPERIMENT`` is a
subclass of :class:`brims_experiments.experiments.base.Experiment` (the supervised ones of
:class:`brims_experiments.train.supervised.SupervisedExperiment`). Modules are imported when first asked for, so
``brims --help`` and an RL run import nothing of the other experiments. The presets of an
experiment are the YAML files in ``brims_experiments/configs`` that name its ``task``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from brims_experiments.experiments.base import Experiment

EXPERIMENTS: dict[str, str] = {
    "seqimage": "brims_experiments.experiments.seqimage",
    "copying": "brims_experiments.experiments.copying",
    "adding": "brims_experiments.experiments.adding",
    "lm": "brims_experiments.experiments.language",
    "video": "brims_experiments.experiments.video",
    "rl": "brims_experiments.rl.experiment",
}

# The experiment of a config that names no ``task``.
DEFAULT = "seqimage"


def experiment(name: Any) -> type[Experiment]:
    """The experiment registered as ``name``; a ``ConfigError`` listing the names for another."""
    if not isinstance(name, str) or name not in EXPERIMENTS:
        from brims_experiments.config_files import ConfigError

        raise ConfigError(f"task must be one of {sorted(EXPERIMENTS)}, got {name!r}")
    return importlib.import_module(EXPERIMENTS[name]).EXPERIMENT


def task_of(path: str | Path) -> str | None:
    """The ``task`` a YAML config names, without validating it: a run folder's ``config.yaml``, and
    for a ``.ckpt`` file that of the run folder whose ``checkpoints/`` holds it; None if none is named
    (or the file cannot be read: the experiment's loader then says why)."""
    from brims_experiments.config_files import declared_task
    from brims_experiments.run_folder import CONFIG_FILE

    path = Path(path)
    if path.suffix == ".ckpt":
        path = path.parent.parent
    if path.is_dir():
        path = path / CONFIG_FILE
    return declared_task(path)  # None for a missing or unreadable file too


def experiment_of(path: str | Path) -> type[Experiment]:
    """The experiment of a config file, run folder or checkpoint (:func:`task_of`; the default when it
    names none, as the supervised loader reads it)."""
    name = task_of(path)
    return experiment(DEFAULT if name is None else name)


def experiment_of_metrics(metrics: dict[str, Any]) -> type[Experiment]:
    """The experiment that wrote a run's ``metrics.json``."""
    return experiment(metrics.get("task", DEFAULT))
