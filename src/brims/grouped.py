"""Per-module (grouped) linear maps and recurrent cells.

Every weight has a leading modules axis, ``(n, in, out)``, and inputs are laid out
module-first, ``(n, B, in)``, so one batched matmul applies each module's own weights:
``y[k] = x[k] @ W[k]``. This is the block-diagonal product without ever materialising
the zero blocks (docs/design.md, section 1, step 4).

Dimension legend: n = modules, B = batch, m = units per module, I = input features
per module, G = gates per module (4m for LSTM, 3m for GRU).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _uniform_(tensor: Tensor, fan_in: int) -> None:
    """PyTorch's default for linear and recurrent layers, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

    Note (departure from the released code): it initialises the attention maps as
    ``0.01 * N(0, 1)``; we keep PyTorch's bounds for every map.
    """
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

    def __init__(self, num_modules: int, input_size: int, hidden_size: int) -> None:
        super().__init__()
        gates = 4 * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(num_modules, input_size, gates))
        self.weight_hh = nn.Parameter(torch.empty(num_modules, hidden_size, gates))
        self.bias = nn.Parameter(torch.empty(num_modules, gates))
        for parameter in self.parameters():
            _uniform_(parameter, hidden_size)

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """``x (n, B, I)``, ``h, c (n, B, m)`` → new ``(h, c)``."""
        m = h.shape[-1]
        gates = torch.baddbmm(self.bias.unsqueeze(1), x, self.weight_ih) + torch.bmm(h, self.weight_hh)  # (n, B, 4m)
        input_gate, forget_gate, output_gate = gates[..., : 3 * m].sigmoid().split(m, dim=-1)
        c_new = forget_gate * c + input_gate * gates[..., 3 * m :].tanh()
        return output_gate * c_new.tanh(), c_new


class GroupedGRUCell(nn.Module):
    """One GRU per module, with its own weights (PyTorch's GRU equations).

    ``r = σ(x W_ir + b_r + h W_hr)``, ``z = σ(x W_iz + b_z + h W_hz)``,
    ``n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn))``, ``h' = (1 - z) n + z h``.
    Only the biases that are not redundant exist: ``b_r, b_z, b_in`` on the input side and
    ``b_hn`` inside the reset gate. The cell has no ``c``; it returns ``h'`` in its place.
    """

    def __init__(self, num_modules: int, input_size: int, hidden_size: int) -> None:
        super().__init__()
        gates = 3 * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(num_modules, input_size, gates))
        self.weight_hh = nn.Parameter(torch.empty(num_modules, hidden_size, gates))
        self.bias_ih = nn.Parameter(torch.empty(num_modules, gates))
        self.bias_hn = nn.Parameter(torch.empty(num_modules, hidden_size))
        for parameter in self.parameters():
            _uniform_(parameter, hidden_size)

    def forward(self, x: Tensor, h: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x (n, B, I)``, ``h (n, B, m)`` → ``(h', h')`` (``c`` is ignored)."""
        m = h.shape[-1]
        input_gates = torch.baddbmm(self.bias_ih.unsqueeze(1), x, self.weight_ih)  # (n, B, 3m)
        hidden_gates = torch.bmm(h, self.weight_hh)  # (n, B, 3m)
        reset, update = (input_gates[..., : 2 * m] + hidden_gates[..., : 2 * m]).sigmoid().split(m, dim=-1)
        candidate = (input_gates[..., 2 * m :] + reset * (hidden_gates[..., 2 * m :] + self.bias_hn.unsqueeze(1))).tanh()
        h_new = (1 - update) * candidate + update * h
        return h_new, h_new


def make_cell(cell: str, num_modules: int, input_size: int, hidden_size: int) -> GroupedLSTMCell | GroupedGRUCell:
    """The grouped cell named by ``BRIMsConfig.cell`` (validated there)."""
    return (GroupedLSTMCell if cell == "lstm" else GroupedGRUCell)(num_modules, input_size, hidden_size)
