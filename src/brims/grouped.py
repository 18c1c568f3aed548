"""Per-module (grouped) linear maps and recurrent cells.

Every weight has a leading modules axis, ``(n, in, out)``, and inputs are laid out
module-first, ``(n, B, in)``, so one batched matmul applies each module's own weights:
``y[k] = x[k] @ W[k]``. This is the block-diagonal product without ever materialising
the zero blocks (design.md §2, step 4).

Dimension legend: n = modules, B = batch, m = units per module, I = input features
per module, G = gates per module (4m for LSTM, 3m for GRU).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _uniform_(tensor: Tensor, fan_in: int) -> None:
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(tensor, -bound, bound)


class GroupedLinear(nn.Module):
    """``y_k = x_k W_k + b_k`` for each module ``k``; weight ``(n, in, out)``."""

    def __init__(self, num_modules: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_modules, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(num_modules, out_features)) if bias else None
        _uniform_(self.weight, in_features)
        if self.bias is not None:
            _uniform_(self.bias, in_features)

    def forward(self, x: Tensor) -> Tensor:  # (n, B, in) -> (n, B, out)
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)


class GroupedLSTMCell(nn.Module):
    """One LSTM per module, with its own weights.

    ``[i, f, o, g] = x W_ih + h W_hh + b``;  ``c' = σ(f) c + σ(i) tanh(g)``;
    ``h' = σ(o) tanh(c')``. Gate order is (i, f, o, g) so that the three sigmoid gates are
    one contiguous slice. A single bias per gate: PyTorch's pair ``b_ih + b_hh`` is one
    free parameter written twice.
    """

    gates_per_unit = 4

    def __init__(self, num_modules: int, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        gates = 4 * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(num_modules, input_size, gates))
        self.weight_hh = nn.Parameter(torch.empty(num_modules, hidden_size, gates))
        self.bias = nn.Parameter(torch.empty(num_modules, gates))
        for parameter in self.parameters():
            _uniform_(parameter, hidden_size)

    def hidden_bias(self) -> Tensor:
        """Bias added to ``h W_hh`` (the caller may fuse it into that matmul): ``(n, G)``."""
        return self.bias

    def finish(self, x: Tensor, hidden_gates: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """New ``(h, c)`` from the input ``x (n, B, I)`` and ``hidden_gates = h W_hh + b``."""
        h_new, c_new, _ = lstm_finish(x, hidden_gates, c, self.weight_ih)
        return h_new, c_new

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:  # (n, B, I), (n, B, m) x2
        hidden_gates = torch.baddbmm(self.hidden_bias().unsqueeze(1), h, self.weight_hh)
        return self.finish(x, hidden_gates, h, c)


class GroupedGRUCell(nn.Module):
    """One GRU per module, with its own weights (PyTorch's GRU equations).

    ``r = σ(x W_ir + b_r + h W_hr)``, ``z = σ(x W_iz + b_z + h W_hz)``,
    ``n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn))``, ``h' = (1 - z) n + z h``.
    Only the biases that are not redundant exist: ``b_r, b_z, b_in`` on the input side and
    ``b_hn`` inside the reset gate. The cell has no ``c``; it returns ``h'`` in its place.
    """

    gates_per_unit = 3

    def __init__(self, num_modules: int, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        gates = 3 * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(num_modules, input_size, gates))
        self.weight_hh = nn.Parameter(torch.empty(num_modules, hidden_size, gates))
        self.bias_ih = nn.Parameter(torch.empty(num_modules, gates))
        self.bias_hn = nn.Parameter(torch.empty(num_modules, hidden_size))
        for parameter in self.parameters():
            _uniform_(parameter, hidden_size)

    def hidden_bias(self) -> Tensor:
        """Bias added to ``h W_hh``: zero for r and z, ``b_hn`` for the new gate. ``(n, G)``."""
        zeros = self.bias_hn.new_zeros(self.bias_hn.shape[0], 2 * self.hidden_size)
        return torch.cat([zeros, self.bias_hn], dim=-1)

    def finish(self, x: Tensor, hidden_gates: Tensor, h: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """New ``(h, h)`` from ``x (n, B, I)`` and ``hidden_gates = h W_hh + [0, 0, b_hn]``."""
        h_new, _ = gru_finish(x, hidden_gates, h, self.weight_ih, self.bias_ih)
        return h_new, h_new

    def forward(self, x: Tensor, h: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        hidden_gates = torch.baddbmm(self.hidden_bias().unsqueeze(1), h, self.weight_hh)
        return self.finish(x, hidden_gates, h)


def lstm_finish(
    x: Tensor, hidden_gates: Tensor, c: Tensor, weight_ih: Tensor
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
    """LSTM update from ``x (n, B, I)``, ``hidden_gates = h W_hh + b (n, B, G)`` and ``c (n, B, m)``.

    Also returns what :func:`lstm_backward` needs: ``(σ([i, f, o]), tanh(g), tanh(c'))``.
    """
    m = c.shape[-1]
    gates = torch.bmm(x, weight_ih) + hidden_gates  # (n, B, 4m); the add fuses into the gates when compiled
    sig = gates[..., : 3 * m].sigmoid()  # (n, B, 3m)
    input_gate, forget_gate, output_gate = sig.split(m, dim=-1)
    tanh_g = gates[..., 3 * m :].tanh()
    c_new = forget_gate * c + input_gate * tanh_g
    tanh_c = c_new.tanh()
    return output_gate * tanh_c, c_new, (sig, tanh_g, tanh_c)


def lstm_backward(
    saved: tuple[Tensor, Tensor, Tensor], c: Tensor, dh_new: Tensor, dc_new: Tensor
) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`lstm_finish`: ``d gates (n, B, 4m)`` (of both ``x W_ih`` and
    ``hidden_gates``) and ``d c (n, B, m)``, from ``d h'`` and ``d c'``."""
    sig, tanh_g, tanh_c = saved
    input_gate, forget_gate, output_gate = sig.split(c.shape[-1], dim=-1)
    dc_total = dc_new + dh_new * output_gate * (1 - tanh_c * tanh_c)
    d_sig = torch.cat([dc_total * tanh_g, dc_total * c, dh_new * tanh_c], dim=-1) * sig * (1 - sig)  # (n, B, 3m)
    d_g = dc_total * input_gate * (1 - tanh_g * tanh_g)
    return torch.cat([d_sig, d_g], dim=-1), dc_total * forget_gate  # (n, B, 4m), (n, B, m)


def gru_finish(
    x: Tensor, hidden_gates: Tensor, h: Tensor, weight_ih: Tensor, bias_ih: Tensor
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """GRU update from ``x (n, B, I)``, ``hidden_gates = h W_hh + [0, 0, b_hn] (n, B, G)`` and ``h``.

    Also returns what :func:`gru_backward` needs: ``(σ([r, z]), candidate, h W_hn + b_hn)``.
    """
    m = h.shape[-1]
    input_gates = torch.bmm(x, weight_ih) + bias_ih.unsqueeze(1)  # (n, B, 3m)
    reset_update = (input_gates[..., : 2 * m] + hidden_gates[..., : 2 * m]).sigmoid()  # (n, B, 2m)
    reset, update = reset_update.split(m, dim=-1)
    hidden_new = hidden_gates[..., 2 * m :]
    candidate = (input_gates[..., 2 * m :] + reset * hidden_new).tanh()
    h_new = candidate + update * (h - candidate)
    return h_new, (reset_update, candidate, hidden_new)


def gru_backward(
    saved: tuple[Tensor, Tensor, Tensor], h: Tensor, dh_new: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`gru_finish`: ``d input_gates``, ``d hidden_gates`` (both ``(n, B, 3m)``)
    and the direct part of ``d h`` (through ``z ⊙ h``)."""
    reset_update, candidate, hidden_new = saved
    reset, update = reset_update.split(h.shape[-1], dim=-1)
    d_new = dh_new * (1 - update) * (1 - candidate * candidate)  # d of the candidate's pre-activation
    d_sigmoid = torch.cat([d_new * hidden_new, dh_new * (h - candidate)], dim=-1)  # (n, B, 2m), d of σ([r, z])
    d_reset_update = d_sigmoid * reset_update * (1 - reset_update)
    return (
        torch.cat([d_reset_update, d_new], dim=-1),  # (n, B, 3m)
        torch.cat([d_reset_update, d_new * reset], dim=-1),  # (n, B, 3m)
        dh_new * update,
    )


def make_cell(cell: str, num_modules: int, input_size: int, hidden_size: int) -> GroupedLSTMCell | GroupedGRUCell:
    if cell == "lstm":
        return GroupedLSTMCell(num_modules, input_size, hidden_size)
    if cell == "gru":
        return GroupedGRUCell(num_modules, input_size, hidden_size)
    raise ValueError(f"cell must be 'lstm' or 'gru', got {cell!r}")
