"""The whole time loop as one autograd node with a hand-written backward.

Dimension legend: T = time steps, B = batch, L = layers, n / m = modules / units per module of a
layer, P_l = width of one projected slot of layer l.

Autograd through the time loop records ~130 small operations per step, each with its
bookkeeping, and saves what every one of them needs. :class:`SequenceFunction` instead runs
the forward without recording, keeps only what the hand-written backward needs
(:meth:`BRIMsLayer.step_backward`), and in backward walks the steps in reverse computing the
gradients of activations and state (:meth:`BRIMsCell.backward_step`, compiled by
``compile_step()``), then adds each step's weight gradients ``x_t^T dy_t`` in place.

We measured the alternative, the cuDNN recipe of one matmul ``X^T dY`` over all ``T * B``
rows after the loop: on CPU it was slower (stacking the steps copies about 1 GB per training
step of the released configuration, and MKL is already efficient at 64 rows).

It computes the same gradients as autograd through :meth:`BRIMsCell.advance` (the tests check
this in float64 for every feature flag). Where it cannot (double backward), its backward
re-runs the forward under autograd and differentiates that.
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
    """The per-step functions the time loop calls (plain methods, or their ``torch.compile``)."""

    advance: Callable[..., Any]  # BRIMsCell.advance: autograd-recorded or no-grad steps
    forward: Callable[..., Any]  # BRIMsCell.advance_saving: the forward of SequenceFunction
    backward: Callable[..., Any]  # BRIMsCell.backward_step


def flatten_weights(weights: NetworkWeights) -> list[Tensor | None]:
    return [w for layer in weights.layers for w in layer] + list(weights.state_projections)


def unflatten_weights(flat: Sequence[Tensor | None], num_layers: int) -> NetworkWeights:
    from brims.network import NetworkWeights  # brims.network imports this module

    per_layer = _WEIGHTS_PER_LAYER
    layers = tuple(LayerWeights(*flat[i * per_layer : (i + 1) * per_layer]) for i in range(num_layers))
    return NetworkWeights(layers, tuple(flat[num_layers * per_layer :]))


class SequenceFunction(torch.autograd.Function):
    """Outputs of :meth:`BRIMsCell.unroll` as one node.

    Inputs: the cell, its :class:`StepFunctions`, the dropout masks of every step,
    ``return_diagnostics``, the bottom layer's projected input ``(T, B, P_0)``, and flat lists
    (one entry per layer) of the initial ``h``, ``c`` (None for GRU), top-down slot (None where
    absent), then the folded weights (:func:`flatten_weights`).
    Outputs: the top layer's ``h`` at every step ``(T, B, hidden_L)``; per layer the final ``h``
    and (LSTM) ``c`` in module layout ``(n, B, m)``; with diagnostics, per layer the active
    masks ``(T, n, B)`` and attention ``(T, n, B, 1 + S)``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        cell: BRIMsCell,
        steps: StepFunctions,
        dropout: list[StepDropout] | None,
        return_diagnostics: bool,
        x_slots: Tensor,
        *flat: Tensor | None,
    ) -> tuple[Tensor, ...]:
        num_layers = len(cell.layers)
        is_gru = cell.config.cell == "gru"
        h = list(flat[:num_layers])
        c = h if is_gru else list(flat[num_layers : 2 * num_layers])
        top_down = list(flat[2 * num_layers : 3 * num_layers])
        weights = unflatten_weights(flat[3 * num_layers :], num_layers)
        states, per_step, outputs, actives, attentions = [(h, c)], [], [], [], []
        for t, x_t in enumerate(x_slots.unbind(0)):
            h, c, top_down, output, active, attention, saved, slots, dense = steps.forward(
                weights, x_t, h, c, top_down, None if dropout is None else dropout[t]
            )
            states.append((h, c))
            per_step.append((saved, slots, dense))
            outputs.append(output)
            if return_diagnostics:
                actives.append(active)
                attentions.append(attention)
        ctx.cell, ctx.steps, ctx.dropout, ctx.return_diagnostics = cell, steps, dropout, return_diagnostics
        # Everything goes through save_for_backward: changing an input in place before backward
        # raises, and autograd frees the activations after backward unless the graph is retained.
        activations, ctx.activations_spec = tree_flatten((states[:-1], per_step))
        ctx.num_inputs = 1 + len(flat)
        ctx.save_for_backward(x_slots, *flat, *activations)
        results = [torch.stack(outputs), *h]  # (T, B, hidden_L)
        if not is_gru:
            results.extend(c)
        if return_diagnostics:
            stacked_actives = [torch.stack(a) for a in zip(*actives)]  # (T, n, B) per layer
            ctx.mark_non_differentiable(*stacked_actives)
            results.extend(stacked_actives)
            results.extend(torch.stack(a) for a in zip(*attentions))  # (T, n, B, 1 + S) per layer
        return tuple(results)

    @staticmethod
    def backward(ctx: Any, d_outputs: Tensor, *d_rest: Tensor) -> tuple[Tensor | None, ...]:
        cell: BRIMsCell = ctx.cell
        num_layers = len(cell.layers)
        is_gru = cell.config.cell == "gru"
        saved_tensors = ctx.saved_tensors
        x_slots, *flat = saved_tensors[: ctx.num_inputs]
        if torch.is_grad_enabled():
            return (None, None, None, None, *_recompute_grads(ctx, x_slots, flat, (d_outputs, *d_rest)))
        weights = unflatten_weights(flat[3 * num_layers :], num_layers)
        states, per_step = tree_unflatten(list(saved_tensors[ctx.num_inputs :]), ctx.activations_spec)
        dh = list(d_rest[:num_layers])
        d_rest = d_rest[num_layers:]
        dc: list[Tensor | None] = [None] * num_layers
        if not is_gru:
            dc, d_rest = list(d_rest[:num_layers]), d_rest[num_layers:]
        d_attentions = d_rest[num_layers:] if ctx.return_diagnostics else None
        d_top_down = [None if t is None else torch.zeros_like(t) for t in flat[2 * num_layers : 3 * num_layers]]
        weight_grads = [None if w is None else torch.zeros_like(w) for w in flatten_weights(weights)]
        d_x_slots: list[Tensor] = []
        for t in reversed(range(len(per_step))):
            saved, slots, dense = per_step[t]
            h, c = states[t]
            d_attention = None if d_attentions is None else [a[t] for a in d_attentions]
            dh, dc, d_top_down, d_x, grads, d_projections = ctx.steps.backward(
                weights,
                saved,
                slots,
                dense,
                h,
                c,
                None if ctx.dropout is None else ctx.dropout[t],
                d_outputs[t],
                dh,
                dc,
                d_top_down,
                d_attention,
            )
            _accumulate_weight_grads(weight_grads, saved, h, dense, grads, d_projections)
            d_x_slots.append(d_x)
        d_x_slots.reverse()
        d_state = list(dh) + ([None] * num_layers if is_gru else list(dc)) + list(d_top_down)
        return (None, None, None, None, torch.stack(d_x_slots), *d_state, *weight_grads)


