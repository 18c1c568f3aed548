"""The two attentions of a BRIMs layer: input attention over slots, and communication.

Dimension legend: n = modules of the layer, B = batch, m = units per module,
S = non-null input slots (1 or 2), H = heads, D = key size per head,
V = value size per head, A = H * V = attended input per module, P = H * D + A.

Both modules only hold parameters and fold them for a forward pass (``prepare``); the
per-step math is in the functions below so that a whole time step can be one compiled
function of plain tensors.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brims.grouped import GroupedLinear


class InputAttention(nn.Module):
    """Each module attends over the slots ``[null, bottom-up, top-down]`` of its layer.

    Per head ``h``: ``q_{k} = h_{t-1,k} W^Q_k`` (per-module weights),
    ``K_s = x_s W^K_s`` and ``V_s = x_s W^V_s`` (per-slot weights, no bias), and
    ``p_{k,s} = softmax_s(q_k · K_s / sqrt(D))``. The null slot is a zero vector, so its key and
    value are exactly zero and its logit exactly 0; it is never materialised.
    The attended input is ``a_k = concat_h Σ_s p_{k,h,s} V_{s,h}``.

    Note (departure from the released code): the released code feeds top-down only from the
    top layer into the bottom layer; we feed every layer from the one above, as the paper does.
    """

    def __init__(
        self,
        num_modules: int,
        module_size: int,
        bottom_up_size: int,
        top_down_size: int | None,
        heads: int,
        key_size: int,
        value_size: int,
    ) -> None:
        super().__init__()
        self.heads, self.key_size, self.value_size = heads, key_size, value_size
        self.query = GroupedLinear(num_modules, module_size, heads * key_size, bias=False)
        slot_width = heads * key_size + value_size  # keys and values of a slot in one matmul
        self.bottom_up = nn.Linear(bottom_up_size, slot_width, bias=False)
        self.top_down = nn.Linear(top_down_size, slot_width, bias=False) if top_down_size else None

    @property
    def num_slots(self) -> int:
        """Non-null slots."""
        return 1 if self.top_down is None else 2

    def scaled_query_weight(self) -> Tensor:
        """``W^Q / sqrt(D)``: folding the softmax temperature into the weight saves a step op."""
        return self.query.weight / math.sqrt(self.key_size)


def attend_slots(
    queries: Tensor, slots: Tensor, key_width: int, dropout_mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Input attention for one step.

    Args:
        queries: ``(n, B, H, D)``, already scaled by ``1/sqrt(D)``.
        slots: ``(B, S, P)``, each non-null slot's keys then values.
        key_width: ``H * D``.
        dropout_mask: ``(n, B, H, S)`` scaled keep-mask, or None.

    Returns:
        attended input ``(n, B, A)``, head-averaged attention ``(n, B, 1 + S)`` with the
        null slot first, and the per-head probabilities ``(n, B, H, 1 + S)``.
    """
    n, batch, heads, _ = queries.shape
    keys, values = _keys_values(slots, key_width, heads)  # (B, H, S, D), (B, H, S, V)
    # Slots are few (1-2), so products and sums over them beat batched matmuls of tiny matrices
    # (and fuse into one kernel each under torch.compile).
    logits = (queries.unsqueeze(3) * keys).sum(dim=-1)  # (n, B, H, S)
    probs = F.pad(logits, (1, 0)).softmax(dim=-1)  # (n, B, H, 1 + S), null logit = 0
    attention = probs.mean(dim=2)  # (n, B, 1 + S)
    weights = probs[..., 1:]  # the null value is zero: it adds nothing to the sum
    if dropout_mask is not None:
        weights = weights * dropout_mask
    attended = (weights.unsqueeze(-1) * values).sum(dim=3)  # (n, B, H, V)
    return attended.reshape(n, batch, -1), attention, probs  # (n, B, A)


