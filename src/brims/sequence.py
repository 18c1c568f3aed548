"""The whole time loop as one autograd node with a hand-written backward, run in chunks of steps.

Dimension legend: T = time steps, B = batch, L = layers, n / m = modules / units per module of a
layer, P_l = width of one projected slot of layer l, K = steps per chunk.

Autograd through the time loop records ~130 small operations per step, each with its
bookkeeping, and saves what every one of them needs. :class:`SequenceFunction` instead runs
the forward without recording, keeps only what the hand-written backward needs
(:meth:`BRIMsLayer.step_backward`), and in backward walks the steps in reverse computing the
gradients of activations and state (:meth:`BRIMsCell.backward_step`).

The loop calls its step functions once per chunk of ``K`` consecutive steps
(:func:`advance_chunk`, :func:`forward_chunk`, :func:`backward_chunk`; ``compile_step()``
compiles each chunk into one graph). A chunk keeps the inputs of the weight gradients of its
steps side by side on the batch axis, so that each weight's gradient over the chunk is one
matmul ``X^T dY`` with ``K * B`` rows. Measured on a 2-core CPU (README, Speed): with K = 4 a
compiled training step is about 10% faster than with one step per call, which pays a
compiled call, its guards and an accumulation into every full-size weight gradient per
step. Chunks of all T steps (the cuDNN recipe) were slower: stacking every step copies about
1 GB per training step of the released configuration.

It computes the same gradients as autograd through :meth:`BRIMsCell.advance` (the tests check
this in float64 for every feature flag and for chunks of several steps). Where it cannot
(double backward), its backward re-runs the forward under autograd and differentiates that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from brims.layer import LayerWeights, StepGrads, StepSaved

if TYPE_CHECKING:
    from brims.network import BRIMsCell, NetworkWeights, StepDropout

SUPPORTED_DTYPES = (torch.float32, torch.float64)
_WEIGHTS_PER_LAYER = len(LayerWeights._fields)


class StepFunctions(NamedTuple):
    """The functions the time loop calls, each running a chunk of consecutive steps (plain, or
    their ``torch.compile``); see :func:`advance_chunk`, :func:`forward_chunk`, :func:`backward_chunk`."""

    advance: Callable[..., Any]  # advance_chunk: autograd-recorded or no-grad steps
    forward: Callable[..., Any]  # forward_chunk: the forward of SequenceFunction
    backward: Callable[..., Any]  # backward_chunk


def flatten_weights(weights: NetworkWeights) -> list[Tensor | None]:
    return [w for layer in weights.layers for w in layer] + list(weights.state_projections)


def unflatten_weights(flat: Sequence[Tensor | None], num_layers: int) -> NetworkWeights:
    from brims.network import NetworkWeights  # brims.network imports this module

    per_layer = _WEIGHTS_PER_LAYER
    layers = tuple(LayerWeights(*flat[i * per_layer : (i + 1) * per_layer]) for i in range(num_layers))
    return NetworkWeights(layers, tuple(flat[num_layers * per_layer :]))


def chunks(num_steps: int, steps_per_call: int) -> list[range]:
    """The time steps split into consecutive chunks of ``steps_per_call`` (the last may be shorter)."""
    return [range(start, min(start + steps_per_call, num_steps)) for start in range(0, num_steps, steps_per_call)]


def advance_chunk(
    cell: BRIMsCell,
    weights: NetworkWeights,
    x_steps: tuple[Tensor, ...],
    h: list[Tensor],
    c: list[Tensor],
    top_down: list[Tensor | None],
    dropout_steps: tuple[StepDropout, ...] | None,
    return_diagnostics: bool,
) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor | None], list[Tensor], list[Tensor]]:
    """``K = len(x_steps)`` steps of :meth:`BRIMsCell.advance` from the projected inputs ``(B, P_0)``.

    Returns the top layer's output ``(K, B, hidden_L)``, the new ``h, c`` and top-down slots,
    and with diagnostics per layer the active masks ``(K, n, B)`` and attention ``(K, n, B, 1 + S)``.
    """
    outputs, actives, attentions = [], [], []
    for t, x_t in enumerate(x_steps):
        h, c, top_down, output, active, attention = cell.advance(
            weights, x_t, h, c, top_down, None if dropout_steps is None else dropout_steps[t]
        )
        outputs.append(output)
        if return_diagnostics:
            actives.append(active)
            attentions.append(attention)
    stacked_actives = [torch.stack(a) for a in zip(*actives)]
    stacked_attentions = [torch.stack(a) for a in zip(*attentions)]
    return torch.stack(outputs), h, c, top_down, stacked_actives, stacked_attentions


def run_steps(
    advance: Callable[..., Any],
    weights: NetworkWeights,
    x_slots: Tensor,
    h: list[Tensor],
    c: list[Tensor],
    top_down: list[Tensor | None],
    dropout: list[StepDropout] | None,
    return_diagnostics: bool,
    steps_per_call: int,
) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
    """The time loop without saving: ``advance`` (:func:`advance_chunk`) per chunk of steps.

    Returns the top layer's output ``(T, B, hidden_L)``, the final ``h`` and ``c`` (module
    layout) and, with diagnostics, per layer the active masks ``(T, n, B)`` and attention
    ``(T, n, B, 1 + S)``.
    """
    x_steps = x_slots.unbind(0)  # unbind, not x[t]: indexing makes backward O(T^2)
    outputs, actives, attentions = [], [], []
    for steps in chunks(len(x_steps), steps_per_call):
        output, h, c, top_down, active, attention = advance(
            weights,
            x_steps[steps.start : steps.stop],
            h,
            c,
            top_down,
            None if dropout is None else tuple(dropout[steps.start : steps.stop]),
            return_diagnostics,
        )
        outputs.append(output)
        actives.append(active)
        attentions.append(attention)
    stacked_actives = [torch.cat(a) for a in zip(*actives)]
    stacked_attentions = [torch.cat(a) for a in zip(*attentions)]
    return torch.cat(outputs), h, c, stacked_actives, stacked_attentions


class ChunkSaved(NamedTuple):
    """What :func:`backward_chunk` needs from the forward of ``K`` steps.

    The inputs of the weight gradients hold the ``K`` steps side by side on the batch axis, so
    that each weight's gradient over the chunk is one matmul with ``K * B`` rows
    (``X^T dY``) rather than ``K`` accumulations into the full-size gradient.
    """

    steps: tuple[Any, ...]  # per step: per-layer StepSaved (weight-gradient inputs dropped), slots, c (LSTM) or None
    state: tuple[Tensor, ...]  # per layer (n, K*B, m): h entering each step
    attended: tuple[Tensor, ...]  # per layer (n, K*B, A): the cell's input
    comm_input: tuple[Tensor | None, ...]  # per layer (n, K*B, m): what communication read (h̃)
    comm_read: tuple[Tensor | None, ...]  # per layer (n, K*B, Hc*Vc): communication's result, before W^O
    dense: tuple[Tensor | None, ...]  # per layer (K*B, hidden_l): the state its projection read, or None


def _without_weight_inputs(saved: StepSaved) -> StepSaved:
    """Drop what :class:`ChunkSaved` keeps side by side (the backward step does not read it)."""
    comm = None if saved.comm is None else saved.comm._replace(read=None)
    return saved._replace(attended=None, h_read=None, comm=comm)


def _side_by_side(tensors: Sequence[Tensor | None], dim: int) -> Tensor | None:
    return None if tensors[0] is None else torch.cat(list(tensors), dim=dim)


def forward_chunk(
    cell: BRIMsCell,
    weights: NetworkWeights,
    x_steps: tuple[Tensor, ...],
    h: list[Tensor],
    c: list[Tensor],
    top_down: list[Tensor | None],
    dropout_steps: tuple[StepDropout, ...] | None,
    return_diagnostics: bool,
) -> tuple[Any, ...]:
    """:func:`advance_chunk` through :meth:`BRIMsCell.advance_saving`; its results, then the :class:`ChunkSaved`."""
    is_gru = cell.config.cell == "gru"
    states, per_step, outputs, actives, attentions, all_saved, all_dense = [], [], [], [], [], [], []
    for t, x_t in enumerate(x_steps):
        states.append(h)
        c_before = None if is_gru else tuple(c)
        h, c, top_down, output, active, attention, saved, slots, dense = cell.advance_saving(
            weights, x_t, h, c, top_down, None if dropout_steps is None else dropout_steps[t]
        )
        per_step.append((tuple(_without_weight_inputs(s) for s in saved), tuple(slots), c_before))
        all_saved.append(saved)
        all_dense.append(dense)
        outputs.append(output)
        if return_diagnostics:
            actives.append(active)
            attentions.append(attention)
    by_layer = list(zip(*all_saved))  # per layer, the K steps' StepSaved
    chunk = ChunkSaved(
        tuple(per_step),
        tuple(torch.cat(layer_states, dim=1) for layer_states in zip(*states)),
        tuple(torch.cat([s.attended for s in layer], dim=1) for layer in by_layer),
        tuple(_side_by_side([s.h_read for s in layer], dim=1) for layer in by_layer),
        tuple(_side_by_side([None if s.comm is None else s.comm.read for s in layer], dim=1) for layer in by_layer),
        tuple(_side_by_side(layer_dense, dim=0) for layer_dense in zip(*all_dense)),
    )
    stacked_actives = [torch.stack(a) for a in zip(*actives)]
    stacked_attentions = [torch.stack(a) for a in zip(*attentions)]
    return torch.stack(outputs), h, c, top_down, stacked_actives, stacked_attentions, chunk


def backward_chunk(
    cell: BRIMsCell,
    weights: NetworkWeights,
    chunk: ChunkSaved,
    dropout_steps: tuple[StepDropout, ...] | None,
    d_outputs: tuple[Tensor, ...],
    dh: list[Tensor],
    dc: list[Tensor | None],
    d_top_down: list[Tensor | None],
    d_attention_steps: tuple[list[Tensor], ...] | None,
    weight_grads: list[Tensor | None],
) -> tuple[Any, ...]:
    """Gradients of one :func:`forward_chunk`: :meth:`BRIMsCell.backward_step` for its steps in
    reverse, then the chunk's weight gradients added to the running sums ``weight_grads``.

    ``d_outputs`` holds the gradient of each step's output ``(B, hidden_L)``; ``dh, dc,
    d_top_down`` are those of the chunk's final state and top-down slots; ``weight_grads`` the
    weight gradients of the chunks after this one (in the order of :func:`flatten_weights`, None
    where a weight is absent). Returns the three for the chunk's initial state, the gradient of
    its inputs ``(K, B, P_0)`` and the new running sums.
    """
    batch = d_outputs[0].shape[0]
    num_steps = len(chunk.steps)
    step_grads: list[Any] = [None] * num_steps
    projection_grads: list[Any] = [None] * num_steps
    d_inputs: list[Any] = [None] * num_steps
    for t in reversed(range(num_steps)):
        saved, slots, c_before = chunk.steps[t]
        h_before = [state[:, t * batch : (t + 1) * batch] for state in chunk.state]  # (n, B, m) per layer
        dh, dc, d_top_down, d_inputs[t], step_grads[t], projection_grads[t] = cell.backward_step(
            weights,
            saved,
            slots,
            h_before,
            h_before if c_before is None else c_before,
            None if dropout_steps is None else dropout_steps[t],
            d_outputs[t],
            dh,
            dc,
            d_top_down,
            None if d_attention_steps is None else d_attention_steps[t],
        )
    grads = _add_chunk_weight_grads(weights, chunk, step_grads, projection_grads, weight_grads)
    return dh, dc, d_top_down, torch.stack(d_inputs), grads


def _add_chunk_weight_grads(
    weights: NetworkWeights,
    chunk: ChunkSaved,
    step_grads: Sequence[Sequence[StepGrads]],
    projection_grads: Sequence[Sequence[Tensor | None]],
    running: Sequence[Tensor | None],
) -> list[Tensor | None]:
    """``running + Σ_t x_t^T dy_t`` over the chunk for every weight, as one
    ``(n, in, K*B) x (n, K*B, out)`` matmul each that adds into the running sum
    (``baddbmm``: the sum is read once inside the matmul, not by a separate pass)."""
    grads: list[Tensor | None] = []
    for index, layer_weights in enumerate(weights.layers):
        (
            hidden_weight,
            hidden_bias,
            comm_qkv,
            comm_out_weight,
            comm_out_bias,
            input_weight,
            input_bias,
        ) = running[index * _WEIGHTS_PER_LAYER : (index + 1) * _WEIGHTS_PER_LAYER]
        layer_grads = [step[index] for step in step_grads]
        d_hidden = torch.cat([g.hidden for g in layer_grads], dim=1)  # (n, K*B, G + H*D)
        d_cell_input = torch.cat([g.cell_input for g in layer_grads], dim=1)  # (n, K*B, G)
        if layer_weights.comm_qkv is not None:
            d_qkv = torch.cat([g.comm_qkv for g in layer_grads], dim=1)  # (n, K*B, Hc(2Dc + Vc))
            d_out = torch.cat([g.comm_out for g in layer_grads], dim=1)  # (n, K*B, 2m)
            comm_qkv = torch.baddbmm(comm_qkv, chunk.comm_input[index].transpose(1, 2), d_qkv)  # (n, m, Hc(2Dc+Vc))
            comm_out_weight = torch.baddbmm(comm_out_weight, chunk.comm_read[index].transpose(1, 2), d_out)
            comm_out_bias = comm_out_bias + d_out.sum(dim=1)  # (n, 2m)
        grads += [
            torch.baddbmm(hidden_weight, chunk.state[index].transpose(1, 2), d_hidden),  # (n, m, G + H*D)
            hidden_bias + d_hidden.sum(dim=1, keepdim=True),  # (n, 1, G + H*D)
            comm_qkv,
            comm_out_weight,
            comm_out_bias,
            torch.baddbmm(input_weight, chunk.attended[index].transpose(1, 2), d_cell_input),  # (n, A, G)
            None if input_bias is None else input_bias + d_cell_input.sum(dim=1),  # (n, G)
        ]
    first_projection = len(weights.layers) * _WEIGHTS_PER_LAYER
    for index, dense in enumerate(chunk.dense):
        if dense is None:
            grads.append(None)
            continue
        d_projected = torch.cat([step[index] for step in projection_grads], dim=0)  # (K*B, P)
        grads.append(torch.addmm(running[first_projection + index], d_projected.t(), dense))  # (P, hidden)
    return grads


class SequenceFunction(torch.autograd.Function):
    """Outputs of :meth:`BRIMsCell.unroll` as one node.

    Inputs: the cell, its :class:`StepFunctions`, the number of steps per call, the dropout
    masks of every step, ``return_diagnostics``, the bottom layer's projected input
    ``(T, B, P_0)``, and flat lists (one entry per layer) of the initial ``h``, ``c`` (None for
    GRU), top-down slot (None where absent), then the folded weights (:func:`flatten_weights`).
    Outputs: the top layer's ``h`` at every step ``(T, B, hidden_L)``; per layer the final ``h``
    and (LSTM) ``c`` in module layout ``(n, B, m)``; with diagnostics, per layer the active
    masks ``(T, n, B)`` and attention ``(T, n, B, 1 + S)``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        cell: BRIMsCell,
        steps: StepFunctions,
        steps_per_call: int,
        dropout: list[StepDropout] | None,
        return_diagnostics: bool,
        x_slots: Tensor,
        *flat: Tensor | None,
    ) -> tuple[Tensor, ...]:
        num_layers = len(cell.layers)
        is_gru = cell.config.cell == "gru"
        # Detached, and (GRU) h and c in lists of their own: a compiled chunk is specialised on
        # its inputs' requires_grad and on which of them are the same object. The first chunk's
        # state and top-down slots come from outside (they may require grad), the later chunks'
        # from the chunk before (they never do); otherwise it would compile twice.
        inputs = [None if t is None else t.detach() for t in flat]
        h = inputs[:num_layers]
        c = list(h) if is_gru else inputs[num_layers : 2 * num_layers]  # GRU: a list of its own, as later chunks get
        top_down = inputs[2 * num_layers : 3 * num_layers]
        weights = unflatten_weights(inputs[3 * num_layers :], num_layers)
        saved_chunks: list[ChunkSaved] = []

        def forward_saving(*args: Any) -> tuple[Any, ...]:
            *results, saved = steps.forward(*args)
            saved_chunks.append(saved)
            return tuple(results)

        output, h, c, actives, attentions = run_steps(
            forward_saving, weights, x_slots.detach(), h, c, top_down, dropout, return_diagnostics, steps_per_call
        )
        ctx.cell, ctx.steps, ctx.dropout, ctx.return_diagnostics = cell, steps, dropout, return_diagnostics
        ctx.steps_per_call = steps_per_call
        # Everything goes through save_for_backward: changing an input in place before backward
        # raises, and autograd frees the activations after backward unless the graph is retained.
        activations, ctx.activations_spec = tree_flatten(saved_chunks)
        ctx.num_inputs = 1 + len(flat)
        ctx.save_for_backward(x_slots, *flat, *activations)
        results = [output, *h]  # (T, B, hidden_L)
        if not is_gru:
            results.extend(c)
        if return_diagnostics:
            ctx.mark_non_differentiable(*actives)
            results.extend(actives)  # (T, n, B) per layer
            results.extend(attentions)  # (T, n, B, 1 + S) per layer
        return tuple(results)

    @staticmethod
    def backward(ctx: Any, d_outputs: Tensor, *d_rest: Tensor) -> tuple[Tensor | None, ...]:
        cell: BRIMsCell = ctx.cell
        num_layers = len(cell.layers)
        is_gru = cell.config.cell == "gru"
        saved_tensors = ctx.saved_tensors
        x_slots, *flat = saved_tensors[: ctx.num_inputs]
        if torch.is_grad_enabled():
            return (None,) * 5 + tuple(_recompute_grads(ctx, x_slots, flat, (d_outputs, *d_rest)))
        weights = unflatten_weights(flat[3 * num_layers :], num_layers)
        saved_chunks = tree_unflatten(list(saved_tensors[ctx.num_inputs :]), ctx.activations_spec)
        # The gradients entering the last chunk, contiguous like those each chunk hands to the
        # one before (a loss such as h.sum() gives an expanded one): a compiled chunk is
        # specialised on its inputs' strides and would otherwise compile twice.
        dh = [g.contiguous() for g in d_rest[:num_layers]]
        d_rest = d_rest[num_layers:]
        dc: list[Tensor | None] = [None] * num_layers
        if not is_gru:
            dc, d_rest = [g.contiguous() for g in d_rest[:num_layers]], d_rest[num_layers:]
        d_attentions = d_rest[num_layers:] if ctx.return_diagnostics else None
        d_top_down = [None if t is None else t.new_zeros(t.shape) for t in flat[2 * num_layers : 3 * num_layers]]
        # Running sums of the weight gradients, which every chunk's backward adds to.
        weight_grads = [None if w is None else torch.zeros_like(w) for w in flatten_weights(weights)]
        d_output_steps = d_outputs.unbind(0)
        d_x_slots: list[Tensor] = []
        all_chunks = chunks(len(d_output_steps), ctx.steps_per_call)
        for chunk_steps, saved in zip(reversed(all_chunks), reversed(saved_chunks)):
            first, stop = chunk_steps.start, chunk_steps.stop
            d_attention = None
            if d_attentions is not None:
                d_attention = tuple([a[t] for a in d_attentions] for t in chunk_steps)
            dh, dc, d_top_down, d_x, weight_grads = ctx.steps.backward(
                weights,
                saved,
                None if ctx.dropout is None else tuple(ctx.dropout[first:stop]),
                d_output_steps[first:stop],
                dh,
                dc,
                d_top_down,
                d_attention,
                weight_grads,
            )
            d_x_slots.append(d_x)
        d_x_slots.reverse()
        d_state = list(dh) + ([None] * num_layers if is_gru else list(dc)) + list(d_top_down)
        return (None,) * 5 + (torch.cat(d_x_slots), *d_state, *weight_grads)


