"""Environments: construction, the wrappers that make them partially observed, and space checks.

- ``CartPole-*`` with ``hide_velocity``: only the cart position and the pole angle are seen,
  so the agent must infer both velocities from its memory of earlier steps.
- ``MiniGrid-*``: the agent's own 7x7 egocentric view (object, colour, state per cell),
  scaled to [0, 1]; the mission text and the compass are dropped.
- ``ALE/*``: grayscale frames average-pooled 2x2 to 105x80, one frame per step: no frame
  stacking, the recurrent core has to carry motion.

The agent supports observations that are flat vectors ``(F,)`` or images ``(H, W)`` /
``(H, W, C)`` (``Box`` spaces) and discrete actions. Anything else is refused before training
with an :class:`EnvError` naming the space.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import gymnasium as gym
import numpy as np

from brims_experiments.rl.registry import EnvError, UnknownEnvError, check_env_id  # noqa: F401 (EnvError: re-exported)

if TYPE_CHECKING:  # for annotations only
    from brims_experiments.rl.config import EnvConfig

log = logging.getLogger(__name__)
MINIGRID_SCALE = np.array([10.0, 5.0, 2.0], dtype=np.float32)  # highest object, colour and state index


class HiddenVelocity(gym.ObservationWrapper):
    """CartPole seen through position and angle only: ``(4,) -> (2,)``."""

    KEEP: ClassVar[list[int]] = [0, 2]  # cart position, pole angle; 1 and 3 are their velocities

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        self.observation_space = gym.spaces.Box(space.low[self.KEEP], space.high[self.KEEP], dtype=space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[self.KEEP]


class MiniGridView(gym.ObservationWrapper):
    """The partial 7x7x3 view of a MiniGrid agent as floats in [0, 1]."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        image = env.observation_space["image"]
        self.observation_space = gym.spaces.Box(0.0, 1.0, image.shape, dtype=np.float32)

    def observation(self, observation: dict[str, Any]) -> np.ndarray:
        return observation["image"].astype(np.float32) / MINIGRID_SCALE  # (7, 7, 3)


class PooledFrame(gym.ObservationWrapper):
    """A grayscale Atari frame ``(210, 160)`` averaged over 2x2 blocks: ``(105, 80)`` uint8."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        height, width = env.observation_space.shape
        self.observation_space = gym.spaces.Box(0, 255, (height // 2, width // 2), dtype=np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        h, w = self.observation_space.shape
        blocks = observation[: 2 * h, : 2 * w].reshape(h, 2, w, 2).astype(np.uint16)
        return (blocks.sum(axis=(1, 3)) // 4).astype(np.uint8)  # (105, 80)


def make_env(config: EnvConfig) -> gym.Env:
    """One environment with the wrappers its family needs."""
    check_env_id(config.id)
    if config.id.startswith("ALE/"):
        env = gym.make(config.id, obs_type="grayscale")
        return PooledFrame(env)
    env = gym.make(config.id)
    if config.id.startswith("MiniGrid-"):
        return MiniGridView(env)
    if config.hide_velocity:
        return HiddenVelocity(env)
    return env


def reference_returns(config: EnvConfig, episodes: int = 100, seed: int = 0) -> dict[str, float]:
    """Mean returns of policies that learn nothing, the lines a learning curve should clear:
    uniform random actions, and on CartPole the memoryless rule "push towards the side the pole
    leans". Atari is left out (an episode is minutes of play)."""
    if config.id.startswith("ALE/"):
        return {}
    env = make_env(config)
    rng = np.random.default_rng(seed)
    policies = {"random actions": lambda observation: int(rng.integers(env.action_space.n))}
    if config.id.startswith("CartPole-"):
        angle = 1 if config.hide_velocity else 2  # the pole's angle in what the agent sees
        policies["memoryless rule"] = lambda observation: int(observation[angle] > 0)
    means = {}
    for name, policy in policies.items():
        total = 0.0
        for episode in range(episodes):
            observation, _ = env.reset(seed=seed + episode)
            done = False
            while not done:
                observation, reward, terminated, truncated, _ = env.step(policy(observation))
                total += float(reward)
                done = terminated or truncated
        means[name] = total / episodes
    env.close()
    return means


@dataclass(frozen=True)
class EnvSpaces:
    """What the agent is built for: the observation's shape and dtype, and the action count."""

    observation_shape: tuple[int, ...]
    observation_dtype: str
    num_actions: int

    def as_dict(self) -> dict[str, Any]:
        return {"observation_shape": list(self.observation_shape), "observation_dtype": self.observation_dtype,
                "num_actions": self.num_actions}


def check_spaces(env_id: str, observation_space: gym.Space, action_space: gym.Space) -> EnvSpaces:
    """The :class:`EnvSpaces` of supported spaces; :class:`EnvError` naming the space otherwise."""
    if not isinstance(action_space, gym.spaces.Discrete):
        raise EnvError(f"{env_id} has action space {action_space}; the agent supports discrete actions "
                       "(gymnasium.spaces.Discrete) only")
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) not in (1, 2, 3):
        raise EnvError(f"{env_id} has observation space {observation_space}; the agent supports Box observations "
                       "that are vectors (F,) or images (H, W) or (H, W, C)")
    if len(observation_space.shape) > 1 and observation_space.dtype not in (np.uint8, np.float32):
        raise EnvError(f"{env_id} has image observations of dtype {observation_space.dtype}; "
                       "the agent supports uint8 (0..255) or float32 images")
    return EnvSpaces(tuple(int(n) for n in observation_space.shape), str(observation_space.dtype),
                     int(action_space.n))


def env_spaces(config: EnvConfig) -> EnvSpaces:
    """Build one environment to check its id and spaces (the check before any training)."""
    env = make_env(config)
    try:
        return check_spaces(config.id, env.observation_space, env.action_space)
    finally:
        env.close()


def make_vector_env(config: EnvConfig, num_envs: int | None = None) -> gym.vector.SyncVectorEnv:
    """``num_envs`` (default ``config.num_envs``) copies; a finished episode is reset within the
    same step, its last observation moved to ``info["final_obs"]``."""
    envs = gym.vector.SyncVectorEnv([lambda: make_env(config)] * (num_envs or config.num_envs),
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    check_spaces(config.id, envs.single_observation_space, envs.single_action_space)
    return envs
