"""Sequential-image task: resizing, tokenising, noise, and the classifier over every core."""

from __future__ import annotations

import pytest
import torch

from brims import BRIMs
from brims_experiments.tasks.cores import CORE_KINDS, LAYERED_KINDS, MODULAR_KINDS, CoreConfig
from brims_experiments.tasks.seqimage import (
    Noise,
    SequenceClassifier,
    add_gaussian_noise,
    make_sequences,
    resize_nearest,
    tokenize,
)


def random_images(n: int = 3, size: int = 5, channels: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, channels), generator=generator, dtype=torch.uint8)


# ---- resizing and tokens ---------------------------------------------------------------------


def test_resize_identity_at_native_size():
    images = random_images(size=6, channels=3)
    assert torch.equal(resize_nearest(images, 6), images)


def test_resize_up_duplicates_pixels():
    images = torch.tensor([[1, 2], [3, 4]], dtype=torch.uint8).reshape(1, 2, 2, 1)
    expected = torch.tensor(
        [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]], dtype=torch.uint8
    ).reshape(1, 4, 4, 1)
    resized = resize_nearest(images, 4)
    assert resized.dtype == torch.uint8
    assert torch.equal(resized, expected)


def test_resize_down_samples_nearest_per_channel():
    # (1, 4, 4, 2): channel 0 holds 0..15, channel 1 holds 100..115; 4 -> 2 keeps rows/cols 0 and 2.
    base = torch.arange(16, dtype=torch.uint8).reshape(4, 4)
    images = torch.stack([base, base + 100], dim=-1).unsqueeze(0)
    resized = resize_nearest(images, 2)
    assert resized.shape == (1, 2, 2, 2)
    assert torch.equal(resized[0, :, :, 0], torch.tensor([[0, 2], [8, 10]], dtype=torch.uint8))
    assert torch.equal(resized[0, :, :, 1], torch.tensor([[100, 102], [108, 110]], dtype=torch.uint8))


@pytest.mark.parametrize("size", [0, -3])
def test_resize_rejects_size_below_one(size):
    with pytest.raises(ValueError, match="at least 1"):
        resize_nearest(random_images(), size)


def test_tokenize_threshold():
    images = torch.tensor([0, 127, 128, 255], dtype=torch.uint8).reshape(1, 2, 2, 1)
    tokens = tokenize(images, binarize=True)
    assert tokens.dtype == torch.uint8
    assert tokens.flatten().tolist() == [0, 0, 1, 1]
    assert tokenize(images, binarize=False).flatten().tolist() == [0, 127, 128, 255]


def test_make_sequences_shape_and_row_major_order():
    n, s, c = 2, 4, 3
    images = torch.arange(n * s * s * c, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(n, s, s, c)
    tokens = make_sequences(images, s, binarize=False)
    assert tokens.shape == (n, s * s, c) and tokens.dtype == torch.uint8
    for i in range(n):
        for row in range(s):
            for col in range(s):
                assert torch.equal(tokens[i, row * s + col], images[i, row, col])


def test_make_sequences_resizes_then_binarises():
    images = random_images(n=2, size=8)
    tokens = make_sequences(images, 3, binarize=True)
    assert tokens.shape == (2, 9, 1)
    expected = (resize_nearest(images, 3) >= 128).to(torch.uint8).reshape(2, 9, 1)
    assert torch.equal(tokens, expected)


# ---- noise -------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise", [Noise("gaussian", 0.3), Noise("flip", 0.2)], ids=lambda n: n.name)
def test_noise_is_deterministic_by_seed(noise):
    images = random_images(n=4, size=8)
    first = make_sequences(images, 8, binarize=True, noise=noise, seed=7)
    again = make_sequences(images, 8, binarize=True, noise=noise, seed=7)
    other = make_sequences(images, 8, binarize=True, noise=noise, seed=8)
    clean = make_sequences(images, 8, binarize=True)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, clean)


@pytest.mark.parametrize("kind", ["gaussian", "flip"])
def test_noise_level_zero_is_identity(kind):
    images = random_images(n=4, size=8)
    clean = make_sequences(images, 6, binarize=True)
    assert torch.equal(make_sequences(images, 6, binarize=True, noise=Noise(kind, 0.0), seed=3), clean)


def test_gaussian_noise_level_zero_on_intensities():
    images = random_images(n=2, size=5, channels=3)
    assert torch.equal(add_gaussian_noise(images, 0.0, torch.Generator().manual_seed(0)), images)
    noisy = add_gaussian_noise(images, 0.5, torch.Generator().manual_seed(0))
    assert noisy.dtype == torch.uint8 and noisy.shape == images.shape
    assert not torch.equal(noisy, images)


