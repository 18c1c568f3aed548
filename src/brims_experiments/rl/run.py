"""An RL run folder, end to end: train (or resume) with recurrent PPO, evaluate, plot.

Layout of ``runs/<name>/``::

    config.yaml              the resolved config (what ``brims train <run folder>`` resumes)
    checkpoints/last.ckpt    every ``train.checkpoint_every`` updates and at the end
    logs/metrics.csv         one row per update: ``steps`` (environment steps trained), episodes ended,
                             their mean return, losses (the layout of every run folder's log)
    metrics.json             the final policy's evaluation (``brims test``) and the training summary
    learning_curve.png       return against environment steps

A checkpoint holds the config, the environment's id and spaces, the weights, the optimizer,
the update count, torch's random state and the metric rows so far. Resuming restores all of
these and restarts the environments (freshly seeded from the update count; episodes running
at the interruption are lost), so the curve continues from the checkpoint's step.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brims_experiments.checkpoints import (
    FORMAT_KEY,
    FORMAT_VERSION,
    AtomicCheckpointIO,
    CheckpointError,
    read_checkpoint,
)
from brims_experiments.config_files import ConfigError
from brims_experiments.data.store import atomic_write_text
from brims_experiments.devices import check_device
from brims_experiments.figures import MODEL_NAMES, save_figure
from brims_experiments.rl.agent import RecurrentActorCritic
from brims_experiments.rl.config import RLConfig, load_rl_config
from brims_experiments.rl.envs import EnvSpaces, env_spaces, make_vector_env, reference_returns
from brims_experiments.rl.ppo import Collector, ppo_update
from brims_experiments.run_folder import (
    CONFIG_FILE,
    LOG_FILE,
    METRICS_FILE,
    STEPS_COLUMN,
    TRAIN_TIME_FILE,
    TrainingSession,
    check_checkpoint_config,
    check_run_dir,
    prepare_run_dir,
    read_json,
    results_folder,
    tensorboard_logger,
)
from brims_experiments.run_lock import RunFolderLock

log = logging.getLogger(__name__)
CURVE_FILE = LOG_FILE
LEGACY_CURVE_FILE = "metrics.csv"  # brims 0.3 and earlier: at the folder's root, with ``env_steps``
PLOT_FILE = "learning_curve.png"
LAST = Path("checkpoints") / "last.ckpt"
RETURN_WINDOW = 100  # episodes in the reported average training return
EVAL_SEED = 1_000_000  # evaluation episodes are seeded apart from every training reset


def check_checkpoint_env(checkpoint: dict[str, Any], path: Path, config: RLConfig, spaces: EnvSpaces) -> None:
    """Refuse a checkpoint trained on another environment (or with other spaces) than ``config``'s."""
    saved = checkpoint[FORMAT_KEY].get("task_state", {})
    if saved.get("task") != "rl":
        raise CheckpointError(f"{path} is not an RL checkpoint (task {saved.get('task', 'unknown')!r})")
    if saved.get("env_id") != config.env.id or saved.get("hide_velocity") != config.env.hide_velocity:
        raise CheckpointError(f"{path} was trained on {saved.get('env_id')!r} (hide_velocity="
                              f"{saved.get('hide_velocity')}), not on {config.env.id!r} (hide_velocity="
                              f"{config.env.hide_velocity}); use a run folder of that environment")
    if saved.get("spaces") != spaces.as_dict():
        raise CheckpointError(f"{path} was trained with spaces {saved.get('spaces')}, but {config.env.id} now has "
                              f"{spaces.as_dict()}")


def _save(path: Path, config: RLConfig, spaces: EnvSpaces, agent: RecurrentActorCritic,
          optimizer: torch.optim.Optimizer, update: int, rows: list[dict[str, float]], recent: list[float]) -> None:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    header = {"format": FORMAT_VERSION, "config": config.as_dict(),
              "task_state": {"task": "rl", "env_id": config.env.id, "hide_velocity": config.env.hide_velocity,
                             "spaces": spaces.as_dict()}}
    checkpoint = {FORMAT_KEY: header, "state_dict": agent.state_dict(), "optimizer": optimizer.state_dict(),
                  "update": update, "env_steps": update * config.steps_per_update, "rows": rows,
                  "recent_returns": recent, "rng": rng}
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)


