"""Typed configuration of a BRIMs network, validated at construction: the one declaration of its options."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CELL_TYPES = ("lstm", "gru")
BACKENDS = ("torch", "triton")


def _as_tuple(name: str, value: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a sequence of ints, got {value!r}")  # noqa: TRY004 - ValueError is the tested contract
    if isinstance(value, int):
        return (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be an int or a sequence of ints, got {value!r}") from None
    if not items:
        raise ValueError(f"{name} must name at least one layer, got {value!r}")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"{name} must contain ints, got {value!r}")  # noqa: TRY004 - ValueError is the tested contract
    return items


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class BRIMsConfig:
    """Everything that defines a BRIMs network (one entry per layer in the tuples).

    Defaults are the authors' released sequential-MNIST configuration: two layers of
    300 units, 6 and 3 modules, 4 and 2 active.

    Attributes:
        input_size: features of the input at each step.
        hidden_sizes: hidden size of each layer; layer ``l`` is ``num_modules[l]`` modules
            of ``hidden_sizes[l] // num_modules[l]`` units each.
        num_modules: modules per layer.
        top_k: modules that update per example per step, per layer (``1..num_modules[l]``).
        cell: per-module dynamics, ``"lstm"`` or ``"gru"``.
        top_down: whether layer ``l`` attends to layer ``l+1``'s previous state.
        communication: whether active modules read their layer through attention.
        input_heads: heads of the input attention over slots.
        input_key_size: key/query size per input-attention head.
        input_value_factor: each module's attended input has ``input_value_factor * m_l``
            features, split evenly across the input heads.
        comm_heads: heads of the communication attention.
        comm_key_size: key/query size per communication head.
        comm_value_size: value size per communication head.
        attention_dropout: dropout on the attention probabilities (input and communication).
        attended_norm: normalise each module's attended input ``a_k`` to zero mean and unit
            variance over its features (a LayerNorm without gain or bias) before the module's
            cell reads it. Not in the papers or the authors' code (off by default): without it
            ``a_k`` has no bound, and in our bouncing-balls runs it grew within the first tens of
            steps until the first layer's gates saturated and no gradient reached the frame
            encoder (docs/results.md). What it removes with the scale: the null slot's value is
            zero, so attending to null shrinks ``a_k`` by ``1 - p_null``; normalised, an active
            module's cell no longer sees how much of its attention went to null (only the
            direction of ``a_k`` and, with several heads, their relative sizes). Which modules
            update is chosen before the norm and does not change.
        batch_first: inputs and outputs are ``(B, T, F)`` instead of ``(T, B, F)``.
        backend: how a layer step runs: ``"torch"`` (plain PyTorch that autograd differentiates;
            the reference, and the CPU path) or ``"triton"`` (one fused Triton kernel per layer
            step forward and one backward, for CUDA GPUs; needs ``pip install 'brims[triton]'``;
            tested equal to ``"torch"``; see :mod:`brims.backends.fused`). It implements every
            option above but ``attended_norm``, which it refuses (tests/test_triton_backend.py
            classifies each field: an option its kernels do not implement must be refused here, by
            name).
    """

    input_size: int
    hidden_sizes: tuple[int, ...] = (300, 300)
    num_modules: tuple[int, ...] = (6, 3)
    top_k: tuple[int, ...] = (4, 2)
    cell: str = "lstm"
    top_down: bool = True
    communication: bool = True
    input_heads: int = 4
    input_key_size: int = 64
    input_value_factor: int = 4
    comm_heads: int = 4
    comm_key_size: int = 32
    comm_value_size: int = 32
    attention_dropout: float = 0.1
    attended_norm: bool = False
    batch_first: bool = False
    backend: str = "torch"

    def __post_init__(self) -> None:
        # Normalise ints and lists to tuples so configs round-trip through YAML/JSON.
        for name in ("hidden_sizes", "num_modules", "top_k"):
            object.__setattr__(self, name, _as_tuple(name, getattr(self, name)))
        for name in (
            "input_size",
            "input_heads",
            "input_key_size",
            "input_value_factor",
            "comm_heads",
            "comm_key_size",
            "comm_value_size",
        ):
            _positive(name, getattr(self, name))
        lengths = {name: len(getattr(self, name)) for name in ("hidden_sizes", "num_modules", "top_k")}
        if len(set(lengths.values())) != 1:
            raise ValueError(
                "hidden_sizes, num_modules and top_k need one entry per layer, got lengths "
                + ", ".join(f"{name}={n}" for name, n in lengths.items())
            )
        for layer, (hidden, modules, k) in enumerate(zip(self.hidden_sizes, self.num_modules, self.top_k)):
            _positive(f"hidden_sizes[{layer}]", hidden)
            _positive(f"num_modules[{layer}]", modules)
            if hidden % modules:
                raise ValueError(
                    f"hidden_sizes[{layer}]={hidden} is not divisible by num_modules[{layer}]={modules}"
                )
            if isinstance(k, bool) or not 1 <= k <= modules:
                raise ValueError(f"top_k[{layer}]={k!r} must be between 1 and num_modules[{layer}]={modules}")
            value_size = self.input_value_factor * (hidden // modules)
            if value_size % self.input_heads:
                raise ValueError(
                    f"input_value_factor * module size = {value_size} (layer {layer}) is not divisible "
                    f"by input_heads={self.input_heads}"
                )
        if self.cell not in CELL_TYPES:
            raise ValueError(f"cell must be one of {CELL_TYPES}, got {self.cell!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "triton" and self.attended_norm:
            raise ValueError("attended_norm=True is not implemented by the triton backend's kernels: use backend='torch'")
        dropout = self.attention_dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout!r}")
        for name in ("top_down", "communication", "attended_norm", "batch_first"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")  # noqa: TRY004 - ValueError is the tested contract

    @property
    def num_layers(self) -> int:
        return len(self.hidden_sizes)

    def module_size(self, layer: int) -> int:
        return self.hidden_sizes[layer] // self.num_modules[layer]

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> BRIMsConfig:
        """The config of a plain mapping (what :meth:`to_dict` writes), naming any unknown key."""
        if not isinstance(options, Mapping):
            raise TypeError(f"a BRIMs config must be a BRIMsConfig or a mapping of its fields, got {type(options).__name__}")
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown BRIMsConfig field {unknown[0]!r}; the fields are {', '.join(known)}")
        return cls(**options)

    def to_dict(self) -> dict:
        """Plain dict (lists for tuples) for YAML/JSON; :meth:`from_dict` reads it back."""
        return {
            field.name: list(value) if isinstance(value, tuple) else value
            for field in dataclasses.fields(self)
            for value in [getattr(self, field.name)]
        }