def test_flip_level_one_inverts_every_pixel():
    images = random_images(n=3, size=6)
    clean = make_sequences(images, 6, binarize=True)
    flipped = make_sequences(images, 6, binarize=True, noise=Noise("flip", 1.0), seed=0)
    assert torch.equal(flipped, 1 - clean)


def test_flip_on_non_binarised_input_is_an_error():
    with pytest.raises(ValueError, match="binarised"):
        make_sequences(random_images(channels=3), 5, binarize=False, noise=Noise("flip", 0.1))


def test_noise_parse_and_name():
    noise = Noise.parse("gaussian-0.3")
    assert noise == Noise("gaussian", 0.3)
    assert Noise.parse(noise.name) == noise
    assert Noise.parse("flip-0.05") == Noise("flip", 0.05)


@pytest.mark.parametrize("text", ["salt-0.1", "gaussian", "gaussian-abc", "flip-1.5", "gaussian--1", "", "flip-nan"])
def test_noise_parse_errors(text):
    with pytest.raises(ValueError, match="noise"):
        Noise.parse(text)


# ---- the classifier over every core ------------------------------------------------------------

CHANNELS, VOCAB, EMBEDDING, CLASSES = 2, 4, 6, 5
STEPS, BATCH = 7, 3
KIND_CELLS = [(kind, cell) for kind in CORE_KINDS for cell in (("lstm",) if kind in LAYERED_KINDS else ("lstm", "gru"))]


def core_config(kind: str, cell: str = "lstm", **overrides) -> CoreConfig:
    options = {
        "cell": cell, "hidden_sizes": (8, 4), "num_modules": (4, 2), "top_k": (2, 1),
        "input_heads": 2, "input_key_size": 4, "comm_heads": 2, "comm_key_size": 3, "comm_value_size": 3,
    }
    if kind in LAYERED_KINDS:
        options["hidden_sizes"] = (8, 8)
    if kind == "rims":
        options.update(hidden_sizes=(12,), num_modules=(4,), top_k=(2,))
    options.update(overrides)
    return CoreConfig(kind=kind, brims=options)


def classifier(kind: str, cell: str = "lstm", seed: int = 0) -> SequenceClassifier:
    torch.manual_seed(seed)
    return SequenceClassifier(core_config(kind, cell), CHANNELS, VOCAB, EMBEDDING, CLASSES)


def random_tokens(seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (BATCH, STEPS, CHANNELS), generator=generator, dtype=torch.uint8)


@pytest.mark.parametrize(("kind", "cell"), KIND_CELLS, ids=[f"{k}-{c}" for k, c in KIND_CELLS])
def test_classifier_logits_shape(kind, cell):
    model = classifier(kind, cell).eval()
    logits = model(random_tokens())
    assert logits.shape == (BATCH, CLASSES)
    assert torch.isfinite(logits).all()


# The memoryless core's last output reads the last pixel only, so earlier pixels' embeddings get no
# gradient from the classifier: that is its point (tests/test_core_state.py checks it reads each step alone).
REMEMBERING_CELLS = [(kind, cell) for kind, cell in KIND_CELLS if kind != "memoryless"]


@pytest.mark.parametrize(("kind", "cell"), REMEMBERING_CELLS, ids=[f"{k}-{c}" for k, c in REMEMBERING_CELLS])
def test_gradients_reach_the_embeddings(kind, cell):
    model = classifier(kind, cell).train()
    tokens = random_tokens()
    labels = torch.arange(BATCH) % CLASSES
    torch.nn.functional.cross_entropy(model(tokens), labels).backward()
    for channel, table in enumerate(model.embeddings):
        used = tokens[..., channel].long().unique()
        grad = table.weight.grad
        assert grad is not None
        assert (grad[used].abs().sum(-1) > 0).all(), f"channel {channel}: an embedding row in use got no gradient"


def expected_slots(kind: str, layers: int) -> list[int]:
    """Input-attention slots per layer: null and bottom-up, plus top-down below the top with top-down on."""
    return [3 if kind == "brims" and layer < layers - 1 else 2 for layer in range(layers)]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("kind", MODULAR_KINDS)