def _accumulate_weight_grads(
    weight_grads: list[Tensor | None],
    saved: Sequence[StepSaved],
    h: Sequence[Tensor],
    dense: Sequence[Tensor | None],
    grads: Sequence[StepGrads],
    d_projections: Sequence[Tensor | None],
) -> None:
    """Add one step's ``x_t^T dy_t`` to the weight gradients (in the order of :func:`flatten_weights`).

    In place and right after the step, while ``dy_t`` is in cache: on a CPU this was 3x faster
    than stacking every step's ``x_t`` and ``dy_t`` for one large matmul after the loop (that
    copies ~1 GB per training step of the released configuration), and in place it allocates
    nothing (inside a compiled step, each sum would be a new tensor and a copy).
    """
    per_layer = _WEIGHTS_PER_LAYER
    for index, (layer_saved, layer_grads) in enumerate(zip(saved, grads)):
        hidden_weight, hidden_bias, comm_qkv, comm_out_weight, comm_out_bias, input_weight, input_bias = weight_grads[
            index * per_layer : (index + 1) * per_layer
        ]
        hidden_weight.baddbmm_(h[index].transpose(1, 2), layer_grads.hidden)  # (n, m, G + H*D)
        hidden_bias.add_(layer_grads.hidden.sum(dim=1, keepdim=True))  # (n, 1, G + H*D)
        input_weight.baddbmm_(layer_saved.attended.transpose(1, 2), layer_grads.cell_input)  # (n, A, G)
        if input_bias is not None:
            input_bias.add_(layer_grads.cell_input.sum(dim=1))
        if comm_qkv is not None:
            comm_qkv.baddbmm_(layer_saved.h_read.transpose(1, 2), layer_grads.comm_qkv)  # (n, m, Hc(2Dc + Vc))
            comm_out_weight.baddbmm_(layer_saved.comm.read.transpose(1, 2), layer_grads.comm_out)  # (n, HcVc, 2m)
            comm_out_bias.add_(layer_grads.comm_out.sum(dim=1))
    projections = weight_grads[len(saved) * per_layer :]
    for projection, d_projected, state in zip(projections, d_projections, dense):
        if projection is not None:
            projection.addmm_(d_projected.t(), state)  # (P, hidden)


def _recompute_grads(
    ctx: Any, x_slots: Tensor, flat: list[Tensor | None], grad_outputs: tuple[Tensor, ...]
) -> list[Tensor | None]:
    """Double backward: re-run the forward under autograd and differentiate it with ``create_graph``."""
    from brims.network import run_steps  # brims.network imports this module

    cell: BRIMsCell = ctx.cell
    num_layers = len(cell.layers)
    inputs = [x_slots, *flat]
    h = list(flat[:num_layers])
    c = h if cell.config.cell == "gru" else list(flat[num_layers : 2 * num_layers])
    top_down = list(flat[2 * num_layers : 3 * num_layers])
    weights = unflatten_weights(flat[3 * num_layers :], num_layers)
    outputs, h, c, actives, attentions = run_steps(
        ctx.steps.advance, weights, x_slots, h, c, top_down, ctx.dropout, ctx.return_diagnostics
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
