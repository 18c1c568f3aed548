"""``brims train | test | compare`` for RL runs (``task: rl``); :mod:`brims_experiments.train.commands` dispatches here.

Printing happens here (the program's user interface); everything below it logs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from brims_experiments.rl.run import RETURN_WINDOW


def run_train(args: argparse.Namespace, config_path: Path | None) -> int:
    """``config_path`` None: ``args.config`` is a run folder to resume (checked by the caller)."""
    from brims_experiments.rl.config import load_rl_config
    from brims_experiments.rl.run import train
    from brims_experiments.run_folder import run_dir_for, say_if_compiling

    if config_path is None:
        run_dir, config = Path(args.config), None
    else:
        config = load_rl_config(config_path, args.set)
        run_dir = run_dir_for(args, config_path, config.model.core.kind)
    args.run_folder = run_dir  # for the message after Ctrl-C
    metrics = train(run_dir, config, progress=not args.no_progress, announce=say_if_compiling)
    print(format_table([metrics]))
    print(f"run folder: {run_dir}")
    return 0


def run_test(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from brims_experiments.rl.run import test

    if args.episodes is not None and args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    metrics = test(args.path, device=args.device, episodes=args.episodes, progress=not args.no_progress, out=args.out)
    print(format_table([metrics]))
    print(f"metrics written to {metrics['written_to']}")
    return 0


def run_compare(runs: list[dict[str, Any]], folders: list[str], plot: Path) -> None:
    """Print the table of finished RL runs and plot their learning curves together."""
    from brims_experiments.figures import MODEL_NAMES
    from brims_experiments.rl.config import load_rl_config
    from brims_experiments.rl.envs import reference_returns
    from brims_experiments.rl.run import env_title, plot_curves, read_curve
    from brims_experiments.run_folder import CONFIG_FILE

    print(format_table(runs, [Path(f).name for f in folders]))
    curves = [(f"{MODEL_NAMES.get(run['model'], run['model'])} ({Path(folder).name})", read_curve(Path(folder)))
              for run, folder in zip(runs, folders)]
    envs = list(dict.fromkeys(load_rl_config(Path(folder) / CONFIG_FILE).env for folder in folders))
    references = reference_returns(envs[0]) if len(envs) == 1 else {}  # one environment: its lines
    plot_curves(curves, plot, " / ".join(env_title(env) for env in envs), references)


def format_table(runs: list[dict[str, Any]], names: list[str] | None = None) -> str:
    """Markdown, one row per run: budget, final average training return, test return of the final policy."""
    header = ["run", "env", "model", "params", "seed", "env steps", f"train return (last {RETURN_WINDOW} ep.)",
              "test return (mean ± std, episodes)", "train time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, run in enumerate(runs):
        train_return = run.get(f"train_return_last{RETURN_WINDOW}")
        seconds = run.get("train_seconds")
        cells = [names[i] if names else run["model"], run["env"], run["model"], f"{run.get('parameters', 0):,}",
                 str(run["seed"]), f"{run['env_steps']:,}", "-" if train_return is None else f"{train_return:.1f}",
                 f"{run['test_return_mean']:.1f} ± {run['test_return_std']:.1f} ({run['test_episodes']})"
                 if "test_return_mean" in run else "-",
                 "-" if seconds is None else f"{seconds / 60:.1f} min"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