def _write_curve(run_dir: Path, rows: list[dict[str, float]]) -> None:
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    (run_dir / CURVE_FILE).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CURVE_FILE, buffer.getvalue())


def _load_weights(agent: RecurrentActorCritic, checkpoint: dict[str, Any], path: Path) -> None:
    try:
        agent.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, KeyError) as error:
        raise CheckpointError(f"{path}: weights do not fit the model of its config "
                              f"({str(error).splitlines()[0]})") from None


def train(run_dir: str | Path, config: RLConfig | None = None, progress: bool = True,
          test_after: bool = True, announce: Callable[[RLConfig], None] | None = None) -> dict[str, Any]:
    """Train a new run in ``run_dir`` or resume the one there from ``last.ckpt``; then evaluate it.
    ``announce(config)`` is called once every check has passed, before the run starts."""
    run_dir = Path(run_dir)
    if config is None:
        config = prepare_run_dir(run_dir, None, load_rl_config)  # resume with the folder's own config
    else:
        check_run_dir(run_dir, config, load_rl_config)  # a folder of another run, before anything is built
    # Everything that can refuse the start, before the folder becomes a run: a failed start leaves
    # nothing that blocks the corrected command.
    spaces = env_spaces(config.env)  # unknown id or unsupported spaces
    device = check_device(config.train.device, "train.device")
    config.model.core.check_device(device.type, "train.device=cuda")
    if announce is not None:
        announce(config)
    with RunFolderLock(run_dir):
        return _train_holding_lock(run_dir, config, spaces, device, progress, test_after)


