"""Bouncing balls, generated: equal discs in a square box with elastic wall and ball–ball collisions.

The RIMs video setting (4 balls in 64x64 frames, 51 frames). Physics runs in continuous
pixel coordinates (``x, y`` in ``[0, S]``, pixel ``i`` centred at ``i + 0.5``), in float64,
with ``substeps`` Euler steps per frame (enough that no ball moves more than half a radius
per substep, so no collision is skipped). All balls have the same mass, so a collision of
balls ``i`` and ``j`` along the unit normal ``n = (p_i - p_j) / |p_i - p_j|`` exchanges their
normal velocity components:

    u = ((v_i - v_j) . n) n,    v_i <- v_i - u,    v_j <- v_j + u

which keeps both the momentum ``v_i + v_j`` and the kinetic energy ``|v_i|^2 + |v_j|^2``.
A wall mirrors the position and flips the velocity's normal component (energy kept). Pairs
are resolved one after another (never as a sum of impulses, which would not keep energy when
three balls touch), and only while they approach each other.

Frames are rendered anti-aliased: a pixel's intensity is ``clamp(r + 1/2 - d, 0, 1)`` for its
distance ``d`` to the nearest ball centre.

Every sequence is a function of its own generator: :func:`draw_balls` takes one generator per
sequence (a list with one generator repeated draws the sequences one after another from it),
draws each start, then simulates all sequences together.

Dimension legend: N = sequences, T = frames, K = balls, S = frame side in pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

PLACEMENT_TRIES = 1000  # draws per ball before the start is declared impossible
MIN_SPEED_SHARE = 0.5  # a ball's speed is uniform in [MIN_SPEED_SHARE * speed, speed]


@dataclass(frozen=True)
class BallsConfig:
    """Attributes:
    frame_size: side ``S`` of the square frames in pixels.
    frames: frames per sequence ``T``.
    balls: balls per sequence ``K``.
    radius: ball radius in pixels.
    speed: the largest initial speed in pixels per frame (each ball's is drawn below it).
    """

    frame_size: int = 64
    frames: int = 51
    balls: int = 4
    radius: float = 5.0
    speed: float = 2.0

    def __post_init__(self) -> None:
        for name in ("frame_size", "frames", "balls"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.radius > 0 or not self.speed > 0:
            raise ValueError(f"radius and speed must be > 0, got radius={self.radius!r}, speed={self.speed!r}")
        check_balls_fit(self.balls, self.radius, self.frame_size)

    @property
    def substeps(self) -> int:
        """Physics steps per frame: no ball moves more than half a radius in one."""
        return max(1, math.ceil(self.speed / (0.5 * self.radius)))


def check_balls_fit(balls: int, radius: float, frame_size: int) -> None:
    """Raise unless ``balls`` discs of ``radius`` fit loosely in the frame: each ball's
    bounding square of side ``2r`` must be smaller than the frame, and all of them together
    may cover at most half of it (so random placement succeeds quickly)."""
    if 2 * radius >= frame_size:
        raise ValueError(f"balls of radius {radius:g} (diameter {2 * radius:g}) do not fit in "
                         f"{frame_size}x{frame_size} frames; use a smaller radius or larger frames")
    if balls * (2 * radius) ** 2 > frame_size**2 / 2:
        raise ValueError(f"{balls} balls of radius {radius:g} crowd {frame_size}x{frame_size} frames (their bounding "
                         f"squares would cover more than half of it); use fewer or smaller balls")


def sample_start(config: BallsConfig, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One sequence's start: non-overlapping positions ``(K, 2)`` and velocities ``(K, 2)``."""
    r, side = config.radius, config.frame_size
    positions: list[Tensor] = []
    for ball in range(config.balls):
        for _ in range(PLACEMENT_TRIES):
            candidate = r + (side - 2 * r) * torch.rand(2, generator=generator, dtype=torch.float64)  # (2,)
            if all(float((candidate - other).norm()) >= 2 * r for other in positions):
                positions.append(candidate)
                break
        else:
            raise ValueError(f"could not place ball {ball + 1} of {config.balls} (radius {r:g}) without overlap in "
                             f"{side}x{side} frames after {PLACEMENT_TRIES} tries")
    return torch.stack(positions), random_velocities(config.balls, config.speed, generator)


def random_velocities(count: int, speed: float, generator: torch.Generator) -> Tensor:
    """``(count, 2)`` velocities: uniform directions, speeds uniform in ``[MIN_SPEED_SHARE * speed, speed]``."""
    angle = 2 * math.pi * torch.rand(count, generator=generator, dtype=torch.float64)  # (K,)
    share = MIN_SPEED_SHARE + (1 - MIN_SPEED_SHARE) * torch.rand(count, generator=generator, dtype=torch.float64)
    return (speed * share)[:, None] * torch.stack([angle.cos(), angle.sin()], -1)  # (K, 2)


def _reflect_walls(position: Tensor, velocity: Tensor, low: float, high: float) -> None:
    """Mirror centres that left ``[low, high]`` back inside and turn their velocity inwards (in place)."""
    below, above = position < low, position > high
    position.copy_(torch.where(below, 2 * low - position, torch.where(above, 2 * high - position, position)))
    velocity.copy_(torch.where(below, velocity.abs(), torch.where(above, -velocity.abs(), velocity)))


def _collide_pairs(position: Tensor, velocity: Tensor, radius: float) -> None:
    """Resolve every touching, approaching pair of balls elastically, pair by pair (in place)."""
    balls = position.shape[1]
    for i in range(balls):
        for j in range(i + 1, balls):
            offset = position[:, i] - position[:, j]  # (N, 2)
            distance = offset.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (N, 1)
            normal = offset / distance  # (N, 2)
            closing = ((velocity[:, i] - velocity[:, j]) * normal).sum(-1, keepdim=True)  # (N, 1)
            hit = (distance < 2 * radius) & (closing < 0)  # (N, 1)
            impulse = torch.where(hit, closing * normal, torch.zeros_like(normal))  # (N, 2)
            velocity[:, i] -= impulse
            velocity[:, j] += impulse


def simulate(config: BallsConfig, position: Tensor, velocity: Tensor) -> tuple[Tensor, Tensor]:
    """Roll starts ``(N, K, 2)`` forward: positions and velocities at every frame ``(N, T, K, 2)``."""
    position, velocity = position.clone().double(), velocity.clone().double()
    low, high = config.radius, config.frame_size - config.radius
    dt = 1.0 / config.substeps
    positions, velocities = [position.clone()], [velocity.clone()]
    for _ in range(config.frames - 1):
        for _ in range(config.substeps):
            position += dt * velocity
            _reflect_walls(position, velocity, low, high)
            _collide_pairs(position, velocity, config.radius)
        positions.append(position.clone())
        velocities.append(velocity.clone())
    return torch.stack(positions, 1), torch.stack(velocities, 1)


def render(positions: Tensor, frame_size: int, radius: float) -> Tensor:
    """Anti-aliased discs: centres ``(N, T, K, 2)`` → frames ``(N, T, S, S)`` in ``[0, 1]``."""
    positions = positions.float()  # pixels need no float64
    centres = torch.arange(frame_size, dtype=torch.float32) + 0.5  # (S,)
    nearest = torch.full((*positions.shape[:2], frame_size, frame_size), math.inf)  # (N, T, S, S): squared distance
    for ball in range(positions.shape[2]):
        dx = (centres - positions[:, :, ball, 0, None]) ** 2  # (N, T, S): by column
        dy = (centres - positions[:, :, ball, 1, None]) ** 2  # (N, T, S): by row
        torch.minimum(nearest, dy[..., :, None] + dx[..., None, :], out=nearest)
    return (radius + 0.5 - nearest.sqrt_()).clamp_(0, 1)


def draw_balls(config: BallsConfig, generators: Sequence[torch.Generator]) -> Tensor:
    """Sequence ``i`` from ``generators[i]``: frames ``(N, T, S, S)`` in ``[0, 1]``."""
    starts = [sample_start(config, generator) for generator in generators]
    position = torch.stack([p for p, _ in starts])  # (N, K, 2)
    velocity = torch.stack([v for _, v in starts])  # (N, K, 2)
    positions, _ = simulate(config, position, velocity)  # (N, T, K, 2)
    return render(positions, config.frame_size, config.radius)
