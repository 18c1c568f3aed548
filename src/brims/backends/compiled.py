"""The compiled backend: the time loop in ``torch.compile``'d chunks of a few steps.

``BRIMs.compile_step(steps_per_call=K)`` installs a :class:`CompiledLoop`. The time loop stays
in Python and calls one compiled graph per chunk of ``K`` consecutive steps
(:func:`brims.cell.run_steps`, the eager loop itself), so compiling costs a graph of ``K``
steps, not of ``T``; autograd (AOTAutograd) compiles the chunk's backward too. Measured on a
2-core CPU (README, Speed): ``K = 4`` trains about 10% faster than one step per call, and the
compile time grows with ``K``.

The steps it runs are :mod:`brims.backends.projected`'s: the core's step with the bottom
layer's input projected for the whole sequence before the loop (one matmul, outside the
compiled chunks); the same numbers up to float rounding (tested).

What compiles, and when (a compile takes minutes on a CPU):

- **Variants.** A chunk is compiled separately for each combination of its length (``K``, or 1
  for the steps left over), grad mode (training step or ``no_grad``), module mode (``train()``,
  which draws dropout masks, or ``eval()``), ``return_diagnostics`` and device type: each is its
  own ``torch.compile`` with its own recompile budget (``isolate_recompiles=True``), so two
  models, or a model's variants, never spend each other's. A training run with validation uses
  four: ``K`` and 1 steps, training and eval.
- **Sequence length** never recompiles: the ``T % K`` steps left over run one at a time through
  the 1-step chunk, whatever ``T`` is.
- **Batch size** costs no recompile: the chunk compiles with every dimension of its inputs
  symbolic (``dynamic=True``), so one graph serves every batch size. Two exceptions, each at
  most one more graph per variant: a batch of one, which torch specialises; and a first batch
  size equal to another size of the inputs (the input size, a hidden size), which shares that
  size's symbol until the first other batch size compiles once more. Measured on our CPU at the
  released sizes (B=64, chunks of 4, one thread, two processes): the symbolic graph's training
  step took 1.02x and 0.95x the static graph's (noise), its cold compile 220 s against 134 s; a
  static first graph and torch's automatic dynamic shapes would instead recompile at the first
  other batch size, mid-epoch (docs/speed.md).
- **The limit.** Each variant may compile ``RECOMPILE_LIMIT`` graphs (``recompile_limit``), and
  compiles whole (``fullgraph=True``): past the limit torch raises instead of falling back to
  eager without a word. The error carries a note naming the variant and what its calls varied
  (batch sizes, dtypes, whether the input required grad, autocast), since anything but the
  batch size costs a graph each. ``compile_step(recompile_limit=N)`` raises the budget.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
from torch import Tensor

from brims.backends.projected import cell_step, project_input
from brims.cell import BRIMsCell, BRIMsDiagnostics, BRIMsState, join_diagnostics, run_steps

logger = logging.getLogger(__name__)

RECOMPILE_LIMIT = 4  # graphs per variant: the symbolic one, one after a batch size collision, a batch of one, a spare
FIXED_OPTIONS = ("fullgraph", "isolate_recompiles")  # what the loop's guarantees rest on


class Variant(NamedTuple):
    """What selects a chunk's compiled function: each is compiled on its own."""

    device: str
    steps: int
    grad: bool
    training: bool
    diagnostics: bool

    def describe(self) -> str:
        return (f"the {self.steps}-step chunk on {self.device} ({'with' if self.grad else 'without'} grad, "
                f"{'train' if self.training else 'eval'} mode, diagnostics {'on' if self.diagnostics else 'off'})")


class Call(NamedTuple):
    """What a call of a variant may vary: the batch size freely, each of the others at a graph's cost."""

    batch: int
    dtype: torch.dtype
    input_requires_grad: bool  # of the bottom layer's projected input (projected.project_input)
    autocast: torch.dtype | None


def run_chunk(
    cell: BRIMsCell,
    slot_steps: tuple[Tensor, ...],
    h: tuple[Tensor, ...],
    c: tuple[Tensor, ...] | None,
    diagnostics: bool,
) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...] | None, BRIMsDiagnostics | None]:
    """:func:`run_steps` of :func:`brims.backends.projected.cell_step` over the bottom layer's projected
    slots ``(B, P)``, on ``h`` and ``c`` (None for GRU, whose ``c`` is ``h``): the function that is compiled.

    A GRU's state passes ``h`` once: a compiled graph is specialised on which of its inputs are
    the same tensor, and its outputs never are.
    """

    def step(slot: Tensor, state: BRIMsState) -> tuple[BRIMsState, BRIMsDiagnostics]:
        return cell_step(cell, slot, state)

    output, state, stacked = run_steps(step, slot_steps, BRIMsState(h, h if c is None else c), diagnostics)
    return output, state.h, None if c is None else state.c, stacked


