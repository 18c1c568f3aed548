"""The two attentions of a BRIMs layer: input attention over slots, and communication.

Dimension legend: n = modules of the layer, B = batch, m = units per module,
S = non-null input slots (1 or 2), H = heads, D = key size per head, V = value size per head,
A = H * V = attended input per module.

The few slots (1-2) and modules (a handful) make every score matrix tiny, so both attentions
form their scores as broadcast products summed over the key axis rather than as batched
matmuls of tiny matrices: fewer, larger operations eagerly, and one fused kernel each under
``torch.compile``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brims.grouped import GroupedLinear


def dropout_keep(shape: tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """An inverted-dropout keep mask of ``shape``: ``1/(1-p)`` with probability ``1-p``, else 0.

    Both backends draw their masks with this call, in the same order, so under one seed they
    drop the same attention entries.
    """
    return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(1.0 - p).div_(1.0 - p)


class InputAttention(nn.Module):
    """Each module attends over the slots ``[null, bottom-up, top-down]`` of its layer.

    Per head: ``q_k = h_{t-1,k} W^Q_k`` (per-module weights), ``K_s = x_s W^K_s`` and
    ``V_s = x_s W^V_s`` (per-slot weights, no bias), ``p_{k,s} = softmax_s(q_k · K_s / sqrt(D))``
    and the attended input is ``a_k = concat_heads Σ_s p_{k,s} V_s``. The null slot is a zero
    vector, so its key and value are exactly zero and its logit exactly 0: it is never
    materialised, only its logit is padded in before the softmax.

    Note (departure from the released code): its attention dropout drops the attended values;
    ours drops the attention probabilities.
    """

    def __init__(
        self,
        num_modules: int,
        module_size: int,
        bottom_up_size: int,
        top_down_size: int | None,
        heads: int,
        key_size: int,
        attended_size: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.heads, self.key_size, self.attended_size, self.dropout = heads, key_size, attended_size, dropout
        self.query = GroupedLinear(num_modules, module_size, heads * key_size, bias=False)
        slot_width = heads * key_size + attended_size  # a slot's keys and values come from one matmul
        self.bottom_up = nn.Linear(bottom_up_size, slot_width, bias=False)
        self.top_down = nn.Linear(top_down_size, slot_width, bias=False) if top_down_size else None

    def forward(self, h: Tensor, bottom_up: Tensor, top_down: Tensor | None) -> tuple[Tensor, Tensor]:
        """Attend from the state ``h (n, B, m)`` over ``bottom_up (B, F)`` and ``top_down (B, F')``.

        Returns the attended input ``(n, B, A)`` and the head-averaged attention
        ``(n, B, 1 + S)``, null slot first.
        """
        return self.attend(self.query(h), self.slots(bottom_up, top_down))

    def attend(self, queries: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
        """The attention from the queries ``h W^Q (n, B, H*D)`` and the slots' keys and values
        ``(B, S, H*D + A)`` on: the attended input ``(n, B, A)`` and the head-averaged attention
        ``(n, B, 1 + S)``."""
        n, batch, _ = queries.shape
        heads, key_size = self.heads, self.key_size
        queries = queries.view(n, batch, heads, 1, key_size)  # (n, B, H, 1, D)
        keys = slots[..., : heads * key_size].view(batch, -1, heads, key_size).transpose(1, 2)  # (B, H, S, D)
        values = slots[..., heads * key_size :].view(batch, -1, heads, self.attended_size // heads).transpose(1, 2)
        logits = (queries * keys).sum(dim=-1) / math.sqrt(key_size)  # (n, B, H, S)
        probs = F.pad(logits, (1, 0)).softmax(dim=-1)  # (n, B, H, 1 + S); the null logit is 0
        weights = probs[..., 1:]  # (n, B, H, S); the null value is zero: it adds nothing
        if self.training and self.dropout > 0:
            weights = weights * dropout_keep(weights.shape, self.dropout, weights)
        attended = (weights.unsqueeze(-1) * values).sum(dim=3)  # (n, B, H, V)  (values: (B, H, S, V))
        return attended.reshape(n, batch, -1), probs.mean(dim=2)

    def slots(self, bottom_up: Tensor, top_down: Tensor | None) -> Tensor:
        """Keys and values of the non-null slots, one matmul per slot: ``(B, S, H*D + A)``."""
        slots = [self.bottom_up(bottom_up)]  # (B, H*D + A) each
        if self.top_down is not None:
            slots.append(self.top_down(top_down))
        return torch.stack(slots, dim=1)


class Communication(nn.Module):
    """Modules read all modules of their layer.

    ``q_k, k_k, v_k = h̃_k W^{QKV}_k`` (per-module, no bias: a key bias would shift every
    logit of a query equally and a value bias duplicates the output bias),
    ``o_k = concat_heads Σ_j softmax_j(q_k · k_j / sqrt(D)) v_j``,
    ``[u_k, g_k] = o_k W^O_k + b_k``, and the update is ``σ(g_k) ⊙ tanh(u_k)``; the layer adds
    it to the active modules. The qkv columns are laid out per head, ``[q_h | k_h | v_h]``.

    Notes (departures from the released code): its output map is shared by the modules of a
    layer, ours is per module; its attention dropout drops the communication output, ours the
    attention probabilities.
    """

    def __init__(
        self, num_modules: int, module_size: int, heads: int, key_size: int, value_size: int, dropout: float
    ) -> None:
        super().__init__()
        self.heads, self.key_size, self.value_size, self.dropout = heads, key_size, value_size, dropout
        self.qkv = GroupedLinear(num_modules, module_size, heads * (2 * key_size + value_size), bias=False)
        self.out = GroupedLinear(num_modules, heads * value_size, 2 * module_size, bias=True)

    def forward(self, h: Tensor) -> Tensor:
        """The gated update ``(n, B, m)`` of every module from the states ``h (n, B, m)`` it reads."""
        n, batch, _ = h.shape
        qkv = self.qkv(h).view(n, batch, self.heads, -1)  # (n, B, H, 2D + V)
        queries, keys, values = qkv.split([self.key_size, self.key_size, self.value_size], dim=-1)
        logits = (queries.unsqueeze(1) * keys).sum(dim=-1) / math.sqrt(self.key_size)  # (n_i, n_j, B, H)
        probs = logits.softmax(dim=1)  # over the modules read, j
        if self.training and self.dropout > 0:
            probs = probs * dropout_keep(probs.shape, self.dropout, probs)
        read = (probs.unsqueeze(-1) * values).sum(dim=1)  # (n_i, B, H, V)
        update, gate = self.out(read.reshape(n, batch, -1)).chunk(2, dim=-1)  # (n, B, m) each
        return gate.sigmoid() * update.tanh()
