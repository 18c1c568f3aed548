"""Equivalent ways to run the same model agree (docs/design.md, section 5: same seed, same numbers)."""

from __future__ import annotations

import json

import pytest
import torch
from support import CELLS, build, make_config, random_input, random_state

from brims import BRIMs, BRIMsCell, BRIMsConfig, BRIMsState, RIMs

TOL = {"rtol": 0, "atol": 1e-10}
STEPS, BATCH = 6, 4


def assert_states_close(a: BRIMsState, b: BRIMsState) -> None:
    assert len(a.h) == len(b.h) and len(a.c) == len(b.c)
    for x, y in zip(a.h + a.c, b.h + b.c):
        torch.testing.assert_close(x, y, **TOL)


# ---- chunked, batch_first, cell ------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_chunked_equals_whole_sequence(config, chunk):
    model = build(config)
    x = random_input(config, STEPS, BATCH)
    state = random_state(model, BATCH)
    whole, whole_state, whole_diag = model(x, state, return_diagnostics=True)
    outputs, actives = [], []
    for start in range(0, STEPS, chunk):
        output, state, diagnostics = model(x[start : start + chunk], state, return_diagnostics=True)
        outputs.append(output)
        actives.append(diagnostics.active)
    torch.testing.assert_close(torch.cat(outputs), whole, **TOL)
    assert_states_close(state, whole_state)
    for layer in range(config.num_layers):
        assert torch.equal(torch.cat([a[layer] for a in actives]), whole_diag.active[layer])


def test_batch_first_equals_time_first(config):
    model = build(config)
    batch_first = BRIMs.from_config(BRIMsConfig(**{**config.to_dict(), "batch_first": True})).double().eval()
    batch_first.load_state_dict(model.state_dict())
    x = random_input(config, STEPS, BATCH)
    state = random_state(model, BATCH)
    output, final, diagnostics = model(x, state, return_diagnostics=True)
    output_bf, final_bf, diagnostics_bf = batch_first(x.transpose(0, 1).contiguous(), state, return_diagnostics=True)
    assert output_bf.shape == (BATCH, STEPS, config.hidden_sizes[-1])
    torch.testing.assert_close(output_bf.transpose(0, 1), output, **TOL)
    assert_states_close(final_bf, final)
    for layer in range(config.num_layers):
        assert torch.equal(diagnostics_bf.active[layer].transpose(0, 1), diagnostics.active[layer])
        torch.testing.assert_close(diagnostics_bf.attention[layer].transpose(0, 1), diagnostics.attention[layer], **TOL)


def test_cell_step_by_step_equals_sequence(config):
    model = build(config)
    x = random_input(config, STEPS, BATCH)
    state = random_state(model, BATCH)
    output, final, diagnostics = model(x, state, return_diagnostics=True)
    for t in range(STEPS):
        step_output, state, step_diagnostics = model.cell(x[t], state, return_diagnostics=True)
        assert step_output.shape == (BATCH, config.hidden_sizes[-1])
        torch.testing.assert_close(step_output, output[t], **TOL)
        for layer in range(config.num_layers):
            assert torch.equal(step_diagnostics.active[layer], diagnostics.active[layer][t])
            torch.testing.assert_close(step_diagnostics.attention[layer], diagnostics.attention[layer][t], **TOL)
    assert_states_close(state, final)


def test_standalone_cell_with_loaded_weights_equals_sequence(config):
    """A ``BRIMsCell`` built from the config reads the model's weights (state-dict keys line up)."""
    model = build(config)
    torch.manual_seed(123)  # different initial weights, so loading is what makes them agree
    cell = BRIMsCell(config).double().eval()
    prefix = "cell."
    missing, unexpected = cell.load_state_dict(
        {k[len(prefix) :]: v for k, v in model.state_dict().items() if k.startswith(prefix)}, strict=True
    )
    assert not missing and not unexpected
    x = random_input(config, 3, BATCH)
    output, _ = model(x)
    state = None
    for t in range(3):
        step_output, state = cell(x[t], state)
        torch.testing.assert_close(step_output, output[t], **TOL)


def test_cell_from_keyword_options_equals_cell_from_config():
    config = make_config("gru", 2)
    options = {k: v for k, v in config.to_dict().items() if k != "input_size"}
    assert BRIMsCell(config.input_size, **options).config == config


