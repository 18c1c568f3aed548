"""The library's surface: reset_rows and state refusals, BRIMs/RIMs signatures, docs and repr,
nn.LSTM's argument names, and save_pretrained / from_pretrained folders (config.json +
model.safetensors)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import os
import pydoc
import re
import socket
from pathlib import Path

import pytest
import torch
from support import INPUT_SIZE, build, make_config, random_input, random_state

import brims
from brims import BRIMs, BRIMsConfig, BRIMsState, RIMs, pretrained

FIELDS = dataclasses.fields(BRIMsConfig)
BATCH = 4


@pytest.fixture(scope="module")
def model() -> BRIMs:
    return build(make_config("lstm", 2))  # float64, input_size 5, hidden (12, 10)


# ---- 1. state.reset_rows refuses what is not a bool (B,) mask ----------------------------------------


@pytest.mark.parametrize("length", [3, 5])
def test_reset_rows_names_the_expected_and_given_length(model, length):
    state = random_state(model, BATCH)
    with pytest.raises(ValueError, match=rf"length B={BATCH} .*got length {length}"):
        state.reset_rows(torch.zeros(length, dtype=torch.bool))


@pytest.mark.parametrize(
    "rows",
    [
        torch.full((BATCH,), 0.5),  # which rows would 0.5 reset?
        torch.tensor([1, 0, 1, 0]),  # an int mask: refused, not cast
        torch.zeros(BATCH, 1, dtype=torch.bool),  # (B, 1), not (B,)
        [True, False, True, False],  # a list, not a tensor
    ],
    ids=["float", "int", "two-dims", "list"],
)
def test_reset_rows_refuses_a_mask_that_is_not_a_bool_vector(model, rows):
    state = random_state(model, BATCH)
    with pytest.raises(ValueError, match=re.escape(f"bool tensor of shape (B,)=({BATCH},), got")):
        state.reset_rows(rows)
    # The cell's reset argument goes through the same check.
    if isinstance(rows, torch.Tensor) and rows.shape == (BATCH,):
        with pytest.raises(ValueError, match="bool tensor"):
            model.cell(random_input(model.config, 1, BATCH)[0], state, reset=rows)


def test_reset_rows_still_zeroes_the_chosen_rows(model):
    state = random_state(model, BATCH)
    rows = torch.tensor([True, False, False, True])
    reset = state.reset_rows(rows)
    for old, new in zip(state.h + state.c, reset.h + reset.c):
        assert torch.count_nonzero(new[rows]) == 0 and torch.equal(new[~rows], old[~rows])


# ---- 2. an nn.LSTM (h, c) pair as the state: described by shapes, not printed ----------------------------


def test_an_lstm_state_pair_is_described_by_its_shapes(model):
    x = random_input(model.config, 3, BATCH)
    h = torch.randn(1, BATCH, 10, dtype=torch.float64)
    with pytest.raises(TypeError) as error:
        model(x, (h, h.clone()))
    message = str(error.value)
    assert f"got a tuple of 2 tensors with shapes (1, {BATCH}, 10), (1, {BATCH}, 10)" in message
    assert "BRIMsState" in message and "init_state" in message
    assert "tensor(" not in message and len(message) < 400  # no values printed
    # The same pair wrapped in a BRIMsState (h and c a tensor each) is described the same way.
    with pytest.raises(TypeError, match=re.escape(f"BRIMsState of 2 tensors with shapes (1, {BATCH}, 10)")):
        model(x, BRIMsState(h, h))


def test_a_state_of_plain_tuples_is_still_accepted(model):
    x = random_input(model.config, 3, BATCH)
    state = random_state(model, BATCH)
    expected, _ = model(x, state)
    output, _ = model(x, (tuple(state.h), tuple(state.c)))
    assert torch.equal(output, expected)


# ---- 3. signatures, docstrings, nn.LSTM's names, repr -------------------------------------------------------


def test_brims_signature_lists_every_config_field_with_its_default():
    parameters = inspect.signature(BRIMs).parameters
    assert [name for name in parameters if name != "unknown"] == [field.name for field in FIELDS]
    for field in FIELDS[1:]:
        assert parameters[field.name].default == field.default, field.name
    text = pydoc.render_doc(BRIMs, renderer=pydoc.plaintext)  # what help(brims.BRIMs) prints
    for field in FIELDS[1:]:
        assert re.search(rf"{field.name}: '[^']*' = {re.escape(repr(field.default))}", text), field.name


def test_rims_signature_lists_its_sizes_and_every_other_field():
    parameters = inspect.signature(RIMs).parameters
    assert [parameters[name].default for name in ("hidden_size", "num_modules", "top_k")] == [600, 6, 4]
    per_layer = {"input_size", "hidden_sizes", "num_modules", "top_k", "top_down"}
    for field in FIELDS:
        if field.name not in per_layer:
            assert parameters[field.name].default == field.default, field.name
            assert parameters[field.name].kind is inspect.Parameter.KEYWORD_ONLY


def test_init_docstring_gives_every_option_and_its_default():
    doc = inspect.getdoc(BRIMs.__init__)
    for field in FIELDS:
        entry = re.search(rf"^\s*{field.name}: (.*?)(?=^\s*\w+: |\Z)", doc, re.MULTILINE | re.DOTALL)
        assert entry, field.name
        if field.name != "input_size":
            text = " ".join(entry.group(1).split())
            assert f"``{field.default!r}``" in text or f"``{field.default!r}``".replace("'", '"') in text, field.name


def test_class_docstring_says_the_defaults_are_the_released_configuration():
    doc = " ".join(inspect.getdoc(BRIMs).split())
    assert "released sequential-MNIST configuration" in doc and "1.8 M parameters" in doc


def test_forward_docstring_gives_shapes_state_and_diagnostics():
    doc = inspect.getdoc(BRIMs.forward)
    for words in ("(T, B, input_size)", "batch_first", "(T, B, hidden_sizes[-1])", "state", "BRIMsState",
                  "return_diagnostics", "BRIMsDiagnostics", "(T, B, n_l)"):
        assert words in doc, words


def test_the_released_configuration_states_its_sizes_and_parameter_count():
    network = BRIMs(8)
    count = sum(p.numel() for p in network.parameters())
    assert 1.75e6 < count < 1.85e6  # "about 1.8 M", as the docstring says
    first_line = repr(network).splitlines()[1]
    assert "input_size=8, hidden_sizes=(300, 300), num_modules=(6, 3), top_k=(4, 2)" in first_line
    assert f"parameters={count:,}" in first_line
    assert "batch_first" not in first_line  # defaults beyond the sizes are left out ...
    assert "batch_first=True, backend" not in repr(BRIMs(8, (12,), (4,), (2,), batch_first=True))
    assert "batch_first=True" in repr(BRIMs(8, (12,), (4,), (2,), batch_first=True))  # ... the others shown
    assert "top_down=False" in repr(RIMs(8, 12, 4, 2))


@pytest.mark.parametrize(
    ("options", "hint"),
    [
        ({"hidden_size": 300, "num_layers": 2}, "hidden_sizes=(300, 300), num_modules=(n,) * 2 and top_k=(k,) * 2"),
        ({"hidden_size": 64}, "hidden_sizes=(64,), num_modules=(n,) * 1"),
        ({"num_layers": 3}, "hidden_sizes=(H,) * 3, num_modules=(n,) * 3 and top_k=(k,) * 3"),
    ],
)
def test_lstm_size_names_are_refused_with_the_equivalent(options, hint):
    with pytest.raises(TypeError, match=re.escape(hint)) as error:
        BRIMs(8, **options)
    assert "nn.LSTM's hidden_size and num_layers" in str(error.value)


def test_rims_refuses_num_layers_and_unknown_options_are_named():
    with pytest.raises(TypeError, match=r"RIMs is one layer: .*brims.BRIMs\(input_size, hidden_sizes=\(H,\)"):
        RIMs(8, num_layers=2)
    with pytest.raises(TypeError, match=r"unexpected keyword argument top_kk \(did you mean top_k\?\)"):
        BRIMs(8, top_kk=(1, 1))
    with pytest.raises(TypeError, match=r"unexpected keyword argument comm_head \(did you mean comm_heads\?\)"):
        RIMs(8, comm_head=2)


def test_the_ways_the_repo_builds_models_still_build_the_same_config():
    config = make_config("gru", 2, batch_first=True)
    options = {k: v for k, v in config.to_dict().items() if k != "input_size"}
    assert BRIMs(config).config == config == BRIMs(config.input_size, **options).config
    assert BRIMs(INPUT_SIZE, (12,), (4,), (2,)).config == BRIMsConfig(INPUT_SIZE, (12,), (4,), (2,))
    assert BRIMs(4, cell="gru").config == BRIMsConfig(4, cell="gru")
    assert RIMs(5, 12, 4, 2, cell="gru").config == BRIMsConfig(5, (12,), (4,), (2,), cell="gru", top_down=False)
    one = make_config("lstm", 1, top_down=False)
    assert RIMs(one).config == one
    with pytest.raises(TypeError, match=r"either a BRIMsConfig or BRIMsConfig's arguments, not both.*top_k"):
        BRIMs(config, top_k=(1, 1))
    with pytest.raises(TypeError, match=r"either a BRIMsConfig or RIMs' arguments, not both.*hidden_size"):
        RIMs(one, hidden_size=12)


def test_same_seed_same_weights_whichever_way_it_is_built():
    config = make_config("lstm", 2)
    torch.manual_seed(4)
    a = BRIMs(config)
    torch.manual_seed(4)
    b = BRIMs(*(getattr(config, field.name) for field in FIELDS))  # every field positionally
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


# ---- 4. save_pretrained / from_pretrained ------------------------------------------------------------------


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("save_pretrained / from_pretrained must not use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize(
    "make",
    [
        lambda: build(make_config("lstm", 2)),  # BRIMs, float64
        lambda: build(make_config("gru", 3)).float(),  # GRU cells, float32
        lambda: RIMs(INPUT_SIZE, 12, 4, 2, input_heads=2, input_key_size=4, comm_heads=3).double(),
    ],
    ids=["brims", "gru", "rims"],
)
def test_round_trip_gives_the_same_outputs_bit_for_bit(tmp_path, monkeypatch, make):
    _no_network(monkeypatch)
    torch.manual_seed(0)
    original = make().eval()
    assert original.save_pretrained(tmp_path / "saved") == tmp_path / "saved"
    random_before = torch.get_rng_state()
    loaded = type(original).from_pretrained(tmp_path / "saved").eval()
    assert torch.equal(torch.get_rng_state(), random_before)  # built without drawing weights
    assert type(loaded) is type(original) and loaded.config == original.config
    assert sorted(os.listdir(tmp_path / "saved")) == ["config.json", "model.safetensors"]  # no temporary left
    dtype = next(original.parameters()).dtype
    for (name, a), (other, b) in zip(original.state_dict().items(), loaded.state_dict().items()):
        assert name == other and a.dtype == b.dtype == dtype and torch.equal(a, b), name
    assert all(p.requires_grad and p.is_leaf for p in loaded.parameters())
    x = random_input(original.config, 4, 3, dtype=dtype)
    state = random_state(original, 3)
    expected = original(x, state, return_diagnostics=True)
    got = loaded(x, state, return_diagnostics=True)
    assert torch.equal(got[0], expected[0])
    for a, b in zip(got[1].h + got[1].c, expected[1].h + expected[1].c):
        assert torch.equal(a, b)
    for a, b in zip(got[2].attention, expected[2].attention):
        assert torch.equal(a, b)
    got[0].sum().backward()  # the loaded model trains
    assert all(p.grad is not None for p in loaded.parameters())


def test_config_json_holds_the_format_version_and_every_field(tmp_path):
    network = build(make_config("gru", 2, batch_first=True))
    network.save_pretrained(tmp_path)
    document = json.loads((tmp_path / "config.json").read_text())
    assert document == {"format": "brims", "format_version": 1, "config": network.config.to_dict()}
    assert BRIMs.from_pretrained(tmp_path).config == network.config


def test_saving_again_replaces_the_weights(tmp_path):
    first, second = build(make_config("lstm", 1), seed=1), build(make_config("lstm", 1), seed=2)
    first.save_pretrained(tmp_path)
    second.save_pretrained(tmp_path)
    loaded = BRIMs.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), second.state_dict().values()))


def test_a_write_that_fails_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    first = build(make_config("lstm", 1), seed=1)
    first.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def crash(descriptor):
        raise OSError("disk full")

    monkeypatch.setattr(pretrained.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        build(make_config("lstm", 1), seed=2).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


def test_rims_from_pretrained_refuses_a_stack(tmp_path):
    build(make_config("lstm", 2)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="RIMs has one layer, got a config with 2"):
        RIMs.from_pretrained(tmp_path)


@pytest.fixture
def saved(tmp_path) -> Path:
    folder = tmp_path / "saved"
    build(make_config("lstm", 2)).save_pretrained(folder)
    return folder


def test_missing_folder_and_files_are_named(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"pretrained folder {tmp_path / 'nowhere'} does not exist")):
        BRIMs.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        BRIMs.from_pretrained(saved / "config.json")
    for name in ("model.safetensors", "config.json"):
        (saved / name).unlink()
        with pytest.raises(FileNotFoundError, match=re.escape(f"{saved / name} does not exist")):
            BRIMs.from_pretrained(saved)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"format": "brims", "format_version": 1, "config": {', r"config\.json is not valid JSON"),
        ("[1, 2]", r"config\.json must hold a JSON object, got list"),
        ('{"format": "hf", "format_version": 1, "config": {}}', r"config\.json is not a brims config"),
        ('{"format": "brims", "format_version": 2, "config": {}}', r"format_version 2; .*reads version 1 .*newer"),
        ('{"format": "brims", "format_version": 1, "config": {}, "extra": 1}', r"unknown keys \['extra'\]"),
        ('{"format": "brims", "format_version": 1, "config": {"input_size": 5, "heads": 2}}',
         r"config\.json: bad \"config\": unknown BRIMsConfig field 'heads'"),
        ('{"format": "brims", "format_version": 1, "config": {"input_size": 0}}',
         r"config\.json: bad \"config\": input_size must be a positive int"),
        ('{"format": "brims", "format_version": 1, "config": {"hidden_sizes": [8]}}',
         r"config\.json: bad \"config\": .*input_size"),
        ('{"format": "brims", "format_version": 1, "config": null}', r"config\.json: bad \"config\""),
    ],
    ids=["truncated", "not-an-object", "format", "version", "unknown-key", "unknown-field", "invalid-value",
         "missing-field", "null-config"],
)
def test_a_bad_config_json_is_a_value_error_naming_the_file(saved, text, message):
    (saved / "config.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        BRIMs.from_pretrained(saved)


def test_weights_that_do_not_match_the_config_are_named(saved, tmp_path):
    other = tmp_path / "other"
    build(make_config("lstm", 2, comm_value_size=4)).save_pretrained(other)  # communication maps of another size
    (saved / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"model\.safetensors does not match .*config\.json: "
                                         r"cell\.layers\.0\.communication\.qkv\.weight has shape"):
        BRIMs.from_pretrained(saved)
    build(make_config("lstm", 1)).save_pretrained(other)  # one layer: the second one's tensors are missing
    (saved / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"missing cell\.layers\.1\.input_attention\.query\.weight"):
        BRIMs.from_pretrained(saved)


def test_mixed_or_integer_dtypes_are_refused(saved):
    from safetensors.torch import load_file, save_file

    tensors = load_file(saved / "model.safetensors")
    name = next(iter(tensors))
    tensors[name] = tensors[name].float()  # the others are float64
    save_file(tensors, saved / "model.safetensors")
    with pytest.raises(ValueError, match=r"one floating dtype, got torch\.float32, torch\.float64"):
        BRIMs.from_pretrained(saved)


def test_a_corrupted_weights_file_is_named(saved):
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a readable safetensors file")):
        BRIMs.from_pretrained(saved)


def test_import_brims_still_loads_torch_alone():
    """safetensors is imported inside the functions that read and write, never by a module's import."""
    for path in Path(brims.__file__).parent.rglob("*.py"):
        for statement in ast.parse(path.read_text()).body:  # module level only
            if isinstance(statement, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in statement.names] + [getattr(statement, "module", None) or ""]
                assert not any(name.startswith("safetensors") for name in names), path
