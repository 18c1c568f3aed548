"""Bad configs and bad calls fail early with a message that names the argument and the value."""

from __future__ import annotations

import re

import pytest
import torch
from support import build, make_config, random_input

from brims import BRIMs, BRIMsCell, BRIMsConfig, BRIMsState, RIMs

# ---- construction ----------------------------------------------------------------------------------


def config_error(match: str, **options):
    with pytest.raises(ValueError, match=match):
        BRIMsConfig(**{"input_size": 4, **options})


def test_hidden_size_not_divisible_by_modules():
    config_error(r"hidden_sizes\[1\]=10 is not divisible by num_modules\[1\]=3",
                 hidden_sizes=(12, 10), num_modules=(4, 3), top_k=(2, 1))
    with pytest.raises(ValueError, match=r"hidden_sizes\[0\]=13 .*num_modules\[0\]=4"):
        BRIMs(4, (13,), (4,), (2,))


@pytest.mark.parametrize("k", [0, -1, 5])
def test_top_k_out_of_range(k):
    config_error(rf"top_k\[0\]={k}\b.*num_modules\[0\]=4", hidden_sizes=(12,), num_modules=(4,), top_k=(k,))


def test_top_k_bool_rejected():
    config_error(r"top_k", hidden_sizes=(12,), num_modules=(4,), top_k=(True,))


@pytest.mark.parametrize(
    "options",
    [
        {"hidden_sizes": (12, 10), "num_modules": (4,), "top_k": (2,)},
        {"hidden_sizes": (12,), "num_modules": (4, 2), "top_k": (2,)},
        {"hidden_sizes": (12,), "num_modules": (4,), "top_k": (2, 1)},
    ],
)
def test_per_layer_lists_of_different_lengths(options):
    lengths = ", ".join(f"{name}={len(value)}" for name, value in options.items())
    config_error(re.escape(lengths), **options)


def test_empty_layer_lists():
    config_error(r"hidden_sizes .*\(\)", hidden_sizes=(), num_modules=(), top_k=())


@pytest.mark.parametrize(
    "name", ["input_size", "input_heads", "input_key_size", "input_value_factor", "comm_heads", "comm_key_size",
             "comm_value_size"]
)
@pytest.mark.parametrize("value", [0, -3])
def test_non_positive_sizes(name, value):
    options = {"input_size": 4, name: value}
    with pytest.raises(ValueError, match=rf"{name} must be a positive int, got {value}"):
        BRIMsConfig(**options)


@pytest.mark.parametrize("name", ["hidden_sizes", "num_modules"])
@pytest.mark.parametrize("value", [0, -4])
def test_non_positive_layer_sizes(name, value):
    options = {"hidden_sizes": (12, 8), "num_modules": (4, 2), "top_k": (1, 1)}
    options[name] = (options[name][0], value)
    config_error(rf"{name}\[1\] must be a positive int, got {value}", **options)


@pytest.mark.parametrize("value", [4.0, "4", None])
def test_non_int_sizes(value):
    config_error(r"input_heads must be a positive int, got " + re.escape(repr(value)), input_heads=value)
    config_error(r"hidden_sizes must contain ints, got " + re.escape(repr((12, value))),
                 hidden_sizes=(12, value), num_modules=(4, 2), top_k=(1, 1))


def test_value_size_not_divisible_by_heads():
    config_error(r"input_value_factor \* module size = 9 \(layer 0\) is not divisible by input_heads=2",
                 hidden_sizes=(9,), num_modules=(3,), top_k=(1,), input_value_factor=3, input_heads=2)


@pytest.mark.parametrize("cell", ["rnn", "LSTM", "", None])
def test_unknown_cell(cell):
    config_error(r"cell must be one of .*got " + re.escape(repr(cell)), cell=cell)
    with pytest.raises(ValueError, match=re.escape(repr(cell))):
        BRIMs(4, cell=cell)


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_dropout(dropout):
    config_error(r"attention_dropout must be in \[0, 1\), got " + re.escape(repr(dropout)), attention_dropout=dropout)


