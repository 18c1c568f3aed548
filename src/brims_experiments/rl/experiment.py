"""Reinforcement learning (``task: rl``) as the generic commands see it: recurrent PPO on a gymnasium
environment, with its own config sections and lifecycle (:mod:`brims_experiments.rl.run`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from brims_experiments.experiments.base import Experiment


class RLExperiment(Experiment):
    name = "rl"

    @classmethod
    def load_config(cls, path: str | Path | None = None, overrides: list[str] | None = None,
                    base: dict[str, Any] | None = None) -> Any:
        from brims_experiments.rl.config import load_rl_config

        return load_rl_config(path, overrides, base)

    @classmethod
    def budget(cls, config: Any) -> str:
        return f"{config.ppo.total_steps:,} environment steps"

    @classmethod
    def train_command(cls, args: argparse.Namespace, config_path: Path | None) -> int:
        from brims_experiments.rl.commands import run_train

        return run_train(args, config_path)

    @classmethod
    def test_command(cls, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        from brims_experiments.rl.commands import run_test

        return run_test(args, parser)

    @classmethod
    def compare(cls, runs: list[dict[str, Any]], folders: list[str], plot: Path) -> None:
        from brims_experiments.rl.commands import run_compare

        run_compare(runs, folders, plot)

    @classmethod
    def format_table(cls, runs: list[dict[str, Any]], names: list[str] | None = None) -> str:
        from brims_experiments.rl.commands import format_table

        return format_table(runs, names)

    @classmethod
    def data_words(cls, metrics: dict[str, Any]) -> str:
        return str(metrics.get("env", "RL"))

    @classmethod
    def load_trained(cls, path: Path, device: Any) -> tuple[Any, Any, Any, Path]:
        import torch

        from brims_experiments.rl.run import load_agent

        config, agent, checkpoint = load_agent(path, torch.device(device))
        return config, agent, agent.core.network, checkpoint


EXPERIMENT = RLExperiment
