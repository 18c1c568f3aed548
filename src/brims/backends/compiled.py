"""The compiled backend: the time loop in ``torch.compile``'d chunks of a few steps.

``BRIMs.compile_step(steps_per_call=K)`` installs a :class:`CompiledLoop`. The time loop stays
in Python and calls one compiled graph per chunk of ``K`` consecutive steps
(:func:`brims.cell.run_steps`, the eager loop itself), so compiling costs a graph of ``K``
steps, not of ``T``; autograd (AOTAutograd) compiles the chunk's backward too. A shorter last
chunk, when ``T`` is not a multiple of ``K``, compiles once more. Measured on a 2-core CPU
(README, Speed): ``K = 4`` trains about 10% faster than one step per call, and the compile time
grows with ``K``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from brims.cell import BRIMsCell, BRIMsDiagnostics, BRIMsState, join_diagnostics, run_steps

logger = logging.getLogger(__name__)


def run_chunk(
    cell: BRIMsCell, x_steps: tuple[Tensor, ...], h: tuple[Tensor, ...], c: tuple[Tensor, ...] | None, diagnostics: bool
) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...] | None, BRIMsDiagnostics | None]:
    """:func:`run_steps` on ``h`` and ``c`` (None for GRU, whose ``c`` is ``h``), the function that is compiled.

    A GRU's state passes ``h`` once: a compiled graph is specialised on which of its inputs are
    the same tensor, and its outputs never are.
    """
    output, state, stacked = run_steps(cell, x_steps, BRIMsState(h, h if c is None else c), diagnostics)
    return output, state.h, None if c is None else state.c, stacked


class CompiledLoop:
    """``(x (T, B, F), state, return_diagnostics) -> (output, state, diagnostics)`` like the eager loop.

    The chunk is compiled separately for each device type it runs on, with inductor options
    chosen per device (the caller's ``options`` win over them; with a ``mode``, which
    ``torch.compile`` takes only without ``options``, none are added):

    - CPU: a C++ wrapper (``cpp_wrapper=True``). A step is many small kernels, and calling them
      from the default Python wrapper cost a quarter of a CPU training step.
    - CUDA: no matmul shape padding (inductor's ``pad_mm`` benchmarks a matmul with its
      pre-autocast dtypes and failed under mixed precision in torch 2.11; our matmuls are too
      small to gain from padding).
    """

    def __init__(self, cell: BRIMsCell, steps_per_call: int, compile_options: dict[str, Any]) -> None:
        if isinstance(steps_per_call, bool) or not isinstance(steps_per_call, int) or steps_per_call < 1:
            raise ValueError(f"steps_per_call must be a positive int, got {steps_per_call!r}")
        self.cell = cell
        self.steps_per_call = steps_per_call
        self.compile_options = dict(compile_options)
        self._compiled: dict[str, Any] = {}  # by device type
        self._chunk_for(cell.layers[0].cell.weight_hh.device)  # bad options fail here, not mid-run

    def _chunk_for(self, device: torch.device) -> Any:
        if device.type not in self._compiled:
            options = dict(self.compile_options)
            if options.get("backend", "inductor") == "inductor" and "mode" not in options:
                defaults = {"cpp_wrapper": True} if device.type == "cpu" else {"shape_padding": False}
                options["options"] = {**defaults, **options.get("options", {})}
            self._compiled[device.type] = torch.compile(run_chunk, **options)
            logger.info("BRIMs time steps compiled for %s in chunks of %d with %s", device.type, self.steps_per_call, options)
        return self._compiled[device.type]

    def __call__(
        self, x: Tensor, state: BRIMsState, return_diagnostics: bool
    ) -> tuple[Tensor, BRIMsState, BRIMsDiagnostics | None]:
        chunk = self._chunk_for(x.device)
        h, c = state.h, None if self.cell.config.cell == "gru" else state.c
        if torch.is_grad_enabled():
            # Every chunk after the first gets a state that requires grad; a first state that does
            # not (zeros, a detached carry) would compile the chunk a second time. As leaves that
            # require grad they change no number; their gradient is simply dropped.
            h = tuple(t if t.requires_grad else t.detach().requires_grad_() for t in h)
            c = None if c is None else tuple(t if t.requires_grad else t.detach().requires_grad_() for t in c)
        x_steps = x.unbind(0)  # (B, F) each
        outputs, chunks = [], []
        for start in range(0, len(x_steps), self.steps_per_call):
            output, h, c, diagnostics = chunk(
                self.cell, x_steps[start : start + self.steps_per_call], h, c, return_diagnostics
            )
            outputs.append(output)  # (K, B, hidden_L)
            chunks.append(diagnostics)
        final = BRIMsState(h, h if c is None else c)
        return torch.cat(outputs), final, join_diagnostics(chunks, torch.cat) if return_diagnostics else None
