"""The compiled loop's steps (brims/backends/projected.py: the input's slot projected for the whole
sequence in one matmul) equal the core's: outputs, states, module choices,
attention and gradients, for every cell and switch, in train mode (dropout on, the same masks under
one seed). Run here without torch.compile: what is compiled is this function."""

from __future__ import annotations

import pytest
import torch
from support import build, random_input, random_state

from brims import BRIMsState
from brims.backends.compiled import run_chunk
from brims.backends.projected import project_input
from brims.cell import run_steps

TOL = {"rtol": 1e-12, "atol": 1e-12}  # float64: one matmul over T*B rows may round unlike T of B rows
STEPS, BATCH = 5, 3


def run(model, x, state, projected: bool):
    """Outputs, final state, diagnostics and the gradients of a loss of all of them with respect to
    the input, the initial state and every parameter."""
    x = x.clone().requires_grad_()
    state = BRIMsState(*(tuple(t.clone().requires_grad_() for t in part) for part in state))
    torch.manual_seed(5)  # the same dropout masks
    if projected:
        gru = model.config.cell == "gru"
        output, h, c, diagnostics = run_chunk(
            model.cell, project_input(model.cell, x).unbind(0), state.h, None if gru else state.c, True
        )
        final = BRIMsState(h, h if gru else c)
    else:
        output, final, diagnostics = run_steps(model.cell.step, x.unbind(0), state, True)
    loss = output.square().sum() + sum(t.sin().sum() for t in final.h + final.c + diagnostics.attention)
    leaves = [x, *state.h, *(() if model.config.cell == "gru" else state.c), *model.parameters()]
    return output, final, diagnostics, torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_projected_steps_equal_the_core(config, train):
    model = build(config, train=train)
    x, state = random_input(config, STEPS, BATCH), random_state(model, BATCH)
    output, final, diagnostics, grads = run(model, x, state, projected=True)
    ref_output, ref_final, ref_diagnostics, ref_grads = run(model, x, state, projected=False)
    torch.testing.assert_close(output, ref_output, **TOL)
    for a, b in zip(final.h + final.c, ref_final.h + ref_final.c):
        torch.testing.assert_close(a, b, **TOL)
    for layer in range(config.num_layers):
        assert torch.equal(diagnostics.active[layer], ref_diagnostics.active[layer])
        torch.testing.assert_close(diagnostics.attention[layer], ref_diagnostics.attention[layer], **TOL)
    names = ["x", *(f"state[{i}]" for i in range(len(grads) - len(list(model.parameters())) - 1))]
    names += [name for name, _ in model.named_parameters()]
    assert len(names) == len(grads)
    for name, a, b in zip(names, grads, ref_grads):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, name=name: f"{name}: {m}")

