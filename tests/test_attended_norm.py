"""``attended_norm``: each module's cell reads its attended input normalised over features
(zero mean, unit variance), and nothing else changes: the same parameters, the same attention
and module choices, and the projected steps of the compiled loop still equal the core's."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from support import build, random_input, random_state
from test_projected import TOL, run

from brims import BRIMs
from brims.cell import BRIMsDiagnostics
from brims.grouped import GroupedGRUCell, GroupedLSTMCell

STEPS, BATCH = 4, 3


def cell_inputs(model: BRIMs, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], BRIMsDiagnostics]:
    """The attended inputs ``(n, B, A)`` each layer forms at each step, what its cell reads, and
    the diagnostics."""
    attended: list[torch.Tensor] = []
    read: list[torch.Tensor] = []
    hooks = [layer.input_attention.register_forward_hook(lambda module, args, out: attended.append(out[0]))
             for layer in model.cell.layers]
    hooks += [module.register_forward_hook(lambda module, args, out: read.append(args[0]))
              for module in model.modules() if isinstance(module, (GroupedLSTMCell, GroupedGRUCell))]
    try:
        _, _, diagnostics = model(x, random_state(model, x.shape[1]), return_diagnostics=True)
    finally:
        for hook in hooks:
            hook.remove()
    return attended, read, diagnostics


def test_the_cells_read_a_normalised_attended_input(config):
    model = build(dataclasses.replace(config, attended_norm=True))
    attended, read, _ = cell_inputs(model, random_input(config, STEPS, BATCH))
    assert len(read) == len(attended) == STEPS * config.num_layers
    for raw, cell_input in zip(attended, read):
        torch.testing.assert_close(cell_input.mean(-1), torch.zeros(raw.shape[:-1], dtype=raw.dtype), atol=1e-12, rtol=0)
        # Over each module's own features, with LayerNorm's eps (1e-5) and no gain or bias.
        centred = raw - raw.mean(-1, keepdim=True)
        expected = centred / (centred.square().mean(-1, keepdim=True) + 1e-5).sqrt()
        torch.testing.assert_close(cell_input, expected, atol=1e-12, rtol=1e-10)


def test_off_the_cells_read_the_attended_input_as_it_is(config):
    attended, read, _ = cell_inputs(build(config), random_input(config, STEPS, BATCH))
    assert len(read) == len(attended) == STEPS * config.num_layers
    for raw, cell_input in zip(attended, read):
        assert torch.equal(cell_input, raw)


def test_the_option_changes_only_what_the_cells_read(config):
    """Same weights (one state_dict serves both), same attention at the first step; the states differ."""
    plain, normed = build(config), build(dataclasses.replace(config, attended_norm=True))
    assert plain.state_dict().keys() == normed.state_dict().keys()
    normed.load_state_dict(plain.state_dict())
    x = random_input(config, STEPS, BATCH)
    *_, plain_diagnostics = cell_inputs(plain, x)
    *_, normed_diagnostics = cell_inputs(normed, x)
    # The bottom layer's first step attends from the same initial state over the same input.
    torch.testing.assert_close(normed_diagnostics.attention[0][0], plain_diagnostics.attention[0][0], rtol=0, atol=0)
    assert not torch.allclose(normed(x)[0], plain(x)[0])


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_projected_steps_equal_the_core_with_attended_norm(config, train):
    model = build(dataclasses.replace(config, attended_norm=True), train=train)
    x, state = random_input(config, STEPS, BATCH), random_state(model, BATCH)
    output, final, _, grads = run(model, x, state, projected=True)
    ref_output, ref_final, _, ref_grads = run(model, x, state, projected=False)
    torch.testing.assert_close(output, ref_output, **TOL)
    for a, b in zip(final.h + final.c + grads, ref_final.h + ref_final.c + ref_grads):
        torch.testing.assert_close(a, b, **TOL)

