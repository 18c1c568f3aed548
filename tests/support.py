"""Shared helpers for the brims tests: tiny configs covering every feature flag.

Sizes are chosen so that every layer differs from the others (modules, module size, top_k) and
the two attentions differ from each other (heads, key and value sizes): a test that mixes up a
layer index or an attention size then fails instead of passing by coincidence.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from brims import BRIMs, BRIMsConfig, BRIMsState

INPUT_SIZE = 5

# Per number of layers: hidden sizes, modules, active modules.
# Layers: 4 modules of 3 units (2 active), 2 modules of 5 (1 active), 4 modules of 2 (3 active).
LAYERS = {
    1: {"hidden_sizes": (12,), "num_modules": (4,), "top_k": (2,)},
    2: {"hidden_sizes": (12, 10), "num_modules": (4, 2), "top_k": (2, 1)},
    3: {"hidden_sizes": (12, 10, 8), "num_modules": (4, 2, 4), "top_k": (2, 1, 3)},
}

# Small attentions; the input and communication sizes all differ from each other.
ATTENTION = {
    "input_heads": 2,
    "input_key_size": 4,
    "input_value_factor": 2,
    "comm_heads": 3,
    "comm_key_size": 3,
    "comm_value_size": 5,
    "attention_dropout": 0.1,
}

CELLS = ("lstm", "gru")


def make_config(
    cell: str = "lstm", layers: int = 2, top_down: bool = True, communication: bool = True, **overrides
) -> BRIMsConfig:
    options = {**LAYERS[layers], **ATTENTION, "cell": cell, "top_down": top_down, "communication": communication}
    options.update(overrides)
    return BRIMsConfig(INPUT_SIZE, **options)


def build(config: BRIMsConfig, seed: int = 0, dtype: torch.dtype = torch.float64, train: bool = False) -> BRIMs:
    """A seeded model in ``dtype``, in eval mode unless ``train``."""
    torch.manual_seed(seed)
    model = BRIMs.from_config(config).to(dtype)
    return model.train(train)


def random_input(config: BRIMsConfig, steps: int, batch: int, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(steps, batch, config.input_size, generator=generator, dtype=dtype)


def random_state(model, batch: int, seed: int = 2, scale: float = 0.5) -> BRIMsState:
    """A non-zero state (a zero state makes every query vanish at the first step)."""
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    dtype = next(model.parameters()).dtype

    def draw():
        return tuple(scale * torch.randn(batch, s, generator=generator, dtype=dtype) for s in config.hidden_sizes)

    h = draw()
    return BRIMsState(h, h if config.cell == "gru" else draw())


def blocks(t: torch.Tensor, num_modules: int) -> torch.Tensor:
    """``(..., n*m)`` -> ``(..., n, m)``: module k owns units k*m..(k+1)*m-1."""
    return t.reshape(*t.shape[:-1], num_modules, -1)


def combo_id(cell: str, layers: int, top_down: bool, communication: bool) -> str:
    return f"{cell}-L{layers}-{'td' if top_down else 'notd'}-{'comm' if communication else 'nocomm'}"


ALL_COMBOS = [
    pytest.param(combo, id=combo_id(*combo))
    for combo in itertools.product(CELLS, (1, 2, 3), (True, False), (True, False))
    # One layer has no layer above: top_down on and off build the same model, keep one.
    if not (combo[1] == 1 and combo[2] is False)
]
MULTI_LAYER_COMBOS = [p for p in ALL_COMBOS if p.values[0][1] >= 2]
