"""A dense-masked BRIMs in the style of the authors' released code, kept only to be timed.

This is *not* part of the library and is not meant to be trained or used: ``benchmarks/speed.py``
times it next to :class:`brims.BRIMs` to show what the released code's design costs
(docs/design.md, section 4). We wrote it from a description of that design; no code was copied.

The model is the same as ``brims.BRIMs(300)`` (2 layers, hidden 300/300, modules 6/3, top-k
4/2, input attention over ``[null, bottom-up, top-down]`` with 4 heads of key size 64 and an
attended input of ``4*m`` per module, communication with 4 heads of key/value size 32 and a
gated ``sigmoid(g) * tanh(u)`` update), but built the way the released code builds it:

- **Blockified dense LSTM.** Each layer's per-module LSTMs are ONE ``nn.LSTMCell(n*A, n*m)``.
  Before every step the off-block-diagonal weights are zeroed by multiplying ``weight_ih`` and
  ``weight_hh`` in place with a fixed block-diagonal 0/1 mask (through ``.data``, outside
  autograd, as the released code does). That is ``n`` times the parameters and FLOPs of
  per-module weights, and the backward computes gradients for weights that are then zeroed.
- **GroupLinearLayer.** Per-module (and per-slot) linear maps hold a ``(n, in, out)`` weight and
  are applied with ``bmm`` after permuting ``(B, n, in)`` to module-first and back.
- **Nothing hoisted.** Each step materialises the null slot, recomputes every slot's keys and
  values (the bottom-up input's too), draws dropout with ``nn.Dropout``, picks the top-k with
  ``torch.topk`` and a 0/1 mask, and writes back with ``mask * new + (1 - mask) * old``.
- Communication reads every module's proposed state; a straight-through mask stops gradients
  into inactive modules (the released code's ``blocked_grad``).

Dimension legend: T = time steps, B = batch, n = modules, m = units per module,
A = attended input per module, H = heads, D = key size per head, V = value size per head,
S = slots including null, W = slot width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GroupLinear(nn.Module):
    """``y[:, k] = x[:, k] @ W[k] (+ b[k])`` with ``W`` of shape ``(n, in, out)``: one bmm."""

    def __init__(self, groups: int, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, out_features).uniform_(-bound, bound)) if bias else None

    def forward(self, x: Tensor) -> Tensor:  # (B, n, in) -> (B, n, out)
        y = torch.bmm(x.permute(1, 0, 2), self.weight)  # (n, B, out)
        if self.bias is not None:
            y = y + self.bias.unsqueeze(1)
        return y.permute(1, 0, 2)  # (B, n, out)


class BlockifiedLSTMCell(nn.Module):
    """``n`` LSTMs as one dense ``nn.LSTMCell(n*A, n*m)`` whose off-block weights are zeroed each step."""

    def __init__(self, num_modules: int, input_per_module: int, hidden_per_module: int) -> None:
        super().__init__()
        n, a, m = num_modules, input_per_module, hidden_per_module
        self.lstm = nn.LSTMCell(n * a, n * m)
        # nn.LSTMCell stacks the gates (i, f, g, o) row-wise, each n*m rows in module-major order.
        row_module = (torch.arange(4 * n * m) % (n * m)) // m  # (4nm,)
        self.register_buffer("mask_ih", (row_module[:, None] == torch.arange(n * a)[None, :] // a).float())
        self.register_buffer("mask_hh", (row_module[:, None] == torch.arange(n * m)[None, :] // m).float())
        self.blockify()

    def blockify(self) -> None:
        # In place on .data: no autograd record, so earlier steps' saved weights stay valid (the
        # mask is idempotent); weight gradients stay dense and the next call zeroes their effect.
        self.lstm.weight_ih.data.mul_(self.mask_ih)
        self.lstm.weight_hh.data.mul_(self.mask_hh)

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:  # (B, nA), (B, nm) x2
        self.blockify()
        return self.lstm(x, (h, c))


def multi_head_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, dropout: nn.Dropout) -> tuple[Tensor, Tensor]:
    """``q (B, R, H*D)``, ``k (B, S, H*D)``, ``v (B, S, H*V)`` → ``(B, R, H*V)`` and probs ``(B, H, R, S)``."""
    batch, readers, _ = q.shape
    q = q.view(batch, readers, heads, -1).transpose(1, 2)  # (B, H, R, D)
    k = k.view(batch, k.shape[1], heads, -1).transpose(1, 2)  # (B, H, S, D)
    v = v.view(batch, v.shape[1], heads, -1).transpose(1, 2)  # (B, H, S, V)
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (B, H, R, S)
    read = dropout(probs) @ v  # (B, H, R, V)
    return read.transpose(1, 2).reshape(batch, readers, -1), probs  # (B, R, H*V)


class DenseMaskedLayer(nn.Module):
    """One layer, one step: input attention, top-k, blockified LSTM, gated communication."""

    def __init__(
        self,
        bottom_up_size: int,
        top_down_size: int | None,
        hidden_size: int,
        num_modules: int,
        top_k: int,
        input_heads: int,
        input_key_size: int,
        input_value_factor: int,
        comm_heads: int,
        comm_key_size: int,
        comm_value_size: int,
        attention_dropout: float,
    ) -> None:
        super().__init__()
        n, m = num_modules, hidden_size // num_modules
        self.n, self.m, self.top_k = n, m, top_k
        self.input_heads, self.comm_heads = input_heads, comm_heads
        self.has_top_down = top_down_size is not None
        self.slot_sizes = [bottom_up_size] + ([top_down_size] if top_down_size else [])
        self.slot_width = max(self.slot_sizes)  # the released code needs equal slot widths: pad
        slots = 1 + len(self.slot_sizes)  # null first
        attended = input_value_factor * m  # A
        self.input_query = GroupLinear(n, m, input_heads * input_key_size)
        self.input_key = GroupLinear(slots, self.slot_width, input_heads * input_key_size)
        self.input_value = GroupLinear(slots, self.slot_width, attended)
        self.cell = BlockifiedLSTMCell(n, attended, m)
        self.comm_query = GroupLinear(n, m, comm_heads * comm_key_size)
        self.comm_key = GroupLinear(n, m, comm_heads * comm_key_size)
        self.comm_value = GroupLinear(n, m, comm_heads * comm_value_size)
        self.comm_out = GroupLinear(n, comm_heads * comm_value_size, m, bias=True)
        self.comm_gate = GroupLinear(n, comm_heads * comm_value_size, m, bias=True)
        self.dropout = nn.Dropout(attention_dropout)

    def forward(self, bottom_up: Tensor, top_down: Tensor | None, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        batch = h.shape[0]
        n, m = self.n, self.m
        inputs = [bottom_up] + ([top_down] if top_down is not None else [])
        padded = [F.pad(s, (0, self.slot_width - s.shape[-1])) for s in inputs]
        slots = torch.stack([torch.zeros_like(padded[0])] + padded, dim=1)  # (B, S, W), null first
        h_modules = h.view(batch, n, m)  # (B, n, m)

        # Input attention, recomputed from scratch: keys/values of every slot, every step.
        attended, probs = multi_head_attention(
            self.input_query(h_modules), self.input_key(slots), self.input_value(slots), self.input_heads, self.dropout
        )  # (B, n, A), (B, H, n, S)
        null_score = probs[..., 0].mean(dim=1)  # (B, n)

        # Competition: the top_k modules that attend least to null, as a 0/1 mask.
        chosen = torch.topk(null_score.detach(), self.top_k, dim=1, largest=False).indices  # (B, k)
        mask = torch.zeros_like(null_score).scatter_(1, chosen, 1.0)  # (B, n)
        mask_units = mask.unsqueeze(-1).expand(batch, n, m).reshape(batch, n * m)  # (B, nm)

        h_new, c_new = self.cell(attended.reshape(batch, -1), h, c)  # (B, nm) x2

        # Communication over all modules' proposals; gradients flow only into active ones.
        h_read = (h_new * mask_units + (h_new * (1.0 - mask_units)).detach()).view(batch, n, m)  # (B, n, m)
        read, _ = multi_head_attention(
            self.comm_query(h_read), self.comm_key(h_read), self.comm_value(h_read), self.comm_heads, self.dropout
        )  # (B, n, Hc*Vc)
        update = torch.sigmoid(self.comm_gate(read)) * torch.tanh(self.comm_out(read))  # (B, n, m)
        h_new = h_new + update.reshape(batch, n * m)

        # Write-back: inactive modules keep their state.
        h_out = mask_units * h_new + (1.0 - mask_units) * h
        c_out = mask_units * c_new + (1.0 - mask_units) * c
        return h_out, c_out


class DenseMaskedBRIMs(nn.Module):
    """``forward(x (T, B, F)) -> (output (T, B, hidden_sizes[-1]), (h, c))`` like ``brims.BRIMs``."""

    def __init__(
        self,
        input_size: int,
        hidden_sizes: Sequence[int] = (300, 300),
        num_modules: Sequence[int] = (6, 3),
        top_k: Sequence[int] = (4, 2),
        *,
        top_down: bool = True,
        input_heads: int = 4,
        input_key_size: int = 64,
        input_value_factor: int = 4,
        comm_heads: int = 4,
        comm_key_size: int = 32,
        comm_value_size: int = 32,
        attention_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.hidden_sizes = tuple(hidden_sizes)
        layers = len(self.hidden_sizes)
        self.layers = nn.ModuleList(
            DenseMaskedLayer(
                input_size if index == 0 else self.hidden_sizes[index - 1],
                self.hidden_sizes[index + 1] if top_down and index + 1 < layers else None,
                self.hidden_sizes[index],
                num_modules[index],
                top_k[index],
                input_heads,
                input_key_size,
                input_value_factor,
                comm_heads,
                comm_key_size,
                comm_value_size,
                attention_dropout,
            )
            for index in range(layers)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[tuple[Tensor, ...], tuple[Tensor, ...]]]:
        batch = x.shape[1]
        h = [x.new_zeros(batch, size) for size in self.hidden_sizes]
        c = [x.new_zeros(batch, size) for size in self.hidden_sizes]
        outputs = []
        for x_t in x.unbind(0):  # (B, F)
            bottom_up = x_t
            for index, layer in enumerate(self.layers):
                # h[index + 1] is still layer l+1's state at t-1: layers update bottom to top.
                top_down = h[index + 1] if layer.has_top_down else None
                h[index], c[index] = layer(bottom_up, top_down, h[index], c[index])
                bottom_up = h[index]
            outputs.append(h[-1])
        return torch.stack(outputs), (tuple(h), tuple(c))  # (T, B, hidden_L)


if __name__ == "__main__":
    # Smoke check: shapes, backward, exactly top_k modules change per example, blocks stay zero.
    torch.manual_seed(0)
    model = DenseMaskedBRIMs(300)
    x = torch.randn(5, 3, 300)
    output, (h, c) = model(x)
    output[-1].sum().backward()
    assert output.shape == (5, 3, 300)
    h0, c0 = [torch.randn(3, 300) for _ in range(2)]
    h1, c1 = model.layers[0](torch.randn(3, 300), torch.randn(3, 300), h0, c0)
    changed = (h1 != h0).view(3, 6, 50).any(-1) | (c1 != c0).view(3, 6, 50).any(-1)
    assert (changed.sum(-1) == 4).all(), changed
    cell = model.layers[0].cell
    assert (cell.lstm.weight_ih * (1 - cell.mask_ih)).abs().max() == 0
    dense = sum(p.numel() for p in model.parameters())
    print(f"ok: output {tuple(output.shape)}, {dense:,} parameters")
