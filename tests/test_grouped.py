"""Grouped (per-module) cells against dense block-diagonal references (docs/design.md, section 1 step 4 and section 5).

The references are PyTorch's own ``nn.Linear`` / ``nn.LSTMCell`` / ``nn.GRUCell`` with dense
weights that are block-diagonal copies of the grouped weights: the standard equations, computed
densely, with no shared code path with ``brims.grouped``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brims.grouped import GroupedGRUCell, GroupedLinear, GroupedLSTMCell

TOL = {"rtol": 0, "atol": 1e-10}
SIZES = [(1, 4, 3), (3, 4, 3), (4, 2, 5)]  # (modules n, input per module I, units per module m)
BATCH = 5


def block_diag_of(weight: torch.Tensor, columns: slice = slice(None)) -> torch.Tensor:
    """``(n, in, out)`` grouped weight -> dense ``(n*in, n*out')`` block-diagonal of ``weight[k][:, columns]``."""
    return torch.block_diag(*[w[:, columns] for w in weight])


def dense(t: torch.Tensor) -> torch.Tensor:  # (n, B, x) -> (B, n*x), module-major
    return t.transpose(0, 1).reshape(t.shape[1], -1)


def grouped(t: torch.Tensor, n: int) -> torch.Tensor:  # (B, n*x) -> (n, B, x)
    return t.reshape(t.shape[0], n, -1).transpose(0, 1)


def bias_of(bias: torch.Tensor, columns: slice) -> torch.Tensor:  # (n, out) -> (n*out',)
    return bias[:, columns].reshape(-1)


def inputs(n, i, m, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, BATCH, i, generator=generator, dtype=torch.float64)
    h = torch.randn(n, BATCH, m, generator=generator, dtype=torch.float64)
    c = torch.randn(n, BATCH, m, generator=generator, dtype=torch.float64)
    return x, h, c


def seeded(cls, *args, **kwargs):
    torch.manual_seed(0)
    return cls(*args, **kwargs).double()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n, i, m", SIZES)
def test_grouped_linear_equals_block_diagonal(n, i, m, bias):
    layer = seeded(GroupedLinear, n, i, m, bias=bias)
    assert layer.weight.shape == (n, i, m)
    assert (layer.bias is None) == (not bias)
    x, _, _ = inputs(n, i, m)
    reference = nn.Linear(n * i, n * m, bias=bias).double()
    with torch.no_grad():
        reference.weight.copy_(block_diag_of(layer.weight).T)
        if bias:
            reference.bias.copy_(layer.bias.reshape(-1))
    y = layer(x)
    assert y.shape == (n, BATCH, m)
    torch.testing.assert_close(dense(y), reference(dense(x)), **TOL)


def lstm_reference(cell: GroupedLSTMCell) -> nn.LSTMCell:
    """Dense ``nn.LSTMCell`` (gates i, f, g, o) from the grouped cell (gates i, f, o, g)."""
    n, i, gates = cell.weight_ih.shape
    m = gates // 4
    order = [slice(0, m), slice(m, 2 * m), slice(3 * m, 4 * m), slice(2 * m, 3 * m)]  # i, f, g, o
    reference = nn.LSTMCell(n * i, n * m).double()
    with torch.no_grad():
        reference.weight_ih.copy_(torch.cat([block_diag_of(cell.weight_ih, s).T for s in order]))
        reference.weight_hh.copy_(torch.cat([block_diag_of(cell.weight_hh, s).T for s in order]))
        reference.bias_ih.copy_(torch.cat([bias_of(cell.bias, s) for s in order]))
        reference.bias_hh.zero_()
    return reference


def gru_reference(cell: GroupedGRUCell) -> nn.GRUCell:
    """Dense ``nn.GRUCell`` (gates r, z, n) from the grouped cell; ``b_hh = [0, 0, b_hn]``."""
    n, i, gates = cell.weight_ih.shape
    m = gates // 3
    order = [slice(0, m), slice(m, 2 * m), slice(2 * m, 3 * m)]
    reference = nn.GRUCell(n * i, n * m).double()
    with torch.no_grad():
        reference.weight_ih.copy_(torch.cat([block_diag_of(cell.weight_ih, s).T for s in order]))
        reference.weight_hh.copy_(torch.cat([block_diag_of(cell.weight_hh, s).T for s in order]))
        reference.bias_ih.copy_(torch.cat([bias_of(cell.bias_ih, s) for s in order]))
        reference.bias_hh.copy_(torch.cat([torch.zeros(2 * n * m, dtype=torch.float64), cell.bias_hn.reshape(-1)]))
    return reference


@pytest.mark.parametrize("n, i, m", SIZES)
def test_grouped_lstm_parameter_shapes(n, i, m):
    cell = GroupedLSTMCell(n, i, m)
    shapes = {name: tuple(p.shape) for name, p in cell.named_parameters()}
    assert shapes == {"weight_ih": (n, i, 4 * m), "weight_hh": (n, m, 4 * m), "bias": (n, 4 * m)}


@pytest.mark.parametrize("n, i, m", SIZES)
def test_grouped_gru_parameter_shapes(n, i, m):
    cell = GroupedGRUCell(n, i, m)
    shapes = {name: tuple(p.shape) for name, p in cell.named_parameters()}
    assert shapes == {"weight_ih": (n, i, 3 * m), "weight_hh": (n, m, 3 * m), "bias_ih": (n, 3 * m), "bias_hn": (n, m)}


@pytest.mark.parametrize("n, i, m", SIZES)
def test_grouped_lstm_equals_dense_block_diagonal(n, i, m):
    cell = seeded(GroupedLSTMCell, n, i, m)
    reference = lstm_reference(cell)
    x, h, c = inputs(n, i, m)
    h_new, c_new = cell(x, h, c)
    assert h_new.shape == c_new.shape == (n, BATCH, m)
    h_ref, c_ref = reference(dense(x), (dense(h), dense(c)))
    torch.testing.assert_close(dense(h_new), h_ref, **TOL)
    torch.testing.assert_close(dense(c_new), c_ref, **TOL)


@pytest.mark.parametrize("n, i, m", SIZES)
def test_grouped_gru_equals_dense_block_diagonal(n, i, m):
    cell = seeded(GroupedGRUCell, n, i, m)
    reference = gru_reference(cell)
    x, h, _ = inputs(n, i, m)
    h_new, c_new = cell(x, h)
    assert h_new.shape == (n, BATCH, m)
    assert torch.equal(c_new, h_new)  # a GRU has no c: the cell returns h' in its place
    torch.testing.assert_close(dense(h_new), reference(dense(x), dense(h)), **TOL)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_grouped_cell_gradients_equal_dense_diagonal_blocks(kind):
    """Backward agrees too: each module's weight gradient is the dense gradient's diagonal block."""
    n, i, m = 3, 4, 2
    cell = seeded(GroupedLSTMCell if kind == "lstm" else GroupedGRUCell, n, i, m)
    reference = lstm_reference(cell) if kind == "lstm" else gru_reference(cell)
    x, h, c = inputs(n, i, m)
    generator = torch.Generator().manual_seed(3)
    probe_h = torch.randn(BATCH, n * m, generator=generator, dtype=torch.float64)
    probe_c = torch.randn(BATCH, n * m, generator=generator, dtype=torch.float64)
    if kind == "lstm":
        h_new, c_new = cell(x, h, c)
        h_ref, c_ref = reference(dense(x), (dense(h), dense(c)))
        ((dense(h_new) * probe_h).sum() + (dense(c_new) * probe_c).sum()).backward()
        ((h_ref * probe_h).sum() + (c_ref * probe_c).sum()).backward()
        gates = [slice(0, m), slice(m, 2 * m), slice(3 * m, 4 * m), slice(2 * m, 3 * m)]
    else:
        h_new, _ = cell(x, h)
        (dense(h_new) * probe_h).sum().backward()
        (reference(dense(x), dense(h)) * probe_h).sum().backward()
        gates = [slice(0, m), slice(m, 2 * m), slice(2 * m, 3 * m)]
    for name in ("weight_ih", "weight_hh"):
        grouped_grad = getattr(cell, name).grad  # (n, in, G)
        dense_grad = getattr(reference, name).grad.T  # (n*in, 4 or 3 * n*m), reference gate order
        width = dense_grad.shape[0] // n
        for gate_index, gate in enumerate(gates):
            dense_gate = dense_grad[:, gate_index * n * m : (gate_index + 1) * n * m]
            for k in range(n):
                block = dense_gate[k * width : (k + 1) * width, k * m : (k + 1) * m]
                torch.testing.assert_close(grouped_grad[k][:, gate], block, **TOL)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_grouped_cell_modules_are_independent(kind):
    """Changing module j's input or state never changes module k != j (no cross-module weights)."""
    n, i, m = 3, 4, 2
    cell = seeded(GroupedLSTMCell if kind == "lstm" else GroupedGRUCell, n, i, m)
    x, h, c = inputs(n, i, m)
    base_h, base_c = cell(x, h, c)
    x2, h2, c2 = x.clone(), h.clone(), c.clone()
    x2[1] += 1.0
    h2[1] -= 0.5
    c2[1] += 0.25
    new_h, new_c = cell(x2, h2, c2)
    for k in (0, 2):
        assert torch.equal(new_h[k], base_h[k]) and torch.equal(new_c[k], base_c[k])
    assert not torch.equal(new_h[1], base_h[1])
