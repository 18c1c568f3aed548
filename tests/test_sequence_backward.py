"""The sequence-level backward (brims.sequence) against autograd through every step, in float64.

``cell.sequence_backward = False`` is the reference: autograd records each step of the same
forward. Outputs, final state, diagnostics, and the gradients of the input, the initial state
and every parameter must agree for every feature flag, with dropout on and off, with and
without diagnostics.
"""

from __future__ import annotations

import pytest
import torch
from support import ALL_COMBOS, build, make_config, random_input, random_state

from brims import BRIMs, BRIMsConfig, BRIMsState
from brims.network import BRIMsCell

STEPS, BATCH = 4, 3
TOL = dict(rtol=1e-9, atol=1e-11)


def run(model: BRIMs, x: torch.Tensor, state: BRIMsState, diagnostics: bool, fast: bool, create_graph=False):
    """Forward (dropout masks seeded alike) and the gradients of a loss on everything returned."""
    model.cell.sequence_backward = fast
    torch.manual_seed(7)
    results = model(x, state, return_diagnostics=diagnostics)
    output, final = results[0], results[1]
    generator = torch.Generator().manual_seed(3)

    def weighted(t: torch.Tensor) -> torch.Tensor:
        return (t * torch.randn(t.shape, generator=generator, dtype=t.dtype)).sum()

    loss = weighted(output) + sum(weighted(t) for t in final.h + final.c)
    if diagnostics:
        loss = loss + sum(weighted(a) for a in results[2].attention)
    inputs = [x, *state.h, *state.c, *model.parameters()]
    grads = torch.autograd.grad(loss, inputs, create_graph=create_graph, allow_unused=True)
    return results, grads, output


def leaf_input(config: BRIMsConfig, model: BRIMs):
    x = random_input(config, STEPS, BATCH).requires_grad_()
    state = random_state(model, BATCH)
    h = tuple(t.clone().requires_grad_() for t in state.h)
    c = h if config.cell == "gru" else tuple(t.clone().requires_grad_() for t in state.c)
    return x, BRIMsState(h, c)


@pytest.mark.parametrize("steps_per_call", [1, 3], ids=["1step", "3steps"])  # 3: chunks of 3 and 1
@pytest.mark.parametrize("diagnostics", [False, True], ids=["nodiag", "diag"])
@pytest.mark.parametrize("dropout", [0.0, 0.3], ids=["nodrop", "drop"])
@pytest.mark.parametrize("combo", ALL_COMBOS)
def test_sequence_backward_equals_autograd(combo, dropout, diagnostics, steps_per_call):
    config = make_config(*combo, attention_dropout=dropout)
    model = build(config, train=True)
    model.steps_per_call = steps_per_call
    x, state = leaf_input(config, model)
    fast, fast_grads, fast_output = run(model, x, state, diagnostics, fast=True)
    assert type(fast_output.grad_fn).__name__ == "SequenceFunctionBackward"
    slow, slow_grads, slow_output = run(model, x, state, diagnostics, fast=False)
    assert type(slow_output.grad_fn).__name__ != "SequenceFunctionBackward"
    torch.testing.assert_close(fast[0], slow[0], rtol=0, atol=0)
    for a, b in zip(fast[1].h + fast[1].c, slow[1].h + slow[1].c):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    if diagnostics:
        for a, b in zip(fast[2].active + fast[2].attention, slow[2].active + slow[2].attention):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    names = ["x"] + [f"h{i}" for i in range(len(state.h))] + [f"c{i}" for i in range(len(state.c))]
    names += [name for name, _ in model.named_parameters()]
    assert len(names) == len(fast_grads)
    for name, a, b in zip(names, fast_grads, slow_grads):
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.abs().sum() > 0 or b.abs().sum() == 0, name
            torch.testing.assert_close(a, b, **TOL, msg=lambda m, name=name: f"{name}: {m}")


def test_backward_step_runs_once_per_step(monkeypatch):
    """The fast path is what runs: its backward step is called T times, autograd's path never."""
    calls = []
    original = BRIMsCell.backward_step

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BRIMsCell, "backward_step", counting)
    config = make_config("lstm", 2)
    model = build(config, train=True)
    x = random_input(config, STEPS, BATCH)
    model(x)[0].sum().backward()
    assert len(calls) == STEPS
    model.cell.sequence_backward = False
    model(x)[0].sum().backward()
    assert len(calls) == STEPS


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_sequence_backward_is_the_default_only_where_a_gradient_is_wanted(cell):
    config = make_config(cell, 2)
    model = build(config)
    x = random_input(config, STEPS, BATCH)
    assert BRIMsCell.sequence_backward is True
    assert type(model(x)[0].grad_fn).__name__ == "SequenceFunctionBackward"
    with torch.no_grad():
        assert model(x)[0].grad_fn is None
    model.requires_grad_(False)
    assert model(x)[0].grad_fn is None  # nothing wants a gradient: plain steps, nothing saved
    assert type(model(x.requires_grad_())[0].grad_fn).__name__ == "SequenceFunctionBackward"


