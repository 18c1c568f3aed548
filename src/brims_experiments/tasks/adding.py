"""The adding problem (Hochreiter & Schmidhuber, 1997; the RIMs paper's form), generated on the fly.

Each step carries two features: a value drawn uniformly from ``[0, 1)`` and a marker. Exactly
two steps are marked, one in each half of the sequence; after the last step the model must
output the sum of the two marked values. Training at one length and testing at longer ones
measures whether the model's memory generalises.

Predicting the constant 1 (the mean of the sum) scores a mean squared error of
``Var(U1 + U2) = 1/6``: :data:`TRIVIAL_MSE`, the baseline a model must beat.

Dimension legend: T = sequence length, B = batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

TRIVIAL_MSE = 1.0 / 6.0
FEATURES = 2  # value, marker


@dataclass(frozen=True)
class AddingTaskConfig:
    """Attributes:
    length: time steps per sequence (at least 2: one marked step in each half).
    """

    length: int = 50

    def __post_init__(self) -> None:
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 2:
            raise ValueError(f"length must be an int >= 2 (one marked step per half), got {self.length!r}")


class AddingBatch(NamedTuple):
    inputs: Tensor  # (T, B, 2): value, marker
    targets: Tensor  # (B,): the sum of the two marked values


def make_adding_batch(config: AddingTaskConfig, batch_size: int, generator: torch.Generator) -> AddingBatch:
    """``batch_size`` sequences drawn with ``generator`` (the same state gives the same batch)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    length, half = config.length, config.length // 2
    values = torch.rand(length, batch_size, generator=generator)  # (T, B)
    first = torch.randint(0, half, (batch_size,), generator=generator)  # (B,)
    second = torch.randint(half, length, (batch_size,), generator=generator)  # (B,)
    markers = torch.zeros(length, batch_size)  # (T, B)
    columns = torch.arange(batch_size)
    markers[first, columns] = 1.0
    markers[second, columns] = 1.0
    targets = values[first, columns] + values[second, columns]  # (B,)
    return AddingBatch(torch.stack([values, markers], dim=-1), targets)  # (T, B, 2)