def _recompute_grads(
    ctx: Any, x_slots: Tensor, flat: list[Tensor | None], grad_outputs: tuple[Tensor, ...]
) -> list[Tensor | None]:
    """Double backward: re-run the forward under autograd and differentiate it with ``create_graph``."""
    cell: BRIMsCell = ctx.cell
    num_layers = len(cell.layers)
    inputs = [x_slots, *flat]
    h = list(flat[:num_layers])
    c = list(h) if cell.config.cell == "gru" else list(flat[num_layers : 2 * num_layers])
    top_down = list(flat[2 * num_layers : 3 * num_layers])
    weights = unflatten_weights(flat[3 * num_layers :], num_layers)
    outputs, h, c, actives, attentions = run_steps(
        ctx.steps.advance, weights, x_slots, h, c, top_down, ctx.dropout, ctx.return_diagnostics, ctx.steps_per_call
    )
    results = [outputs, *h]
    if cell.config.cell != "gru":
        results.extend(c)
    if ctx.return_diagnostics:
        results.extend(actives)
        results.extend(attentions)
    pairs = [(r, g) for r, g in zip(results, grad_outputs) if r.requires_grad]
    wanted = [i for i, t in enumerate(inputs) if t is not None and t.requires_grad]
    grads = torch.autograd.grad(
        [r for r, _ in pairs],
        [inputs[i] for i in wanted],
        [g for _, g in pairs],
        create_graph=True,
        allow_unused=True,
    )
    full: list[Tensor | None] = [None] * len(inputs)
    for i, g in zip(wanted, grads):
        full[i] = g
    return full
