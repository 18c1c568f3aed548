"""The torch backend's steps with the input projected for the whole sequence: what the compiled loop runs.

The core (:mod:`brims.layer`) writes a step as the paper does, every map applied where the
paper applies it. The bottom layer's bottom-up keys and values, ``x_t W^{KV}``, depend on the
input alone, so :func:`project_input` computes them for every step in one matmul before the time
loop (and autograd their weight gradient in one), where the core projects each step's input in a
matmul of its own. The compiled loop (:mod:`brims.backends.compiled`) runs these steps; they
compute the same numbers up to float rounding (tests/test_projected.py: outputs, states, module
choices and gradients, every cell and switch).

The rest of a step is the core's own code (:meth:`InputAttention.attend
<brims.attention.InputAttention.attend>`, :func:`brims.layer.select_top_k`, the cell,
:class:`brims.attention.Communication`), the dropout masks drawn in the core's order, so that
under one seed both draw the same.

Not fused, measured (docs/speed.md, issue 23 item 6): the recurrent and query matmuls as one
``h [W_hh | W^Q]`` saved about 1% at most and cost memory (the concatenated weight is saved for
backward in every compiled chunk, and the queries, a view of the fused product, kept all of it
alive: 858 -> 1036 MiB of saved activations).

Dimension legend: T = time steps, B = batch, F = input features, n = modules, m = units per
module, P = H*D + A, one slot's keys and values.
"""

from __future__ import annotations

import torch
from torch import Tensor

from brims.cell import BRIMsCell, BRIMsDiagnostics, BRIMsState
from brims.layer import BRIMsLayer, LayerStep


def project_input(cell: BRIMsCell, x: Tensor) -> Tensor:
    """The bottom layer's bottom-up slot of every step, ``x (T, B, F) -> (T, B, P)``, in one matmul."""
    return cell.layers[0].input_attention.bottom_up(x)


def layer_step(layer: BRIMsLayer, h: Tensor, c: Tensor, bottom_up_slot: Tensor, top_down: Tensor | None) -> LayerStep:
    """:meth:`BRIMsLayer.forward <brims.layer.BRIMsLayer.forward>` from the projected bottom-up slot
    ``(B, P)``; ``h, c (B, n*m)``."""
    batch = h.shape[0]
    attention = layer.input_attention
    h = h.reshape(batch, layer.num_modules, -1).transpose(0, 1)  # (n, B, m)
    c = c.reshape(batch, layer.num_modules, -1).transpose(0, 1)  # (n, B, m)

    slots = [bottom_up_slot] if attention.top_down is None else [bottom_up_slot, attention.top_down(top_down)]
    attended, probs = attention.attend(attention.query(h), torch.stack(slots, dim=1))  # (n, B, A), (n, B, 1 + S)
    return layer.update(h, c, attended, probs)


def cell_step(cell: BRIMsCell, x_slot: Tensor, state: BRIMsState) -> tuple[BRIMsState, BRIMsDiagnostics]:
    """:meth:`BRIMsCell.step <brims.cell.BRIMsCell.step>` from the bottom layer's projected slot ``(B, P)``."""
    h, c, active, attention = [], [], [], []
    bottom_up = x_slot
    for index, layer in enumerate(cell.layers):
        top_down = state.h[index + 1] if layer.reads_top_down else None  # (B, hidden_{l+1}), from t-1
        if index > 0:
            bottom_up = layer.input_attention.bottom_up(bottom_up)  # (B, P_l) from the layer below's h
        out = layer_step(layer, state.h[index], state.c[index], bottom_up, top_down)
        h.append(out.h)
        c.append(out.c)
        active.append(out.active)
        attention.append(out.attention)
        bottom_up = out.h
    return BRIMsState(tuple(h), tuple(c)), BRIMsDiagnostics(tuple(active), tuple(attention))
