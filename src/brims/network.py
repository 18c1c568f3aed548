"""The BRIMs network over time, its one-step cell, and RIMs.

Dimension legend: T = time steps, B = batch, F = input features, L = layers,
n_l / m_l = modules / units per module of layer l, P_l = width of one projected slot of
layer l (keys and values), S_l = non-null slots of layer l.

Per forward pass, everything that does not depend on the recurrent state is computed once
before the time loop: the folded weights, the bottom layer's bottom-up keys and values for the
whole sequence, and the attention-dropout masks for all steps. Each step then projects a
layer's new state once, for both readers of it: the layer above (bottom-up, this step) and the
layer below (top-down, next step).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brims.config import BRIMsConfig
from brims.layer import BRIMsLayer, LayerWeights, StepGrads, StepSaved
from brims.sequence import (
    SUPPORTED_DTYPES,
    SequenceFunction,
    StepFunctions,
    advance_chunk,
    backward_chunk,
    flatten_weights,
    forward_chunk,
    run_steps,
)

logger = logging.getLogger(__name__)

DEFAULT_STEPS_PER_CALL = 4  # measured on a 2-core CPU, released sMNIST configuration (README, Speed)


class BRIMsState(NamedTuple):
    """Recurrent state: one ``(B, hidden_sizes[l])`` tensor per layer in ``h`` and ``c``.

    Module ``k`` of layer ``l`` owns units ``k*m_l .. (k+1)*m_l - 1``. For GRU cells ``c``
    mirrors ``h``.
    """

    h: tuple[Tensor, ...]
    c: tuple[Tensor, ...]

    def detach(self) -> BRIMsState:
        """The same values cut from the graph (truncated back-propagation through time)."""
        return BRIMsState(tuple(h.detach() for h in self.h), tuple(c.detach() for c in self.c))

    def reset_rows(self, rows: Tensor) -> BRIMsState:
        """Zero the state of the batch rows where ``rows`` (bool, ``(B,)``) is True."""
        reset = rows.to(torch.bool).unsqueeze(-1)  # (B, 1)
        return BRIMsState(
            tuple(torch.where(reset, 0.0, h) for h in self.h), tuple(torch.where(reset, 0.0, c) for c in self.c)
        )


class BRIMsDiagnostics(NamedTuple):
    """What the modules did, one tensor per layer.

    ``active[l]``: ``(T, B, n_l)`` bool, which modules updated at each step.
    ``attention[l]``: ``(T, B, n_l, 1 + S_l)``, head-averaged input attention over the slots
    ``null, bottom_up[, top_down]`` (the top layer and top-down-free models have no top-down).
    The single-step cell returns the same without the ``T`` axis.
    """

    active: tuple[Tensor, ...]
    attention: tuple[Tensor, ...]


class NetworkWeights(NamedTuple):
    layers: tuple[LayerWeights, ...]
    # Per layer, ``(P_{l+1} + P_{l-1}, hidden_l)``: the slots that read this layer's state, or None.
    state_projections: tuple[Tensor | None, ...]


StepDropout = tuple[tuple[Tensor | None, Tensor | None], ...]  # per layer: (input (n,B,H,S), comm (n,n,B,Hc))


class BRIMsCell(nn.Module):
    """One time step of BRIMs for every layer, for step-by-step loops (RL, generation).

    Built from a :class:`BRIMsConfig` or from the same arguments (``BRIMsCell(input_size,
    hidden_sizes=..., ...)``). ``BRIMs(...).cell`` is the cell holding that network's parameters.

    ``sequence_backward`` (default True): when a gradient is wanted, run the time loop as one
    :class:`~brims.sequence.SequenceFunction` (hand-written backward, weight gradients batched
    over time; the same gradients, faster). False makes autograd record every step: the
    reference the fast path is tested against.
    """

    sequence_backward: bool = True

    def __init__(self, input_size: int | BRIMsConfig, **options: Any) -> None:
        super().__init__()
        if isinstance(input_size, BRIMsConfig):
            if options:
                raise TypeError(f"pass either a BRIMsConfig or keyword options, not both: {sorted(options)}")
            config = input_size
        else:
            config = BRIMsConfig(input_size, **options)
        self.config = config
        self.layers = nn.ModuleList(BRIMsLayer(config, index) for index in range(config.num_layers))
        # How each layer's state projection splits into (bottom-up of layer l+1, top-down of l-1).
        self._projection_splits: list[tuple[int, int]] = []
        for index in range(config.num_layers):
            upper = self.layers[index + 1].slot_width if index + 1 < config.num_layers else 0
            lower_has_top_down = index > 0 and self.layers[index - 1].input_attention.top_down is not None
            lower = self.layers[index - 1].slot_width if lower_has_top_down else 0
            self._projection_splits.append((upper, lower))

    # ---- state -------------------------------------------------------------------------------

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> BRIMsState:
        """Zero state for ``batch_size`` sequences (on the parameters' device/dtype by default)."""
        reference = self.layers[0].cell.weight_hh
        device = reference.device if device is None else device
        dtype = reference.dtype if dtype is None else dtype
        h = tuple(torch.zeros(batch_size, size, device=device, dtype=dtype) for size in self.config.hidden_sizes)
        return BRIMsState(h, h)

    def check_state(self, state: Any, batch_size: int, like: Tensor) -> BRIMsState:
        """Validate a user-given state; ``None`` gives zeros."""
        if state is None:
            return self.init_state(batch_size, like.device, like.dtype)
        if not isinstance(state, tuple) or len(state) != 2:
            raise TypeError(f"state must be a BRIMsState (h, c), got {type(state).__name__}")
        state = BRIMsState(*state)
        num_layers = self.config.num_layers
        for name, tensors in (("h", state.h), ("c", state.c)):
            if not isinstance(tensors, (tuple, list)) or len(tensors) != num_layers:
                raise ValueError(f"state.{name} must hold one tensor per layer ({num_layers}), got {tensors!r:.80}")
            for layer, (tensor, size) in enumerate(zip(tensors, self.config.hidden_sizes)):
                where = f"state.{name}[{layer}]"
                if not isinstance(tensor, Tensor):
                    raise TypeError(f"{where} must be a tensor, got {type(tensor).__name__}")
                if tuple(tensor.shape) != (batch_size, size):
                    raise ValueError(
                        f"{where} has shape {tuple(tensor.shape)}, expected (batch={batch_size}, hidden={size})"
                    )
                if tensor.device != like.device:
                    raise ValueError(f"{where} is on {tensor.device}, but the input is on {like.device}")
                if tensor.dtype != like.dtype:
                    raise ValueError(f"{where} has dtype {tensor.dtype}, but the input has {like.dtype}")
        return BRIMsState(tuple(state.h), tuple(state.c))

    def check_input(self, x: Any, expected_rank: int, layout: str) -> Tensor:
        """Validate the input's type, rank, features, dtype and device against the parameters."""
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a tensor of shape {layout}, got {type(x).__name__}")
        if x.dim() != expected_rank:
            raise ValueError(f"input must have shape {layout} ({expected_rank} dims), got shape {tuple(x.shape)}")
        if x.shape[-1] != self.config.input_size:
            raise ValueError(
                f"input has {x.shape[-1]} features (last dim), expected input_size={self.config.input_size}"
            )
        if x.numel() == 0:
            raise ValueError(f"input is empty: shape {tuple(x.shape)} (every dim of {layout} must be >= 1)")
        reference = self.layers[0].cell.weight_hh
        if x.device != reference.device:
            raise ValueError(f"input is on {x.device}, but the model's parameters are on {reference.device}")
        if x.dtype != reference.dtype:
            if torch.is_autocast_enabled(x.device.type) and x.dtype == torch.get_autocast_dtype(x.device.type):
                # Mixed precision: the layer before us ran in the autocast dtype. The state stays in
                # the parameters' dtype; autocast still runs our matmuls in the low precision.
                return x.to(reference.dtype)
            raise ValueError(f"input has dtype {x.dtype}, but the model's parameters are {reference.dtype}")
        return x

    def _to_modules(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """``(B, n*m)`` per layer → module-first ``(n, B, m)``, the layout of every step op."""
        return [
            t.view(t.shape[0], n, -1).transpose(0, 1).contiguous() for t, n in zip(tensors, self.config.num_modules)
        ]

    @staticmethod
    def _to_dense(t: Tensor) -> Tensor:  # (n, B, m) -> (B, n*m)
        return t.transpose(0, 1).reshape(t.shape[1], -1)

    # ---- the step ----------------------------------------------------------------------------

    def prepare(self) -> NetworkWeights:
        """Fold the parameters for one forward pass (concatenations; gradients flow through)."""
        projections: list[Tensor | None] = []
        for index, (upper, lower) in enumerate(self._projection_splits):
            parts = []
            if upper:
                parts.append(self.layers[index + 1].input_attention.bottom_up.weight)
            if lower:
                parts.append(self.layers[index - 1].input_attention.top_down.weight)
            projections.append(torch.cat(parts, dim=0) if parts else None)
        return NetworkWeights(tuple(layer.prepare() for layer in self.layers), tuple(projections))

    def _initial_top_down(self, weights: NetworkWeights, state_h: Sequence[Tensor]) -> list[Tensor | None]:
        """Top-down slot of each layer at the first step: layer l+1's given state, projected.

        Through the same matmul and split as inside a step, so that it has the values and the
        memory layout of the slot a step hands to the next (a compiled step is specialised on
        its inputs' strides and would otherwise compile twice).
        """
        top_down: list[Tensor | None] = [None] * len(self.layers)
        for index, (upper, lower) in enumerate(self._projection_splits):
            if lower:
                projected = F.linear(state_h[index], weights.state_projections[index])  # (B, P_{l+1} + P_{l-1})
                top_down[index - 1] = projected.split((upper, lower), dim=-1)[1]
        return top_down

    def _dropout_masks(self, steps: int, batch: int, like: Tensor) -> list[StepDropout] | None:
        """Scaled keep-masks for every step, drawn in one call per layer (per-step draws are slow).

        Each entry is ``1 / (1 - p)`` with probability ``1 - p``, else 0. Drawn as uniform numbers
        compared with ``1 - p``: on CPU about a third less time than ``bernoulli_`` followed by the
        scaling.
        """
        p = self.config.attention_dropout
        if not self.training or p == 0.0:
            return None
        keep = 1.0 - p

        def scaled_keep_mask(*shape: int) -> list[Tensor]:
            uniform = torch.rand(shape, dtype=like.dtype, device=like.device)
            return list(torch.where(uniform < keep, 1.0 / keep, 0.0).to(like.dtype).unbind(0))

        per_layer = []
        for layer in self.layers:
            n, heads = layer.num_modules, layer.input_attention.heads
            input_mask = scaled_keep_mask(steps, n, batch, heads, layer.input_attention.num_slots)
            comm_mask: Sequence[Tensor | None] = [None] * steps
            if layer.communication is not None:
                comm_mask = scaled_keep_mask(steps, n, n, batch, layer.communication.heads)
            per_layer.append(list(zip(input_mask, comm_mask)))
        return [tuple(layer_masks[t] for layer_masks in per_layer) for t in range(steps)]

    def advance(
        self,
        weights: NetworkWeights,
        bottom_up: Tensor,
        h: Sequence[Tensor],
        c: Sequence[Tensor],
        top_down: Sequence[Tensor | None],
        dropout: StepDropout | None,
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor | None], Tensor, list[Tensor], list[Tensor]]:
        """One step of all layers, bottom to top, on module-first state.

        Args:
            bottom_up: ``(B, P_0)`` the input's projected slot at this step.
            h, c: per layer ``(n_l, B, m_l)``.
            top_down: per layer ``(B, P_l)`` projected state of layer l+1 at t-1, or None.
            dropout: per layer (input mask, comm mask) for this step, or None.

        Returns:
            new h, new c, next step's top-down slots, the top layer's output ``(B, hidden_L)``,
            per layer active ``(n_l, B)`` and attention ``(n_l, B, 1 + S_l)``.
        """
        return self.advance_saving(weights, bottom_up, h, c, top_down, dropout)[:6]

    def advance_saving(
        self,
        weights: NetworkWeights,
        bottom_up: Tensor,
        h: Sequence[Tensor],
        c: Sequence[Tensor],
        top_down: Sequence[Tensor | None],
        dropout: StepDropout | None,
    ) -> tuple[Any, ...]:
        """:meth:`advance`, also returning what :meth:`backward_step` needs: per layer the
        :class:`StepSaved`, the slots ``(B, S_l, P_l)`` and the state read by the projection
        ``(B, hidden_l)`` (None where no projection reads it)."""
        new_h, new_c, actives, attentions, saved, all_slots = [], [], [], [], [], []
        dense: list[Tensor | None] = [None] * len(self.layers)
        next_top_down: list[Tensor | None] = [None] * len(self.layers)
        output = bottom_up
        for index, layer in enumerate(self.layers):
            slots = bottom_up.unsqueeze(1) if top_down[index] is None else torch.stack([bottom_up, top_down[index]], 1)
            input_dropout, comm_dropout = (None, None) if dropout is None else dropout[index]
            h_l, c_l, active, attention, layer_saved = layer.step(
                weights.layers[index], h[index], c[index], slots, input_dropout, comm_dropout
            )  # (n, B, m) x2, (n, B), (n, B, 1 + S)
            new_h.append(h_l)
            new_c.append(c_l)
            actives.append(active)
            attentions.append(attention)
            saved.append(layer_saved)
            all_slots.append(slots)
            projection = weights.state_projections[index]
            if projection is None and index + 1 < len(self.layers):
                continue
            output = self._to_dense(h_l)  # (B, hidden_l)
            if projection is not None:
                dense[index] = output
                # One matmul feeds both readers of this state: the layer above now, the one below next step.
                bottom_up, to_lower = F.linear(output, projection).split(self._projection_splits[index], dim=-1)
                if self._projection_splits[index][1]:
                    next_top_down[index - 1] = to_lower
        return new_h, new_c, next_top_down, output, actives, attentions, saved, all_slots, dense

    def backward_step(
        self,
        weights: NetworkWeights,
        saved: Sequence[StepSaved],
        slots: Sequence[Tensor],
        h: Sequence[Tensor],
        c: Sequence[Tensor],
        dropout: StepDropout | None,
        d_output: Tensor,
        dh: Sequence[Tensor],
        dc: Sequence[Tensor | None],
        d_top_down: Sequence[Tensor | None],
        d_attention: Sequence[Tensor] | None,
    ) -> tuple[Any, ...]:
        """Gradients of one :meth:`advance_saving` step, layers top to bottom.

        ``saved, slots`` come from that step's forward, ``h, c`` were its input state.
        ``d_output (B, hidden_L)`` is the gradient of the step's output; ``dh, dc`` (per layer
        ``(n_l, B, m_l)``; ``dc`` None for GRU) of its new state; ``d_top_down`` (per layer
        ``(B, P_l)`` or None) of the top-down slots it produced, which the next step read;
        ``d_attention`` (per layer ``(n_l, B, 1 + S_l)``, or None) of its diagnostics.

        Returns ``dh, dc, d_top_down`` of this step's inputs, ``d bottom_up (B, P_0)``, and per
        layer the :class:`StepGrads` and the gradient of the state projection's output ``(B, P)``.
        """
        num_layers = len(self.layers)
        new_dh: list[Tensor] = list(dh)
        new_dc: list[Tensor | None] = list(dc)
        new_d_top_down: list[Tensor | None] = [None] * num_layers
        grads: list[StepGrads | None] = [None] * num_layers
        projection_grads: list[Tensor | None] = [None] * num_layers
        d_bottom_up = d_output  # of the layer above's bottom-up slot; set by each layer before the one below reads it
        for index in reversed(range(num_layers)):
            layer = self.layers[index]
            d_dense = d_output if index == num_layers - 1 else None
            projection = weights.state_projections[index]
            if projection is not None:
                upper, lower = self._projection_splits[index]
                parts = ([d_bottom_up] if upper else []) + ([d_top_down[index - 1]] if lower else [])
                d_projected = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]  # (B, P_{l+1} + P_{l-1})
                projection_grads[index] = d_projected
                d_read = d_projected @ projection  # (B, hidden_l)
                d_dense = d_read if d_dense is None else d_dense + d_read
            dh_l = dh[index]
            if d_dense is not None:
                dh_l = dh_l + d_dense.view(d_dense.shape[0], layer.num_modules, -1).transpose(0, 1)  # (n, B, m)
            input_dropout, comm_dropout = (None, None) if dropout is None else dropout[index]
            new_dh[index], new_dc[index], d_slots, grads[index] = layer.step_backward(
                weights.layers[index],
                saved[index],
                h[index],
                c[index],
                slots[index],
                input_dropout,
                comm_dropout,
                dh_l,
                dc[index],
                None if d_attention is None else d_attention[index],
            )  # d_slots: (B, S, P)
            d_bottom_up = d_slots[:, 0]
            if d_slots.shape[1] == 2:
                # Contiguous, like the zeros the sequence backward starts from: a compiled chunk
                # is specialised on its inputs' strides and would otherwise compile twice.
                new_d_top_down[index] = d_slots[:, 1].contiguous()
        return new_dh, new_dc, new_d_top_down, d_bottom_up, grads, projection_grads

    def unroll(
        self,
        x: Tensor,
        state: BRIMsState | None,
        return_diagnostics: bool,
        steps: StepFunctions | None = None,
        steps_per_call: int = 1,
    ) -> tuple[Tensor, BRIMsState, BRIMsDiagnostics | None]:
        """Run ``x (T, B, F)`` from ``state``; ``steps`` replaces the step functions (e.g. compiled),
        each call of which runs ``steps_per_call`` consecutive steps.

        When a gradient is wanted and :meth:`uses_sequence_backward` allows, the time loop is one
        :class:`SequenceFunction` node (hand-written backward, time-batched weight gradients);
        otherwise autograd records every step.
        """
        steps = self.step_functions() if steps is None else steps
        num_steps, batch, _ = x.shape
        state = self.check_state(state, batch, x)
        weights = self.prepare()
        h, c = self._to_modules(state.h), self._to_modules(state.c)
        top_down = self._initial_top_down(weights, state.h)
        x_slots = F.linear(x, self.layers[0].input_attention.bottom_up.weight)  # (T, B, P_0), whole sequence
        dropout = self._dropout_masks(num_steps, batch, x)
        if self.uses_sequence_backward(x, weights, h, c, top_down):
            num_layers, is_gru = len(self.layers), self.config.cell == "gru"
            results = SequenceFunction.apply(
                self,
                steps,
                steps_per_call,
                dropout,
                return_diagnostics,
                x_slots,
                *h,
                *([None] * num_layers if is_gru else c),
                *top_down,
                *flatten_weights(weights),
            )
            output, h = results[0], list(results[1 : 1 + num_layers])
            rest = results[1 + num_layers :]
            c, rest = (h, rest) if is_gru else (list(rest[:num_layers]), rest[num_layers:])
            actives, attentions = list(rest[:num_layers]), list(rest[num_layers:])
        else:
            output, h, c, actives, attentions = run_steps(
                steps.advance, weights, x_slots, h, c, top_down, dropout, return_diagnostics, steps_per_call
            )
        final = BRIMsState(tuple(self._to_dense(t) for t in h), tuple(self._to_dense(t) for t in c))
        diagnostics = None
        if return_diagnostics:
            diagnostics = BRIMsDiagnostics(
                tuple(a.transpose(1, 2) for a in actives),  # (T, B, n)
                tuple(a.transpose(1, 2) for a in attentions),  # (T, B, n, 1 + S)
            )
        return output, final, diagnostics

    def step_functions(self) -> StepFunctions:
        """The plain (uncompiled) step functions."""
        return StepFunctions(self.advance_chunk, self.forward_chunk, self.backward_chunk)

    # Methods, not partials of the functions: torch.compile caches and counts recompilations per
    # code object, and every partial shares one wrapper's.

    def advance_chunk(self, *args: Any) -> tuple[Any, ...]:
        """:func:`brims.sequence.advance_chunk` of this cell."""
        return advance_chunk(self, *args)

    def forward_chunk(self, *args: Any) -> tuple[Any, ...]:
        """:func:`brims.sequence.forward_chunk` of this cell."""
        return forward_chunk(self, *args)

    def backward_chunk(self, *args: Any) -> tuple[Any, ...]:
        """:func:`brims.sequence.backward_chunk` of this cell."""
        return backward_chunk(self, *args)

    def uses_sequence_backward(
        self,
        x: Tensor,
        weights: NetworkWeights,
        h: Sequence[Tensor],
        c: Sequence[Tensor],
        top_down: Sequence[Tensor | None],
    ) -> bool:
        """Whether :meth:`unroll` runs the time loop as one :class:`SequenceFunction`.

        Only when a gradient is wanted (otherwise there is nothing to save), for float32/64, and
        outside what a hand-written backward does not serve: tracing by ``torch.compile`` of the
        whole model, ``torch.func`` transforms, forward-mode AD. Double backward is served (by
        recomputation, see :mod:`brims.sequence`). ``sequence_backward = False`` turns it off.
        """
        if not (self.sequence_backward and torch.is_grad_enabled()):
            return False
        if x.dtype not in SUPPORTED_DTYPES or torch.compiler.is_compiling():
            return False
        if torch.is_autocast_enabled(x.device.type):  # the hand-written backward assumes one dtype throughout
            return False
        # torch has no public query for these two; an autograd.Function without jvp/vmap rules fails under them.
        if torch._C._are_functorch_transforms_active() or torch.autograd.forward_ad._current_level >= 0:
            return False
        tensors = [x, *h, *c, *(t for t in top_down if t is not None), *flatten_weights(weights)]
        return any(t is not None and t.requires_grad for t in tensors)

    def forward(
        self,
        x: Tensor,
        state: BRIMsState | None = None,
        *,
        reset: Tensor | None = None,
        return_diagnostics: bool = False,
    ) -> tuple[Tensor, BRIMsState] | tuple[Tensor, BRIMsState, BRIMsDiagnostics]:
        """One step: ``x (B, input_size)`` → output ``(B, hidden_sizes[-1])`` and the new state.

        ``reset`` (bool ``(B,)``) zeroes those rows' state first, e.g. at episode starts.
        """
        x = self.check_input(x, 2, "(B, input_size)")
        if reset is not None:
            if reset.shape != (x.shape[0],):
                raise ValueError(f"reset must have shape (B,)=({x.shape[0]},), got {tuple(reset.shape)}")
            state = self.check_state(state, x.shape[0], x).reset_rows(reset)
        output, state, diagnostics = self.unroll(x.unsqueeze(0), state, return_diagnostics)
        if diagnostics is None:
            return output[0], state
        return output[0], state, BRIMsDiagnostics(*(tuple(t[0] for t in part) for part in diagnostics))