# ---- shared parameters, seeds, configs ---------------------------------------------------------


def test_model_cell_shares_parameters(config):
    model = build(config)
    assert isinstance(model.cell, BRIMsCell)
    model_params = {id(p) for p in model.parameters()}
    assert model_params and model_params == {id(p) for p in model.cell.parameters()}
    x = random_input(config, 2, BATCH)
    before, _ = model(x)
    with torch.no_grad():
        next(model.cell.parameters()).add_(1.0)  # a change through the cell shows in the model
    after, _ = model(x)
    assert not torch.equal(before, after)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_same_seed_same_numbers(config, train):
    x = random_input(config, STEPS, BATCH)
    results = []
    for _ in range(2):
        model = build(config, seed=7, train=train)
        torch.manual_seed(11)  # dropout masks
        output, state = model(x)
        (output.square().sum()).backward()
        results.append((output, state, [p.grad for p in model.parameters()]))
    (out_a, state_a, grads_a), (out_b, state_b, grads_b) = results
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(state_a.h + state_a.c, state_b.h + state_b.c))
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    other = build(config, seed=8, train=train)
    torch.manual_seed(11)
    assert not torch.equal(other(x)[0], out_a)


def test_from_config_round_trip(config):
    data = config.to_dict()
    assert all(not isinstance(v, tuple) for v in data.values())  # plain lists for YAML/JSON
    again = BRIMsConfig(**json.loads(json.dumps(data)))
    assert again == config
    model = build(config)
    rebuilt = BRIMs.from_config(again)
    assert rebuilt.config == config
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == [
        (k, v.shape) for k, v in model.state_dict().items()
    ]
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.double().eval()
    x = random_input(config, 3, BATCH)
    assert torch.equal(rebuilt(x)[0], model(x)[0])


def test_from_config_takes_the_plain_dict_of_to_dict(config):
    assert BRIMs.from_config(json.loads(json.dumps(config.to_dict()))).config == config
    assert BRIMs(config).config == config and BRIMsCell(config).config == config


def test_from_config_same_seed_same_weights_as_constructor():
    config = make_config("lstm", 2)
    torch.manual_seed(3)
    a = BRIMs.from_config(config)
    torch.manual_seed(3)
    b = BRIMs(config.input_size, **{k: v for k, v in config.to_dict().items() if k != "input_size"})
    assert a.config == b.config
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_config_normalises_ints_and_lists_to_tuples():
    config = BRIMsConfig(3, hidden_sizes=[8, 6], num_modules=[4, 3], top_k=[2, 1])
    assert config.hidden_sizes == (8, 6) and config.num_modules == (4, 3) and config.top_k == (2, 1)
    single = BRIMsConfig(3, hidden_sizes=8, num_modules=4, top_k=2)
    assert single.hidden_sizes == (8,) and single.num_layers == 1 and single.module_size(0) == 2


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("communication", [True, False])
def test_rims_is_one_layer_brims_without_top_down(cell, communication):
    kwargs = {k: v for k, v in make_config(cell, 1).to_dict().items() if k not in ("input_size", "hidden_sizes",
                                                                                  "num_modules", "top_k", "top_down")}
    kwargs["communication"] = communication
    torch.manual_seed(0)
    rims = RIMs(5, 12, 4, 2, **kwargs).double().eval()
    assert rims.config.num_layers == 1 and rims.config.top_down is False
    assert rims.config.hidden_sizes == (12,) and rims.config.num_modules == (4,) and rims.config.top_k == (2,)
    torch.manual_seed(0)
    brims = BRIMs(5, (12,), (4,), (2,), top_down=False, **kwargs).double().eval()
    assert rims.config == brims.config
    x = random_input(rims.config, 4, BATCH)
    assert torch.equal(rims(x)[0], brims(x)[0])


# ---- batch rows are independent ----------------------------------------------------------------


def test_batch_rows_are_independent(config):
    model = build(config)
    x = random_input(config, 4, BATCH)
    state = random_state(model, BATCH)
    output, final = model(x, state)
    row = 2
    single_state = BRIMsState(tuple(h[row : row + 1] for h in state.h), tuple(c[row : row + 1] for c in state.c))
    single, single_final = model(x[:, row : row + 1], single_state)
    torch.testing.assert_close(single[:, 0], output[:, row], **TOL)
    for a, b in zip(single_final.h + single_final.c, final.h + final.c):
        torch.testing.assert_close(a[0], b[row], **TOL)


