"""Recurrent PPO: rollouts on vector environments, GAE, clipped updates over sequence chunks.

Dimensions: ``T`` rollout steps, ``N`` environments, ``L`` chunk length, ``M`` chunks in a
minibatch, ``S`` flat recurrent state.

A rollout runs the policy for ``T`` steps in each of ``N`` environments, carrying the
recurrent state across steps and zeroing it where an episode starts. Advantages follow GAE:

    δ_t = r_t + γ V_{t+1} (1 - d_t) - V_t,    Â_t = δ_t + γ λ (1 - d_t) Â_{t+1}

with ``d_t`` the end of an episode at step ``t``; an episode cut by a time limit (truncated,
not terminated) is bootstrapped with ``γ V`` of its final observation. The update cuts the
rollout into chunks of ``L`` steps, re-runs the core over each chunk from the state stored at
its first step (resetting inside the chunk where episodes start: truncated back-propagation
over ``L`` steps) and minimises

    -min(ρ Â, clip(ρ, 1-ε, 1+ε) Â) + c_V (V - R)² - c_H H[π],    ρ = π(a|·) / π_old(a|·).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor
from torch.distributions import Categorical

from brims_experiments.rl.agent import RecurrentActorCritic
from brims_experiments.rl.config import PPOConfig


@dataclass
class Rollout:
    obs: Tensor  # (T, N, *obs), normalised
    starts: Tensor  # (T, N) bool: obs[t] begins an episode
    actions: Tensor  # (T, N)
    log_probs: Tensor  # (T, N)
    values: Tensor  # (T, N)
    advantages: Tensor  # (T, N)
    returns: Tensor  # (T, N)
    chunk_states: Tensor  # (T // L, N, S): the state before the first step of each chunk


class Collector:
    """Steps the vector environments with the policy and keeps what crosses rollouts: the last
    observation, which rows start an episode, the recurrent state, and running episode returns."""

    def __init__(self, envs: gym.vector.VectorEnv, agent: RecurrentActorCritic, device: torch.device,
                 seed: int, window: int = 100) -> None:
        self.envs, self.agent, self.device = envs, agent, device
        obs, _ = envs.reset(seed=seed)
        self.obs = torch.as_tensor(obs, device=device)  # (N, *obs)
        self.starts = torch.ones(envs.num_envs, dtype=torch.bool, device=device)  # (N,)
        self.state = agent.initial_state(envs.num_envs, device)  # (N, S)
        self.running_return = np.zeros(envs.num_envs)
        self.running_length = np.zeros(envs.num_envs, dtype=np.int64)
        self.recent: deque[float] = deque(maxlen=window)  # returns of the last finished episodes

    @torch.no_grad()
    def collect(self, config: PPOConfig) -> tuple[Rollout, list[tuple[float, int]]]:
        """One rollout and the ``(return, length)`` of every episode that ended in it; the
        observation statistics learn from its observations as they arrive."""
        steps, chunk = config.rollout_steps, config.chunk_length
        was_training = self.agent.training
        self.agent.eval()
        obs, starts, actions, log_probs, values, rewards, dones, chunk_states = [], [], [], [], [], [], [], []
        finished: list[tuple[float, int]] = []
        for t in range(steps):
            if t % chunk == 0:
                chunk_states.append(self.state)
            self.agent.normalizer.update(self.obs)
            observation = self.agent.normalizer(self.obs)  # (N, *obs)
            logits, value, self.state = self.agent.step(observation, self.state, self.starts)
            distribution = Categorical(logits=logits)
            action = distribution.sample()  # (N,)
            obs.append(observation)
            starts.append(self.starts)
            actions.append(action)
            log_probs.append(distribution.log_prob(action))
            values.append(value)
            next_obs, reward, terminated, truncated, info = self.envs.step(action.cpu().numpy())
            self.running_return += reward
            self.running_length += 1
            done = terminated | truncated
            train_reward = np.sign(reward) if config.clip_rewards else reward.astype(np.float64)
            cut = truncated & ~terminated
            if cut.any():  # a time limit is not a failure: bootstrap from the final observation
                rows = np.flatnonzero(cut)
                final = self.agent.normalizer(torch.as_tensor(np.stack(info["final_obs"][rows]), device=self.device))
                _, final_value, _ = self.agent.step(final, self.state[rows], torch.zeros(len(rows), dtype=torch.bool,
                                                                                         device=self.device))
                train_reward[rows] += config.gamma * final_value.cpu().numpy()
            for row in np.flatnonzero(done):
                finished.append((float(self.running_return[row]), int(self.running_length[row])))
                self.recent.append(float(self.running_return[row]))
            self.running_return[done] = 0.0
            self.running_length[done] = 0
            rewards.append(torch.as_tensor(train_reward, dtype=torch.float32, device=self.device))
            dones.append(torch.as_tensor(done, device=self.device))
            self.obs = torch.as_tensor(next_obs, device=self.device)
            self.starts = dones[-1]
        _, last_value, _ = self.agent.step(self.agent.normalizer(self.obs), self.state, self.starts)  # the state is not advanced
        self.agent.train(was_training)
        values_t = torch.stack(values)  # (T, N)
        advantages = gae(torch.stack(rewards), values_t, torch.stack(dones), last_value, config.gamma,
                         config.gae_lambda)
        rollout = Rollout(torch.stack(obs), torch.stack(starts), torch.stack(actions), torch.stack(log_probs),
                          values_t, advantages, advantages + values_t, torch.stack(chunk_states))
        return rollout, finished


def gae(rewards: Tensor, values: Tensor, dones: Tensor, last_value: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimates ``(T, N)``; ``dones[t]``: an episode ended at step ``t``."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)  # (N,)
    next_value = last_value
    for t in reversed(range(rewards.shape[0])):
        alive = (~dones[t]).to(rewards.dtype)
        delta = rewards[t] + gamma * next_value * alive - values[t]
        running = delta + gamma * lam * alive * running
        advantages[t] = running
        next_value = values[t]
    return advantages


def _chunks(x: Tensor, length: int) -> Tensor:
    """``(T, N, ...) -> (L, T // L * N, ...)``: chunk ``c`` of env ``n`` is sequence ``c * N + n``."""
    steps, envs = x.shape[:2]
    chunked = x.reshape(steps // length, length, envs, *x.shape[2:])  # (C, L, N, ...)
    return chunked.transpose(0, 1).reshape(length, steps // length * envs, *x.shape[2:])


def ppo_update(agent: RecurrentActorCritic, optimizer: torch.optim.Optimizer, rollout: Rollout,
               config: PPOConfig) -> dict[str, float]:
    """``config.epochs`` passes of minibatched clipped-PPO steps; the mean losses of the update."""
    length = config.chunk_length
    obs, starts = _chunks(rollout.obs, length), _chunks(rollout.starts, length)  # (L, C*N, ...)
    actions, old_log_probs = _chunks(rollout.actions, length), _chunks(rollout.log_probs, length)
    advantages, returns = _chunks(rollout.advantages, length), _chunks(rollout.returns, length)
    states = rollout.chunk_states.flatten(0, 1)  # (C*N, S)
    sequences = states.shape[0]
    size = sequences // config.minibatches
    totals = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "approx_kl": 0.0, "clip_fraction": 0.0}
    agent.train()
    for _ in range(config.epochs):
        order = torch.randperm(sequences, device=states.device)
        for first in range(0, sequences, size):
            rows = order[first:first + size]  # (M,)
            logits, values, _ = agent(obs[:, rows], states[rows], starts[:, rows])  # (L, M, A), (L, M)
            distribution = Categorical(logits=logits)
            log_probs = distribution.log_prob(actions[:, rows])  # (L, M)
            advantage = advantages[:, rows]
            advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
            ratio = (log_probs - old_log_probs[:, rows]).exp()
            clipped = ratio.clamp(1 - config.clip, 1 + config.clip)
            policy_loss = -torch.min(ratio * advantage, clipped * advantage).mean()
            value_loss = (values - returns[:, rows]).pow(2).mean()
            entropy = distribution.entropy().mean()
            loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * entropy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(agent.parameters(), config.grad_clip)
            optimizer.step()
            with torch.no_grad():
                log_ratio = log_probs - old_log_probs[:, rows]
                totals["policy_loss"] += policy_loss.item()
                totals["value_loss"] += value_loss.item()
                totals["entropy"] += entropy.item()
                totals["approx_kl"] += ((ratio - 1) - log_ratio).mean().item()
                totals["clip_fraction"] += ((ratio - 1).abs() > config.clip).float().mean().item()
    count = config.epochs * config.minibatches
    return {key: value / count for key, value in totals.items()}
