"""The recurrent cores every experiment compares, built from one typed config.

- ``brims``: :class:`brims.BRIMs` (layers with top-down, the paper's model);
- ``brims-no-top-down``: the same stack with ``top_down=False`` (stacked RIMs, the ablation);
- ``rims``: :class:`brims.RIMs`, one layer holding the stack's total hidden size, with the
  first layer's module count and ``top_k`` (the RIMs paper: 600 units, 6 modules, 4 active);
- ``lstm``: ``torch.nn.LSTM`` with the stack's layers and sizes (same total hidden size).

Every core maps ``(T, B, F)`` to ``(T, B, H)`` and can carry a state across calls.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from brims.config import BRIMsConfig
from brims.network import BRIMs

CORE_KINDS = ("brims", "rims", "brims-no-top-down", "lstm")
MODULAR_KINDS = ("brims", "rims", "brims-no-top-down")


@dataclass(frozen=True)
class CoreConfig:
    """Which core and its sizes; attention options go to BRIMs/RIMs and are ignored by the LSTM.

    Attributes:
        kind: one of ``brims``, ``rims``, ``brims-no-top-down``, ``lstm``.
        compile: wrap each BRIMs time step in ``torch.compile`` (``BRIMs.compile_step``).
    """

    kind: str = "brims"
    cell: str = "lstm"
    hidden_sizes: tuple[int, ...] = (300, 300)
    num_modules: tuple[int, ...] = (6, 3)
    top_k: tuple[int, ...] = (4, 2)
    communication: bool = True
    input_heads: int = 4
    input_key_size: int = 64
    comm_heads: int = 4
    comm_key_size: int = 32
    comm_value_size: int = 32
    attention_dropout: float = 0.1
    compile: bool = False

    def __post_init__(self) -> None:
        if self.kind not in CORE_KINDS:
            raise ValueError(f"model.core.kind must be one of {CORE_KINDS}, got {self.kind!r}")
        for name in ("hidden_sizes", "num_modules", "top_k"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if self.kind == "lstm" and self.cell != "lstm":
            raise ValueError(f"model.core.cell={self.cell!r} has no meaning for the lstm core; leave it 'lstm'")
        if self.kind != "lstm":  # the module options mean nothing to the LSTM
            # Validate the sizes now (naming the field), not when the model is built mid-run.
            self.brims_config(input_size=1)

    @property
    def hidden_size(self) -> int:
        """Features of the core's output at each step."""
        return sum(self.hidden_sizes) if self.kind == "rims" else self.hidden_sizes[-1]

    def brims_config(self, input_size: int) -> BRIMsConfig:
        """The :class:`BRIMsConfig` of a modular core (also used to validate the sizes)."""
        if self.kind == "rims":
            layers: dict[str, Any] = {
                "hidden_sizes": (sum(self.hidden_sizes),),
                "num_modules": (self.num_modules[0],),
                "top_k": (self.top_k[0],),
                "top_down": False,
            }
        else:
            layers = {
                "hidden_sizes": self.hidden_sizes,
                "num_modules": self.num_modules,
                "top_k": self.top_k,
                "top_down": self.kind != "brims-no-top-down",
            }
        try:
            return BRIMsConfig(
                input_size=input_size,
                cell=self.cell,
                communication=self.communication,
                input_heads=self.input_heads,
                input_key_size=self.input_key_size,
                comm_heads=self.comm_heads,
                comm_key_size=self.comm_key_size,
                comm_value_size=self.comm_value_size,
                attention_dropout=self.attention_dropout,
                **layers,
            )
        except ValueError as error:
            raise ValueError(str(error)) from None

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


class RecurrentCore(nn.Module):
    """``(T, B, F) -> (T, B, H)`` with any of the four kinds; diagnostics for modular kinds."""

    def __init__(self, config: CoreConfig, input_size: int) -> None:
        super().__init__()
        self.config = config
        self.network: nn.Module
        if config.kind == "lstm":
            sizes = set(config.hidden_sizes)
            if len(sizes) != 1:
                raise ValueError(f"the lstm core needs equal hidden_sizes, got {config.hidden_sizes}")
            self.network = nn.LSTM(input_size, config.hidden_sizes[0], num_layers=len(config.hidden_sizes))
        else:
            # RIMs is the one-layer, no-top-down BRIMs: the same class computes it.
            self.network = BRIMs.from_config(config.brims_config(input_size))
            if config.compile:
                self.network.compile_step()

    @property
    def is_modular(self) -> bool:
        return self.config.kind != "lstm"

    def forward(self, x: Tensor, state: Any = None, *, return_diagnostics: bool = False):
        """``x (T, B, F)`` → ``(output (T, B, H), state, diagnostics or None)``."""
        if not self.is_modular:
            if return_diagnostics:
                raise ValueError("diagnostics need a modular core (brims, rims, brims-no-top-down), not lstm")
            output, state = self.network(x, state)  # (T, B, H)
            return output, state, None
        if return_diagnostics:
            return self.network(x, state, return_diagnostics=True)
        output, state = self.network(x, state)  # (T, B, H)
        return output, state, None

