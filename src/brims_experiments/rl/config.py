"""Typed configs of the reinforcement-learning runs (``task: rl``), YAML with ``--set`` overrides.

Same conventions as :mod:`brims_experiments.train.config` (frozen dataclasses validated on construction,
errors naming the field), with RL's own sections::

    env:   the gymnasium environment id, its wrappers, how many copies run side by side
    model: the recurrent core (:class:`brims_experiments.tasks.cores.CoreConfig`) and the encoder width
    ppo:   the budget in environment steps and the PPO hyper-parameters
    train: seed, threads, device, checkpoint cadence, evaluation episodes
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from brims_experiments.config_files import (
    build_config,
    config_layers,
    int_at_least,
    merge,
    plain,
    positive_int,
    register_sections,
    require,
)
from brims_experiments.devices import parse_device
from brims_experiments.experiments import task_of  # noqa: F401 -- where it used to be
from brims_experiments.run_folder import check_logger
from brims_experiments.tasks.cores import CoreConfig

TASK = "rl"


def _number_in(name: str, value: Any, low: float, high: float, meaning: str) -> None:
    require(isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high,
            f"{name} must be a number in {meaning}, got {value!r}")


def _check_registered(env_id: str) -> None:
    """A :class:`ConfigError` naming ``env.id`` with the closest registered ids, for an id gymnasium does
    not know. Without the RL packages the check waits for the environment's construction, which then
    says what to install."""
    try:
        from brims_experiments.rl.registry import check_env_id  # imports gymnasium
    except ModuleNotFoundError:
        return
    check_env_id(env_id)


@dataclass(frozen=True)
class EnvConfig:
    """Attributes:
    id: a registered gymnasium id: ``CartPole-v1``, ``MiniGrid-MemoryS7-v0``, ``ALE/Pong-v5``, ...
    hide_velocity: CartPole only: observe the cart position and pole angle, not their velocities.
    num_envs: copies stepped side by side (a ``SyncVectorEnv``).
    """

    id: str = "CartPole-v1"
    hide_velocity: bool = False
    num_envs: int = 8

    def __post_init__(self) -> None:
        require(isinstance(self.id, str) and bool(self.id), f"env.id must be an environment id, got {self.id!r}")
        _check_registered(self.id)  # first: a typo in the id is the error to report, not an option it lacks
        require(isinstance(self.hide_velocity, bool), f"env.hide_velocity must be true or false, got {self.hide_velocity!r}")
        require(not self.hide_velocity or self.id.startswith("CartPole-"),
                f"env.hide_velocity applies to CartPole only, not {self.id}")
        positive_int("env.num_envs", self.num_envs)


@dataclass(frozen=True)
class RLModelConfig:
    """Attributes:
    core: the recurrent core (``brims``, ``rims``, ``brims-no-top-down`` or ``lstm``).
    encoder_size: features the observation encoder (MLP or CNN) hands the core at each step.
    """

    core: CoreConfig = field(default_factory=lambda: CoreConfig(brims={
        "hidden_sizes": (64, 64), "num_modules": (4, 2), "top_k": (2, 1), "input_heads": 1, "input_key_size": 16,
        "comm_heads": 1, "comm_key_size": 16, "comm_value_size": 16, "attention_dropout": 0.0}))
    encoder_size: int = 64

    def __post_init__(self) -> None:
        positive_int("model.encoder_size", self.encoder_size)
        # The rollout acts in eval mode and the update trains: dropout would make them differ.
        dropout = self.core.option("attention_dropout")
        require(dropout == 0, "model.core.brims.attention_dropout must be 0 for rl "
                f"(the acting and the updated policy would differ), got {dropout}")


@dataclass(frozen=True)
class PPOConfig:
    """Attributes:
    total_steps: the budget, environment steps summed over all copies.
    rollout_steps: steps per copy between updates; the rollout is cut into chunks of
        ``chunk_length`` steps, the length of truncated back-propagation through time.
    epochs, minibatches: passes over a rollout's chunks, and minibatches per pass.
    clip: PPO's ratio clipping; ``entropy_coef``, ``value_coef``: weights in the loss.
    gamma, gae_lambda: discount and generalised-advantage-estimation factor.
    clip_rewards: train on ``sign(reward)`` (Atari); returns are reported unclipped.
    """

    total_steps: int = 100_000
    rollout_steps: int = 128
    chunk_length: int = 16
    epochs: int = 4
    minibatches: int = 2
    lr: float = 1e-3
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    grad_clip: float = 0.5
    clip_rewards: bool = False

    def __post_init__(self) -> None:
        for name in ("total_steps", "rollout_steps", "chunk_length", "epochs", "minibatches"):
            positive_int(f"ppo.{name}", getattr(self, name))
        require(self.rollout_steps % self.chunk_length == 0,
                f"ppo.rollout_steps ({self.rollout_steps}) must be a multiple of ppo.chunk_length ({self.chunk_length})")
        require(isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool) and self.lr > 0,
                f"ppo.lr must be a number > 0, got {self.lr!r}")
        _number_in("ppo.gamma", self.gamma, 0, 1, "[0, 1]")
        _number_in("ppo.gae_lambda", self.gae_lambda, 0, 1, "[0, 1]")
        _number_in("ppo.clip", self.clip, 1e-6, 1, "(0, 1]")
        _number_in("ppo.entropy_coef", self.entropy_coef, 0, float("inf"), "[0, inf)")
        _number_in("ppo.value_coef", self.value_coef, 0, float("inf"), "[0, inf)")
        _number_in("ppo.grad_clip", self.grad_clip, 0, float("inf"), "[0, inf) (0: off)")
        require(isinstance(self.clip_rewards, bool), f"ppo.clip_rewards must be true or false, got {self.clip_rewards!r}")


@dataclass(frozen=True)
class RLTrainConfig:
    """Attributes:
    seed: weights, actions, environment resets.
    threads: CPU threads for torch (0: torch's default).
    device: ``cpu`` or ``cuda`` (``cuda:1``, ...); the environments always run on the CPU.
    checkpoint_every: updates between ``last.ckpt`` saves (what a crash can lose at most).
    eval_episodes: episodes ``brims test`` plays with the final policy.
    logger: ``csv`` (``metrics.csv``, always written) or ``tensorboard`` (also TensorBoard event
        files in ``logs/tensorboard``, by environment step).
    """

    seed: int = 0
    threads: int = 0
    device: str = "cpu"
    checkpoint_every: int = 10
    eval_episodes: int = 20
    logger: str = "csv"

    def __post_init__(self) -> None:
        int_at_least("train.seed", self.seed, 0)
        int_at_least("train.threads", self.threads, 0, " (0: torch's default)")
        parse_device(self.device, "train.device")
        positive_int("train.checkpoint_every", self.checkpoint_every)
        positive_int("train.eval_episodes", self.eval_episodes)
        check_logger(self.logger)


@dataclass(frozen=True)
class RLConfig:
    task: str = TASK
    env: EnvConfig = field(default_factory=EnvConfig)
    model: RLModelConfig = field(default_factory=RLModelConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    train: RLTrainConfig = field(default_factory=RLTrainConfig)

    def __post_init__(self) -> None:
        require(self.task == TASK, f"task must be {TASK!r} for an RL config, got {self.task!r}")
        sequences = self.env.num_envs * self.ppo.rollout_steps // self.ppo.chunk_length
        require(sequences % self.ppo.minibatches == 0,
                f"ppo.minibatches ({self.ppo.minibatches}) must divide the rollout's {sequences} chunks "
                "(env.num_envs * ppo.rollout_steps / ppo.chunk_length)")

    @property
    def steps_per_update(self) -> int:
        return self.env.num_envs * self.ppo.rollout_steps

    @property
    def total_updates(self) -> int:
        return -(-self.ppo.total_steps // self.steps_per_update)  # ceil: the budget is at least spent

    def as_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.as_dict(), sort_keys=False)


register_sections({
    (RLConfig, "env"): EnvConfig,
    (RLConfig, "model"): RLModelConfig,
    (RLConfig, "ppo"): PPOConfig,
    (RLConfig, "train"): RLTrainConfig,
    (RLModelConfig, "core"): CoreConfig,
})


def load_rl_config(path: str | Path | None = None, overrides: list[str] | None = None,
                   base: dict[str, Any] | None = None) -> RLConfig:
    """Defaults ← ``base`` ← the YAML file at ``path`` ← ``overrides``, validated."""
    values = RLConfig().as_dict()
    layers = config_layers(path, overrides, base, "task, env, model, ppo, train")
    for layer in layers:
        values = merge(values, layer)
    return build_config(RLConfig, values, "")