def _train_holding_lock(run_dir: Path, config: RLConfig, spaces: EnvSpaces, device: torch.device, progress: bool,
                        test_after: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    torch.manual_seed(config.train.seed)
    agent = RecurrentActorCritic(spaces, config.model).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=config.ppo.lr, eps=1e-5)
    config = prepare_run_dir(run_dir, config, load_rl_config)
    update, rows, recent = 0, [], []
    last = run_dir / LAST
    if last.is_file():
        checkpoint = read_checkpoint(last)
        check_checkpoint_env(checkpoint, last, config, spaces)  # the more specific message first
        check_checkpoint_config(checkpoint, config, last)
        _load_weights(agent, checkpoint, last)
        optimizer.load_state_dict(checkpoint["optimizer"])
        update, rows, recent = checkpoint["update"], list(checkpoint["rows"]), list(checkpoint["recent_returns"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if device.type == "cuda" and "cuda" in checkpoint["rng"]:
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
        log.info("resuming %s from %s (update %d, %d env steps)", run_dir, last, update, checkpoint["env_steps"])
    total = config.total_updates
    metrics_path = run_dir / METRICS_FILE
    if update >= total and metrics_path.is_file():
        log.info("%s was already finished; its metrics stand (`brims test` re-evaluates)", run_dir)
        return read_json(metrics_path, "the run's test metrics")
    envs = make_vector_env(config.env)
    # Each (re)start seeds its resets apart from every other start of this run.
    collector = Collector(envs, agent, device, seed=config.train.seed * 100_003 + update * config.env.num_envs,
                          window=RETURN_WINDOW)
    collector.recent.extend(recent)
    session, session_start = TrainingSession(run_dir), update
    session.earlier_sessions()  # a corrupted record refuses the start, not the first checkpoint
    offset = rows[-1]["seconds"] if rows else 0.0  # the curve's clock runs on across sessions
    board = tensorboard_logger(run_dir, rows[-1][STEPS_COLUMN] if rows else 0) if config.train.logger == "tensorboard" else None
    bar = tqdm(total=total, initial=update, disable=not progress, unit="update", dynamic_ncols=True)
    try:
        while update < total:
            rollout, finished = collector.collect(config.ppo)
            losses = ppo_update(agent, optimizer, rollout, config.ppo)
            update += 1
            returns = [r for r, _ in finished]
            rows.append({
                "update": update,
                STEPS_COLUMN: update * config.steps_per_update,  # environment steps
                "episodes": len(finished),
                "mean_return": float(np.mean(returns)) if returns else math.nan,
                "mean_length": float(np.mean([n for _, n in finished])) if finished else math.nan,
                f"return_last{RETURN_WINDOW}": float(np.mean(collector.recent)) if collector.recent else math.nan,
                **losses,
                "seconds": round(offset + session.elapsed(), 2),
            })
            if board is not None:
                board.log_metrics({k: v for k, v in rows[-1].items() if k not in ("update", STEPS_COLUMN)},
                                  step=rows[-1][STEPS_COLUMN])
            bar.update(1)
            bar.set_postfix(steps=rows[-1][STEPS_COLUMN], avg_return=f"{rows[-1][f'return_last{RETURN_WINDOW}']:.1f}")
            if update % config.train.checkpoint_every == 0 or update == total:
                _save(last, config, spaces, agent, optimizer, update, rows, list(collector.recent))
                _write_curve(run_dir, rows)
                session.record(from_update=session_start, to_update=update)
    finally:
        bar.close()
        envs.close()
        if board is not None:
            board.finalize("success")
    session.record(ended=True, from_update=session_start, to_update=update)
    plot_curves([(MODEL_NAMES[config.model.core.kind], rows)], run_dir / PLOT_FILE, env_title(config.env),
                reference_returns(config.env))
    return test(run_dir, progress=progress, lock=False) if test_after else summary(last)


def summary(checkpoint_path: Path) -> dict[str, Any]:
    """The training side of ``metrics.json``, from a checkpoint: budget, final average return, time."""
    checkpoint = read_checkpoint(checkpoint_path)
    run_dir = checkpoint_path.parent.parent
    config = load_rl_config(base=checkpoint[FORMAT_KEY]["config"])
    rows = checkpoint["rows"]
    recent = checkpoint["recent_returns"]
    train_time = run_dir / TRAIN_TIME_FILE
    return {
        "task": "rl",
        "env": config.env.id + (" (velocity hidden)" if config.env.hide_velocity else ""),
        "model": config.model.core.kind,
        "seed": config.train.seed,
        "env_steps": checkpoint["env_steps"],
        "updates": checkpoint["update"],
        f"train_return_last{RETURN_WINDOW}": float(np.mean(recent)) if recent else None,
        "train_episodes": int(sum(row["episodes"] for row in rows)),
        "train_seconds": json.loads(train_time.read_text())["seconds"] if train_time.is_file() else None,
    }


def evaluate(agent: RecurrentActorCritic, config: RLConfig, episodes: int, device: torch.device,
             seed: int = EVAL_SEED, progress: bool = False) -> list[float]:
    """Returns of ``episodes`` full episodes of the (sampling) policy on freshly seeded environments
    (``progress``: a bar over the episodes).

    Each environment plays a fixed quota of episodes one after another: counting whichever
    episodes end first would favour short ones.
    """
    from tqdm.auto import tqdm

    count = min(episodes, config.env.num_envs)
    quota = np.array([episodes // count + (i < episodes % count) for i in range(count)])
    played = np.zeros(count, dtype=np.int64)
    returns: list[float] = []
    envs = make_vector_env(config.env, count)
    bar = tqdm(total=episodes, disable=not progress, unit="episode", dynamic_ncols=True)
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        collector = Collector(envs, agent, device, seed=seed)
        agent.eval()
        with torch.no_grad():
            while (played < quota).any():
                logits, _, collector.state = agent.step(agent.normalizer(collector.obs), collector.state,
                                                        collector.starts)
                action = torch.distributions.Categorical(logits=logits).sample()
                obs, reward, terminated, truncated, _ = envs.step(action.cpu().numpy())
                collector.running_return += reward
                done = terminated | truncated
                for row in np.flatnonzero(done & (played < quota)):
                    returns.append(float(collector.running_return[row]))
                    bar.update()
                played += done
                collector.running_return[done] = 0.0
                collector.obs = torch.as_tensor(obs, device=device)
                collector.starts = torch.as_tensor(done, device=device)
    finally:
        bar.close()
        envs.close()
        torch.set_rng_state(generator_state)
    return returns


def load_agent(path: str | Path, device: torch.device | None = None) -> tuple[RLConfig, RecurrentActorCritic, Path]:
    """``(config, agent, checkpoint path)`` from a run folder or a ``.ckpt``, checked against its environment."""
    path = Path(path)
    checkpoint_path = path / LAST if path.is_dir() else path
    checkpoint = read_checkpoint(checkpoint_path)
    try:
        config = load_rl_config(base=checkpoint[FORMAT_KEY]["config"])
    except ConfigError as error:
        raise CheckpointError(f"{checkpoint_path}: its config is not an RL config here ({error})") from None
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        folder_config = load_rl_config(path / CONFIG_FILE)
        if folder_config.env != config.env:
            raise CheckpointError(f"{checkpoint_path} was trained on {config.env.id}, but {path} is a run of "
                                  f"{folder_config.env.id}")
    spaces = env_spaces(config.env)
    check_checkpoint_env(checkpoint, checkpoint_path, config, spaces)
    agent = RecurrentActorCritic(spaces, config.model)
    _load_weights(agent, checkpoint, checkpoint_path)
    return config, agent.to(device or check_device(config.train.device, "train.device")).eval(), checkpoint_path


def test(path: str | Path, device: str | None = None, episodes: int | None = None,
         progress: bool = True, out: str | Path | None = None, lock: bool = True) -> dict[str, Any]:
    """Play the saved policy for ``episodes`` (default ``train.eval_episodes``, with a progress bar
    unless ``progress=False``); write ``metrics.json``
    to ``out`` or the run folder (:func:`brims_experiments.run_folder.results_folder`), holding that folder's
    lock (``lock=False``: the caller holds it)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such run folder or checkpoint")
    folder = results_folder(path, out)
    with RunFolderLock(folder) if lock else contextlib.nullcontext():
        return _test_into(path, folder, device, episodes, progress)


def _test_into(path: Path, folder: Path, device: str | None, episodes: int | None, progress: bool) -> dict[str, Any]:
    config, agent, checkpoint_path = load_agent(path, check_device(device, "--device") if device else None)
    torch_device = next(agent.parameters()).device
    count = episodes or config.train.eval_episodes
    started = time.perf_counter()
    returns = evaluate(agent, config, count, torch_device, progress=progress)
    metrics = {
        **summary(checkpoint_path),
        "checkpoint": str(checkpoint_path),
        "parameters": sum(p.numel() for p in agent.parameters()),
        "test_episodes": count,
        "test_return_mean": float(np.mean(returns)),
        "test_return_std": float(np.std(returns)),
        "test_seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(folder / METRICS_FILE, json.dumps(metrics, indent=2))
    metrics["written_to"] = str(folder)
    return metrics


def env_title(config: Any) -> str:
    """The environment in words for a figure title."""
    return f"{config.id}, velocities hidden" if config.hide_velocity else config.id


def read_curve(run_dir: Path) -> list[dict[str, float]]:
    """The run's rows, ``steps`` being environment steps (a folder of brims 0.3 and earlier, with its
    log at the root and an ``env_steps`` column, is read the same way)."""
    if not (run_dir / CURVE_FILE).is_file() and (run_dir / LEGACY_CURVE_FILE).is_file():
        with open(run_dir / LEGACY_CURVE_FILE, newline="") as handle:
            rows = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]
        return [{STEPS_COLUMN: row.pop("env_steps"), **row} for row in rows]
    if not (run_dir / CURVE_FILE).is_file():
        raise ConfigError(f"{run_dir} has no {CURVE_FILE}: not an RL run folder with its training log")
    with open(run_dir / CURVE_FILE, newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def plot_curves(runs: list[tuple[str, list[dict[str, float]]]], path: Path, title: str,
                references: dict[str, float] | None = None) -> Path:
    """Average training return (last episodes) against environment steps, one line per run, and
    dashed the returns of policies that learn nothing (:func:`reference_returns`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    key = f"return_last{RETURN_WINDOW}"
    drawn = False
    for label, rows in runs:
        points = [(row[STEPS_COLUMN], row[key]) for row in rows if not math.isnan(row[key])]
        if points:
            axes.plot(*zip(*points), label=label)
            drawn = True
    for (name, value), style in zip((references or {}).items(), ("--", ":")):
        axes.axhline(value, color="grey", linestyle=style, linewidth=1, label=f"{name} ({value:.0f})")
        drawn = True
    axes.set_xlabel("environment steps")
    axes.set_ylabel(f"average return (last {RETURN_WINDOW} episodes)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if drawn:  # a run too short to finish an episode has no curve yet
        axes.legend()
    save_figure(figure, path)
    return path