def test_non_numeric_dropout():
    with pytest.raises((ValueError, TypeError), match=r"attention_dropout.*'0\.1'"):
        BRIMsConfig(4, attention_dropout="0.1")


@pytest.mark.parametrize("name", ["top_down", "communication", "batch_first"])
def test_flags_must_be_bools(name):
    config_error(rf"{name} must be a bool, got 1", **{name: 1})


def test_rims_sizes_must_be_ints():
    with pytest.raises(ValueError, match=r"hidden_size must be an int for RIMs .*\(600, 600\)"):
        RIMs(4, hidden_size=(600, 600))
    with pytest.raises(ValueError, match=r"top_k must be an int for RIMs .*\[4\]"):
        RIMs(4, top_k=[4])


def test_from_config_names_an_unknown_field():
    options = {**make_config("lstm", 1).to_dict(), "heads": 2}
    with pytest.raises(ValueError, match=r"unknown BRIMsConfig field 'heads'; the fields are input_size, hidden_sizes"):
        BRIMs.from_config(options)


@pytest.mark.parametrize("config", ["lstm", 3, None])
def test_from_config_refuses_what_is_not_a_config(config):
    with pytest.raises(TypeError, match="a BRIMs config must be a BRIMsConfig or a mapping of its fields, got"):
        BRIMs.from_config(config)


def test_rims_refuses_a_config_of_several_layers():
    with pytest.raises(ValueError, match="RIMs has one layer, got a config with 2"):
        RIMs(make_config("lstm", 2))


@pytest.mark.parametrize("option", ["top_down", "hidden_sizes"])
def test_rims_refuses_stack_options(option):
    with pytest.raises(TypeError, match="RIMs is one layer without top-down: use hidden_size, num_modules and top_k"):
        RIMs(4, **{option: False if option == "top_down" else (8,)})


def test_cell_with_config_and_options():
    with pytest.raises(TypeError, match=r"either a BRIMsConfig or BRIMsConfig's arguments, not both.*top_k"):
        BRIMsCell(make_config("lstm", 1), top_k=(1,))


# ---- call time ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> BRIMs:
    return build(make_config("lstm", 2))  # float64, input_size 5, hidden (12, 10)


@pytest.fixture(scope="module")
def gru_model() -> BRIMs:
    return build(make_config("gru", 2))


def x_of(model, steps=3, batch=2, **kwargs):
    return random_input(model.config, steps, batch, **kwargs)


def test_wrong_feature_size(model):
    with pytest.raises(ValueError, match=r"input has 7 features \(last dim\), expected input_size=5"):
        model(torch.zeros(3, 2, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"input has 7 features .*input_size=5"):
        model.cell(torch.zeros(2, 7, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(2, 5), (5,), (1, 3, 2, 5)])
def test_wrong_rank(model, shape):
    with pytest.raises(ValueError, match=re.escape(f"(T, B, input_size) (3 dims), got shape {shape}")):
        model(torch.zeros(shape, dtype=torch.float64))


def test_wrong_rank_batch_first_and_cell():
    model = build(make_config("lstm", 1, batch_first=True))
    with pytest.raises(ValueError, match=re.escape("(B, T, input_size) (3 dims), got shape (2, 5)")):
        model(torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=re.escape("(B, input_size) (2 dims), got shape (1, 2, 5)")):
        model.cell(torch.zeros(1, 2, 5, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(0, 2, 5), (3, 0, 5)])
def test_empty_input(model, shape):
    with pytest.raises(ValueError, match=re.escape(f"input is empty: shape {shape}")):
        model(torch.zeros(shape, dtype=torch.float64))


def test_empty_batch_cell(model):
    with pytest.raises(ValueError, match=re.escape("input is empty: shape (0, 5)")):
        model.cell(torch.zeros(0, 5, dtype=torch.float64))


def test_input_not_a_tensor(model):
    with pytest.raises(TypeError, match=r"input must be a tensor .*got list"):
        model([[[0.0] * 5]])
    with pytest.raises(TypeError, match=r"input must be a tensor .*got ndarray"):
        model.cell(torch.zeros(2, 5).numpy())


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.bool])
def test_input_wrong_dtype(model, dtype):
    with pytest.raises(ValueError, match=rf"input has dtype {dtype}, but the model's parameters are torch.float64"):
        model(torch.zeros(3, 2, 5, dtype=dtype))


