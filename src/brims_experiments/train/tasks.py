"""The supervised experiment interface: what the harness asks of an experiment, behind one class.

A supervised experiment is one module of :mod:`brims_experiments.experiments` that subclasses
:class:`Task` and registers it there (``docs/adding-an-experiment.md`` walks through one). The
class says, without a config: its name, its ``data`` config dataclass, the optional model fields
it reads, its checkpoint monitor, what the learning curve and the summary figure draw, its
results table and its title words. An instance, built once per run from the run's config,
builds the model, computes the loss and metrics of a batch, provides the Lightning data module,
checks its data before training, evaluates a trained model on every test condition and draws
its figures. The lifecycle (train, resume, test, compare) is the same for all of them and lives
in :mod:`brims_experiments.train.run`, which builds on this interface; an experiment's class
subclasses :class:`brims_experiments.train.supervised.SupervisedExperiment`, the ``Task`` that
connects that lifecycle to the generic commands (so nothing here imports the lifecycle).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor, nn

from brims_experiments.experiments.base import Experiment
from brims_experiments.train.config import ExperimentConfig

log = logging.getLogger(__name__)
Batch = tuple[Tensor, Tensor]


class Task(Experiment):
    """A supervised experiment; the per-run methods are instance methods of the run's config.

    Class attributes:
        name: its ``task:`` value (in configs, checkpoints and ``metrics.json``).
        data_config: the frozen dataclass of its ``data`` section.
        model_fields: the optional ``model`` fields it reads (``dropout``...); others must keep
            their defaults.
        monitor, mode: the validation metric that selects ``best.ckpt``, and whether higher
            (``max``) or lower is better.
        learning_metric: the validation metric the learning curve draws (the loss if not logged).
        summary_file: the file name of the per-run summary figure (:meth:`summary_figure`).
        activity_header: the height of the input row of the module-activity figure (1: a panel).
    """

    data_config: ClassVar[type]
    model_fields: ClassVar[tuple[str, ...]] = ()
    monitor: ClassVar[str] = "val/loss"
    mode: ClassVar[str] = "min"
    learning_metric: ClassVar[str] = "loss"
    summary_file: ClassVar[str] = ""
    activity_header: ClassVar[float] = 1.0

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config

    # ---- per run: model, loss, data, evaluation -------------------------------------------------

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """``(loss, {metric: value})`` of one batch (logged as ``train/<metric>``, ``val/<metric>``)."""
        raise NotImplementedError

    def datamodule(self) -> L.LightningDataModule:
        raise NotImplementedError

    def check_data(self) -> None:
        """Raise a clear error when the data is missing (generated tasks need nothing)."""

    def evaluate(self, model: nn.Module, device: torch.device, progress: bool) -> dict[str, Any]:
        """The test results, merged into ``metrics.json`` beside the run's details."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What the task carries between batches (saved in checkpoints); most carry nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def check_checkpoint(self, state: dict[str, Any]) -> None:
        """Raise if a checkpoint's saved task state does not fit this task's data."""

    # ---- per run: figures -----------------------------------------------------------------------

    def figures(self, run_dir: Path, model: nn.Module, metrics: dict[str, Any], title: str) -> list[Path]:
        """The run's test figures besides the learning curves and module activity: by default the
        summary figure of this run alone, as ``summary_file``."""
        from brims_experiments.train.plots import plot_test_summary

        return [plot_test_summary([metrics], run_dir / self.summary_file, title)]

    def activity_input(self) -> tuple[Tensor, str]:
        """One test sequence ``(1, T, ...)`` for the module-activity figure, and its caption."""
        raise NotImplementedError

    def prediction_words(self, output: Tensor) -> str:
        """The model's prediction for :meth:`activity_input` in words ("" for none)."""
        return ""

    def draw_activity_input(self, axes: Any, inputs: Tensor, caption: str, prediction: str) -> None:
        """The top row (two panels) of the module-activity figure: what the model read."""
        raise NotImplementedError

    # ---- per experiment: config, results, figures of several runs -------------------------------

    @classmethod
    def check_config(cls, config: ExperimentConfig) -> None:
        """Raise a ``ConfigError`` for a combination of sections this experiment cannot run."""

    @classmethod
    def summary_figure(cls, runs: list[dict[str, Any]], title: str) -> Any:
        """The matplotlib figure of the test results of ``runs`` (their ``metrics.json``), one line per run."""
        raise NotImplementedError

    @classmethod
    def data_words(cls, metrics: dict[str, Any]) -> str:
        return str(metrics.get("dataset", metrics.get("task")))

    @classmethod
    def load_config(cls, path: str | Path | None = None, overrides: list[str] | None = None,
                    base: dict[str, Any] | None = None) -> ExperimentConfig:
        from brims_experiments.train.config import load_config

        return load_config(path, overrides, base)

    @classmethod
    def budget(cls, config: ExperimentConfig) -> str:
        if config.train.max_steps:
            return f"{config.train.max_steps:,} steps"
        return f"{config.train.epochs} epoch{'s' if config.train.epochs != 1 else ''}"


def make_task(config: ExperimentConfig) -> Task:
    """The task of a run's config (build it once per run and pass it on)."""
    from brims_experiments.experiments import experiment

    return experiment(config.task)(config)


def markdown_table(header: list[str], rows: list[list[str]], notes: list[str] = ()) -> str:
    """A markdown table, then each note after a blank line."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    lines += [f"\n{note}" for note in notes]
    return "\n".join(lines)


def condition_table(runs: list[dict[str, Any]], names: list[str] | None, key: str, label: str,
                    cell: Any, best: Any, monitor: str, notes: list[str] = ()) -> str:
    """One row per run: run, model, parameters, the best validation ``monitor`` (``best(value)``) and
    ``cell(result)`` at every integer test condition in ``run[key]`` (column ``label.format(c=...)``),
    then each noise kind's accuracy (sequential images)."""
    conditions = sorted({int(c) for run in runs for c in run[key]})
    noises = list(dict.fromkeys(n for run in runs for n in run.get("noise", {})))
    header = (["run", "model", "params", "best " + monitor] + [label.format(c=c) for c in conditions]
              + [f"{n} acc %" for n in noises])
    rows = []
    for i, run in enumerate(runs):
        score = run.get(monitor)
        cells = [names[i] if names else run["model"], run["model"], f"{run['parameters']:,}",
                 "-" if score is None else best(score)]
        for condition in conditions:
            result = run[key].get(str(condition))
            cells.append("-" if result is None else cell(result))
        cells += [f"{100 * run['noise'][n]['acc']:.1f}" if n in run.get("noise", {}) else "-" for n in noises]
        rows.append(cells)
    return markdown_table(header, rows, notes)