class BRIMs(nn.Module):
    """Bidirectional Recurrent Independent Mechanisms (Mittal et al., ICML 2020), like ``nn.LSTM``.

    ``output, state = model(x)`` with ``x`` of shape ``(T, B, input_size)`` (``(B, T, ...)``
    when ``batch_first``); ``output`` is the top layer's state at every step,
    ``(T, B, hidden_sizes[-1])``. Pass ``state`` back in to continue a sequence exactly.
    ``return_diagnostics=True`` also returns :class:`BRIMsDiagnostics`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_sizes: Sequence[int] = (300, 300),
        num_modules: Sequence[int] = (6, 3),
        top_k: Sequence[int] = (4, 2),
        *,
        cell: str = "lstm",
        top_down: bool = True,
        communication: bool = True,
        input_heads: int = 4,
        input_key_size: int = 64,
        input_value_factor: int = 4,
        comm_heads: int = 4,
        comm_key_size: int = 32,
        comm_value_size: int = 32,
        attention_dropout: float = 0.1,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        config = BRIMsConfig(
            input_size=input_size,
            hidden_sizes=hidden_sizes,
            num_modules=num_modules,
            top_k=top_k,
            cell=cell,
            top_down=top_down,
            communication=communication,
            input_heads=input_heads,
            input_key_size=input_key_size,
            input_value_factor=input_value_factor,
            comm_heads=comm_heads,
            comm_key_size=comm_key_size,
            comm_value_size=comm_value_size,
            attention_dropout=attention_dropout,
            batch_first=batch_first,
        )
        self.config = config
        self.cell = BRIMsCell(config)
        # Time steps per call of the step functions. Larger amortises each call's overhead and
        # batches more rows into each weight-gradient matmul; a compiled call is a graph of this
        # many steps, so compiling takes about as many times longer.
        self.steps_per_call = DEFAULT_STEPS_PER_CALL
        self._compile_options: dict[str, Any] | None = None  # set by compile_step()
        self._compiled: dict[str, StepFunctions] = {}  # by device type

    @classmethod
    def from_config(cls, config: BRIMsConfig) -> BRIMs:
        return BRIMs(**config.to_dict())

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> BRIMsState:
        return self.cell.init_state(batch_size, device, dtype)

    def compile_step(self, steps_per_call: int | None = None, **compile_options: Any) -> BRIMs:
        """Run the time steps through ``torch.compile(**compile_options)``; returns ``self``.

        The time loop stays in Python and calls a compiled chunk of ``steps_per_call``
        consecutive steps (default: the model's :attr:`steps_per_call`, 4), so compilation
        costs a graph of a few steps, not of T: the plain chunk, and for training the forward
        and hand-written backward chunk of :class:`~brims.sequence.SequenceFunction` (each
        compiled at its first use; a shorter last chunk, when T is not a multiple, compiles once
        more). The chunk is compiled separately for each device type it runs on, with inductor
        defaults chosen per device unless ``options`` says otherwise:

        - CPU: a C++ wrapper (``cpp_wrapper=True``). A step is many small kernels, and calling
          them from the default Python wrapper cost a quarter of a CPU training step.
        - CUDA: the Python wrapper (the C++ one rules out CUDA graphs, ``mode="reduce-overhead"``,
          and failed to build our backward step in torch 2.11), and no matmul shape padding
          (inductor's ``pad_mm`` pass benchmarks a matmul with its pre-autocast dtypes and fails
          under mixed precision in torch 2.11; our matmuls are too small to gain from padding).
        """
        if steps_per_call is not None:
            check_steps_per_call(steps_per_call)
            self.steps_per_call = steps_per_call
        self._compile_options = dict(compile_options)
        self._compiled = {}
        self._steps_for(self.cell.layers[0].cell.weight_hh.device)  # bad options fail here, not mid-run
        return self

    def _steps_for(self, device: torch.device) -> StepFunctions | None:
        """The compiled step functions for ``device``'s type (built at first use), or None (eager)."""
        if self._compile_options is None:
            return None
        if device.type not in self._compiled:
            options = dict(self._compile_options)
            if options.get("backend", "inductor") == "inductor":
                # torch.compile takes `mode` or `options`, not both: fold the mode into the options.
                mode = options.pop("mode", None)
                mode_options = torch._inductor.list_mode_options(mode) if mode else {}
                defaults = {"cpp_wrapper": True} if device.type == "cpu" else {"shape_padding": False}
                options["options"] = {**defaults, **mode_options, **options.get("options", {})}
            steps = StepFunctions(*(torch.compile(step, **options) for step in self.cell.step_functions()))
            self._compiled[device.type] = steps
            logger.info("BRIMs time step compiled for %s with %s", device.type, options)
        return self._compiled[device.type]

    def forward(
        self, x: Tensor, state: BRIMsState | None = None, *, return_diagnostics: bool = False
    ) -> tuple[Tensor, BRIMsState] | tuple[Tensor, BRIMsState, BRIMsDiagnostics]:
        layout = "(B, T, input_size)" if self.config.batch_first else "(T, B, input_size)"
        x = self.cell.check_input(x, 3, layout)
        check_steps_per_call(self.steps_per_call)
        if self.config.batch_first:
            x = x.transpose(0, 1)
        output, state, diagnostics = self.cell.unroll(
            x, state, return_diagnostics, self._steps_for(x.device), self.steps_per_call
        )
        if self.config.batch_first:
            output = output.transpose(0, 1)
            if diagnostics is not None:
                diagnostics = BRIMsDiagnostics(*(tuple(t.transpose(0, 1) for t in part) for part in diagnostics))
        if diagnostics is None:
            return output, state
        return output, state, diagnostics


def check_steps_per_call(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"steps_per_call must be a positive int, got {value!r}")


class RIMs(BRIMs):
    """Recurrent Independent Mechanisms (Goyal et al., 2019): one BRIMs layer, no top-down."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 600,
        num_modules: int = 6,
        top_k: int = 4,
        *,
        cell: str = "lstm",
        communication: bool = True,
        input_heads: int = 4,
        input_key_size: int = 64,
        input_value_factor: int = 4,
        comm_heads: int = 4,
        comm_key_size: int = 32,
        comm_value_size: int = 32,
        attention_dropout: float = 0.1,
        batch_first: bool = False,
    ) -> None:
        for name, value in (("hidden_size", hidden_size), ("num_modules", num_modules), ("top_k", top_k)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int for RIMs (one layer), got {value!r}")
        super().__init__(
            input_size,
            (hidden_size,),
            (num_modules,),
            (top_k,),
            cell=cell,
            top_down=False,
            communication=communication,
            input_heads=input_heads,
            input_key_size=input_key_size,
            input_value_factor=input_value_factor,
            comm_heads=comm_heads,
            comm_key_size=comm_key_size,
            comm_value_size=comm_value_size,
            attention_dropout=attention_dropout,
            batch_first=batch_first,
        )
