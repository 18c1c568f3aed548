"""One BRIMs layer, one time step.

Dimension legend: n = modules, B = batch, m = units per module, k = active modules,
G = gates per module (4m LSTM, 3m GRU), H = input heads, D = input key size,
S = non-null slots, A = attended input per module, P = H * D + A (one slot's keys+values).

Step of layer l (design.md §2):
  1. queries from each module's previous state, fused with the recurrent gate matmul:
     ``[h W_hh + b | q] = h_{t-1} [W_hh | W_Q / sqrt(D)]``;
  2. input attention over ``[null, bottom-up, top-down]`` gives ``a_k`` and the null score;
  3. the k modules with the lowest null score (head-averaged) are active;
  4. each module's own LSTM/GRU proposes ``(h̃, c̃)`` from ``a_k``;
  5. active modules add the gated communication read;
  6. active modules take the new state, inactive ones keep theirs bit for bit.

``BRIMsLayer.step_backward`` is the hand-written gradient of ``step`` that ``brims.sequence``
runs in place of autograd; ``step`` returns what it needs (``StepSaved``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from brims.attention import (
    CommSaved,
    Communication,
    InputAttention,
    attend_slots,
    attend_slots_backward,
    communicate,
    communicate_backward,
)
from brims.config import BRIMsConfig
from brims.grouped import gru_backward, gru_finish, lstm_backward, lstm_finish, make_cell


class LayerWeights(NamedTuple):
    """A layer's parameters folded once per forward pass (cheap; gradients flow through)."""

    hidden_weight: Tensor  # (n, m, G + H*D): [W_hh | W_Q / sqrt(D)]
    hidden_bias: Tensor  # (n, 1, G + H*D)
    comm_qkv: Tensor | None  # (n, m, Hc*(2Dc + Vc))
    comm_out_weight: Tensor | None  # (n, Hc*Vc, 2m)
    comm_out_bias: Tensor | None  # (n, 2m)
    input_weight: Tensor  # (n, A, G): the cell's W_ih
    input_bias: Tensor | None  # (n, G): GRU's b_ih (an LSTM's bias is in hidden_bias)


class StepSaved(NamedTuple):
    """What :meth:`BRIMsLayer.step_backward` needs from the forward of one step."""

    hidden: Tensor  # (n, B, G + H*D): [h W_hh + b | q]
    probs: Tensor  # (n, B, H, 1 + S)
    attended: Tensor  # (n, B, A)
    active: Tensor  # (n, B) bool
    cell: tuple[Tensor, Tensor, Tensor]  # see lstm_finish / gru_finish
    h_read: Tensor | None  # (n, B, m): what communication read
    comm: CommSaved | None


class StepGrads(NamedTuple):
    """Gradients ``dy_t`` of one step's matmul outputs; the caller adds the weight gradients
    ``x_t^T dy_t`` (see ``brims.sequence``)."""

    hidden: Tensor  # (n, B, G + H*D), input h_{t-1}
    cell_input: Tensor  # (n, B, G), input attended
    comm_qkv: Tensor | None  # (n, B, Hc(2Dc+Vc)), input h_read
    comm_out: Tensor | None  # (n, B, 2m), input read


def select_top_k(null_score: Tensor, k: int) -> Tensor:
    """Bool mask ``(n, B)``: per example, the ``k`` modules that attend least to null.

    A hard choice: no gradient flows through it. A module's rank is the number of modules that
    beat it (a lower score, or an equal score and a lower index); the ``k`` ranked first are
    active. Ties thus go to the lower module index on every device (``topk`` breaks ties
    differently on CPU and CUDA, and a zero state makes every module's null score equal at the
    first step). Comparing all pairs costs ``n^2 B`` comparisons, nothing for a handful of
    modules, and compiles into one fused kernel where a sort and a scatter would be two library
    calls per step.
    """
    n = null_score.shape[0]
    if k == n:
        return torch.ones_like(null_score, dtype=torch.bool)
    score = null_score.detach()
    other, this = score.unsqueeze(1), score.unsqueeze(0)  # (n_other, 1, B), (1, n_this, B)
    index = torch.arange(n, device=score.device)
    earlier = (index.unsqueeze(1) < index.unsqueeze(0)).unsqueeze(-1)  # (n_other, n_this, 1)
    beaten_by = (other < this) | ((other == this) & earlier)  # (n_other, n_this, B)
    return beaten_by.sum(dim=0) < k  # (n, B)


