"""A supervised experiment as the generic commands see it: :class:`Task` (what the experiment
implements) joined to the lifecycle that trains, resumes, tests and compares every supervised
run (:mod:`brims_experiments.train.run`). Every supervised experiment's class subclasses
:class:`SupervisedExperiment`; RL has its own (:mod:`brims_experiments.rl.experiment`).

The import graph runs one way: this module imports the lifecycle, which imports the interface
(:mod:`brims_experiments.train.tasks`), which imports neither.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from brims_experiments.figures import title_of
from brims_experiments.run_folder import run_dir_for, say_if_compiling
from brims_experiments.train.config import load_config
from brims_experiments.train.plots import plot_test_summary
from brims_experiments.train.run import load_trained, test, train
from brims_experiments.train.tasks import Task


class SupervisedExperiment(Task):
    """:class:`Task` with the generic commands' methods implemented once for every supervised experiment."""

    @classmethod
    def train_command(cls, args: argparse.Namespace, config_path: Path | None) -> int:
        if config_path is None:
            run_dir, config = Path(args.config), None
        else:
            config = load_config(config_path, args.set)
            run_dir = run_dir_for(args, config_path, config.model.core.kind)
        args.run_folder = run_dir  # for the message after Ctrl-C
        metrics = train(run_dir, config, progress=not args.no_progress, announce=say_if_compiling)
        if metrics is not None:
            print(cls.format_table([metrics]))
            print(f"run folder: {run_dir}")
        return 0

    @classmethod
    def test_command(cls, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        if args.episodes is not None:
            parser.error("--episodes applies to RL runs only")
        metrics = test(args.path, device=args.device, progress=not args.no_progress, out=args.out)
        print(cls.format_table([metrics]))
        print(f"metrics and figures written to {metrics['written_to']}")
        return 0

    @classmethod
    def compare(cls, runs: list[dict[str, Any]], folders: list[str], plot: Path) -> None:
        print(cls.format_table(runs, [Path(f).name for f in folders]))
        plot_test_summary(runs, plot, title_of(runs[0], with_model=False))

    @classmethod
    def load_trained(cls, path: Path, device: Any) -> tuple[Any, Any, Any, Path]:
        config, model, _ = load_trained(path, device)
        checkpoint = path / "checkpoints" / "best.ckpt" if path.is_dir() else path
        return config, model, model.core.network, checkpoint
