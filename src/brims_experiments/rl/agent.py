"""The recurrent actor-critic: observation encoder → recurrent core → policy and value heads.

Dimensions: ``T`` steps, ``B`` environments (or sequences), ``E`` encoder features, ``H`` the
core's output, ``S`` the flat recurrent state, ``A`` actions.

At step ``t`` with observation ``o_t`` and state ``s_{t-1}``::

    s_{t-1} ← 0 where o_t starts an episode
    x_t = enc(o_t),   h_t, s_t = core(x_t, s_{t-1})
    π(·|o_≤t) = softmax(W_π [h_t; x_t]),   V(o_≤t) = w_V · [h_t; x_t]

The heads also read this step's encoder features ``x_t`` (a skip connection around the core).
At initialisation the top layer of a two-layer BRIMs barely responds to its input (its output
varied about ten times less across inputs than a same-size LSTM's in our check), and without
the skip the BRIMs policy stayed at random play for 35k steps of hidden-velocity CartPole;
with it the reactive part of the policy learns at once and the core has to supply the memory.
Every core kind gets the same heads.

Outside the forward pass the state is kept flat, ``(B, S)`` (the core's ``flatten_state``,
whatever its kind): a rollout stores it per step and the update re-runs the core from the
stored chunk-start states.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from brims_experiments.rl.config import RLModelConfig
from brims_experiments.rl.envs import EnvSpaces
from brims_experiments.tasks.cores import RecurrentCore

SMALL_IMAGE = 16  # images up to this side (MiniGrid's 7x7 view) get 2x2 convolutions, larger ones strided ones


class RunningNormalizer(nn.Module):
    """Vector observations shifted and scaled by running statistics: ``(o - μ) / σ``, clipped to ±5.

    The statistics update on each rollout's observations as they arrive (Chan et al.'s parallel
    variance formula) and are saved with the weights; images pass unchanged. A rollout stores
    the normalised observations, so the update sees exactly what the acting policy saw.
    """

    CLIP = 5.0

    def __init__(self, spaces: EnvSpaces) -> None:
        super().__init__()
        self.active = len(spaces.observation_shape) == 1
        size = spaces.observation_shape[0] if self.active else 0
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("var", torch.ones(size))
        self.register_buffer("count", torch.zeros(()))

    @torch.no_grad()
    def update(self, obs: Tensor) -> None:
        if not self.active:
            return
        batch = obs.float().flatten(0, -2)  # (B, F)
        n = batch.shape[0]
        mean, var = batch.mean(0), batch.var(0, unbiased=False)
        total = self.count + n
        delta = mean - self.mean
        self.var.copy_((self.var * self.count + var * n + delta.pow(2) * self.count * n / total) / total)
        self.mean.add_(delta * n / total)
        self.count.copy_(total)

    def forward(self, obs: Tensor) -> Tensor:
        if not self.active:
            return obs
        return ((obs.float() - self.mean) / (self.var.sqrt() + 1e-8)).clamp(-self.CLIP, self.CLIP)


class ObservationEncoder(nn.Module):
    """``(B, *obs) -> (B, E)``: an MLP for vectors, a CNN for images (``uint8`` scaled by 1/255)."""

    def __init__(self, spaces: EnvSpaces, size: int) -> None:
        super().__init__()
        shape = spaces.observation_shape
        self.scale = 1 / 255 if spaces.observation_dtype == "uint8" else 1.0
        self.image = len(shape) > 1
        if not self.image:
            self.net = nn.Sequential(nn.Linear(shape[0], size), nn.Tanh())
            return
        channels = shape[2] if len(shape) == 3 else 1
        if max(shape[:2]) <= SMALL_IMAGE:
            convs = [nn.Conv2d(channels, 16, 2), nn.ReLU(), nn.Conv2d(16, 32, 2), nn.ReLU(),
                     nn.Conv2d(32, 32, 2), nn.ReLU()]
        else:
            convs = [nn.Conv2d(channels, 16, 8, stride=4), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(),
                     nn.Conv2d(32, 32, 3), nn.ReLU()]
        features = nn.Sequential(*convs, nn.Flatten())
        with torch.no_grad():
            flat = features(torch.zeros(1, channels, *shape[:2])).shape[-1]
        self.net = nn.Sequential(features, nn.Linear(flat, size), nn.ReLU())

    def forward(self, obs: Tensor) -> Tensor:
        x = obs.float() * self.scale
        if self.image:
            x = x.unsqueeze(-1) if x.dim() == 3 else x  # (B, H, W) -> (B, H, W, 1)
            x = x.permute(0, 3, 1, 2)  # (B, C, H, W)
        return self.net(x)  # (B, E)


class RecurrentActorCritic(nn.Module):
    """Encoder, any :class:`RecurrentCore` kind, and linear policy and value heads."""

    def __init__(self, spaces: EnvSpaces, config: RLModelConfig) -> None:
        super().__init__()
        self.spaces = spaces
        self.config = config
        self.normalizer = RunningNormalizer(spaces)
        self.encoder = ObservationEncoder(spaces, config.encoder_size)
        self.core = RecurrentCore(config.core, config.encoder_size)
        hidden = config.core.hidden_size + config.encoder_size  # the heads read the core and the encoder
        self.policy = nn.Linear(hidden, spaces.num_actions)
        self.value = nn.Linear(hidden, 1)
        # A near-uniform first policy (the usual PPO start).
        nn.init.orthogonal_(self.policy.weight, gain=0.01)
        nn.init.zeros_(self.policy.bias)
        nn.init.orthogonal_(self.value.weight, gain=1.0)
        nn.init.zeros_(self.value.bias)
        self.state_size = self.core.state_size  # S

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> Tensor:
        return self.core.flatten_state(self.core.initial_state(batch, device))  # (B, S) zeros

    def forward(self, obs: Tensor, state: Tensor, starts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A sequence: ``obs (T, B, *obs)``, ``state (B, S)`` before step 0, ``starts (T, B)``
        (True where ``obs[t]`` begins an episode) → ``logits (T, B, A)``, ``values (T, B)``, the
        state after the last step.

        The core runs over the stretches between episode starts (the whole sequence when none
        falls inside it), zeroing the rows that start an episode at each stretch's first step.
        """
        steps, batch = starts.shape
        x = self.encoder(obs.flatten(0, 1)).view(steps, batch, -1)  # (T, B, E)
        cuts = [0, *(starts[1:].any(dim=1).nonzero().flatten() + 1).tolist(), steps]
        core_state = self.core.unflatten_state(state)
        outputs = []
        for begin, end in itertools.pairwise(cuts):
            core_state = self.core.reset_rows(core_state, starts[begin])  # zero new episodes
            output, core_state, _ = self.core(x[begin:end], core_state)  # (t, B, H)
            outputs.append(output)
        hidden = torch.cat([torch.cat(outputs), x], dim=-1)  # (T, B, H + E): the skip connection
        return self.policy(hidden), self.value(hidden).squeeze(-1), self.core.flatten_state(core_state)

    def step(self, obs: Tensor, state: Tensor, starts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One step: ``obs (B, *obs)``, ``state (B, S)``, ``starts (B,)`` → ``logits (B, A)``,
        ``value (B,)``, new state ``(B, S)``."""
        logits, value, state = self(obs.unsqueeze(0), state, starts.unsqueeze(0))
        return logits[0], value[0], state