def test_only_the_state_requires_grad():
    """Gradients reach a state that requires grad even when the parameters and input do not."""
    config = make_config("lstm", 3)
    model = build(config).requires_grad_(False)
    x = random_input(config, STEPS, BATCH)
    state = random_state(model, BATCH)
    state = BRIMsState(tuple(t.requires_grad_() for t in state.h), state.c)
    output, _ = model(x, state)
    assert type(output.grad_fn).__name__ == "SequenceFunctionBackward"
    fast = torch.autograd.grad(output.sum(), state.h)
    model.cell.sequence_backward = False
    slow = torch.autograd.grad(model(x, state)[0].sum(), state.h)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_double_backward_recomputes_with_autograd(cell):
    """create_graph=True: the backward re-runs the forward under autograd, so second-order
    gradients (here of a gradient penalty) equal the plain path's."""
    config = make_config(cell, 2, attention_dropout=0.2)
    model = build(config, train=True)
    x, state = leaf_input(config, model)
    results = []
    for fast in (True, False):
        _, grads, _ = run(model, x, state, False, fast=fast, create_graph=True)
        penalty = grads[0].square().sum()  # gradient of the input gradient's norm
        results.append(torch.autograd.grad(penalty, list(model.parameters()), allow_unused=True))
    for a, b in zip(*results):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **TOL)


def test_torch_func_falls_back_to_autograd():
    """torch.func transforms cannot run a hand-written backward: the plain path serves them."""
    config = make_config("lstm", 2)
    model = build(config)
    x = random_input(config, STEPS, BATCH)
    params = dict(model.named_parameters())

    def loss(p):
        return torch.func.functional_call(model, p, (x,))[0].square().sum()

    grads = torch.func.grad(loss)(params)
    model.cell.sequence_backward = False
    expected = torch.autograd.grad(loss(params), list(params.values()))
    for a, b in zip(grads.values(), expected):
        torch.testing.assert_close(a, b, **TOL)


def test_forward_mode_ad_falls_back_to_autograd():
    config = make_config("gru", 2)
    model = build(config)
    x = random_input(config, STEPS, BATCH)
    tangent = torch.randn_like(x)
    _, jvp = torch.func.jvp(lambda inp: model(inp)[0], (x,), (tangent,))
    with torch.autograd.forward_ad.dual_level():
        output, _ = model(torch.autograd.forward_ad.make_dual(x, tangent))
        dual = torch.autograd.forward_ad.unpack_dual(output).tangent
    torch.testing.assert_close(jvp, dual, **TOL)
    model.cell.sequence_backward = False
    _, expected = torch.func.jvp(lambda inp: model(inp)[0], (x,), (tangent,))
    torch.testing.assert_close(jvp, expected, **TOL)


def test_unsupported_dtype_falls_back_to_autograd():
    config = make_config("lstm", 2)
    model = build(config, dtype=torch.bfloat16)
    output, _ = model(random_input(config, STEPS, BATCH, dtype=torch.bfloat16))
    assert output.grad_fn is not None
    assert type(output.grad_fn).__name__ != "SequenceFunctionBackward"
    output.float().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_changing_a_parameter_before_backward_raises():
    """Inputs of the node are saved with autograd's version check: no silently stale gradients."""
    config = make_config("lstm", 1)
    model = build(config)
    output, _ = model(random_input(config, STEPS, BATCH))
    with torch.no_grad():
        model.cell.layers[0].cell.weight_ih.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        output.sum().backward()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_float32_equals_autograd(cell):
    config = make_config(cell, 2)
    model = build(config, dtype=torch.float32, train=True)
    x, state = leaf_input(config, model)
    x = x.detach().float().requires_grad_()
    state = BRIMsState(*(tuple(t.detach().float().requires_grad_() for t in part) for part in state))
    _, fast, _ = run(model, x, state, True, fast=True)
    _, slow, _ = run(model, x, state, True, fast=False)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_mixed_precision_input_under_autocast(cell):
    """Under autocast the layer before the core hands it a bfloat16 input (what Lightning's
    ``bf16-mixed`` does). The core takes it, keeps its state in the parameters' float32, keeps
    exactly k modules active, and trains through autograd (the hand-written backward assumes one dtype)."""
    config = make_config(cell, 2)
    model = build(config, dtype=torch.float32)
    encoder = torch.nn.Linear(5, config.input_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = encoder(torch.randn(STEPS, BATCH, 5))
        assert x.dtype == torch.bfloat16
        output, final, diagnostics = model(x, return_diagnostics=True)
    assert type(output.grad_fn).__name__ != "SequenceFunctionBackward"
    assert all(t.dtype == torch.float32 for t in final.h + final.c)
    for active, k in zip(diagnostics.active, config.top_k):
        assert (active.sum(-1) == k).all()
    output.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in [*model.parameters(), *encoder.parameters()])


def test_low_precision_input_outside_autocast_is_refused():
    config = make_config("lstm", 1)
    model = build(config, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"input has dtype torch.bfloat16, but the model's parameters are torch.float32"):
        model(random_input(config, STEPS, BATCH, dtype=torch.bfloat16))
