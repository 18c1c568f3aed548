"""Which environment ids exist: gymnasium's registry with the Atari and MiniGrid families added, and
the errors for an id it does not know. Both the config (checking ``env.id`` when it is read) and
:mod:`brims_experiments.rl.envs` (building environments) ask it, so neither imports the other for it.
"""

from __future__ import annotations

import difflib

import gymnasium as gym

from brims_experiments.config_files import ConfigError


class EnvError(ValueError):
    """An environment is unknown or has spaces the agent does not support."""


class UnknownEnvError(EnvError, ConfigError):
    """``env.id`` is no registered gymnasium id: an environment error and a config error (refused when
    the config is read, before any other ``env`` option is checked)."""


def _register_families() -> None:
    """Make the Atari (``ALE/...``) and MiniGrid ids known to gymnasium's registry."""
    import ale_py
    import minigrid  # noqa: F401  (importing registers the MiniGrid ids)

    gym.register_envs(ale_py)


def check_env_id(env_id: str) -> None:
    """Raise :class:`UnknownEnvError` for an id gymnasium does not know (with the closest known ids)."""
    _register_families()
    if env_id in gym.envs.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.envs.registry), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; e.g. CartPole-v1, MiniGrid-MemoryS7-v0, ALE/Pong-v5"
    raise UnknownEnvError(f"env.id {env_id!r} is not a registered gymnasium environment{hint}")
