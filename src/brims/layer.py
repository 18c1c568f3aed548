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
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from brims.attention import Communication, InputAttention, attend_slots, communicate
from brims.config import BRIMsConfig
from brims.grouped import make_cell


class LayerWeights(NamedTuple):
    """A layer's parameters folded once per forward pass (cheap; gradients flow through)."""

    hidden_weight: Tensor  # (n, m, G + H*D): [W_hh | W_Q / sqrt(D)]
    hidden_bias: Tensor  # (n, 1, G + H*D)
    comm_qkv: Tensor | None  # (n, m, Hc*(2Dc + Vc))
    comm_out_weight: Tensor | None  # (n, Hc*Vc, 2m)
    comm_out_bias: Tensor | None  # (n, 2m)


def select_top_k(null_score: Tensor, k: int) -> Tensor:
    """Bool mask ``(n, B)``: per example, the ``k`` modules that attend least to null.

    A hard choice: no gradient flows through it. Ties go to the lower module index.
    """
    n = null_score.shape[0]
    if k == n:
        return torch.ones_like(null_score, dtype=torch.bool)
    chosen = torch.topk(null_score.detach(), k, dim=0, largest=False).indices  # (k, B)
    return torch.zeros_like(null_score, dtype=torch.bool).scatter_(0, chosen, True)


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
        if self.communication is None:
            return LayerWeights(hidden_weight, hidden_bias, None, None, None)
        comm = self.communication
        return LayerWeights(hidden_weight, hidden_bias, comm.scaled_qkv_weight(), comm.out.weight, comm.out.bias)

    def step(
        self,
        weights: LayerWeights,
        h: Tensor,
        c: Tensor,
        slots: Tensor,
        input_dropout: Tensor | None,
        comm_dropout: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Advance one step.

        Args:
            h, c: ``(n, B, m)`` previous state (for GRU, ``c`` is ignored and returned as ``h``).
            slots: ``(B, S, P)`` projected non-null slots.
            input_dropout: ``(n, B, H, S)`` or None; comm_dropout: ``(n, n, B, Hc)`` or None.

        Returns:
            new ``h``, new ``c`` (both ``(n, B, m)``), active ``(n, B)`` bool and head-averaged
            input attention ``(n, B, 1 + S)``.
        """
        attention = self.input_attention
        n, batch, _ = h.shape
        key_width = attention.heads * attention.key_size
        hidden = torch.baddbmm(weights.hidden_bias, h, weights.hidden_weight)  # (n, B, G + H*D)
        hidden_gates, queries = hidden.split([hidden.shape[-1] - key_width, key_width], dim=-1)
        queries = queries.view(n, batch, attention.heads, attention.key_size)  # (n, B, H, D)
        attended, input_attention = attend_slots(queries, slots, key_width, input_dropout)  # (n, B, A)
        active = select_top_k(input_attention[..., 0], self.top_k)  # (n, B)
        keep = active.unsqueeze(-1)  # (n, B, 1)
        h_proposed, c_proposed = self.cell.finish(attended, hidden_gates, h, c)  # (n, B, m) x2
        if self.communication is not None:
            h_read = torch.where(keep, h_proposed, h)  # h̃: inactive modules still hold h_{t-1}
            h_proposed = h_proposed + communicate(
                h_read,
                weights.comm_qkv,
                weights.comm_out_weight,
                weights.comm_out_bias,
                self.communication.heads,
                self.communication.key_size,
                comm_dropout,
            )
        h_new = torch.where(keep, h_proposed, h)
        c_new = h_new if self.is_gru else torch.where(keep, c_proposed, c)
        return h_new, c_new, active, input_attention