# ---- state helpers: detach, reset_rows, cell reset -----------------------------------------------


def test_state_detach_keeps_values_and_cuts_graph():
    config = make_config("lstm", 2)
    model = build(config)
    _, state = model(random_input(config, 2, BATCH))
    assert all(t.requires_grad for t in state.h)
    detached = state.detach()
    assert isinstance(detached, BRIMsState)
    for a, b in zip(state.h + state.c, detached.h + detached.c):
        assert torch.equal(a, b) and not b.requires_grad


@pytest.mark.parametrize("cell", CELLS)
def test_reset_rows_zeroes_only_chosen_rows(cell):
    config = make_config(cell, 3)
    model = build(config)
    state = random_state(model, 5)
    rows = torch.tensor([True, False, True, False, False])
    reset = state.reset_rows(rows)
    assert isinstance(reset, BRIMsState)
    for old, new in zip(state.h + state.c, reset.h + reset.c):
        assert new.shape == old.shape
        assert torch.count_nonzero(new[rows]) == 0
        assert torch.equal(new[~rows], old[~rows])
    none = state.reset_rows(torch.zeros(5, dtype=torch.bool))
    assert all(torch.equal(a, b) for a, b in zip(none.h + none.c, state.h + state.c))


def test_reset_rows_clears_non_finite_state():
    """A reset row is zero whatever it held before (an episode that diverged starts clean)."""
    config = make_config("lstm", 2)
    model = build(config)
    state = random_state(model, 3)
    h = tuple(t.clone() for t in state.h)
    h[0][1, 0] = float("nan")
    h[1][1, 2] = float("inf")
    reset = BRIMsState(h, state.c).reset_rows(torch.tensor([False, True, False]))
    for t in reset.h + reset.c:
        assert torch.equal(t[1], torch.zeros_like(t[1]))


@pytest.mark.parametrize("cell", CELLS)
def test_cell_forward_with_reset(cell):
    config = make_config(cell, 2)
    model = build(config)
    x = random_input(config, 1, BATCH)[0]
    state = random_state(model, BATCH)
    rows = torch.tensor([False, True, False, True])
    output, new_state = model.cell(x, state, reset=rows)
    expected, expected_state = model.cell(x, state.reset_rows(rows))
    torch.testing.assert_close(output, expected, **TOL)
    assert_states_close(new_state, expected_state)
    # Reset rows behave like a fresh start; the others like no reset at all.
    fresh, _ = model.cell(x)
    untouched, _ = model.cell(x, state)
    torch.testing.assert_close(output[rows], fresh[rows], **TOL)
    torch.testing.assert_close(output[~rows], untouched[~rows], **TOL)
    assert not torch.allclose(output[rows], untouched[rows])
    # A reset with no state is a fresh start.
    output_none, _ = model.cell(x, None, reset=rows)
    torch.testing.assert_close(output_none, fresh, **TOL)


# ---- 12. training mode: attention dropout -----------------------------------------------------------


def test_attention_dropout_is_active_in_train_mode_only(config):
    model = build(config, train=True)
    x = random_input(config, STEPS, BATCH)
    state = random_state(model, BATCH)
    first, _ = model(x, state)
    second, _ = model(x, state)
    assert not torch.equal(first, second)
    model.eval()
    a, _ = model(x, state)
    b, _ = model(x, state)
    assert torch.equal(a, b)
    assert not torch.equal(a, first)


def test_zero_dropout_train_mode_equals_eval(config):
    model = build(BRIMsConfig(**{**config.to_dict(), "attention_dropout": 0.0}), train=True)
    x = random_input(config, STEPS, BATCH)
    train_output, _ = model(x)
    model.eval()
    eval_output, _ = model(x)
    assert torch.equal(train_output, eval_output)


def test_train_mode_backward_and_step_changes_output():
    config = make_config("lstm", 2)
    model = build(config, train=True)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    x = random_input(config, STEPS, BATCH)
    model.eval()
    before, _ = model(x)
    model.train()
    output, _state = model(x)
    output.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    optimiser.step()
    model.eval()
    after, _ = model(x)
    assert not torch.allclose(before, after)