class BRIMsLayer(nn.Module):
    def __init__(self, config: BRIMsConfig, index: int) -> None:
        super().__init__()
        self.num_modules = config.num_modules[index]
        self.module_size = config.module_size(index)
        self.top_k = config.top_k[index]
        self.is_gru = config.cell == "gru"
        bottom_up_size = config.input_size if index == 0 else config.hidden_sizes[index - 1]
        has_top_down = config.top_down and index < config.num_layers - 1
        top_down_size = config.hidden_sizes[index + 1] if has_top_down else None
        value_size = config.input_value_factor * self.module_size
        self.input_attention = InputAttention(
            self.num_modules,
            self.module_size,
            bottom_up_size,
            top_down_size,
            config.input_heads,
            config.input_key_size,
            value_size,
        )
        self.cell = make_cell(config.cell, self.num_modules, value_size, self.module_size)
        self.communication = (
            Communication(
                self.num_modules, self.module_size, config.comm_heads, config.comm_key_size, config.comm_value_size
            )
            if config.communication
            else None
        )

    @property
    def slot_width(self) -> int:
        """P: width of one slot's keys and values."""
        return self.input_attention.bottom_up.out_features

    def prepare(self) -> LayerWeights:
        attention = self.input_attention
        hidden_weight = torch.cat([self.cell.weight_hh, attention.scaled_query_weight()], dim=-1)
        query_bias = self.cell.weight_hh.new_zeros(self.num_modules, attention.heads * attention.key_size)
        hidden_bias = torch.cat([self.cell.hidden_bias(), query_bias], dim=-1).unsqueeze(1)
        input_bias = self.cell.bias_ih if self.is_gru else None
        folded = (hidden_weight, hidden_bias)
        if self.communication is None:
            return LayerWeights(*folded, None, None, None, self.cell.weight_ih, input_bias)
        comm = self.communication
        return LayerWeights(
            *folded, comm.scaled_qkv_weight(), comm.out.weight, comm.out.bias, self.cell.weight_ih, input_bias
        )

    def step(
        self,
        weights: LayerWeights,
        h: Tensor,
        c: Tensor,
        slots: Tensor,
        input_dropout: Tensor | None,
        comm_dropout: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, StepSaved]:
        """Advance one step.

        Args:
            h, c: ``(n, B, m)`` previous state (for GRU, ``c`` is ignored and returned as ``h``).
            slots: ``(B, S, P)`` projected non-null slots.
            input_dropout: ``(n, B, H, S)`` or None; comm_dropout: ``(n, n, B, Hc)`` or None.

        Returns:
            new ``h``, new ``c`` (both ``(n, B, m)``), active ``(n, B)`` bool, head-averaged
            input attention ``(n, B, 1 + S)``, and what :meth:`step_backward` needs (callers that
            differentiate with autograd drop it).
        """
        attention = self.input_attention
        n, batch, _ = h.shape
        key_width = attention.heads * attention.key_size
        # bmm, then add: a compiled step fuses the add into the next kernel, where baddbmm first copies the bias.
        hidden = torch.bmm(h, weights.hidden_weight) + weights.hidden_bias  # (n, B, G + H*D)
        hidden_gates, queries = hidden.split([hidden.shape[-1] - key_width, key_width], dim=-1)
        queries = queries.view(n, batch, attention.heads, attention.key_size)  # (n, B, H, D)
        attended, input_attention, probs = attend_slots(queries, slots, key_width, input_dropout)  # (n, B, A)
        active = select_top_k(input_attention[..., 0], self.top_k)  # (n, B)
        keep = active.unsqueeze(-1)  # (n, B, 1)
        if self.is_gru:
            h_proposed, cell_saved = gru_finish(attended, hidden_gates, h, weights.input_weight, weights.input_bias)
            c_proposed = h_proposed
        else:
            h_proposed, c_proposed, cell_saved = lstm_finish(attended, hidden_gates, c, weights.input_weight)
        h_read, comm_saved = None, None
        if self.communication is not None:
            h_read = torch.where(keep, h_proposed, h)  # h̃: inactive modules still hold h_{t-1}
            update, comm_saved = communicate(
                h_read,
                weights.comm_qkv,
                weights.comm_out_weight,
                weights.comm_out_bias,
                self.communication.heads,
                self.communication.key_size,
                comm_dropout,
            )
            h_proposed = h_proposed + update
        h_new = torch.where(keep, h_proposed, h)
        c_new = h_new if self.is_gru else torch.where(keep, c_proposed, c)
        saved = StepSaved(hidden, probs, attended, active, cell_saved, h_read, comm_saved)
        return h_new, c_new, active, input_attention, saved

    def step_backward(
        self,
        weights: LayerWeights,
        saved: StepSaved,
        h: Tensor,
        c: Tensor,
        slots: Tensor,
        input_dropout: Tensor | None,
        comm_dropout: Tensor | None,
        dh_new: Tensor,
        dc_new: Tensor | None,
        d_attention: Tensor | None,
    ) -> tuple[Tensor, Tensor | None, Tensor, StepGrads]:
        """Gradients of :meth:`step` (hand-written; the top-k choice carries none).

        ``h, c, slots`` and the masks are the step's inputs; ``dh_new, dc_new (n, B, m)`` and
        ``d_attention (n, B, 1 + S)`` the gradients of its outputs (GRU: ``dc_new`` is None, all
        of the state's gradient is in ``dh_new``). Returns ``d h``, ``d c`` (None for GRU),
        ``d slots (B, S, P)`` and the gradients of the step's matmul outputs.
        """
        attention = self.input_attention
        n, batch, _ = h.shape
        key_width = attention.heads * attention.key_size
        keep = saved.active.unsqueeze(-1)  # (n, B, 1)
        zero = dh_new.new_zeros(())
        d_proposed = torch.where(keep, dh_new, zero)  # inactive modules pass their gradient straight to h_{t-1}
        dh = torch.where(keep, zero, dh_new)
        comm_qkv_grad, comm_out_grad = None, None
        if self.communication is not None:
            d_read, comm_qkv_grad, comm_out_grad = communicate_backward(
                d_proposed,
                saved.comm,
                weights.comm_qkv,
                weights.comm_out_weight,
                self.communication.key_size,
                comm_dropout,
            )
            d_proposed = d_proposed + torch.where(keep, d_read, zero)
            dh = dh + torch.where(keep, zero, d_read)
        if self.is_gru:
            d_input_gates, d_hidden_gates, dh_direct = gru_backward(saved.cell, h, d_proposed)
            dh = dh + dh_direct
            dc = None
        else:
            d_gates, dc = lstm_backward(saved.cell, c, d_proposed, torch.where(keep, dc_new, zero))  # (n, B, 4m)
            dc = dc + torch.where(keep, zero, dc_new)
            d_input_gates = d_hidden_gates = d_gates
        d_attended = torch.bmm(d_input_gates, weights.input_weight.transpose(1, 2))  # (n, B, A)
        queries = saved.hidden[..., -key_width:].view(n, batch, attention.heads, attention.key_size)  # (n, B, H, D)
        d_queries, d_slots = attend_slots_backward(
            d_attended, d_attention, queries, slots, saved.probs, key_width, input_dropout
        )  # (n, B, H, D), (B, S, P)
        d_hidden = torch.cat([d_hidden_gates, d_queries.flatten(2)], dim=-1)  # (n, B, G + H*D)
        dh = dh + torch.bmm(d_hidden, weights.hidden_weight.transpose(1, 2))
        return dh, dc, d_slots, StepGrads(d_hidden, d_input_gates, comm_qkv_grad, comm_out_grad)