def test_diagnostics_of_modular_cores(kind, cell):
    model = classifier(kind, cell).eval()
    config = model.core.network.config
    logits, diagnostics = model(random_tokens(), return_diagnostics=True)
    assert torch.equal(logits, model(random_tokens()))
    layers = config.num_layers
    assert len(diagnostics.active) == len(diagnostics.attention) == layers
    for layer, slots in enumerate(expected_slots(kind, layers)):
        n, k = config.num_modules[layer], config.top_k[layer]
        active = diagnostics.active[layer]
        assert active.shape == (STEPS, BATCH, n) and active.dtype == torch.bool
        assert (active.sum(-1) == k).all(), f"layer {layer}: not exactly top_k={k} active modules at every step"
        attention = diagnostics.attention[layer]
        assert attention.shape == (STEPS, BATCH, n, slots)
        assert torch.allclose(attention.sum(-1), torch.ones(()), atol=1e-5)


def test_lstm_core_has_no_diagnostics():
    model = classifier("lstm")
    with pytest.raises(ValueError, match="modular"):
        model(random_tokens(), return_diagnostics=True)


def test_lstm_core_needs_equal_hidden_sizes():
    with pytest.raises(ValueError, match=r"equal model\.core\.brims\.hidden_sizes"):
        SequenceClassifier(core_config("lstm", hidden_sizes=(8, 6)), CHANNELS, VOCAB, EMBEDDING, CLASSES)


def test_lstm_core_rejects_a_cell():
    with pytest.raises(ValueError, match="cell"):
        core_config("lstm", cell="gru")


def test_rims_is_one_layer_without_top_down():
    config = core_config("rims")
    assert config.hidden_size == 12
    model = SequenceClassifier(config, CHANNELS, VOCAB, EMBEDDING, CLASSES)
    network = model.core.network
    assert isinstance(network, BRIMs)
    assert network.config.num_layers == 1
    assert network.config.hidden_sizes == (12,)
    assert network.config.num_modules == (4,) and network.config.top_k == (2,)
    assert network.config.top_down is False
    assert model.readout.in_features == 12


@pytest.mark.parametrize(("kind", "top_down"), [("brims", True), ("brims-no-top-down", False)])
def test_stacked_kinds_keep_the_layers(kind, top_down):
    config = core_config(kind)
    network = SequenceClassifier(config, CHANNELS, VOCAB, EMBEDDING, CLASSES).core.network
    assert network.config.hidden_sizes == (8, 4) and network.config.top_down is top_down
    assert config.hidden_size == 4


def test_lstm_core_matches_the_sizes():
    model = classifier("lstm")
    lstm = model.core.network
    assert isinstance(lstm, torch.nn.LSTM)
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers) == (EMBEDDING, 8, 2)


def test_classifier_rejects_wrong_token_shape():
    model = classifier("brims")
    with pytest.raises(ValueError, match="tokens"):
        model(torch.zeros(BATCH, STEPS, CHANNELS + 1, dtype=torch.uint8))
    with pytest.raises(ValueError, match="tokens"):
        model(torch.zeros(BATCH, STEPS, dtype=torch.uint8))


def test_rims_refuses_options_of_several_layers():
    """No silent reshaping: a stack's options are refused for the one-layer core, with the fix."""
    with pytest.raises(ValueError, match=r"kind=rims is one layer.*has 2 \(\[8, 4\]\).*hidden_sizes=\[600\]"):
        core_config("rims", hidden_sizes=(8, 4), num_modules=(4, 2), top_k=(2, 1))


@pytest.mark.parametrize("kind", ["rims", "brims-no-top-down", "lstm"])
def test_only_brims_takes_a_top_down_option(kind):
    with pytest.raises(ValueError, match=f"top_down is set by the kind: {kind} has no top-down"):
        CoreConfig(kind=kind, brims={"top_down": True})


@pytest.mark.parametrize("name", ["input_size", "batch_first"])
def test_core_config_refuses_what_the_task_sets(name):
    with pytest.raises(ValueError, match=f"model.core.brims.{name} is set by the task"):
        CoreConfig(brims={name: 3})


def test_core_config_names_an_unknown_brims_option():
    with pytest.raises(ValueError, match=r"unknown field model\.core\.brims\.heads; the BRIMsConfig fields are"):
        CoreConfig(brims={"heads": 3})


def test_core_config_passes_every_brims_option_through():
    """Every BRIMsConfig field the experiments can set reaches the model (none copied, none lost)."""
    config = core_config("brims", input_value_factor=2, attention_dropout=0.2, communication=False, comm_heads=1)
    network = SequenceClassifier(config, CHANNELS, VOCAB, EMBEDDING, CLASSES).core.network
    assert network.config == config.brims_config(EMBEDDING)
    assert (network.config.input_value_factor, network.config.attention_dropout) == (2, 0.2)
    assert network.config.communication is False and network.config.comm_heads == 1


def test_core_config_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        CoreConfig(kind="transformer")