def test_input_wrong_device(model):
    with pytest.raises(ValueError, match=r"input is on meta, but the model's parameters are on cpu"):
        model(torch.zeros(3, 2, 5, dtype=torch.float64, device="meta"))


def test_state_wrong_number_of_layers(model):
    state = model.init_state(2)
    with pytest.raises(ValueError, match=r"state.h must hold one tensor per layer \(2\)"):
        model(x_of(model), BRIMsState(state.h[:1], state.c))
    with pytest.raises(ValueError, match=r"state.c must hold one tensor per layer \(2\)"):
        model(x_of(model), BRIMsState(state.h, state.c + state.c[:1]))


def test_state_wrong_shape(model):
    state = model.init_state(2)
    bad = BRIMsState((state.h[0], torch.zeros(2, 11, dtype=torch.float64)), state.c)
    with pytest.raises(ValueError, match=re.escape("state.h[1] has shape (2, 11), expected (batch=2, hidden=10)")):
        model(x_of(model), bad)
    bad = BRIMsState(state.h, (state.c[0].unsqueeze(0), state.c[1]))
    with pytest.raises(ValueError, match=re.escape("state.c[0] has shape (1, 2, 12), expected (batch=2, hidden=12)")):
        model(x_of(model), bad)


def test_state_wrong_batch(model):
    state = model.init_state(3)
    with pytest.raises(ValueError, match=re.escape("state.h[0] has shape (3, 12), expected (batch=2, hidden=12)")):
        model(x_of(model, batch=2), state)
    with pytest.raises(ValueError, match=re.escape("expected (batch=2, hidden=12)")):
        model.cell(x_of(model, batch=2)[0], state)


def test_state_wrong_dtype(model, gru_model):
    state = model.init_state(2, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"state.h\[0\] has dtype torch.float32, but the input has torch.float64"):
        model(x_of(model), state)
    # The GRU ignores c's values but still checks it.
    good = gru_model.init_state(2)
    bad = BRIMsState(good.h, tuple(c.float() for c in good.c))
    with pytest.raises(ValueError, match=r"state.c\[0\] has dtype torch.float32"):
        gru_model(x_of(gru_model), bad)


def test_state_wrong_device(model):
    state = model.init_state(2, device="meta")
    with pytest.raises(ValueError, match=r"state.h\[0\] is on meta, but the input is on cpu"):
        model(x_of(model), state)


def test_state_wrong_type(model):
    with pytest.raises(TypeError, match=r"state must be a BRIMsState \(h, c\), got Tensor"):
        model(x_of(model), torch.zeros(2, 12, dtype=torch.float64))
    state = model.init_state(2)
    with pytest.raises(TypeError, match=r"state.h\[1\] must be a tensor, got list"):
        model(x_of(model), BRIMsState((state.h[0], [0.0] * 10), state.c))


def test_cell_reset_wrong_shape(model):
    x = x_of(model)[0]
    with pytest.raises(ValueError, match=re.escape("reset must have shape (B,)=(2,), got (3,)")):
        model.cell(x, reset=torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=re.escape("got (2, 1)")):
        model.cell(x, reset=torch.zeros(2, 1, dtype=torch.bool))


@pytest.mark.parametrize("value", [0, -1, 2.0, True])
def test_compile_step_refuses_a_bad_steps_per_call(value):
    model = build(make_config("lstm", 1))
    with pytest.raises(ValueError, match=re.escape(f"steps_per_call must be a positive int, got {value!r}")):
        model.compile_step(steps_per_call=value, backend="eager")
    assert model.compiled is None  # still the eager loop


def test_errors_leave_model_usable(model):
    """A rejected call does not leave half-done state behind: the next good call is unaffected."""
    x = x_of(model)
    before, _ = model(x)
    with pytest.raises(ValueError):
        model(torch.zeros(3, 2, 7, dtype=torch.float64))
    after, _ = model(x)
    assert torch.equal(before, after)
