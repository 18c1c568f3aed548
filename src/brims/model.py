"""The sequence modules: BRIMs over time (like ``nn.LSTM``) and RIMs, its one-layer case.

Dimension legend: T = time steps, B = batch, F = input features, n_l = modules of layer l.

:class:`BRIMs` runs a :class:`~brims.cell.BRIMsCell` over a sequence with
:func:`~brims.cell.run_steps`; ``compile_step()`` opts into the compiled backend
(:mod:`brims.backends.compiled`), which runs the same steps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from brims.backends.compiled import CompiledLoop
from brims.cell import BRIMsCell, BRIMsDiagnostics, BRIMsState, as_config, run_steps
from brims.config import BRIMsConfig


class BRIMs(nn.Module):
    """Bidirectional Recurrent Independent Mechanisms (Mittal et al., ICML 2020), like ``nn.LSTM``.

    ``BRIMs(input_size, hidden_sizes=..., ...)`` (the fields of :class:`BRIMsConfig`, whose
    defaults are the authors' released sequential-MNIST configuration) or ``BRIMs(config)``.
    ``output, state = model(x)`` with ``x`` of shape ``(T, B, input_size)`` (``(B, T, ...)``
    when ``batch_first``); ``output`` is the top layer's state at every step,
    ``(T, B, hidden_sizes[-1])``. Pass ``state`` back in to continue a sequence exactly.
    ``return_diagnostics=True`` also returns :class:`BRIMsDiagnostics`.
    """

    def __init__(self, input_size: int | BRIMsConfig, *args: Any, **options: Any) -> None:
        super().__init__()
        self.config = as_config(input_size, args, options)
        self.cell = BRIMsCell(self.config)
        self.compiled: CompiledLoop | None = None  # set by compile_step()

    @classmethod
    def from_config(cls, config: BRIMsConfig | dict[str, Any]) -> BRIMs:
        """The model of a :class:`BRIMsConfig` or of a mapping of its fields (``config.to_dict()``)."""
        if not isinstance(config, BRIMsConfig):
            config = BRIMsConfig.from_dict(config)
        return cls(config)

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> BRIMsState:
        return self.cell.init_state(batch_size, device, dtype)

    def compile_step(self, steps_per_call: int = 4, **compile_options: Any) -> BRIMs:
        """Run the time loop through ``torch.compile``'d chunks of ``steps_per_call`` steps; returns ``self``.

        The opt-in compiled backend, :class:`brims.backends.compiled.CompiledLoop` (see there for
        the defaults per device); ``compile_options`` go to ``torch.compile``. It computes the same
        steps as the eager loop (tested). It compiles the torch backend: with ``backend="triton"``
        the steps are fused kernels already, and it refuses.
        """
        if self.config.backend != "torch":
            raise ValueError(f"compile_step() compiles the torch backend; backend={self.config.backend!r} is fused already")
        self.compiled = CompiledLoop(self.cell, steps_per_call, compile_options)
        return self

    def forward(
        self, x: Tensor, state: BRIMsState | None = None, *, return_diagnostics: bool = False
    ) -> tuple[Tensor, BRIMsState] | tuple[Tensor, BRIMsState, BRIMsDiagnostics]:
        layout = "(B, T, input_size)" if self.config.batch_first else "(T, B, input_size)"
        x = self.cell.check_input(x, 3, layout)
        if self.config.batch_first:
            x = x.transpose(0, 1)  # (T, B, F)
        state = self.cell.check_state(state, x.shape[1], x)
        if self.compiled is None:
            # unbind, not x[t]: indexing makes backward O(T^2)
            output, state, diagnostics = run_steps(self.cell, x.unbind(0), state, return_diagnostics)
        else:
            output, state, diagnostics = self.compiled(x, state, return_diagnostics)
        if self.config.batch_first:
            output = output.transpose(0, 1)
            if diagnostics is not None:
                diagnostics = BRIMsDiagnostics(*(tuple(t.transpose(0, 1) for t in part) for part in diagnostics))
        if diagnostics is None:
            return output, state
        return output, state, diagnostics


class RIMs(BRIMs):
    """Recurrent Independent Mechanisms (Goyal et al., 2019): one BRIMs layer, no top-down.

    ``RIMs(input_size, hidden_size=600, num_modules=6, top_k=4, **options)`` (the RIMs paper's
    sizes; ``options`` are the other fields of :class:`BRIMsConfig`), or ``RIMs(config)`` with a
    one-layer config.
    """

    def __init__(
        self,
        input_size: int | BRIMsConfig,
        hidden_size: int = 600,
        num_modules: int = 6,
        top_k: int = 4,
        **options: Any,
    ) -> None:
        if isinstance(input_size, BRIMsConfig):
            if input_size.num_layers != 1:
                raise ValueError(f"RIMs has one layer, got a config with {input_size.num_layers}")
            super().__init__(input_size)
            return
        for name, value in (("hidden_size", hidden_size), ("num_modules", num_modules), ("top_k", top_k)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int for RIMs (one layer), got {value!r}")
        if "top_down" in options or "hidden_sizes" in options:
            raise TypeError("RIMs is one layer without top-down: use hidden_size, num_modules and top_k")
        super().__init__(input_size, (hidden_size,), (num_modules,), (top_k,), top_down=False, **options)