class CompiledLoop:
    """``(x (T, B, F), state, return_diagnostics) -> (output, state, diagnostics)`` like the eager loop.

    Chunks of ``steps_per_call`` steps, then the ``T % steps_per_call`` left over one at a time;
    one ``torch.compile`` per :class:`Variant` (see the module docstring for what recompiles).
    ``compile_options`` go to ``torch.compile`` after ``dynamic=True`` and
    ``recompile_limit=RECOMPILE_LIMIT``, which they may override; ``fullgraph`` and
    ``isolate_recompiles`` are always True and refused as options. Inductor options are chosen
    per device type (the caller's ``options`` win over them; with a ``mode``, which
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
        fixed = sorted(set(FIXED_OPTIONS) & set(compile_options))
        if fixed:
            raise ValueError(
                f"compile_step() sets {fixed[0]}=True itself (each chunk compiles whole, with its own recompile "
                f"budget, so that the limit raises instead of falling back to eager unnoticed); do not pass {fixed[0]}"
            )
        self.cell = cell
        self.steps_per_call = steps_per_call
        self.compile_options = {"dynamic": True, "recompile_limit": RECOMPILE_LIMIT, **compile_options}
        self._chunks: dict[Variant, Any] = {}
        self._calls: dict[Variant, dict[Call, None]] = {}  # each variant's distinct calls, in order
        device = cell.layers[0].cell.weight_hh.device
        self._chunk_for(Variant(device.type, steps_per_call, True, True, False))  # bad options fail here, not mid-run

    def _chunk_for(self, variant: Variant) -> Any:
        if variant not in self._chunks:
            options = dict(self.compile_options)
            if options.get("backend", "inductor") == "inductor" and "mode" not in options:
                defaults = {"cpp_wrapper": True} if variant.device == "cpu" else {"shape_padding": False}
                options["options"] = {**defaults, **options.get("options", {})}
            self._chunks[variant] = torch.compile(run_chunk, fullgraph=True, isolate_recompiles=True, **options)
            self._calls[variant] = {}
            logger.info("BRIMs time steps: compiling %s with %s", variant.describe(), options)
        return self._chunks[variant]

    def __call__(
        self, x: Tensor, state: BRIMsState, return_diagnostics: bool
    ) -> tuple[Tensor, BRIMsState, BRIMsDiagnostics | None]:
        h, c = state.h, None if self.cell.config.cell == "gru" else state.c
        if torch.is_grad_enabled():
            # Every chunk after the first gets a state that requires grad; a first state that does
            # not (zeros, a detached carry) would compile the chunk a second time. As leaves that
            # require grad they change no number; their gradient is simply dropped.
            h = tuple(t if t.requires_grad else t.detach().requires_grad_() for t in h)
            c = None if c is None else tuple(t if t.requires_grad else t.detach().requires_grad_() for t in c)
        # The bottom layer's bottom-up slot of every step, (B, P) each, each its own tensor: a compiled
        # chunk guards on the sizes of the base of an input view that requires grad, so views of the
        # (T, B, P) projection would compile again for a new length T (once T equalled another size).
        x_steps = tuple(slot.clone() for slot in project_input(self.cell, x).unbind(0))
        chunked = len(x_steps) - len(x_steps) % self.steps_per_call  # the rest run one step at a time
        starts = [*range(0, chunked, self.steps_per_call), *range(chunked, len(x_steps))]
        outputs, chunks = [], []
        for start in starts:
            steps = x_steps[start : start + (self.steps_per_call if start < chunked else 1)]
            output, h, c, diagnostics = self._run(steps, h, c, return_diagnostics)
            outputs.append(output)  # (K or 1, B, hidden_L)
            chunks.append(diagnostics)
        final = BRIMsState(h, h if c is None else c)
        return torch.cat(outputs), final, join_diagnostics(chunks, torch.cat) if return_diagnostics else None

    def _run(
        self, steps: tuple[Tensor, ...], h: tuple[Tensor, ...], c: tuple[Tensor, ...] | None, diagnostics: bool
    ) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...] | None, BRIMsDiagnostics | None]:
        """One chunk through its variant's compiled function; an error from it is logged and gets a note on
        what the variant's calls varied."""
        x = steps[0]  # (B, P)
        variant = Variant(x.device.type, len(steps), torch.is_grad_enabled(), self.cell.training, diagnostics)
        chunk = self._chunk_for(variant)
        autocast = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
        call = Call(x.shape[0], x.dtype, x.requires_grad, autocast)
        calls = self._calls[variant]
        try:
            result = chunk(self.cell, steps, h, c, diagnostics)
        except Exception as error:
            note = self._what_varied(variant, [*calls, call])
            logger.error("%s", note)  # also where the exception is reported without its notes
            error.add_note(note)
            raise
        calls[call] = None
        return result

    def _what_varied(self, variant: Variant, calls: list[Call]) -> str:
        seen = {name: list(dict.fromkeys(str(getattr(call, name)) for call in calls)) for name in Call._fields}
        varied = ", ".join(f"{name} took {', '.join(values)}" for name, values in seen.items() if len(values) > 1)
        return (
            f"BRIMs compile_step(): raised by {variant.describe()}, which may compile "
            f"{self.compile_options['recompile_limit']} graphs (recompile_limit; torch raises past it rather than "
            f"fall back to eager). Across its calls {varied or 'nothing varied'}: a new batch size compiles at most "
            "once more (a batch of one; a first batch size equal to another size), each other change a graph of its "
            "own. Keep them fixed, or pass compile_step(recompile_limit=N)."
        )
