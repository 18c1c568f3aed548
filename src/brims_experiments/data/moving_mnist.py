"""Moving MNIST, generated from real MNIST digits (Srivastava et al., 2015).

Each sequence places ``digits`` MNIST digits (resized to ``digit_size``) at random positions
in an ``S x S`` frame and moves each with its own constant velocity; a digit bounces off the
walls (its top-left corner is mirrored back into ``[0, S - d]`` and the velocity component
flipped). Digits pass through each other; where they overlap a pixel takes the larger
intensity. Intensities are MNIST's, scaled to ``[0, 1]``. Positions are continuous and
rounded to whole pixels when rendered.

Like the bouncing balls, sequence ``i`` is a function of ``generators[i]`` alone (which
digits, where, how fast), and all sequences are then moved and rendered together.

Dimension legend: N = sequences, T = frames, K = digits per sequence, M = digit images,
S = frame side, d = digit side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from brims_experiments.data.bouncing_balls import random_velocities


@dataclass(frozen=True)
class MovingDigitsConfig:
    """Attributes:
    frame_size: side ``S`` of the frames in pixels.
    frames: frames per sequence ``T``.
    digits: digits per sequence ``K``.
    digit_size: side ``d`` the 28x28 digits are resized to (smaller than ``S``).
    speed: the largest speed in pixels per frame (as for the balls, each digit's is drawn below it).
    """

    frame_size: int = 64
    frames: int = 20
    digits: int = 2
    digit_size: int = 28
    speed: float = 3.0

    def __post_init__(self) -> None:
        for name in ("frame_size", "frames", "digits", "digit_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.digit_size >= self.frame_size:
            raise ValueError(f"digits of {self.digit_size}x{self.digit_size} pixels leave no room to move in "
                             f"{self.frame_size}x{self.frame_size} frames; use a smaller digit_size or larger frames")
        if not self.speed > 0:
            raise ValueError(f"speed must be > 0, got {self.speed!r}")


def prepare_digits(images: Tensor, digit_size: int) -> Tensor:
    """MNIST images ``(M, 28, 28, 1)`` uint8 → ``(M, d, d)`` float in ``[0, 1]`` (area-resized)."""
    digits = images[..., 0].float().div(255).unsqueeze(1)  # (M, 1, 28, 28)
    if digits.shape[-1] != digit_size:
        digits = F.interpolate(digits, size=(digit_size, digit_size), mode="area")  # (M, 1, d, d)
    return digits[:, 0].contiguous()


def _bounce(start: Tensor, velocity: Tensor, frames: int, limit: float) -> Tensor:
    """Positions ``(N, T, K, 2)`` of points moving in ``[0, limit]`` with mirror walls."""
    steps = torch.arange(frames, dtype=start.dtype)[None, :, None, None]  # (1, T, 1, 1)
    free = start[:, None] + steps * velocity[:, None]  # (N, T, K, 2): as if there were no walls
    folded = torch.remainder(free, 2 * limit)  # unfold the mirror images: period 2 * limit
    return torch.where(folded > limit, 2 * limit - folded, folded)


def draw_moving_digits(config: MovingDigitsConfig, digits: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    """Sequence ``i`` from ``generators[i]``, its digits drawn from ``digits (M, d, d)``:
    frames ``(N, T, S, S)`` in ``[0, 1]``."""
    side, size, count = config.frame_size, config.digit_size, config.digits
    if digits.dim() != 3 or digits.shape[1:] != (size, size):
        raise ValueError(f"digits must be (M, {size}, {size}), got {tuple(digits.shape)}")
    limit = float(side - size)
    picks, starts, velocities = [], [], []
    for generator in generators:
        picks.append(torch.randint(len(digits), (count,), generator=generator))  # (K,)
        starts.append(limit * torch.rand(count, 2, generator=generator, dtype=torch.float64))  # (K, 2)
        velocities.append(random_velocities(count, config.speed, generator))  # (K, 2)
    corner = _bounce(torch.stack(starts), torch.stack(velocities), config.frames, limit).round().long()  # (N, T, K, 2)
    n, t = corner.shape[:2]
    offsets = torch.arange(size)
    rows = corner[..., 1, None, None] + offsets[:, None]  # (N, T, K, d, 1)
    cols = corner[..., 0, None, None] + offsets[None, :]  # (N, T, K, 1, d)
    flat = (rows * side + cols).flatten(2)  # (N, T, K*d*d): pixel index of every digit pixel
    values = digits[torch.stack(picks)]  # (N, K, d, d)
    values = values[:, None].expand(n, t, count, size, size).flatten(2)  # (N, T, K*d*d)
    canvas = torch.zeros(n, t, side * side)
    canvas.scatter_reduce_(2, flat, values, reduce="amax")  # overlapping digits: the brighter pixel
    return canvas.view(n, t, side, side)
