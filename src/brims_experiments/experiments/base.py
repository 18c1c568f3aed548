"""What the generic commands (``brims train | test | compare | presets | config``, ``load_run``,
``brims reproduce``) ask of every experiment, supervised or RL.

An experiment is a class registered by name in :mod:`brims_experiments.experiments`; its methods
here are class methods (they need no config, only a path, a config or ``metrics.json`` values).
Supervised experiments subclass :class:`brims_experiments.train.supervised.SupervisedExperiment`,
which implements the lifecycle methods once for all of them; RL (:mod:`brims_experiments.rl.experiment`) has its own.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, ClassVar


class Experiment:
    """The interface; the methods that raise ``NotImplementedError`` must be overridden (see
    :class:`brims_experiments.train.supervised.SupervisedExperiment`).

    ``name`` is the ``task:`` value of its configs and ``metrics.json``.
    """

    name: ClassVar[str] = ""

    @classmethod
    def load_config(cls, path: str | Path | None = None, overrides: list[str] | None = None,
                    base: dict[str, Any] | None = None) -> Any:
        """The experiment's defaults ← ``base`` ← the YAML file at ``path`` ← ``overrides``, validated."""
        raise NotImplementedError

    @classmethod
    def budget(cls, config: Any) -> str:
        """The training budget of ``config`` in words (``brims presets``)."""
        raise NotImplementedError

    @classmethod
    def train_command(cls, args: argparse.Namespace, config_path: Path | None) -> int:
        """``brims train`` of a config file (``config_path``) or, when None, the resume of the run
        folder ``args.config`` (checked, locked and its config amended by the caller)."""
        raise NotImplementedError

    @classmethod
    def test_command(cls, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        """``brims test`` of ``args.path`` (a run folder or checkpoint of this experiment)."""
        raise NotImplementedError

    @classmethod
    def compare(cls, runs: list[dict[str, Any]], folders: list[str], plot: Path) -> None:
        """``brims compare``: print the table of the runs' ``metrics.json`` and save the plot at ``plot``."""
        raise NotImplementedError

    @classmethod
    def format_table(cls, runs: list[dict[str, Any]], names: list[str] | None = None) -> str:
        """Markdown, one row per run's ``metrics.json`` (``names``: the rows' run names)."""
        raise NotImplementedError

    @classmethod
    def data_words(cls, metrics: dict[str, Any]) -> str:
        """What the run learned, in words, for figure titles (``BRIMs on <this>``)."""
        raise NotImplementedError

    @classmethod
    def fetched_data(cls, config: Any) -> tuple[str, str | None] | None:
        """The data set ``brims fetch`` must prepare for ``config`` and its ``data.data_dir``; None when
        it reads nothing fetched (generated data, environments)."""
        return None

    @classmethod
    def load_trained(cls, path: Path, device: Any) -> tuple[Any, Any, Any, Path]:
        """``(config, model in eval mode, its recurrent core network, checkpoint path)`` of a run folder
        or checkpoint (:func:`brims_experiments.load_run`)."""
        raise NotImplementedError