def _keys_values(slots: Tensor, key_width: int, heads: int) -> tuple[Tensor, Tensor]:
    batch, num_slots, _ = slots.shape
    keys = slots[..., :key_width].view(batch, num_slots, heads, -1).transpose(1, 2)  # (B, H, S, D)
    values = slots[..., key_width:].view(batch, num_slots, heads, -1).transpose(1, 2)  # (B, H, S, V)
    return keys, values


def attend_slots_backward(
    d_attended: Tensor,
    d_attention: Tensor | None,
    queries: Tensor,
    slots: Tensor,
    probs: Tensor,
    key_width: int,
    dropout_mask: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`attend_slots` w.r.t. ``queries (n, B, H, D)`` and ``slots (B, S, P)``.

    ``d_attended`` is ``(n, B, A)``; ``d_attention`` ``(n, B, 1 + S)`` or None. Softmax:
    ``dℓ = p ⊙ (dp - Σ_s p_s dp_s)``.
    """
    n, batch, heads, _ = queries.shape
    keys, values = _keys_values(slots, key_width, heads)  # (B, H, S, D), (B, H, S, V)
    d_attended = d_attended.view(n, batch, heads, -1)  # (n, B, H, V)
    weights = probs[..., 1:]
    if dropout_mask is not None:
        weights = weights * dropout_mask
    d_values = (weights.unsqueeze(-1) * d_attended.unsqueeze(3)).sum(dim=0)  # (B, H, S, V)
    d_weights = (d_attended.unsqueeze(3) * values).sum(dim=-1)  # (n, B, H, S)
    if dropout_mask is not None:
        d_weights = d_weights * dropout_mask
    d_probs = F.pad(d_weights, (1, 0))  # (n, B, H, 1 + S): the null slot's probability reaches no value
    if d_attention is not None:
        d_probs = d_probs + d_attention.unsqueeze(2) / heads
    d_logits = (probs * (d_probs - (probs * d_probs).sum(dim=-1, keepdim=True)))[..., 1:]  # (n, B, H, S)
    d_queries = (d_logits.unsqueeze(-1) * keys).sum(dim=3)  # (n, B, H, D)
    d_keys = (d_logits.unsqueeze(-1) * queries.unsqueeze(3)).sum(dim=0)  # (B, H, S, D)
    d_slots = torch.cat([d_keys.transpose(1, 2).flatten(2), d_values.transpose(1, 2).flatten(2)], dim=-1)  # (B, S, P)
    return d_queries, d_slots


class Communication(nn.Module):
    """Active modules read all modules of their layer.

    ``q_k, k_k, v_k = h̃_k W^{QKV}_k`` (per-module, no bias: a key bias would shift every
    logit of a query equally and a value bias duplicates the output bias),
    ``o_k = concat_h Σ_j softmax_j(q_k · k_j / sqrt(D)) v_j``,
    ``[u_k, g_k] = o_k W^O_k + b_k`` and the update is ``σ(g_k) ⊙ tanh(u_k)``, added to active
    modules only. ``h̃`` is the state after the independent dynamics (inactive modules still
    hold ``h_{t-1}``), as in the RIMs paper.
    """

    def __init__(self, num_modules: int, module_size: int, heads: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.heads, self.key_size, self.value_size = heads, key_size, value_size
        self.qkv = GroupedLinear(num_modules, module_size, heads * (2 * key_size + value_size), bias=False)
        self.out = GroupedLinear(num_modules, heads * value_size, 2 * module_size, bias=True)

    def scaled_qkv_weight(self) -> Tensor:
        """The qkv weight with each head's query columns divided by sqrt(D).

        Columns are laid out per head, ``[q_h | k_h | v_h]`` for ``h = 1..H``.
        """
        n, m, _ = self.qkv.weight.shape
        per_head = self.qkv.weight.view(n, m, self.heads, -1)  # (n, m, H, 2D + V)
        queries = per_head[..., : self.key_size] / math.sqrt(self.key_size)
        return torch.cat([queries, per_head[..., self.key_size :]], dim=-1).view(n, m, -1)


class CommSaved(NamedTuple):
    """What :func:`communicate_backward` needs from the forward of one step."""

    qkv: Tensor  # (n, B, Hc, 2Dc + Vc)
    probs: Tensor  # (n_i, n_j, B, Hc), before dropout
    read: Tensor  # (n, B, Hc*Vc)
    gate: Tensor  # (n, B, m), σ(g)
    update: Tensor  # (n, B, m), tanh(u)


def communicate(
    h: Tensor,
    qkv_weight: Tensor,
    out_weight: Tensor,
    out_bias: Tensor,
    heads: int,
    key_size: int,
    dropout_mask: Tensor | None,
) -> tuple[Tensor, CommSaved]:
    """Gated communication update ``(n, B, m)`` for every module (the caller keeps the active ones).

    ``h`` is ``(n, B, m)``; ``dropout_mask`` is ``(n, n, B, H)`` (reader, read) or None.
    """
    n, batch, _ = h.shape
    qkv = torch.bmm(h, qkv_weight).view(n, batch, heads, -1)  # (n, B, H, 2D + V)
    queries, keys, values = qkv.split([key_size, key_size, qkv.shape[-1] - 2 * key_size], dim=-1)
    # n is small: broadcast products beat batched matmuls of n x n matrices (and fuse when compiled).
    probs = (queries.unsqueeze(1) * keys).sum(dim=-1).softmax(dim=1)  # (n_i, n_j, B, H)
    weights = probs if dropout_mask is None else probs * dropout_mask
    read = (weights.unsqueeze(-1) * values).sum(dim=1).view(n, batch, -1)  # (n, B, H*V)
    update, gate = (torch.bmm(read, out_weight) + out_bias.unsqueeze(1)).chunk(2, dim=-1)  # (n, B, m) x2
    gate, update = gate.sigmoid(), update.tanh()
    return gate * update, CommSaved(qkv, probs, read, gate, update)


def communicate_backward(
    d_out: Tensor, saved: CommSaved, qkv_weight: Tensor, out_weight: Tensor, key_size: int, dropout_mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`communicate` from ``d_out (n, B, m)``.

    Returns ``d h (n, B, m)`` and the gradients of the two matmul outputs, ``d qkv (n, B, Hc(2Dc+Vc))``
    and ``d [u, g] (n, B, 2m)``, from which the caller forms the weight gradients.
    """
    n, batch, heads, _ = saved.qkv.shape
    queries, keys, values = saved.qkv.split([key_size, key_size, saved.qkv.shape[-1] - 2 * key_size], dim=-1)
    d_pre = torch.cat(
        [d_out * saved.gate * (1 - saved.update * saved.update), d_out * saved.update * saved.gate * (1 - saved.gate)],
        dim=-1,
    )  # (n, B, 2m)
    d_read = torch.bmm(d_pre, out_weight.transpose(1, 2)).view(n, batch, heads, -1)  # (n, B, H, V)
    weights = saved.probs if dropout_mask is None else saved.probs * dropout_mask
    d_values = (weights.unsqueeze(-1) * d_read.unsqueeze(1)).sum(dim=0)  # (n_j, B, H, V)
    d_probs = (d_read.unsqueeze(1) * values).sum(dim=-1)  # (n_i, n_j, B, H)
    if dropout_mask is not None:
        d_probs = d_probs * dropout_mask
    probs = saved.probs
    d_logits = probs * (d_probs - (probs * d_probs).sum(dim=1, keepdim=True))  # (n_i, n_j, B, H)
    d_queries = (d_logits.unsqueeze(-1) * keys).sum(dim=1)  # (n_i, B, H, D)
    d_keys = (d_logits.unsqueeze(-1) * queries.unsqueeze(1)).sum(dim=0)  # (n_j, B, H, D)
    d_qkv = torch.cat([d_queries, d_keys, d_values], dim=-1).view(n, batch, -1)  # (n, B, H(2D + V))
    d_h = torch.bmm(d_qkv, qkv_weight.transpose(1, 2))  # (n, B, m)
    return d_h, d_qkv, d_pre
